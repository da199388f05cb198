"""Retention of point-in-time recovery data: base backups by the postgres policy (locally and their off-site
copies), then the WAL none of the kept base backups needs (policy.plan_wal), locally and off-site.

Off-site, base-backup copies are planned like every store's (policy.plan, where=OFFSITE: never the newest
verified copy) and a copy is also kept while it is the only verified copy of its backup (the local one exists
but did not verify). Object Lock is respected: a locked copy stays whole and is reported with its retain-until
date, and it still counts as kept, so the off-site WAL it needs stays too.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from cb_backups.config.retention import LOCAL, OFFSITE, RetentionPolicy
from cb_backups.core.catalog import MANIFEST, Catalog, parse_iso, utcnow
from cb_backups.core.model import Artifact, Manifest
from cb_backups.offsite import s3
from cb_backups.offsite import versions as offsite_versions
from cb_backups.offsite import wal as offsite_wal
from cb_backups.retention.apply import apply_local, apply_offsite, local_backups
from cb_backups.retention.policy import BackupInfo, PrunePlan, WalBase, plan, plan_wal
from cb_backups.stores.pitr.archive import WalArchive
from cb_backups.stores.pitr.basebackup import BASE_STORE
from cb_backups.stores.pitr.wal import SEGMENT, parse_lsn, parse_segment, segment_of

ONLY_VERIFIED = "the only verified copy (the local one did not verify)"


@dataclass
class WalPrune:
    bases: PrunePlan
    deleted_bases: list[str] = field(default_factory=list)
    deleted_segments: list[str] = field(default_factory=list)
    deleted_offsite: list[str] = field(default_factory=list)
    locked_offsite: dict[str, str] = field(default_factory=dict)  # segment -> Object Lock retain-until
    offsite_bases: PrunePlan | None = None  # the plan over the base backups' off-site copies
    deleted_offsite_bases: list[str] = field(default_factory=list)
    locked_offsite_bases: dict[str, str] = field(default_factory=dict)  # base backup -> Object Lock retain-until


@dataclass(frozen=True)
class OffsiteCopy:
    """A base backup's complete off-site copy, as retention sees it."""

    info: BackupInfo
    base: WalBase
    manifest_sha256: str | None  # what the verification verified (None: not verified)


def wal_bases(catalog: Catalog) -> list[WalBase]:
    found = []
    for artifact in catalog.list(BASE_STORE):
        m = artifact.manifest.markers
        record = catalog.verification_of(artifact)
        found.append(WalBase(artifact.partition_key, int(m["timeline"]),
                             segment_of(parse_lsn(m["start_lsn"]), int(m["wal_segment_size"])),
                             bool(record and record.ok)))
    return found


def _base_of(key: str, manifest: Manifest, verified: bool) -> WalBase:
    m = manifest.markers
    return WalBase(key, int(m["timeline"]), segment_of(parse_lsn(m["start_lsn"]), int(m["wal_segment_size"])),
                   verified)


def offsite_copies(catalog: Catalog, target: s3.S3Target) -> list[OffsiteCopy]:
    """Every base backup with a complete off-site copy, verified against its own manifest (the local one when
    the slot is still on disk, at the version ids recorded at upload). Raises OffsiteError when S3 cannot be
    listed or a manifest cannot be read: nothing is then deleted on a guess."""
    found = []
    with tempfile.TemporaryDirectory(prefix="cb-pitr-retention-") as tmp:
        for key in s3.list_offsite(BASE_STORE, target):
            artifact = catalog.get(BASE_STORE, key) or _remote_artifact(target, key, Path(tmp) / key)
            if artifact is None:
                continue  # deleted meanwhile
            check = s3.verify_offsite(artifact, target, versions=offsite_versions.load(catalog, BASE_STORE, key))
            held = check.details.get("manifest_sha256") if check.ok else None
            found.append(OffsiteCopy(BackupInfo(key, parse_iso(artifact.manifest.captured_at), check.ok, check.ok),
                                     _base_of(key, artifact.manifest, check.ok), str(held) if held else None))
    return found


def _remote_artifact(target: s3.S3Target, key: str, into: Path) -> Artifact | None:
    url = target.url(target.key(BASE_STORE, key, MANIFEST))
    raw = s3.get_bytes(target, target.key(BASE_STORE, key, MANIFEST))
    if raw is None:
        return None
    try:
        manifest = Manifest.from_json(json.loads(raw))
        _base_of(key, manifest, False)
    except (ValueError, TypeError, KeyError) as exc:
        raise s3.OffsiteError(f"s3: the manifest of off-site base backup {key} ({url}) cannot be read ({exc}); "
                              "nothing off-site deleted") from None
    into.mkdir(parents=True, exist_ok=True)
    (into / MANIFEST).write_bytes(raw)
    return Artifact(into, manifest)


def offsite_bases(catalog: Catalog, target: s3.S3Target) -> list[WalBase]:
    """The base backups with a complete off-site copy, and whether that copy verified."""
    return [c.base for c in offsite_copies(catalog, target)]


def plan_offsite_bases(copies: list[OffsiteCopy], local_verified: dict[str, bool], policy: RetentionPolicy,
                       now: datetime) -> PrunePlan:
    """The postgres policy over the off-site copies; a verified copy whose local backup exists but did not
    verify is kept as well (deleting it would leave that backup with no good copy)."""
    made = plan([c.info for c in copies], policy, now, offsite_enabled=True, where=OFFSITE)
    only = {c.info.partition_key for c in copies if c.info.offsite_verified
            and local_verified.get(c.info.partition_key) is False}
    keep = [*made.keep, *((k, [ONLY_VERIFIED]) for k, _ in made.delete if k in only)]
    return replace(made, keep=sorted(keep, key=lambda kr: kr[0], reverse=True),
                   delete=[(k, r) for k, r in made.delete if k not in only])


def _prune_offsite_wal(catalog: Catalog, target: s3.S3Target, bases: list[WalBase], kept: list[str],
                       result: WalPrune, now: datetime | None, dry_run: bool) -> None:
    archive = WalArchive(catalog)
    names = {parse_segment(n, archive.seg_size): n for n in offsite_wal.remote_names(target) if SEGMENT.match(n)}
    doomed = [names[k] for k in plan_wal(list(names), bases, kept)]
    if dry_run:
        result.deleted_offsite = doomed
        return
    done = offsite_wal.delete(archive, target, doomed, now)
    result.deleted_offsite, result.locked_offsite = done.deleted, done.locked


def prune_pitr(catalog: Catalog, policy: RetentionPolicy, now: datetime | None = None, dry_run: bool = False,
               offsite: s3.S3Target | None = None, offsite_policy: RetentionPolicy | None = None) -> WalPrune:
    """Plan (and unless `dry_run`, apply) PITR retention: `policy` for the local base backups, `offsite_policy`
    (default: `policy`) for their off-site copies. With `offsite`, a local base backup whose copy is not verified
    off-site is kept, as every store's is."""
    now = now or utcnow()
    copies = offsite_copies(catalog, offsite) if offsite is not None else []  # S3 down: fail before deleting
    held = {c.info.partition_key: c.manifest_sha256 for c in copies if c.manifest_sha256}
    local = local_backups(catalog, BASE_STORE, *((
        {c.info.partition_key: bool(c.info.offsite_verified) for c in copies}, held) if offsite is not None else ()))
    bases_plan = plan(local, policy, now, offsite_enabled=offsite is not None, where=LOCAL)
    result = WalPrune(bases_plan)
    if offsite is not None:
        result.offsite_bases = plan_offsite_bases(copies, {b.partition_key: b.verified for b in local},
                                                  offsite_policy or policy, now)
    archive = WalArchive(catalog)
    # WAL first against the KEPT base backups, so a killed run never leaves a base backup without its WAL.
    local_bases = wal_bases(catalog)
    by_key = {(s.timeline, s.segno): s for s in archive.segments()}
    doomed = plan_wal(list(by_key), local_bases, bases_plan.kept_keys)
    for key in doomed:
        if not dry_run:
            archive.delete(by_key[key])
        result.deleted_segments.append(by_key[key].name)
    if offsite is not None and result.offsite_bases is not None:
        offsite_kept = result.offsite_bases.kept_keys
        if not dry_run:
            locked: list[str] = []
            records = apply_offsite(result.offsite_bases, offsite, BASE_STORE, catalog.root, now, locked)
            result.deleted_offsite_bases = [r.partition for r in records]
            for line in locked:  # "<slot>: locked until <date>"
                slot, _, until = line.partition(": locked until ")
                result.locked_offsite_bases[slot] = until
            offsite_kept = [*offsite_kept, *result.locked_offsite_bases]  # still there: its WAL stays too
        # the local base backups still protect their WAL off-site (they go below, after it)
        _prune_offsite_wal(catalog, offsite, [*local_bases, *(c.base for c in copies)],
                           [*bases_plan.kept_keys, *offsite_kept], result, now, dry_run)
    if not dry_run:
        result.deleted_bases = [r.partition for r in apply_local(bases_plan, catalog, BASE_STORE, now=now)]
    return result
