"""Retention through Dagster, for real: the retention_job, `cb-backups prune`, SeaweedFS S3, OpenSearch.

The backups here are synthetic but real: files streamed through HashingWriter into the catalog by a
small fake store callable (test data), with captured_at set in the past.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from opensearchpy import OpenSearch

from cb_backups.cli import app as cli
from cb_backups.config.settings import OpenSearchSettings, S3Settings
from cb_backups.core.catalog import Catalog, iso, utcnow
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import BackupOutput, FileRecord, Verification, no_progress
from cb_backups.definitions import defs
from cb_backups.offsite import s3 as offsite
from cb_backups.retention.apply import read_deletions
from cb_backups.stores.opensearch import OpenSearchStore
from cb_backups_tests.servers.s3 import SeaweedS3

# cb_env (conftest.py), s3_* (fixtures_s3.py) and opensearch_* (fixtures_opensearch.py) via conftest.py

# four old Valkey slots (retention: 3 days), oldest first
OLD = ["2026-11-10-00:00", "2026-11-10-06:00", "2026-11-10-12:00", "2026-11-10-18:00"]


def fake_backup(key: str, days_ago: float) -> Callable[[Path], BackupOutput]:
    def backup(into: Path) -> BackupOutput:
        with HashingWriter(into / "dump.rdb") as out:
            for i in range(4):
                out.write(hashlib.sha256(f"{key}-{i}".encode()).digest() * 512)
        return BackupOutput(files=[FileRecord("dump.rdb", out.bytes, out.sha256)], method="fake", options={},
                            versions={"fake": "1"}, inventory={"keys": {"db0": 1}},
                            captured_at=iso(utcnow() - timedelta(days=days_ago)))

    return backup


def make_backups(catalog: Catalog, store: str, keys: list[str], failed: frozenset[str] = frozenset()) -> None:
    for age, key in zip(range(len(keys) + 10, 10, -1), keys, strict=False):  # oldest first: 14, 13, ... days
        artifact = catalog.write(store, key, fake_backup(key, age))
        catalog.record_verification(artifact, Verification(key not in failed, ["checksum: test"] if key in failed
                                                           else []))


def local_keys(catalog: Catalog, store: str = "valkey") -> list[str]:
    return [a.partition_key for a in catalog.list(store)]


def observations(instance: dg.DagsterInstance, key: str) -> list[tuple[str | None, str]]:
    records = instance.fetch_observations(dg.AssetKey(key), limit=100).records
    return sorted((r.partition_key, r.asset_observation.metadata["reason"].value)  # type: ignore[union-attr]
                  for r in records)


def test_prune_dry_run_then_apply_without_s3(cb_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    # the newest backup failed verification: the newest VERIFIED one (OLD[2]) must survive, though old
    make_backups(catalog, "valkey", OLD, failed=frozenset({OLD[3]}))
    before = sorted(p.relative_to(catalog.root).as_posix() for p in catalog.root.rglob("*") if p.is_file())

    assert cli.main(["prune", "valkey", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "would be deleted" in out
    assert "newest verified" in out and "older than keep_days=3" in out
    assert out.count("delete") >= 3
    after = sorted(p.relative_to(catalog.root).as_posix() for p in catalog.root.rglob("*") if p.is_file())
    assert after == before and read_deletions(catalog.root) == []

    assert cli.main(["prune", "valkey"]) == 0
    assert local_keys(catalog) == [OLD[2]]
    logged = read_deletions(catalog.root, "valkey")
    assert sorted(r.partition for r in logged) == [OLD[0], OLD[1], OLD[3]]
    assert all(r.where == "local" and "keep_days=3" in r.reason for r in logged)
    # Dagster recorded each deletion on the slot it removed
    seen = observations(dg.DagsterInstance.get(), "valkey_backup")
    assert [k for k, _ in seen] == sorted([OLD[0], OLD[1], OLD[3]])
    # running again deletes nothing more
    assert cli.main(["prune", "valkey"]) == 0
    assert local_keys(catalog) == [OLD[2]]


def test_retention_job_keeps_what_is_not_verified_off_site(cb_env: dict[str, str], s3_env: dict[str, str],
                                                           s3_server: SeaweedS3, s3_bucket: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    make_backups(catalog, "valkey", OLD)
    target = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url))
    for key in OLD[:2]:  # only the two oldest have off-site copies
        offsite.upload_artifact(catalog.require("valkey", key), target)

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("retention_job").execute_in_process(
        instance=instance, run_config={"ops": {"retention_op": {"config": {"stores": ["valkey"]}}}})
    assert result.success
    # locally: the two not copied off-site stay (OLD[3] is also the newest verified); the copied ones go
    assert local_keys(catalog) == OLD[2:]
    # off-site: the newest verified copy stays, the older one goes
    assert offsite.list_offsite("valkey", target) == [OLD[1]]
    assert offsite.verify_offsite(catalog.require("valkey", OLD[2]), target).ok is False  # never copied
    logged = {(r.where, r.partition) for r in read_deletions(catalog.root)}
    assert logged == {("local", OLD[0]), ("local", OLD[1]), ("offsite", OLD[0])}
    assert [k for k, _ in observations(instance, "valkey_offsite")] == [OLD[0]]
    assert [k for k, _ in observations(instance, "valkey_backup")] == OLD[:2]
    plans = result.output_for_node("retention_op")
    reasons = dict((k["partition"], k["reasons"]) for k in plans[0]["local"]["keep"])
    assert "not yet verified off-site" in reasons[OLD[2]] and "newest verified" in reasons[OLD[3]]

    # S3 refusing (here: the bucket is gone): nothing local counts as copied, nothing is deleted, the run fails
    monkeypatch.setenv("CB_S3_BUCKET", "cb-no-such-bucket")
    make_backups(catalog, "valkey", ["2026-11-09-00:00"])
    failed = defs.resolve_job_def("retention_job").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"retention_op": {"config": {"stores": ["valkey"]}}}})
    assert not failed.success
    messages = [e.step_failure_data.user_failure_data.description for e in failed.all_events  # type: ignore[union-attr]
                if e.is_step_failure]
    assert "cb-no-such-bucket" in messages[0] and "NoSuchBucket" in messages[0]
    assert local_keys(catalog) == ["2026-11-09-00:00", *OLD[2:]]


def test_opensearch_snapshots_are_deleted_with_their_backup(cb_env: dict[str, str], tmp_path: Path,
                                                            opensearch_settings: OpenSearchSettings,
                                                            opensearch_client: OpenSearch,
                                                            seeded_opensearch: dict[str, int],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cb.yaml"
    config.write_text(yaml.safe_dump({
        "opensearch": {"url": opensearch_settings.url, "repository": opensearch_settings.repository,
                       "repository_type": "fs", "repository_settings": opensearch_settings.repository_settings},
        "retention": {"opensearch": {"keep_last": 1}},  # override from the CB_CONFIG file
    }))
    monkeypatch.setenv("CB_CONFIG", str(config))
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    store = OpenSearchStore(opensearch_settings)
    snapshots = []
    for key in ("2026-11-20", "2026-11-21"):
        artifact = catalog.write("opensearch", key, lambda into: store.backup(into, no_progress))
        catalog.record_verification(artifact, Verification(True))
        snapshots.append(artifact.manifest.markers["snapshot"])

    assert cli.main(["prune", "opensearch"]) == 0
    assert "keep_last=1" in capsys.readouterr().out
    assert local_keys(catalog, "opensearch") == ["2026-11-21"]
    listed = opensearch_client.snapshot.get(repository=opensearch_settings.repository, snapshot="_all")
    assert [s["snapshot"] for s in listed["snapshots"]] == [snapshots[1]]
    (record,) = read_deletions(catalog.root, "opensearch")
    assert record.partition == "2026-11-20" and "keep_last=1" in record.reason


def test_bad_input_and_the_daily_schedule(cb_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prune", "mysql"]) == 2
    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps({"retention": {"valkey": {"keep_days": 0}}}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    assert cli.main(["prune", "--dry-run"]) == 2
    assert "retention.valkey.keep_days" in capsys.readouterr().err
    schedule = defs.resolve_schedule_def("retention_schedule")
    assert schedule.cron_schedule == "30 5 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "retention_job"
