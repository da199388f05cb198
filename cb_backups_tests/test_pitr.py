"""Point-in-time recovery on a real PostgreSQL 16 (pgserver): WAL received by pg_receivewal, base backups by
pg_basebackup, recovery by the server itself.

A server of its own (module scope): the in-place recovery swaps its data directory, and its WAL and slot
must not be shared with the session server every other test uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from cb_backups.config.settings import Settings, load_settings
from cb_backups.core.catalog import utcnow
from cb_backups.core.errors import ConfigError, RestoreRefused
from cb_backups.core.net import wait_until
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.restore.pitr import execute_pitr, pitr_settings, plan_pitr
from cb_backups.stores.pitr import basebackup, recovery
from cb_backups.stores.pitr.archive import WalArchive, gaps
from cb_backups.stores.pitr.health import WAL_CHECKS, hour_outcomes, rpo_outcome
from cb_backups.stores.pitr.receiver import Receiver, preflight
from cb_backups.stores.pitr.server import PitrError, Server

PASSWORD = "pitr-T3st-s3cret-41"
WAIT = 120  # generous: CI runs on 2 busy cores


@dataclass
class Pitr:
    pg: EmbeddedPostgres
    settings: Settings
    server: Server
    archive: WalArchive
    receiver: Receiver
    thread: threading.Thread
    bursts: dict[int, int]
    t_mid: str  # between bursts 2 and 3

    def count(self, port: int | None = None) -> dict[int, int]:
        with self.server.connect("127.0.0.1", port or self.pg.port) as conn:
            return dict(conn.execute("SELECT burst, count(*) FROM memories GROUP BY burst").fetchall())


def _env(pg: EmbeddedPostgres, backup_dir: Path) -> dict[str, str]:
    return {**pg.env(), "CB_BACKUP_DIR": str(backup_dir), "CB_BACKUP_DIR_CREATE": "1",
            "CB_PG_DATA_DIR": str(pg.pgdata), "CB_PG_RUN_AS": "postgres" if os.geteuid() == 0 else "",
            "CB_PG_SERVER_OPTIONS": f"-p {pg.port} -k {pg.socket_dir} -c listen_addresses=127.0.0.1",
            "CB_WAL_SLOT": "cb_test_wal"}


def _drop_scratch(p: Pitr, data: Path) -> None:
    """Stop a scratch recovery's server and remove its folder (data, WAL, log)."""
    recovery.stop(p.server, data)
    shutil.rmtree(data.parent)


def burst(pg: EmbeddedPostgres, number: int, rows: int) -> None:
    with pg.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO memories (burst, at) SELECT %s, clock_timestamp() FROM generate_series(1, %s)",
                     (number, rows))


def receiving(settings: Settings, pg: EmbeddedPostgres) -> tuple[Server, WalArchive, Receiver, threading.Thread]:
    """A running `wal-receive` (a thread) on `pg`, and the bursts' table."""
    server = Server(settings.store("postgres"), pitr_settings(settings))
    archive = WalArchive(settings.catalog())
    receiver = Receiver(server, archive, log=lambda line: None)
    receiver.start()
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    with pg.connect() as conn:
        conn.execute("CREATE TABLE memories (id bigserial PRIMARY KEY, burst int NOT NULL, at timestamptz NOT NULL)")
    return server, archive, receiver, thread


def switch_and_archive(p: Pitr) -> str:
    """Close the current segment and wait until the receiver recorded it."""
    with p.pg.connect() as conn:
        lsn = conn.execute("SELECT pg_switch_wal()::text").fetchone()[0]
    with p.pg.connect() as conn:
        name = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()[0]
    wait_until(lambda: p.archive.get(name) is not None, WAIT, f"segment {name} archived")
    return name


@pytest.fixture(scope="module")
def pitr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pitr]:
    root = tmp_path_factory.mktemp("pitr")
    pg = EmbeddedPostgres(password=PASSWORD).start()
    saved = dict(os.environ)
    os.environ.update(_env(pg, root / "backups"))
    try:
        settings = load_settings()
        server, archive, receiver, thread = receiving(settings, pg)
        catalog = settings.catalog()
        base = catalog.write(basebackup.BASE_STORE, "2026-12-01", lambda into: basebackup.take(server, into))
        catalog.record_verification(base, basebackup.verify(server, base, catalog.root / "_pitr"))
        bursts = {1: 100, 2: 200, 3: 300}
        burst(pg, 1, bursts[1])
        burst(pg, 2, bursts[2])
        with pg.connect() as conn:
            t_mid = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
        burst(pg, 3, bursts[3])
        p = Pitr(pg, settings, server, archive, receiver, thread, bursts, t_mid)
        switch_and_archive(p)
        yield p
    finally:
        receiver.stop.set()
        thread.join(60)
        os.environ.clear()
        os.environ.update(saved)
        pg.cleanup()


def test_base_backup_is_verified_by_pg_verifybackup(pitr: Pitr) -> None:
    base = pitr.settings.catalog().list(basebackup.BASE_STORE)[-1]
    assert pitr.settings.catalog().verification_of(base).ok  # type: ignore[union-attr]
    assert base.manifest.markers["start_lsn"] and base.manifest.markers["stop_lsn"]
    assert (base.path(basebackup.BASE_FILE).stat().st_mode & 0o777) == 0o600


def test_recover_to_a_time_between_bursts_into_scratch(pitr: Pitr) -> None:
    plan = plan_pitr(pitr.settings, to_time=pitr.t_mid)
    result = execute_pitr(plan)
    try:
        port = int(result.connection.split(":")[2].split("/")[0])
        assert pitr.count(port) == {1: 100, 2: 200}  # exactly bursts 1-2
        assert result.point["last_transaction_at"] <= pitr.t_mid
    finally:
        _drop_scratch(pitr, Path(result.data_dir))
    assert pitr.count() == pitr.bursts  # the live server untouched


def test_recover_latest_finds_all_three_bursts(pitr: Pitr) -> None:
    result = execute_pitr(plan_pitr(pitr.settings))
    try:
        port = int(result.connection.split(":")[2].split("/")[0])
        assert pitr.count(port) == pitr.bursts
    finally:
        _drop_scratch(pitr, Path(result.data_dir))


def test_killed_receiver_resumes_with_no_gap(pitr: Pitr) -> None:
    first = pitr.archive.segments()[0]
    burst(pitr.pg, 4, 50)  # mid-segment: the receiver holds a .partial
    proc = pitr.receiver.proc
    assert proc is not None and proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    wait_until(lambda: pitr.receiver.proc is not proc and pitr.receiver.proc.poll() is None, WAIT,
               "pg_receivewal restarted")
    burst(pitr.pg, 5, 50)
    newest = switch_and_archive(pitr)
    assert gaps(pitr.archive.segments(), first.timeline, first.segno) == []
    assert pitr.archive.segments()[-1].name == newest
    pitr.bursts.update({4: 50, 5: 50})


def test_a_deleted_segment_fails_continuity_and_refuses_pitr(pitr: Pitr) -> None:
    segments = pitr.archive.segments()
    victim = segments[-2]
    stored, record = pitr.archive.path(victim), pitr.archive.segments_dir / f"{victim.name}.json"
    saved = stored.read_bytes(), record.read_bytes()
    stored.unlink()
    record.unlink()
    try:
        assert gaps(pitr.archive.segments(), victim.timeline, segments[0].segno) == [victim.name]
        hour = {o.name: o for o in hour_outcomes(pitr.server, pitr.archive, victim.completed - timedelta(hours=1),
                                                 utcnow() + timedelta(hours=1))}
        assert not hour["segments_present"].passed and victim.name in hour["segments_present"].description
        with pytest.raises(RestoreRefused, match=victim.name):
            plan_pitr(pitr.settings, mode="in_place")
        assert pitr.count() == pitr.bursts  # nothing changed
    finally:
        stored.write_bytes(saved[0])
        record.write_bytes(saved[1])


def test_hour_checks_pass_on_the_archive(pitr: Pitr) -> None:
    first = pitr.archive.segments()[1]  # its predecessor is archived: continuity has something to prove
    outcomes = hour_outcomes(pitr.server, pitr.archive, first.completed, utcnow() + timedelta(seconds=1))
    assert {o.name: o.passed for o in outcomes} == dict.fromkeys(WAL_CHECKS, True), outcomes
    assert outcomes[0].metadata["segments"] >= 2


def test_base_backup_job_and_its_checks_through_dagster(pitr: Pitr, tmp_path: Path) -> None:
    import dagster as dg

    from cb_backups.cli.runs import failure_messages, run_job
    from cb_backups.defs.wal import BASE_PARTITIONS

    key = BASE_PARTITIONS.get_last_partition_key()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = run_job("postgres_base_backup_job", key, instance)
        rpo = run_job("postgres_wal_rpo_job", None, instance)
    assert {e.check_name: e.passed for e in rpo.get_asset_check_evaluations()} == {"rpo": True,
                                                                                  "slot_retained_wal": True}
    # A failure explains itself: the failed step's message and every check's description.
    assert result.success, (failure_messages(result),
                            [(e.check_name, e.description) for e in result.get_asset_check_evaluations()])
    verdicts = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert verdicts == {"verifybackup": True, "wal_continuous": True}
    artifact = pitr.settings.catalog().get(basebackup.BASE_STORE, key)
    assert artifact is not None and pitr.settings.catalog().verification_of(artifact).ok  # type: ignore[union-attr]


def test_cli_restore_to_time_runs_through_dagster(pitr: Pitr, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from cb_backups.cli.app import main

    os.environ["DAGSTER_HOME"] = str(tmp_path)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    code = main(["restore", "postgres", "--to-time", pitr.t_mid])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "point-in-time restore of postgres" in out and "counts {'memories': 300}" in out
    data = out.split("stop it with: pg_ctl -D ")[1].split(" stop")[0]
    _drop_scratch(pitr, Path(data))


def test_cli_wal_receive_refuses_a_role_without_replication(pitr: Pitr, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_backups.cli.app import main

    with pitr.pg.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS norepl_cli")
        conn.execute("CREATE ROLE norepl_cli LOGIN PASSWORD 'y-Secret-2'")
    monkeypatch.setenv("CB_POSTGRES_URL", f"postgresql://norepl_cli@127.0.0.1:{pitr.pg.port}/postgres")
    monkeypatch.setenv("CB_POSTGRES_PASSWORD", "y-Secret-2")
    assert main(["wal-receive", "--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2 and "REPLICATION" in err and "y-Secret-2" not in err


def test_in_place_pitr_keeps_the_old_data_directory(pitr: Pitr) -> None:
    assert rpo_outcome(pitr.server, pitr.archive).passed  # streaming: the newest WAL is seconds old
    pitr.receiver.stop.set()
    pitr.thread.join(60)
    late = utcnow() + timedelta(seconds=pitr.server.pitr.rpo_seconds + 5)
    stale = rpo_outcome(pitr.server, pitr.archive, now=late)  # the receiver down longer than the RPO
    assert not stale.passed and "NOT connected" in stale.description
    with pitr.pg.connect() as conn:
        before = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
    result = execute_pitr(plan_pitr(pitr.settings, to_time=pitr.t_mid, mode="in_place"))
    assert result.safety_copy and Path(result.safety_copy, "PG_VERSION").is_file()
    assert pitr.count() == {1: 100, 2: 200}
    assert result.point["timeline"] == 2  # promoted onto a new timeline
    with pitr.pg.connect() as conn:
        assert conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0] == before


def test_bad_targets_are_one_clear_line(pitr: Pitr) -> None:
    with pytest.raises(ConfigError, match="with a zone"):
        plan_pitr(pitr.settings, to_time="2026-12-01 07:42")
    with pytest.raises(ConfigError, match="an LSN like"):
        plan_pitr(pitr.settings, to_lsn="nope")


def test_receiver_refuses_a_role_without_replication(pitr: Pitr) -> None:
    with pitr.pg.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS norepl")
        conn.execute("CREATE ROLE norepl LOGIN PASSWORD 'x-Secret-1'")
    pg = pitr.server.pg.__class__(**{**pitr.server.pg.__dict__, "user": "norepl", "password": "x-Secret-1",
                                     "dbname": "postgres"})
    with pytest.raises(PitrError, match="REPLICATION"):
        preflight(Server(pg, pitr.server.pitr))


def test_a_partial_killed_while_being_padded_is_dropped_so_the_receiver_can_resume(pitr: Pitr, tmp_path: Path) -> None:
    from cb_backups.core.catalog import Catalog

    archive = WalArchive(Catalog(tmp_path))
    archive.prepare()
    short, full = archive.spool / "000000010000000000000009.partial", archive.spool / "00000001000000000000000A.partial"
    short.write_bytes(b"\0" * 262144)  # pg_receivewal was killed while padding it: it refuses to resume with it
    with open(full, "wb") as fh:
        fh.truncate(archive.seg_size)  # padded: holds received WAL, must stay
    Receiver(pitr.server, archive, log=lambda line: None).drop_unpadded_partial()
    assert not short.exists() and full.exists()
