"""In-place restores under write load lose no acknowledged write (real PostgreSQL 16 and Valkey 8; Neo4j,
OpenSearch, Qdrant: their emulators, or the real servers CB_TEST_* name).

Writers insert rows (SET keys) with ids of their own and record which commits were acknowledged;
a refused connection or a failed command is not acknowledged, the writer just retries. After
`execute_restore(... in place ...)` every acknowledged id is in the live target or in what the
restore kept: PostgreSQL's `<db>__replaced_<stamp>` database, Valkey's and Neo4j's safety backup. The
target holds the backup's counts, and writes attempted during the restore were refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import neo4j
import psycopg
import pytest
import valkey
import yaml
from neo4j.exceptions import DriverError, Neo4jError
from opensearchpy import OpenSearch
from opensearchpy import exceptions as os_errors
from opensearchpy import helpers as os_helpers
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from cb_backups.config.settings import Neo4jSettings, OpenSearchSettings, Settings, load_settings
from cb_backups.core import process
from cb_backups.core.catalog import Catalog
from cb_backups.core.model import Target
from cb_backups.core.net import free_port, wait_until
from cb_backups.demo.embedded import EmbeddedPostgres, valkey_bin_dir
from cb_backups.demo.sample_data import load_valkey
from cb_backups.restore import journal
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups.restore.recovery import recover_restores, recover_store
from cb_backups.restore.safety import take_safety_backup
from cb_backups.stores.base import DRILL, run_tool
from cb_backups.stores.registry import open_store
from cb_backups.stores.valkey import ValkeyStore
from cb_backups_tests.databases import databases, own_database
from cb_backups_tests.fixtures_neo4j import run_cypher
from cb_backups_tests.fixtures_qdrant import SeededCollections, make_client

KEY = "2026-11-24-06:00"
DAY = "2026-11-24"  # the daily stores' slot
STRIDE = 1_000_000_000  # writer w writes ids w*STRIDE + n
# what a writer sees when its write is refused (not acknowledged): it retries
REFUSED = (psycopg.Error, valkey.exceptions.ValkeyError, DriverError, Neo4jError, OSError,
           os_errors.OpenSearchException)


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
            except REFUSED:
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


# --- Neo4j ------------------------------------------------------------------------------------------------


@pytest.fixture()
def neo4j_env(cb_env: dict[str, str], neo4j_settings: Neo4jSettings, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Neo4jSettings:
    """cb_env plus the Neo4j server (emulator or CB_TEST_NEO4J_*): commands through YAML, which keeps lists."""
    config = tmp_path / "cb-neo4j.yaml"
    commands = {"admin_command": list(neo4j_settings.admin_command), "stop_command": list(neo4j_settings.stop_command),
                "start_command": list(neo4j_settings.start_command)}
    config.write_text(yaml.safe_dump({"neo4j": {**commands, **({"dump_dir": neo4j_settings.dump_dir}
                                                               if neo4j_settings.dump_dir else {})}}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    monkeypatch.setenv("CB_NEO4J_URI", neo4j_settings.uri)
    monkeypatch.setenv("CB_NEO4J_USER", neo4j_settings.user)
    if neo4j_settings.password:
        monkeypatch.setenv("CB_NEO4J_PASSWORD", neo4j_settings.password)
    return neo4j_settings


def neo4j_acks(settings: Neo4jSettings) -> set[int]:
    rows = run_cypher(settings, "MATCH (r:CODE_Repo) RETURN r.acks")
    return {int(i) for row in rows for i in (row[0] or [])}


def test_neo4j_in_place_restore_under_writes_loses_no_acknowledged_write(
        neo4j_env: Neo4jSettings, neo4j_seeded: dict, neo4j_scratch_options: dict | None) -> None:
    """The safety dump and the load run in one stop window: nothing is committed between them."""
    if neo4j_scratch_options is None:
        pytest.skip("reading the safety backup needs a scratch Neo4j server (CB_TEST_NEO4J_SCRATCH_URI)")
    settings = load_settings()
    store = open_store("neo4j", settings)
    Catalog(settings.backup_dir).write("neo4j", DAY, store.backup)
    auth = (neo4j_env.user, neo4j_env.password) if neo4j_env.password else None
    drivers = [neo4j.GraphDatabase.driver(neo4j_env.uri, auth=auth, connection_timeout=5.0,
                                          connection_acquisition_timeout=10.0) for _ in range(2)]

    def append(writer: int, ident: int) -> None:
        # a property append, not a new node: the labels' counts stay the backup's, whenever the restore
        # counts; the auto-commit query returned = committed
        with drivers[writer].session(database=neo4j_env.database) as session:
            session.run(f"MATCH (r:CODE_Repo {{name: 'repo-{writer}'}}) "
                        f"SET r.acks = coalesce(r.acks, []) + [{ident}]").consume()

    try:
        with Writers(len(drivers), append) as load:
            load.wait_for(10)
            refused_before = sum(load.refused)
            result = execute_restore(plan_restore(settings, "neo4j", DAY, target=Target("in_place")))
            load.wait_for(10)  # the restarted server takes writes again
    finally:
        for driver in drivers:
            driver.close()

    assert result.ok, result.problems
    assert sum(load.refused) > refused_before  # Bolt was down: refused, not acknowledged
    live = neo4j_acks(neo4j_env)
    assert result.safety_backup is not None
    safety = Catalog(settings.backup_dir).load(Path(result.safety_backup))
    assert safety is not None
    scratch = Target("scratch", dict(neo4j_scratch_options))
    scratch_settings = Neo4jSettings(uri=neo4j_scratch_options["uri"], user=neo4j_env.user,
                                     password=neo4j_env.password)
    with store.scratch(safety, scratch):
        saved = neo4j_acks(scratch_settings)
    acked = load.all_acked()
    assert len(acked) >= 40
    lost = acked - live - saved
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"  # each is live or in the safety dump
    assert saved and live  # written before the restore (kept by the safety dump) and after it


# --- OpenSearch --------------------------------------------------------------------------------------------


@pytest.fixture()
def opensearch_env(cb_env: dict[str, str], opensearch_settings: OpenSearchSettings, seeded_opensearch: dict,
                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpenSearchSettings:
    """cb_env plus OpenSearch (emulator or CB_TEST_OPENSEARCH_URL); the repository only through YAML."""
    config = tmp_path / "cb-opensearch.yaml"
    config.write_text(yaml.safe_dump({"opensearch": {
        "repository": opensearch_settings.repository, "repository_type": opensearch_settings.repository_type,
        "repository_settings": dict(opensearch_settings.repository_settings)}}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    monkeypatch.setenv("CB_OPENSEARCH_URL", opensearch_settings.url)
    return opensearch_settings


def opensearch_acks(client: OpenSearch, index: str) -> set[int]:
    client.indices.refresh(index=index)
    hits = os_helpers.scan(client, index=index, query={"query": {"term": {"user_id": "ack"}}}, _source=False)
    return {int(hit["_id"].removeprefix("ack-")) for hit in hits}


def test_opensearch_in_place_restore_under_writes_loses_no_acknowledged_write(
        opensearch_env: OpenSearchSettings, opensearch_client: OpenSearch) -> None:
    """The replaced indices are write-blocked before the safety snapshot, and the block does not outlive the
    restore. Each writer gives up at its first refusal, so nothing is written after the restore to change the
    counts the restore compares (a write refused by the block is the first refusal)."""
    settings = load_settings()
    store = open_store("opensearch", settings)
    Catalog(settings.backup_dir).write("opensearch", DAY, store.backup)
    client = OpenSearch(hosts=[opensearch_env.url], timeout=30, max_retries=0)
    gave_up = [False, False]

    def index(writer: int, ident: int) -> None:
        if gave_up[writer]:
            raise os_errors.ConnectionError("N/A", "gave up at the first refusal", None)
        try:
            client.index(index="memories", id=f"ack-{ident}", body={"user_id": "ack", "content": "w"})
        except os_errors.OpenSearchException:
            gave_up[writer] = True
            raise  # 201 returned = acknowledged; a refusal is not

    try:
        with Writers(len(gave_up), index) as load:
            load.wait_for(20)
            assert sum(load.refused) == 0
            result = execute_restore(plan_restore(settings, "opensearch", DAY, target=Target("in_place")))
        assert result.ok, result.problems
        assert all(gave_up)  # every writer was refused during the restore
        live = opensearch_acks(opensearch_client, "memories")
        assert live == set()  # the backup's documents only: nothing was written into the restored index
        client.index(index="memories", id="after", body={"user_id": "after"}, refresh=True)  # takes writes again
        blocks = opensearch_client.indices.get_settings(index="memories,code_symbols", name="index.blocks.write")
        assert not any(i.get("settings") for i in blocks.values()), blocks
    finally:
        client.close()
    assert result.safety_backup is not None
    safety = Catalog(settings.backup_dir).load(Path(result.safety_backup))
    assert safety is not None
    scratch = store.scratch_target(DRILL)
    with store.scratch(safety, scratch):
        copy = f"{scratch.options.get('prefix', 'drill_')}memories"
        saved = opensearch_acks(opensearch_client, copy)
        # the safety snapshot was taken under the block; a restore of it must not bring the block back
        assert not opensearch_client.indices.get_settings(index=copy, name="index.blocks.write")[copy]["settings"] \
            if copy in opensearch_client.indices.get_settings(index=copy, name="index.blocks.write") else True
    acked = load.all_acked()
    assert len(acked) >= 40
    lost = acked - saved
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"  # each is in the safety snapshot


# --- Qdrant ------------------------------------------------------------------------------------------------


def test_qdrant_in_place_restore_under_writes_loses_no_acknowledged_write(
        cb_env: dict[str, str], qdrant_url: str, qdrant_api_key: str | None, qdrant_seeded: SeededCollections,
        qdrant_client: QdrantClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Qdrant's write lock is held from before the safety snapshots until the uploads are done. Each writer
    gives up at its first refusal (as in the OpenSearch test), so the counts the restore compares stay put."""
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    settings = load_settings()
    store = open_store("qdrant", settings)
    Catalog(settings.backup_dir).write("qdrant", DAY, store.backup)
    collection = qdrant_seeded.name("code_embeddings")
    size = 256
    base = 10**7  # point ids above the seeded ones (1..200)
    clients = [make_client(qdrant_url, qdrant_api_key) for _ in range(2)]
    gave_up = [False] * len(clients)

    def upsert(writer: int, ident: int) -> None:
        if gave_up[writer]:
            raise OSError("gave up at the first refusal")
        try:  # wait=true: returned = applied
            point = qm.PointStruct(id=base + ident, vector=[1.0] + [0.0] * (size - 1), payload={"ack": True})
            clients[writer].upsert(collection, points=[point], wait=True)
        except (UnexpectedResponse, ResponseHandlingException) as exc:
            gave_up[writer] = True
            raise OSError(str(exc)) from exc

    try:
        with Writers(len(clients), upsert) as load:
            load.wait_for(20)
            assert sum(load.refused) == 0
            result = execute_restore(plan_restore(settings, "qdrant", DAY, target=Target("in_place")))
        assert result.ok, result.problems
        assert all(gave_up)  # every writer was refused during the restore
        acked = {base + ident for ident in load.all_acked()}
        assert not qdrant_client.retrieve(collection, ids=sorted(acked))  # the backup's points only
        qdrant_client.upsert(collection, points=[qm.PointStruct(id=5, vector=[1.0] + [0.0] * (size - 1))],
                             wait=True)  # unlocked: takes writes again
    finally:
        for client in clients:
            client.close()
    assert result.safety_backup is not None
    safety = Catalog(settings.backup_dir).load(Path(result.safety_backup))
    assert safety is not None
    with store.scratch(safety, store.scratch_target(DRILL)):
        saved = {int(p.id) for p in qdrant_client.retrieve(f"{collection}__drill", ids=sorted(acked))}
    assert len(acked) >= 40
    lost = acked - saved
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"  # each is in the safety backup


# --- quiesce's exit on an error: the target takes writes again ---------------------------------------------


class Boom(Exception):
    """The restore failing inside the quiesce block."""


def test_failed_qdrant_restore_unlocks_writes(cb_env: dict[str, str], qdrant_url: str, qdrant_api_key: str | None,
                                             qdrant_seeded: SeededCollections, qdrant_client: QdrantClient,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    store = open_store("qdrant", load_settings())
    collection = qdrant_seeded.name("code_embeddings")
    point = qm.PointStruct(id=10**7, vector=[1.0] + [0.0] * 255)
    with pytest.raises(Boom), store.quiesce(Target("in_place")):
        with pytest.raises(UnexpectedResponse) as refused:
            qdrant_client.upsert(collection, points=[point], wait=True)
        assert refused.value.status_code == 403
        raise Boom
    qdrant_client.upsert(collection, points=[point], wait=True)
    assert qdrant_client.retrieve(collection, ids=[10**7])


def test_failed_opensearch_restore_unblocks_writes(opensearch_env: OpenSearchSettings,
                                                   opensearch_client: OpenSearch) -> None:
    store = open_store("opensearch", load_settings())
    with pytest.raises(Boom), store.quiesce(Target("in_place")):
        with pytest.raises(os_errors.AuthorizationException):  # 403 cluster_block_exception
            opensearch_client.index(index="memories", id="blocked", body={"user_id": "x"})
        raise Boom
    opensearch_client.index(index="memories", id="after", body={"user_id": "x"}, refresh=True)
    assert opensearch_client.count(index="memories")["count"] == 301


def test_failed_neo4j_restore_starts_the_server_again(neo4j_env: Neo4jSettings, neo4j_seeded: dict) -> None:
    store = open_store("neo4j", load_settings())
    with pytest.raises(Boom), store.quiesce(Target("in_place")):
        with pytest.raises((DriverError, OSError)):
            run_cypher(neo4j_env, "RETURN 1")  # stopped: Bolt refuses
        raise Boom
    run_cypher(neo4j_env, "MATCH (r:CODE_Repo {name: 'repo-0'}) SET r.after = 1")
    assert run_cypher(neo4j_env, "MATCH (r:CODE_Repo {name: 'repo-0'}) RETURN r.after") == [[1]]


def test_valkey_restore_killed_while_the_server_is_stopped_is_rolled_back_by_the_next_run(
        daemon_valkey: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL while the restore has Valkey stopped (its stop command holds there): the server stays down.
    The next run of the store starts it again and, since a Valkey restore is not one atomic switch, restores
    the safety backup the dead restore took, so the data is exactly as before the restore began."""
    settings = load_settings()
    store = open_store("valkey", settings)
    assert isinstance(store, ValkeyStore)
    load_valkey(store.client, scale=5)
    Catalog(settings.backup_dir).write("valkey", KEY, store.backup)
    store.client(db=5).set("after-backup", "1")  # only the live data (and so the safety backup) has it
    data = Path(settings.store("valkey").data_dir)
    hold, stopped = tmp_path / "hold-the-stop", tmp_path / "stopped"
    hold.touch()
    # The operator's stop command (e.g. `docker compose stop valkey`), here one that holds while `hold` exists.
    monkeypatch.setenv("CB_VALKEY_STOP", shlex.join(["sh", "-c", f'kill "$(cat {data / "valkey.pid"})"; '
                                                     f'while kill -0 "$(cat {data / "valkey.pid"})" 2>/dev/null; '
                                                     f"do sleep 0.05; done; touch {stopped}; "
                                                     f"while [ -e {hold} ]; do sleep 0.05; done"]))
    cli = [sys.executable, "-m", "cb_backups.cli.app"]
    proc = subprocess.Popen([*cli, "restore", "valkey", "--backup", KEY, "--target", "in-place", "--yes"],
                            env=dict(os.environ), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_until(lambda: stopped.exists() or proc.poll() is not None, 240, "the restore to stop valkey")
        assert proc.poll() is None, proc.communicate()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    hold.unlink()
    journal = settings.catalog().restore_journal("valkey")
    assert json.loads(journal.read_text())["phase"] == "restoring"
    with pytest.raises(valkey.exceptions.ConnectionError):
        store.client().ping()  # down: the application would be too

    verified = subprocess.run([*cli, "verify", "valkey", "--partition", KEY], env=dict(os.environ), text=True,
                              capture_output=True, timeout=300)
    assert verified.returncode == 0, verified.stderr
    assert "valkey: recovered the in-place restore of" in verified.stderr, verified.stderr
    assert "started valkey again" in verified.stderr and "restored the safety backup" in verified.stderr
    assert not journal.exists()
    assert store.client(db=5).get("after-backup") == b"1"  # as before the restore: nothing lost


# --- a restore killed midway: the next run puts the store back (restore.recovery) --------------------------


def dead_identity() -> dict[str, str]:
    """process.identity() of a process that has since died, as a SIGKILLed restore's journal holds."""
    proc = subprocess.Popen(["sleep", "60"])
    identity = process.identity(proc.pid)
    proc.kill()
    proc.wait()
    return identity


def killed_restore(settings: Settings, store: str, backup: str, hold: dict | None, safety: str) -> Path:
    """The journal a restore leaves when it is SIGKILLed while overwriting the data (phase restoring)."""
    path = settings.catalog().restore_journal(store)
    journal.write(path, journal.Entry(store, backup, {"mode": "in_place", "options": {}}, dead_identity(),
                                      "2026-12-01T00:00:00Z", journal.RESTORING, hold, safety))
    return path


def test_qdrant_restore_killed_with_writes_locked_is_unlocked_and_rolled_back(
        cb_env: dict[str, str], qdrant_url: str, qdrant_api_key: str | None, qdrant_seeded: SeededCollections,
        qdrant_client: QdrantClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    settings = load_settings()
    store = open_store("qdrant", settings)
    Catalog(settings.backup_dir).write("qdrant", DAY, store.backup)
    collection = qdrant_seeded.name("code_embeddings")
    vector = [1.0] + [0.0] * 255
    qdrant_client.upsert(collection, points=[qm.PointStruct(id=10**7, vector=vector)], wait=True)  # after the backup
    safety = take_safety_backup(settings.catalog(), store)
    qdrant_client.delete(collection, points_selector=qm.PointIdsList(points=[1]), wait=True)  # the half-done restore
    killed = store.quiesce(Target("in_place"))  # kept referenced: never exited, the process was killed in here
    hold = killed.__enter__()
    path = killed_restore(settings, "qdrant", DAY, hold, safety.partition_key)

    lines = recover_restores(settings)
    assert len(lines) == 1 and "writes unlocked" in lines[0] and "restored the safety backup" in lines[0], lines
    assert not path.exists()
    assert {int(p.id) for p in qdrant_client.retrieve(collection, ids=[1, 10**7])} == {1, 10**7}  # as before
    qdrant_client.upsert(collection, points=[qm.PointStruct(id=10**7 + 1, vector=vector)], wait=True)  # takes writes
    assert recover_restores(settings) == []  # done once, for good


def test_neo4j_restore_killed_while_stopped_is_started_and_rolled_back(neo4j_env: Neo4jSettings,
                                                                       neo4j_seeded: dict) -> None:
    """Killed inside the stop window, while the load overwrote the database: the next run starts Neo4j and
    loads the safety dump taken before, so the graph is as it was (the node added after the backup is back)."""
    settings = load_settings()
    store = open_store("neo4j", settings)
    Catalog(settings.backup_dir).write("neo4j", DAY, store.backup)
    run_cypher(neo4j_env, "CREATE (:CODE_Repo {name: 'after-backup'})")
    safety = take_safety_backup(settings.catalog(), store)
    run_cypher(neo4j_env, "MATCH (r:CODE_Repo {name: 'repo-0'}) DETACH DELETE r")  # the half-done load
    killed = store.quiesce(Target("in_place"))  # kept referenced: never exited, the process was killed in here
    hold = killed.__enter__()
    with pytest.raises((DriverError, OSError)):
        run_cypher(neo4j_env, "RETURN 1")  # stopped
    path = killed_restore(settings, "neo4j", DAY, hold, safety.partition_key)

    lines = recover_restores(settings)
    assert len(lines) == 1 and "started Neo4j again" in lines[0] and "restored the safety backup" in lines[0], lines
    assert not path.exists()
    names = {row[0] for row in run_cypher(neo4j_env, "MATCH (r:CODE_Repo) RETURN r.name")}
    assert {"after-backup", "repo-0"} <= names  # exactly the data from before the restore


def test_neo4j_left_stopped_by_a_killed_dump_is_started_by_the_dead_run_cleanup(neo4j_env: Neo4jSettings,
                                                                                neo4j_seeded: dict) -> None:
    settings = load_settings()
    run_tool("neo4j", settings.store("neo4j").stop_command, timeout=120)  # as the offline dump does first
    with pytest.raises((DriverError, OSError)):
        run_cypher(neo4j_env, "RETURN 1")
    assert recover_store(settings, "neo4j") == ["neo4j: started Neo4j again"]
    assert run_cypher(neo4j_env, "RETURN 1") == [[1]]
    assert recover_store(settings, "neo4j") == []  # a running server is left alone


def test_opensearch_restore_killed_with_writes_blocked_is_unblocked_and_rolled_back(
        opensearch_env: OpenSearchSettings, opensearch_client: OpenSearch) -> None:
    settings = load_settings()
    store = open_store("opensearch", settings)
    Catalog(settings.backup_dir).write("opensearch", DAY, store.backup)
    opensearch_client.index(index="memories", id="after-backup", body={"user_id": "x"}, refresh=True)
    safety = take_safety_backup(settings.catalog(), store)
    opensearch_client.delete(index="memories", id="after-backup", refresh=True)  # the half-done restore
    killed = store.quiesce(Target("in_place"))  # kept referenced: never exited, the process was killed in here
    hold = killed.__enter__()
    assert hold is not None and "memories" in hold["blocked"]
    path = killed_restore(settings, "opensearch", DAY, hold, safety.partition_key)

    lines = recover_restores(settings)
    assert len(lines) == 1 and "writes unblocked on" in lines[0] and "restored the safety backup" in lines[0], lines
    assert not path.exists()
    assert opensearch_client.exists(index="memories", id="after-backup")  # as before the restore
    opensearch_client.index(index="memories", id="later", body={"user_id": "x"}, refresh=True)  # takes writes
