"""Full system backup: wall time of the concurrent backup / the five stores backed up one after another.

PostgreSQL and Valkey are real servers; Qdrant, OpenSearch and Neo4j are the test emulators
(cb_backups_tests/emulators), each in its own process so they do not share this process's GIL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes, paired
from cb_backups.core.net import free_port, wait_until

QDRANT_KEY = "cb-bench-qdrant-key"


def _spawn(bench: Bench, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    bench.on_exit(stop)
    return proc


def _http_up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception as exc:
        return "HTTP Error" in str(exc)  # it answered


def _sizes(bench: Bench) -> dict[str, int]:
    quick = bench.quick
    scale = bench.size_bytes
    return {"pg_bytes": scale // 4 if not quick else scale, "valkey_scale": 2_000 if quick else 60_000,
            "qdrant_points": 300 if quick else 4_000, "opensearch_docs": 300 if quick else 5_000}


def _start_servers(bench: Bench, work: Path) -> Any:
    """Five configured stores with data; returns the Settings."""
    from cb_backups.config.settings import Neo4jSettings, OpenSearchSettings, QdrantSettings, Settings, ValkeySettings
    from cb_backups.demo.embedded import valkey_bin_dir
    from cb_backups.demo.sample_data import load_postgres, load_valkey, postgres_rows_for_bytes
    from cb_backups_tests.emulators.neo4j import start_neo4j
    from cb_backups_tests.fixtures_neo4j import SEED_QUERIES, run_cypher
    from cb_backups_tests.fixtures_qdrant import make_client, seed_collection

    sizes = _sizes(bench)
    # PostgreSQL: its own database on the benchmark server, a quarter of the benchmark size
    with bench.pg.connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS fullsys")
        conn.execute(f"CREATE DATABASE fullsys OWNER {bench.pg.user}")
    with bench.pg.connect("fullsys") as conn:
        load_postgres(conn, scale=postgres_rows_for_bytes(sizes["pg_bytes"]), hnsw=False)
    # Valkey: daemonized with a start command, which an in-place restore needs to start it again
    valkey = _daemon_valkey(bench, work / "valkey")
    load_valkey(valkey["client"], scale=sizes["valkey_scale"])
    # Qdrant emulator (own process)
    q_port = free_port()
    _spawn(bench, [sys.executable, "-m", "cb_backups_tests.emulators.qdrant", "--port", str(q_port), "--api-key",
                   QDRANT_KEY, "--storage", str(work / "qdrant")], work / "qdrant.log")
    q_url = f"http://127.0.0.1:{q_port}"
    wait_until(lambda: _http_up(q_url + "/"), 30, "qdrant emulator")
    client = make_client(q_url, QDRANT_KEY)
    seed_collection(client, "memories", "memories", 384, sizes["qdrant_points"])
    seed_collection(client, "code_embeddings", "code", 256, sizes["qdrant_points"] // 2)
    client.close()
    # OpenSearch emulator (own process; osmem-server is its child)
    o_port, repo = free_port(), work / "os-repo"
    repo.mkdir()
    _spawn(bench, [sys.executable, "-m", "cb_backups_tests.emulators.opensearch", "--port", str(o_port),
                   "--path-repo", str(repo), "--data-dir", str(work / "os-data")], work / "opensearch.log")
    o_url = f"http://127.0.0.1:{o_port}"
    wait_until(lambda: _http_up(o_url + "/"), 60, "opensearch emulator")
    _seed_opensearch(o_url, sizes["opensearch_docs"])
    # Neo4j emulator (FalkorDB over Bolt + emulated neo4j-admin)
    neo = start_neo4j(work / "neo4j")
    bench.on_exit(neo.stop)
    neo_settings = Neo4jSettings(uri=neo.uri, password=None, admin_command=neo.admin_command,
                                 stop_command=neo.stop_command, start_command=neo.start_command)
    run_cypher(neo_settings, *SEED_QUERIES)
    return Settings(
        backup_dir=work / "backups",
        postgres=bench.pg_settings(dbname="fullsys"),
        valkey=ValkeySettings(host="127.0.0.1", port=valkey["port"], password=valkey["password"],
                              data_dir=str(work / "valkey"), bin_dir=str(valkey_bin_dir()),
                              start_command=tuple(valkey["argv"])),
        qdrant=QdrantSettings(url=q_url, api_key=QDRANT_KEY),
        opensearch=OpenSearchSettings(url=o_url, repository="cbbench", repository_type="fs",
                                      repository_settings={"location": str(repo / "cbbench"), "compress": True}),
        neo4j=neo_settings,
    )


def _daemon_valkey(bench: Bench, data: Path) -> dict[str, Any]:
    """A Valkey the in-place restore can stop and start again (daemonized; password in a 0600 config file)."""
    import valkey

    from cb_backups.demo.embedded import valkey_bin_dir

    password = "cb-bench-valkey-fullsys"
    data.mkdir(mode=0o700)
    conf = data / "valkey.conf"
    with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(f'requirepass "{password}"\n')
    port = free_port()
    argv = [str(valkey_bin_dir() / "valkey-server"), str(conf), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
            "--daemonize", "yes", "--pidfile", str(data / "valkey.pid"), "--logfile", str(data / "valkey.log")]
    subprocess.run(argv, check=True)

    def client(db: int = 0) -> Any:
        return valkey.Valkey(host="127.0.0.1", port=port, password=password, db=db, socket_timeout=10)

    def stop() -> None:  # the pid file names the server that runs now (the restore restarts it)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((data / "valkey.pid").read_text()), signal.SIGKILL)

    bench.on_exit(stop)
    wait_until(lambda: bool(client().ping()), 30, "valkey")
    return {"port": port, "password": password, "argv": argv, "client": client}


def _servers(bench: Bench) -> tuple[Any, Path]:
    """The five stores with data, started once per benchmark run (both full system figures use them)."""
    if "fullsys" not in bench.cache:
        work = bench.scratch("fullsys")
        bench.log("  starting the five stores (Qdrant/OpenSearch/Neo4j emulators) and loading data ...")
        t0 = time.perf_counter()
        bench.cache["fullsys"] = (_start_servers(bench, work), work)
        bench.log(f"  ready in {time.perf_counter() - t0:.1f}s")
    return bench.cache["fullsys"]


def _cpu_seconds(root: Path) -> float:
    """CPU time (user + system, with reaped children) of this process and of every process whose command
    line names a path under `root` (the servers and emulators of this run): what the stores' work costs."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if int(proc.name) != os.getpid() and str(root).encode() not in cmdline:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += sum(int(v) for v in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def full_restore_vs_sequential(bench: Bench) -> Figure:
    """execute_full_restore (the stores at once) / the five execute_restore one after another (the runbook's
    script), both restoring the same full system backup in place with their safety backups."""
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.model import Target, no_progress
    from cb_backups.core.partitions import weekly_sunday_0100
    from cb_backups.core.specs import STORE_NAMES
    from cb_backups.full_system.backup import write_full_backup
    from cb_backups.restore.execute import execute_full_restore, execute_restore
    from cb_backups.restore.plan import plan_full_restore
    from cb_backups.stores.registry import open_store

    settings, work = _servers(bench)
    names = list(STORE_NAMES)
    key = weekly_sunday_0100.get_partition_keys()[-2]  # a slot the backup figure does not write
    catalog = Catalog(work / "backups")
    if catalog.load(catalog.slot_dir("full_system", key)) is None:
        write_full_backup(catalog, key, names, lambda n: open_store(n, settings), lambda _n: no_progress)
    full = plan_full_restore(settings, key, target=Target("in_place"))
    outcome: dict[str, Any] = {}

    def parallel() -> None:
        result = execute_full_restore(full)
        if not result.ok:
            raise RuntimeError(f"full restore failed: {result.failed} "
                               f"{[r.problems for r in result.results if r.problems]}")
        outcome.update(overall=round(result.rto_seconds, 2),
                       per_store={r.store: round(r.rto_seconds, 2) for r in result.results})

    def sequential() -> None:
        seconds = {}
        cpu0, wall0 = _cpu_seconds(bench.root), time.perf_counter()
        for plan in full.plans:
            result = execute_restore(plan)
            if not result.ok:
                raise RuntimeError(f"{plan.store}: {result.problems}")
            seconds[plan.store] = round(result.rto_seconds, 2)
        outcome["sequential"] = seconds
        cpu, wall = _cpu_seconds(bench.root) - cpu0, time.perf_counter() - wall0
        # how busy the one-after-another run kept the cores: the room the parallel run has to overlap work
        # (a lower bound: a process that does not name the run's folder, e.g. a daemonized Valkey, is missed)
        outcome.setdefault("cpu_busy_share", []).append(round(cpu / (os.cpu_count() or 1) / wall, 3))

    parallel()  # warm-up
    pairs = paired(parallel, sequential, bench.repeat)
    return Figure("full_system_restore", "Full system restore wall time / the five stores restored one after "
                  "another", pairs.ratio, "<=", 0.6, "execute_full_restore (one thread per store), in place",
                  "5 x execute_restore of the same full system backup, in place (the runbook's script)",
                  pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path="cb_backups.restore.execute.execute_full_restore: prepare every store (PostgreSQL: "
                            "staged into <db>__incoming while verified), then every store's safety backup + "
                            "restore + recount in its own thread",
                  note="RTO per store in the full restore (last run, from its start): "
                       + ", ".join(f"{k} {v:.1f}s" for k, v in (outcome.get("per_store") or {}).items())
                       + "; sequential: " + ", ".join(f"{k} {v:.1f}s" for k, v in
                                                       (outcome.get("sequential") or {}).items())
                       + f"; share of the {os.cpu_count()} cores the sequential run kept busy (CPU seconds of the "
                       f"processes found / cores / wall): {_median(outcome.get('cpu_busy_share'))}",
                  details={**outcome, "ratios": [round(r, 3) for r in pairs.ratios]})


def _median(values: list[float] | None) -> str:
    import statistics

    return f"{statistics.median(values):.2f}" if values else "n/a"


def _seed_opensearch(url: str, docs: int) -> None:
    from opensearchpy import OpenSearch, helpers

    from cb_backups_tests.fixtures_opensearch import APP_INDICES, _docs

    client = OpenSearch(hosts=[url], timeout=60)
    for index, body in APP_INDICES.items():
        client.indices.delete(index=index, ignore_unavailable=True)
        client.indices.create(index=index, body=body)
        helpers.bulk(client, _docs(index, docs), refresh=True)
    client.close()


def full_vs_sequential(bench: Bench) -> Figure:
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.model import no_progress
    from cb_backups.core.specs import STORE_NAMES
    from cb_backups.full_system.backup import write_full_backup
    from cb_backups.stores.registry import open_store

    settings, work = _servers(bench)
    names = list(STORE_NAMES)
    catalog = Catalog(work / "backups")
    seq_seconds: dict[str, float] = {}
    full_info: dict[str, Any] = {}

    def opener(name: str) -> Any:
        return open_store(name, settings)

    def concurrent() -> None:
        artifact = write_full_backup(catalog, "2026-11-22", names, opener, lambda _n: no_progress)
        markers = artifact.manifest.markers
        full_info.update(failed=markers.get("failed"), bytes=artifact.manifest.total_bytes,
                         timing=markers.get("timing"))

    def sequential() -> None:
        for name in names:
            start = time.perf_counter()
            store = opener(name)
            health = store.health(catalog.root)
            if not health.ok:
                raise RuntimeError(f"{name}: {health.problems}")
            catalog.write(name, "2026-11-24", store.backup)
            seq_seconds[name] = round(time.perf_counter() - start, 3)

    def clean() -> None:
        for name in [*names, "full_system"]:
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(catalog.root / name)

    concurrent()  # warm-up
    clean()
    pairs = paired(concurrent, sequential, bench.repeat, between=clean)
    return Figure("full_system", "Full system backup wall time / the five stores one after another",
                  pairs.ratio, "<=", 0.6, "cb_backups.full_system.write_full_backup (one thread per store)",
                  "5 x (health + Catalog.write(store.backup)) sequentially", pairs.a_median, pairs.b_median,
                  len(pairs.a),
                  code_path="cb_backups.full_system.write_full_backup; PostgreSQL + Valkey real, Qdrant/OpenSearch/"
                            "Neo4j emulators in their own processes",
                  note=f"{human_bytes(full_info.get('bytes') or 0)} in total; sequential per store (last pair): "
                       + ", ".join(f"{k} {v:.1f}s" for k, v in seq_seconds.items())
                       + f"; {os.cpu_count()} cores bound the possible overlap",
                  details={"sequential_seconds_last": seq_seconds, "full_timing_last": full_info.get("timing"),
                           "failed_in_full": full_info.get("failed"), "sizes": _sizes(bench),
                           "ratios": [round(r, 3) for r in pairs.ratios]})
