"""The parallel table-data load of a PostgreSQL restore (`stores/pg_copy`), against the real server."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from cb_backups.config.settings import PostgresSettings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import BackupFailed
from cb_backups.core.fileio import known_digest, remember_digest, sha256_file
from cb_backups.core.model import Target
from cb_backups.stores import pg_copy
from cb_backups.stores.postgres import PostgresStore

KEY = "2026-11-24-06:00"
DB = "cb_awkward"
# values COPY text must escape: newline, tab, carriage return, backslash, a line that reads like COPY's end
# marker, quotes, non-ASCII, NUL-free binary in bytea, NULL
AWKWARD = ["line one\nline two", "tab\there", "cr\rhere", "back\\slash", "\\.", "\\.\n\\.", "'quoted' \"too\"",
           "ünïcödé ✓ 中文", "", None, "COPY public.big (id) FROM stdin;", "-- not a comment"]


def _content(conn: Any, table: str) -> str:
    return conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t")
                        .format(sql.Identifier(table))).fetchone()[0]


def _store(pg_server: Any, dbname: str, tables: tuple[str, ...]) -> PostgresStore:
    return PostgresStore(PostgresSettings(host="127.0.0.1", port=pg_server.port, user=pg_server.user,
                                          password=pg_server.password, dbname=dbname,
                                          bin_dir=str(pg_server.bin_dir), count_tables=tables))


@pytest.fixture()
def awkward_db(pg_server: Any) -> Iterator[PostgresStore]:
    with pg_server.connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    with pg_server.connect(DB) as conn:
        conn.execute("CREATE TABLE parent (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("CREATE TABLE awkward (id serial PRIMARY KEY, parent int REFERENCES parent(id), body text, "
                     "raw bytea, doc jsonb, CHECK (id > 0))")
        conn.execute("CREATE TABLE big (id bigserial PRIMARY KEY, payload text)")
        conn.execute("CREATE INDEX big_payload ON big (payload)")
        conn.execute("INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, 5) g")
        for i, value in enumerate(AWKWARD):
            conn.execute("INSERT INTO awkward (parent, body, raw, doc) VALUES (%s, %s, %s, %s)",
                         (1 + i % 5, value, bytes(range(1, 256)) if i % 2 else None, json.dumps({"v": value})))
        # about 5 MiB of text: several of pg_copy's 1 MiB chunks, so every connection gets rows
        conn.execute("INSERT INTO big (payload) SELECT repeat(md5(g::text), 16) || E'\\n' || g "
                     "FROM generate_series(1, 10000) g")
        conn.execute("SELECT setval('parent_id_seq', 500)")
    store = _store(pg_server, DB, ("parent", "awkward", "big"))
    yield store
    with pg_server.connect("postgres") as admin:
        for name in (DB, "cb_awkward_back", "cb_ascii"):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_restore_with_two_jobs_loads_one_table_over_two_connections_and_keeps_every_value(
        awkward_db: PostgresStore, backup_dir: Path, pg_server: Any) -> None:
    artifact = Catalog(backup_dir).write("postgres", KEY, awkward_db.backup)
    restored = awkward_db.restore(artifact, Target("scratch", {"dbname": "cb_awkward_back", "jobs": 2}))
    assert restored["tables"] == {"parent": 5, "awkward": len(AWKWARD), "big": 10000}
    with pg_server.connect(DB) as before, pg_server.connect("cb_awkward_back") as after:
        for table in ("parent", "awkward", "big"):
            assert _content(after, table) == _content(before, table), table
        # loaded by more than one transaction: pg_restore alone loads a table in one COPY
        assert after.execute("SELECT count(DISTINCT xmin::text) FROM big").fetchone()[0] >= 2
        assert after.execute("SELECT last_value FROM parent_id_seq").fetchone()[0] == 500
        assert after.execute("SELECT nextval('big_id_seq')").fetchone()[0] == 10001
        constraints = {r[0] for r in after.execute("SELECT conname FROM pg_constraint").fetchall()}
        assert {"awkward_parent_fkey", "awkward_id_check", "big_pkey"} <= constraints
        assert after.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'big_payload'").fetchone()[0] == 1


def test_a_dump_with_large_objects_restores_through_one_stream(awkward_db: PostgresStore, backup_dir: Path,
                                                               pg_server: Any) -> None:
    with pg_server.connect(DB) as conn:
        oid = conn.execute("SELECT lo_from_bytea(0, %s)", (b"large object \x00\x01 bytes" * 1000,)).fetchone()[0]
    artifact = Catalog(backup_dir).write("postgres", KEY, awkward_db.backup)
    awkward_db.restore(artifact, Target("scratch", {"dbname": "cb_awkward_back", "jobs": 2}))
    with pg_server.connect("cb_awkward_back") as after:
        assert after.execute("SELECT lo_get(%s)", (oid,)).fetchone()[0] == b"large object \x00\x01 bytes" * 1000
        assert _content(after, "big") == _content(pg_server.connect(DB), "big")


def _copy_into(pg_server: Any, text: bytes, jobs: int = 2) -> pg_copy.ParallelCopy:
    loader = pg_copy.ParallelCopy(lambda: pg_server.connect(DB), jobs)
    loader.run(io.BytesIO(text))
    return loader


def test_a_row_the_server_refuses_stops_the_load_with_the_servers_reason(awkward_db: PostgresStore,
                                                                           pg_server: Any) -> None:
    rows = b"".join(b"%d\tok\n" % i for i in range(1_000_000, 1_200_000))
    text = b"SET client_encoding = 'UTF8';\nCOPY public.big (id, payload) FROM stdin;\n" + rows + b"oops\tbad\n\\.\n"
    with pytest.raises(pg_copy.CopyFailed, match="invalid input syntax for type bigint"):
        _copy_into(pg_server, text)


def test_anything_but_session_settings_and_copy_blocks_is_refused_unrun(awkward_db: PostgresStore,
                                                                        pg_server: Any) -> None:
    with pytest.raises(pg_copy.CopyFailed, match=r"unexpected line.*DROP TABLE"):
        _copy_into(pg_server, b"SET row_security = off;\nDROP TABLE public.big;\n")
    with pg_server.connect(DB) as conn:
        assert conn.execute("SELECT count(*) FROM big").fetchone()[0] == 10000
    with pytest.raises(pg_copy.CopyFailed, match="ended inside a COPY block"):
        _copy_into(pg_server, b"COPY public.big (id, payload) FROM stdin;\n900001\tx\n")


def test_copy_blocks_split_at_row_ends_only(awkward_db: PostgresStore, pg_server: Any) -> None:
    # rows straddle every 1 MiB read; a value holding an escaped "\." must stay data
    rows = b"".join(b"%d\t%s\\n\\\\.\n" % (i, b"x" * (i % 3000)) for i in range(20001, 22001))
    loader = _copy_into(pg_server, b"\\restrict abc\nCOPY public.big (id, payload) FROM stdin;\n" + rows + b"\\.\n"
                        b"\\unrestrict abc\n")
    assert loader.tables == 1 and loader.bytes == len(rows)
    with pg_server.connect(DB) as conn:
        got = conn.execute("SELECT count(*), sum(length(payload)) FROM big WHERE id > 20000").fetchone()
        assert got[0] == 2000
        assert got[1] == sum(i % 3000 + 3 for i in range(20001, 22001))  # x..x + newline + backslash + dot


def test_a_failed_parallel_load_leaves_the_target_untouched(awkward_db: PostgresStore, backup_dir: Path,
                                                             pg_server: Any) -> None:
    # a CHECK constraint (restored with the schema, before the data) that refuses one row once the role
    # carries a setting the backup was taken without
    with pg_server.connect(DB) as conn:
        conn.execute("CREATE TABLE guarded (id int, body text "
                     "CHECK (body IS DISTINCT FROM current_setting('cb.refuse', true)))")
        conn.execute("INSERT INTO guarded SELECT g, 'row ' || g FROM generate_series(1, 50000) g")
    with pg_server.connect("postgres") as admin:
        admin.execute("CREATE DATABASE cb_awkward_back")
    with pg_server.connect("cb_awkward_back") as conn:
        conn.execute("CREATE TABLE keep_me (x int)")
        conn.execute("INSERT INTO keep_me VALUES (42)")
    artifact = Catalog(backup_dir).write("postgres", KEY, awkward_db.backup)
    role = sql.Identifier(pg_server.user)
    with pg_server.connect("postgres") as admin:
        admin.execute(sql.SQL("ALTER ROLE {} SET cb.refuse = 'row 40000'").format(role))
    try:
        with pytest.raises(BackupFailed, match=r"target untouched.*loading the table data: new row .* violates "
                                               r"check constraint"):
            awkward_db.restore(artifact, Target("scratch", {"dbname": "cb_awkward_back", "jobs": 2}))
    finally:
        with pg_server.connect("postgres") as admin:
            admin.execute(sql.SQL("ALTER ROLE {} RESET cb.refuse").format(role))
    with pg_server.connect("cb_awkward_back") as conn:
        assert conn.execute("SELECT x FROM keep_me").fetchall() == [(42,)]
    with pg_server.connect("postgres") as admin:
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = 'cb_awkward_back__incoming'").fetchone()


def test_a_sql_ascii_database_backs_up_and_restores(awkward_db: PostgresStore, backup_dir: Path,
                                                     pg_server: Any) -> None:
    # psycopg hands a SQL_ASCII database's text over as bytes: the exported snapshot's name once went to
    # pg_dump as "b'...'"
    with pg_server.connect("postgres") as admin:
        admin.execute("CREATE DATABASE cb_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    with pg_server.connect("cb_ascii") as conn:
        conn.execute("CREATE TABLE t (id int, body text)")
        conn.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
    store = _store(pg_server, "cb_ascii", ("t",))
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    assert artifact.manifest.inventory["tables"] == {"t": 5000}
    assert store.restore(artifact, Target("scratch", {"dbname": "cb_awkward_back", "jobs": 2}))["tables"] == \
        {"t": 5000}


def test_a_remembered_digest_holds_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    # a restore skips re-hashing a file its own download just hashed; any write since must void that
    path = tmp_path / "dump"
    path.write_bytes(b"downloaded bytes")
    remember_digest(path, "f" * 64)
    with open(path, "rb") as fh:
        assert known_digest(fh.fileno()) == "f" * 64
    with open(path, "r+b") as fh:
        fh.write(b"D")  # same size, one byte changed
    with open(path, "rb") as fh:
        assert known_digest(fh.fileno()) is None
    # sha256_file (every other check of a downloaded file) takes it too, and only while unchanged
    real = hashlib.sha256(b"Downloaded bytes").hexdigest()
    remember_digest(path, real)
    assert sha256_file(path) == (real, 16)
    path.write_bytes(b"downloaded bytez")
    assert sha256_file(path) == (hashlib.sha256(b"downloaded bytez").hexdigest(), 16)
