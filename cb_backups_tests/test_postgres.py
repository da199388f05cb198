"""PostgreSQL round trips against a real PostgreSQL 16 + pgvector server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import BackupFailed, ConfigError, RestoreRefused
from cb_backups.core.model import Target
from cb_backups.stores import pg_directory
from cb_backups.stores.postgres import PostgresStore, dump_file, parse_compression
from cb_backups.stores.registry import open_store

KEY = "2026-11-24-06:00"


def vector_checksum(conn) -> str:  # type: ignore[no-untyped-def]
    return conn.execute("SELECT md5(string_agg(id::text || embedding::text, ',' ORDER BY id)) FROM memories"
                        ).fetchone()[0]


def table_counts(conn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("memories", "apps", "users", "feedback", "experiments")}


@pytest.fixture()
def store(cb_env: dict[str, str]) -> PostgresStore:
    return open_store("postgres", load_settings())  # type: ignore[return-value]


# zstd streams into pg_restore (one job: one process; two: post-data with --jobs after); gzip restores the file
@pytest.mark.parametrize(("compression", "jobs"), [("zstd:1", 2), ("zstd:1", 1), ("gzip:6", 2)])
def test_round_trip_into_fresh_database(store: PostgresStore, backup_dir: Path, pg_server,  # type: ignore[no-untyped-def]
                                        compression: str, jobs: int) -> None:
    store = PostgresStore(replace(store.settings, compression=compression))
    catalog = Catalog(backup_dir)
    artifact = catalog.write("postgres", KEY, store.backup)
    with pg_server.connect() as conn:
        expected_counts, expected_vectors = table_counts(conn), vector_checksum(conn)
    assert artifact.manifest.inventory["tables"] == {k: expected_counts[k] for k in ("memories", "apps", "users")}
    assert dump_file(artifact).stat().st_mode & 0o777 == 0o600
    assert dump_file(artifact).name == ("postgres.dump.zst" if compression.startswith("zstd") else "postgres.dump")
    assert artifact.directory.stat().st_mode & 0o777 == 0o700
    assert store.verify(artifact).ok

    restored = store.restore(artifact, Target("scratch", {"dbname": "cb_roundtrip", "jobs": jobs}))
    assert restored["tables"] == artifact.manifest.inventory["tables"]
    with pg_server.connect("cb_roundtrip") as conn:
        assert table_counts(conn) == expected_counts
        assert vector_checksum(conn) == expected_vectors
        # the HNSW index came back too
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw'"
                            ).fetchone()[0] == 1
    store.drop_database("cb_roundtrip")


def test_inventory_is_taken_in_the_dumped_snapshot(store: PostgresStore, backup_dir: Path, pg_server) -> None:  # type: ignore[no-untyped-def]
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    assert artifact.manifest.markers["wal_lsn"]
    assert artifact.manifest.versions["server"].startswith("16")
    assert "vector" in artifact.manifest.versions


def test_in_place_restore_swaps_only_after_success(store: PostgresStore, backup_dir: Path, pg_server) -> None:  # type: ignore[no-untyped-def]
    with pg_server.connect() as conn:
        conn.execute("CREATE DATABASE cb_inplace TEMPLATE codingbrain")
    settings = store.settings.__class__(**{**store.settings.__dict__, "dbname": "cb_inplace"})
    inplace = PostgresStore(settings)
    artifact = Catalog(backup_dir).write("postgres", KEY, inplace.backup)
    with pg_server.connect("cb_inplace") as conn:
        before = table_counts(conn)
        conn.execute("DELETE FROM feedback")
        conn.execute("INSERT INTO apps (id, name) VALUES (gen_random_uuid(), 'added-after-backup')")
    session = pg_server.connect("cb_inplace")  # an open session, as the application would hold
    inplace.restore(artifact, Target("in_place"))
    with pg_server.connect("cb_inplace") as conn:
        assert table_counts(conn) == before
    with pytest.raises(psycopg.OperationalError):  # the old session was terminated by the swap
        session.execute("SELECT 1")
    with pg_server.connect("postgres") as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert not {"cb_inplace__incoming", "cb_inplace__previous"} & names
    kept = [n for n in names if n.startswith("cb_inplace__replaced_")]  # the old database, kept, not dropped
    assert len(kept) == 1 and any(kept[0] in line for line in inplace.replaced())
    with pg_server.connect(kept[0]) as conn:
        assert conn.execute("SELECT count(*) FROM apps WHERE name = 'added-after-backup'").fetchone()[0] == 1
    assert inplace.prune_replaced(keep_days=1) == [] and inplace.prune_replaced(keep_days=0) == kept
    store.drop_database("cb_inplace")


def test_corrupt_dump_is_refused_before_the_target_is_touched(store: PostgresStore, backup_dir: Path,  # type: ignore[no-untyped-def]
                                                              pg_server) -> None:
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    path = dump_file(artifact)
    data = bytearray(path.read_bytes())
    data[:5] = b"XXXXX"  # the custom-format magic
    path.write_bytes(bytes(data))
    assert not store.verify(artifact).ok
    with pytest.raises(RestoreRefused, match="target untouched"):
        store.restore(artifact, Target("scratch", {"dbname": "cb_never"}))
    with pg_server.connect("postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'cb_never%'").fetchone()


def test_dump_changed_after_its_sha256_matched_is_refused_and_nothing_kept(  # type: ignore[no-untyped-def]
        store: PostgresStore, backup_dir: Path, pg_server) -> None:
    """The streamed restore reads the dump a second time (into pg_restore): a byte changed in between, after
    the sha256 matched, fails the restore; only `<db>__incoming` saw it, and it is dropped."""
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    path = dump_file(artifact)
    assert path.name.endswith(".zst")
    changed: list[str] = []

    def progress(message: str, _done: int | None, _total: int | None) -> None:
        if message.startswith("pg_restore into") and not changed:  # verified; the stream has not begun
            with open(path, "r+b") as fh:
                fh.seek(path.stat().st_size // 2)
                byte = fh.read(1)
                fh.seek(-1, 1)
                fh.write(bytes([byte[0] ^ 0xFF]))
            changed.append(message)

    with pytest.raises((RestoreRefused, BackupFailed), match="target untouched") as info:
        store.restore(artifact, Target("scratch", {"dbname": "cb_changed"}), progress)
    assert "changed while it was restored" in str(info.value) or "damaged" in str(info.value), info.value
    assert changed
    with pg_server.connect("postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'cb_changed%'").fetchone()


def test_unreachable_server_is_a_clear_error(backup_dir: Path) -> None:
    settings = load_settings({"CB_POSTGRES_URL": "postgresql://codingbrain@127.0.0.1:1/codingbrain",
                              "CB_POSTGRES_PASSWORD": "never-shown-secret"})
    store = open_store("postgres", settings)
    with pytest.raises(BackupFailed) as info:
        Catalog(backup_dir).write("postgres", KEY, store.backup)
    assert "127.0.0.1:1" in str(info.value) and "never-shown-secret" not in str(info.value)
    assert not (backup_dir / "postgres" / KEY).exists()
    assert not store.health(backup_dir).ok


@pytest.mark.parametrize("value", ["zstd:99", "zstd:0", "gzip:10", "fast", ""])
def test_unknown_compression_names_allowed_values(value: str) -> None:
    with pytest.raises(ConfigError, match="gzip:6") as info:
        parse_compression(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("compression", ["zstd:1", "gzip:6"])
def test_directory_dump_with_two_jobs_round_trips(store: PostgresStore, backup_dir: Path, pg_server,  # type: ignore[no-untyped-def]
                                                  compression: str) -> None:
    store = PostgresStore(replace(store.settings, compression=compression, dump_jobs=2))
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    names = [f.name for f in artifact.manifest.files]
    assert artifact.manifest.options["format"] == "directory"
    assert all(n.startswith(pg_directory.PREFIX) for n in names), names
    assert pg_directory.PREFIX + "toc.dat" + (".zst" if compression.startswith("zstd") else "") in names
    assert len(names) >= 6  # toc + one data file per non-empty table
    assert not any(p.is_dir() for p in artifact.directory.iterdir())  # pg_dump's folder is gone
    assert all(artifact.path(n).stat().st_mode & 0o777 == 0o600 for n in names)
    assert store.verify(artifact).ok
    with pg_server.connect() as conn:
        expected_counts, expected_vectors = table_counts(conn), vector_checksum(conn)

    restored = store.restore(artifact, Target("scratch", {"dbname": "cb_dir_roundtrip", "jobs": 2}))
    assert restored["tables"] == artifact.manifest.inventory["tables"]
    with pg_server.connect("cb_dir_roundtrip") as conn:
        assert table_counts(conn) == expected_counts
        assert vector_checksum(conn) == expected_vectors
    store.drop_database("cb_dir_roundtrip")


def test_directory_dump_with_one_changed_byte_is_refused_before_the_target_is_touched(  # type: ignore[no-untyped-def]
        store: PostgresStore, backup_dir: Path, pg_server) -> None:
    store = PostgresStore(replace(store.settings, dump_jobs=2))
    artifact = Catalog(backup_dir).write("postgres", KEY, store.backup)
    largest = max(artifact.manifest.files, key=lambda f: f.bytes)
    path = artifact.path(largest.name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RestoreRefused, match=largest.name.replace(".", r"\.")):
        store.restore(artifact, Target("scratch", {"dbname": "cb_dir_never"}))
    with pg_server.connect("postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'cb_dir_never%'").fetchone()
    path.unlink()
    assert not store.verify(artifact).ok  # a missing table file


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_dump_jobs_out_of_range_names_the_value_and_the_range(value: str) -> None:
    with pytest.raises(ConfigError, match="1 to 64") as info:
        load_settings({"CB_POSTGRES_URL": "postgresql://u@127.0.0.1/db", "CB_POSTGRES_DUMP_JOBS": value})
    assert repr(value) in str(info.value) or value in str(info.value)


def test_encrypted_directory_dump_restores_through_execute_restore(  # type: ignore[no-untyped-def]
        cb_env: dict[str, str], backup_dir: Path, pg_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_backups.core.crypto import generate
    from cb_backups.restore.execute import execute_restore
    from cb_backups.restore.plan import plan_restore

    identity, public = generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("CB_AGE_RECIPIENTS", public)
    monkeypatch.setenv("CB_AGE_IDENTITY_FILE", str(key_file))
    monkeypatch.setenv("CB_POSTGRES_DUMP_JOBS", "2")
    settings = load_settings()
    artifact = settings.catalog().write("postgres", KEY, open_store("postgres", settings).backup)
    assert artifact.manifest.files and all(f.name.startswith(pg_directory.PREFIX) and f.name.endswith(".age")
                                           for f in artifact.manifest.files)
    assert [p.name for p in artifact.directory.iterdir() if p.is_dir()] == []
    result = execute_restore(plan_restore(settings, "postgres", KEY, target=Target("scratch", {
        "dbname": "cb_dir_encrypted"})))
    assert result.ok, result.problems
    with pg_server.connect() as conn:
        expected = table_counts(conn)
    with pg_server.connect("cb_dir_encrypted") as conn:
        assert table_counts(conn) == expected
    PostgresStore(settings.store("postgres")).drop_database("cb_dir_encrypted")
