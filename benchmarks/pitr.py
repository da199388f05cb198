"""PITR figures beside Barman: base backup throughput, time to recover to a point, RPO under load.

One set-up per benchmark run, on the sample-data server: `cb-backups wal-receive` and `barman
receive-wal` both stream its WAL (each on its own slot), so both tools back up and recover the same
server, data and WAL. Barman (pip `barman`) runs with the pgserver binaries (`path_prefix`), a
streaming backup (`backup_method = postgres`) and the password from PGPASSWORD (never in its config).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes, paired, run, timed
from cb_backups.core.net import wait_until

WAIT = 300  # generous: 2 busy cores
CB_SLOT, BARMAN_SLOT, BARMAN_SERVER = "cb_bench_wal", "barman_bench", "bench"
BURST_ROWS = 2000
_SETUPS: dict[int, Pitr] = {}
CB = [sys.executable, "-c", "import sys; from cb_backups.cli.app import main; sys.exit(main())"]  # cb-backups


@dataclass
class Pitr:
    """The servers' WAL receivers, the two catalogs and the recovery point shared by the figures."""

    bench: Bench
    root: Path
    env: dict[str, str]
    barman_conf: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    target_time: str = ""
    expected_rows: int = 0
    base_done: bool = False

    # --- cb-backups ---------------------------------------------------------------------
    def server(self) -> Any:
        from cb_backups.config.pitr import PitrSettings
        from cb_backups.stores.pitr.server import Server

        run_as = "postgres" if os.geteuid() == 0 else None
        return Server(self.bench.pg_settings(), PitrSettings(slot=CB_SLOT, run_as=run_as,
                                                             scratch_dir=str(self.root / "cb-scratch")))

    def archive(self) -> Any:
        from cb_backups.core.catalog import Catalog
        from cb_backups.stores.pitr.archive import WalArchive

        return WalArchive(Catalog(self.root / "backups"))

    def cb(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run([*CB, *args], env=self.env)

    # --- Barman ---------------------------------------------------------------------------
    def barman(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run([_barman(), "-q", "-c", str(self.barman_conf), *args], env=self.env)

    def barman_wals(self) -> set[str]:
        wals = self.root / "barman" / BARMAN_SERVER / "wals"
        return {p.name.split(".")[0] for p in wals.rglob("0*") if p.is_file()} if wals.is_dir() else set()

    def stop(self) -> None:
        for proc in self.procs:  # our own receivers, by their process group
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        with contextlib.suppress(Exception), self.bench.pg.connect() as conn:  # the slots would hold WAL forever
            for slot in (CB_SLOT, BARMAN_SLOT):
                conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE slot_name = %s AND NOT active", (slot,))


def _barman() -> str:
    found = shutil.which("barman") or str(Path(sys.executable).with_name("barman"))
    if not Path(found).exists():
        raise RuntimeError("barman is not installed: pip install -e '.[bench]' (or pip install barman)")
    return found


def _barman_conf(root: Path, pg: Any) -> Path:
    conn = f"host=127.0.0.1 port={pg.port} user={pg.user} dbname={pg.dbname}"  # password: PGPASSWORD
    text = f"""[barman]
barman_home = {root / "barman"}
barman_user = {getpass.getuser()}
log_file = {root / "barman.log"}
log_level = INFO

[{BARMAN_SERVER}]
description = cb-backups benchmark
conninfo = {conn}
streaming_conninfo = {conn}
backup_method = postgres
streaming_archiver = on
slot_name = {BARMAN_SLOT}
create_slot = auto
archiver = off
path_prefix = {pg.bin_dir}
"""
    path = root / "barman.conf"
    path.write_text(text)
    path.chmod(0o600)
    return path


def setup(bench: Bench) -> Pitr:
    """Both receivers streaming, once per benchmark run."""
    if id(bench) in _SETUPS:
        return _SETUPS[id(bench)]
    pg = bench.pg
    root = bench.scratch("pitr")
    root.chmod(0o711)  # the server's system user reaches the scratch recoveries under it
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (root / "cb.yaml").write_text(f"postgres_wal:\n  scratch_dir: {root / 'cb-scratch'}\n")
    env = bench.pg_env(CB_BACKUP_DIR=str(root / "backups"), CB_BACKUP_DIR_CREATE="1", CB_POSTGRES_URL=pg.url,
                       CB_POSTGRES_PASSWORD=pg.password, CB_PG_BIN_DIR=str(pg.bin_dir), CB_WAL_SLOT=CB_SLOT,
                       CB_PG_RUN_AS="postgres" if os.geteuid() == 0 else "", CB_CONFIG=str(root / "cb.yaml"),
                       DAGSTER_HOME=str(root / "dagster_home"), CB_LOG_LEVEL="ERROR", PGDATABASE=pg.dbname)
    (root / "barman").mkdir(mode=0o700)
    p = Pitr(bench, root, env, _barman_conf(root, pg))
    bench.on_exit(p.stop)
    with pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS pitr_bench")
        conn.execute("CREATE TABLE pitr_bench (id bigserial PRIMARY KEY, burst int NOT NULL, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")
    try:
        _start_receivers(p)
    except BaseException:
        p.stop()  # a later figure sets up afresh
        raise
    _SETUPS[id(bench)] = p
    return p


def _start_receivers(p: Pitr) -> None:
    logs = p.root / "logs"
    logs.mkdir()
    p.barman("receive-wal", "--create-slot", BARMAN_SERVER)
    for name, argv in (("cb-wal-receive", [*CB, "wal-receive"]),
                       ("barman-receive-wal", [_barman(), "-c", str(p.barman_conf), "receive-wal", BARMAN_SERVER])):
        with open(logs / f"{name}.log", "ab") as log:
            p.procs.append(subprocess.Popen(argv, env=p.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))
    wait_until(lambda: _streaming(p) >= 2 or any(x.poll() is not None for x in p.procs), WAIT,
               "both WAL receivers streaming")
    dead = [(x.args, (logs / f"{n}.log").read_text()[-300:]) for x, n in
            zip(p.procs, ("cb-wal-receive", "barman-receive-wal"), strict=True) if x.poll() is not None]
    if dead:
        raise RuntimeError(f"a WAL receiver exited: {dead[0][0][-2:]}: {dead[0][1]}")


def _streaming(p: Pitr) -> int:
    with p.bench.pg.connect() as conn:
        return int(conn.execute("SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name IN (%s, %s)",
                                (CB_SLOT, BARMAN_SLOT)).fetchone()[0])


def _switch_and_wait(p: Pitr) -> str:
    """Close the current segment; wait until both archives hold it (barman archives when asked)."""
    with p.bench.pg.connect() as conn:
        conn.execute("INSERT INTO pitr_bench (burst) VALUES (0)")  # a segment with something in it to close
        name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    archive = p.archive()

    def both() -> bool:
        p.barman("archive-wal", BARMAN_SERVER)
        return archive.get(name) is not None and name in p.barman_wals()

    wait_until(both, WAIT, f"WAL segment {name} archived by cb-backups and Barman")
    return name


# --- pitr_base_backup ------------------------------------------------------------------------


def base_backup(bench: Bench) -> Figure:
    """cb-backups' base backup (pg_basebackup tar | zstd, hashed, in the catalog) / `barman backup --wait`."""
    from cb_backups.core.catalog import Catalog
    from cb_backups.stores.pitr import basebackup

    p = setup(bench)
    server = p.server()
    runs = p.root / "cb-runs"
    sizes: dict[str, int] = {}

    cpu: dict[str, list[float]] = {"cb": [], "barman": []}  # ours and our children / barman's tree

    def product() -> None:
        shutil.rmtree(runs, ignore_errors=True)
        before = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
        artifact = Catalog(runs).write(basebackup.BASE_STORE, "2026-12-01", lambda into: basebackup.take(server, into))
        cpu["cb"].append(_cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - before)
        sizes["cb"] = artifact.manifest.total_bytes

    def barman() -> None:
        before = _cpu(resource.RUSAGE_CHILDREN)
        p.barman("backup", "--wait", BARMAN_SERVER)
        cpu["barman"].append(_cpu(resource.RUSAGE_CHILDREN) - before)

    bench.log("  warm-up ...")
    product()
    barman()
    pairs = paired(product, barman, bench.repeat)
    # The one the recovery figure uses, verified by pg_verifybackup like the asset's check does.
    catalog = Catalog(p.root / "backups")
    base = catalog.write(basebackup.BASE_STORE, "2026-12-01", lambda into: basebackup.take(server, into))
    verify_seconds, verification = timed(lambda: basebackup.verify(server, base, catalog.root / "_pitr"))
    catalog.record_verification(base, verification)
    p.base_done = True
    with bench.pg.connect() as conn:
        cluster = int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0])
    barman_bytes = _dir_bytes(p.root / "barman" / BARMAN_SERVER / "base")
    barman_count = max(1, sum(1 for _ in (p.root / "barman" / BARMAN_SERVER / "base").iterdir()))
    mib_s = {"cb": cluster / 2**20 / pairs.a_median, "barman": cluster / 2**20 / pairs.b_median}
    return Figure("pitr_base_backup", "PITR base backup throughput: cb-backups / Barman streaming backup",
                  1 / pairs.ratio, ">=", 0.9,
                  f"Catalog.write(basebackup.take): pg_basebackup -Ft -X fetch | "
                  f"zstd:{server.pitr.base_backup_compression_level}, sha256, 0600",
                  "barman backup --wait (backup_method=postgres: pg_basebackup, plain copy)",
                  pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path="cb_backups.stores.pitr.basebackup.take through Catalog.write (the asset's step; "
                            "its pg_verifybackup check is timed apart)",
                  note=f"cluster {human_bytes(cluster)}: cb {mib_s['cb']:.0f} MiB/s, stored "
                       f"{human_bytes(sizes['cb'])}; Barman {mib_s['barman']:.0f} MiB/s, stored "
                       f"{human_bytes(barman_bytes / barman_count)}; pg_verifybackup check {verify_seconds:.1f}s",
                  details={"cluster_bytes": cluster, "mib_per_s": {k: round(v, 1) for k, v in mib_s.items()},
                           "bytes_cb": sizes["cb"], "bytes_barman_each": barman_bytes // barman_count,
                           "verified": verification.ok, "verify_seconds": round(verify_seconds, 2),
                           "throughput_ratios": [round(1 / r, 3) for r in pairs.ratios],
                           # the server's own work (walsender) is in neither; the rest is what load slows down
                           "cpu_seconds_median": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
                           "load_at_end": round(os.getloadavg()[0], 1)})


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


# --- pitr_recover -----------------------------------------------------------------------------


def _prepare_point(p: Pitr) -> None:
    """Burst 1, the target time, burst 2, WAL closed and archived by both: recovering finds burst 1 only."""
    if p.target_time:
        return
    if not p.base_done:
        base_backup(p.bench)
    with p.bench.pg.connect() as conn:
        conn.execute("INSERT INTO pitr_bench (burst) SELECT 1 FROM generate_series(1, %s)", (BURST_ROWS,))
        p.expected_rows = int(conn.execute("SELECT count(*) FROM pitr_bench").fetchone()[0])
        p.target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
        conn.execute("INSERT INTO pitr_bench (burst) SELECT 2 FROM generate_series(1, %s)", (BURST_ROWS,))
    _switch_and_wait(p)


def _rows(p: Pitr, port: int) -> int:
    with p.server().connect("127.0.0.1", port) as conn:
        return int(conn.execute("SELECT count(*) FROM pitr_bench").fetchone()[0])


def recover(bench: Bench) -> Figure:
    """`cb-backups restore postgres --to-time T` (scratch) / `barman recover --target-time T` + start + promote."""
    from cb_backups.core.net import free_port
    from cb_backups.stores.pitr import recovery

    if shutil.which("rsync") is None:
        raise RuntimeError("barman recover copies with rsync: install it (apt-get install rsync)")
    p = setup(bench)
    _prepare_point(p)
    server = p.server()
    scratch = p.root / "cb-scratch"
    found: dict[str, list[int]] = {"cb": [], "barman": []}

    def product() -> None:
        p.cb("restore", "postgres", "--to-time", p.target_time, "--json")
        data = next(scratch.glob("*/data"))
        port = int((data / "postmaster.pid").read_text().splitlines()[3])
        found["cb"].append(_rows(p, port))

    def barman() -> None:
        dest = p.root / "barman-recovered" / "data"
        dest.parent.mkdir(parents=True)
        p.barman("recover", "--target-time", p.target_time, "--target-action", "promote", BARMAN_SERVER, "latest",
                 str(dest))
        dest.chmod(0o700)
        server.give(dest.parent)
        port = free_port()
        done = server.pg_ctl(dest, "start", log=dest.parent / "postgres.log",
                             options=f"-p {port} -k {dest.parent} -c listen_addresses=127.0.0.1")
        if done.returncode != 0:
            raise RuntimeError(f"the server Barman recovered did not start: {done.stderr[-300:]}")
        wait_until(lambda: _promoted(p, port), WAIT, "Barman's recovered server promoted")
        found["barman"].append(_rows(p, port))

    def clean() -> None:
        for data in [*scratch.glob("*/data"), p.root / "barman-recovered" / "data"]:
            if data.is_dir():
                recovery.stop(server, data)
                shutil.rmtree(data.parent)

    clean()
    pairs = paired(product, barman, bench.repeat, between=clean)
    clean()
    match = all(n == p.expected_rows for n in found["cb"] + found["barman"])
    return Figure("pitr_recover", "Time to recover to a point: cb-backups restore --to-time (scratch) / Barman",
                  pairs.ratio, "<=", 1.5, "cb-backups restore postgres --to-time T --json (a Dagster run, scratch)",
                  "barman recover --target-time T --target-action promote + pg_ctl start until promoted",
                  pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path="plan_pitr -> sha256 of base + every WAL segment -> extract -> start on a free port -> "
                            "promoted -> recovery point -> counts (cb_backups.restore.pitr.execute_pitr)",
                  note=f"both found exactly the {p.expected_rows} rows before the target: {match}",
                  details={"counts_match": match, "rows_found": found, "expected_rows": p.expected_rows,
                           "target_time": p.target_time, "ratios": [round(r, 3) for r in pairs.ratios]})


def _promoted(p: Pitr, port: int) -> bool:
    try:
        with p.server().connect("127.0.0.1", port, timeout=3) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except Exception:  # still starting
        return False


# --- pitr_rpo -----------------------------------------------------------------------------------


def rpo(bench: Bench) -> Figure:
    """Age of the newest WAL the receiver holds (fsynced), sampled under a steady insert load."""
    p = setup(bench)
    seconds = 5.0 if bench.quick else 30.0
    stop = threading.Event()
    commits: list[tuple[int, float]] = []  # (the commit's end LSN, when it returned)
    errors: list[str] = []

    def load() -> None:
        try:
            with bench.pg.connect() as conn:
                while not stop.is_set():
                    conn.execute("INSERT INTO pitr_bench (burst) SELECT 9 FROM generate_series(1, 50)")
                    lsn = int(conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'").fetchone()[0])
                    commits.append((lsn, time.time()))
                    stop.wait(0.02)  # ~50 commits/s: steady, not a flood
        except Exception as exc:  # reported in the figure
            errors.append(str(exc))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    ages: list[float] = []
    end = time.monotonic() + seconds
    with bench.pg.connect() as conn:
        while time.monotonic() < end:
            row = conn.execute("SELECT flush_lsn - '0/0' FROM pg_stat_replication r JOIN pg_replication_slots s "
                               "ON s.active_pid = r.pid WHERE s.slot_name = %s", (CB_SLOT,)).fetchone()
            now = time.time()
            if row and row[0] is not None and commits:
                flushed = int(row[0])
                done = [t for lsn, t in commits if lsn <= flushed]
                # Newest commit already safe in the archive; the ones after it are what a crash now would lose.
                pending = [t for lsn, t in commits if lsn > flushed]
                ages.append(now - min(pending) if pending else 0.0 if done else now - commits[0][1])
            time.sleep(0.25)  # the sampling interval of the measurement, not a synchronisation
    stop.set()
    loader.join(30)
    from cb_backups.stores.pitr.health import rpo_outcome

    check = rpo_outcome(p.server(), p.archive())
    worst = max(ages) if ages else None
    return Figure("pitr_rpo", "RPO: age of the oldest commit not yet in the WAL archive, under steady inserts (s)",
                  worst, "<=", 60.0, "cb-backups wal-receive (pg_receivewal --synchronous into the archive spool)",
                  "", None, None, len(ages), unit="s",
                  code_path="cb_backups.stores.pitr.receiver: pg_receivewal on slot, every write flushed; completed "
                            "segments zstd + sha256 + recorded",
                  note=(f"{len(commits)} commits in {seconds:.0f}s, {len(ages)} samples: median "
                        f"{statistics.median(ages):.3f}s, max {worst:.3f}s; the RPO check says: {check.description}"
                        if ages else f"no samples: {errors[:1]}"),
                  details={"samples": len(ages), "commits": len(commits), "median_seconds":
                           round(statistics.median(ages), 3) if ages else None, "max_seconds": worst,
                           "rpo_check_passed": check.passed, "rpo_check": check.description, "errors": errors[:3]})
