"""Restores that cannot lose data: real PostgreSQL and Valkey, the Qdrant emulator, Dagster runs, the CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli.restore import run_restore_job
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.errors import RestoreRefused, VerificationFailed
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import BackupOutput, FileRecord, Target
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_full_restore, plan_restore
from cb_backups.restore.safety import prune_safety, take_safety_backup
from cb_backups.stores.registry import open_store
from cb_backups_tests.databases import databases, own_database
from cb_backups_tests.fixtures_qdrant import SeededCollections, app_points

ROOT = Path(__file__).resolve().parent.parent
PG_KEYS = ("2026-11-24-00:00", "2026-11-24-06:00")
VK_KEYS = ("2026-11-24-00:00", "2026-11-24-06:00")


def memories(pg: EmbeddedPostgres, db: str) -> int:
    with pg.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM memories").fetchone()[0])  # type: ignore[index]



@pytest.fixture()
def pg_db(cb_env: dict[str, str], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own (50 memories) so in-place restores never touch the session's database."""
    with own_database(pg_server, monkeypatch, "cbr", 50) as db:
        yield db


def add_memories(pg: EmbeddedPostgres, db: str, n: int) -> None:
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO memories (id, user_id, app_id, content) "
                     "SELECT gen_random_uuid(), user_id, app_id, 'added after the backup' "
                     "FROM memories LIMIT %s", (n,))


def backup(store_name: str, key: str) -> Catalog:
    settings = load_settings()
    catalog = Catalog(settings.backup_dir)
    catalog.write(store_name, key, open_store(store_name, settings).backup)
    return catalog


def observation(result: dg.ExecuteInProcessResult, store: str) -> dict[str, object]:
    events = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert events, [e.event_type_value for e in result.all_events]
    obs = events[-1].event_specific_data.asset_observation  # type: ignore[union-attr]
    assert obs.asset_key == dg.AssetKey(f"{store}_backup")
    return {k: v.value for k, v in obs.metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    data = failures[0].step_failure_data  # type: ignore[union-attr]
    return (data.user_failure_data.description if data.user_failure_data else data.error.message) or ""


# --- PostgreSQL (real server) -----------------------------------------------------------------------------


def test_postgres_in_place_through_dagster_with_restorable_safety_backup(pg_db: str, pg_server: EmbeddedPostgres,
                                                                         backup_dir: Path) -> None:
    catalog = backup("postgres", PG_KEYS[1])
    add_memories(pg_server, pg_db, 7)
    assert memories(pg_server, pg_db) == 57

    result = run_restore_job("restore_postgres", {"backup": "latest", "target": "in_place", "confirm": "postgres"},
                             dg.DagsterInstance.get())
    assert result.success
    assert memories(pg_server, pg_db) == 50
    meta = observation(result, "postgres")
    assert meta["restored_partition"] == PG_KEYS[1] and meta["count/tables/memories"] == 50
    assert meta["counts_match"] is True and meta["within_rto"] is True
    assert 0 < float(meta["rto_seconds"]) < float(meta["rto_target_seconds"]) == 3600  # type: ignore[arg-type]
    # the safety backup holds the data from before the restore, outside normal retention
    safety = catalog.list("postgres", kind="safety")
    assert len(safety) == 1 and meta["safety_backup"] == str(safety[0].directory)
    assert safety[0].directory.parent == backup_dir / "postgres" / "_safety"
    assert safety[0].manifest.kind == "safety" and safety[0].manifest.inventory["tables"]["memories"] == 57
    assert [a.partition_key for a in catalog.list("postgres")] == [PG_KEYS[1]]
    # ... and it restores: the pre-restore state comes back
    plan = plan_restore(load_settings(), "postgres", f"safety:{safety[0].partition_key}",
                                    target=Target("in_place"))
    undo = execute_restore(plan)
    assert undo.ok and undo.kind == "safety" and memories(pg_server, pg_db) == 57
    leftovers = {d for d in databases(pg_server) if d.startswith(pg_db) and d != pg_db}
    assert leftovers and all("__replaced_" in d for d in leftovers)  # no __incoming; the old ones kept


def test_confirm_mismatch_refuses_in_place(pg_db: str, pg_server: EmbeddedPostgres, backup_dir: Path) -> None:
    backup("postgres", PG_KEYS[1])
    add_memories(pg_server, pg_db, 3)
    for confirm in ("", "valkey"):
        result = run_restore_job("restore_postgres", {"target": "in_place", "confirm": confirm},
                                 dg.DagsterInstance.get())
        assert not result.success
        assert "set confirm to 'postgres'" in failure_text(result)
    assert memories(pg_server, pg_db) == 53
    assert not (backup_dir / "postgres" / "_safety").exists()


def crafted_copy(source: Catalog, key: str, new_key: str, **changes: object) -> None:
    """A coherent backup (files streamed through HashingWriter, sha256 in the manifest) whose manifest says
    something else about the data: a backup taken on another server version, or with other counts."""
    store = str(changes.pop("store", "postgres"))
    original = source.require(store, key)

    def write(into: Path) -> BackupOutput:
        files = []
        for record in original.manifest.files:
            with HashingWriter(into / record.name) as out, open(original.path(record.name), "rb") as src:
                out.copy_from(src)
            files.append(FileRecord(record.name, out.bytes, out.sha256))
        m = original.manifest
        fields = {"versions": m.versions, "inventory": m.inventory, "markers": m.markers, **changes}
        return BackupOutput(files=files, method=m.method, options=m.options, **fields)  # type: ignore[arg-type]

    source.write(store, new_key, write)


def test_version_mismatch_is_refused_before_anything_changes(pg_db: str, pg_server: EmbeddedPostgres,
                                                            backup_dir: Path) -> None:
    catalog = backup("postgres", PG_KEYS[0])
    versions = dict(catalog.require("postgres", PG_KEYS[0]).manifest.versions, server="17.2")
    crafted_copy(catalog, PG_KEYS[0], PG_KEYS[1], versions=versions)  # "a backup taken on PostgreSQL 17"
    newer = catalog.require("postgres", PG_KEYS[1])
    store = open_store("postgres", load_settings())
    assert checksum_problems(newer) == [] and store.verify(newer).ok  # only the version is wrong
    add_memories(pg_server, pg_db, 4)
    plan = plan_restore(load_settings(), "postgres", PG_KEYS[1], target=Target("in_place"))
    with pytest.raises(RestoreRefused, match="backup is from PostgreSQL 17, target runs 16"):
        execute_restore(plan)
    assert memories(pg_server, pg_db) == 54
    assert not (backup_dir / "postgres" / "_safety").exists()  # refused before the safety backup
    assert not {d for d in databases(pg_server) if d.startswith(pg_db) and d != pg_db}


def test_interrupted_restore_can_be_run_again(pg_db: str, pg_server: EmbeddedPostgres, cb_env: dict[str, str],
                                             tmp_path: Path, backup_dir: Path) -> None:
    backup("postgres", PG_KEYS[1])
    add_memories(pg_server, pg_db, 5)
    real = Path(cb_env["CB_PG_BIN_DIR"])
    slow = tmp_path / "slowbin"
    slow.mkdir()
    # pg_restore that creates the schema in the new database, then hangs (killed "halfway")
    (slow / "pg_restore").write_text(f'#!/bin/sh\n[ "$1" = --list ] && exec "{real}/pg_restore" "$@"\n'
                                     f'"{real}/pg_restore" --section=pre-data "$@"\nsleep 60\n')
    (slow / "pg_restore").chmod(0o755)
    (slow / "pg_dump").symlink_to(real / "pg_dump")
    # an explicit slot: `latest` would first pre-check the counts in a scratch database (restore/execute.py)
    argv = [sys.executable, "-m", "cb_backups.cli.app", "restore", "postgres", "--backup", PG_KEYS[1], "--target",
            "in-place", "--yes"]
    proc = subprocess.Popen(argv, env={**os.environ, "CB_PG_BIN_DIR": str(slow)}, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    incoming = f"{pg_db}__incoming"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if incoming in databases(pg_server):
            with pg_server.connect(incoming) as conn:
                if conn.execute("SELECT 1 FROM pg_class WHERE relname = 'memories'").fetchone():
                    break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the restore never reached pg_restore")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert memories(pg_server, pg_db) == 55  # the live database was never touched
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert memories(pg_server, pg_db) == 50
    assert incoming not in databases(pg_server)
    assert "restore postgres" in done.stdout and "SAFETY BACKUP" in done.stdout  # the plan came first


def test_cli_without_terminal_or_yes_refuses_with_exit_2(pg_db: str, pg_server: EmbeddedPostgres) -> None:
    backup("postgres", PG_KEYS[1])
    add_memories(pg_server, pg_db, 2)
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "restore", "postgres", "--target", "in-place"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "pass --yes" in done.stderr and "Nothing was changed" in done.stderr
    assert memories(pg_server, pg_db) == 52
    bad = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "restore", "postgres", "--backup", "yesterday"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "invalid partition key: 'yesterday'" in bad.stderr


# --- Valkey (real server) --------------------------------------------------------------------------------------


def test_corrupt_newest_backup_falls_back_and_says_so(cb_env: dict[str, str]) -> None:
    catalog = backup("valkey", VK_KEYS[0])
    backup("valkey", VK_KEYS[1])
    path = catalog.require("valkey", VK_KEYS[1]).path("dump.rdb")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    messages: list[str] = []
    plan = plan_restore(load_settings(), "valkey", "latest", target=Target("scratch"))
    result = execute_restore(plan, lambda message, done, total: messages.append(message))
    assert result.ok and result.partition_key == VK_KEYS[0]
    assert len(result.skipped) == 1 and result.skipped[0].startswith(f"{VK_KEYS[1]}: dump.rdb: sha256")
    assert any(f"fell back to {VK_KEYS[0]}" in n for n in result.notes)
    assert any(f"backup {VK_KEYS[1]} failed verification" in m for m in messages)
    assert VK_KEYS[1] in result.summary()
    assert catalog.verification_of(catalog.require("valkey", VK_KEYS[1])).ok is False  # type: ignore[union-attr]
    # through Dagster the fallback is recorded on the observation
    run = run_restore_job("restore_valkey", {"backup": "latest-verified"}, dg.DagsterInstance.get())
    assert run.success
    meta = observation(run, "valkey")
    assert meta["restored_partition"] == VK_KEYS[0] and VK_KEYS[1] in str(meta["skipped_failed_backups"])


@pytest.fixture()
def own_valkey(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedValkey]:
    """A Valkey of its own that cb-backups may stop and start (in-place restores)."""
    server = EmbeddedValkey(password="restore-pw").start()
    assert server.root is not None
    start = [*server.argv(), "--daemonize", "yes", "--pidfile", str(server.root / "valkey.pid")]
    for key, value in {**server.env(), "CB_VALKEY_START": " ".join(start)}.items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.client().shutdown(nosave=True)
        server.cleanup()


def test_valkey_in_place_round_trip_and_safety_backup(own_valkey: EmbeddedValkey) -> None:
    client = own_valkey.client
    client(0).mset({f"session:{n}": f"s{n}" for n in range(40)})
    client(1).set("dpop:1", "x", ex=3600)
    catalog = backup("valkey", VK_KEYS[1])
    client(0).delete(*[f"session:{n}" for n in range(10)])
    client(0).set("only-after", "1")
    plan = plan_restore(load_settings(), "valkey", "latest", target=Target("in_place"))
    result = execute_restore(plan)
    assert result.ok and result.safety_backup
    assert client(0).dbsize() == 40 and client(0).get("only-after") is None and client(1).get("dpop:1") == b"x"
    safety = catalog.list("valkey", kind="safety")[0]
    assert safety.manifest.inventory["databases"]["db0"] == 31
    undo = execute_restore(plan_restore(
        load_settings(), "valkey", f"safety:{safety.partition_key}", target=Target("in_place")))
    assert undo.ok and client(0).dbsize() == 31 and client(0).get("only-after") == b"1"


def test_prune_safety_keeps_recent_ones(cb_env: dict[str, str]) -> None:
    settings = load_settings()
    catalog = Catalog(settings.backup_dir)
    store = open_store("valkey", settings)
    kept = take_safety_backup(catalog, store)
    assert prune_safety(catalog, "valkey", 7) == []
    assert prune_safety(catalog, "valkey", 0, keep={kept.partition_key}) == []
    assert prune_safety(catalog, "valkey", 0) == [kept.directory]
    assert catalog.list("valkey", kind="safety") == [] and not kept.directory.exists()


# --- Qdrant (emulator, or a real server via CB_TEST_QDRANT_URL) --------------------------------------------------


def test_qdrant_in_place_round_trip_and_safety_backup(cb_env: dict[str, str], qdrant_seeded: SeededCollections,
                                                     qdrant_url: str, qdrant_api_key: str | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    client, memories_c = qdrant_seeded.client, qdrant_seeded.name("memories")
    catalog = backup("qdrant", "2026-11-24")
    client.upsert(memories_c, points=app_points("memories", 384, 25, seed=99, start=1000), wait=True)
    assert client.count(memories_c, exact=True).count == 325
    result = run_restore_job("restore_qdrant", {"target": "in_place", "confirm": "qdrant",
                                                "overrides": {"collections": memories_c}}, dg.DagsterInstance.get())
    assert result.success, failure_text(result)
    assert client.count(memories_c, exact=True).count == 300
    meta = observation(result, "qdrant")
    assert meta[f"count/collections/{memories_c}"] == 300 and meta["counts_match"] is True
    safety = catalog.list("qdrant", kind="safety")[0]
    assert safety.manifest.inventory["collections"][memories_c] == 325
    undo = execute_restore(plan_restore(
        load_settings(), "qdrant", f"safety:{safety.partition_key}", target=Target("in_place")))
    assert undo.ok and client.count(memories_c, exact=True).count == 325


# --- full system ----------------------------------------------------------------------------------------------


def test_full_system_restore_from_a_full_system_backup(pg_db: str, pg_server: EmbeddedPostgres,
                                                      valkey_server: EmbeddedValkey) -> None:
    from cb_backups.core.model import no_progress
    from cb_backups.full_system.backup import write_full_backup

    settings = load_settings()
    catalog = Catalog(settings.backup_dir)
    write_full_backup(catalog, "2026-11-22", ["postgres", "valkey"], lambda n: open_store(n, settings),
                      lambda n: no_progress)
    add_memories(pg_server, pg_db, 6)
    plan = plan_full_restore(settings, "2026-11-22", target=Target("in_place"))
    assert [p.store for p in plan.plans] == ["postgres", "valkey"]
    assert "full system backup 2026-11-22" in "\n".join(plan.describe())
    # in place for PostgreSQL only (the session's Valkey cannot be restarted by a test): its part restores
    result = execute_restore(plan_restore(settings, "postgres", "full_system:2026-11-22",
                                                                  target=Target("in_place")))
    assert result.ok and result.kind == "full_system" and memories(pg_server, pg_db) == 50
    # the whole job, into scratch targets: every store verified and counted
    run = run_restore_job("full_system_restore", {"backup": "2026-11-22", "target": "scratch"},
                          dg.DagsterInstance.get())
    assert run.success, failure_text(run)
    stores = run.output_for_node("full_system_restore_op")
    assert set(stores) == {"postgres", "valkey"} and all(r["ok"] for r in stores.values())
    refused = run_restore_job("full_system_restore", {"target": "in_place", "confirm": "postgres"},
                              dg.DagsterInstance.get())
    assert not refused.success and "set confirm to 'full_system'" in failure_text(refused)


def test_full_system_restore_verifies_every_store_before_touching_any(pg_db: str, pg_server: EmbeddedPostgres,
                                                                      valkey_server: EmbeddedValkey) -> None:
    """The stores are prepared at once; one damaged part refuses the whole restore, PostgreSQL untouched."""
    from cb_backups.core.model import no_progress
    from cb_backups.full_system.backup import write_full_backup
    from cb_backups.restore.execute import execute_full_restore

    settings = load_settings()
    catalog = Catalog(settings.backup_dir)
    full = write_full_backup(catalog, "2026-11-22", ["postgres", "valkey"], lambda n: open_store(n, settings),
                             lambda n: no_progress)
    add_memories(pg_server, pg_db, 6)
    flat = full.manifest.markers["stores"]["valkey"]["files"]["dump.rdb"]
    path = full.path(flat)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RestoreRefused, match="valkey"):
        execute_full_restore(plan_full_restore(settings, "2026-11-22", target=Target("in_place")))
    assert memories(pg_server, pg_db) == 56  # the live database kept its 6 newer rows: nothing was swapped in
    with pg_server.connect("postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE %s", (f"{pg_db}__replaced%",)
                                ).fetchone()


def test_restore_from_offsite_after_the_local_copy_is_lost(offsite_env: dict[str, str]) -> None:
    """Scenario 2 of the runbook: the backup disk is gone; the copy in S3 is downloaded, verified, restored."""
    from cb_backups.offsite import s3 as offsite

    catalog = backup("valkey", VK_KEYS[1])
    artifact = catalog.require("valkey", VK_KEYS[1])
    settings = load_settings()
    target = offsite.S3Target(settings.s3)
    offsite.upload_artifact(artifact, target)
    expected = artifact.manifest.inventory["databases"]
    shutil.rmtree(Path(offsite_env["CB_BACKUP_DIR"]) / "valkey")  # the local backups are lost
    plan = plan_restore(settings, "valkey", VK_KEYS[1], source="offsite", target=Target("scratch"))
    result = execute_restore(plan, lambda *_: None)
    assert result.ok and result.partition_key == VK_KEYS[1] and result.source == "offsite"
    assert result.counts["databases"] == expected  # type: ignore[index]

    # a corrupted remote object is refused before anything is restored
    client = s3_env_client(offsite_env)
    key = f"{settings.s3.prefix}/valkey/{VK_KEYS[1]}/dump.rdb"
    body = bytearray(client.get_object(Bucket=settings.s3.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    head = client.head_object(Bucket=settings.s3.bucket, Key=key)
    client.put_object(Bucket=settings.s3.bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])
    with pytest.raises((RestoreRefused, VerificationFailed)):
        execute_restore(
            plan_restore(settings, "valkey", VK_KEYS[1], source="offsite", target=Target("scratch")),
            lambda *_: None)


def s3_env_client(env: dict[str, str]):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=env["CB_S3_ENDPOINT_URL"], region_name="us-east-1")
