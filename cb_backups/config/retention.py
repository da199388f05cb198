"""Retention policies as configured: per store, local and off-site (the `retention:` section).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from cb_backups.core.errors import ConfigError
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES

LOCAL, OFFSITE = "local", "offsite"
# --- policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: int | None = None  # keep everything captured within this many days
    keep_last: int | None = None  # keep at most this many (protected ones count, but are never deleted)
    keep_daily: int | None = None  # GFS: newest backup of each of the newest N days that have backups
    keep_weekly: int | None = None  # ... of each of the newest N ISO weeks
    keep_monthly: int | None = None  # ... of each of the newest N months
    min_keep: int = 1  # always keep at least this many (the newest verified ones)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name != "min_keep":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                allowed = "a whole number >= 1" + ("" if f.name == "min_keep" else ", or unset")
                raise ConfigError(f"retention {f.name}", value, allowed)
        if not any((self.keep_days, self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)):
            raise ConfigError("retention policy", "no rule", "at least one of keep_days, keep_last, keep_daily, "
                                                             "keep_weekly, keep_monthly")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], what: str = "retention") -> RetentionPolicy:
        if not isinstance(data, Mapping):
            raise ConfigError(f"'{what}' section", data, "a mapping such as {keep_days: 7, keep_last: 28}")
        allowed = [f.name for f in fields(cls)]
        for name in data:
            if name not in allowed:
                raise ConfigError(f"setting '{what}.{name}'", data[name], ", ".join(allowed))
        try:
            return cls(**{k: v for k, v in data.items() if v is not None})
        except ConfigError as exc:
            raise ConfigError(f"{what}.{exc.what.removeprefix('retention ')}", exc.value, exc.allowed) from None

    def describe(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) is not None]
        return ", ".join(parts)


# The runbook's "Recommended Schedule": PostgreSQL 7 days (28 backups), Neo4j/Qdrant/OpenSearch
# 7 days, Valkey 3 days; the weekly full system backup for 4 weeks.
DEFAULT_POLICIES: dict[str, RetentionPolicy] = {
    "postgres": RetentionPolicy(keep_days=7, keep_last=28),
    "neo4j": RetentionPolicy(keep_days=7),
    "qdrant": RetentionPolicy(keep_days=7),
    "opensearch": RetentionPolicy(keep_days=7),
    "valkey": RetentionPolicy(keep_days=3),
    FULL_SYSTEM: RetentionPolicy(keep_days=28),
}
POLICY_NAMES = (*STORE_NAMES, FULL_SYSTEM)


@dataclass(frozen=True)
class RetentionPolicies:
    """Local and off-site policy per store. A store's off-site policy defaults to its local one."""

    local: dict[str, RetentionPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    offsite: dict[str, RetentionPolicy] = field(default_factory=dict)

    def for_store(self, store: str, where: str = LOCAL) -> RetentionPolicy:
        if store not in self.local:
            raise ConfigError("retention store", store, ", ".join(sorted(self.local)))
        if where == OFFSITE:
            return self.offsite.get(store, self.local[store])
        if where != LOCAL:
            raise ConfigError("retention location", where, f"{LOCAL}, {OFFSITE}")
        return self.local[store]


def policies_from_config(raw: Mapping[str, Any] | None) -> RetentionPolicies:
    """Read the `retention:` section of the CB_CONFIG file; a store's section replaces its default whole.

    retention:
      postgres: {keep_days: 14, keep_last: 56}
      offsite:
        postgres: {keep_days: 30, keep_monthly: 12}
    """
    section = (raw or {}).get("retention") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("'retention' section", section, "a mapping of store name to policy")
    local = dict(DEFAULT_POLICIES)
    offsite: dict[str, RetentionPolicy] = {}
    for name, value in section.items():
        if name == OFFSITE:
            if not isinstance(value, Mapping):
                raise ConfigError("'retention.offsite' section", value, "a mapping of store name to policy")
            for store, policy in value.items():
                _check_store(store, "retention.offsite")
                offsite[store] = RetentionPolicy.from_mapping(policy, f"retention.offsite.{store}")
            continue
        _check_store(name, "retention")
        local[name] = RetentionPolicy.from_mapping(value, f"retention.{name}")
    return RetentionPolicies(local=local, offsite=offsite)


def _check_store(name: str, section: str) -> None:
    if name not in POLICY_NAMES:
        raise ConfigError(f"store in '{section}'", name, ", ".join((*POLICY_NAMES, OFFSITE)))




# --- off-site copies: S3 Object Lock (`offsite.object_lock`) ------------------------------

LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
# Pseudo-stores kept by another store's policy: PostgreSQL's daily base backups (stores/pitr/basebackup.py
# BASE_STORE) are pruned by the postgres policy (retention/wal.py), so they are locked as long as it keeps them.
KEPT_BY = {"postgres_base_backup": "postgres"}
SLOT_SPACING_DAYS = {"postgres": 0.25, "valkey": 0.25, FULL_SYSTEM: 7.0}  # else daily: what keep_last counts


def retention_days(policy: RetentionPolicy, store: str) -> float:
    """How long a slot may be kept off-site under `policy`, as an upper bound in days: the longest of its
    rules (keep_last counted in slots of the store's schedule). A lock this long never ends before retention
    would delete the slot."""
    spacing = SLOT_SPACING_DAYS.get(store, 1.0)
    return float(max(policy.keep_days or 0, policy.keep_daily or 0, 7 * (policy.keep_weekly or 0),
                     31 * (policy.keep_monthly or 0), spacing * (policy.keep_last or 0)))


@dataclass(frozen=True)
class ObjectLock:
    """Every object of an off-site slot is written with retain-until = the slot's off-site retention end +
    `days_beyond_retention` (never earlier than now + that margin: a late copy is still locked).

    offsite:
      object_lock: {mode: COMPLIANCE, days_beyond_retention: 7}
    """

    mode: str = "COMPLIANCE"
    days_beyond_retention: int = 7
    retention_days: Mapping[str, float] = field(default_factory=dict)  # per store; filled from `retention:`

    def retain_until(self, store: str, captured_at: datetime, now: datetime) -> datetime:
        end = captured_at + timedelta(days=self.retention_days.get(store, 0.0))
        return max(end, now) + timedelta(days=self.days_beyond_retention)


def object_lock_from_config(value: Any, policies: RetentionPolicies) -> ObjectLock | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("offsite.object_lock", value,
                          "a mapping such as {mode: COMPLIANCE, days_beyond_retention: 7}")
    unknown = sorted(str(k) for k in value if k not in ("mode", "days_beyond_retention"))
    if unknown:
        raise ConfigError("setting in 'offsite.object_lock'", unknown[0], "mode, days_beyond_retention")
    mode = value.get("mode", "COMPLIANCE")
    if mode not in LOCK_MODES:
        raise ConfigError("offsite.object_lock.mode", mode, ", ".join(LOCK_MODES))
    days = value.get("days_beyond_retention", 7)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("offsite.object_lock.days_beyond_retention", days, "a whole number of days >= 1")
    kept_by = {store: store for store in POLICY_NAMES} | KEPT_BY
    return ObjectLock(mode, days, {store: retention_days(policies.for_store(owner, OFFSITE), store)
                                   for store, owner in kept_by.items()})


# --- off-site copies: deep verification in rotating subsets (`offsite.verify_subset`) -------


@dataclass(frozen=True)
class VerifySubset:
    """Each run re-reads at least `fraction` of a store's off-site bytes, least recently read first, and
    every object at least once per `period_days` (cb_backups.offsite.subset).

    offsite:
      verify_subset: {fraction: 0.05, period_days: 30}
    """

    fraction: float = 0.05
    period_days: int = 30


def verify_subset_from_config(value: Any) -> VerifySubset:
    if not isinstance(value, Mapping):
        raise ConfigError("offsite.verify_subset", value, "a mapping such as {fraction: 0.05, period_days: 30}")
    unknown = sorted(str(k) for k in value if k not in ("fraction", "period_days"))
    if unknown:
        raise ConfigError("setting in 'offsite.verify_subset'", unknown[0], "fraction, period_days")
    fraction = value.get("fraction", 0.05)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError("offsite.verify_subset.fraction", fraction, "a number above 0 and at most 1, e.g. 0.05")
    days = value.get("period_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("offsite.verify_subset.period_days", days, "a whole number of days >= 1")
    return VerifySubset(float(fraction), days)


# --- off-site copies: retries, notification, RPO lag (the `offsite:` section) -----------


@dataclass(frozen=True)
class OffsitePolicy:
    """How failed off-site copies are retried and when someone is told.

    offsite:
      retry_minutes: [5, 15, 60]   # wait before attempt 2, 3, 4...; the last value repeats
      notify_after: 3              # failed attempts before the webhook says the slot has no copy
      rpo_lag_hours: 1             # offsite_freshness: newest verified copy within RPO + this lag
      sensor_interval_seconds: 30  # how often offsite_automation_sensor looks for slots to copy
      deep_verify: false
      object_lock: {mode: COMPLIANCE, days_beyond_retention: 7}   # see ObjectLock
      verify_subset: {fraction: 0.05, period_days: 30}             # see VerifySubset
    """

    retry_minutes: tuple[float, ...] = (5.0, 15.0, 60.0)
    notify_after: int = 3
    rpo_lag_hours: float = 1.0
    sensor_interval_seconds: int = 30
    deep_verify: bool = False
    object_lock: ObjectLock | None = None
    verify_subset: VerifySubset = field(default_factory=VerifySubset)

    def retry_wait_seconds(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (>= 1) before the next attempt."""
        return self.retry_minutes[min(failures, len(self.retry_minutes)) - 1] * 60


def _number(what: str, value: Any, minimum: float, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(what, value, allowed)
    return float(value)


def offsite_from_config(raw: Mapping[str, Any] | None) -> OffsitePolicy:
    """Read the `offsite:` section of the CB_CONFIG file (one ConfigError naming the bad value)."""
    section = (raw or {}).get("offsite") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("'offsite' section", section, "a mapping of settings")
    allowed = [f.name for f in fields(OffsitePolicy)]
    unknown = sorted(str(k) for k in section if k not in allowed)
    if unknown:
        raise ConfigError("setting in the 'offsite' section", unknown[0], ", ".join(allowed))
    values: dict[str, Any] = {}
    if "retry_minutes" in section:
        minutes = section["retry_minutes"]
        if not isinstance(minutes, list | tuple) or not minutes:
            raise ConfigError("offsite.retry_minutes", minutes, "a non-empty list of minutes, e.g. [5, 15, 60]")
        values["retry_minutes"] = tuple(_number("offsite.retry_minutes", m, 0, "minutes >= 0, e.g. [5, 15, 60]")
                                        for m in minutes)
    if "notify_after" in section:
        count = section["notify_after"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError("offsite.notify_after", count, "a whole number of failed attempts >= 1")
        values["notify_after"] = count
    if "rpo_lag_hours" in section:
        values["rpo_lag_hours"] = _number("offsite.rpo_lag_hours", section["rpo_lag_hours"], 0, "hours >= 0")
    if "sensor_interval_seconds" in section:
        seconds = section["sensor_interval_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise ConfigError("offsite.sensor_interval_seconds", seconds, "a whole number of seconds >= 1")
        values["sensor_interval_seconds"] = seconds
    if "deep_verify" in section:
        if not isinstance(section["deep_verify"], bool):
            raise ConfigError("offsite.deep_verify", section["deep_verify"], "true or false")
        values["deep_verify"] = section["deep_verify"]
    if section.get("object_lock") is not None:
        values["object_lock"] = object_lock_from_config(section["object_lock"], policies_from_config(raw))
    if section.get("verify_subset") is not None:
        values["verify_subset"] = verify_subset_from_config(section["verify_subset"])
    return OffsitePolicy(**values)
