"""Dead runs never wedge a store, and one writer per store: real PostgreSQL, real Dagster instance, real CLI.

A session holding `LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE` blocks the backup inside pg_dump
deterministically (the backup's own counts read memories/apps/users, so they pass; pg_dump then waits
for its lock on feedback, visible in pg_stat_activity). The instance uses the repository's
dagster.yaml, so the store pools are limited to one slot as in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml

from cb_backups.cli.shutdown import children
from cb_backups.core.catalog import Catalog
from cb_backups.core.partitions import weekly_sunday_0100
from cb_backups.core.specs import spec_for
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups_tests.daemon import dagster_daemon
from cb_backups_tests.daemon import wait_until as wait_for_daemon
from cb_backups_tests.databases import databases, own_database

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cb_backups.cli.app"]
LOCKED_TABLE = "feedback"  # dumped by pg_dump, not counted by the backup itself
DAEMON_TIMEOUT = 300.0  # generous: 2 busy cores, the daemon, its code server and a run worker
# The full system backup has no CLI command; this is the CLI's own code path (cli.runs.run_job) in a process.
FULL_BACKUP = ("import sys\nfrom cb_backups.cli.runs import instance, run_job\n"
               "sys.exit(0 if run_job('full_system_backup_job', sys.argv[1], instance()).success else 1)")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 120,
               proc: subprocess.Popen[str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the CLI ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture()
def home(cb_env: dict[str, str]) -> Path:
    """The test's DAGSTER_HOME with the repository's dagster.yaml (pools limited to one slot)."""
    path = Path(cb_env["DAGSTER_HOME"])
    (path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return path


@pytest.fixture()
def table_lock(pg_server: EmbeddedPostgres) -> Iterator[Callable[[], None]]:
    """Hold an ACCESS EXCLUSIVE lock on the feedback table until the returned function is called."""
    conn = pg_server.connect()
    conn.autocommit = False
    conn.execute(f"LOCK TABLE {LOCKED_TABLE} IN ACCESS EXCLUSIVE MODE")
    released = []

    def release() -> None:
        if not released:
            conn.rollback()
            released.append(True)

    try:
        yield release
    finally:
        release()
        conn.close()


def pg_dump_waiting(pg_server: EmbeddedPostgres) -> bool:
    with pg_server.connect() as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                                 "AND wait_event_type = 'Lock'").fetchall())


def pg_dump_sessions(pg_server: EmbeddedPostgres) -> int:
    with pg_server.connect() as conn:
        return len(conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump'").fetchall())


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *argv], env={**os.environ, **(env or {})}, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def cli(argv: list[str], env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env={**os.environ, **(env or {})}, cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def runs_of(home: Path, job: str) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs(filters=dg.RunsFilter(job_name=job)))


def slot_holders(home: Path, pool: str) -> set[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {s.run_id for s in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def started_backup(home: Path, pg_server: EmbeddedPostgres, key: str) -> tuple[subprocess.Popen[str], str]:
    """A CLI backup of postgres blocked inside pg_dump, holding the store_postgres slot; and its run id."""
    proc = spawn(["backup", "postgres", "--partition", key])
    wait_until(lambda: pg_dump_waiting(pg_server), "pg_dump blocked on the table lock", proc=proc)
    runs = runs_of(home, "postgres_backup_job")
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.STARTED
    assert runs[0].tags["cb/pid"] == str(proc.pid)
    assert slot_holders(home, "store_postgres") == {runs[0].run_id}
    return proc, runs[0].run_id


def test_sigkilled_backup_inside_pg_dump_never_wedges_the_store(home: Path, pg_server: EmbeddedPostgres,
                                                               table_lock: Callable[[], None]) -> None:
    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    proc, dead_run = started_backup(home, pg_server, key)
    os.killpg(proc.pid, signal.SIGKILL)  # the OOM-kill / container-kill case: no cleanup at all
    proc.wait()
    # Its server session, still waiting for the lock, notices the client is gone (client_connection_check_interval)
    # and ends instead of taking the lock later and holding it against the next runs.
    wait_until(lambda: pg_dump_sessions(pg_server) == 0, "the dead pg_dump's server session to end", timeout=60)
    table_lock()
    assert slot_holders(home, "store_postgres") == {dead_run}  # the wedge: a dead run holds the slot

    started = time.monotonic()
    backup = cli(["backup", "postgres", "--partition", key])
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert f"freed the slot of dead run {dead_run} (pid {proc.pid} gone)" in backup.stderr, backup.stderr
    assert backup.stderr.count("freed the slot of dead run") == 1
    verify = cli(["verify", "postgres", "--partition", key])
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    restore = cli(["restore", "postgres", "--backup", key])  # scratch
    assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-3000:]
    assert "match" in restore.stdout
    assert time.monotonic() - started < 180  # each finished normally, none waited on the dead run
    assert "freed the slot" not in verify.stderr + restore.stderr  # freed once, for good

    status = {r.run_id: r.status for r in runs_of(home, "postgres_backup_job")}
    assert status[dead_run] == dg.DagsterRunStatus.FAILURE
    assert list(status.values()).count(dg.DagsterRunStatus.SUCCESS) == 1
    assert slot_holders(home, "store_postgres") == set()
    assert Catalog(Path(os.environ["CB_BACKUP_DIR"])).get("postgres", key) is not None


def test_sigterm_stops_the_cli_within_ten_seconds_and_kills_pg_dump(home: Path, pg_server: EmbeddedPostgres,
                                                                   table_lock: Callable[[], None]) -> None:
    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    proc, run_id = started_backup(home, pg_server, key)
    dumps = [p for p in children(proc.pid) if "pg_dump" in Path(f"/proc/{p}/cmdline").read_bytes().decode()]
    assert dumps, "no pg_dump child found"
    proc.send_signal(signal.SIGTERM)  # the CLI alone: it must stop its children itself
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10, err
    assert proc.returncode == 130, out + err
    assert "interrupted" in err or "stopped" in err
    assert not [p for p in dumps if alive(p)], "pg_dump outlived the CLI"

    [run] = [r for r in runs_of(home, "postgres_backup_job") if r.run_id == run_id]
    assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    assert slot_holders(home, "store_postgres") == set()
    catalog = Catalog(Path(os.environ["CB_BACKUP_DIR"]))
    assert catalog.get("postgres", key) is None  # nothing that looks like a backup
    table_lock()
    # The server notices the gone client once its lock wait ends (client_connection_check_interval is unset).
    wait_until(lambda: pg_dump_sessions(pg_server) == 0, "pg_dump's server session to end", timeout=60)
    again = cli(["backup", "postgres", "--partition", key])  # no lock or slot left held
    assert again.returncode == 0 and "freed the slot" not in again.stderr, again.stderr[-3000:]
    assert catalog.get("postgres", key) is not None


def test_same_home_second_backup_refused_and_other_runs_wait_with_a_timeout(
        home: Path, pg_server: EmbeddedPostgres, table_lock: Callable[[], None]) -> None:
    keys = spec_for("postgres").partitions.get_partition_keys()
    proc, run_id = started_backup(home, pg_server, keys[-1])

    second = cli(["backup", "postgres", "--partition", keys[-1]])
    assert second.returncode == 1
    line = " ".join(second.stderr.split())
    assert (f"postgres slot {keys[-1]}: run {run_id} (postgres_backup_job slot {keys[-1]}, pid {proc.pid}) is "
            "already running it; refusing to run a second postgres_backup_job of the same slot") in line, line

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    other = cli(["backup", "postgres", "--partition", keys[-2]], env={"CB_STORE_WAIT_SECONDS": "6"})
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert other.returncode == 1, other.stderr[-3000:]
    text = " ".join(other.stderr.split())
    assert f"waiting for run {run_id}" in text and "(up to 6 s, CB_STORE_WAIT_SECONDS)" in text, text
    assert re.search(rf"postgres is still busy after 6 s: run {run_id} .* holds it", text), text
    assert cpu < wall - 3, (cpu, wall)  # it slept while waiting: no busy loop
    assert len(runs_of(home, "postgres_backup_job")) == 1  # neither started a run

    bad = cli(["backup", "postgres", "--partition", keys[-2]], env={"CB_STORE_WAIT_SECONDS": "soon"})
    assert bad.returncode == 2 and "invalid CB_STORE_WAIT_SECONDS: 'soon'" in bad.stderr, bad.stderr

    table_lock()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def started_full_backup(home: Path, pg_server: EmbeddedPostgres, log: Path) -> tuple[subprocess.Popen[str], str]:
    """A full system backup blocked inside its pg_dump, holding every store pool; and its run id."""
    key = weekly_sunday_0100.get_partition_keys()[-1]
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", FULL_BACKUP, key], cwd=ROOT, text=True,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    wait_until(lambda: pg_dump_waiting(pg_server), "the full backup's pg_dump blocked on the table lock",
               proc=proc)
    [run] = runs_of(home, "full_system_backup_job")
    assert run.status == dg.DagsterRunStatus.STARTED and run.tags["cb/pid"] == str(proc.pid)
    for pool in ("store_postgres", "store_valkey", "full_system"):
        assert slot_holders(home, pool) == {run.run_id}, pool  # one writer per store, the full run included
    return proc, run.run_id


def test_store_backup_waits_for_the_full_system_backup_without_spinning(
        home: Path, pg_server: EmbeddedPostgres, table_lock: Callable[[], None], tmp_path: Path) -> None:
    full, full_run = started_full_backup(home, pg_server, tmp_path / "full.err")
    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    log = tmp_path / "store.err"
    with log.open("w") as err:
        store = subprocess.Popen([*CLI, "backup", "postgres", "--partition", key], cwd=ROOT, text=True,
                                 env={**os.environ, "CB_STORE_WAIT_SECONDS": "600"},
                                 stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    wait_until(lambda: f"waiting for run {full_run} (full_system_backup_job" in " ".join(log.read_text().split()),
               "the store backup's waiting line", proc=store)
    # Measure its CPU over a window of several of its 2 s polls: waiting must sleep, not spin.
    cpu0, wall0 = cpu_seconds(store.pid), time.monotonic()
    wait_until(lambda: time.monotonic() - wall0 > 6, "a measuring window", proc=store)
    cpu, wall = cpu_seconds(store.pid) - cpu0, time.monotonic() - wall0
    assert cpu < wall / 4, (cpu, wall)
    assert runs_of(home, "postgres_backup_job") == []  # it waits before starting a run
    assert pg_dump_sessions(pg_server) == 1  # only the full backup's pg_dump

    table_lock()
    assert full.wait(timeout=300) == 0, (tmp_path / "full.err").read_text()[-3000:]
    out, _ = store.communicate(timeout=300)
    assert store.returncode == 0, out[-3000:] + log.read_text()[-3000:]
    assert "freed the slot" not in log.read_text()
    [full_record] = runs_of_records(home, "full_system_backup_job")
    [store_record] = runs_of_records(home, "postgres_backup_job")
    assert full_record.dagster_run.status == store_record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert store_record.start_time >= full_record.end_time  # one writer at a time
    assert Catalog(Path(os.environ["CB_BACKUP_DIR"])).get("postgres", key) is not None


def test_sigkilled_full_system_backup_leaves_every_store_usable(
        home: Path, pg_server: EmbeddedPostgres, table_lock: Callable[[], None], tmp_path: Path) -> None:
    full, full_run = started_full_backup(home, pg_server, tmp_path / "full.err")
    os.killpg(full.pid, signal.SIGKILL)  # the container-kill case: no cleanup at all
    full.wait()
    table_lock()
    assert slot_holders(home, "store_postgres") == {full_run}  # the wedge a dead full run would leave

    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    backup = cli(["backup", "postgres", "--partition", key])
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert f"freed the slot of dead run {full_run} (pid {full.pid} gone)" in backup.stderr, backup.stderr
    [record] = runs_of_records(home, "full_system_backup_job")
    assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    for pool in ("store_postgres", "store_valkey", "full_system"):
        assert slot_holders(home, pool) == set(), pool  # every store's slot, not only the one asked for
    assert Catalog(Path(os.environ["CB_BACKUP_DIR"])).get("postgres", key) is not None
    valkey_key = spec_for("valkey").partitions.get_partition_keys()[-1]
    valkey = cli(["backup", "valkey", "--partition", valkey_key])
    assert valkey.returncode == 0 and "freed the slot" not in valkey.stderr, valkey.stderr[-3000:]


def runs_of_records(home: Path, job: str) -> list[dg.RunRecord]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_run_records(filters=dg.RunsFilter(job_name=job)))


@pytest.fixture()
def daemon(home: Path, tmp_path: Path) -> Iterator[Path]:
    """A real `dagster-daemon run` on the test instance (DefaultRunLauncher: each run its own process)."""
    log = tmp_path / "daemon.log"
    # Create the SQLite storage first: the daemon and `dagster job launch` creating it at once race on alembic.
    runs_of(home, "postgres_backup_job")
    env = {**os.environ, "CB_DEAD_RUNS_SENSOR_SECONDS": "2"}  # a tick every few seconds, not every minute
    with dagster_daemon(log, env):
        yield log


def daemon_wait(what: str, condition: Callable[[], Any], log: Path) -> Any:
    return wait_for_daemon(what, condition, log, DAEMON_TIMEOUT)


def run_start_pid(home: Path, run_id: str) -> int | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
        event = records[0].event_log_entry.dagster_event if records else None
        return event.pid if event else None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("kill_code_server", [False, True], ids=["worker", "worker-and-code-server"])
def test_daemon_sensor_frees_a_sigkilled_daemon_run(home: Path, pg_server: EmbeddedPostgres,
                                                   table_lock: Callable[[], None], daemon: Path,
                                                   kill_code_server: bool) -> None:
    """The daemon's dead_runs_sensor frees the store of a daemon-launched run whose worker was SIGKILLed.

    With the code server alive, it notices its worker died and fails the run, but nobody frees the pool
    slot before run monitoring's 60 s: the sensor does. With the code server killed too (the daemon
    restarts it), nothing else notices: the sensor fails the run from its RUN_START pid.
    """
    # Not the newest slot: the daemon's own schedule may fire for that one while the test runs.
    key = spec_for("postgres").partitions.get_partition_keys()[-2]
    # The public submit path: the run goes to the daemon's queue; the daemon's run launcher starts it.
    launch = subprocess.run([sys.executable, "-m", "dagster", "job", "launch", "-m", "cb_backups.definitions",
                             "-j", "postgres_backup_job", "--tags", f'{{"dagster/partition": "{key}"}}'],
                            cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    [run] = [r for r in runs_of(home, "postgres_backup_job") if "dagster/schedule_name" not in r.tags]
    assert run.tags.get("store") == "postgres" and "cb/pid" not in run.tags  # not a CLI run
    daemon_wait("pg_dump blocked on the table lock", lambda: pg_dump_waiting(pg_server), daemon)
    worker = daemon_wait("the run's RUN_START event", lambda: run_start_pid(home, run.run_id), daemon)
    assert run.run_id in slot_holders(home, "store_postgres")
    victims = [worker, *children(worker)]  # the worker, its step process and pg_dump: nothing cleans up
    assert any("pg_dump" in Path(f"/proc/{p}/cmdline").read_bytes().decode() for p in victims if alive(p))
    if kill_code_server:
        server = parent_of(worker)
        assert "grpc" in Path(f"/proc/{server}/cmdline").read_bytes().decode(), "the worker's parent"
        victims.insert(0, server)  # first, so that it cannot report its worker's death
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    table_lock()

    def freed() -> bool:
        [now] = [r for r in runs_of(home, "postgres_backup_job") if r.run_id == run.run_id]
        return now.status == dg.DagsterRunStatus.FAILURE and run.run_id not in slot_holders(home, "store_postgres")

    daemon_wait("the dead run to be failed and its slot freed", freed, daemon)
    sensor_line = re.compile(rf"dead_runs_sensor .*freed the slot of (dead|finished) run {run.run_id}")
    daemon_wait("dead_runs_sensor's line in the daemon log", lambda: sensor_line.search(daemon.read_text()), daemon)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    messages = " ".join(e.dagster_event.message or "" for e in failures if e.dagster_event)
    if kill_code_server:
        assert f"the run's process died (pid {worker} gone" in messages and "cb-backups" in messages, messages
        assert f"freed the slot of dead run {run.run_id} (pid {worker} gone" in daemon.read_text()

    backup = cli(["backup", "postgres", "--partition", key])  # the store is usable again
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert "freed the slot" not in backup.stderr  # the daemon had already freed it
    assert Catalog(Path(os.environ["CB_BACKUP_DIR"])).get("postgres", key) is not None


# --- a restore killed inside its closed window --------------------------------------------------------------


def journal_phase(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["phase"])
    except (OSError, ValueError, KeyError):
        return None


def test_sigkilled_in_place_restore_is_put_back_by_the_next_run(home: Path, pg_server: EmbeddedPostgres,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 cb_env: dict[str, str]) -> None:
    """SIGKILL while the live database is moved aside and closed (the safety backup is running, held on a
    table lock): the live name is missing. The next run of the store (a verify) puts it back, naming the
    dead restore, and every row written before the restore is there; then an in-place restore works."""
    acks = "CREATE TABLE acks (id bigint PRIMARY KEY)"
    with own_database(pg_server, monkeypatch, "cbk", 20, setup=lambda conn: conn.execute(acks)) as db:
        key = spec_for("postgres").partitions.get_partition_keys()[-1]
        assert cli(["backup", "postgres", "--partition", key]).returncode == 0
        with pg_server.connect(db) as conn:
            conn.execute("INSERT INTO acks (id) VALUES (7)")  # written after the backup: only the live db has it
        journal = Path(cb_env["CB_BACKUP_DIR"]) / "_restores" / "postgres.json"
        proc = spawn(["restore", "postgres", "--backup", key, "--target", "in-place", "--yes"])
        wait_until(lambda: journal_phase(journal) == "closed", "the restore to close the live database", proc=proc)
        aside = json.loads(journal.read_text())["hold"]["aside"]
        with contextlib.ExitStack() as stack:
            lock = stack.enter_context(pg_server.connect(aside))
            lock.autocommit = False
            with contextlib.suppress(psycopg.errors.LockNotAvailable):  # pg_dump already has it: kill at once
                lock.execute(f"LOCK TABLE {LOCKED_TABLE} IN ACCESS EXCLUSIVE MODE NOWAIT")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        assert journal_phase(journal) == "closed"  # killed inside the window, and the journal says so
        assert db not in databases(pg_server)  # the live name is gone: the application would be down

        verified = cli(["verify", "postgres", "--partition", key])
        assert verified.returncode == 0, verified.stderr
        assert re.search(r"postgres: recovered the in-place restore of .* killed closed \(pid \d+ gone\): "
                         rf"renamed {aside} back to {db}", verified.stderr), verified.stderr
        assert not journal.exists()
        with pg_server.connect(db) as conn:  # in service again, with the write the backup does not have
            assert conn.execute("SELECT id FROM acks").fetchall() == [(7,)]

        restored = cli(["restore", "postgres", "--backup", key, "--target", "in-place", "--yes"])
        assert restored.returncode == 0, restored.stderr
        with pg_server.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM acks").fetchone() == (0,)  # the backup's state
        kept = [d for d in databases(pg_server) if d.startswith(f"{db}__replaced_")]
        assert len(kept) == 1  # ... and the data it replaced, with row 7, kept aside
        with pg_server.connect(kept[0]) as conn:
            assert conn.execute("SELECT id FROM acks").fetchall() == [(7,)]


def test_post_backup_hook_a_sigkilled_backup_missed_runs_before_the_next(
        home: Path, pg_server: EmbeddedPostgres, table_lock: Callable[[], None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed inside pg_dump, after its pre_backup stopped the writers: the next run of the store starts them
    again first (the marker under _hooks/ names the post_backup owed), and says so."""
    log = tmp_path / "hooks.log"
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"hooks": {"postgres": {
        "pre_backup": ["sh", "-c", f"echo stop-writers >> {log}"],
        "post_backup": ["sh", "-c", f"echo start-writers >> {log}"]}}}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    proc, _ = started_backup(home, pg_server, key)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    table_lock()
    assert log.read_text().split() == ["stop-writers"]  # the writers are still stopped

    verify = cli(["verify", "postgres", "--partition", key])
    assert f"postgres: ran the post_backup hook that a killed backup missed (pid {proc.pid} gone)" in verify.stderr, \
        verify.stderr
    assert log.read_text().split() == ["stop-writers", "start-writers"]
    backup = cli(["backup", "postgres", "--partition", key])
    assert backup.returncode == 0, backup.stderr
    assert log.read_text().split() == ["stop-writers", "start-writers", "stop-writers", "start-writers"]
