"""Per store, from one factory: the partitioned backup asset, its slot checks, jobs, schedules and freshness."""

from __future__ import annotations

import dagster as dg

from cb_backups.defs.backups.assets import backup_assets
from cb_backups.defs.backups.automation import (
    backup_jobs,
    backup_schedules,
    freshness_job,
    freshness_schedule,
    verify_jobs,
)
from cb_backups.defs.backups.checks import backup_checks, freshness_checks

defs = dg.Definitions(
    assets=backup_assets,
    asset_checks=[*backup_checks, *freshness_checks],
    jobs=[*backup_jobs.values(), *verify_jobs.values(), freshness_job],
    schedules=[*backup_schedules, freshness_schedule],
)
