"""The one Definitions object: merges what the modules build.

Each feature module exposes `defs` (a dg.Definitions without resources); the
one shared resource is bound here.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

import dagster as dg

from cb_backups.assets import backup_assets
from cb_backups.automation import backup_jobs, backup_schedules, freshness_job, freshness_schedule, verify_jobs
from cb_backups.checks import backup_checks, freshness_checks
from cb_backups.resources import BackupsResource


def _core() -> dg.Definitions:
    return dg.Definitions(
        assets=backup_assets,
        asset_checks=[*backup_checks, *freshness_checks],
        jobs=[*backup_jobs.values(), *verify_jobs.values(), freshness_job],
        schedules=[*backup_schedules, freshness_schedule],
    )


# Feature modules, each exposing `defs`.
FEATURES = (
    "cb_backups.full_system",  # weekly full system backup
    "cb_backups.offsite_assets",  # S3 copies + off-site checks + automation
    "cb_backups.retention_job",  # daily retention
    "cb_backups.restore",  # restore jobs
    "cb_backups.drills",  # nightly restore drills (asset checks)
    "cb_backups.report_assets",  # weekly auditor report
    "cb_backups.notifications",  # failure webhooks
)

# Only `defs` may be a Definitions at module scope (the Dagster CLI loads exactly one).
defs = dg.Definitions.merge(
    _core(),
    *[import_module(name).defs for name in FEATURES if find_spec(name) is not None],
    dg.Definitions(resources={"backups": BackupsResource()}),
)
