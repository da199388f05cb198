"""Build a store adapter by name from the settings.

One factory per store, each importing its adapter when called: an adapter pulls in its own
client library (psycopg, valkey, neo4j, qdrant-client, opensearch-py), which a run for another
store should not have to load.
"""

from __future__ import annotations

from collections.abc import Callable

from cb_backups.config.settings import Settings
from cb_backups.core.specs import STORE_NAMES
from cb_backups.stores.base import Store


def postgres_store(settings: Settings) -> Store:
    from cb_backups.stores.postgres import PostgresStore

    return PostgresStore(settings.store("postgres"), volume=settings.volumes.get("postgres"))


def valkey_store(settings: Settings) -> Store:
    from cb_backups.stores.valkey import ValkeyStore

    return ValkeyStore(settings.store("valkey"), volume=settings.volumes.get("valkey"))


def neo4j_store(settings: Settings) -> Store:
    from cb_backups.stores.neo4j import Neo4jStore, scratch_server_options

    # the scratch server for drills may be named in the config file's `drills:` section
    return Neo4jStore(settings.store("neo4j"), volume=settings.volumes.get("neo4j"),
                      scratch_server=scratch_server_options(settings))


def qdrant_store(settings: Settings) -> Store:
    from cb_backups.stores.qdrant import QdrantStore

    return QdrantStore(settings.store("qdrant"), volume=settings.volumes.get("qdrant"))


def opensearch_store(settings: Settings) -> Store:
    from cb_backups.stores.opensearch import OpenSearchStore

    return OpenSearchStore(settings.store("opensearch"), volume=settings.volumes.get("opensearch"))


FACTORIES: dict[str, Callable[[Settings], Store]] = {
    "postgres": postgres_store,
    "valkey": valkey_store,
    "neo4j": neo4j_store,
    "qdrant": qdrant_store,
    "opensearch": opensearch_store,
}
assert tuple(FACTORIES) == tuple(STORE_NAMES), "one factory per store, in the STORES table's order"


def open_store(name: str, settings: Settings) -> Store:
    """The adapter for `name`; a ConfigError names the store when it is unknown or unconfigured."""
    if name not in FACTORIES:
        settings.store(name)  # the ConfigError naming the store and the allowed names
    return FACTORIES[name](settings)
