"""Retention of WAL: every segment a kept base backup needs stays; nothing newer than the newest verified base
backup is pruned (property-tested like the planner in test_retention.py), and applying it for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cb_backups.config.retention import RetentionPolicy
from cb_backups.core.catalog import Catalog
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import BackupOutput, FileRecord, Verification
from cb_backups.retention.policy import WalBase, plan_wal
from cb_backups.retention.wal import prune_pitr
from cb_backups.stores.pitr.archive import WalArchive
from cb_backups.stores.pitr.basebackup import BASE_FILE, BASE_STORE
from cb_backups.stores.pitr.wal import format_lsn, segment_name, segment_start

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
