"""The S3 version id of every object of an off-site copy, as uploaded (versioned, Object Lock buckets).

Kept on the backup disk (`Catalog.offsite_versions`, 0600 JSON: object key -> version id) so that
verification and restores read exactly what was uploaded: an attacker's PutObject under the same key is a
newer version, reported by the check and never read. Without a record (the backup disk was lost) the
oldest version of each object is read instead (offsite/lock.py `oldest_version`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from cb_backups.core.catalog import Catalog
from cb_backups.core.fileio import atomic_write_json, private_dir

Versions = Mapping[str, str]


def save(catalog: Catalog, store: str, key: str, found: Versions) -> None:
    if not found:
        return
    path = catalog.offsite_versions(store, key)
    private_dir(path.parent)
    atomic_write_json(path, dict(sorted(found.items())))


def load(catalog: Catalog, store: str, key: str) -> dict[str, str] | None:
    """The recorded version ids, or None when there is no (readable) record."""
    path = catalog.offsite_versions(store, key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return None
    return data


def forget(catalog: Catalog, store: str, key: str) -> None:
    catalog.offsite_versions(store, key).unlink(missing_ok=True)


def deleted(catalog: Catalog, store: str, key: str, gone: Iterable[str], complete: bool) -> None:
    """After retention deleted the slot off-site: the record goes when the slot is gone (`complete`); else only
    the entries whose version went (`gone`: "<object key>@<version id>"), so the locked objects that stay are
    still read at their recorded versions."""
    if complete:
        forget(catalog, store, key)
        return
    found = load(catalog, store, key)
    if found is None:
        return
    gone = set(gone)
    left = {k: v for k, v in found.items() if f"{k}@{v}" not in gone}
    if left == found:
        return
    if left:
        save(catalog, store, key, left)
    else:
        forget(catalog, store, key)
