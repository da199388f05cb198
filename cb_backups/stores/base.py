"""The Store protocol and the plain data types every adapter speaks.

An adapter never decides where a backup lives or when it counts as complete:
it writes its files into the staging folder it is given (through
`HashingWriter`, so checksums come for free) and returns a `BackupOutput`.
The catalog turns that into a manifest and renames the folder into place.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cb_backups.errors import BackupFailed

# section -> name -> count, e.g. {"tables": {"memories": 1200}, "estimates": {...}}
Inventory = dict[str, dict[str, int]]

# progress(message, done_bytes_or_items, total_or_None)
Progress = Callable[[str, int, int | None], None]


def no_progress(message: str, done: int, total: int | None) -> None:
    """Default progress sink."""


@dataclass(frozen=True)
class FileRecord:
    name: str  # relative to the backup folder, no path separators
    bytes: int
    sha256: str


@dataclass
class BackupOutput:
    """What `Store.backup` wrote into the staging folder, and what it saw."""

    files: list[FileRecord]
    method: str
    options: dict[str, Any]
    versions: dict[str, str]
    inventory: Inventory
    markers: dict[str, Any] = field(default_factory=dict)  # consistency markers (LSN, LASTSAVE, ...)
    captured_at: str | None = None  # ISO time the data was captured, when the store knows better


@dataclass(frozen=True)
class Manifest:
    """The record of one complete backup (manifest.json)."""

    store: str
    partition_key: str
    kind: str  # "backup" | "safety"
    captured_at: str
    finished_at: str
    duration_seconds: float
    files: list[FileRecord]
    method: str
    options: dict[str, Any]
    versions: dict[str, str]
    inventory: Inventory
    markers: dict[str, Any]
    format_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        fields = dict(data)
        fields["files"] = [FileRecord(**f) for f in data["files"]]
        return cls(**fields)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


@dataclass(frozen=True)
class Artifact:
    """A complete backup on disk: its folder and its manifest."""

    directory: Path
    manifest: Manifest

    @property
    def store(self) -> str:
        return self.manifest.store

    @property
    def partition_key(self) -> str:
        return self.manifest.partition_key

    def path(self, name: str) -> Path:
        return self.directory / name

    def file(self, name: str) -> FileRecord:
        for record in self.manifest.files:
            if record.name == name:
                return record
        raise KeyError(name)


@dataclass(frozen=True)
class Health:
    """The runbook's pre-backup checklist, item by item."""

    store: str
    items: dict[str, str]  # item -> "ok" or what is wrong

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.items.values())

    @property
    def problems(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self.items.items() if v != "ok"]


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """Where a restore goes. `scratch` targets are created and dropped by the caller.

    `options` carries store-specific overrides: a database name, a server URL,
    a collection suffix, an index rename pattern.
    """

    mode: str  # "scratch" | "in_place"
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    name: str

    def health(self, backup_dir: Path) -> Health: ...

    def inventory(self) -> Inventory: ...

    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput: ...

    def verify(self, artifact: Artifact) -> Verification: ...

    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory: ...


# --- helpers shared by adapters -------------------------------------------------


def disk_space_item(backup_dir: Path, last_backup_bytes: int | None) -> str:
    """Runbook: `df -h /backups`. Demand 2x the last backup's size (or 1 MiB)."""
    probe = backup_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = max(2 * (last_backup_bytes or 0), 1024 * 1024)
    if free < need:
        return f"only {free} bytes free at {backup_dir}, need {need} (2x the last backup)"
    return "ok"


def run_tool(store: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             timeout: float | None = None, input_bytes: bytes | None = None) -> str:
    """Run a command-line tool; on failure raise BackupFailed with its stderr tail.

    argv must not carry secrets (pass them through `env`); it is shown on error.
    """
    try:
        done = subprocess.run(list(argv), env=dict(env) if env is not None else None, input=input_bytes,
                              capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise BackupFailed(store, f"tool not found: {argv[0]} (set its path in the settings)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackupFailed(store, f"{Path(argv[0]).name} timed out after {timeout}s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise BackupFailed(store, f"{Path(argv[0]).name} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout.decode(errors="replace")


def counts_problems(expected: Inventory, actual: Inventory, sections: Sequence[str] | None = None) -> list[str]:
    """Compare inventories section by section; returns what differs (empty when equal)."""
    problems = []
    for section, names in expected.items():
        if sections is not None and section not in sections:
            continue
        got = actual.get(section, {})
        for name, count in sorted(names.items()):
            if got.get(name) != count:
                problems.append(f"{section}/{name}: expected {count}, found {got.get(name)}")
        for name in sorted(set(got) - set(names)):
            problems.append(f"{section}/{name}: not in the backup, found {got[name]}")
    return problems
