"""PostgreSQL point-in-time recovery settings: the `postgres_wal:` section of CB_CONFIG and its variables.

The connection (host, port, user, password, bin_dir) is the `postgres` store's; this section says how WAL
is received, how fresh it must be, and how an in-place recovery reaches the live data directory.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cb_backups.core.errors import ConfigError

SECTION = "postgres_wal"
_SLOT = re.compile(r"^[a-z0-9_]{1,63}$")  # PostgreSQL's rule for replication slot names
ENV = {  # setting -> the variable that overrides it
    "slot": "CB_WAL_SLOT",
    "rpo_seconds": "CB_WAL_RPO_SECONDS",
    "max_retained_mb": "CB_WAL_MAX_RETAINED_MB",
    "offsite_lag_seconds": "CB_WAL_OFFSITE_LAG_SECONDS",
    "data_dir": "CB_PG_DATA_DIR",
    "run_as": "CB_PG_RUN_AS",
    "server_options": "CB_PG_SERVER_OPTIONS",
}


@dataclass(frozen=True)
class PitrSettings:
    slot: str = "cb_backups_wal"  # the physical replication slot pg_receivewal streams from (made if missing)
    rpo_seconds: float = 60.0  # the newest received WAL must be younger than this (the RPO check)
    max_retained_mb: int = 1024  # WAL the slot holds on the server beyond this: a warning (dead receiver)
    offsite_lag_seconds: float = 7200.0  # the newest segment verified off-site may be this old (hourly copies)
    compression_level: int = 3  # zstd level of archived WAL segments
    base_backup_compression_level: int = 1  # base backups: level 3 costs 2x the CPU for a 1.6% smaller tar
    data_dir: str | None = None  # the live data directory, for an in-place recovery (renamed, never deleted)
    run_as: str | None = None  # the system user that owns the data directory and runs postgres (when root)
    server_options: str = ""  # pg_ctl -o options of the live server (port, sockets) for the in-place start
    stop_command: tuple[str, ...] = ()  # in place: how to stop the live server (default: pg_ctl stop -m fast)
    start_command: tuple[str, ...] = ()  # in place: how to start it again (default: pg_ctl start)
    scratch_dir: str | None = None  # where scratch recoveries go (default: <backup_dir>/_pitr)

    def __post_init__(self) -> None:
        if not isinstance(self.slot, str) or not _SLOT.match(self.slot):
            raise ConfigError(f"{SECTION}.slot", self.slot, "1-63 lower-case letters, digits and _")
        _number(f"{SECTION}.rpo_seconds", self.rpo_seconds, 1, 7 * 24 * 3600)
        _number(f"{SECTION}.max_retained_mb", self.max_retained_mb, 16, 10**9, whole=True)
        _number(f"{SECTION}.offsite_lag_seconds", self.offsite_lag_seconds, 60, 7 * 24 * 3600)
        _number(f"{SECTION}.compression_level", self.compression_level, 1, 19, whole=True)
        _number(f"{SECTION}.base_backup_compression_level", self.base_backup_compression_level, 1, 19, whole=True)


def _number(what: str, value: Any, low: float, high: float, whole: bool = False) -> None:
    allowed = f"a {'whole ' if whole else ''}number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not float(value).is_integer()):
        raise ConfigError(what, value, allowed)
    if not low <= value <= high:  # NaN fails both comparisons
        raise ConfigError(what, value, allowed)


def _convert(name: str, kind: str, value: Any) -> Any:
    what = f"{SECTION}.{name}"
    if kind.startswith("tuple"):
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                raise ConfigError(what, value, f"words with balanced quotes ({exc})") from None
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(what, value, "a command as a list of words or one text")
    if kind in ("float", "int"):
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(what, value, "a number") from None
        if kind == "int" and isinstance(number, float) and number.is_integer():
            number = int(number)
        return number
    if value is not None and not isinstance(value, str):
        raise ConfigError(what, value, "text")
    return value


def pitr_from_config(raw: Mapping[str, Any], env: Mapping[str, str]) -> PitrSettings:
    """The section, with the environment over it; ConfigError (exit 2) names a bad value."""
    section = raw.get(SECTION) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"'{SECTION}' section", section, "a mapping of settings")
    allowed = {f.name: str(f.type) for f in fields(PitrSettings)}
    unknown = sorted(str(k) for k in section if k not in allowed)
    if unknown:
        raise ConfigError(f"setting in the '{SECTION}' section", unknown[0], ", ".join(allowed))
    values = dict(section)
    for name, variable in ENV.items():
        if env.get(variable):
            values[name] = env[variable]
    return PitrSettings(**{k: _convert(k, allowed[k], v) for k, v in values.items()})
