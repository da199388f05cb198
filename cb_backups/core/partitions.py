"""Backup slots as Dagster partitions, on the runbook's cron times.

A slot's key is the start of its window; the schedule fills a slot when its
window ends (Dagster's convention), which is exactly the runbook's cron time.
"""

from __future__ import annotations

import os
from datetime import datetime

import dagster as dg

from cb_backups.core.errors import ConfigError

# First slot shown in the UI; older history predates cb-backups.
PARTITIONS_START = os.environ.get("CB_PARTITIONS_START", "2026-11-01")
TIMEZONE = os.environ.get("CB_TIMEZONE", "UTC")
SIX_HOURLY_FMT = "%Y-%m-%d-%H:%M"
DAILY_FMT = "%Y-%m-%d"


def _checked_start() -> datetime:
    try:
        return datetime.strptime(PARTITIONS_START[:10], "%Y-%m-%d")
    except ValueError:
        raise ConfigError("CB_PARTITIONS_START", PARTITIONS_START, "a date YYYY-MM-DD") from None


def _checked_timezone() -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone (CB_TIMEZONE)", TIMEZONE,
                          "an IANA zone name such as UTC or Europe/Berlin") from None
    return TIMEZONE


def slots(cron: str, fmt: str) -> dg.TimeWindowPartitionsDefinition:
    start = _checked_start()
    _checked_timezone()
    return dg.TimeWindowPartitionsDefinition(cron_schedule=cron, start=start, fmt=fmt, timezone=TIMEZONE)


# PostgreSQL and Valkey: every 6 hours (runbook: 0 */6 * * *)
six_hourly = slots("0 */6 * * *", SIX_HOURLY_FMT)
# Neo4j 02:00, Qdrant 03:00, OpenSearch 04:00 (runbook crontab)
daily_0200 = slots("0 2 * * *", DAILY_FMT)
daily_0300 = slots("0 3 * * *", DAILY_FMT)
daily_0400 = slots("0 4 * * *", DAILY_FMT)
# Full system backup: Sunday 01:00
weekly_sunday_0100 = slots("0 1 * * 0", DAILY_FMT)


def parse_slot(partitions: dg.TimeWindowPartitionsDefinition, key: str) -> datetime:
    """The slot's end time; a ConfigError names the key and what is allowed.

    A key must be written exactly as the schedule writes it (ASCII digits, zero-padded), start on the
    schedule, and be a slot that exists now: not before the partitions start, not one still open or in
    the future (Dagster would refuse it with its own stack trace).
    """
    first = partitions.get_first_partition_key()
    last = partitions.get_last_partition_key()
    span = f"from {first} to {last}" if first and last else f"after {PARTITIONS_START}"
    try:
        start = datetime.strptime(key, partitions.fmt) if key.isascii() else None
    except (TypeError, ValueError):
        start = None
    if start is None or start.strftime(partitions.fmt) != key:
        raise ConfigError("partition key", key, f"format {partitions.fmt} in ASCII digits, e.g. {last or '2026-11-24'}")
    window = partitions.time_window_for_partition_key(key)
    if window.start.strftime(partitions.fmt) != key:  # daily keys carry no hour
        raise ConfigError("partition key", key, f"a slot start on the schedule {partitions.cron_schedule}")
    if not partitions.has_partition_key(key):
        raise ConfigError("partition key", key, f"a slot whose window has ended, {span}")
    return window.end
