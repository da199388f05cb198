"""The one Definitions object Dagster loads: every feature's Definitions, merged, and the one resource bound.

Each folder under `defs/` builds its own `defs`; adding a feature is one module there and one line here.
"""

from __future__ import annotations

import dagster as dg

from cb_backups.defs import backups, drills, full_system, notifications, offsite, report, restore, retention
from cb_backups.defs.resources import BackupsResource

defs = dg.Definitions.merge(
    backups.defs,  # per store: backup asset, slot checks, jobs, schedules, freshness
    full_system.defs,  # weekly full system backup
    offsite.defs,  # S3 copies + off-site checks + automation
    retention.defs,  # daily retention
    restore.defs,  # restore jobs
    drills.defs,  # nightly restore drills (asset checks)
    report.defs,  # weekly auditor report
    notifications.defs,  # failure webhooks
    dg.Definitions(resources={"backups": BackupsResource()}),
)
