"""Restore drills (no Dagster here): a backup restored into a scratch target, counted, timed, dropped.

`run_drill` verifies the backup, asks the store for its drill target (`Store.scratch_target`),
checks compatibility, restores into it (`Store.scratch`, which always drops it again), counts
what the scratch target holds now and compares that with the manifest (`Store.compare_counts`).
A store without a scratch target (Neo4j without a scratch server) is drilled as check only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cb_backups.config.settings import Settings
from cb_backups.core.crypto import IdentityMismatch
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Artifact, Inventory, Progress, Target, Verification, no_progress
from cb_backups.core.specs import spec_for
from cb_backups.restore.decrypt import Plaintexts
from cb_backups.restore.execute import verify_artifact
from cb_backups.restore.plan import hms
from cb_backups.stores.base import DRILL, Scratch, Store
from cb_backups.stores.registry import open_store

UNCOUNTED_SECTIONS = ("estimates", "expires")  # drift by nature: not shown as counts


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
            if section in UNCOUNTED_SECTIONS:
                continue
            for name, count in names.items():
                meta[f"count/{section}/{name}"] = count
        return meta


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
    catalog = settings.catalog()
    artifact = catalog.get(store_name, partition_key) if partition_key else (catalog.list(store_name) or [None])[-1]
    if artifact is None:
        what = f"slot {partition_key}" if partition_key else "any slot"
        return DrillResult(store_name, partition_key, False, f"no complete {store_name} backup for {what}",
                           "restore", rto_target_seconds=rto_target)
    with contextlib.ExitStack() as stack:  # an encrypted backup is drilled from its decrypted copy, then removed
        plain = Plaintexts(catalog, stack)
        try:
            verification = verify_artifact(store, artifact, plain)
        except IdentityMismatch as exc:
            return DrillResult(store_name, artifact.partition_key, False, str(exc), "restore",
                               rto_target_seconds=rto_target)
        return _drill(store, plain.of(artifact) if verification.ok else artifact, verification, rto_target,
                      started, between, progress)


def _drill(store: Store, artifact: Artifact, verification: Verification, rto_target: float, started: float,
           between: Callable[[Scratch], None] | None, progress: Progress) -> DrillResult:
    store_name, key = store.name, artifact.partition_key
    if not verification.ok:
        return DrillResult(store_name, key, False, "the backup did not verify: " + "; ".join(verification.problems),
                           "restore", rto_target_seconds=rto_target)
    target = store.scratch_target(DRILL)
    if target is None:
        check = verification.details.get("check")
        return DrillResult(store_name, key, True,
                           f"check only: the backup verified{f' (check {check})' if check else ''}; "
                           f"{store.describe_target(Target('scratch'))}, so no restore was drilled", "check-only",
                           rto_target_seconds=rto_target, scratch="none")
    problems = store.compatibility(artifact, target)
    if problems:
        return DrillResult(store_name, key, False, "not compatible with the scratch target: " + "; ".join(problems),
                           "restore", rto_target_seconds=rto_target)
    try:
        with store.scratch(artifact, target, progress) as scratch:
            if between is not None:
                between(scratch)
            counts = scratch.counts()
            rto = time.monotonic() - started
            where = scratch.describe()
    except CbBackupsError as exc:
        return DrillResult(store_name, key, False, f"the scratch restore failed: {exc}", "restore",
                           rto_target_seconds=rto_target, scratch=store.describe_target(target))
    expected = artifact.manifest.inventory
    mismatch = store.compare_counts(expected, counts, target)
    text = (f"restored {key} into {where} in {rto:.1f}s (RTO target {hms(rto_target)}); "
            + ("counts equal the manifest" if not mismatch else "counts differ: " + "; ".join(mismatch))
            + "; scratch target removed")
    return DrillResult(store_name, key, not mismatch, text, "restore", expected, counts, mismatch, rto, rto_target,
                       where)
