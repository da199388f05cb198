"""Nightly restore drills: a per-partition asset check `restore_drill` on each `<store>_backup`.

The drill restores the check's partition (or the newest backup) into a scratch target
(PostgreSQL `<db>__drill`, a throwaway valkey-server, Qdrant `<collection>__drill`,
OpenSearch `drill_*`, Neo4j a scratch server when configured, else the dump check only),
compares counts with the manifest, records the RTO in seconds and removes the scratch
target. At 05:00 (the runbook's nightly verification) `restore_drills_schedule` asks for
one run per configured store, on that store's newest backup.

Beside each drill, the per-partition check `tamper_evidence` runs `checks.tamper.cross_check`: the
backup on disk against the sha256 Dagster's event log recorded when it was written, and against its
off-site copy. A file rewritten together with its manifest and seal passes every local check but fails
this one (ERROR); a backup with no record in the event log (written outside Dagster) is a WARN.

Severity: CB_DRILL_SEVERITY=WARN|ERROR (default ERROR), read when the drill runs.
"""

import os
import warnings

import dagster as dg

from cb_backups.checks.slot import DRILL_CHECK
from cb_backups.checks.tamper import cross_check, recorded_backup
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.partitions import TIMEZONE
from cb_backups.core.specs import STORES, StoreSpec
from cb_backups.defs.liveness import writer_tags
from cb_backups.defs.resources import BackupsResource
from cb_backups.restore.drill import DrillResult, run_drill

SEVERITIES = {"WARN": dg.AssetCheckSeverity.WARN, "ERROR": dg.AssetCheckSeverity.ERROR}


def drill_severity() -> dg.AssetCheckSeverity:
    value = os.environ.get("CB_DRILL_SEVERITY", "ERROR").strip().upper()
    if value not in SEVERITIES:
        raise dg.Failure(description=f"invalid CB_DRILL_SEVERITY: {value!r} (allowed: WARN, ERROR)")
    return SEVERITIES[value]


def drill_check_key(spec: StoreSpec) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(spec.asset_key, DRILL_CHECK)


def drill_check(spec: StoreSpec) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # per-partition check status (preview in 1.13)
        check_spec = dg.AssetCheckSpec(
            DRILL_CHECK, asset=spec.asset_key, blocking=False, partitions_def=spec.partitions,
            description=f"Restore drill: the backup restores into a scratch {spec.title} target with the manifest's "
                        f"counts, within the RTO ({spec.rto}).")

    @dg.multi_asset_check(specs=[check_spec], name=f"{spec.name}_restore_drill", pool=f"store_{spec.name}")
    def _drill(context: dg.AssetCheckExecutionContext, backups: BackupsResource):  # type: ignore[no-untyped-def]
        severity = drill_severity()
        key = context.partition_key if context.has_partition_key else None
        try:
            result = run_drill(backups.settings(), spec.name, key,
                               progress=lambda message, done, total: None)
        except CbBackupsError as exc:
            result = DrillResult(spec.name, key, False, str(exc), "restore")
        (context.log.info if result.passed else context.log.warning)(f"{spec.name} drill: {result.description}")
        yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=DRILL_CHECK, passed=result.passed,
                                  description=result.description, metadata=result.metadata(), severity=severity)

    return _drill


TAMPER_CHECK = "tamper_evidence"


def tamper_check_key(spec: StoreSpec) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(spec.asset_key, TAMPER_CHECK)


def tamper_check(spec: StoreSpec) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # per-partition check status (preview in 1.13)
        check_spec = dg.AssetCheckSpec(
            TAMPER_CHECK, asset=spec.asset_key, blocking=False, partitions_def=spec.partitions,
            description="Tamper evidence: the backup's files and manifest on disk, the sha256 Dagster's event log "
                        "recorded when it was written, and the off-site copy's all agree.")

    @dg.multi_asset_check(specs=[check_spec], name=f"{spec.name}_tamper_evidence")
    def _tamper(context: dg.AssetCheckExecutionContext, backups: BackupsResource):  # type: ignore[no-untyped-def]
        catalog = backups.catalog()
        key = context.partition_key if context.has_partition_key else None
        if key is None:
            newest = catalog.list(spec.name)
            key = newest[-1].partition_key if newest else None
        severity = dg.AssetCheckSeverity.ERROR
        if key is None:
            problems = [f"no {spec.name} backup to check"]
        else:
            try:
                problems = cross_check(context.instance, catalog, spec.name, key)
            except CbBackupsError as exc:
                problems = [str(exc)]
            if problems and recorded_backup(context.instance, spec.name, key) is None:
                severity = dg.AssetCheckSeverity.WARN  # no second record: nothing to prove either way
        description = "; ".join(problems) or (f"{spec.name} {key}: disk, manifest, Dagster's record and the "
                                              "off-site copy agree")
        (context.log.warning if problems else context.log.info)(description)
        yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=TAMPER_CHECK, passed=not problems,
                                  description=description, severity=severity,
                                  metadata={"slot": key or "", "problems": len(problems)})

    return _tamper


drill_checks = [drill_check(spec) for spec in STORES]
tamper_checks = [tamper_check(spec) for spec in STORES]

restore_drills_job = dg.define_asset_job(
    "restore_drills_job",
    selection=dg.AssetSelection.checks(*[drill_check_key(spec) for spec in STORES],
                                       *[tamper_check_key(spec) for spec in STORES]),
    description="Restore drills: each store's backup into a scratch target, counts compared, RTO measured; "
                "and its tamper evidence (disk vs Dagster's record vs off-site). Launch one store's checks with "
                "its partition (the schedule does).",
)


def drill_requests(backups: BackupsResource, stores: list[str] | None = None) -> list[dg.RunRequest]:
    """One run per configured store, on its newest backup (or its newest slot, so a missing backup fails)."""
    settings = backups.settings()
    catalog = backups.catalog()
    requests = []
    for spec in STORES:
        if spec.name not in settings.configured_stores() or (stores and spec.name not in stores):
            continue
        newest = catalog.list(spec.name)
        key = newest[-1].partition_key if newest else spec.partitions.get_last_partition_key()
        if key is None:
            continue
        # The check keys differ in partitions definition, so the partition travels as the run tag.
        requests.append(dg.RunRequest(run_key=f"{spec.name}-{key}", asset_selection=[],
                                      asset_check_keys=[drill_check_key(spec), tamper_check_key(spec)],
                                      tags={"dagster/partition": key, "store": spec.name,
                                            **writer_tags([spec.name])}))
    return requests


@dg.schedule(name="restore_drills_schedule", job=restore_drills_job, cron_schedule="0 5 * * *",
             execution_timezone=TIMEZONE, default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Nightly verification at 05:00 (runbook crontab): a restore drill per store.")
def restore_drills_schedule(context: dg.ScheduleEvaluationContext, backups: BackupsResource):  # type: ignore[no-untyped-def]
    requests = drill_requests(backups)
    if not requests:
        return dg.SkipReason("no store is configured")
    return requests  # run keys dedupe within a tick; each tick is its own night


defs = dg.Definitions(asset_checks=[*drill_checks, *tamper_checks], jobs=[restore_drills_job],
                      schedules=[restore_drills_schedule])
