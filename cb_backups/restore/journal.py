"""The journal of an in-place restore in progress: what it holds, so a killed one can be undone.

`journaled` writes `<backup_dir>/_restores/<store>.json` (atomically, 0600) before the target is closed to
writes and updates it at each step (closed, with what `quiesce` holds; safety backup taken; restoring).
The file is removed when the restore ends, in success or error, since `quiesce`'s own exit has put the
target back by then. A file whose process is gone (process.gone) is a restore killed midway:
restore.recovery puts the store back in service from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cb_backups.core import process
from cb_backups.core.catalog import Catalog, iso, utcnow
from cb_backups.core.fileio import atomic_write_json
from cb_backups.core.model import Target

CLOSING, CLOSED, RESTORING = "closing", "closed", "restoring"


@dataclass
class Entry:
    store: str
    backup: str  # the slot (or safety stamp) being restored
    target: dict[str, Any]  # Target's mode and options
    process: dict[str, str]  # process.identity() of the restoring process
    started: str
    phase: str = CLOSING
    hold: dict[str, Any] | None = None  # what `quiesce` yielded
    safety: str | None = None  # the safety backup's stamp, once taken
    steps: list[str] = field(default_factory=list)

    def as_target(self) -> Target:
        return Target(str(self.target.get("mode", "in_place")), dict(self.target.get("options") or {}))


class Journal:
    def __init__(self, path: Path, entry: Entry) -> None:
        self.path, self.entry = path, entry

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.entry, name, value)
        self.entry.steps.append(f"{iso(utcnow())} {self.entry.phase}")
        write(self.path, self.entry)


def write(path: Path, entry: Entry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, asdict(entry))


def read(path: Path) -> Entry | None:
    """The entry, or None for a file that is not one (a torn or foreign file is reported by the caller)."""
    try:
        raw = json.loads(path.read_text())
        return Entry(**raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def journaled(catalog: Catalog, store: str, backup: str, target: Target) -> Iterator[Journal]:
    path = catalog.restore_journal(store)
    entry = Entry(store, backup, {"mode": target.mode, "options": dict(target.options)}, process.identity(),
                  iso(utcnow()))
    journal = Journal(path, entry)
    journal.update()
    try:
        yield journal
    finally:
        path.unlink(missing_ok=True)
