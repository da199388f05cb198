"""The weekly auditor report as an asset: HTML and JSON beside the backups (and in S3 when configured)."""
import dagster as dg

from cb_backups.config.retention import offsite_from_config
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.partitions import weekly_sunday_0100
from cb_backups.core.specs import STORES
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite.s3 import SHA256_METADATA, S3Target
from cb_backups.report.build import build_report
from cb_backups.report.render import write_all


@dg.asset(
    name="audit_report",
    partitions_def=weekly_sunday_0100,
    group_name="audit",
    kinds={"html"},
    owners=["team:platform"],
    deps=[spec.asset_key for spec in STORES],
    description="Auditor report for one week (Sunday 01:00 to Sunday 01:00): every expected slot of every store "
                "with its checks, off-site copy, restore drill and retention fate; RPO/RTO compliance.",
)
def audit_report(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    settings = backups.settings()
    catalog = settings.catalog()
    report = build_report(context.instance, catalog.root, window.start, window.end,
                          offsite_lag_hours=offsite_from_config(settings.raw).rpo_lag_hours)
    directory = catalog.reports_dir
    written = write_all(report, ("html", "json"), directory, f"audit_{context.partition_key}")
    metadata: dict[str, dg.MetadataValue] = {
        "html": dg.MetadataValue.path(str(written["html"][0])),
        "json": dg.MetadataValue.path(str(written["json"][0])),
        "sha256": dg.MetadataValue.json({path.name: digest for path, digest in written.values()}),
        "slots": dg.MetadataValue.int(len(report.rows)),
    }
    for s in report.stores:
        if s.rpo_compliance is not None:
            metadata[f"rpo_compliance/{s.store}"] = dg.MetadataValue.float(s.rpo_compliance)
    if settings.s3.enabled:
        try:
            target = S3Target(settings.s3)
            for fmt, (path, digest) in written.items():
                key = target.folder(directory.name) + path.name  # the same folder name as beside the backups
                content_type = "text/html" if fmt == "html" else "application/json"
                try:
                    target.client.upload_file(str(path), target.bucket, key, ExtraArgs={
                        "Metadata": {SHA256_METADATA: digest}, "ContentType": content_type})
                except Exception as exc:
                    raise target.error("upload", target.url(key), exc) from None
                metadata[f"s3_{fmt}"] = dg.MetadataValue.url(target.url(key))
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
    for warning in report.warnings:
        context.log.warning(warning)
    context.log.info(f"audit report {context.partition_key}: {len(report.rows)} slots -> {directory}")
    return dg.MaterializeResult(metadata=metadata)


audit_report_job = dg.define_asset_job("audit_report_job", selection=[audit_report], partitions_def=weekly_sunday_0100,
                                       description="Write the weekly auditor report.")


@dg.schedule(cron_schedule="0 6 * * 0", job=audit_report_job, execution_timezone=weekly_sunday_0100.timezone,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Sunday 06:00: the week that ended at 01:00, once the last daily slots are due and checked.")
def audit_report_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    key = weekly_sunday_0100.get_last_partition_key(current_time=context.scheduled_execution_time)
    if key is None:
        return dg.SkipReason("no complete week yet")
    return dg.RunRequest(run_key=key, partition_key=key)


defs = dg.Definitions(assets=[audit_report], jobs=[audit_report_job], schedules=[audit_report_schedule])
