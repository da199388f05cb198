"""Build a store adapter by name from the settings (imports lazily: each adapter
pulls in its own client library)."""

from __future__ import annotations

from importlib import import_module

from cb_backups.config.settings import Settings
from cb_backups.core.specs import STORE_NAMES
from cb_backups.stores.base import Store

_ADAPTERS = {
    "postgres": ("cb_backups.stores.postgres", "PostgresStore"),
    "valkey": ("cb_backups.stores.valkey", "ValkeyStore"),
    "neo4j": ("cb_backups.stores.neo4j", "Neo4jStore"),
    "qdrant": ("cb_backups.stores.qdrant", "QdrantStore"),
    "opensearch": ("cb_backups.stores.opensearch", "OpenSearchStore"),
}
assert set(_ADAPTERS) == set(STORE_NAMES)


def open_store(name: str, settings: Settings) -> Store:
    """The adapter for `name`; a ConfigError names the store when it is unknown or unconfigured."""
    store_settings = settings.store(name)
    module_name, class_name = _ADAPTERS[name]
    cls = getattr(import_module(module_name), class_name)
    return cls(store_settings, volume=settings.volumes.get(name))
