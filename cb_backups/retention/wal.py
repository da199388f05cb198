"""Retention of point-in-time recovery data: base backups by the postgres policy, then the WAL none of the
kept base backups needs (policy.plan_wal), locally and off-site.

Off-site, every base backup still in S3 counts as kept (off-site retention prunes those, not this), so no
segment an off-site base backup needs is deleted; a segment under Object Lock stays and is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from cb_backups.config.retention import LOCAL, RetentionPolicy
from cb_backups.core.catalog import MANIFEST, Catalog, utcnow
from cb_backups.offsite import s3
from cb_backups.offsite import wal as offsite_wal
from cb_backups.retention.apply import apply_local, local_backups
from cb_backups.retention.policy import PrunePlan, WalBase, plan, plan_wal
from cb_backups.stores.pitr.archive import WalArchive
from cb_backups.stores.pitr.basebackup import BASE_STORE
from cb_backups.stores.pitr.wal import SEGMENT, parse_lsn, parse_segment, segment_of


@dataclass
class WalPrune:
    bases: PrunePlan
    deleted_bases: list[str] = field(default_factory=list)
    deleted_segments: list[str] = field(default_factory=list)
    deleted_offsite: list[str] = field(default_factory=list)
    locked_offsite: dict[str, str] = field(default_factory=dict)  # segment -> Object Lock retain-until


def wal_bases(catalog: Catalog) -> list[WalBase]:
    found = []
    for artifact in catalog.list(BASE_STORE):
        m = artifact.manifest.markers
        record = catalog.verification_of(artifact)
        found.append(WalBase(artifact.partition_key, int(m["timeline"]),
                             segment_of(parse_lsn(m["start_lsn"]), int(m["wal_segment_size"])),
                             bool(record and record.ok)))
    return found


def offsite_bases(target: s3.S3Target) -> list[WalBase]:
    """The base backups with a complete off-site copy (copied only once verified)."""
    found = []
    for key in s3.list_offsite(BASE_STORE, target):
        raw = s3.get_bytes(target, target.key(BASE_STORE, key, MANIFEST))
        try:
            m = json.loads(raw or b"null")["markers"]
            found.append(WalBase(key, int(m["timeline"]), segment_of(parse_lsn(m["start_lsn"]),
                                                                     int(m["wal_segment_size"])), True))
        except (ValueError, TypeError, KeyError) as exc:
            raise s3.OffsiteError(f"s3: the manifest of off-site base backup {key} cannot be read ({exc}); no off-site "
                               "WAL deleted") from None
    return found


def _prune_offsite(catalog: Catalog, target: s3.S3Target, kept: list[str], result: WalPrune,
                   now: datetime | None, dry_run: bool) -> None:
    archive = WalArchive(catalog)
    names = {parse_segment(n, archive.seg_size): n for n in offsite_wal.remote_names(target) if SEGMENT.match(n)}
    remote = offsite_bases(target)
    bases = [*wal_bases(catalog), *remote]
    doomed = [names[k] for k in plan_wal(list(names), bases, [*kept, *(b.partition_key for b in remote)])]
    if dry_run:
        result.deleted_offsite = doomed
        return
    done = offsite_wal.delete(archive, target, doomed, now)
    result.deleted_offsite, result.locked_offsite = done.deleted, done.locked


def prune_pitr(catalog: Catalog, policy: RetentionPolicy, now: datetime | None = None, dry_run: bool = False,
               offsite: s3.S3Target | None = None) -> WalPrune:
    bases_plan = plan(local_backups(catalog, BASE_STORE), policy, now or utcnow(), offsite_enabled=False, where=LOCAL)
    result = WalPrune(bases_plan)
    archive = WalArchive(catalog)
    # WAL first against the KEPT base backups, so a killed run never leaves a base backup without its WAL.
    by_key = {(s.timeline, s.segno): s for s in archive.segments()}
    doomed = plan_wal(list(by_key), wal_bases(catalog), bases_plan.kept_keys)
    for key in doomed:
        if not dry_run:
            archive.delete(by_key[key])
        result.deleted_segments.append(by_key[key].name)
    if offsite is not None:  # before the local base backups go: those still protect their WAL off-site
        _prune_offsite(catalog, offsite, bases_plan.kept_keys, result, now, dry_run)
    if not dry_run:
        result.deleted_bases = [r.partition for r in apply_local(bases_plan, catalog, BASE_STORE, now=now)]
    return result
