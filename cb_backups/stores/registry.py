"""Build a store adapter by name from the settings.

One factory per store, each importing its adapter when called: an adapter pulls in its own
client library (psycopg, valkey, neo4j, qdrant-client, opensearch-py), which a run for another
store should not have to load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cb_backups.config.settings import Settings, VolumeSettings
from cb_backups.core.specs import STORE_NAMES
from cb_backups.stores.base import Store


def postgres_store(settings: Any, volume: VolumeSettings | None) -> Store:
    from cb_backups.stores.postgres import PostgresStore

    return PostgresStore(settings, volume=volume)


def valkey_store(settings: Any, volume: VolumeSettings | None) -> Store:
    from cb_backups.stores.valkey import ValkeyStore

    return ValkeyStore(settings, volume=volume)


def neo4j_store(settings: Any, volume: VolumeSettings | None) -> Store:
    from cb_backups.stores.neo4j import Neo4jStore

    return Neo4jStore(settings, volume=volume)


def qdrant_store(settings: Any, volume: VolumeSettings | None) -> Store:
    from cb_backups.stores.qdrant import QdrantStore

    return QdrantStore(settings, volume=volume)


def opensearch_store(settings: Any, volume: VolumeSettings | None) -> Store:
    from cb_backups.stores.opensearch import OpenSearchStore

    return OpenSearchStore(settings, volume=volume)


FACTORIES: dict[str, Callable[[Any, VolumeSettings | None], Store]] = {
    "postgres": postgres_store,
    "valkey": valkey_store,
    "neo4j": neo4j_store,
    "qdrant": qdrant_store,
    "opensearch": opensearch_store,
}
assert tuple(FACTORIES) == tuple(STORE_NAMES), "one factory per store, in the STORES table's order"


def open_store(name: str, settings: Settings) -> Store:
    """The adapter for `name`; a ConfigError names the store when it is unknown or unconfigured."""
    store_settings = settings.store(name)
    return FACTORIES[name](store_settings, settings.volumes.get(name))
