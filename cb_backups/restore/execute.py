"""Restores that cannot lose data, and restore drills (no Dagster here).

`plan_restore` says what will happen; `execute_restore` does it, in this order:

1. resolve the backup: a partition key, `safety:<stamp>`, or the newest backup that
   verifies now (`latest-verified`: a newer backup that fails is named and skipped);
   off-site copies are downloaded into a temporary folder and their sha256 checked
   while streaming;
2. verify it (every file's sha256 against the manifest, then the store's own check)
   and check version compatibility -- all BEFORE the target is touched;
3. in place: a SAFETY BACKUP of the current data first (`<store>/_safety/<stamp>`,
   outside normal retention, kept `safety_keep_days`, default 7);
4. `store.restore(...)`;
5. post-restore verification: counts equal the manifest's inventory; the time from
   start to verified is the measured RTO, compared with the runbook's.

A drill (`run_drill`) restores a backup into a scratch target, compares counts,
measures the RTO and removes the scratch target again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cb_backups.config.settings import Settings
from cb_backups.core.catalog import Catalog, checksum_problems, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError, ConfigError, RestoreFailed, RestoreRefused
from cb_backups.core.model import Artifact, Inventory, Progress, Target, Verification, no_progress
from cb_backups.core.specs import spec_for
from cb_backups.stores.base import Store, counts_problems
from cb_backups.stores.registry import open_store

LATEST = "latest-verified"
LATEST_ALIASES = ("latest-verified", "latest")
SAFETY_PREFIX = "safety:"
FULL_PREFIX = "full_system:"  # one store's part of a full system backup
FULL_SYSTEM = "full_system"
SOURCES = ("local", "offsite")
MODES = ("scratch", "in_place")
DEFAULT_SAFETY_KEEP_DAYS = 7
# Runbook "Full Restore Script" order: the critical stores first.
FULL_ORDER = ("postgres", "neo4j", "qdrant", "opensearch", "valkey")
LIST_OPTIONS = ("collections", "indices")
# Scratch targets of a restore job (a drill uses DRILL_* and removes them afterwards).
SCRATCH_DEFAULTS: dict[str, dict[str, Any]] = {"qdrant": {"suffix": "__scratch"}, "opensearch": {"prefix": "scratch_"}}
DRILL_SUFFIX = "__drill"
DRILL_PREFIX = "drill_"
COUNT_SECTIONS = {"postgres": ("tables",), "neo4j": ("labels", "relationships"), "qdrant": ("collections",),
                  "opensearch": ("indices",)}


# --- plans and results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will do; `describe()` is printed before anything happens."""

    store: str
    backup: str  # "latest-verified", a partition key, or "safety:<stamp>"
    source: str  # "local" | "offsite"
    target: Target
    safety_backup: bool
    safety_keep_days: int
    rto_target_seconds: float
    settings: Settings = field(repr=False, compare=False)
    candidates: tuple[str, ...] = ()  # newest first, what latest-verified will try

    def describe(self) -> list[str]:
        spec = spec_for(self.store)
        where = "IN PLACE (replaces the live data)" if self.target.mode == "in_place" else "into a SCRATCH target"
        lines = [f"restore {self.store} ({spec.title}) {where}: {describe_target(self)}"]
        if self.backup == LATEST:
            newest = self.candidates[0] if self.candidates else "none found"
            lines.append(f"  backup: the newest {self.source} backup that verifies now (newest: {newest}; a newer one "
                         "that fails verification is skipped and named)")
        else:
            lines.append(f"  backup: {self.backup} ({self.source})")
        step = 1
        if self.source == "offsite":
            lines.append(f"  {step}. download the off-site copy from s3://{self.settings.s3.bucket}, checking sha256 "
                         "while streaming")
            step += 1
        lines.append(f"  {step}. verify the backup (sha256 of every file, then the store's own check) and version "
                     "compatibility -- before the target is touched")
        step += 1
        if self.target.mode == "in_place":
            if self.safety_backup:
                lines.append(f"  {step}. SAFETY BACKUP of the current {self.store} data into "
                             f"{Catalog(self.settings.backup_dir).store_dir(self.store) / '_safety'}/<stamp> "
                             f"(kept {self.safety_keep_days} days)")
            else:
                lines.append(f"  {step}. NO safety backup (override safety_backup=skip): the current data is lost")
            step += 1
        lines.append(f"  {step}. restore ({RESTORE_METHOD.get(self.store, 'store restore')})")
        lines.append(f"  {step + 1}. compare counts with the backup's manifest; RTO target "
                     f"{_hms(self.rto_target_seconds)} (runbook RTO/RPO summary)")
        return lines


RESTORE_METHOD = {
    "postgres": "pg_restore into a new database, swapped in by rename only after its counts matched",
    "valkey": "stop, place the RDB, start; scratch: a throwaway valkey-server loads the RDB",
    "neo4j": "stop, neo4j-admin database load --overwrite-destination, start",
    "qdrant": "upload each collection snapshot (priority snapshot)",
    "opensearch": "close the indices, _restore from the snapshot repository (scratch: renamed copies)",
}


@dataclass
class RestoreResult:
    store: str
    requested: str
    partition_key: str  # what was restored (a slot, or a safety stamp)
    kind: str  # "backup" | "safety"
    source: str
    mode: str
    artifact_path: str
    expected: Inventory
    counts: Inventory
    problems: list[str]  # count mismatches after the restore
    skipped: list[str]  # newer backups that failed verification: "<key>: <why>"
    notes: list[str]
    safety_backup: str | None
    rto_seconds: float
    rto_target_seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def within_rto(self) -> bool:
        return self.rto_seconds <= self.rto_target_seconds

    def summary(self) -> str:
        state = "restored and verified" if self.ok else "restored, but counts differ: " + "; ".join(self.problems)
        text = (f"{self.store}: {self.kind} {self.partition_key} ({self.source}) {state} {self.mode} in "
                f"{self.rto_seconds:.1f}s (RTO target {_hms(self.rto_target_seconds)}"
                f"{'' if self.within_rto else ', EXCEEDED'})")
        if self.skipped:
            text += "; skipped newer backups that failed verification: " + "; ".join(self.skipped)
        if self.safety_backup:
            text += f"; safety backup of the previous data: {self.safety_backup}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "requested": self.requested, "partition": self.partition_key, "kind": self.kind,
                "source": self.source, "mode": self.mode, "artifact": self.artifact_path, "ok": self.ok,
                "counts": self.counts, "expected": self.expected, "problems": self.problems,
                "skipped": self.skipped, "notes": self.notes, "safety_backup": self.safety_backup,
                "rto_seconds": round(self.rto_seconds, 3), "rto_target_seconds": self.rto_target_seconds,
                "within_rto": self.within_rto}


@dataclass
class FullRestorePlan:
    plans: list[RestorePlan]
    source_note: str

    def describe(self) -> list[str]:
        lines = [f"full system restore ({len(self.plans)} stores, runbook order): {self.source_note}",
                 "  every backup is resolved, verified and version-checked before the first store is touched"]
        for plan in self.plans:
            lines += ["  " + line for line in plan.describe()]
        return lines


@dataclass
class FullRestoreResult:
    results: list[RestoreResult]
    failed: dict[str, str]  # store -> error
    rto_seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and all(r.ok for r in self.results)


# --- planning ------------------------------------------------------------------------------------------------


def plan_restore(settings: Settings, store: str, backup: str = LATEST, source: str = "local",
                 target: Target | None = None) -> RestorePlan:
    """Validate the request (ConfigError names the bad value) and say what will happen."""
    spec = spec_for(store)
    settings.store(store)  # ConfigError when not configured
    if source not in SOURCES:
        raise ConfigError("restore source", source, ", ".join(SOURCES))
    target = target or Target("scratch")
    if target.mode not in MODES:
        raise ConfigError("restore target", target.mode, "scratch, in_place")
    if source == "offsite" and not settings.s3.enabled:
        raise ConfigError("restore source", source, "local (no S3 bucket configured: set CB_S3_BUCKET)")
    options = dict(target.options)
    safety = str(options.pop("safety_backup", "yes")).lower() not in ("skip", "no", "false", "0")
    keep_days = _keep_days(options.pop("safety_keep_days", None), settings)
    options = {k: _option(k, v) for k, v in options.items()}
    if target.mode == "scratch":
        options = {**SCRATCH_DEFAULTS.get(store, {}), **options}
    catalog = Catalog(settings.backup_dir)
    backup = LATEST if backup in LATEST_ALIASES else backup
    candidates: tuple[str, ...] = ()
    if backup == LATEST:
        if source == "local":
            candidates = tuple(a.partition_key for a in reversed(catalog.list(store)))
    elif backup.startswith(FULL_PREFIX):
        from cb_backups.core.partitions import parse_slot, weekly_sunday_0100

        full_key = backup[len(FULL_PREFIX):]
        parse_slot(weekly_sunday_0100, full_key)
        if store not in full_system_stores(settings, full_key, source):
            raise ConfigError("full system backup", full_key, f"one that holds a {store} backup")
    elif backup.startswith(SAFETY_PREFIX):
        if source != "local":
            raise ConfigError("restore source", source, "local (safety backups are never copied off-site)")
        catalog.require(store, backup[len(SAFETY_PREFIX):], kind="safety")
    else:
        from cb_backups.core.partitions import parse_slot

        parse_slot(spec.partitions, backup)
        if source == "local":
            catalog.require(store, backup)
    return RestorePlan(store=store, backup=backup, source=source, target=Target(target.mode, options),
                       safety_backup=safety, safety_keep_days=keep_days,
                       rto_target_seconds=spec.rto / timedelta(seconds=1), settings=settings, candidates=candidates)


def plan_full_restore(settings: Settings, backup: str = LATEST, source: str = "local",
                      target: Target | None = None) -> FullRestorePlan:
    """One plan per configured store, in the runbook's order.

    `backup` is "latest-verified" (each store's newest backup that verifies) or the key of a
    full system backup, whose manifest names the slot of each store.
    """
    target = target or Target("in_place")
    stores = [s for s in FULL_ORDER if s in settings.configured_stores()]
    if not stores:
        raise ConfigError("stores to restore", "none configured", "set CB_POSTGRES_URL, CB_VALKEY_URL, ...")
    backup = LATEST if backup in LATEST_ALIASES else backup
    note = "each store's newest backup that verifies now"
    member = LATEST
    if backup != LATEST:
        held = full_system_stores(settings, backup, source)
        missing = [s for s in stores if s not in held]
        if missing:
            raise ConfigError("full system backup", backup, f"one that holds {', '.join(missing)} too "
                                                            f"(it holds {', '.join(held) or 'nothing'})")
        note = f"the full system backup {backup}"
        member = FULL_PREFIX + backup
    plans = [plan_restore(settings, s, member, source, target) for s in stores]
    return FullRestorePlan(plans, note)


def full_system_stores(settings: Settings, key: str, source: str = "local") -> list[str]:
    """The stores a full system backup (`<backup_dir>/full_system/<key>`, cb_backups.full_system) holds."""
    if source != "local":
        return list(FULL_ORDER)  # read from the downloaded manifest when the restore runs
    from cb_backups.full_system.backup import stores_in

    catalog = Catalog(settings.backup_dir)
    artifact = catalog.get(FULL_SYSTEM, key)
    if artifact is None:
        known = ", ".join(a.partition_key for a in catalog.list(FULL_SYSTEM)[-5:]) or "none"
        raise ConfigError("full system backup", key, f"latest-verified or an existing one; newest are: {known}")
    return stores_in(artifact)


def describe_target(plan: RestorePlan) -> str:
    s, options = plan.settings, plan.target.options
    if plan.store == "postgres":
        pg = s.postgres
        assert pg is not None
        db = options.get("dbname") or (pg.dbname if plan.target.mode == "in_place" else f"{pg.dbname}__scratch")
        return f"database {db} on {pg.host}:{pg.port}"
    if plan.store == "valkey":
        vk = s.valkey
        assert vk is not None
        if plan.target.mode == "scratch":
            return "a throwaway valkey-server on a free loopback port (loaded, counted, stopped)"
        return f"the server at {vk.host}:{vk.port} (data folder {vk.data_dir})"
    if plan.store == "qdrant":
        qd = s.qdrant
        assert qd is not None
        from cb_backups.stores.qdrant import redact_url

        if plan.target.mode == "scratch":
            return f"collections <name>{options.get('suffix', DRILL_SUFFIX)} at {redact_url(qd.url)}"
        return f"the collections at {redact_url(qd.url)}"
    if plan.store == "opensearch":
        osr = s.opensearch
        assert osr is not None
        if plan.target.mode == "scratch":
            return f"indices {options.get('prefix', DRILL_PREFIX)}<name> at {osr.url.split('@')[-1]}"
        return f"the indices at {osr.url.split('@')[-1]}"
    neo = s.neo4j
    assert neo is not None
    from cb_backups.stores.neo4j import safe_uri

    return f"database {options.get('database', neo.database)} at {safe_uri(str(options.get('uri', neo.uri)))}"


# --- execution -----------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    plan: RestorePlan
    store: Store
    artifact: Artifact
    skipped: list[str]
    notes: list[str]
    origin: str  # where the backup came from (shown in results)


def execute_restore(plan: RestorePlan, progress: Progress = no_progress) -> RestoreResult:
    """Resolve, verify, check versions, take the safety backup, restore, verify counts, measure the RTO."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        prepared = _prepare(plan, progress, stack, {})
        return _apply(prepared, progress, started)


def execute_full_restore(full: FullRestorePlan, progress: Progress = no_progress) -> FullRestoreResult:
    """Prepare (resolve + verify + version-check) every store first; then restore them one by one.

    A store that fails to restore does not stop the others (each keeps its safety backup);
    the result names every failure.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cache: dict[str, Artifact] = {}
        prepared = [_prepare(plan, progress, stack, cache) for plan in full.plans]
        results, failed = [], {}
        for item in prepared:
            progress(f"full system restore: {item.plan.store}", len(results) + len(failed), len(prepared))
            try:
                results.append(_apply(item, progress, time.monotonic()))
            except CbBackupsError as exc:
                failed[item.plan.store] = str(exc)
                progress(f"full system restore: {exc}", len(results) + len(failed), len(prepared))
        return FullRestoreResult(results, failed, time.monotonic() - started)


def _prepare(plan: RestorePlan, progress: Progress, stack: contextlib.ExitStack,
             cache: dict[str, Artifact]) -> _Prepared:
    store = open_store(plan.store, plan.settings)
    skipped: list[str] = []
    notes: list[str] = []
    if plan.backup.startswith(FULL_PREFIX):
        full, artifact = _resolve_full(plan, store, progress, stack, cache)
        origin = f"{full.directory} ({plan.store} part)"
    else:
        artifact = _resolve(plan, store, progress, stack, skipped)
        origin = str(artifact.directory) if plan.source == "local" else f"s3 copy of {artifact.partition_key}"
    if skipped:
        notes.append(f"latest-verified fell back to {artifact.partition_key}: the newer backup(s) failed "
                     "verification: " + "; ".join(skipped))
        progress(notes[-1], 0, None)
    problems = compatibility_problems(store, artifact, plan.target)
    if problems:
        raise RestoreRefused(plan.store, f"{artifact.partition_key} is not compatible with the target: "
                                         + "; ".join(problems))
    return _Prepared(plan, store, artifact, skipped, notes, origin)


def _apply(prepared: _Prepared, progress: Progress, started: float) -> RestoreResult:
    plan, store, artifact = prepared.plan, prepared.store, prepared.artifact
    catalog = Catalog(plan.settings.backup_dir)
    safety: Artifact | None = None
    if plan.target.mode == "in_place" and plan.safety_backup:
        progress(f"{plan.store}: safety backup of the current data", 0, None)
        try:
            safety = take_safety_backup(catalog, store, progress)
        except CbBackupsError as exc:
            raise RestoreRefused(plan.store, f"the safety backup of the current data failed, so nothing was "
                                             f"restored: {exc}. If the data is already lost, run again with the "
                                             "override safety_backup=skip") from None
        prepared.notes.append(f"safety backup: {safety.directory} (undo with: cb-backups restore {plan.store} "
                              f"--backup {SAFETY_PREFIX}{safety.partition_key} --target in-place)")
        progress(prepared.notes[-1], 0, None)
    progress(f"{plan.store}: restoring {artifact.partition_key} ({plan.target.mode})", 0, None)
    try:
        restored = store.restore(artifact, plan.target, progress)
        if plan.target.mode == "in_place" and not set(plan.target.options) & {"dbname", "uri", "database"}:
            restored = store.inventory()  # counted again on the live target, independently of the adapter
    except RestoreRefused:
        raise
    except CbBackupsError as exc:
        if safety is None:
            raise
        raise RestoreFailed(plan.store, f"{exc}; the data from before the restore is kept in the safety backup "
                                        f"{safety.directory} (cb-backups restore {plan.store} --backup "
                                        f"{SAFETY_PREFIX}{safety.partition_key} --target in-place)") from None
    expected = artifact.manifest.inventory
    counts = restored_counts(plan.store, restored, plan.target)
    problems = compare_counts(plan.store, expected, counts, plan.target)
    rto = time.monotonic() - started
    if safety is not None:
        pruned = prune_safety(catalog, plan.store, plan.safety_keep_days, deleter=safety_deleter(store),
                              keep={safety.partition_key})
        if pruned:
            prepared.notes.append(f"removed {len(pruned)} safety backup(s) older than {plan.safety_keep_days} days")
    result = RestoreResult(
        store=plan.store, requested=plan.backup, partition_key=artifact.partition_key,
        kind=FULL_SYSTEM if plan.backup.startswith(FULL_PREFIX) else artifact.manifest.kind,
        source=plan.source, mode=plan.target.mode, artifact_path=prepared.origin, expected=expected,
        counts=counts, problems=problems, skipped=prepared.skipped, notes=prepared.notes,
        safety_backup=str(safety.directory) if safety else None, rto_seconds=rto,
        rto_target_seconds=plan.rto_target_seconds)
    progress(result.summary(), 1, 1)
    return result


def verify_artifact(store: Store, artifact: Artifact) -> Verification:
    """sha256 of every file against the manifest, then the store's own integrity check."""
    problems = checksum_problems(artifact)
    if problems:
        return Verification(False, problems)
    try:
        return store.verify(artifact)
    except CbBackupsError as exc:
        return Verification(False, [str(exc)])


def _resolve(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
             skipped: list[str]) -> Artifact:
    catalog = Catalog(plan.settings.backup_dir)

    def skip(artifact: Artifact, problems: list[str]) -> None:
        skipped.append(f"{artifact.partition_key}: {'; '.join(problems)}")
        progress(f"{plan.store}: backup {artifact.partition_key} failed verification, trying an older one: "
                 f"{'; '.join(problems)}", 0, None)

    if plan.source == "offsite":
        return _resolve_offsite(plan, store, progress, stack, skip)
    if plan.backup == LATEST:
        progress(f"{plan.store}: looking for the newest backup that verifies", 0, None)
        artifact = catalog.latest_verified(plan.store, verify=lambda a: verify_artifact(store, a), on_skip=skip)
        if artifact is None:
            tried = f" (tried: {'; '.join(skipped)})" if skipped else " (the catalog holds none)"
            raise RestoreRefused(plan.store, f"no backup in {catalog.store_dir(plan.store)} verifies{tried}")
        return artifact
    if plan.backup.startswith(SAFETY_PREFIX):
        artifact = catalog.require(plan.store, plan.backup[len(SAFETY_PREFIX):], kind="safety")
    else:
        artifact = catalog.require(plan.store, plan.backup)
    verification = verify_artifact(store, artifact)
    if artifact.manifest.kind == "backup":
        catalog.record_verification(artifact, verification)
    if not verification.ok:
        raise RestoreRefused(plan.store, f"backup {artifact.partition_key} failed verification: "
                                         + "; ".join(verification.problems))
    return artifact


def _resolve_offsite(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
                     skip: Callable[[Artifact, list[str]], None]) -> Artifact:
    from cb_backups.offsite import s3 as offsite

    target = offsite.S3Target(plan.settings.s3)
    keys = [plan.backup] if plan.backup != LATEST else list(reversed(offsite.list_offsite(plan.store, target)))
    if not keys:
        raise RestoreRefused(plan.store, f"no off-site copy in s3://{target.bucket}/{target.folder(plan.store)}")
    tried: list[str] = []
    for key in keys:
        folder = stack.enter_context(_download_dir(plan.settings.backup_dir, plan.store, key))
        progress(f"{plan.store}: downloading the off-site copy of {key}", 0, None)
        try:
            offsite.download_artifact(plan.store, key, target, folder, progress)
        except CbBackupsError as exc:
            if plan.backup != LATEST:
                raise RestoreRefused(plan.store, f"off-site copy of {key}: {exc}") from None
            tried.append(f"{key}: {exc}")
            progress(f"{plan.store}: off-site copy of {key} failed, trying an older one: {exc}", 0, None)
            continue
        artifact = Catalog(folder.parent).load(folder)
        assert artifact is not None  # download_artifact writes the manifest last
        verification = verify_artifact(store, artifact)
        if verification.ok:
            return artifact
        if plan.backup != LATEST:
            raise RestoreRefused(plan.store, f"off-site copy of {key} failed verification: "
                                             + "; ".join(verification.problems))
        skip(artifact, verification.problems)
    raise RestoreRefused(plan.store, "no off-site copy verifies: " + "; ".join(tried) if tried else
                         f"no off-site copy of {plan.store} verifies")


def _resolve_full(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
                  cache: dict[str, Artifact]) -> tuple[Artifact, Artifact]:
    """(the full system backup, this store's part of it as its own verified Artifact)."""
    from cb_backups.full_system.backup import store_view, stores_in

    key = plan.backup[len(FULL_PREFIX):]
    full = cache.get(key)
    if full is None:
        if plan.source == "offsite":
            from cb_backups.offsite import s3 as offsite

            folder = stack.enter_context(_download_dir(plan.settings.backup_dir, FULL_SYSTEM, key))
            progress(f"downloading the off-site copy of full system backup {key}", 0, None)
            try:
                offsite.download_artifact(FULL_SYSTEM, key, offsite.S3Target(plan.settings.s3), folder, progress)
            except CbBackupsError as exc:
                raise RestoreRefused(plan.store, f"off-site copy of full system backup {key}: {exc}") from None
            loaded = Catalog(folder.parent).load(folder)
            assert loaded is not None
            full = loaded
        else:
            full = Catalog(plan.settings.backup_dir).require(FULL_SYSTEM, key)
        cache[key] = full
    if plan.store not in stores_in(full):
        raise RestoreRefused(plan.store, f"full system backup {key} holds no {plan.store} backup "
                                         f"(it holds {', '.join(stores_in(full)) or 'nothing'})")
    view = stack.enter_context(store_view(full, plan.store))
    verification = verify_artifact(store, view)
    if not verification.ok:
        raise RestoreRefused(plan.store, f"the {plan.store} part of full system backup {key} failed verification: "
                                         + "; ".join(verification.problems))
    return full, view


@contextlib.contextmanager
def _download_dir(backup_dir: Path, store: str, key: str) -> Iterator[Path]:
    """A private folder on the backup disk (hidden from the catalog), removed afterwards."""
    base = Path(backup_dir)
    base.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix=f".restore-{store}-", dir=base))
    try:
        yield parent / key
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# --- versions --------------------------------------------------------------------------------------------------


def compatibility_problems(store: Store, artifact: Artifact, target: Target) -> list[str]:
    """Can the target load this backup? Runs before anything is touched."""
    versions = artifact.manifest.versions
    try:
        if store.name == "postgres":
            return store.check_compatible(artifact)  # type: ignore[attr-defined]
        if store.name == "valkey":
            return _valkey_problems(store, artifact, target)
        if store.name == "neo4j":
            wanted = versions.get("neo4j")
            have, source = store._for_target(target).server_version()  # type: ignore[attr-defined]
            if have is None:
                return ["cannot tell the target's Neo4j version"]
            return [] if wanted == have else [f"the backup is from Neo4j {wanted}, the target runs {have} "
                                              f"({source}); Neo4j needs the exact same version"]
        if store.name == "qdrant":
            from cb_backups.stores.qdrant import major_minor

            have = store.server_version()  # type: ignore[attr-defined]
            source, dest = major_minor(versions.get("qdrant", "")), major_minor(have)
            if source and dest and dest < source:
                return [f"the backup is from Qdrant {versions['qdrant']}, the target runs {have}, which cannot "
                        "load newer snapshots"]
            return []
        if store.name == "opensearch" and versions.get("opensearch"):
            have = store.server_version()  # type: ignore[attr-defined]
            src, dst = _version_tuple(versions["opensearch"]), _version_tuple(have)
            if dst < src:
                return [f"the snapshot is from OpenSearch {versions['opensearch']}, the target runs {have} (older)"]
            if dst[0] > src[0] + 1:
                return [f"the snapshot is from OpenSearch {versions['opensearch']}; {have} reads snapshots of the "
                        "previous major version at most"]
    except CbBackupsError as exc:
        return [f"cannot check versions: {exc}"]
    return []


def _valkey_problems(store: Store, artifact: Artifact, target: Target) -> list[str]:
    from cb_backups.stores.valkey import MAX_RDB_VERSION, RDB_FILE, rdb_header

    if target.mode == "in_place":
        return store.check_compatible(artifact, store.client())  # type: ignore[attr-defined]
    # scratch: the valkey-server next to the configured tools loads it
    server = store._tool("valkey-server")  # type: ignore[attr-defined]
    try:
        out = subprocess.run([server, "--version"], capture_output=True, timeout=30, check=False).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return [f"{server} not found (set CB_VALKEY_BIN_DIR)"]
    version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "0")
    major = int(version.split(".")[0] or 0)
    _, rdb = rdb_header(artifact.path(RDB_FILE))
    if rdb > MAX_RDB_VERSION.get(major, 0):
        return [f"RDB version {rdb} cannot be loaded by Valkey {version}"]
    return []


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# --- counts ------------------------------------------------------------------------------------------------------


def restored_counts(store: str, restored: Inventory, target: Target) -> Inventory:
    """The adapter's inventory under the backup's names (scratch copies renamed back)."""
    if store == "qdrant" and target.mode == "scratch":
        suffix = str(target.options.get("suffix", DRILL_SUFFIX))
        return {"collections": {k[: -len(suffix)] if k.endswith(suffix) else k: v
                                for k, v in restored.get("collections", {}).items()}}
    return restored


def compare_counts(store: str, expected: Inventory, actual: Inventory, target: Target | None = None) -> list[str]:
    """Post-restore verification: counts equal the manifest's inventory (runbook checklist)."""
    if store == "valkey":
        from cb_backups.stores.valkey import keys_problems

        return keys_problems(expected, actual)
    sections = COUNT_SECTIONS.get(store)
    wanted = (target.options.get("collections") or target.options.get("indices")) if target else None
    expected = {s: {k: v for k, v in names.items() if not wanted or k in wanted} for s, names in expected.items()}
    if target is not None and target.mode == "in_place" and store in ("qdrant", "opensearch"):
        # the live server may hold collections/indices the backup never had; only ours count
        actual = {s: {k: v for k, v in names.items() if k in expected.get(s, {})} for s, names in actual.items()}
    return counts_problems(expected, actual, sections=sections)


# --- safety backups ----------------------------------------------------------------------------------------------


def safety_stamp() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]


def take_safety_backup(catalog: Catalog, store: Store, progress: Progress = no_progress) -> Artifact:
    """A backup of the target's current data, under `<store>/_safety/<stamp>` (outside normal retention)."""
    return catalog.write(store.name, safety_stamp(), lambda into: store.backup(into, progress), kind="safety")


def safety_deleter(store: Store) -> Callable[[Artifact], None] | None:
    """What must be released besides the folder (OpenSearch keeps its data in the snapshot repository)."""
    if store.name != "opensearch":
        return None

    def delete(artifact: Artifact) -> None:
        path = artifact.path("snapshot.json")
        if path.is_file():
            store.delete_snapshot(json.loads(path.read_text())["snapshot"])  # type: ignore[attr-defined]

    return delete


def prune_safety(catalog: Catalog, store: str, keep_days: int = DEFAULT_SAFETY_KEEP_DAYS,
                 deleter: Callable[[Artifact], None] | None = None, keep: set[str] | None = None) -> list[Path]:
    """Remove safety backups finished more than `keep_days` ago; returns the removed folders."""
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


def _keep_days(value: Any, settings: Settings) -> int:
    if value is None:
        value = os.environ.get("CB_SAFETY_KEEP_DAYS") or (settings.raw.get("restore") or {}).get(
            "safety_keep_days", DEFAULT_SAFETY_KEEP_DAYS)
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise ConfigError("safety_keep_days", value, "a whole number of days >= 0") from None
    if days < 0:
        raise ConfigError("safety_keep_days", value, "a whole number of days >= 0")
    return days


def _option(key: str, value: Any) -> Any:
    """Overrides arrive as text (Dagster config, CLI): lists for collections/indices, numbers for jobs."""
    if key in LIST_OPTIONS and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if key == "jobs" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ConfigError("override jobs", value, "a whole number of pg_restore workers") from None
    return value


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


# --- drills ---------------------------------------------------------------------------------------------------------


@dataclass
class Scratch:
    """The scratch target of a drill, handed to `between` (tests) before the counts are taken."""

    store: Store
    target: Target
    port: int | None = None  # valkey: the scratch server's port
    names: dict[str, str] = field(default_factory=dict)  # backup name -> scratch name


@dataclass
class DrillResult:
    store: str
    partition_key: str | None
    passed: bool
    description: str
    mode: str  # "restore" | "check-only"
    expected: Inventory = field(default_factory=dict)
    counts: Inventory = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    rto_seconds: float | None = None
    rto_target_seconds: float = 0.0
    scratch: str = ""

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"mode": self.mode, "scratch_target": self.scratch,
                                "rto_target_seconds": self.rto_target_seconds}
        if self.partition_key:
            meta["restored_partition"] = self.partition_key
        if self.rto_seconds is not None:
            meta["rto_seconds"] = round(self.rto_seconds, 3)
            meta["within_rto"] = self.rto_seconds <= self.rto_target_seconds
        for section, names in self.counts.items():
            if section in ("estimates", "expires"):
                continue
            for name, count in names.items():
                meta[f"count/{section}/{name}"] = count
        return meta


def neo4j_scratch_options(settings: Settings, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A separate scratch Neo4j server for drills: CB_NEO4J_SCRATCH_URI (+ _ADMIN/_STOP/_START) or the
    `drills: {neo4j: {uri, admin_command, stop_command, start_command}}` section of the config file."""
    env = dict(os.environ if env is None else env)
    options = dict((settings.raw.get("drills") or {}).get("neo4j") or {})
    for key, var in (("uri", "CB_NEO4J_SCRATCH_URI"), ("admin_command", "CB_NEO4J_SCRATCH_ADMIN"),
                     ("stop_command", "CB_NEO4J_SCRATCH_STOP"), ("start_command", "CB_NEO4J_SCRATCH_START"),
                     ("dump_dir", "CB_NEO4J_SCRATCH_DUMP_DIR")):
        if env.get(var):
            options[key] = env[var]
    return options


def run_drill(settings: Settings, store_name: str, partition_key: str | None = None,
              between: Callable[[Scratch], None] | None = None, progress: Progress = no_progress) -> DrillResult:
    """Restore a backup into a scratch target, compare counts with its manifest, drop the scratch target.

    `partition_key` None drills the newest backup. `between` is a TEST HOOK called after the
    restore and before the counts are taken (e.g. to tamper with the scratch data).
    """
    spec = spec_for(store_name)
    rto_target = spec.rto / timedelta(seconds=1)
    started = time.monotonic()
    store = open_store(store_name, settings)
    catalog = Catalog(settings.backup_dir)
    artifact = catalog.get(store_name, partition_key) if partition_key else (catalog.list(store_name) or [None])[-1]
    if artifact is None:
        what = f"slot {partition_key}" if partition_key else "any slot"
        return DrillResult(store_name, partition_key, False, f"no complete {store_name} backup for {what}",
                           "restore", rto_target_seconds=rto_target)
    key = artifact.partition_key
    verification = verify_artifact(store, artifact)
    if not verification.ok:
        return DrillResult(store_name, key, False, "the backup did not verify: " + "; ".join(verification.problems),
                           "restore", rto_target_seconds=rto_target)
    target = _drill_target(store_name, settings, artifact)
    if target is None:  # neo4j without a scratch server
        check = verification.details.get("check", "not run")
        return DrillResult(store_name, key, True,
                           f"check only: the dump verified (neo4j-admin check {check}); no scratch Neo4j server is "
                           "configured (CB_NEO4J_SCRATCH_URI), so no load was drilled", "check-only",
                           rto_target_seconds=rto_target, scratch="none")
    problems = compatibility_problems(store, artifact, target)
    if problems:
        return DrillResult(store_name, key, False, "not compatible with the scratch target: " + "; ".join(problems),
                           "restore", rto_target_seconds=rto_target)
    scratch = Scratch(store, target)
    try:
        with _scratch_restore(store, artifact, scratch, progress):
            if between is not None:
                between(scratch)
            counts = restored_counts(store_name, _count_scratch(scratch, artifact), target)
            rto = time.monotonic() - started
    except CbBackupsError as exc:
        return DrillResult(store_name, key, False, f"the scratch restore failed: {exc}", "restore",
                           rto_target_seconds=rto_target, scratch=_scratch_name(scratch))
    expected = artifact.manifest.inventory
    mismatch = compare_counts(store_name, expected, counts, target)
    text = (f"restored {key} into {_scratch_name(scratch)} in {rto:.1f}s (RTO target {_hms(rto_target)}); "
            + ("counts equal the manifest" if not mismatch else "counts differ: " + "; ".join(mismatch))
            + "; scratch target removed")
    return DrillResult(store_name, key, not mismatch, text, "restore", expected, counts, mismatch, rto, rto_target,
                       _scratch_name(scratch))


def _drill_target(store: str, settings: Settings, artifact: Artifact) -> Target | None:
    if store == "postgres":
        assert settings.postgres is not None
        return Target("scratch", {"dbname": f"{settings.postgres.dbname[:50]}{DRILL_SUFFIX}"})
    if store == "qdrant":
        return Target("scratch", {"suffix": DRILL_SUFFIX})
    if store == "opensearch":
        return Target("scratch", {"prefix": DRILL_PREFIX})
    if store == "neo4j":
        options = neo4j_scratch_options(settings)
        return Target("scratch", options) if options.get("uri") else None
    return Target("scratch")


@contextlib.contextmanager
def _scratch_restore(store: Store, artifact: Artifact, scratch: Scratch, progress: Progress) -> Iterator[None]:
    """Restore into the scratch target; always remove it afterwards."""
    name, target = store.name, scratch.target
    if name == "valkey":
        with store.scratch_server(artifact) as port:  # type: ignore[attr-defined]
            scratch.port = port
            yield
        return
    if name == "opensearch":
        store.drop_scratch(artifact, target)  # type: ignore[attr-defined]  # leftovers of an interrupted drill
    try:
        restored = store.restore(artifact, target, progress)
        if name == "qdrant":
            suffix = str(target.options["suffix"])
            scratch.names = {k[: -len(suffix)]: k for k in restored.get("collections", {})}
        yield
    finally:
        with contextlib.suppress(CbBackupsError):
            _drop_scratch(store, artifact, scratch)


def _drop_scratch(store: Store, artifact: Artifact, scratch: Scratch) -> None:
    target = scratch.target
    if store.name == "postgres":
        store.drop_database(target.options["dbname"])  # type: ignore[attr-defined]
    elif store.name == "qdrant":
        suffix = str(target.options["suffix"])
        names = list(scratch.names.values()) or [c + suffix for c in artifact.manifest.inventory.get("collections", {})]
        store.drop_collections(names)  # type: ignore[attr-defined]
    elif store.name == "opensearch":
        store.drop_scratch(artifact, target)  # type: ignore[attr-defined]


def _count_scratch(scratch: Scratch, artifact: Artifact) -> Inventory:
    """Count what the scratch target holds NOW (not what the adapter reported while restoring)."""
    store, target = scratch.store, scratch.target
    if store.name == "postgres":
        with store.connect(target.options["dbname"]) as conn:  # type: ignore[attr-defined]
            return store._count(conn)  # type: ignore[attr-defined,no-any-return]
    if store.name == "valkey":
        return store._inventory(store.client(port=scratch.port))  # type: ignore[attr-defined,no-any-return]
    if store.name == "qdrant":
        return {"collections": {dest: store.count(dest) for dest in scratch.names.values()}}  # type: ignore[attr-defined]
    if store.name == "opensearch":
        prefix = str(target.options["prefix"])
        names = list(artifact.manifest.inventory.get("indices", {}))
        counts = store._counts([prefix + n for n in names])  # type: ignore[attr-defined]
        return {"indices": {n: counts[prefix + n] for n in names}}
    return store._for_target(target).inventory()  # type: ignore[attr-defined,no-any-return]


def _scratch_name(scratch: Scratch) -> str:
    options = scratch.target.options
    if scratch.store.name == "postgres":
        return f"database {options.get('dbname')}"
    if scratch.store.name == "valkey":
        return f"scratch valkey-server (port {scratch.port})" if scratch.port else "scratch valkey-server"
    if scratch.store.name == "qdrant":
        return f"collections *{options.get('suffix')}"
    if scratch.store.name == "opensearch":
        return f"indices {options.get('prefix')}*"
    from cb_backups.stores.neo4j import safe_uri

    return f"scratch Neo4j at {safe_uri(str(options.get('uri')))}"
