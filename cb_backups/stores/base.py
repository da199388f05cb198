"""The Store protocol and the plain data types every adapter speaks.

An adapter never decides where a backup lives or when it counts as complete:
it writes its files into the staging folder it is given (through
`HashingWriter`, so checksums come for free) and returns a `BackupOutput`.
The catalog turns that into a manifest and renames the folder into place.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from cb_backups.core.errors import BackupFailed
from cb_backups.core.model import Artifact, BackupOutput, Health, Inventory, Progress, Target, Verification, no_progress


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
