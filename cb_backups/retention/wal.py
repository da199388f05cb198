"""Retention of point-in-time recovery data: base backups by the postgres policy, then the WAL none of the
kept base backups needs (policy.plan_wal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cb_backups.config.retention import LOCAL, RetentionPolicy
from cb_backups.core.catalog import Catalog, utcnow
from cb_backups.retention.apply import apply_local, local_backups
from cb_backups.retention.policy import PrunePlan, WalBase, plan, plan_wal
from cb_backups.stores.pitr.archive import WalArchive
from cb_backups.stores.pitr.basebackup import BASE_STORE
from cb_backups.stores.pitr.wal import parse_lsn, segment_of


@dataclass
class WalPrune:
    bases: PrunePlan
    deleted_bases: list[str] = field(default_factory=list)
    deleted_segments: list[str] = field(default_factory=list)


def wal_bases(catalog: Catalog) -> list[WalBase]:
    found = []
    for artifact in catalog.list(BASE_STORE):
        m = artifact.manifest.markers
        record = catalog.verification_of(artifact)
        found.append(WalBase(artifact.partition_key, int(m["timeline"]),
                             segment_of(parse_lsn(m["start_lsn"]), int(m["wal_segment_size"])),
                             bool(record and record.ok)))
    return found


def prune_pitr(catalog: Catalog, policy: RetentionPolicy, now: datetime | None = None, dry_run: bool = False
               ) -> WalPrune:
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
    if not dry_run:
        result.deleted_bases = [r.partition for r in apply_local(bases_plan, catalog, BASE_STORE, now=now)]
    return result
