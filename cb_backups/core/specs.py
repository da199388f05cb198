"""The one table of per-store facts the Dagster layer is built from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from cb_backups.core import partitions
from cb_backups.core.errors import ConfigError

FULL_SYSTEM = "full_system"  # the weekly full system backup, a catalog "store" of its own


@dataclass(frozen=True)
class StoreSpec:
    name: str
    title: str
    partitions: dg.TimeWindowPartitionsDefinition
    rpo: timedelta  # runbook "RTO/RPO Summary"
    rto: timedelta
    retention_days: int  # runbook "Recommended Schedule"
    priority: str
    # Checks on other assets that judge this store's recoverability, as "asset:check" (PostgreSQL's
    # continuous WAL archive, defs/wal.py): the auditor report reads them with the store's own.
    related_checks: tuple[str, ...] = ()

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey(f"{self.name}_backup")

    @property
    def offsite_key(self) -> dg.AssetKey:
        """The asset of this store's off-site copies (defs/offsite.py)."""
        return dg.AssetKey(f"{self.name}_offsite")


STORES: tuple[StoreSpec, ...] = (
    StoreSpec("postgres", "PostgreSQL 16", partitions.six_hourly, timedelta(hours=6), timedelta(hours=1), 7,
              "critical", related_checks=("postgres_wal:rpo", "postgres_wal:slot_retained_wal",
                                          "postgres_wal_offsite:offsite_freshness")),
    StoreSpec("valkey", "Valkey 8", partitions.six_hourly, timedelta(hours=6), timedelta(minutes=10), 3, "medium"),
    StoreSpec("neo4j", "Neo4j 5.26", partitions.daily_0200, timedelta(days=1), timedelta(hours=2), 7, "critical"),
    StoreSpec("qdrant", "Qdrant 1.12", partitions.daily_0300, timedelta(days=1), timedelta(hours=1), 7, "high"),
    StoreSpec("opensearch", "OpenSearch 2.13", partitions.daily_0400, timedelta(days=1), timedelta(hours=1), 7,
              "high"),
)
BY_NAME = {s.name: s for s in STORES}
STORE_NAMES: tuple[str, ...] = tuple(BY_NAME)


def spec_for(name: str) -> StoreSpec:
    if name not in BY_NAME:
        raise ConfigError("store", name, ", ".join(BY_NAME))
    return BY_NAME[name]
