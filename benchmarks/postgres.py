"""PostgreSQL figures: Dagster overhead, the zstd default against the runbook's -Z 6, restore."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes, paired, patched_env, run, timed
from cb_backups.config.settings import PostgresSettings

DEFAULT = PostgresSettings().compression  # the project's default compression


def _raw_dump(bench: Bench, level: int, path: Path) -> int:
    """The runbook's command: `pg_dump -Fc -Z <level> -d <db>` into a file."""
    path.unlink(missing_ok=True)
    run([bench.pg_tool("pg_dump"), "-Fc", "-Z", str(level), "-d", bench.pg.dbname, "-f", str(path)],
        env=bench.pg_env())
    return path.stat().st_size


def _catalog_backup(bench: Bench, compression: str, root: Path) -> Any:
    """The product's backup without Dagster: the adapter writing through the catalog."""
    from cb_backups.core.catalog import Catalog
    from cb_backups.stores.postgres import PostgresStore

    store = PostgresStore(bench.pg_settings(compression))
    return Catalog(root).write("postgres", "2026-11-24-00:00", store.backup)


def dagster_overhead(bench: Bench) -> Figure:
    """postgres_backup_job (asset + its checks) with gzip:6 / raw `pg_dump -Fc -Z 6`."""
    import dagster as dg

    from cb_backups.cli.runs import run_job
    from cb_backups.core.specs import spec_for

    work = bench.scratch("pg-dagster")
    backups, home, raw = work / "backups", work / "dagster_home", work / "raw.dump"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    key = spec_for("postgres").partitions.get_last_partition_key()
    env = {"CB_BACKUP_DIR": str(backups), "CB_BACKUP_DIR_CREATE": "1", "DAGSTER_HOME": str(home),
           "CB_POSTGRES_URL": bench.pg.url,
           "CB_POSTGRES_PASSWORD": bench.pg.password, "CB_PG_BIN_DIR": str(bench.pg.bin_dir),
           "CB_POSTGRES_COMPRESSION": "gzip:6", "CB_LOG_LEVEL": "ERROR"}
    outcomes: list[bool] = []
    steps: list[float] = []
    sizes: dict[str, int] = {}
    with patched_env(env):
        instance = dg.DagsterInstance.get()

        def through_dagster() -> None:
            result = run_job("postgres_backup_job", key, instance)
            checks = list(result.get_asset_check_evaluations())
            outcomes.append(bool(result.success and checks and all(c.passed for c in checks)))
            sizes["dagster"] = sum(p.stat().st_size for p in (backups / "postgres" / key).glob("postgres.dump*"))
            manifest = json.loads((backups / "postgres" / key / "manifest.json").read_text())
            steps.append(float(manifest["duration_seconds"]))

        def raw_dump() -> None:
            sizes["raw"] = _raw_dump(bench, 6, raw)

        bench.log("  warm-up (definitions import, first run) ...")
        through_dagster()
        raw_dump()
        pairs = paired(through_dagster, raw_dump, bench.repeat)
        instance.dispose()
    return Figure("pg_dagster_overhead", "PostgreSQL backup through the Dagster asset (gzip:6) / raw pg_dump -Z 6",
                  pairs.ratio, "<=", 1.05, "postgres_backup_job, CB_POSTGRES_COMPRESSION=gzip:6",
                  "pg_dump -Fc -Z 6 -f file", pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path="cb_backups.cli.runs.run_job('postgres_backup_job') in process: asset + 4 slot checks "
                            "(pg_restore --list, sha256 re-read, inventory), on-disk sqlite instance",
                  note=f"the asset's own backup step (manifest duration) {statistics.median(steps[1:]):.2f}s; the "
                       "rest is run start-up, event log writes and the 4 checks (a fixed cost, not per byte)",
                  details={"every_run_succeeded_with_checks_passing": all(outcomes[1:]),
                           "bytes_dagster": sizes.get("dagster"), "bytes_raw": sizes.get("raw"),
                           "backup_step_seconds_median": round(statistics.median(steps[1:]), 3),
                           "ratios": [round(r, 3) for r in pairs.ratios]})


def default_vs_runbook(bench: Bench) -> list[Figure]:
    """the default compression against pg_dump -Z 6 (the runbook) and pg_dump -Z 0 (no compression)."""
    work = bench.scratch("pg-default")
    sizes: dict[str, int] = {}

    def default() -> None:
        artifact = _catalog_backup(bench, DEFAULT, work / "catalog")
        sizes[DEFAULT] = artifact.manifest.total_bytes

    def z6() -> None:
        sizes["-Z 6"] = _raw_dump(bench, 6, work / "z6.dump")

    def z0() -> None:
        sizes["-Z 0"] = _raw_dump(bench, 0, work / "z0.dump")

    bench.log("  warm-up ...")
    default()
    z0()
    times: dict[str, list[float]] = {DEFAULT: [], "-Z 6": [], "-Z 0": []}
    fns = [(DEFAULT, default), ("-Z 6", z6), ("-Z 0", z0)]
    for i in range(bench.repeat):  # rotate the order every round
        for name, fn in fns[i % 3:] + fns[:i % 3]:
            seconds, _ = timed(fn)
            times[name].append(seconds)
    speedups = [b / a for a, b in zip(times[DEFAULT], times["-Z 6"], strict=True)]
    vs_plain = [a / c for a, c in zip(times[DEFAULT], times["-Z 0"], strict=True)]
    med = {k: statistics.median(v) for k, v in times.items()}
    size_ratio = sizes[DEFAULT] / sizes["-Z 6"]
    size_vs_plain = sizes[DEFAULT] / sizes["-Z 0"]
    details = {"seconds": {k: round(v, 3) for k, v in med.items()},
               "bytes": sizes, "size_zstd1_over_z6": round(size_ratio, 3),
               "size_zstd1_over_z0": round(size_vs_plain, 3), "threads": os.cpu_count(),
               "throughput_mib_s": {k: round(sizes["-Z 0"] / 1048576 / v, 1) for k, v in med.items()}}
    details["zstd_levels_on_the_same_dump"] = _zstd_levels(work / "z0.dump", sizes["-Z 6"])
    speed = statistics.median(speedups)
    note = (f"size {DEFAULT} {human_bytes(sizes[DEFAULT])} vs -Z 6 {human_bytes(sizes['-Z 6'])} "
            f"(x{size_ratio:.2f}{', SMALLER/EQUAL' if size_ratio <= 1.0 else ', LARGER: size condition missed'})")
    first = Figure("pg_default_speedup", f"Default backup ({DEFAULT}) speed-up over the runbook's pg_dump -Fc -Z 6",
                   speed, ">=", 5.0, "PostgresStore.backup (default compression) via Catalog.write",
                   "pg_dump -Fc -Z 6 -f file",
                   med[DEFAULT], med["-Z 6"], bench.repeat,
                   code_path=f"pg_dump -Fc -Z 0 | zstandard {DEFAULT}, threads=nproc, HashingWriter (sha256 in the "
                             "same pass), counted in the dump's snapshot",
                   note=note, details={**details, "speedups": [round(s, 2) for s in speedups]},
                   condition_ok=size_ratio <= 1.0)
    second = Figure("pg_default_vs_plain", f"Default backup ({DEFAULT}) time / uncompressed pg_dump -Fc -Z 0",
                    statistics.median(vs_plain), "<=", 1.3, f"PostgresStore.backup {DEFAULT}",
                    "pg_dump -Fc -Z 0 -f file",
                    med[DEFAULT], med["-Z 0"], bench.repeat, code_path=first.code_path,
                    note=f"size ratio {DEFAULT} / -Z 0 = {size_vs_plain:.3f}",
                    details={"ratios": [round(r, 3) for r in vs_plain], "size_zstd1_over_z0": round(size_vs_plain, 3)})
    return [first, second]


def _zstd_levels(plain: Path, z6_bytes: int) -> dict[str, Any]:
    """What other zstd levels would give on the same uncompressed dump (streamed, nproc threads)."""
    import zstandard

    out: dict[str, Any] = {}
    for level in (1, 2, 3):
        sink = _Counter()
        start = time.perf_counter()
        with open(plain, "rb") as src:
            zstandard.ZstdCompressor(level=level, threads=os.cpu_count() or 2).copy_stream(src, sink)
        out[f"zstd:{level}"] = {"seconds": round(time.perf_counter() - start, 3), "bytes": sink.n,
                                "size_over_z6": round(sink.n / z6_bytes, 3)}
    return out


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


def restore(bench: Bench) -> list[Figure]:
    """PostgresStore.restore(scratch) of the default artifact / raw pg_restore --jobs N into a fresh db, and /
    the runbook's restore (drop + create + `pg_restore -d db < dump` of its -Z 6 dump)."""
    from psycopg import sql

    from cb_backups.core.model import Target
    from cb_backups.stores.postgres import PostgresStore

    work = bench.scratch("pg-restore")
    artifact = _catalog_backup(bench, DEFAULT, work / "catalog")
    plain, z6 = work / "plain.dump", work / "z6.dump"
    _raw_dump(bench, 0, plain)  # the same content, uncompressed: what raw pg_restore --jobs can read
    _raw_dump(bench, 6, z6)  # the runbook's backup
    jobs = os.cpu_count() or 2
    store = PostgresStore(bench.pg_settings(DEFAULT))
    counts: dict[str, Any] = {}

    def drop(name: str) -> None:
        with bench.pg.connect("postgres") as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def product() -> None:
        inventory = store.restore(artifact, Target("scratch", {"dbname": "bench_restore_a", "jobs": jobs}))
        counts["product"] = inventory.get("tables", {})

    def raw() -> None:
        with bench.pg.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench_restore_b TEMPLATE template0")
        run([bench.pg_tool("pg_restore"), "--jobs", str(jobs), "--exit-on-error", "-d", "bench_restore_b",
             str(plain)], env=bench.pg_env())

    def runbook() -> None:
        # the runbook's full restore script: DROP/CREATE DATABASE, then pg_restore reading the dump on stdin
        # (its single-store procedure adds --jobs=4, which pg_restore refuses for stdin)
        drop("bench_restore_c")
        with bench.pg.connect("postgres") as conn:
            conn.execute("CREATE DATABASE bench_restore_c")
        with open(z6, "rb") as stdin:
            done = subprocess.run([bench.pg_tool("pg_restore"), "-d", "bench_restore_c"], stdin=stdin,
                                  capture_output=True, env=bench.pg_env(), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"runbook pg_restore exited {done.returncode}: {done.stderr.decode()[-300:]}")

    def clean() -> None:
        for name in ("bench_restore_a", "bench_restore_b", "bench_restore_c"):
            drop(name)

    clean()
    pairs = paired(product, raw, bench.repeat, between=clean)
    peer = paired(product, runbook, bench.repeat, between=clean)
    clean()
    expected = artifact.manifest.inventory.get("tables", {})
    vs_runbook = Figure("pg_restore_runbook", "PostgreSQL restore (PostgresStore.restore) / the runbook's restore "
                        "commands", peer.ratio, "<=", 1.0, f"PostgresStore.restore of the {DEFAULT} artifact, "
                        f"--jobs {jobs}", "DROP + CREATE DATABASE; pg_restore -d db < the -Z 6 dump (runbook)",
                        peer.a_median, peer.b_median, len(peer.a),
                        code_path="as pg_restore; the peer is the runbook's full restore script's PostgreSQL step",
                        note="ours also verifies (sha256, TOC, versions), restores beside the target, counts and "
                             "swaps by rename; the runbook's pg_restore reads stdin, so one job",
                        details={"ratios": [round(r, 3) for r in peer.ratios]})
    return [Figure("pg_restore", "PostgreSQL restore (PostgresStore.restore, scratch) / raw pg_restore --jobs N",
                  pairs.ratio, "<=", 1.10, f"PostgresStore.restore of the {DEFAULT} artifact, --jobs {jobs}",
                  f"createdb + pg_restore --jobs {jobs} of the same dump uncompressed", pairs.a_median,
                  pairs.b_median, len(pairs.a),
                  code_path="sha256 of the .zst (one read) -> its head decompressed to the end of the TOC, "
                            "pg_restore --list -> version/pgvector check -> createdb <db>__incoming -> the same open "
                            "file decompressed straight into pg_restore's stdin (post-data with --jobs when the "
                            "dump has secondary indexes) -> ctime/size unchanged -> exact counts -> rename",
                  details={"counts_match": counts.get("product") == expected, "artifact_bytes":
                           artifact.manifest.total_bytes, "plain_dump_bytes": plain.stat().st_size,
                           "ratios": [round(r, 3) for r in pairs.ratios]}), vs_runbook]
