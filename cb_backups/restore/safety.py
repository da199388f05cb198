"""Safety backups: the current data, backed up right before an in-place restore replaces it.

They live under `<store>/_safety/<stamp>` (outside normal retention) and are pruned after
`safety_keep_days` (default 7) by the next in-place restore of that store.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cb_backups.core.catalog import Catalog, parse_iso, utcnow
from cb_backups.core.errors import ConfigError
from cb_backups.core.model import Artifact, Progress, no_progress
from cb_backups.restore.plan import DEFAULT_SAFETY_KEEP_DAYS
from cb_backups.stores.base import Store


def safety_stamp() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]


def take_safety_backup(catalog: Catalog, store: Store, progress: Progress = no_progress) -> Artifact:
    """A backup of the target's current data, under `<store>/_safety/<stamp>` (outside normal retention)."""
    return catalog.write(store.name, safety_stamp(), lambda into: store.backup(into, progress), kind="safety")


def prune_safety(catalog: Catalog, store: str, keep_days: int = DEFAULT_SAFETY_KEEP_DAYS,
                 deleter: Callable[[Artifact], None] | None = None, keep: set[str] | None = None) -> list[Path]:
    """Remove safety backups finished more than `keep_days` ago; returns the removed folders.

    `deleter` (the adapter's `before_delete`) releases what a backup keeps outside its folder first.
    """
    if keep_days < 0:
        raise ConfigError("safety_keep_days", keep_days, "a whole number of days >= 0")
    cutoff = utcnow() - timedelta(days=keep_days)
    removed = []
    for artifact in catalog.list(store, kind="safety"):
        if artifact.partition_key in (keep or set()) or parse_iso(artifact.manifest.finished_at) > cutoff:
            continue
        if deleter is not None:
            deleter(artifact)
        hidden = artifact.directory.with_name(f".deleting-{artifact.directory.name}")
        os.rename(artifact.directory, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        removed.append(artifact.directory)
    return removed
