"""S3 Object Lock on a real SeaweedFS (4.48 enforces it) with a real PostgreSQL.

With the backup credentials (the only ones the tests have, as an attacker holding them would), a locked
slot cannot be deleted, an overwrite is a new version that verification reports and restores ignore,
retention deletes only versions whose lock has expired, and a bucket without Object Lock is refused.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cb_backups.config.retention import OFFSITE, RetentionPolicy
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import MANIFEST
from cb_backups.core.errors import ConfigError
from cb_backups.core.model import Artifact, Target
from cb_backups.core.net import wait_until
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.offsite import lock
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import versions as offsite_versions
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups.retention.apply import apply_offsite, read_deletions
from cb_backups.retention.policy import PrunePlan
from cb_backups.stores.registry import open_store
from cb_backups_tests.databases import own_database
from cb_backups_tests.servers.s3 import SeaweedS3


@pytest.fixture()
def pg_db(cb_env: dict[str, str], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with own_database(pg_server, monkeypatch, "cblock", 40) as db:
        yield db


def locked_bucket(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> str:
    """A bucket created with Object Lock (versioning comes with it) and cb-backups configured to lock."""
    name = f"cb-lock-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    config = tmp_path / "cb.yaml"
    config.write_text(f"offsite:\n  object_lock: {{mode: {mode}, days_beyond_retention: 1}}\n")
    monkeypatch.setenv("CB_CONFIG", str(config))
    monkeypatch.setenv("CB_S3_BUCKET", name)
    return name


@pytest.fixture()
def lock_env(cb_env: dict[str, str], s3_env: dict[str, str], s3_server: SeaweedS3,
             monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CB_S3_PREFIX", "cb")
    return s3_server


def backup_and_copy(key: str) -> tuple[Artifact, offsite.S3Target, offsite.OffsiteCopy]:
    settings = load_settings()
    catalog = settings.catalog()
    artifact = catalog.write("postgres", key, open_store("postgres", settings).backup)
    target = offsite.S3Target(settings.s3)
    copy = offsite.upload_artifact(artifact, target)
    offsite_versions.save(catalog, "postgres", key, copy.versions)  # as the off-site asset does
    return artifact, target, copy


def add_memories(pg: EmbeddedPostgres, db: str, n: int) -> None:
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO memories (id, user_id, app_id, content) SELECT gen_random_uuid(), user_id, app_id, "
                     "'after' FROM memories LIMIT %s", (n,))


def memories(pg: EmbeddedPostgres, db: str) -> int:
    with pg.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM memories").fetchone()[0])  # type: ignore[index]


def test_a_locked_slot_cannot_be_deleted_and_an_overwrite_is_ignored(
        lock_env: SeaweedS3, pg_db: str, pg_server: EmbeddedPostgres, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = locked_bucket(lock_env, monkeypatch, tmp_path, "COMPLIANCE")
    artifact, target, copy = backup_and_copy("2026-11-24-06:00")
    keys = [*(target.key("postgres", artifact.partition_key, f.name) for f in artifact.manifest.files),
            copy.manifest_key]
    assert set(copy.versions) == set(keys)
    assert copy.locked_until is not None
    until = datetime.fromisoformat(copy.locked_until)
    assert until > datetime.now(UTC) + timedelta(days=7)  # the slot's off-site retention (7 days) + 1
    for key in keys:
        held = lock.retention(target, key, copy.versions[key])
        assert held.mode == "COMPLIANCE" and held.until is not None and held.until >= until - timedelta(seconds=1)
    check = offsite.verify_offsite(artifact, target, versions=copy.versions)
    assert check.ok, check.problems

    s3 = lock_env.client()  # the backup credentials
    dump = next(k for k in keys if k != copy.manifest_key)
    for key in keys:  # deleting a locked version is refused by the server
        with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=bucket, Key=key, VersionId=copy.versions[key])
    # ...but an overwrite and a plain delete go through: as new versions and a delete marker
    s3.put_object(Bucket=bucket, Key=dump, Body=b"ransom note", Metadata={"sha256": "0" * 64})
    s3.put_object(Bucket=bucket, Key=copy.manifest_key, Body=b"{}")
    s3.delete_object(Bucket=bucket, Key=dump)
    tampered = offsite.verify_offsite(artifact, target, versions=copy.versions)
    assert not tampered.ok
    assert any("overwritten or deleted" in p and MANIFEST in p for p in tampered.problems), tampered.problems
    # the recorded versions themselves are intact: the restore reads them, not the attacker's
    shutil.rmtree(artifact.directory)  # the local copy is lost too
    add_memories(pg_server, pg_db, 5)
    assert memories(pg_server, pg_db) == 45
    plan = plan_restore(load_settings(), "postgres", artifact.partition_key, source="offsite",
                        target=Target("in_place"))
    result = execute_restore(plan)
    assert result.ok, result
    assert memories(pg_server, pg_db) == 40
    # without the local record (the backup disk died with it) the oldest version, the locked one, is read
    offsite_versions.forget(load_settings().catalog(), "postgres", artifact.partition_key)
    add_memories(pg_server, pg_db, 3)
    result = execute_restore(plan_restore(load_settings(), "postgres", artifact.partition_key, source="offsite",
                                          target=Target("in_place")))
    assert result.ok, result
    assert memories(pg_server, pg_db) == 40


def test_retention_deletes_only_versions_whose_lock_expired(
        lock_env: SeaweedS3, pg_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = locked_bucket(lock_env, monkeypatch, tmp_path, "GOVERNANCE")
    old, target, old_copy = backup_and_copy("2026-11-23-06:00")
    kept, _, kept_copy = backup_and_copy("2026-11-24-06:00")
    # The test's setup only (an administrator's client with the bypass permission): the old slot's lock
    # ends in a second, so its expiry is real without waiting days.
    admin = lock_env.client()
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    for key, version in old_copy.versions.items():
        admin.put_object_retention(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True,
                                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon})
    old_prefix = target.key("postgres", old.partition_key, "")
    admin.put_object(Bucket=bucket, Key=old_prefix + "junk", Body=b"x")  # an unlocked extra version
    wait_until(lambda: datetime.now(UTC) > soon + timedelta(seconds=1), 30, "the shortened lock to expire")

    plan = PrunePlan(OFFSITE, RetentionPolicy(keep_days=1), keep=[],
                     delete=[(old.partition_key, "older than 1 day"), (kept.partition_key, "older than 1 day")])
    locked: list[str] = []
    records = apply_offsite(plan, target, "postgres", load_settings().backup_dir, locked=locked)
    assert [r.partition for r in records] == [old.partition_key]
    assert [r.partition for r in read_deletions(load_settings().backup_dir, "postgres")] == [old.partition_key]
    assert len(locked) == 1 and locked[0].startswith(f"{kept.partition_key}: locked until 20")
    assert lock.versions(target, old_prefix) == []  # every version and delete marker of the old slot is gone
    catalog = load_settings().catalog()
    assert offsite_versions.load(catalog, "postgres", old.partition_key) is None  # its recorded versions went too
    assert offsite_versions.load(catalog, "postgres", kept.partition_key) == kept_copy.versions  # still locked
    assert offsite.list_offsite("postgres", target) == [kept.partition_key]
    check = offsite.verify_offsite(kept, target, versions=kept_copy.versions)
    assert check.ok, check.problems


def test_a_bucket_without_object_lock_is_a_configuration_error(
        lock_env: SeaweedS3, pg_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked_bucket(lock_env, monkeypatch, tmp_path, "COMPLIANCE")
    plain = f"cb-plain-{uuid.uuid4().hex[:12]}"
    lock_env.client().create_bucket(Bucket=plain)
    monkeypatch.setenv("CB_S3_BUCKET", plain)
    settings = load_settings()
    artifact = settings.catalog().write("postgres", "2026-11-24-06:00", open_store("postgres", settings).backup)
    target = offsite.S3Target(settings.s3)
    with pytest.raises(ConfigError) as refused:
        offsite.upload_artifact(artifact, target)
    message = str(refused.value)
    assert plain in message and "Object Lock is not enabled" in message and "versioning is off" in message
    assert lock_env.client().list_objects_v2(Bucket=plain).get("KeyCount", 0) == 0  # nothing sent unlocked
    assert lock.bucket_problems(target)


def test_doctor_checks_the_bucket_has_object_lock_and_versioning(
        lock_env: SeaweedS3, pg_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import os
    import subprocess
    import sys

    def doctor() -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "doctor", "--json"], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ), stdin=subprocess.DEVNULL,
                              cwd=Path(__file__).resolve().parent.parent)
        assert "Traceback" not in done.stderr, done.stderr
        items = json.loads(done.stdout)["items"]
        return next(i for i in items if i["store"] == "offsite")

    locked_bucket(lock_env, monkeypatch, tmp_path, "COMPLIANCE")
    assert doctor()["ok"]
    plain = f"cb-plain-{uuid.uuid4().hex[:12]}"
    lock_env.client().create_bucket(Bucket=plain)
    monkeypatch.setenv("CB_S3_BUCKET", plain)
    found = doctor()
    assert not found["ok"] and "Object Lock is not enabled" in str(found["result"])


def test_a_partly_locked_slot_keeps_the_recorded_versions_of_what_stayed(tmp_path: Path) -> None:
    """A deletion that removed some versions and left others locked: only the gone ones leave the record."""
    from cb_backups.core.catalog import Catalog

    catalog = Catalog(tmp_path / "backups")
    recorded = {"cb/postgres/k/manifest.json": "v1", "cb/postgres/k/dump.zst": "v2"}
    offsite_versions.save(catalog, "postgres", "k", recorded)
    offsite_versions.deleted(catalog, "postgres", "k", ["cb/postgres/k/manifest.json@v1", "cb/other@v9"], False)
    assert offsite_versions.load(catalog, "postgres", "k") == {"cb/postgres/k/dump.zst": "v2"}
    offsite_versions.deleted(catalog, "postgres", "k", ["cb/postgres/k/dump.zst@v0"], False)  # another version
    assert offsite_versions.load(catalog, "postgres", "k") == {"cb/postgres/k/dump.zst": "v2"}
    offsite_versions.deleted(catalog, "postgres", "k", ["cb/postgres/k/dump.zst@v2"], True)
    assert offsite_versions.load(catalog, "postgres", "k") is None
    assert not catalog.offsite_versions("postgres", "k").exists()
