"""The Store contract and the helpers every adapter shares.

An adapter never decides where a backup lives or when it counts as complete:
it writes its files into the staging folder it is given (through
`HashingWriter`, so checksums come for free) and returns a `BackupOutput`.
The catalog turns that into a manifest and renames the folder into place.

Everything restore, drills, retention and the full system backup need to know
about one store is asked through this contract, so nothing outside `stores/`
decides per store.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cb_backups.core.errors import BackupFailed, CbBackupsError, ConfigError
from cb_backups.core.model import Artifact, BackupOutput, Health, Inventory, Progress, Target, Verification, no_progress

RESTORE = "restore"  # Store.scratch_target purposes: a restore job's scratch target ...
DRILL = "drill"  # ... or a nightly drill's


@dataclass(frozen=True)
class Scratch:
    """A backup restored into a scratch target; alive inside `Store.scratch(...)`."""

    target: Target
    counter: Callable[[], Inventory]  # counts the scratch target now
    description: str

    def counts(self) -> Inventory:
        """What the scratch target holds NOW (not what the restore reported), under the backup's names."""
        return self.counter()

    def describe(self) -> str:
        return self.description


@runtime_checkable
class Store(Protocol):
    name: str
    restore_method: str  # one line for the restore plan
    consistency_markers: tuple[str, ...]  # the BackupOutput.markers that pin what an artifact holds

    def health(self, backup_dir: Path) -> Health: ...

    def inventory(self) -> Inventory: ...

    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput: ...

    def verify(self, artifact: Artifact) -> Verification: ...

    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        """Restore and return the counts under the backup's names (a scratch copy's renames undone)."""
        ...

    def describe_target(self, target: Target) -> str:
        """Where a restore to `target` goes, for the plan (URLs without passwords)."""
        ...

    def scratch_target(self, purpose: str) -> Target | None:
        """The scratch Target of a restore job (RESTORE) or a drill (DRILL); None when there is none."""
        ...

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        """Why `target` cannot load `artifact` (versions, extensions); empty when it can. Touches nothing;
        an unreachable server is a problem ("cannot check versions: ..."), not an exception."""
        ...

    def scratch(self, artifact: Artifact, target: Target,
                progress: Progress = no_progress) -> contextlib.AbstractContextManager[Scratch]:
        """Restore into the scratch `target` and yield it; leftovers of an interrupted earlier run are
        removed first, and the scratch target is dropped on exit, also on error."""
        ...

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        """Post-restore verification with this store's tolerance; empty when the counts agree."""
        ...

    def before_delete(self, artifact: Artifact) -> None:
        """Release what the backup keeps outside its folder, before the folder is deleted."""
        ...


@runtime_checkable
class GuardsInPlace(Protocol):
    """What a store does so an in-place restore loses no acknowledged write (PostgreSQL, Valkey).

    Kept apart from `Store` so adapters without it still satisfy the contract; `quiesced`,
    `kept_aside` and `prune_kept_aside` below ask it for any store.
    """

    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """Do what `restore` can do beside the live data before writes stop (PostgreSQL: restore into
        `<db>__incoming` and count it), so writes stop for as short as possible; `restore` then reuses it."""
        ...

    def quiesce(self, target: Target) -> contextlib.AbstractContextManager[dict[str, Any] | None]:
        """Stop the in-place `target` accepting writes until the block ends. A write attempted meanwhile
        is refused or held and then fails: never acknowledged and lost. The safety backup taken inside
        the block therefore holds every acknowledged write. On error the target accepts writes again.
        Yields what it holds (JSON-able, e.g. the name it moved the data aside to), which the restore
        journals so `Recovers.recover` can undo it if this process is killed inside the block."""
        ...

    def replaced(self) -> list[str]:
        """What earlier in-place restores kept aside (e.g. `<db>__replaced_<stamp>`), one line each."""
        ...

    def prune_replaced(self, keep_days: int) -> list[str]:
        """Drop what was kept aside more than `keep_days` ago; returns what was dropped."""
        ...


@runtime_checkable
class Recovers(Protocol):
    """A store that can be put back in service after the process holding it was killed (SIGKILL, OOM,
    reboot) inside `quiesce`, or inside a backup that takes it offline (Neo4j's offline dump)."""

    # True when an in-place `restore` switches old for new data in one step (PostgreSQL's rename), so a
    # restore killed inside it leaves one or the other whole; False: it may leave the target half-written
    # and recovery restores the safety backup taken before it.
    swaps_in_place: bool

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """Undo what `hold` says this store was left in: writes stopped, data moved aside, server stopped.
        `hold` is what `quiesce` yielded, `{}` for a restore killed before `quiesce` said, None for a killed
        run that was not restoring (a backup). Idempotent, a no-op on a store in service; one line per
        thing put back."""
        ...


def recovered(store: Store, target: Target, hold: dict[str, Any] | None) -> list[str]:
    return store.recover(target, hold) if isinstance(store, Recovers) else []


def swaps_in_place(store: Store) -> bool:
    return isinstance(store, Recovers) and store.swaps_in_place


def quiesced(store: Store, target: Target) -> contextlib.AbstractContextManager[dict[str, Any] | None]:
    """`store.quiesce(target)`, or nothing for a store that cannot hold writes off."""
    return store.quiesce(target) if isinstance(store, GuardsInPlace) else contextlib.nullcontext()


def staged(store: Store, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
    if isinstance(store, GuardsInPlace):
        store.stage(artifact, target, progress)


def stage_verifies(store: Store) -> bool:
    """True when `stage` itself proves the backup (every byte's sha256 against the manifest, the store's own
    check, the restored counts) beside the target (PostgreSQL's `<db>__incoming`) before touching it: a
    restore then stages instead of reading the backup beforehand, and `latest` falls back past a backup whose
    staging failed instead of restoring it into a scratch target first."""
    return isinstance(store, GuardsInPlace) and bool(getattr(store, "stage_verifies", False))


def kept_aside(store: Store) -> list[str]:
    return store.replaced() if isinstance(store, GuardsInPlace) else []


def prune_kept_aside(store: Store, keep_days: int) -> list[str]:
    return store.prune_replaced(keep_days) if isinstance(store, GuardsInPlace) else []


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


def named_counts_problems(expected: Inventory, actual: Inventory, target: Target, section: str,
                          option: str) -> list[str]:
    """counts_problems for stores of named collections/indices: only the names requested in `option` are
    expected, and in place only the backup's names count (the live server may hold others)."""
    wanted = target.options.get(option)
    expected = {s: {k: v for k, v in names.items() if not wanted or k in wanted} for s, names in expected.items()}
    if target.mode == "in_place":
        actual = {s: {k: v for k, v in names.items() if k in expected.get(s, {})} for s, names in actual.items()}
    return counts_problems(expected, actual, sections=(section,))


def version_problems(check: Callable[[], list[str]]) -> list[str]:
    """`check()`; when the server cannot be asked, that is the problem (a restore must not start blind)."""
    try:
        return check()
    except CbBackupsError as exc:
        return [f"cannot check versions: {exc}"]


def require_scratch(store: str, target: Target) -> None:
    """Refuse a non-scratch target where the target is dropped afterwards."""
    if target.mode != "scratch":
        raise ConfigError(f"{store} scratch target mode", target.mode, "scratch")


@contextlib.contextmanager
def dropped_afterwards(drop: Callable[[], object]) -> Iterator[None]:
    """Run `drop` however the block ends; a failing drop must not hide the block's own error."""
    try:
        yield
    finally:
        with contextlib.suppress(CbBackupsError):
            drop()
