"""Daily retention as a Dagster job: plan per store (local and off-site), apply, record every deletion.

For every store with backups (the five stores, and `full_system` when it has any):
  1. BackupInfo from the catalog: `verified` is the catalog's verification record; with S3
     enabled, `offsite_verified` is `verify_offsite` of the slot's copy (manifest identical, every
     object present with the manifest's size and sha256 metadata), and the manifest S3 holds must be
     the one on disk: a copy of an older backup of the slot (stale) is not verified.
  2. `plan_retention` with the store's policy (defaults in retention.py, overrides from the
     `retention:` section of the CB_CONFIG file). The planner never deletes the newest verified
     backup, and never a local backup whose off-site copy is not verified while S3 is enabled.
  3. Apply locally (OpenSearch: the snapshot is deleted from its repository through the API first),
     then off-site with the off-site policy over the copies in S3.
Every deletion is appended to `<backup_dir>/_retention/deletions.jsonl` (the durable record) and
recorded in Dagster as an AssetObservation of the slot (`<store>_backup` for local,
`<store>_offsite` for S3) with the reason, so the auditor report can show it. With S3 unreachable
nothing local is deleted (no copy counts as verified) and the run fails, naming the cause.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from cb_backups.config.retention import LOCAL, OFFSITE, policies_from_config
from cb_backups.config.settings import Settings
from cb_backups.core.catalog import Catalog, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Artifact
from cb_backups.core.partitions import TIMEZONE
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES, STORES
from cb_backups.defs.offsite import BY_STORE, remote_artifact
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite import s3 as offsite
from cb_backups.restore.safety import prune_replaced_data
from cb_backups.retention.apply import DeletionRecord, RetentionIncomplete, apply_local, apply_offsite, local_backups
from cb_backups.retention.policy import BackupInfo, PrunePlan
from cb_backups.retention.policy import plan as plan_retention
from cb_backups.stores.base import Store
from cb_backups.stores.registry import open_store

RETENTION_CRON = "30 5 * * *"  # daily


@dataclass
class StoreRetention:
    """What retention decided and did for one store."""

    store: str
    local: PrunePlan | None = None
    offsite: PrunePlan | None = None
    deleted: list[DeletionRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store,
                "local": self.local.to_json() if self.local else None,
                "offsite": self.offsite.to_json() if self.offsite else None,
                "deleted": [r.__dict__ for r in self.deleted],
                "errors": self.errors}


def retention_stores(catalog: Catalog) -> list[str]:
    names = [s.name for s in STORES]
    if FULL_SYSTEM in catalog.stores():
        names.append(FULL_SYSTEM)
    return names


def local_deleter(store: str, settings: Settings) -> Callable[[Artifact], None] | None:
    """The adapter's `before_delete`, run before a local backup folder is removed (e.g. OpenSearch deletes the
    backup's snapshot from its repository). The adapter is opened at the first deletion: a ConfigError (the
    store is no longer configured) keeps that backup and names the cause."""
    if store not in STORE_NAMES:
        return None  # the full system backup keeps everything in its folder
    opened: list[Store] = []

    def before_delete(artifact: Artifact) -> None:
        if not opened:
            opened.append(open_store(store, settings))
        opened[0].before_delete(artifact)

    return before_delete


def offsite_infos(catalog: Catalog, store: str, target: offsite.S3Target
                  ) -> tuple[dict[str, bool], list[BackupInfo], dict[str, str]]:
    """(off-site verified per local slot, BackupInfo of every complete copy in S3, the manifest sha256 each
    local slot's copy holds -- a copy of an older manifest is stale and never counts as verified)."""
    copies = offsite.list_offsite(store, target)  # raises OffsiteError when S3 is unreachable: fail fast
    local = {a.partition_key: a for a in catalog.list(store)}
    verified: dict[str, bool] = {}
    held: dict[str, str] = {}
    for key, artifact in local.items():
        result = offsite.verify_offsite(artifact, target) if key in copies else None
        verified[key] = result is not None and result.ok
        if result is not None and result.details.get("manifest_sha256"):
            held[key] = str(result.details["manifest_sha256"])
    remote: list[BackupInfo] = []
    with tempfile.TemporaryDirectory(prefix="cb-retention-") as tmp:
        for key in copies:
            if key in local:
                artifact, ok = local[key], verified[key]
            else:
                found = remote_artifact(target, store, key, Path(tmp) / key)
                if found is None:
                    continue
                artifact, ok = found, offsite.verify_offsite(found, target).ok
            remote.append(BackupInfo(key, parse_iso(artifact.manifest.captured_at), ok, ok))
    return verified, remote, held


def run_retention(settings: Settings, stores: list[str] | None = None, dry_run: bool = False,
                  now: datetime | None = None) -> list[StoreRetention]:
    """Plan (and unless `dry_run`, apply) retention for `stores` (default: all with backups)."""
    now = now or utcnow()
    policies = policies_from_config(settings.raw)
    catalog = settings.catalog()
    target = offsite.S3Target(settings.s3) if settings.s3.enabled else None
    tz = ZoneInfo(settings.timezone)
    results = []
    for store in stores or retention_stores(catalog):
        outcome = StoreRetention(store)
        results.append(outcome)
        remote: list[BackupInfo] | None = None
        offsite_ok: dict[str, bool] | None = None
        held: dict[str, str] | None = None
        if target is not None:
            try:
                offsite_ok, remote, held = offsite_infos(catalog, store, target)
            except CbBackupsError as exc:
                # every local backup then counts as not verified off-site: nothing local is deleted
                outcome.errors.append(f"{store}: off-site copies could not be listed: {exc}")
                offsite_ok, held = {}, {}
        backups = local_backups(catalog, store, offsite_ok, held)
        outcome.local = plan_retention(backups, policies.for_store(store, LOCAL), now, target is not None,
                                       LOCAL, tz)
        if remote is not None:
            outcome.offsite = plan_retention(remote, policies.for_store(store, OFFSITE), now, True, OFFSITE, tz)
        if dry_run:
            continue
        try:
            outcome.deleted += apply_local(outcome.local, catalog, store, local_deleter(store, settings),
                                                     now)
        except RetentionIncomplete as exc:
            outcome.deleted += exc.records
            outcome.errors.append(str(exc))
        if outcome.offsite is not None and target is not None:
            try:
                outcome.deleted += apply_offsite(outcome.offsite, target, store, catalog.root, now)
            except RetentionIncomplete as exc:
                outcome.deleted += exc.records
                outcome.errors.append(str(exc))
    return results


def observed_key(record: DeletionRecord) -> dg.AssetKey:
    if record.where == OFFSITE:
        return BY_STORE[record.store].key if record.store in BY_STORE else dg.AssetKey(f"{record.store}_offsite")
    return dg.AssetKey(f"{record.store}_backup")


class RetentionConfig(dg.Config):
    stores: list[str] | None = None  # None or empty: every store with backups
    dry_run: bool = False  # plan only; nothing is deleted


@dg.op(description="Plan and apply retention for every store, locally and off-site; record each deletion.",
       tags={"kind": "retention"})
def retention_op(context: dg.OpExecutionContext, config: RetentionConfig,
                 backups: BackupsResource) -> dg.Output:
    try:
        results = run_retention(backups.settings(), config.stores or None, config.dry_run)
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    summary: dict[str, Any] = {}
    for outcome in results:
        for record in outcome.deleted:
            context.log.info(f"retention: deleted {record.where} {record.store} {record.partition}: {record.reason}")
            context.log_event(dg.AssetObservation(
                asset_key=observed_key(record), partition=record.partition,
                metadata={"retention": "deleted", "where": record.where, "reason": record.reason,
                          "deleted_at": record.deleted_at}))
        for where, plan_ in ((LOCAL, outcome.local), (OFFSITE, outcome.offsite)):
            if plan_ is not None:
                summary[f"{outcome.store}/{where}/kept"] = len(plan_.keep)
                summary[f"{outcome.store}/{where}/" + ("to_delete" if config.dry_run else "deleted")] = (
                    len(plan_.delete) if config.dry_run else sum(1 for r in outcome.deleted if r.where == where))
        for error in outcome.errors:
            context.log.error(error)
    for line in [] if config.dry_run else prune_replaced_data(backups.settings(), config.stores or None):
        context.log.info(f"retention: {line}")  # what in-place restores kept aside, dropped after the safety period
    plans = [r.to_json() for r in results]
    metadata = {"dry_run": dg.MetadataValue.bool(config.dry_run), "plans": dg.MetadataValue.json(plans),
                **{k: dg.MetadataValue.int(v) for k, v in summary.items()}}
    errors = [e for r in results for e in r.errors]
    if errors:
        raise dg.Failure(description="; ".join(errors), metadata=metadata)
    return dg.Output(plans, metadata=metadata)


@dg.job(name="retention_job", description="Daily retention: prune local and off-site backups by policy.",
        tags={"kind": "retention"})
def retention_job() -> None:
    retention_op()


retention_schedule = dg.ScheduleDefinition(name="retention_schedule", job=retention_job,
                                           cron_schedule=RETENTION_CRON, execution_timezone=TIMEZONE,
                                           default_status=dg.DefaultScheduleStatus.RUNNING)

defs = dg.Definitions(jobs=[retention_job], schedules=[retention_schedule])
