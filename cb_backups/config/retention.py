"""Retention policies as configured: per store, local and off-site (the `retention:` section).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
    """

    retry_minutes: tuple[float, ...] = (5.0, 15.0, 60.0)
    notify_after: int = 3
    rpo_lag_hours: float = 1.0
    sensor_interval_seconds: int = 30
    deep_verify: bool = False

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
    return OffsitePolicy(**values)
