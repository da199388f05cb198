"""The weekly full system backup as a Dagster asset with its checks, job and schedule.
"""
import warnings
from datetime import UTC, timedelta

import dagster as dg

from cb_backups.core.catalog import utcnow
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Artifact
from cb_backups.core.partitions import parse_slot, weekly_sunday_0100
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES
from cb_backups.defs.backups.assets import OWNER, artifact_metadata, superseded_lines
from cb_backups.defs.liveness import store_pools, writer_tags
from cb_backups.defs.progress import per_store_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.full_system.backup import FULL_CHECKS, RETENTION_DAYS, evaluate_full, stores_in, write_full_backup
from cb_backups.stores.hooks import with_hooks

ASSET_KEY = dg.AssetKey("full_system_backup")


def _refuse_outside_retention(key: str) -> None:
    end = parse_slot(weekly_sunday_0100, key)
    age = utcnow() - end.astimezone(UTC)
    if age > timedelta(days=RETENTION_DAYS):
        raise dg.Failure(description=(
            f"full system slot {key} ended {age.days} days ago, beyond the {RETENTION_DAYS}-day retention; "
            "a backup taken now would be pruned immediately. Pick a slot within retention."))


def full_metadata(artifact: Artifact) -> dict[str, dg.MetadataValue]:
    markers = artifact.manifest.markers
    timing = markers.get("timing") or {}
    meta = artifact_metadata(artifact)
    meta.update({
        "stores": dg.MetadataValue.text(", ".join(stores_in(artifact))),
        "failed": dg.MetadataValue.json(markers.get("failed") or {}),
        "skipped": dg.MetadataValue.json(markers.get("skipped") or {}),
        "consistency": dg.MetadataValue.json(markers.get("consistency") or {}),
        "wall_seconds": dg.MetadataValue.float(float(timing.get("wall_seconds", 0.0))),
        "sum_of_store_seconds": dg.MetadataValue.float(float(timing.get("sum_seconds", 0.0))),
        "slowest_store": dg.MetadataValue.text(str(timing.get("slowest_store", ""))),
    })
    for name, run in (timing.get("runs") or {}).items():
        meta[f"seconds/{name}"] = dg.MetadataValue.float(float(run["seconds"]))
    return meta


@dg.asset(
    name="full_system_backup",
    partitions_def=weekly_sunday_0100,
    group_name="backups",
    kinds={"backup", *STORE_NAMES},
    owners=[OWNER],
    pool=FULL_SYSTEM,
    description="Weekly full system backup (Sunday 01:00): every configured store backed up at once into "
                f"one folder with one manifest (retention {RETENTION_DAYS} days).",
    metadata={"store": FULL_SYSTEM, "retention_days": RETENTION_DAYS},
    tags={"store": FULL_SYSTEM},
)
def full_system_backup(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
    key = context.partition_key
    _refuse_outside_retention(key)
    try:
        settings = backups.settings()
        configured = settings.configured_stores()
        if not configured:
            raise CbBackupsError("full system backup: no store is configured (set CB_POSTGRES_URL, "
                                 "CB_VALKEY_URL, ... or the CB_CONFIG file)")
        catalog = backups.catalog()
        catalog.sweep(FULL_SYSTEM)
        skipped = [n for n in STORE_NAMES if n not in configured]
        context.log.info(f"full system slot {key}: backing up {', '.join(configured)} at once"
                         + (f"; skipped (not configured): {', '.join(skipped)}" if skipped else ""))
        with store_pools(context, configured):  # the per-store jobs' pools: one writer per store
            artifact = write_full_backup(catalog, key, configured, backups.store, per_store_progress(context),
                                         fence=lambda run: with_hooks(backups.settings(), [FULL_SYSTEM, *configured],
                                                                      run, context.log.info))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    markers = artifact.manifest.markers
    for name, message in (markers.get("failed") or {}).items():
        context.log.error(f"full system slot {key}: {name} failed, kept the other stores: {message}")
    timing = markers["timing"]
    context.log.info(f"full system slot {key}: {artifact.manifest.total_bytes} bytes in {timing['wall_seconds']}s "
                     f"(stores took {timing['sum_seconds']}s together; slowest {timing['slowest_store']} "
                     f"{timing['slowest_seconds']}s)")
    metadata = full_metadata(artifact)
    replaced = superseded_lines(backups.catalog(), artifact)
    for line in replaced:
        context.log.warning(line)
    if replaced:
        metadata["superseded"] = dg.MetadataValue.text("; ".join(replaced))
    return dg.MaterializeResult(metadata=metadata)


with warnings.catch_warnings():
    # Per-partition check status is a preview in 1.13 (see checks.py).
    warnings.simplefilter("ignore", dg.PreviewWarning)
    _CHECK_SPECS = [dg.AssetCheckSpec(name, asset=ASSET_KEY, description=text, blocking=True,
                                      partitions_def=weekly_sunday_0100)
                    for name, text in FULL_CHECKS.items()]


@dg.multi_asset_check(specs=_CHECK_SPECS, name="full_system_backup_checks", pool=FULL_SYSTEM)
def full_system_checks(context: dg.AssetCheckExecutionContext, backups: BackupsResource):  # type: ignore[no-untyped-def]
    key = context.partition_key
    _, outcomes = evaluate_full(backups.catalog(), key, backups.store)
    for outcome in outcomes:
        if not outcome.passed:
            context.log.warning(f"full system slot {key}: {outcome.name} failed: {outcome.description}")
        yield dg.AssetCheckResult(asset_key=ASSET_KEY, check_name=outcome.name, passed=outcome.passed,
                                  description=outcome.description, metadata=outcome.metadata,
                                  severity=dg.AssetCheckSeverity.ERROR)


_CHECK_SELECTION = dg.AssetSelection.checks(*[dg.AssetCheckKey(ASSET_KEY, name) for name in FULL_CHECKS])

full_system_backup_job = dg.define_asset_job(
    "full_system_backup_job", selection=dg.AssetSelection.assets(ASSET_KEY).without_checks() | _CHECK_SELECTION,
    partitions_def=weekly_sunday_0100, tags={"store": FULL_SYSTEM, **writer_tags(STORE_NAMES)},
    description="Back up every configured store at once into one folder, and check it.")
full_system_verify_job = dg.define_asset_job(
    "full_system_verify_job", selection=_CHECK_SELECTION, partitions_def=weekly_sunday_0100,
    tags={"store": FULL_SYSTEM}, description="Run the full system backup's checks again for one slot.")
full_system_backup_schedule = dg.build_schedule_from_partitioned_job(
    full_system_backup_job, name="full_system_backup_schedule", default_status=dg.DefaultScheduleStatus.RUNNING)

defs = dg.Definitions(
    assets=[full_system_backup],
    asset_checks=[full_system_checks],
    jobs=[full_system_backup_job, full_system_verify_job],
    schedules=[full_system_backup_schedule],
)
