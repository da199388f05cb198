"""PostgreSQL point-in-time recovery in Dagster: `postgres_wal` (hourly: the segments completed in the hour,
with their checks, the RPO check and the slot's retained WAL) and `postgres_base_backup` (daily
pg_basebackup, checked by pg_verifybackup and by the WAL's continuity from its start LSN).

The WAL itself is received by the `cb-backups wal-receive` service, not by a run: these assets record and
check what it archived. `postgres_wal_offsite` (hourly, after `postgres_wal`) copies every archived segment
not yet verified off-site (offsite/wal.py); its checks per hour: every segment of the hour off-site and
verified, and the age of the newest segment verified off-site. Base backups are copied off-site by the
ordinary off-site automation (defs/offsite.py SOURCES).
"""


import warnings
from collections.abc import Iterator

import dagster as dg

from cb_backups.config.settings import load_settings
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.partitions import DAILY_FMT, PARTITIONS_START, SIX_HOURLY_FMT, TIMEZONE, slots
from cb_backups.defs.liveness import writer_tags
from cb_backups.defs.progress import dagster_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite import s3 as offsite_s3
from cb_backups.offsite import wal as offsite_wal
from cb_backups.restore.pitr import pitr_settings
from cb_backups.stores.pitr import basebackup
from cb_backups.stores.pitr.archive import WAL_STORE, WalArchive, pitr_catalog
from cb_backups.stores.pitr.health import (
    BASE_CHECKS,
    RETAINED_CHECK,
    RPO_CHECK,
    WAL_CHECKS,
    Outcome,
    base_outcomes,
    hour_outcomes,
    in_window,
    retained_outcome,
    rpo_outcome,
)
from cb_backups.stores.pitr.server import STORE, Server

WAL_KEY = dg.AssetKey(WAL_STORE)
WAL_OFFSITE_KEY = dg.AssetKey(f"{WAL_STORE}_offsite")
WAL_OFFSITE_CHECKS = {
    "segments_offsite": "Every WAL segment completed in the hour is copied off-site and verified (size + sha256).",
    "offsite_freshness": "The newest WAL segment verified off-site is younger than postgres_wal.offsite_lag_seconds "
                         "(2 h: an hourly copy plus its lag).",
}
BASE_KEY = dg.AssetKey(basebackup.BASE_STORE)
WAL_PARTITIONS = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START[:10] + "-00:00", timezone=TIMEZONE,
                                               fmt=SIX_HOURLY_FMT)
BASE_PARTITIONS = slots("30 0 * * *", DAILY_FMT)  # daily, 00:30


def _server(backups: BackupsResource) -> tuple[Server, WalArchive]:
    settings = backups.settings()
    pitr = pitr_settings(settings)
    return Server(settings.store(STORE), pitr), WalArchive(settings.catalog(), level=pitr.compression_level)


def _s3_at_load() -> bool:
    try:
        return load_settings().s3.enabled
    except CbBackupsError:
        return False


def _result(key: dg.AssetKey, outcome: Outcome, warn: bool = False) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=key, check_name=outcome.name, passed=outcome.passed,
                               description=outcome.description, metadata=outcome.metadata,
                               severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR)


@dg.asset(name=WAL_STORE, partitions_def=WAL_PARTITIONS, group_name="backups", kinds={"postgres"},
          owners=["team:platform"],
          description="PostgreSQL WAL segments completed in one hour, archived by `cb-backups wal-receive` "
                      "(point-in-time recovery).", tags={"store": STORE})
def postgres_wal(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    try:
        _, archive = _server(backups)
        found = in_window(archive, window.start, window.end)
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"{len(found)} WAL segment(s) completed in {context.partition_key}")
    return dg.MaterializeResult(metadata={
        "segments": len(found), "bytes": sum(s.bytes for s in found),
        "sha256": dg.MetadataValue.json({s.name: s.sha256 for s in found}),
        "path": dg.MetadataValue.path(str(archive.segments_dir))})


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)  # per-partition check status is a preview in 1.13
    _WAL_SPECS = [dg.AssetCheckSpec(n, asset=WAL_KEY, description=d, partitions_def=WAL_PARTITIONS)
                  for n, d in WAL_CHECKS.items()]
    _BASE_SPECS = [dg.AssetCheckSpec(n, asset=BASE_KEY, description=d, blocking=True, partitions_def=BASE_PARTITIONS)
                   for n, d in BASE_CHECKS.items()]


@dg.multi_asset_check(specs=_WAL_SPECS, name="postgres_wal_checks")
def postgres_wal_checks(context: dg.AssetCheckExecutionContext, backups: BackupsResource
                        ) -> Iterator[dg.AssetCheckResult]:
    start = WAL_PARTITIONS.time_window_for_partition_key(context.partition_key)
    try:
        server, archive = _server(backups)
        outcomes = hour_outcomes(server, archive, start.start, start.end)
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    for outcome in outcomes:
        if not outcome.passed:
            context.log.warning(f"postgres_wal {context.partition_key}: {outcome.name}: {outcome.description}")
        yield _result(WAL_KEY, outcome)


@dg.asset_check(asset=WAL_KEY, name=RPO_CHECK, description="The newest received WAL is younger than "
                "postgres_wal.rpo_seconds (60 s): the receiver is streaming.")
def postgres_wal_rpo(backups: BackupsResource) -> dg.AssetCheckResult:
    server, archive = _server(backups)
    return _result(WAL_KEY, rpo_outcome(server, archive))


@dg.asset_check(asset=WAL_KEY, name=RETAINED_CHECK, description="The replication slot holds less WAL on the "
                "server than postgres_wal.max_retained_mb (a dead receiver otherwise fills its disk).")
def postgres_wal_retained(backups: BackupsResource) -> dg.AssetCheckResult:
    server, _ = _server(backups)
    return _result(WAL_KEY, retained_outcome(server), warn=True)


def _target(backups: BackupsResource) -> offsite_s3.S3Target:
    settings = backups.settings()
    if not settings.s3.enabled:
        raise dg.Failure(description="off-site copies are not configured, so the WAL was NOT copied off-site: set "
                                     "CB_S3_BUCKET (and CB_S3_ENDPOINT_URL for a non-AWS server) or the 's3:' section")
    return offsite_s3.S3Target(settings.s3)


@dg.asset(name=WAL_OFFSITE_KEY.path[-1], partitions_def=WAL_PARTITIONS, group_name="offsite", kinds={"s3"},
          owners=["team:platform"], deps=[WAL_KEY], tags={"store": STORE},
          description="Off-site copies of the archived WAL: every segment not yet verified off-site (its stored "
                      "file, then its record; Object Lock and encryption as configured).")
def postgres_wal_offsite(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
    target = _target(backups)
    try:
        _, archive = _server(backups)
        result = offsite_wal.copy_pending(archive, target)  # everything not off-site yet: the lag stays < 1 h
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"copied {len(result.copied)} WAL file(s) off-site ({result.bytes} bytes); "
                     f"{result.already} already there")
    if result.problems:  # the copied ones are recorded; the next run retries the rest
        raise dg.Failure(description=f"{len(result.problems)} WAL file(s) not copied off-site: "
                                     + "; ".join(result.problems[:5]))
    return dg.MaterializeResult(metadata={"copied": len(result.copied), "already_offsite": result.already,
                                          "bytes": result.bytes,
                                          "url": dg.MetadataValue.url(target.url(offsite_wal.key_of(target, "")))})


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    _OFFSITE_SPECS = [dg.AssetCheckSpec(n, asset=WAL_OFFSITE_KEY, description=d, partitions_def=WAL_PARTITIONS)
                      for n, d in WAL_OFFSITE_CHECKS.items()]


@dg.multi_asset_check(specs=_OFFSITE_SPECS, name="postgres_wal_offsite_checks")
def postgres_wal_offsite_checks(context: dg.AssetCheckExecutionContext, backups: BackupsResource
                                ) -> Iterator[dg.AssetCheckResult]:
    window = WAL_PARTITIONS.time_window_for_partition_key(context.partition_key)
    target = _target(backups)
    try:
        server, archive = _server(backups)
        outcomes = offsite_wal.outcomes(archive, target, window.start, window.end, server.pitr.offsite_lag_seconds)
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    for outcome in outcomes:
        yield _result(WAL_OFFSITE_KEY, outcome)


@dg.asset(name=basebackup.BASE_STORE, partitions_def=BASE_PARTITIONS, group_name="backups", kinds={"postgres"},
          owners=["team:platform"],
          pool=f"store_{STORE}", tags={"store": STORE},
          description="PostgreSQL base backup (pg_basebackup, tar + backup manifest, zstd) for point-in-time "
                      "recovery; the six-hourly logical dumps stay beside it.")
def postgres_base_backup(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
    try:
        server, _ = _server(backups)
        catalog = pitr_catalog(backups.catalog())  # encrypted exactly when the postgres dumps are
        catalog.sweep(basebackup.BASE_STORE)
        artifact = catalog.write(basebackup.BASE_STORE, context.partition_key,
                                 lambda into: basebackup.take(server, into, dagster_progress(context)))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    m = artifact.manifest
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(artifact.directory)), "bytes": m.total_bytes,
        "duration_seconds": m.duration_seconds, "start_lsn": m.markers["start_lsn"],
        "stop_lsn": m.markers["stop_lsn"], "timeline": m.markers["timeline"],
        "sha256": dg.MetadataValue.json({f.name: f.sha256 for f in m.files})})


@dg.multi_asset_check(specs=_BASE_SPECS, name="postgres_base_backup_checks", pool=f"store_{STORE}")
def postgres_base_backup_checks(context: dg.AssetCheckExecutionContext, backups: BackupsResource
                                ) -> Iterator[dg.AssetCheckResult]:
    from cb_backups.core.model import Verification

    try:
        server, archive = _server(backups)
        catalog = pitr_catalog(backups.catalog())
        artifact = catalog.get(basebackup.BASE_STORE, context.partition_key)
        outcomes, ok = base_outcomes(server, archive, artifact, catalog.root)
        if artifact is not None:  # point-in-time restores choose among verified base backups
            catalog.record_verification(artifact, Verification(ok, [o.description for o in outcomes[:1] if not ok]))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    for outcome in outcomes:
        yield _result(BASE_KEY, outcome)


wal_job = dg.define_asset_job("postgres_wal_job", selection=dg.AssetSelection.assets(WAL_KEY).without_checks()
                              | dg.AssetSelection.checks_for_assets(WAL_KEY) - dg.AssetSelection.checks(
                                  dg.AssetCheckKey(WAL_KEY, RPO_CHECK), dg.AssetCheckKey(WAL_KEY, RETAINED_CHECK)),
                              partitions_def=WAL_PARTITIONS, tags={"store": STORE},
                              description="Record and check the WAL segments completed in one hour.")
base_backup_job = dg.define_asset_job("postgres_base_backup_job", selection=dg.AssetSelection.assets(BASE_KEY),
                                      partitions_def=BASE_PARTITIONS,
                                      tags={"store": STORE, **writer_tags([STORE])},  # reads the live server
                                      description="Take a PostgreSQL base backup and verify it.")
wal_offsite_job = dg.define_asset_job(
    "postgres_wal_offsite_job", selection=dg.AssetSelection.assets(WAL_OFFSITE_KEY), partitions_def=WAL_PARTITIONS,
    tags={"store": STORE}, description="Copy the archived WAL off-site and check the hour's segments are there.")
rpo_job = dg.define_asset_job("postgres_wal_rpo_job", selection=dg.AssetSelection.checks(
    dg.AssetCheckKey(WAL_KEY, RPO_CHECK), dg.AssetCheckKey(WAL_KEY, RETAINED_CHECK)),
    description="Is the newest received WAL within the RPO, and the slot's retained WAL small?")

wal_schedule = dg.build_schedule_from_partitioned_job(wal_job, name="postgres_wal_schedule", minute_of_hour=5,
                                                      default_status=dg.DefaultScheduleStatus.RUNNING)
base_backup_schedule = dg.build_schedule_from_partitioned_job(base_backup_job, name="postgres_base_backup_schedule",
                                                              default_status=dg.DefaultScheduleStatus.RUNNING)
# Every 5 minutes: a down receiver is seen within minutes, without a run (and a webhook message) a minute.
# Stopped when the code location loads without S3 (as offsite_deep_subset_schedule): start it in the UI.
wal_offsite_schedule = dg.build_schedule_from_partitioned_job(
    wal_offsite_job, name="postgres_wal_offsite_schedule", minute_of_hour=10,
    default_status=dg.DefaultScheduleStatus.RUNNING if _s3_at_load() else dg.DefaultScheduleStatus.STOPPED)
rpo_schedule = dg.ScheduleDefinition(name="postgres_wal_rpo_schedule", job=rpo_job, cron_schedule="*/5 * * * *",
                                     execution_timezone=TIMEZONE, default_status=dg.DefaultScheduleStatus.RUNNING)


@dg.op(name="postgres_wal_retention_op", tags={"store": STORE}, pool=f"store_{STORE}",
       description="Delete base backups beyond the postgres retention policy, then the WAL no kept one needs.")
def _wal_retention(context: dg.OpExecutionContext, backups: BackupsResource) -> dict:
    from cb_backups.config.retention import OFFSITE, policies_from_config
    from cb_backups.retention.wal import prune_pitr

    settings = backups.settings()
    target = offsite_s3.S3Target(settings.s3) if settings.s3.enabled else None
    policies = policies_from_config(settings.raw)
    try:
        result = prune_pitr(settings.catalog(), policies.for_store(STORE), offsite=target,
                            offsite_policy=policies.for_store(STORE, OFFSITE))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"deleted base backups {result.deleted_bases or 'none'}; "
                     f"{len(result.deleted_segments)} WAL segment(s) no kept base backup needs; off-site "
                     f"{len(result.deleted_offsite)} deleted")
    for name, until in sorted(result.locked_offsite.items()):
        context.log.info(f"kept off-site WAL segment {name}: Object Lock until {until}")
    context.log.info(f"deleted off-site base backups {result.deleted_offsite_bases or 'none'}")
    for name, until in sorted(result.locked_offsite_bases.items()):
        context.log.info(f"kept off-site base backup {name}: Object Lock until {until}")
    return {"deleted_bases": result.deleted_bases, "deleted_segments": result.deleted_segments,
            "deleted_offsite": result.deleted_offsite, "locked_offsite": result.locked_offsite,
            "deleted_offsite_bases": result.deleted_offsite_bases,
            "locked_offsite_bases": result.locked_offsite_bases}


@dg.job(name="postgres_wal_retention_job", tags={"store": STORE},
        description="Point-in-time recovery retention: base backups by the postgres policy, then unneeded WAL.")
def wal_retention_job() -> None:
    _wal_retention()


wal_retention_schedule = dg.ScheduleDefinition(name="postgres_wal_retention_schedule", job=wal_retention_job,
                                               cron_schedule="45 1 * * *", execution_timezone=TIMEZONE,
                                               default_status=dg.DefaultScheduleStatus.RUNNING)

defs = dg.Definitions(assets=[postgres_wal, postgres_base_backup, postgres_wal_offsite],
                      asset_checks=[postgres_wal_checks, postgres_wal_rpo, postgres_wal_retained,
                                    postgres_base_backup_checks, postgres_wal_offsite_checks],
                      jobs=[wal_job, base_backup_job, rpo_job, wal_retention_job, wal_offsite_job],
                      schedules=[wal_schedule, base_backup_schedule, rpo_schedule, wal_retention_schedule,
                                 wal_offsite_schedule])


def point_in_time_restore(context: dg.OpExecutionContext, store: str, to_time: str, to_lsn: str, mode: str,
                          backups: BackupsResource, listeners: list, source: str = "local"
                          ) -> Iterator[dg.Output[dict]]:
    """The `restore_postgres` op with `to_time`/`to_lsn` set (the target confirmed by the caller)."""
    from cb_backups.restore.pitr import execute_pitr, plan_pitr

    if store != STORE:
        raise dg.Failure(description=f"point-in-time restore (to_time/to_lsn) is for {STORE} only, not {store}")
    try:
        plan = plan_pitr(backups.settings(), to_time or None, to_lsn or None, mode, source)
        for line in plan.describe():
            context.log.info(line)
        result = execute_pitr(plan, dagster_progress(context, listeners=listeners))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    for note in result.notes:
        context.log.info(note)
    context.log.info(result.summary())
    yield dg.Output(result.to_json(), metadata={
        "recovery_lsn": str(result.point.get("lsn")),
        "last_transaction_at": str(result.point.get("last_transaction_at")),
        "timeline": int(result.point.get("timeline") or 0), "base_backup": result.base_backup,
        "rto_seconds": result.rto_seconds, "connection": result.connection or "in place",
        "safety_copy": result.safety_copy or "none", "counts": dg.MetadataValue.json(result.counts)})
