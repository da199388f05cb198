"""The plain data types every layer speaks: manifests, artifacts, inventories, verifications.

No I/O and no Dagster here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Inventory = dict[str, dict[str, int]]

# progress(message, done_bytes_or_items, total_or_None)
Progress = Callable[[str, int, int | None], None]


def no_progress(message: str, done: int, total: int | None) -> None:
    """Default progress sink."""


@dataclass(frozen=True)
class FileRecord:
    name: str  # relative to the backup folder, no path separators
    bytes: int
    sha256: str  # of the file as stored: for an encrypted one (`<name>.age`), the ciphertext
    # Only for a file encrypted with age (core.crypto); recipients are key fingerprints, never a key:
    plaintext_sha256: str | None = None
    plaintext_bytes: int | None = None
    recipients: tuple[str, ...] = ()

    @property
    def encrypted(self) -> bool:
        return self.plaintext_sha256 is not None

    def to_json(self) -> dict[str, Any]:
        """Without the encryption fields when unencrypted: such manifests stay as they always were."""
        data = asdict(self)
        if not self.encrypted:
            for key in ("plaintext_sha256", "plaintext_bytes", "recipients"):
                data.pop(key)
        else:
            data["recipients"] = list(self.recipients)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileRecord:
        fields = dict(data)
        fields["recipients"] = tuple(fields.get("recipients") or ())
        return cls(**fields)


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
        data = asdict(self)
        data["files"] = [f.to_json() for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        fields = dict(data)
        fields["files"] = [FileRecord.from_json(f) for f in data["files"]]
        return cls(**fields)

    @property
    def encrypted(self) -> bool:
        return any(f.encrypted for f in self.files)

    @property
    def recipients(self) -> tuple[str, ...]:
        """The fingerprint of every key any file is encrypted to, in order."""
        return tuple(dict.fromkeys(r for f in self.files for r in f.recipients))

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


@dataclass(frozen=True)
class Outcome:
    """One check's result as plain data (checks/slot.py, stores/pitr/health.py); defs/ turns it into Dagster's."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
