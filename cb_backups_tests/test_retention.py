"""Retention planner: unit tests, property tests of its invariants, and applying plans for real."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cb_backups.config.retention import RetentionPolicies, RetentionPolicy, policies_from_config
from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import ConfigError
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import Artifact, BackupOutput, FileRecord, Verification
from cb_backups.offsite import s3 as offsite
from cb_backups.retention.apply import (
    RetentionIncomplete,
    apply_local,
    apply_offsite,
    deletions_log,
    local_backups,
    read_deletions,
)
from cb_backups.retention.policy import BackupInfo, plan
from cb_backups_tests.servers.s3 import SeaweedS3

# s3_server, s3_bucket and s3_env come from cb_backups_tests/fixtures_s3.py (loaded by conftest.py)

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def six_hourly(count: int, verified: bool = True, offsite_verified: bool | None = True) -> list[BackupInfo]:
    return [BackupInfo(f"p{i:03d}", NOW - timedelta(hours=6 * i), verified, offsite_verified) for i in range(count)]


# --- policies ------------------------------------------------------------------------


def test_runbook_defaults() -> None:
    policies = RetentionPolicies()
    assert policies.for_store("postgres") == RetentionPolicy(keep_days=7, keep_last=28)
    for store in ("neo4j", "qdrant", "opensearch"):
        assert policies.for_store(store) == RetentionPolicy(keep_days=7)
    assert policies.for_store("valkey") == RetentionPolicy(keep_days=3)
    assert policies.for_store("full_system") == RetentionPolicy(keep_days=28)
    assert policies.for_store("postgres", "offsite") == policies.for_store("postgres")


def test_policies_from_config() -> None:
    raw = {"retention": {"valkey": {"keep_days": 1, "keep_last": 4},
                         "offsite": {"postgres": {"keep_days": 30, "keep_monthly": 12}}}}
    policies = policies_from_config(raw)
    assert policies.for_store("valkey") == RetentionPolicy(keep_days=1, keep_last=4)
    assert policies.for_store("valkey", "offsite") == RetentionPolicy(keep_days=1, keep_last=4)
    assert policies.for_store("postgres") == RetentionPolicy(keep_days=7, keep_last=28)
    assert policies.for_store("postgres", "offsite") == RetentionPolicy(keep_days=30, keep_monthly=12)
    assert policies_from_config(None) == RetentionPolicies()


@pytest.mark.parametrize(("raw", "names"), [
    ({"retention": {"postgres": {"keep_days": 0}}}, ["retention.postgres.keep_days", "0"]),
    ({"retention": {"postgres": {"keep_last": -3}}}, ["retention.postgres.keep_last", "-3"]),
    ({"retention": {"valkey": {"keep_days": "7"}}}, ["retention.valkey.keep_days", "'7'"]),
    ({"retention": {"valkey": {"keep_days": 2, "min_keep": 0}}}, ["retention.valkey.min_keep", "0"]),
    ({"retention": {"valkey": {"keep_hours": 2}}}, ["retention.valkey.keep_hours", "keep_days"]),
    ({"retention": {"mysql": {"keep_days": 2}}}, ["mysql", "postgres"]),
    ({"retention": {"offsite": {"neo4j": {"keep_weekly": 0}}}}, ["retention.offsite.neo4j.keep_weekly"]),
    ({"retention": {"neo4j": {}}}, ["no rule", "keep_days"]),
    ({"retention": ["postgres"]}, ["'retention' section"]),
])
def test_bad_policy_values_are_named(raw: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        policies_from_config(raw)
    for name in names:
        assert name in str(caught.value)


def test_policy_refuses_bools_and_zero() -> None:
    with pytest.raises(ConfigError, match="keep_days"):
        RetentionPolicy(keep_days=True)
    with pytest.raises(ConfigError, match="min_keep"):
        RetentionPolicy(keep_days=1, min_keep=0)


# --- planning -------------------------------------------------------------------------


def test_postgres_keeps_seven_days_at_most_28() -> None:
    backups = six_hourly(40)  # 10 days of 6-hourly backups; 29 fall within 7 days (both ends included)
    result = plan(backups, RetentionPolicy(keep_days=7, keep_last=28), NOW, offsite_enabled=True)
    assert result.kept_keys == [f"p{i:03d}" for i in range(28)]
    assert result.deleted_keys == [f"p{i:03d}" for i in range(39, 27, -1)]  # oldest first
    reasons = dict(result.delete)
    assert reasons["p028"].startswith("beyond keep_last=28")
    assert "older than keep_days=7" in reasons["p039"]
    assert dict(result.keep)["p000"] == ["newest verified", "min_keep=1", "within keep_days=7"]


def test_newest_verified_survives_any_age() -> None:
    old = [BackupInfo(f"d{i}", NOW - timedelta(days=30 + i), verified=(i == 3), offsite_verified=True)
           for i in range(6)]
    result = plan(old, RetentionPolicy(keep_days=7), NOW, offsite_enabled=False)
    assert result.keep == [("d3", ["newest verified", "min_keep=1"])]
    assert sorted(result.deleted_keys) == ["d0", "d1", "d2", "d4", "d5"]


def test_min_keep_tops_up_with_unverified() -> None:
    old = [BackupInfo(f"d{i}", NOW - timedelta(days=30 + i), verified=False) for i in range(4)]
    result = plan(old, RetentionPolicy(keep_days=7, min_keep=2), NOW, offsite_enabled=False)
    assert result.kept_keys == ["d0", "d1"]


def test_not_yet_verified_offsite_is_kept_locally() -> None:
    backups = six_hourly(20)
    backups[15] = BackupInfo("p015", backups[15].captured_at, True, False)  # copy failed its check
    backups[19] = BackupInfo("p019", backups[19].captured_at, True, None)  # never copied
    policy = RetentionPolicy(keep_days=3)
    result = plan(backups, policy, NOW, offsite_enabled=True)
    assert {"p015", "p019"} <= set(result.kept_keys)
    assert "not yet verified off-site" in dict(result.keep)["p019"]
    assert "p019" in plan(backups, policy, NOW, offsite_enabled=False).deleted_keys


def test_offsite_plan_uses_offsite_verification() -> None:
    backups = [BackupInfo("new", NOW - timedelta(days=20), True, False),
               BackupInfo("old", NOW - timedelta(days=21), True, True)]
    result = plan(backups, RetentionPolicy(keep_days=7), NOW, offsite_enabled=True, where="offsite")
    assert result.keep == [("old", ["newest verified off-site copy", "min_keep=1"])]
    assert result.deleted_keys == ["new"]


def test_gfs_buckets() -> None:
    # two backups a day for 90 days
    backups = [BackupInfo(f"b{i:03d}", NOW - timedelta(hours=12 * i), True, True) for i in range(180)]
    policy = RetentionPolicy(keep_daily=3, keep_weekly=2, keep_monthly=3)
    result = plan(backups, policy, NOW, offsite_enabled=True)
    kept = dict(result.keep)
    assert kept["b000"] == ["newest verified", "min_keep=1", "keep_daily 2025-06-15", "keep_weekly 2025-W24",
                            "keep_monthly 2025-06"]
    daily = sorted(r for reasons in kept.values() for r in reasons if r.startswith("keep_daily"))
    assert daily == ["keep_daily 2025-06-13", "keep_daily 2025-06-14", "keep_daily 2025-06-15"]
    monthly = sorted(r for reasons in kept.values() for r in reasons if r.startswith("keep_monthly"))
    assert monthly == ["keep_monthly 2025-04", "keep_monthly 2025-05", "keep_monthly 2025-06"]
    assert len(result.keep) <= 3 + 2 + 3


def test_gfs_prefers_a_verified_backup_in_the_bucket() -> None:
    backups = [BackupInfo("evening", NOW - timedelta(days=3, hours=1), False, True),
               BackupInfo("morning", NOW - timedelta(days=3, hours=9), True, True),
               BackupInfo("today", NOW, True, True)]
    result = plan(backups, RetentionPolicy(keep_daily=2), NOW, offsite_enabled=False)
    assert result.kept_keys == ["today", "morning"]


def test_keep_last_alone_keeps_the_newest() -> None:
    result = plan(six_hourly(10), RetentionPolicy(keep_last=3), NOW, offsite_enabled=False)
    assert result.kept_keys == ["p000", "p001", "p002"]
    assert len(result.delete) == 7


def test_future_backups_are_kept() -> None:
    backups = [BackupInfo("future", NOW + timedelta(days=2), True, True), *six_hourly(3)]
    result = plan(backups, RetentionPolicy(keep_last=1), NOW, offsite_enabled=False)
    assert "captured after now (clock skew?)" in dict(result.keep)["future"]


def test_plan_refuses_duplicates_and_bad_location() -> None:
    with pytest.raises(ConfigError, match="p000"):
        plan(six_hourly(2) + six_hourly(1), RetentionPolicy(keep_days=1), NOW, offsite_enabled=False)
    with pytest.raises(ConfigError, match="elsewhere"):
        plan([], RetentionPolicy(keep_days=1), NOW, offsite_enabled=False, where="elsewhere")
    assert plan([], RetentionPolicy(keep_days=1), NOW, offsite_enabled=False).keep == []


# --- properties -------------------------------------------------------------------------

optional_count = st.none() | st.integers(min_value=1, max_value=30)


@st.composite
def policies(draw: st.DrawFn) -> RetentionPolicy:
    values = {name: draw(optional_count) for name in ("keep_days", "keep_last", "keep_daily", "keep_weekly",
                                                      "keep_monthly")}
    if not any(values.values()):
        values["keep_days"] = draw(st.integers(min_value=1, max_value=30))
    return RetentionPolicy(**values, min_keep=draw(st.integers(min_value=1, max_value=4)))


@st.composite
def histories(draw: st.DrawFn) -> list[BackupInfo]:
    hours = draw(st.lists(st.integers(min_value=-48, max_value=24 * 120), max_size=60, unique=True))
    return [BackupInfo(f"k{i:03d}", NOW - timedelta(hours=h), draw(st.booleans()),
                       draw(st.sampled_from([True, False, None]))) for i, h in enumerate(hours)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(backups=histories(), policy=policies(), offsite_enabled=st.booleans(),
       where=st.sampled_from(["local", "offsite"]))
def test_plan_invariants(backups: list[BackupInfo], policy: RetentionPolicy, offsite_enabled: bool,
                         where: str) -> None:
    result = plan(backups, policy, NOW, offsite_enabled=offsite_enabled, where=where)
    by_key = {b.partition_key: b for b in backups}
    kept, deleted = result.kept_keys, result.deleted_keys

    # a partition of the input
    assert sorted(kept + deleted) == sorted(by_key)
    assert not set(kept) & set(deleted)

    # the newest verified backup is never deleted
    good = [b for b in backups if (b.verified if where == "local" else b.offsite_verified is True)]
    if good:
        newest = max(good, key=lambda b: (b.captured_at, b.partition_key))
        assert newest.partition_key in kept

    # locally, with off-site enabled, nothing without a verified off-site copy is deleted
    if where == "local" and offsite_enabled:
        assert all(by_key[k].offsite_verified is True for k in deleted)

    # at least min_keep remain, and nothing from the future is deleted
    assert len(kept) >= min(policy.min_keep, len(backups))
    assert all(by_key[k].captured_at <= NOW for k in deleted)

    # a deletion is allowed by the policy: too old and in no GFS bucket, or over the keep_last maximum
    reasons = dict(result.keep)
    unprotected = [k for k in kept if not _protected(reasons[k])]
    gfs_keys = {k for k in kept if any(r.startswith("keep_") for r in reasons[k])}
    for key, reason in result.delete:
        if reason.startswith("beyond keep_last"):
            assert policy.keep_last is not None and len(kept) >= policy.keep_last
            assert all(by_key[k].captured_at > by_key[key].captured_at for k in unprotected)
        else:
            if policy.keep_days is not None:
                assert by_key[key].captured_at < NOW - timedelta(days=policy.keep_days)
            else:
                assert any((policy.keep_daily, policy.keep_weekly, policy.keep_monthly))
            assert key not in gfs_keys

    # keep_last is a maximum unless protection demands more
    if policy.keep_last is not None and len(kept) > policy.keep_last:
        assert unprotected == []

    # deterministic
    assert plan(list(reversed(backups)), policy, NOW, offsite_enabled=offsite_enabled, where=where) == result


@st.composite
def histories_with_stale_copies(draw: st.DrawFn) -> list[BackupInfo]:
    """Slots with a manifest, and an off-site verification that verified this manifest, an OLDER one of the slot
    (the slot was backed up again after its copy: stale), or none."""
    hours = draw(st.lists(st.integers(min_value=-48, max_value=24 * 60), max_size=40, unique=True))
    found = []
    for i, h in enumerate(hours):
        sha = f"{i:03d}" + "a" * 61
        copy = draw(st.sampled_from(["current", "stale", "unknown", "none"]))
        held = {"current": sha, "stale": f"{i:03d}" + "b" * 61, "unknown": None, "none": None}[copy]
        found.append(BackupInfo(f"k{i:03d}", NOW - timedelta(hours=h), draw(st.booleans()),
                                None if copy == "none" else draw(st.booleans()) or copy == "stale",
                                manifest_sha256=sha, offsite_sha256=held))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(backups=histories_with_stale_copies(), policy=policies())
def test_a_stale_offsite_copy_never_counts_as_verified(backups: list[BackupInfo], policy: RetentionPolicy) -> None:
    result = plan(backups, policy, NOW, offsite_enabled=True, where="local")
    by_key = {b.partition_key: b for b in backups}
    for key in result.deleted_keys:  # only a backup whose CURRENT manifest is verified off-site may go
        b = by_key[key]
        assert b.offsite_verified is True and b.offsite_sha256 == b.manifest_sha256, b
    for b in backups:
        if b.offsite_sha256 not in (None, b.manifest_sha256):
            assert b.partition_key in result.kept_keys
            assert "not yet verified off-site" in dict(result.keep)[b.partition_key]
    # off-site, the newest copy that is verified AND current is never deleted
    remote = plan(backups, policy, NOW, offsite_enabled=True, where="offsite")
    current = [b for b in backups if b.offsite_current]
    if current:
        newest = max(current, key=lambda b: (b.captured_at, b.partition_key))
        assert newest.partition_key in remote.kept_keys


def test_local_backups_mark_a_copy_of_an_older_manifest_stale(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    first, second = _fill(catalog, "valkey", 2)
    sha = {a.partition_key: hashlib.sha256(a.path("manifest.json").read_bytes()).hexdigest() for a in (first, second)}
    infos = local_backups(catalog, "valkey", {first.partition_key: True, second.partition_key: True},
                          {first.partition_key: sha[first.partition_key], second.partition_key: "0" * 64})
    current = {b.partition_key: b.offsite_current for b in infos}
    assert current == {first.partition_key: True, second.partition_key: False}
    result = plan(infos, RetentionPolicy(keep_days=1, min_keep=1), NOW + timedelta(days=30), offsite_enabled=True)
    assert second.partition_key in result.kept_keys  # its copy in S3 is of another manifest


def _protected(reasons: list[str]) -> bool:
    return any(r.startswith(("newest verified", "min_keep=", "not yet verified", "captured after")) for r in reasons)


# --- applying ---------------------------------------------------------------------------


def _backup(tag: str) -> Callable[[Path], BackupOutput]:
    def backup(into: Path) -> BackupOutput:
        with HashingWriter(into / "data.bin") as out:
            out.write(os.urandom(2048) + tag.encode())
        return BackupOutput(files=[FileRecord("data.bin", out.bytes, out.sha256)], method="fake", options={},
                            versions={}, inventory={}, captured_at=tag)

    return backup


def _fill(catalog: Catalog, store: str, count: int) -> list[Artifact]:
    artifacts = []
    for i in range(count):
        captured = (NOW - timedelta(days=i)).isoformat()
        artifact = catalog.write(store, f"d{i:02d}", _backup(captured))
        catalog.record_verification(artifact, Verification(ok=True))
        artifacts.append(artifact)
    return artifacts


def test_apply_local_deletes_and_logs(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "backups")
    _fill(catalog, "opensearch", 10)
    infos = local_backups(catalog, "opensearch", offsite_verified={f"d{i:02d}": True for i in range(10)})
    assert [b.verified for b in infos] == [True] * 10
    result = plan(infos, RetentionPolicy(keep_days=7), NOW, offsite_enabled=True)
    assert result.deleted_keys == ["d09", "d08"]

    cleaned: list[str] = []
    records = apply_local(result, catalog, "opensearch",
                                    deleter=lambda artifact: cleaned.append(artifact.partition_key), now=NOW)
    assert cleaned == ["d09", "d08"]
    assert [(r.partition, r.where) for r in records] == [("d09", "local"), ("d08", "local")]
    assert [a.partition_key for a in catalog.list("opensearch")] == [f"d{i:02d}" for i in range(8)]
    assert not any(p.name.startswith(".deleting-") for p in catalog.store_dir("opensearch").iterdir())
    log_lines = deletions_log(catalog.root).read_text().splitlines()
    assert [json.loads(line)["partition"] for line in log_lines] == ["d09", "d08"]
    assert json.loads(log_lines[0]) == {"store": "opensearch", "partition": "d09", "where": "local",
                                        "reason": dict(result.delete)["d09"], "deleted_at": "2025-06-15T12:00:00+00:00"}
    assert read_deletions(catalog.root, "opensearch") == records
    assert oct(deletions_log(catalog.root).stat().st_mode & 0o777) == "0o600"


def test_apply_local_failing_cleanup_keeps_the_backup(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "backups")
    _fill(catalog, "qdrant", 10)
    result = plan(local_backups(catalog, "qdrant"), RetentionPolicy(keep_days=7), NOW,
                  offsite_enabled=False)

    def deleter(artifact: Artifact) -> None:
        if artifact.partition_key == "d09":
            raise ConnectionError("qdrant unreachable")

    with pytest.raises(RetentionIncomplete, match="d09: qdrant unreachable") as caught:
        apply_local(result, catalog, "qdrant", deleter=deleter, now=NOW)
    assert [r.partition for r in caught.value.records] == ["d08"]
    assert catalog.get("qdrant", "d09") is not None and catalog.get("qdrant", "d08") is None


def test_apply_local_skips_a_slot_being_written(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "backups")
    _fill(catalog, "valkey", 5)
    result = plan(local_backups(catalog, "valkey"), RetentionPolicy(keep_days=3), NOW,
                  offsite_enabled=False)
    assert result.deleted_keys == ["d04"]
    with catalog.slot_lock("valkey", "d04"):
        assert apply_local(result, catalog, "valkey") == []
    assert catalog.get("valkey", "d04") is not None
    with pytest.raises(ConfigError, match="prune plan"):
        apply_local(plan([], RetentionPolicy(keep_days=1), NOW, False, where="offsite"), catalog, "valkey")


def test_apply_offsite_deletes_copies_and_logs(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str,
                                               s3_env: dict[str, str]) -> None:
    catalog = Catalog(tmp_path / "backups")
    artifacts = _fill(catalog, "neo4j", 4)
    target = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url,
                                         multipart_chunk_mb=5), connect_timeout=2, read_timeout=20)
    for artifact in artifacts:
        offsite.upload_artifact(artifact, target)
    infos = [BackupInfo(a.partition_key, NOW - timedelta(days=i * 10), True, True) for i, a in enumerate(artifacts)]
    result = plan(infos, RetentionPolicy(keep_days=15), NOW, offsite_enabled=True, where="offsite")
    assert result.deleted_keys == ["d03", "d02"]
    records = apply_offsite(result, target, "neo4j", backup_dir=catalog.root, now=NOW)
    assert [(r.partition, r.where) for r in records] == [("d03", "offsite"), ("d02", "offsite")]
    assert offsite.list_offsite("neo4j", target) == ["d00", "d01"]
    assert [r.partition for r in read_deletions(catalog.root)] == ["d03", "d02"]
    assert apply_offsite(result, target, "neo4j", backup_dir=catalog.root) == []  # already gone
