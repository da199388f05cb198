"""What a restore will do, decided and validated before anything happens (no Dagster here).

`plan_restore` checks the request (a ConfigError names the bad value) and returns a
`RestorePlan`, whose `describe()` is printed before the restore runs; `plan_full_restore`
makes one plan per configured store, in the runbook's order. `restore.execute` carries
the plans out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cb_backups.config.settings import Settings
from cb_backups.core.errors import ConfigError
from cb_backups.core.model import Target
from cb_backups.core.partitions import parse_slot, weekly_sunday_0100
from cb_backups.core.specs import FULL_SYSTEM, spec_for
from cb_backups.full_system.backup import stores_in
from cb_backups.stores.base import RESTORE
from cb_backups.stores.registry import open_store

LATEST = "latest-verified"
LATEST_ALIASES = ("latest-verified", "latest")
SAFETY_PREFIX = "safety:"
FULL_PREFIX = "full_system:"  # one store's part of a full system backup
SOURCES = ("local", "offsite")
MODES = ("scratch", "in_place")
DEFAULT_SAFETY_KEEP_DAYS = 7
# Runbook "Full Restore Script" order: the critical stores first.
FULL_ORDER = ("postgres", "neo4j", "qdrant", "opensearch", "valkey")
LIST_OPTIONS = ("collections", "indices")
# Every target override a restore understands (README "Restore" lists which store reads which); anything
# else is a typo that would otherwise be ignored silently.
GENERAL_OPTIONS = ("safety_backup", "safety_keep_days")
TARGET_OPTIONS = (*GENERAL_OPTIONS, "dbname", "jobs", "uri", "database", "admin_command", "stop_command",
                  "start_command", "dump_dir", "collections", "suffix", "data_dir", "ready_timeout", "indices",
                  "prefix", "include_global_state")
# Overrides that name something on the server: a name, never SQL or shell text.
NAME_OPTIONS = ("dbname", "database", "suffix", "prefix", "collections", "indices")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.,*-]*")


def hms(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will do; `describe()` is printed before anything happens."""

    store: str
    backup: str  # "latest-verified", a partition key, "safety:<stamp>" or "full_system:<key>"
    source: str  # "local" | "offsite"
    target: Target
    safety_backup: bool
    safety_keep_days: int
    rto_target_seconds: float
    settings: Settings = field(repr=False, compare=False)
    candidates: tuple[str, ...] = ()  # newest first, what latest-verified will try
    target_description: str = ""  # the adapter's describe_target
    restore_method: str = "store restore"  # the adapter's restore_method

    def describe(self) -> list[str]:
        spec = spec_for(self.store)
        where = "IN PLACE (replaces the live data)" if self.target.mode == "in_place" else "into a SCRATCH target"
        lines = [f"restore {self.store} ({spec.title}) {where}: {self.target_description}"]
        if self.backup == LATEST:
            newest = self.candidates[0] if self.candidates else "none found"
            lines.append(f"  backup: the newest {self.source} backup that verifies now (newest: {newest}; a newer one "
                         "that fails verification is skipped and named)")
        else:
            lines.append(f"  backup: {self.backup} ({self.source})")
        step = 1
        if self.source == "offsite":
            lines.append(f"  {step}. download the off-site copy from s3://{self.settings.s3.bucket}, checking sha256 "
                         "while streaming")
            step += 1
        lines.append(f"  {step}. verify the backup (sha256 of every file, then the store's own check) and version "
                     "compatibility -- before the target is touched")
        step += 1
        if self.target.mode == "in_place":
            if self.safety_backup:
                lines.append(f"  {step}. SAFETY BACKUP of the current {self.store} data into "
                             f"{self.settings.catalog().safety_dir(self.store)}/<stamp> "
                             f"(kept {self.safety_keep_days} days)")
            else:
                lines.append(f"  {step}. NO safety backup (override safety_backup=skip): the current data is lost")
            step += 1
        lines.append(f"  {step}. restore ({self.restore_method})")
        lines.append(f"  {step + 1}. compare counts with the backup's manifest; RTO target "
                     f"{hms(self.rto_target_seconds)} (runbook RTO/RPO summary)")
        return lines


@dataclass
class FullRestorePlan:
    plans: list[RestorePlan]
    source_note: str

    def describe(self) -> list[str]:
        lines = [f"full system restore ({len(self.plans)} stores, runbook order): {self.source_note}",
                 "  every backup is resolved, verified and version-checked before the first store is touched"]
        for plan in self.plans:
            lines += ["  " + line for line in plan.describe()]
        return lines


def plan_restore(settings: Settings, store: str, backup: str = LATEST, source: str = "local",
                 target: Target | None = None) -> RestorePlan:
    """Validate the request (ConfigError names the bad value) and say what will happen."""
    spec = spec_for(store)
    adapter = open_store(store, settings)  # ConfigError when not configured
    if source not in SOURCES:
        raise ConfigError("restore source", source, ", ".join(SOURCES))
    target = target or Target("scratch")
    if target.mode not in MODES:
        raise ConfigError("restore target", target.mode, "scratch, in_place")
    if source == "offsite" and not settings.s3.enabled:
        raise ConfigError("restore source", source, "local (no S3 bucket configured: set CB_S3_BUCKET)")
    options = dict(target.options)
    check_overrides(options)
    safety = str(options.pop("safety_backup", "yes")).lower() not in ("skip", "no", "false", "0")
    keep_days = keep_days_setting(options.pop("safety_keep_days", None), settings)
    options = {k: _option(k, v) for k, v in options.items()}
    if target.mode == "scratch":
        defaults = adapter.scratch_target(RESTORE)
        options = {**(defaults.options if defaults is not None else {}), **options}
    catalog = settings.catalog()
    backup = LATEST if backup in LATEST_ALIASES else backup
    candidates: tuple[str, ...] = ()
    if backup == LATEST:
        if source == "local":
            candidates = tuple(a.partition_key for a in reversed(catalog.list(store)))
    elif backup.startswith(FULL_PREFIX):
        full_key = backup[len(FULL_PREFIX):]
        parse_slot(weekly_sunday_0100, full_key)
        if store not in full_system_stores(settings, full_key, source):
            raise ConfigError("full system backup", full_key, f"one that holds a {store} backup")
    elif backup.startswith(SAFETY_PREFIX):
        if source != "local":
            raise ConfigError("restore source", source, "local (safety backups are never copied off-site)")
        stamp = backup[len(SAFETY_PREFIX):]
        if not stamp or catalog.get(store, stamp, kind="safety") is None:
            known = ", ".join(SAFETY_PREFIX + a.partition_key for a in catalog.list(store, kind="safety")[-5:])
            raise ConfigError(f"{store} safety backup", backup, f"an existing one; newest are: {known or 'none'}")
    else:
        parse_slot(spec.partitions, backup)
        if source == "local":
            catalog.require(store, backup)
    planned = Target(target.mode, options)
    described = adapter.describe_target(planned)
    if target.mode == "scratch" and described == adapter.describe_target(Target("in_place")):
        # e.g. --set dbname=<the live database>: that is an in-place restore without its safety backup
        raise ConfigError("scratch target", described, "one other than the live data (use --target in-place "
                                                       "to replace it, with a safety backup first)")
    return RestorePlan(store=store, backup=backup, source=source, target=planned,
                       safety_backup=safety, safety_keep_days=keep_days,
                       rto_target_seconds=spec.rto / timedelta(seconds=1), settings=settings, candidates=candidates,
                       target_description=described, restore_method=adapter.restore_method)


def plan_full_restore(settings: Settings, backup: str = LATEST, source: str = "local",
                      target: Target | None = None) -> FullRestorePlan:
    """One plan per configured store, in the runbook's order.

    `backup` is "latest-verified" (each store's newest backup that verifies) or the key of a
    full system backup, whose manifest names the slot of each store.
    """
    target = target or Target("in_place")
    stores = [s for s in FULL_ORDER if s in settings.configured_stores()]
    if not stores:
        raise ConfigError("stores to restore", "none configured", "set CB_POSTGRES_URL, CB_VALKEY_URL, ...")
    backup = LATEST if backup in LATEST_ALIASES else backup
    note = "each store's newest backup that verifies now"
    member = LATEST
    if backup != LATEST:
        held = full_system_stores(settings, backup, source)
        missing = [s for s in stores if s not in held]
        if missing:
            raise ConfigError("full system backup", backup, f"one that holds {', '.join(missing)} too "
                                                            f"(it holds {', '.join(held) or 'nothing'})")
        note = f"the full system backup {backup}"
        member = FULL_PREFIX + backup
    plans = [plan_restore(settings, s, member, source, target) for s in stores]
    return FullRestorePlan(plans, note)


def full_system_stores(settings: Settings, key: str, source: str = "local") -> list[str]:
    """The stores a full system backup (`<backup_dir>/full_system/<key>`, cb_backups.full_system) holds."""
    if source != "local":
        return list(FULL_ORDER)  # read from the downloaded manifest when the restore runs
    catalog = settings.catalog()
    artifact = catalog.get(FULL_SYSTEM, key)
    if artifact is None:
        known = ", ".join(a.partition_key for a in catalog.list(FULL_SYSTEM)[-5:]) or "none"
        raise ConfigError("full system backup", key, f"latest-verified or an existing one; newest are: {known}")
    return stores_in(artifact)


def keep_days_setting(value: Any, settings: Settings) -> int:
    """How long safety backups are kept: the override, else CB_SAFETY_KEEP_DAYS, else `restore.safety_keep_days`."""
    if value is None:
        value = os.environ.get("CB_SAFETY_KEEP_DAYS") or (settings.raw.get("restore") or {}).get(
            "safety_keep_days", DEFAULT_SAFETY_KEEP_DAYS)
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise ConfigError("safety_keep_days", value, "a whole number of days >= 0") from None
    if days < 0:
        raise ConfigError("safety_keep_days", value, "a whole number of days >= 0")
    return days


def check_overrides(options: dict[str, Any]) -> None:
    """Unknown keys and names with quotes, spaces or semicolons are bad input, before the plan is printed."""
    for key, value in options.items():
        if key not in TARGET_OPTIONS:
            raise ConfigError("--set key", key, ", ".join(sorted(TARGET_OPTIONS)))
        if key in NAME_OPTIONS and isinstance(value, str) and not SAFE_NAME.fullmatch(value):
            raise ConfigError(f"--set {key}", value, "letters, digits and _ . - (a comma-separated list for "
                                                     "collections and indices)")


def _option(key: str, value: Any) -> Any:
    """Overrides arrive as text (Dagster config, CLI): lists for collections/indices, numbers for jobs."""
    if key in LIST_OPTIONS and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if key == "jobs":
        try:
            jobs = int(value)
        except (TypeError, ValueError):
            jobs = 0
        if jobs < 1 or jobs > 256 or str(value).strip() != str(jobs):  # the range of `restore_jobs`
            raise ConfigError("override jobs", str(value), "a whole number of connections and pg_restore workers, "
                                                          "1 to 256")
        return jobs
    return value
