"""Restores that cannot lose data (no Dagster here).

`execute_restore` carries out a `RestorePlan` (restore.plan), in this order:

1. resolve the backup: a partition key, `safety:<stamp>`, `full_system:<key>`, or the newest
   backup that verifies now (`latest-verified`: a newer backup that fails is named and skipped);
   off-site copies are downloaded into a temporary folder and their sha256 checked while streaming;
2. verify it (every file's sha256 against the manifest, then the store's own check) and check
   compatibility (`Store.compatibility`) -- all BEFORE the target is touched;
3. in place: a SAFETY BACKUP of the current data first (restore.safety);
4. `store.restore(...)`;
5. post-restore verification: counts (counted again on the live target) against the manifest's
   inventory with the store's own tolerance (`Store.compare_counts`); the time from start to
   verified is the measured RTO, compared with the runbook's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cb_backups.core.catalog import MANIFEST, Catalog, checksum_problems, seal_problems
from cb_backups.core.crypto import IdentityMismatch
from cb_backups.core.errors import CbBackupsError, RestoreFailed, RestoreRefused, StoreUnavailable
from cb_backups.core.fileio import as_disk_full, sha256_file
from cb_backups.core.model import Artifact, Inventory, Progress, Verification, no_progress
from cb_backups.core.specs import FULL_SYSTEM
from cb_backups.full_system.backup import store_view, stores_in
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import versions as offsite_versions
from cb_backups.restore.decrypt import Plaintexts
from cb_backups.restore.journal import CLOSED, RESTORING, journaled
from cb_backups.restore.plan import FULL_PREFIX, LATEST, SAFETY_PREFIX, FullRestorePlan, RestorePlan, hms
from cb_backups.restore.safety import prune_safety, take_safety_backup
from cb_backups.stores.base import DRILL, Store, kept_aside, prune_kept_aside, quiesced, stage_verifies, staged
from cb_backups.stores.registry import open_store

# Overrides that point an in-place restore somewhere else than the live target the adapter counts.
ELSEWHERE_OPTIONS = {"dbname", "uri", "database"}


@dataclass
class RestoreResult:
    store: str
    requested: str
    partition_key: str  # what was restored (a slot, or a safety stamp)
    kind: str  # "backup" | "safety" | "full_system"
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
    kept_aside: list[str] = field(default_factory=list)  # what in-place restores keep aside now, this one's too

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def within_rto(self) -> bool:
        return self.rto_seconds <= self.rto_target_seconds

    def summary(self) -> str:
        state = "restored and verified" if self.ok else "restored, but counts differ: " + "; ".join(self.problems)
        text = (f"{self.store}: {self.kind} {self.partition_key} ({self.source}) {state} {self.mode} in "
                f"{self.rto_seconds:.1f}s (RTO target {hms(self.rto_target_seconds)}"
                f"{'' if self.within_rto else ', EXCEEDED'})")
        if self.skipped:
            text += "; skipped newer backups that failed verification: " + "; ".join(self.skipped)
        if self.safety_backup:
            text += f"; safety backup of the previous data: {self.safety_backup}"
        if self.kept_aside:
            text += "; kept aside: " + "; ".join(self.kept_aside)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "requested": self.requested, "partition": self.partition_key, "kind": self.kind,
                "source": self.source, "mode": self.mode, "artifact": self.artifact_path, "ok": self.ok,
                "counts": self.counts, "expected": self.expected, "problems": self.problems,
                "skipped": self.skipped, "notes": self.notes, "safety_backup": self.safety_backup,
                "kept_aside": self.kept_aside, "rto_seconds": round(self.rto_seconds, 3),
                "rto_target_seconds": self.rto_target_seconds,
                "within_rto": self.within_rto}


@dataclass
class FullRestoreResult:
    results: list[RestoreResult]
    failed: dict[str, str]  # store -> error
    rto_seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and all(r.ok for r in self.results)


@dataclass
class _Prepared:
    plan: RestorePlan
    store: Store
    artifact: Artifact
    skipped: list[str]
    notes: list[str]
    origin: str  # where the backup came from (shown in results)
    staged: bool = False  # `stage` already verified it and restored it beside the target (stage_verifies)


def execute_restore(plan: RestorePlan, progress: Progress = no_progress) -> RestoreResult:
    """Resolve, verify, check versions, take the safety backup, restore, verify counts, measure the RTO."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        prepared = _prepare(plan, progress, stack, {})
        return _apply(prepared, progress, started)


def execute_full_restore(full: FullRestorePlan, progress: Progress = no_progress) -> FullRestoreResult:
    """Prepare (resolve + verify + version-check) every store at once; then restore them all at once.

    Nothing is restored unless every store's backup verified. The five stores share no data, so each
    restores in its own thread (the caller holds every store's pool: nothing else writes to them); each
    store's RTO is measured from the start of the full restore to that store verified, the overall one
    to the last. A store that fails to restore does not stop the others (each keeps its safety backup);
    the result names every failure.
    """
    started = time.monotonic()
    lock = threading.Lock()

    def said(message: str, done: int | None, total: int | None) -> None:
        with lock:  # one progress line at a time from the store threads
            progress(message, done, total)

    with contextlib.ExitStack() as stack:
        cache: dict[str, Artifact] = {}
        prepared = _prepare_all(full.plans, said, stack, cache)
        results: dict[str, RestoreResult] = {}
        failed: dict[str, str] = {}

        def one(item: _Prepared) -> None:
            said(f"full system restore: {item.plan.store}", len(results) + len(failed), len(prepared))
            try:
                result = _apply(item, said, started)
            except CbBackupsError as exc:
                with lock:
                    failed[item.plan.store] = str(exc)
                said(f"full system restore: {exc}", len(results) + len(failed), len(prepared))
                return
            with lock:
                results[item.plan.store] = result

        with ThreadPoolExecutor(max_workers=max(1, len(prepared)), thread_name_prefix="restore") as pool:
            for future in [pool.submit(one, item) for item in prepared]:
                future.result()  # re-raises what is not a CbBackupsError (a bug), after all finished
        ordered = [results[p.plan.store] for p in prepared if p.plan.store in results]
        return FullRestoreResult(ordered, failed, time.monotonic() - started)


def _prepare_all(plans: list[RestorePlan], progress: Progress, stack: contextlib.ExitStack,
                 cache: dict[str, Artifact]) -> list[_Prepared]:
    """Every store prepared (sha256 + the store's own check + versions) at once, each in its own thread.
    PostgreSQL's staging (pg_restore beside the target + counts) is left to its restore thread, where it
    overlaps the other stores' restores: the longest step of a full restore no longer holds the others.

    The first resolves the shared full system backup (download, decryption) alone, so it happens once;
    the others only read it. Each thread has its own ExitStack, entered into `stack` afterwards (what it
    holds is released with the rest). Only after EVERY preparation finished is a failure raised (the
    first in plan order), so no store is touched unless all verified."""
    if not plans:
        return []
    first = _prepare(plans[0], progress, stack, cache, stage_now=False)

    def one(plan: RestorePlan) -> tuple[_Prepared, contextlib.ExitStack]:
        own = contextlib.ExitStack()
        try:
            return _prepare(plan, progress, own, cache, stage_now=False), own
        except BaseException:
            own.close()
            raise

    prepared = [first]
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, len(plans) - 1), thread_name_prefix="prepare") as pool:
        futures = [pool.submit(one, plan) for plan in plans[1:]]
        for future in futures:
            try:
                item, own = future.result()
            except BaseException as exc:  # re-raised below, once every thread finished
                error = error or exc
                continue
            stack.enter_context(own)
            prepared.append(item)
    if error is not None:
        raise error
    return prepared


def verify_artifact(store: Store, artifact: Artifact, plain: Plaintexts | None = None) -> Verification:
    """sha256 of every file against the manifest (and the manifest against its seal), then the store's own
    integrity check. A full disk (the temp dir) is raised as DiskFull: it says nothing about the backup.
    An encrypted backup's ciphertext is checked here, its plaintext (`plain.of`: decrypted, authenticated,
    plaintext sha256 checked) by the store; a missing or wrong identity raises IdentityMismatch."""
    problems = checksum_problems(artifact)
    if problems:
        return Verification(False, problems)
    if artifact.manifest.encrypted and plain is not None:
        try:
            artifact = plain.of(artifact)
        except IdentityMismatch:
            raise  # not this backup's fault: the operator must name the right key
        except CbBackupsError as exc:
            return Verification(False, [str(exc)])
    try:
        return store.verify(artifact)
    except Exception as exc:
        full = as_disk_full(exc, f"cannot check the integrity of {artifact.store} {artifact.partition_key}",
                            "the backup is unchanged and nothing was restored")
        if full is not None:
            raise full from None
        if isinstance(exc, CbBackupsError):
            return Verification(False, [str(exc)])
        raise


def counts_precheck(store: Store, artifact: Artifact, progress: Progress = no_progress) -> list[str]:
    """Restore `artifact` into the store's scratch (drill) target and compare the counts with its manifest,
    before anything touches the real target: a manifest whose counts do not describe its data (edited, or
    a dump that silently lost rows) is found here, so `latest` can fall back past it. Empty when the counts
    agree, or when the store has no scratch target (then the counts are compared after the restore only).
    Not for a store whose staging checks the counts (`stage_verifies`): `staging_check` does it in the one
    restore beside the target instead of a second one."""
    target = store.scratch_target(DRILL)
    if target is None:
        progress(f"{store.name}: no scratch target, so the counts of {artifact.partition_key} are checked after "
                 "the restore only", 0, None)
        return []
    progress(f"{store.name}: pre-checking the counts of {artifact.partition_key} in "
             f"{store.describe_target(target)}", 0, None)
    try:
        with store.scratch(artifact, target, progress) as scratch:
            counts = scratch.counts()
    except Exception as exc:
        full = as_disk_full(exc, f"cannot restore {store.name} {artifact.partition_key} into a scratch target to "
                                 "check its counts", "nothing was restored and the backups are unchanged")
        if full is not None:
            raise full from None
        if isinstance(exc, CbBackupsError):
            return [f"a scratch restore to check its counts failed: {exc}"]
        raise
    mismatch = store.compare_counts(artifact.manifest.inventory, counts, target)
    if mismatch:
        return ["restored into a scratch target, its counts differ from its manifest: " + "; ".join(mismatch)]
    return []


def staging_check(store: Store, artifact: Artifact, plan: RestorePlan, plain: Plaintexts | None,
                  progress: Progress = no_progress) -> Verification:
    """For a store whose `stage` proves the backup (`stage_verifies`): stage it, which reads the backup ONCE
    (sha256 against the manifest, its own check, the restore into a database beside the target, the counts)
    instead of verifying first and restoring after. The target is untouched either way; `restore` then
    reuses what was staged. A backup fault is a failed Verification (so `latest` falls back past it); an
    incompatible target or an unreachable server is raised: it says nothing about the backup."""
    if artifact.manifest.encrypted and plain is not None:
        problems = checksum_problems(artifact)  # the ciphertext, before it is decrypted
        if problems:
            return Verification(False, problems)
        try:
            artifact = plain.of(artifact)
        except IdentityMismatch:
            raise
        except CbBackupsError as exc:
            return Verification(False, [str(exc)])
    problems = store.compatibility(artifact, plan.target)
    if problems:
        raise RestoreRefused(plan.store, f"{artifact.partition_key} is not compatible with the target: "
                                         + "; ".join(problems))
    try:
        staged(store, artifact, plan.target, progress)
    except StoreUnavailable:
        raise
    except RestoreRefused as exc:
        return Verification(False, [str(exc)])
    except Exception as exc:
        full = as_disk_full(exc, f"cannot restore {store.name} {artifact.partition_key} beside the target",
                            "nothing was restored and the backups are unchanged")
        if full is not None:
            raise full from None
        if isinstance(exc, CbBackupsError):
            return Verification(False, [f"restored into a scratch database beside the target, it failed: {exc}"])
        raise
    return Verification(True, [], {"staged": True})


def _prepare(plan: RestorePlan, progress: Progress, stack: contextlib.ExitStack,
             cache: dict[str, Artifact], stage_now: bool = True) -> _Prepared:
    store = open_store(plan.store, plan.settings)
    skipped: list[str] = []
    notes: list[str] = []
    plain = Plaintexts(plan.settings.catalog(), stack)
    if plan.backup.startswith(FULL_PREFIX):
        full, artifact = _resolve_full(plan, store, progress, stack, cache, plain, stage_now)
        origin = f"{full.directory} ({plan.store} part)"
    else:
        artifact = _resolve(plan, store, progress, stack, skipped, plain)
        origin = str(artifact.directory) if plan.source == "local" else f"s3 copy of {artifact.partition_key}"
        artifact = plain.of(artifact)  # from here on the store reads the verified plaintext
    if skipped:
        notes.append(f"latest-verified fell back to {artifact.partition_key}: the newer backup(s) failed "
                     "verification: " + "; ".join(skipped))
        progress(notes[-1], 0, None)
    problems = store.compatibility(artifact, plan.target)
    if problems:
        raise RestoreRefused(plan.store, f"{artifact.partition_key} is not compatible with the target: "
                                         + "; ".join(problems))
    staged_now = stage_verifies(store) and (stage_now or not plan.backup.startswith(FULL_PREFIX))
    return _Prepared(plan, store, artifact, skipped, notes, origin, staged=staged_now)


def _apply(prepared: _Prepared, progress: Progress, started: float) -> RestoreResult:
    plan, store, artifact = prepared.plan, prepared.store, prepared.artifact
    catalog = plan.settings.catalog()
    in_place = plan.target.mode == "in_place"
    if in_place and not prepared.staged:  # e.g. Valkey; PostgreSQL staged while it was verified
        staged(store, artifact, plan.target, progress)
    with contextlib.ExitStack() as closed:
        if in_place:
            # If this process is killed inside the closed window, the journal lets the next run put the
            # store back in service (restore.recovery). Restoring a safety backup: that one is the fallback.
            entry = closed.enter_context(journaled(catalog, plan.store, artifact.partition_key, plan.target))
            if artifact.manifest.kind == "safety":
                entry.update(safety=artifact.partition_key)
            # Writes stop BEFORE the safety backup and stay stopped until the new data is in: a write
            # attempted meanwhile is refused, so the safety backup (and what the store keeps aside)
            # holds every acknowledged write. On error the store accepts writes again (quiesce's exit).
            progress(f"{plan.store}: closing {store.describe_target(plan.target)} to writes", 0, None)
            try:
                hold = closed.enter_context(quiesced(store, plan.target))
            except CbBackupsError as exc:
                raise RestoreRefused(plan.store, f"could not stop writes to the target, so nothing was "
                                                 f"restored: {exc}") from None
            entry.update(phase=CLOSED, hold=hold)
        safety = _safety_backup(prepared, catalog, progress) if in_place and plan.safety_backup else None
        if in_place:
            entry.update(phase=RESTORING, **({"safety": safety.partition_key} if safety else {}))
        counts = _restore(prepared, safety, progress)
    expected = artifact.manifest.inventory
    problems = store.compare_counts(expected, counts, plan.target)
    rto = time.monotonic() - started
    if safety is not None:
        pruned = prune_safety(catalog, plan.store, plan.safety_keep_days, deleter=store.before_delete,
                              keep={safety.partition_key})
        if pruned:
            prepared.notes.append(f"removed {len(pruned)} safety backup(s) older than {plan.safety_keep_days} days")
    kept: list[str] = []
    if in_place:
        try:
            dropped = prune_kept_aside(store, plan.safety_keep_days)
            kept = kept_aside(store)
        except CbBackupsError as exc:  # the restore itself is done and verified; say so, do not fail it
            prepared.notes.append(f"could not list what earlier restores kept aside: {exc}")
            dropped = []
        if dropped:
            prepared.notes.append(f"dropped data kept aside by restores more than {plan.safety_keep_days} days "
                                  f"ago: {', '.join(dropped)}")
        if kept:
            prepared.notes.append(f"kept aside for {plan.safety_keep_days} days, then dropped: " + "; ".join(kept))
    result = RestoreResult(
        store=plan.store, requested=plan.backup, partition_key=artifact.partition_key,
        kind=FULL_SYSTEM if plan.backup.startswith(FULL_PREFIX) else artifact.manifest.kind,
        source=plan.source, mode=plan.target.mode, artifact_path=prepared.origin, expected=expected,
        counts=counts, problems=problems, skipped=prepared.skipped, notes=prepared.notes,
        safety_backup=str(safety.directory) if safety else None, rto_seconds=rto,
        rto_target_seconds=plan.rto_target_seconds, kept_aside=kept)
    progress(result.summary(), 1, 1)
    return result


def _safety_backup(prepared: _Prepared, catalog: Catalog, progress: Progress) -> Artifact:
    plan = prepared.plan
    progress(f"{plan.store}: safety backup of the current data", 0, None)
    try:
        safety = take_safety_backup(catalog, prepared.store, progress)
    except CbBackupsError as exc:
        raise RestoreRefused(plan.store, f"the safety backup of the current data failed, so nothing was "
                                         f"restored: {exc}. If the data is already lost, run again with the "
                                         "override safety_backup=skip") from None
    prepared.notes.append(f"safety backup: {safety.directory} (undo with: cb-backups restore {plan.store} "
                          f"--backup {SAFETY_PREFIX}{safety.partition_key} --target in-place)")
    progress(prepared.notes[-1], 0, None)
    return safety


def _restore(prepared: _Prepared, safety: Artifact | None, progress: Progress) -> Inventory:
    """`store.restore`, then the counts of the live target counted again."""
    plan, store, artifact = prepared.plan, prepared.store, prepared.artifact
    progress(f"{plan.store}: restoring {artifact.partition_key} ({plan.target.mode})", 0, None)
    try:
        counts = store.restore(artifact, plan.target, progress)
        if plan.target.mode == "in_place" and not set(plan.target.options) & ELSEWHERE_OPTIONS:
            counts = store.inventory()  # counted again on the live target, independently of the adapter
    except RestoreRefused:
        raise
    except CbBackupsError as exc:
        if safety is None:
            raise
        raise RestoreFailed(plan.store, f"{exc}; the data from before the restore is kept in the safety backup "
                                        f"{safety.directory} (cb-backups restore {plan.store} --backup "
                                        f"{SAFETY_PREFIX}{safety.partition_key} --target in-place)") from None
    return counts


# --- resolving the backup ----------------------------------------------------------------------------------


def _resolve(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
             skipped: list[str], plain: Plaintexts) -> Artifact:
    catalog = plan.settings.catalog()

    def skip(artifact: Artifact, problems: list[str]) -> None:
        skipped.append(f"{artifact.partition_key}: {'; '.join(problems)}")
        progress(f"{plan.store}: backup {artifact.partition_key} failed verification, trying an older one: "
                 f"{'; '.join(problems)}", 0, None)

    if plan.source == "offsite":
        return _resolve_offsite(plan, store, progress, stack, skip, plain)
    def verify(artifact: Artifact) -> Verification:
        problems = catalog.binding_problems(artifact)  # a folder renamed or swapped is not that slot
        if problems:
            return Verification(False, problems)
        if stage_verifies(store):  # one read: verified while restored beside the target, counts included
            return staging_check(store, artifact, plan, plain, progress)
        verification = verify_artifact(store, artifact, plain)
        if verification.ok and plan.backup == LATEST:
            # Counts too, in a scratch target, so a backup whose restore would fail on counts is skipped
            # like a corrupt one, and the real target is never touched by it.
            problems = counts_precheck(store, plain.of(artifact), progress)
            if problems:
                return Verification(False, problems)
        return verification

    if plan.backup == LATEST:
        progress(f"{plan.store}: looking for the newest backup that verifies", 0, None)
        artifact = catalog.latest_verified(plan.store, verify=verify, on_skip=skip)
        if artifact is None:
            tried = f" (tried: {'; '.join(skipped)})" if skipped else " (the catalog holds none)"
            raise RestoreRefused(plan.store, f"no backup in {catalog.store_dir(plan.store)} verifies{tried}")
        return artifact
    if plan.backup.startswith(SAFETY_PREFIX):
        artifact = catalog.require(plan.store, plan.backup[len(SAFETY_PREFIX):], kind="safety")
    else:
        artifact = catalog.require(plan.store, plan.backup)
    verification = verify(artifact)
    if artifact.manifest.kind == "backup":
        catalog.record_verification(artifact, verification)
    if not verification.ok:
        raise RestoreRefused(plan.store, f"backup {artifact.partition_key} failed verification: "
                                         + "; ".join(verification.problems))
    return artifact


def _resolve_offsite(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
                     skip: Callable[[Artifact, list[str]], None], plain: Plaintexts) -> Artifact:
    target = offsite.S3Target(plan.settings.s3)
    keys = [plan.backup] if plan.backup != LATEST else list(reversed(offsite.list_offsite(plan.store, target)))
    if not keys:
        raise RestoreRefused(plan.store, f"no off-site copy in s3://{target.bucket}/{target.folder(plan.store)}")
    tried: list[str] = []
    for key in keys:
        folder = stack.enter_context(plan.settings.catalog().download_dir(plan.store, key))
        progress(f"{plan.store}: downloading the off-site copy of {key}", 0, None)
        versions = offsite_versions.load(plan.settings.catalog(), plan.store, key)  # recorded at upload
        try:
            offsite.download_artifact(plan.store, key, target, folder, progress, versions)
        except CbBackupsError as exc:
            if plan.backup != LATEST:
                raise RestoreRefused(plan.store, f"off-site copy of {key}: {exc}") from None
            tried.append(f"{key}: {exc}")
            progress(f"{plan.store}: off-site copy of {key} failed, trying an older one: {exc}", 0, None)
            continue
        artifact = Catalog(folder.parent).load(folder)
        assert artifact is not None  # download_artifact writes the manifest last
        problems = _offsite_manifest_problems(target, plan.store, key, folder, versions)
        if problems:
            verification = Verification(False, problems)
        elif stage_verifies(store):
            verification = staging_check(store, artifact, plan, plain, progress)
        else:
            verification = verify_artifact(store, artifact, plain)
        if verification.ok and plan.backup == LATEST and not stage_verifies(store):
            problems = counts_precheck(store, plain.of(artifact), progress)
            verification = Verification(False, problems) if problems else verification
        if verification.ok:
            return artifact
        if plan.backup != LATEST:
            raise RestoreRefused(plan.store, f"off-site copy of {key} failed verification: "
                                             + "; ".join(verification.problems))
        skip(artifact, verification.problems)
    raise RestoreRefused(plan.store, "no off-site copy verifies: " + "; ".join(tried) if tried else
                         f"no off-site copy of {plan.store} verifies")


def _resolve_full(plan: RestorePlan, store: Store, progress: Progress, stack: contextlib.ExitStack,
                  cache: dict[str, Artifact], plain: Plaintexts, stage_now: bool = True) -> tuple[Artifact, Artifact]:
    """(the full system backup, this store's part of it as its own verified Artifact).

    `stage_now` False (a full restore): a store whose staging proves the backup is verified like the others
    (sha256 + its own check) and stages in its restore thread, so its long staging overlaps the others."""
    key = plan.backup[len(FULL_PREFIX):]
    full = cache.get(key)
    if full is None:
        if plan.source == "offsite":
            folder = stack.enter_context(plan.settings.catalog().download_dir(FULL_SYSTEM, key))
            progress(f"downloading the off-site copy of full system backup {key}", 0, None)
            try:
                offsite.download_artifact(FULL_SYSTEM, key, offsite.S3Target(plan.settings.s3), folder, progress)
            except CbBackupsError as exc:
                raise RestoreRefused(plan.store, f"off-site copy of full system backup {key}: {exc}") from None
            loaded = Catalog(folder.parent).load(folder)
            assert loaded is not None
            full = loaded
            problems = _offsite_manifest_problems(offsite.S3Target(plan.settings.s3), FULL_SYSTEM, key, folder)
        else:
            catalog = plan.settings.catalog()
            full = catalog.require(FULL_SYSTEM, key)
            problems = catalog.binding_problems(full)
        # The per-store view below carries a manifest derived from this one: the seal is checked here.
        problems += seal_problems(full)
        if problems:
            raise RestoreRefused(plan.store, f"full system backup {key} failed verification: " + "; ".join(problems))
        if full.manifest.encrypted:  # the ciphertext against the manifest, then decrypted once for every store
            problems = checksum_problems(full)
            if problems:
                raise RestoreRefused(plan.store, f"full system backup {key} failed verification: "
                                     + "; ".join(problems))
            try:
                full = plain.of(full)
            except IdentityMismatch:
                raise
            except CbBackupsError as exc:
                raise RestoreRefused(plan.store, f"full system backup {key}: {exc}") from None
        cache[key] = full
    if plan.store not in stores_in(full):
        raise RestoreRefused(plan.store, f"full system backup {key} holds no {plan.store} backup "
                                         f"(it holds {', '.join(stores_in(full)) or 'nothing'})")
    view = stack.enter_context(store_view(full, plan.store))
    verification = (staging_check(store, view, plan, None, progress) if stage_verifies(store) and stage_now
                    else verify_artifact(store, view))
    if not verification.ok:
        raise RestoreRefused(plan.store, f"the {plan.store} part of full system backup {key} failed verification: "
                                         + "; ".join(verification.problems))
    return full, view


def _offsite_manifest_problems(target: offsite.S3Target, store: str, key: str, folder: Path,
                               versions: Mapping[str, str] | None = None) -> list[str]:
    """The downloaded manifest against the sha256 its S3 object carried from the upload (when it has one)."""
    stored = offsite.manifest_head(target, store, key, versions)  # the version downloaded, not an overwrite
    recorded = ((stored or {}).get("Metadata") or {}).get(offsite.SHA256_METADATA)
    actual = sha256_file(folder / MANIFEST)[0]
    if recorded and recorded != actual:
        return [f"the off-site {MANIFEST} (sha256 {actual}) differs from the {recorded} recorded in its S3 "
                "metadata at upload: it was changed in the bucket"]
    return []
