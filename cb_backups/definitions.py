"""The one Definitions object: merges what the modules build."""

from __future__ import annotations

import dagster as dg

from cb_backups.assets import backup_assets
from cb_backups.automation import backup_jobs, backup_schedules, freshness_job, freshness_schedule, verify_jobs
from cb_backups.checks import backup_checks, freshness_checks
from cb_backups.resources import BackupsResource

defs = dg.Definitions(
    assets=backup_assets,
    asset_checks=[*backup_checks, *freshness_checks],
    jobs=[*backup_jobs.values(), *verify_jobs.values(), freshness_job],
    schedules=[*backup_schedules, freshness_schedule],
    resources={"backups": BackupsResource()},
)
