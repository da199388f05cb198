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


def store_names(value: str | None) -> list[str]:
    """The named store, or every store when none is named."""
    from cb_backups.core.specs import STORE_NAMES

    if value is not None and value not in STORE_NAMES:  # before importing Dagster: bad input answers fast
        raise ConfigError("store", value, ", ".join(STORE_NAMES))
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


def within_retention(store: str, key: str) -> None:
    """A slot older than the store's retention would be pruned at once: bad input, before the run."""
    from datetime import timedelta

    from cb_backups.core.catalog import utcnow
    from cb_backups.core.partitions import parse_slot
    from cb_backups.core.specs import spec_for

    spec = spec_for(store)
    now = utcnow()
    if now - parse_slot(spec.partitions, key).astimezone(now.tzinfo) > timedelta(days=spec.retention_days):
        newest = spec.partitions.get_last_partition_key()
        raise ConfigError("partition key", key, f"a {store} slot that ended within its {spec.retention_days}-day "
                                                f"retention (a backup of an older one would be pruned at once), "
                                                f"e.g. {newest}")


def check_store_settings(value: str | None) -> None:
    """A named store's settings are bad input (exit 2) before any run starts, not a failed run."""
    if value is not None:
        from cb_backups.config.settings import load_settings
        from cb_backups.stores.registry import open_store

        open_store(value, load_settings())  # validates its settings (compression, URLs, ...); does not connect


def partition(store: str, key: str | None) -> str:
    """The given slot key, validated against the store's schedule; else the store's newest slot."""
    from cb_backups.core.partitions import parse_slot
    from cb_backups.core.specs import spec_for

    spec = spec_for(store)
    if key is None:
        last = spec.partitions.get_last_partition_key()
        if last is None:
            raise ConfigError("partition key", None, "a slot after the partitions start")
        return last
    parse_slot(spec.partitions, key)
    return key
