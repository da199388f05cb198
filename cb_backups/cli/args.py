"""What the commands share for their arguments: the type they register on, and store and slot validation.

Validation here raises ConfigError (exit 2) before Dagster is imported or any run starts.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from cb_backups.core.errors import ConfigError


class Subcommands(Protocol):
    """What `ArgumentParser.add_subparsers()` returns, as far as a command needs it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


FULL_SYSTEM = "full_system"  # the weekly full system backup: the one name every command takes
FULL_ALIASES = ("full",)  # the older name `restore` took; still accepted
SLOT_HELP = "slot key, e.g. 2026-11-24-06:00 (six-hourly) or 2026-11-24 (daily, weekly)"
SLOT_ALIAS_NOTE = " (--partition is the older name, still accepted)"


def canonical(value: str | None) -> str | None:
    """A store name as the commands use it: `full` is `full_system`."""
    return FULL_SYSTEM if value in FULL_ALIASES else value


def add_slot(parser: Any, help: str = SLOT_HELP, *aliases: str, default: str | None = None
             ) -> None:
    """The one slot flag, `--slot`, with `--partition` (and any other older names) as aliases."""
    parser.add_argument("--slot", "--partition", *aliases, dest="slot", metavar="KEY", default=default,
                        help=help + SLOT_ALIAS_NOTE)


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout (see README)")


def store_or_full(value: str | None) -> list[str]:
    """Like store_names, and `full_system` (or `full`) for the weekly full system backup."""
    value = canonical(value)
    if value == FULL_SYSTEM:
        return [FULL_SYSTEM]
    return store_names(value, full=True)


def store_names(value: str | None, full: bool = False) -> list[str]:
    """The named store, or every store when none is named."""
    from cb_backups.core.specs import STORE_NAMES

    if value is not None and value not in STORE_NAMES:  # before importing Dagster: bad input answers fast
        allowed = ", ".join(STORE_NAMES) + (", full_system" if full else "")
        raise ConfigError("store", value, allowed)
    from cb_backups.core.specs import BY_NAME, spec_for

    if value is None:
        return list(BY_NAME)
    spec_for(value)  # raises ConfigError naming the allowed stores
    return [value]


def configured(value: str | None) -> tuple[list[str], list[str]]:
    """(the stores to run, the stores skipped as not configured): a named store must be configured
    (ConfigError otherwise); with none named, every configured store, and the others are reported."""
    from cb_backups.config.settings import CONNECTIONS, load_settings

    names = store_names(value)
    settings = load_settings()
    if value is not None:
        settings.store(value)  # raises ConfigError naming how to configure it
        return names, []
    chosen = [n for n in names if n in settings.configured_stores()]
    skipped = [n for n in names if n not in chosen]
    if not chosen:
        raise ConfigError("stores", "none configured",
                          "set at least one of " + ", ".join(CONNECTIONS[n].env for n in skipped))
    return chosen, skipped


def check_stores_settings(names: list[str]) -> None:
    """Each store's settings (compression level, URLs, ...) are bad input (exit 2) before any run starts."""
    from cb_backups.config.settings import load_settings
    from cb_backups.stores.registry import open_store

    settings = load_settings()
    for name in names:
        open_store(name, settings)  # validates; does not connect


def schedule_of(store: str) -> tuple[Any, int]:
    """(the store's slot partitions, its retention in days), the full system backup's included."""
    from cb_backups.core.specs import spec_for

    if store == FULL_SYSTEM:
        from cb_backups.core.partitions import weekly_sunday_0100
        from cb_backups.full_system.backup import RETENTION_DAYS

        return weekly_sunday_0100, RETENTION_DAYS
    spec = spec_for(store)
    return spec.partitions, spec.retention_days


def within_retention(store: str, key: str) -> None:
    """A slot older than the store's retention would be pruned at once: bad input, before the run."""
    from datetime import timedelta

    from cb_backups.core.catalog import utcnow
    from cb_backups.core.partitions import parse_slot

    partitions, retention_days = schedule_of(store)
    now = utcnow()
    if now - parse_slot(partitions, key).astimezone(now.tzinfo) > timedelta(days=retention_days):
        newest = partitions.get_last_partition_key()
        raise ConfigError("partition key", key, f"a {store} slot that ended within its {retention_days}-day "
                                                f"retention (a backup of an older one would be pruned at once), "
                                                f"e.g. {newest}")


def check_store_settings(value: str | None) -> None:
    """A named store's settings are bad input (exit 2) before any run starts, not a failed run."""
    if value is not None and value != FULL_SYSTEM:
        from cb_backups.config.settings import load_settings
        from cb_backups.stores.registry import open_store

        open_store(value, load_settings())  # validates its settings (compression, URLs, ...); does not connect


def partition(store: str, key: str | None) -> str:
    """The given slot key, validated against the store's schedule; else the store's newest slot."""
    from cb_backups.core.partitions import parse_slot

    partitions, _ = schedule_of(store)
    if key is None:
        last = partitions.get_last_partition_key()
        if last is None:
            raise ConfigError("partition key", None, "a slot after the partitions start")
        return last
    parse_slot(partitions, key)
    return key
