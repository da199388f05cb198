"""The one Dagster resource: settings, catalog and store adapters for a run.

Connection details and secrets are read from the environment at run time
(see settings.py), so they never appear in Dagster's config, UI or run records.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from cb_backups.config.settings import Settings, load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.stores.base import Store
from cb_backups.stores.registry import open_store


class BackupsResource(dg.ConfigurableResource):
    """Where backups go and how to reach the stores."""

    backup_dir: str | None = None  # overrides CB_BACKUP_DIR

    def settings(self) -> Settings:
        settings = load_settings()
        if self.backup_dir:
            settings = Settings(**{**settings.__dict__, "backup_dir": Path(self.backup_dir)})
        return settings

    def catalog(self) -> Catalog:
        return self.settings().catalog()

    def store(self, name: str) -> Store:
        return open_store(name, self.settings())
