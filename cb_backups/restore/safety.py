"""Safety backups: the current data, backed up right before an in-place restore replaces it.

They live under `<store>/_safety/<stamp>` (outside normal retention) and are pruned after
`safety_keep_days` (default 7) by the next in-place restore of that store. What a store keeps
aside itself (PostgreSQL's `<db>__replaced_<stamp>` databases) is dropped after the same period,
by the next in-place restore and by the daily retention job (`prune_replaced_data`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cb_backups.config.settings import Settings
from cb_backups.core.catalog import Catalog, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError, ConfigError
from cb_backups.core.model import Artifact, Progress, no_progress
from cb_backups.core.specs import STORE_NAMES
from cb_backups.restore.plan import DEFAULT_SAFETY_KEEP_DAYS, keep_days_setting
from cb_backups.stores.base import Store, kept_aside, prune_kept_aside
from cb_backups.stores.registry import open_store


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


def prune_replaced_data(settings: Settings, stores: list[str] | None = None) -> list[str]:
    """Drop what in-place restores kept aside more than `safety_keep_days` ago, for every configured store;
    one line per store that dropped or still keeps something, or could not be asked (nothing is dropped then)."""
    keep_days = keep_days_setting(None, settings)
    lines = []
    for name in stores or STORE_NAMES:
        if name not in STORE_NAMES:
            continue  # full_system keeps nothing outside its folders
        try:
            store = open_store(name, settings)
        except ConfigError:
            continue  # not configured here
        try:
            dropped = prune_kept_aside(store, keep_days)
            kept = kept_aside(store)
        except CbBackupsError as exc:
            lines.append(f"{name}: could not prune what restores kept aside (kept): {exc}")
            continue
        if dropped:
            lines.append(f"{name}: dropped, kept aside by restores more than {keep_days} days ago: "
                         + ", ".join(dropped))
        if kept:
            lines.append(f"{name}: kept aside by restores (dropped after {keep_days} days): " + "; ".join(kept))
    return lines
