"""Per store, from one factory: the partitioned backup asset, its slot checks, jobs and schedule; and freshness.

This package's `defs` is the only Dagster object it holds at module level: `load_from_defs_folder`
also scans assets.py, checks.py and automation.py, which therefore only hold factories.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from cb_backups.core.specs import STORES, StoreSpec
from cb_backups.defs.backups.assets import backup_asset
from cb_backups.defs.backups.automation import (
    backup_job,
    backup_schedule,
    freshness_job,
    freshness_schedule,
    verify_job,
)
from cb_backups.defs.backups.checks import freshness_check, slot_checks


def configured_stores() -> list[str] | None:
    """The stores with connection settings when the code location loads; None when the settings are bad
    (every store then stays live, and its runs say what is wrong)."""
    from cb_backups.config.settings import load_settings
    from cb_backups.core.errors import CbBackupsError

    try:
        return load_settings().configured_stores()
    except CbBackupsError:
        return None


def build_store_defs(spec: StoreSpec, configured: bool = True) -> dg.Definitions:
    """One store's backup asset, slot checks, backup and verify jobs, and schedule (stopped when the store
    is not configured)."""
    backup = backup_job(spec)
    return dg.Definitions(assets=[backup_asset(spec, configured)], asset_checks=[slot_checks(spec)],
                          jobs=[backup, verify_job(spec)], schedules=[backup_schedule(spec, backup, configured)])


def build_freshness_defs(specs: Sequence[StoreSpec]) -> dg.Definitions:
    """Each store's freshness check (newest verified backup within the RPO), run hourly by one job."""
    job = freshness_job(specs)
    return dg.Definitions(asset_checks=[freshness_check(spec) for spec in specs], jobs=[job],
                          schedules=[freshness_schedule(job)])


_configured = configured_stores()
defs = dg.Definitions.merge(*(build_store_defs(spec, _configured is None or spec.name in _configured)
                              for spec in STORES), build_freshness_defs(STORES))
