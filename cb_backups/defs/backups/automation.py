"""Factories: a store's backup and verify jobs, its schedule on the runbook's crontab, and the freshness job."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from cb_backups.checks.slot import FRESHNESS_CHECK, SLOT_CHECKS
from cb_backups.core.partitions import TIMEZONE
from cb_backups.core.specs import StoreSpec
from cb_backups.defs.liveness import writer_tags


def slot_check_selection(spec: StoreSpec) -> dg.AssetSelection:
    return dg.AssetSelection.checks(*[dg.AssetCheckKey(spec.asset_key, name) for name in SLOT_CHECKS])


def backup_job(spec: StoreSpec) -> dg.UnresolvedAssetJobDefinition:
    selection = dg.AssetSelection.assets(spec.asset_key).without_checks() | slot_check_selection(spec)
    return dg.define_asset_job(f"{spec.name}_backup_job", selection=selection, partitions_def=spec.partitions,
                               tags={"store": spec.name, **writer_tags([spec.name])},
                               description=f"Back up {spec.title} for one slot and verify it.")


def verify_job(spec: StoreSpec) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(f"{spec.name}_verify_job", selection=slot_check_selection(spec),
                               partitions_def=spec.partitions, tags={"store": spec.name},
                               description=f"Run {spec.title}'s post-backup checks again for one slot.")


def backup_schedule(spec: StoreSpec, job: dg.UnresolvedAssetJobDefinition, configured: bool = True
                    ) -> dg.ScheduleDefinition:
    """On the store's partitions' cron (the runbook's crontab), running from the start when the store is
    configured; stopped when it is not (its runs could only fail), to be turned on in the UI once it is."""
    status = dg.DefaultScheduleStatus.RUNNING if configured else dg.DefaultScheduleStatus.STOPPED
    return dg.build_schedule_from_partitioned_job(job, name=f"{spec.name}_backup_schedule", default_status=status)


def freshness_job(specs: Sequence[StoreSpec]) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "freshness_checks_job",
        selection=dg.AssetSelection.checks(*[dg.AssetCheckKey(s.asset_key, FRESHNESS_CHECK) for s in specs]),
        description="Is every store's newest verified backup within its RPO?",
    )


def freshness_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name="freshness_checks_schedule", job=job, cron_schedule="15 * * * *",
                                 execution_timezone=TIMEZONE, default_status=dg.DefaultScheduleStatus.RUNNING)
