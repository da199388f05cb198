"""Retention of WAL: every segment a kept base backup needs stays; nothing newer than the newest verified base
backup is pruned (property-tested like the planner in test_retention.py), and applying it for real."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cb_backups.config.retention import OFFSITE, RetentionPolicy
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog, utcnow
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import BackupOutput, FileRecord, Verification
from cb_backups.core.net import wait_until
from cb_backups.offsite import s3
from cb_backups.offsite import versions as offsite_versions
from cb_backups.offsite import wal as offsite_wal
from cb_backups.retention.apply import read_deletions
from cb_backups.retention.policy import BackupInfo, WalBase, plan_wal
from cb_backups.retention.wal import ONLY_VERIFIED, OffsiteCopy, plan_offsite_bases, prune_pitr
from cb_backups.stores.pitr.archive import WalArchive
from cb_backups.stores.pitr.basebackup import BASE_FILE, BASE_STORE
from cb_backups.stores.pitr.wal import format_lsn, segment_name, segment_start
from cb_backups.stores.s3client import object_sizes
from cb_backups_tests.servers.s3 import SeaweedS3

bases_st = st.lists(st.builds(WalBase, st.text("abcdefgh", min_size=1, max_size=3), st.integers(1, 2),
                              st.integers(0, 40), st.booleans()), max_size=6,
                    unique_by=lambda b: b.partition_key)
segments_st = st.lists(st.tuples(st.integers(1, 2), st.integers(0, 50)), unique=True, max_size=60)


@settings(max_examples=300, deadline=None)
@given(segments_st, bases_st, st.data())
def test_wal_rule_keeps_what_kept_base_backups_need(segments: list[tuple[int, int]], bases: list[WalBase],
                                                    data: st.DataObject) -> None:
    kept = data.draw(st.lists(st.sampled_from([b.partition_key for b in bases]), unique=True) if bases
                     else st.just([]))
    deleted = plan_wal(segments, bases, kept)
    assert set(deleted) <= set(segments)
    verified = [b for b in bases if b.verified]
    if not verified:
        assert deleted == []
        return
    newest = max(verified, key=lambda b: (b.timeline, b.start_segno))
    for tli, segno in deleted:
        assert segno < newest.start_segno and tli <= newest.timeline  # never newer than the newest verified base
        for base in bases:
            if base.partition_key in kept:  # each kept base keeps its WAL from its start on
                assert segno < base.start_segno and tli <= base.timeline
    # and it is not over-cautious: everything older than every protected start goes
    floor = [newest, *(b for b in bases if b.partition_key in kept)]
    expected = {s for s in segments if all(s[1] < b.start_segno and s[0] <= b.timeline for b in floor)}
    assert set(deleted) == expected


def test_no_verified_base_backup_deletes_no_wal() -> None:
    assert plan_wal([(1, 0), (1, 1)], [WalBase("a", 1, 5, False)], ["a"]) == []


def _base(catalog: Catalog, key: str, start_segno: int, captured: datetime, verified: bool = True) -> None:
    def write(into: Path) -> BackupOutput:
        with HashingWriter(into / BASE_FILE) as out:
            out.write(b"not really a tar")
        return BackupOutput([FileRecord(BASE_FILE, out.bytes, out.sha256)], "pg_basebackup", {}, {}, {},
                            markers={"start_lsn": format_lsn(segment_start(start_segno) + 40), "timeline": 1,
                                     "stop_lsn": format_lsn(segment_start(start_segno) + 400),
                                     "wal_segment_size": 16 * 2**20},
                            captured_at=captured.isoformat())

    artifact = catalog.write(BASE_STORE, key, write)
    catalog.record_verification(artifact, Verification(verified))


def test_prune_deletes_old_base_backups_and_only_the_wal_no_kept_one_needs(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "backups")
    archive = WalArchive(catalog)
    spool = tmp_path / "spool"
    spool.mkdir()
    for segno in range(0, 12):
        path = spool / segment_name(1, segno)
        path.write_bytes(bytes([segno]) * 1024)
        archive.record(path)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    _base(catalog, "2026-11-01", 2, now - timedelta(days=30))
    _base(catalog, "2026-11-28", 6, now - timedelta(days=3))
    _base(catalog, "2026-11-30", 9, now - timedelta(days=1), verified=False)
    result = prune_pitr(catalog, RetentionPolicy(keep_days=7), now=now)
    assert result.deleted_bases == ["2026-11-01"]
    assert result.deleted_segments == [segment_name(1, n) for n in range(0, 6)]  # 2026-11-28 starts at 6
    assert [s.segno for s in archive.segments()] == list(range(6, 12))
    assert catalog.get(BASE_STORE, "2026-11-28") is not None


copies_st = st.lists(st.tuples(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 40), st.booleans(),
                               st.sampled_from([None, True, False])),
                     max_size=8, unique_by=lambda c: c[0])


@settings(max_examples=300, deadline=None)
@given(copies_st, st.integers(1, 10), st.integers(1, 3))
def test_offsite_base_plan_keeps_the_newest_verified_and_every_only_verified_copy(
        found: list[tuple[str, int, bool, bool | None]], keep_days: int, min_keep: int) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    copies = [OffsiteCopy(BackupInfo(k, now - timedelta(days=age), ok, ok), WalBase(k, 1, 40 - age, ok),
                          "sha" if ok else None) for k, age, ok, _ in found]
    local = {k: v for k, _, _, v in found if v is not None}  # None: the local backup is gone
    made = plan_offsite_bases(copies, local, RetentionPolicy(keep_days=keep_days, min_keep=min_keep), now)
    assert sorted([*made.kept_keys, *made.deleted_keys]) == sorted(k for k, *_ in found)
    good = sorted((c for c in copies if c.info.offsite_verified), key=lambda c: (c.info.captured_at,
                                                                                 c.info.partition_key))
    if good:
        assert good[-1].info.partition_key in made.kept_keys  # never the newest verified copy
    for key, _, ok, local_ok in found:
        if ok and local_ok is False:  # the local one did not verify: this copy is the only good one
            assert key in made.kept_keys
    for key, _ in made.delete:
        assert key not in {k for k, age, *_ in found if age <= keep_days}


def _segments(archive: WalArchive, spool: Path, count: int) -> None:
    spool.mkdir(exist_ok=True)
    for segno in range(count):
        path = spool / segment_name(1, segno)
        path.write_bytes(bytes([segno]) * 1024)
        archive.record(path)


def _offsite(catalog: Catalog, target: s3.S3Target, archive: WalArchive) -> None:
    """Copy every base backup and WAL segment off-site, as the off-site assets do."""
    for artifact in catalog.list(BASE_STORE):
        copy = s3.upload_artifact(artifact, target)
        offsite_versions.save(catalog, BASE_STORE, artifact.partition_key, copy.versions)
    assert not offsite_wal.copy_pending(archive, target).problems


def test_offsite_base_backups_are_pruned_by_the_postgres_policy_then_their_wal(
        offsite_env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings()
    catalog, target = settings.catalog(), s3.S3Target(settings.s3)
    archive = WalArchive(catalog)
    _segments(archive, tmp_path / "spool", 12)
    now = utcnow()
    _base(catalog, "old", 2, now - timedelta(days=30))
    _base(catalog, "failed", 4, now - timedelta(days=11), verified=False)  # off-site it verifies: the good copy
    _base(catalog, "week", 6, now - timedelta(days=3))
    _base(catalog, "new", 9, now - timedelta(days=1))
    _offsite(catalog, target, archive)
    remote = [segment_name(1, n) for n in range(12)]
    assert sorted(offsite_wal.remote_names(target)) == remote

    policy = RetentionPolicy(keep_days=7)
    dry = prune_pitr(catalog, policy, now=now, dry_run=True, offsite=target)
    assert dry.offsite_bases is not None and dry.offsite_bases.deleted_keys == ["old"]
    assert s3.list_offsite(BASE_STORE, target) == ["failed", "new", "old", "week"]  # a dry run deletes nothing

    result = prune_pitr(catalog, policy, now=now, offsite=target)
    assert result.offsite_bases is not None
    assert dict(result.offsite_bases.keep)["failed"] == [ONLY_VERIFIED]
    assert result.deleted_offsite_bases == ["old"] and not result.locked_offsite_bases
    assert s3.list_offsite(BASE_STORE, target) == ["failed", "new", "week"]
    assert list(object_sizes(target, target.key(BASE_STORE, "old", ""))) == []  # every object of the copy is gone
    assert [r.partition for r in read_deletions(catalog.root, BASE_STORE) if r.where == OFFSITE] == ["old"]
    # off-site WAL: what no kept copy needs (the kept "failed" starts at 4); locally the kept ones start at 6
    assert result.deleted_offsite == remote[:4] and not result.locked_offsite
    assert sorted(offsite_wal.remote_names(target)) == remote[4:]
    assert result.deleted_bases == ["old", "failed"]  # locally: "failed" never verified, and is safe off-site
    assert [s.segno for s in archive.segments()] == list(range(6, 12))

    # the next run: its local backup is gone, so the off-site copy goes by the policy, then its WAL
    again = prune_pitr(catalog, policy, now=now, offsite=target)
    assert again.deleted_offsite_bases == ["failed"] and again.deleted_offsite == remote[4:6]
    assert s3.list_offsite(BASE_STORE, target) == ["new", "week"]
    assert sorted(offsite_wal.remote_names(target)) == remote[6:]


def test_a_base_backup_not_yet_verified_offsite_is_kept_locally(offsite_env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings()
    catalog, target = settings.catalog(), s3.S3Target(settings.s3)
    now = utcnow()
    _base(catalog, "old", 2, now - timedelta(days=30))
    _base(catalog, "new", 9, now - timedelta(days=1))
    copy = s3.upload_artifact(catalog.require(BASE_STORE, "new"), target)  # only the new one is off-site
    assert copy.keys
    result = prune_pitr(catalog, RetentionPolicy(keep_days=7), now=now, offsite=target)
    assert result.deleted_bases == [] and "not yet verified off-site" in dict(result.bases.keep)["old"]
    assert result.deleted_offsite_bases == []


def test_a_locked_offsite_base_backup_stays_with_its_wal_and_says_until_when(
        offsite_env: dict[str, str], s3_server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_backups.offsite import lock
    from cb_backups_tests.test_object_lock import locked_bucket

    bucket = locked_bucket(s3_server, monkeypatch, tmp_path, "GOVERNANCE")
    settings = load_settings()
    catalog, target = settings.catalog(), s3.S3Target(settings.s3)
    archive = WalArchive(catalog)
    _segments(archive, tmp_path / "spool", 12)
    now = utcnow()
    _base(catalog, "old", 2, now - timedelta(days=30))
    _base(catalog, "mid", 5, now - timedelta(days=20))
    _base(catalog, "new", 9, now - timedelta(days=1))
    _offsite(catalog, target, archive)
    # a base backup is locked as long as the postgres policy may keep it (keep_last=28 daily ones) + 1 day
    new_manifest = target.key(BASE_STORE, "new", "manifest.json")
    recorded = offsite_versions.load(catalog, BASE_STORE, "new")
    assert recorded is not None
    held = lock.retention(target, new_manifest, recorded[new_manifest]).until
    assert held is not None and held >= now + timedelta(days=28) - timedelta(seconds=2)  # captured a day ago
    # The test's setup only (an administrator's bypass): the old copy's lock ends in a second.
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    old_versions = offsite_versions.load(catalog, BASE_STORE, "old")
    assert old_versions
    for key, version in old_versions.items():
        s3_server.client().put_object_retention(Bucket=bucket, Key=key, VersionId=version,
                                                BypassGovernanceRetention=True,
                                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon})
    wait_until(lambda: datetime.now(UTC) > soon + timedelta(seconds=1), 30, "the shortened lock to expire")
    mid_versions = offsite_versions.load(catalog, BASE_STORE, "mid")
    shutil.rmtree(catalog.require(BASE_STORE, "old").directory)  # pruned locally before: only its copy is left

    result = prune_pitr(catalog, RetentionPolicy(keep_days=7), offsite=target)
    assert result.deleted_offsite_bases == ["old"]
    assert list(result.locked_offsite_bases) == ["mid"] and result.locked_offsite_bases["mid"].startswith("20")
    assert s3.list_offsite(BASE_STORE, target) == ["mid", "new"]
    assert offsite_versions.load(catalog, BASE_STORE, "old") is None  # went with its objects
    assert offsite_versions.load(catalog, BASE_STORE, "mid") == mid_versions  # still read at those versions
    # the locked "mid" still counts: only WAL older than its start (5) was tried, and it is locked (7 + 1 days)
    assert sorted(result.locked_offsite) == [segment_name(1, n) for n in range(5)] and not result.deleted_offsite
    assert sorted(offsite_wal.remote_names(target)) == [segment_name(1, n) for n in range(12)]
