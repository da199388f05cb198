"""In-place restores under write load lose no acknowledged write (real PostgreSQL 16 and Valkey 8).

Writers insert rows (SET keys) with ids of their own and record which commits were acknowledged;
a refused connection or a failed command is not acknowledged, the writer just retries. After
`execute_restore(... in place ...)` every acknowledged id is in the live target or in what the
restore kept: PostgreSQL's `<db>__replaced_<stamp>` database, Valkey's safety backup. The
target holds the backup's counts, and writes attempted during the restore were refused.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import valkey

from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.model import Target
from cb_backups.core.net import free_port, wait_until
from cb_backups.demo.embedded import EmbeddedPostgres, valkey_bin_dir
from cb_backups.demo.sample_data import load_valkey
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups.stores.registry import open_store
from cb_backups.stores.valkey import ValkeyStore
from cb_backups_tests.databases import databases, own_database

KEY = "2026-11-24-06:00"
STRIDE = 1_000_000_000  # writer w writes ids w*STRIDE + n


class Writers:
    """`count` threads calling `write(writer, id)` in a loop; an id counts as acknowledged when the call returns."""

    def __init__(self, count: int, write: Callable[[int, int], None]) -> None:
        self.write = write
        self.acked: list[set[int]] = [set() for _ in range(count)]
        self.refused = [0] * count
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(count)]

    def _run(self, writer: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.write(writer, writer * STRIDE + n)
            except (psycopg.Error, valkey.exceptions.ValkeyError):
                self.refused[writer] += 1
                self.stop.wait(0.01)  # back off a little; not synchronisation
                continue
            self.acked[writer].add(writer * STRIDE + n)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def wait_for(self, more: int) -> None:
        """Until every writer has `more` acknowledged writes beyond what it has now."""
        targets = [len(a) + more for a in self.acked]
        wait_until(lambda: all(len(a) >= t for a, t in zip(self.acked, targets, strict=True)), 120,
                   f"{more} acknowledged writes per writer")

    def all_acked(self) -> set[int]:
        return set().union(*self.acked)


# --- PostgreSQL ------------------------------------------------------------------------------------------



def ack_ids(pg: EmbeddedPostgres, db: str) -> set[int]:
    with pg.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM acks").fetchall()}


@pytest.fixture()
def write_db(cb_env: dict[str, str], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own (sample data + an `acks` table) so the restore never touches the session's."""
    acks = "CREATE TABLE acks (id bigint PRIMARY KEY)"
    with own_database(pg_server, monkeypatch, "cbw", 50, setup=lambda conn: conn.execute(acks)) as db:
        yield db


@pytest.mark.parametrize("writers", [1, 3])
def test_postgres_in_place_restore_under_writes_loses_no_acknowledged_write(
        write_db: str, pg_server: EmbeddedPostgres, writers: int) -> None:
    settings = load_settings()
    store = open_store("postgres", settings)
    artifact = Catalog(settings.backup_dir).write("postgres", KEY, store.backup)
    connections: list[psycopg.Connection[object]] = [None] * writers  # type: ignore[list-item]

    def insert(writer: int, ident: int) -> None:
        conn = connections[writer]
        if conn is None or conn.closed:  # the restore ends sessions: the writer connects again
            conn = connections[writer] = psycopg.connect(
                host="127.0.0.1", port=pg_server.port, user=pg_server.user, password=pg_server.password,
                dbname=write_db, autocommit=True, connect_timeout=5)
        conn.execute("INSERT INTO acks (id) VALUES (%s)", (ident,))  # autocommit: returned = committed

    with Writers(writers, insert) as load:
        load.wait_for(20)  # writing before the restore starts
        refused_before = sum(load.refused)
        result = execute_restore(plan_restore(settings, "postgres", KEY, target=Target("in_place")))
        load.wait_for(20)  # ... and again afterwards, into the restored database
    for conn in connections:
        if conn is not None:
            conn.close()

    assert result.ok, result.problems
    assert sum(load.refused) > refused_before  # writes during the restore were refused, not taken
    kept = sorted(d for d in databases(pg_server) if d.startswith(f"{write_db}__replaced_"))
    assert len(kept) == 1 and any(kept[0] in line for line in result.kept_aside)
    live, old = ack_ids(pg_server, write_db), ack_ids(pg_server, kept[0])
    acked = load.all_acked()
    assert len(acked) >= 40 * writers
    lost = acked - live - old
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"  # each is live or in the kept db
    # the restored tables hold the backup's counts (acks grew again after the restore: not counted)
    assert store.inventory()["tables"] == artifact.manifest.inventory["tables"]
    # nothing reached the old database after the safety backup read it: writes were refused, not diverted
    assert result.safety_backup is not None
    safety = Catalog(settings.backup_dir).load(Path(result.safety_backup))
    assert safety is not None
    with store.scratch(safety, Target("scratch", {"dbname": f"{write_db}__check"})):
        diverted = old - ack_ids(pg_server, f"{write_db}__check")
    assert not diverted, f"{len(diverted)} writes reached the old database after its safety backup"


def test_failed_postgres_restore_reopens_the_live_database(write_db: str, pg_server: EmbeddedPostgres,
                                                           cb_env: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_restore fails after the database was closed and moved aside: it comes back, open, unchanged."""
    settings = load_settings()
    Catalog(settings.backup_dir).write("postgres", KEY, open_store("postgres", settings).backup)
    with pg_server.connect(write_db) as conn:
        conn.execute("INSERT INTO acks (id) VALUES (1), (2), (3)")
    real = Path(cb_env["CB_PG_BIN_DIR"])
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "pg_restore").write_text(f'#!/bin/sh\n[ "$1" = --list ] && exec "{real}/pg_restore" "$@"\nexit 3\n')
    (broken / "pg_restore").chmod(0o755)
    (broken / "pg_dump").symlink_to(real / "pg_dump")
    monkeypatch.setenv("CB_PG_BIN_DIR", str(broken))
    with pytest.raises(Exception, match="pg_restore failed"):
        execute_restore(plan_restore(load_settings(), "postgres", KEY, target=Target("in_place")))
    assert ack_ids(pg_server, write_db) == {1, 2, 3}  # the live database is back under its name, accepting
    assert {d for d in databases(pg_server) if d.startswith(write_db)} == {write_db}


# --- Valkey -----------------------------------------------------------------------------------------------


@pytest.fixture()
def daemon_valkey(tmp_path: Path, cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A Valkey 8 the restore can stop and start again (daemonized, password in a 0600 config file)."""
    password = f"vk-writes-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "valkey"
    data.mkdir(mode=0o700)
    conf = data / "valkey.conf"
    conf.write_text(f'requirepass "{password}"\n')
    conf.chmod(0o600)
    port = free_port()
    argv = [str(valkey_bin_dir() / "valkey-server"), str(conf), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
            "--daemonize", "yes", "--pidfile", str(data / "valkey.pid"), "--logfile", str(data / "valkey.log")]
    subprocess.run(argv, check=True)
    for key, value in {"CB_VALKEY_URL": f"valkey://127.0.0.1:{port}", "CB_VALKEY_PASSWORD": password,
                       "CB_VALKEY_DATA_DIR": str(data), "CB_VALKEY_START": shlex.join(argv)}.items():
        monkeypatch.setenv(key, value)
    client = valkey.Valkey(host="127.0.0.1", port=port, password=password, socket_timeout=10)
    wait_until(lambda: bool(client.ping()), 30, "valkey")
    try:
        yield port
    finally:
        with contextlib.suppress(valkey.exceptions.ValkeyError):
            valkey.Valkey(host="127.0.0.1", port=port, password=password).shutdown(nosave=True)
        pidfile = data / "valkey.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), 9)


@pytest.mark.parametrize("writers", [1, 3])
def test_valkey_in_place_restore_under_writes_loses_no_acknowledged_write(daemon_valkey: int, writers: int) -> None:
    settings = load_settings()
    store = open_store("valkey", settings)
    assert isinstance(store, ValkeyStore)
    load_valkey(store.client, scale=20)
    artifact = Catalog(settings.backup_dir).write("valkey", KEY, store.backup)
    clients = [valkey.Valkey(host="127.0.0.1", port=daemon_valkey, password=settings.store("valkey").password,
                             db=5, socket_timeout=10, socket_connect_timeout=5) for _ in range(writers)]

    def set_key(writer: int, ident: int) -> None:
        clients[writer].set(f"ack:{ident}", "1")  # returned = the server executed it

    with Writers(writers, set_key) as load:
        load.wait_for(20)
        refused_before = sum(load.refused)
        result = execute_restore(plan_restore(settings, "valkey", KEY, target=Target("in_place")))
        load.wait_for(20)  # the restarted server takes writes again

    assert result.ok, result.problems
    assert sum(load.refused) > refused_before  # held during the pause, failed at the restart: not acknowledged
    live = {int(k.split(b":")[1]) for k in store.client(db=5).scan_iter("ack:*")}
    assert result.safety_backup is not None
    safety = Catalog(settings.backup_dir).load(Path(result.safety_backup))
    assert safety is not None
    with store.scratch_server(safety) as port:
        saved = {int(k.split(b":")[1]) for k in store.client(db=5, port=port).scan_iter("ack:*")}
    acked = load.all_acked()
    assert len(acked) >= 40 * writers
    lost = acked - live - saved
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged SETs lost"  # each is live or in the safety backup
    # the backup's keys are back (db5 holds the writes made after the restore only)
    counts = store.inventory()["databases"]
    expected = artifact.manifest.inventory["databases"]
    assert {db: n for db, n in counts.items() if db != "db5"} == {db: n for db, n in expected.items() if db != "db5"}


def test_restore_killed_while_the_database_is_aside_is_recovered_by_the_next(
        write_db: str, pg_server: EmbeddedPostgres) -> None:
    """Killed after the live database was moved aside (the safety backup ran): the next restore renames it
    back first, so nothing is lost and the restore completes."""
    settings = load_settings()
    Catalog(settings.backup_dir).write("postgres", KEY, open_store("postgres", settings).backup)
    with pg_server.connect(write_db) as conn:
        conn.execute("INSERT INTO acks (id) VALUES (7)")
    killed = open_store("postgres", settings).quiesce(Target("in_place"))
    killed.__enter__()  # never exited: the process "died" here
    assert write_db not in databases(pg_server)
    result = execute_restore(plan_restore(settings, "postgres", KEY, target=Target("in_place")))
    assert result.ok
    kept = [d for d in databases(pg_server) if d.startswith(f"{write_db}__replaced_")]
    assert len(kept) == 1 and ack_ids(pg_server, kept[0]) == {7}  # the recovered data, kept aside again
    assert ack_ids(pg_server, write_db) == set()  # the backup's state
