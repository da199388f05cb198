"""Applying a prune plan: local and off-site deletions, and the deletion log.

A local backup folder is first renamed to a hidden `.deleting-*` name (atomic), an off-site
copy loses its manifest first; every deletion is one JSON line in
`<backup_dir>/_retention/deletions.jsonl` (for the auditor report).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cb_backups.config.retention import LOCAL, OFFSITE
from cb_backups.core.catalog import MANIFEST, Catalog, SlotBusy, iso, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError, ConfigError
from cb_backups.core.fileio import fsync_dir, private_dir, sha256_file
from cb_backups.core.model import Artifact
from cb_backups.retention.policy import BackupInfo, PrunePlan

if TYPE_CHECKING:
    from cb_backups.offsite.s3 import S3Target

log = logging.getLogger(__name__)


def local_backups(catalog: Catalog, store: str, offsite_verified: Mapping[str, bool] | None = None,
                  offsite_sha256: Mapping[str, str] | None = None) -> list[BackupInfo]:
    """What `plan` needs, read from the catalog (verification sidecars) and off-site check results.

    With `offsite_sha256` (the manifest sha256 each off-site verification verified), a copy of another
    manifest than the one on disk is stale and does not count as verified off-site."""
    found = []
    for artifact in catalog.list(store):
        record = catalog.verification_of(artifact)
        key = artifact.partition_key
        found.append(BackupInfo(
            partition_key=key,
            captured_at=parse_iso(artifact.manifest.captured_at),
            verified=bool(record and record.ok),
            offsite_verified=None if offsite_verified is None else offsite_verified.get(key),
            manifest_sha256=None if offsite_sha256 is None else sha256_file(artifact.path(MANIFEST))[0],
            offsite_sha256=None if offsite_sha256 is None else offsite_sha256.get(key),
            superseded=tuple(copy.name for copy in catalog.superseded(store, key)),
        ))
    return found


# --- applying --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionRecord:
    store: str
    partition: str
    where: str
    reason: str
    deleted_at: str


class RetentionIncomplete(CbBackupsError):
    """Some deletions failed; the rest were done and logged (`records`)."""

    def __init__(self, message: str, records: list[DeletionRecord]) -> None:
        super().__init__(message)
        self.records = records


def deletions_log(backup_dir: Path) -> Path:
    return Catalog(backup_dir).deletions_log


def _append_log(backup_dir: Path | None, records: Iterable[DeletionRecord]) -> None:
    records = list(records)
    if backup_dir is None or not records:
        return
    path = deletions_log(backup_dir)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_deletions(backup_dir: Path, store: str | None = None) -> list[DeletionRecord]:
    """The deletion log, oldest first (unreadable lines are skipped)."""
    path = deletions_log(backup_dir)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = DeletionRecord(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if store is None or record.store == store:
            records.append(record)
    return records


def _remove_backup_dir(directory: Path) -> None:
    """Hide the folder first (atomic rename to a dot-name the catalog never reads), then delete it."""
    hidden = directory.with_name(f".deleting-{directory.name}-{uuid.uuid4().hex[:8]}")
    os.rename(directory, hidden)
    fsync_dir(directory.parent)
    shutil.rmtree(hidden, ignore_errors=True)


def _check_plan(plan_: PrunePlan, where: str) -> None:
    if plan_.where != where:
        raise ConfigError("prune plan", plan_.where, f"a plan made with where='{where}'")


def apply_local(plan_: PrunePlan, catalog: Catalog, store: str,
                deleter: Callable[[Artifact], None] | None = None, now: datetime | None = None
                ) -> list[DeletionRecord]:
    """Delete the plan's local backups (store cleanup via `deleter` first), log each deletion.

    A slot being written by another process is skipped (it is retried next run). A
    failing `deleter` leaves that backup in place; the others are still deleted and
    `RetentionIncomplete` is raised at the end.
    """
    _check_plan(plan_, LOCAL)
    stamp = iso(now or utcnow())
    base = catalog.store_dir(store)
    if base.is_dir():  # leftovers of a run killed mid-delete
        for child in base.iterdir():
            if child.name.startswith(".deleting-"):
                shutil.rmtree(child, ignore_errors=True)
    records: list[DeletionRecord] = []
    failures: list[str] = []
    for key, reason in plan_.delete:
        try:
            with catalog.slot_lock(store, key):
                artifact = catalog.get(store, key)
                if artifact is None:
                    continue
                if deleter is not None:
                    deleter(artifact)
                _remove_backup_dir(artifact.directory)
        except SlotBusy:
            log.info("retention: %s %s is being written; not deleted this time", store, key)
            continue
        except Exception as exc:
            failures.append(f"{key}: {exc}")
            continue
        record = DeletionRecord(store, key, LOCAL, reason, stamp)
        _append_log(catalog.root, [record])
        records.append(record)
        log.info("retention: deleted local %s %s (%s)", store, key, reason)
    records += _delete_superseded(plan_, catalog, store, deleter, stamp, failures)
    if failures:
        raise RetentionIncomplete(f"{store}: {len(failures)} local deletion(s) failed: " + "; ".join(failures),
                                  records)
    return records


def _delete_superseded(plan_: PrunePlan, catalog: Catalog, store: str, deleter: Callable[[Artifact], None] | None,
                       stamp: str, failures: list[str]) -> list[DeletionRecord]:
    """The plan's superseded copies to delete (store cleanup via `deleter` first: each backup's store-side
    objects, e.g. an OpenSearch snapshot, are its own), each logged."""
    records = []
    for key, copy, reason in plan_.superseded_delete:
        try:
            with catalog.slot_lock(store, key):
                found = catalog.load(catalog.superseded_dir(store, key) / copy)
                if found is None:
                    continue
                if deleter is not None:
                    deleter(found)
                _remove_backup_dir(found.directory)
        except SlotBusy:
            log.info("retention: %s %s is being written; its superseded copy %s is not deleted this time",
                     store, key, copy)
            continue
        except Exception as exc:
            failures.append(f"{key} superseded copy {copy}: {exc}")
            continue
        record = DeletionRecord(store, key, LOCAL, f"superseded copy {copy}: {reason}", stamp)
        _append_log(catalog.root, [record])
        records.append(record)
        log.info("retention: deleted %s %s superseded copy %s (%s)", store, key, copy, reason)
    return records


def apply_offsite(plan_: PrunePlan, target: S3Target, store: str, backup_dir: Path | None = None,
                  now: datetime | None = None, locked: list[str] | None = None) -> list[DeletionRecord]:
    """Delete the plan's off-site copies (manifest first), log each deletion under `backup_dir`; then the
    shared repository blobs that no remaining slot lists (a blob a kept slot lists is never deleted).

    With Object Lock configured only versions whose lock has expired are deleted; a slot with versions
    still locked is not logged as deleted but reported in `locked` ("<slot>: locked until <date>"). The
    slot's recorded version ids (offsite/versions.py) go with the versions really deleted."""
    from cb_backups.offsite import versions
    from cb_backups.offsite.lock import lock_of
    from cb_backups.offsite.s3 import delete_offsite, delete_offsite_expired, delete_unreferenced_blobs

    _check_plan(plan_, OFFSITE)
    stamp = iso(now or utcnow())
    records: list[DeletionRecord] = []
    failures: list[str] = []
    for key, reason in plan_.delete:
        try:
            if lock_of(target) is not None:
                result = delete_offsite_expired(store, key, target, now)
                deleted = result.deleted if result.complete else []
                if backup_dir is not None and result.deleted:
                    versions.deleted(Catalog(backup_dir), store, key, result.deleted, result.complete)
                if not result.complete:
                    assert result.locked_until is not None
                    message = f"{key}: locked until {iso(result.locked_until)}"
                    log.info("retention: off-site %s %s", store, message)
                    if locked is not None:
                        locked.append(message)
            else:
                deleted = delete_offsite(store, key, target)
                if backup_dir is not None and deleted:
                    versions.forget(Catalog(backup_dir), store, key)
        except CbBackupsError as exc:
            failures.append(f"{key}: {exc}")
            continue
        if not deleted:
            continue
        record = DeletionRecord(store, key, OFFSITE, reason, stamp)
        _append_log(backup_dir, [record])
        records.append(record)
        log.info("retention: deleted off-site %s %s (%s)", store, key, reason)
    if records:
        try:
            blobs = delete_unreferenced_blobs(store, target)
            if blobs:
                log.info("retention: deleted %d off-site %s blob(s) no kept slot lists", len(blobs), store)
        except CbBackupsError as exc:
            failures.append(f"shared blobs: {exc}")
    if failures:
        raise RetentionIncomplete(f"{store}: {len(failures)} off-site deletion(s) failed: " + "; ".join(failures),
                                  records)
    return records
