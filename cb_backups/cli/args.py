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
