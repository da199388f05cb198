"""Quiesce hooks: commands run around a backup to stop and restart the application's writers.

    hooks:
      timeout_seconds: 300              # each command; default 300
      postgres: {pre_backup: [docker, compose, stop, codingbrain-mcp],
                 post_backup: [docker, compose, start, codingbrain-mcp]}
      full_system: {pre_backup: ..., post_backup: ...}

A command is a list of words or one text split like a shell would (no shell runs it). The full system
backup runs its own and every store's pre_backup before the first store starts and their post_backup
after the last one ends (stores/hooks.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cb_backups.core.errors import ConfigError
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES

SECTION = "hooks"
NAMES = (*STORE_NAMES, FULL_SYSTEM)
KEYS = ("pre_backup", "post_backup")
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Hooks:
    pre_backup: tuple[str, ...] = ()
    post_backup: tuple[str, ...] = ()
    timeout_seconds: float = DEFAULT_TIMEOUT

    @property
    def any(self) -> bool:
        return bool(self.pre_backup or self.post_backup)


def _command(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(where, value, f"a command with balanced quotes ({exc})") from None
    elif isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        words = [str(v) for v in value]
    else:
        raise ConfigError(where, value, "a command: a list of words, e.g. [docker, compose, stop, app], or one text")
    if not words:
        raise ConfigError(where, value, "a command with at least one word (leave the key out for none)")
    return tuple(words)


def hooks_from_config(raw: Mapping[str, Any]) -> dict[str, Hooks]:
    """Every name's hooks from the config file's `hooks` section; ConfigError names any bad value."""
    section = raw.get(SECTION) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(SECTION, section, "a mapping of store name (or full_system) to {pre_backup, post_backup}")
    timeout = section.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 86400:
        raise ConfigError("hooks.timeout_seconds", timeout, "seconds, 1 to 86400")
    unknown = sorted(set(map(str, section)) - {*NAMES, "timeout_seconds"})
    if unknown:
        raise ConfigError("hooks", unknown[0], ", ".join([*NAMES, "timeout_seconds"]))
    found = {}
    for name in NAMES:
        entry = section.get(name) or {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"hooks.{name}", entry, "a mapping with pre_backup and/or post_backup")
        bad = sorted(set(map(str, entry)) - set(KEYS))
        if bad:
            raise ConfigError(f"hooks.{name}", bad[0], ", ".join(KEYS))
        found[name] = Hooks(_command(f"hooks.{name}.pre_backup", entry.get("pre_backup")),
                            _command(f"hooks.{name}.post_backup", entry.get("post_backup")), float(timeout))
    return found
