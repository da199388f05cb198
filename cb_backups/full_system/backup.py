"""The weekly full system backup: every configured store at once, into one catalog folder.

The runbook's "Full System Backup" script, made concurrent and checkable:

- one asset, `full_system_backup`, on weekly partitions (Sunday 01:00, the runbook's crontab),
  drives every configured adapter at the same time, one thread each; each store writes into its
  own subfolder of the staging folder, so the wall time is close to the slowest store, not the sum;
- the files are then moved up into the one folder with the store as a prefix
  (`postgres__postgres.dump`, `qdrant__memories.snapshot`, `valkey__dump.rdb`, ...) and committed
  through the catalog as store `full_system`: `<backup_dir>/full_system/<partition>/` (the same
  layout as every store, so retention, off-site copies and `list` need no special case);
- a store that fails does not throw the others away: the folder is committed with the good
  artifacts, the failure is recorded in the manifest (`markers.failed`) and the checks
  `all_stores_present` and `all_stores_verified` fail, naming the store.

The manifest is the catalog's (store "full_system", every file with its sha256). Per store:
`options[store]`, `versions["store.key"]`, `inventory["store.section"]` (prefixed so the
manifest keeps the Inventory shape), and in `markers`: `timestamp` and `services` (as the
runbook's manifest), `stores` (method, captured/started/finished, file map, the store's own
markers), `consistency` (WAL LSN, LASTSAVE, snapshot names, snapshot uuid), `configured`,
`skipped`, `failed` and `timing`. `store_view` presents one store's files as that store's own
Artifact, so its adapter's `verify` (and `restore`) work unchanged.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cb_backups.checks.slot import Outcome
from cb_backups.config.retention import DEFAULT_POLICIES
from cb_backups.core.blobs import CARRIED_DIR
from cb_backups.core.catalog import Catalog, checksum_problems, utcnow
from cb_backups.core.crypto import AGE_SUFFIX, age_header_problems
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.fileio import private_dir
from cb_backups.core.model import Artifact, BackupOutput, FileRecord, Manifest, Progress, Verification
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES
from cb_backups.stores.base import Store

SEPARATOR = "__"  # <store>__<file>: FileRecord names carry no path separators
RETENTION_DAYS = DEFAULT_POLICIES[FULL_SYSTEM].keep_days or 28
FULL_CHECKS = {
    "all_stores_present": "Every store configured at backup time has its files in the folder (none failed).",
    "all_stores_verified": "Each store's part passes that store's own integrity check (pg_restore --list, "
                           "valkey-check-rdb, neo4j-admin check, snapshot checksums, snapshot state).",
    "checksum": "Every file's sha256 and size equal the manifest's.",
}

OpenStore = Callable[[str], Store]


def _stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


def flat_name(store: str, name: str) -> str:
    return f"{store}{SEPARATOR}{name}"


# --- backing up (no Dagster) ----------------------------------------------------------------


@dataclass
class StoreRun:
    """One store's part of a full backup: its output, or why it failed, and when it ran."""

    store: str
    started_at: str
    finished_at: str
    seconds: float
    output: BackupOutput | None = None
    error: str | None = None
    consistency_markers: tuple[str, ...] = ()  # the adapter's: the markers that pin what the output holds


def backup_one(name: str, open_store: OpenStore, into: Path, health_dir: Path, progress: Progress) -> StoreRun:
    """Health checklist, then `backup(into)`; never raises (a failure is recorded instead)."""
    started, t0 = utcnow(), time.monotonic()
    output: BackupOutput | None = None
    error: str | None = None
    markers: tuple[str, ...] = ()
    try:
        private_dir(into)
        store = open_store(name)
        markers = store.consistency_markers
        health = store.health(health_dir)
        if not health.ok:
            raise CbBackupsError(f"{name}: pre-backup checklist failed: {'; '.join(health.problems)}")
        output = store.backup(into, progress)
    except CbBackupsError as exc:
        error = str(exc)
    except Exception as exc:  # an adapter bug must not lose the other stores' artifacts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{name}: unexpected {type(exc).__name__}: {first[:300]}"
    return StoreRun(name, _stamp(started), _stamp(utcnow()), round(time.monotonic() - t0, 3), output, error,
                    markers)


def backup_all(names: list[str], open_store: OpenStore, into: Path, health_dir: Path,
               progress_for: Callable[[str], Progress]) -> dict[str, StoreRun]:
    """Back up every store at once, one thread each, each into `into/<store>/`."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="cb-full") as pool:
        futures = {name: pool.submit(backup_one, name, open_store, into / name, health_dir, progress_for(name))
                   for name in names}
        return {name: future.result() for name, future in futures.items()}


@dataclass
class _Parts:
    files: list[FileRecord] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    inventory: dict[str, dict[str, int]] = field(default_factory=dict)
    stores: dict[str, Any] = field(default_factory=dict)
    services: dict[str, list[str]] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _take(parts: _Parts, into: Path, run: StoreRun) -> None:
    """Move one store's files up into `into` under prefixed names and record its sections."""
    name, output, sub = run.store, run.output, into / run.store
    assert output is not None
    reported = sorted(f.name for f in output.files)
    written = sorted(p.name for p in sub.iterdir() if p.is_file()) if sub.is_dir() else []
    if not reported or any(f not in written for f in reported):
        parts.failed[name] = f"{name}: the adapter reported files {reported} but wrote {written}"
        return
    mapping: dict[str, str] = {}
    for record in output.files:
        flat = flat_name(name, record.name)
        os.rename(sub / record.name, into / flat)
        parts.files.append(FileRecord(flat, record.bytes, record.sha256))
        mapping[record.name] = flat
    parts.options[name] = output.options
    parts.versions.update({f"{name}.{k}": str(v) for k, v in output.versions.items()})
    parts.inventory.update({f"{name}.{section}": dict(counts) for section, counts in output.inventory.items()})
    parts.stores[name] = {"method": output.method, "captured_at": output.captured_at or run.started_at,
                          "started_at": run.started_at, "finished_at": run.finished_at, "seconds": run.seconds,
                          "files": mapping, "markers": output.markers}
    parts.services[name] = sorted(mapping.values())
    parts.consistency[name] = {k: output.markers[k] for k in run.consistency_markers if k in output.markers}


def assemble(into: Path, runs: dict[str, StoreRun], skipped: dict[str, str], started: datetime,
             wall_seconds: float) -> BackupOutput:
    """One BackupOutput for the folder: good stores' files moved up and prefixed, failures recorded.

    Raises CbBackupsError (naming every store) when no store succeeded: there is nothing to keep.
    """
    parts = _Parts()
    for name, run in runs.items():
        if run.output is None:
            parts.failed[name] = run.error or f"{name}: failed"
        else:
            _take(parts, into, run)
        shutil.rmtree(into / name, ignore_errors=True)  # partial files of a failed store, adapter leftovers
    if not parts.stores:
        raise CbBackupsError("full system backup: no store succeeded: " + "; ".join(parts.failed.values()))
    slowest = max(runs.values(), key=lambda r: r.seconds)
    markers = {
        "timestamp": started.astimezone(UTC).strftime("%Y%m%d_%H%M%S"),
        "services": parts.services,
        "stores": parts.stores,
        "consistency": parts.consistency,
        "configured": sorted(runs, key=STORE_NAMES.index),
        "skipped": skipped,
        "failed": parts.failed,
        "timing": {"wall_seconds": round(wall_seconds, 3),
                   "sum_seconds": round(sum(r.seconds for r in runs.values()), 3),
                   "slowest_store": slowest.store, "slowest_seconds": slowest.seconds,
                   "runs": {n: {"started_at": r.started_at, "finished_at": r.finished_at, "seconds": r.seconds}
                            for n, r in runs.items()}},
    }
    return BackupOutput(files=parts.files, method="full_system (concurrent per-store backups)",
                        options=parts.options, versions=parts.versions, inventory=parts.inventory, markers=markers,
                        captured_at=min(p["captured_at"] for p in parts.stores.values()))


def write_full_backup(catalog: Catalog, key: str, configured: list[str], open_store: OpenStore,
                      progress_for: Callable[[str], Progress],
                      fence: Callable[[Callable[[Path], BackupOutput]], Callable[[Path], BackupOutput]] | None = None,
                      ) -> Artifact:
    """Under the slot lock: back up every configured store at once and commit the one folder. `fence` wraps
    the whole of it (the quiesce hooks: every pre_backup before the first store, every post_backup after)."""
    skipped = {n: "not configured" for n in STORE_NAMES if n not in configured}

    def run(staging: Path) -> BackupOutput:
        started, t0 = utcnow(), time.monotonic()
        runs = backup_all(configured, open_store, staging, catalog.root, progress_for)
        return assemble(staging, runs, skipped, started, time.monotonic() - t0)

    return catalog.write(FULL_SYSTEM, key, fence(run) if fence is not None else run)


# --- reading one store's part (no Dagster) -------------------------------------------------------


def stores_in(artifact: Artifact) -> list[str]:
    """Stores whose backup is in this full system backup, in the usual order."""
    names = artifact.manifest.markers.get("stores") or {}
    return sorted(names, key=lambda n: STORE_NAMES.index(n) if n in STORE_NAMES else len(STORE_NAMES))


def store_manifest(artifact: Artifact, store: str) -> Manifest:
    """The manifest `store`'s own backup would have had (original file names, its sections)."""
    m = artifact.manifest
    part = (m.markers.get("stores") or {}).get(store)
    if part is None:
        raise CbBackupsError(f"{store}: not part of full system backup {m.partition_key} "
                             f"(it holds: {', '.join(stores_in(artifact)) or 'nothing'})")
    by_name = {f.name: f for f in m.files}
    files = []
    for original, flat in part["files"].items():
        if flat not in by_name:
            raise CbBackupsError(f"{store}: file {flat} is not listed in the full system manifest")
        files.append(FileRecord(original, by_name[flat].bytes, by_name[flat].sha256))
    prefix = f"{store}."
    return Manifest(
        store=store, partition_key=m.partition_key, kind=m.kind, captured_at=part["captured_at"],
        finished_at=part["finished_at"], duration_seconds=part["seconds"], files=files, method=part["method"],
        options=m.options.get(store) or {},
        versions={k[len(prefix):]: v for k, v in m.versions.items() if k.startswith(prefix)},
        inventory={k[len(prefix):]: v for k, v in m.inventory.items() if k.startswith(prefix)},
        markers=part.get("markers") or {},
    )


@contextmanager
def store_view(artifact: Artifact, store: str) -> Iterator[Artifact]:
    """`store`'s part as its own Artifact: a temporary folder of symlinks under the original names.

    A downloaded copy's repository files of that part (`<store>__repository/`) appear as the view's
    `repository/`, where the store's adapter looks for them."""
    manifest = store_manifest(artifact, store)
    mapping = artifact.manifest.markers["stores"][store]["files"]
    with tempfile.TemporaryDirectory(prefix=f"cb-full-{store}-") as tmp:
        view = Path(tmp)
        for original, flat in mapping.items():
            (view / original).symlink_to(artifact.path(flat).resolve())
        carried = artifact.path(flat_name(store, CARRIED_DIR))
        if carried.is_dir():
            (view / CARRIED_DIR).symlink_to(carried.resolve(), target_is_directory=True)
        yield Artifact(view, manifest)


def stored_name(artifact: Artifact, flat: str) -> str:
    """The name `flat` has in the folder: itself, or `<flat>.age` when it was encrypted at commit."""
    names = {f.name for f in artifact.manifest.files}
    return flat if flat in names or flat + AGE_SUFFIX not in names else flat + AGE_SUFFIX


def sealed_part_problems(artifact: Artifact, store: str) -> list[str]:
    """What can be checked of an encrypted part without a key: each file's age header (its bytes are the
    checksum check's)."""
    by_name = {f.name: f for f in artifact.manifest.files}
    problems = []
    for flat in (artifact.manifest.markers.get("stores") or {}).get(store, {}).get("files", {}).values():
        record = by_name.get(stored_name(artifact, flat))
        if record is None:
            problems.append(f"{flat} is not listed in the full system manifest")
        elif record.encrypted:
            problems += age_header_problems(artifact.path(record.name), len(record.recipients))
    return problems


def verify_part(artifact: Artifact, store: str, open_store: OpenStore) -> Verification:
    """`store`'s own check of its part; `artifact` is plaintext (or its decrypted view, Catalog.plaintext)."""
    try:
        adapter = open_store(store)
        with store_view(artifact, store) as view:
            return adapter.verify(view)
    except CbBackupsError as exc:
        return Verification(False, [str(exc)])
    except Exception as exc:
        return Verification(False, [f"{type(exc).__name__}: {exc}"])


def verify_parts(catalog: Catalog, artifact: Artifact, names: list[str], open_store: OpenStore
                 ) -> dict[str, Verification]:
    """Each store's check of its part, all at once. An encrypted backup is decrypted once (authenticated,
    plaintext sha256 checked) when an identity is configured; without one, only what needs no key."""
    if artifact.manifest.encrypted and not catalog.encryption.identity_files:
        note = {"encrypted": "age, plaintext not checked (no CB_AGE_IDENTITY_FILE)"}
        return {n: Verification(not (p := sealed_part_problems(artifact, n)), p, note) for n in names}
    try:
        with (catalog.plaintext(artifact) as plain,
              ThreadPoolExecutor(max_workers=max(len(names), 1), thread_name_prefix="cb-full-verify") as pool):
            return dict(zip(names, pool.map(lambda n: verify_part(plain, n, open_store), names), strict=True))
    except CbBackupsError as exc:  # a wrong identity or a ciphertext that does not decrypt: every part fails
        return {n: Verification(False, [str(exc)]) for n in names}


def evaluate_full(catalog: Catalog, key: str, open_store: OpenStore) -> tuple[Artifact | None, list[Outcome]]:
    """The three checks of one full system backup; records the overall verification beside it."""
    artifact = catalog.get(FULL_SYSTEM, key)
    if artifact is None:
        missing = f"no complete full system backup for slot {key} (no manifest)"
        return None, [Outcome(name, False, missing) for name in FULL_CHECKS]
    markers = artifact.manifest.markers
    failed: dict[str, str] = markers.get("failed") or {}
    skipped: dict[str, str] = markers.get("skipped") or {}
    parts: dict[str, Any] = markers.get("stores") or {}
    configured: list[str] = markers.get("configured") or sorted(parts)
    names = stores_in(artifact)

    absent = []
    for name in configured:
        if name in failed:
            absent.append(f"{name} missing ({failed[name]})")
        elif name not in parts:
            absent.append(f"{name} missing (not in the manifest)")
        else:
            stored = [stored_name(artifact, flat) for flat in parts[name]["files"].values()]
            empty = [flat for flat in stored
                     if not artifact.path(flat).is_file() or artifact.path(flat).stat().st_size == 0]
            if empty:
                absent.append(f"{name}: missing or empty: {', '.join(empty)}")
    skipped_text = f"; skipped (not configured): {', '.join(skipped)}" if skipped else ""
    present = Outcome("all_stores_present", not absent,
                      ("; ".join(absent) if absent else f"all {len(configured)} configured stores present: "
                       f"{', '.join(names)}") + skipped_text,
                      {"present": ", ".join(names), "failed": ", ".join(failed), "skipped": ", ".join(skipped),
                       "path": str(artifact.directory)})

    results = verify_parts(catalog, artifact, names, open_store)
    bad = [f"{name} failed: {failed[name]}" for name in failed]
    bad += [f"{name} did not verify: {'; '.join(v.problems)}" for name, v in results.items() if not v.ok]
    verified = Outcome("all_stores_verified", not bad,
                       "; ".join(bad) if bad else f"{len(results)} store(s) verified: {', '.join(results)}",
                       {"verified": ", ".join(n for n, v in results.items() if v.ok),
                        "not_verified": ", ".join([*failed, *(n for n, v in results.items() if not v.ok)])})

    sums = checksum_problems(artifact)
    checksum = Outcome("checksum", not sums, "; ".join(sums) or f"all {len(artifact.manifest.files)} sha256 match "
                                                                 "the manifest",
                       {f.name: f.sha256 for f in artifact.manifest.files})
    outcomes = [present, verified, checksum]
    catalog.record_verification(artifact, Verification(all(o.passed for o in outcomes),
                                                       [f"{o.name}: {o.description}" for o in outcomes
                                                        if not o.passed]))
    return artifact, outcomes


# --- Dagster ------------------------------------------------------------------------------------


