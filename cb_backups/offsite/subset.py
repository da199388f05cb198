"""Deep verification of off-site copies that scales: each run re-reads a rotating subset. No Dagster here.

Re-reading every object every day (`verify_offsite(deep=True)` on every slot) grows with the whole
history: a year of daily backups is a year of bytes a day. Like restic's `check --read-data-subset`,
each run here re-reads and hashes only part of a store's off-site objects:

* every object whose last read (or, never read yet, the time it was first seen off-site: the upload
  hashed it in the same read and the server checked it) would be older than `period_days` by the next
  run is read now, so every object is re-read at least once per period and a flipped byte is found
  within one period of the last good read;
* then the least recently read ones, until `fraction` of the store's bytes was read this run;
* an object whose last read failed is read again every run until it verifies (re-uploaded) or goes.

What was read when is the coverage record, `Catalog.offsite_coverage(store)` (0600 JSON, written
atomically): per object key and version, its size, sha256, first seen, last good read and last failed
read; and the last runs' totals. `coverage` summarises it for the check's metadata and the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cb_backups.config.retention import VerifySubset
from cb_backups.core.catalog import Catalog, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.fileio import atomic_write_json, private_dir
from cb_backups.core.model import Artifact
from cb_backups.offsite.s3 import RemoteObject, S3Target, read_sha256, slot_objects

SUBSET_CHECK = "offsite_deep_subset"  # on <store>_offsite: this run's rotating subset re-read (defs/offsite.py)
RUN_INTERVAL = timedelta(days=1)  # the schedule's spacing: an object is read one run before it would be late
KEEP_RUNS = 400  # runs kept in the record (a year of daily runs and some)


@dataclass
class Entry:
    """One off-site object in the coverage record (times ISO, UTC)."""

    bytes: int
    sha256: str
    what: str
    seen_at: str
    read_at: str | None = None  # last read whose content matched
    failed_at: str | None = None  # last read that did not (cleared by a good read)
    problem: str | None = None

    def since(self) -> datetime:
        """From when the object counts as verified: its last good read, else when first seen."""
        return parse_iso(self.read_at or self.seen_at)


def object_id(obj: RemoteObject) -> str:
    return f"{obj.key}@{obj.version_id or 'latest'}"


def plan(entries: Mapping[str, Entry], policy: VerifySubset, now: datetime,
         interval: timedelta = RUN_INTERVAL) -> list[str]:
    """The objects this run reads (pure): failing and due ones, then least recently read up to the fraction."""
    period = timedelta(days=policy.period_days)
    order = sorted(entries, key=lambda i: (entries[i].failed_at is None, entries[i].since(), i))
    chosen: list[str] = []
    budget = policy.fraction * sum(e.bytes for e in entries.values())
    taken = 0
    for ident in order:
        entry = entries[ident]
        if entry.failed_at is not None:  # re-read apart from the budget: a failing object must not stall the rotation
            chosen.append(ident)
        elif now - entry.since() + interval > period or taken < budget:
            chosen.append(ident)
            taken += entry.bytes
    return chosen


@dataclass
class SubsetRun:
    at: str
    objects: int  # in the store's off-site copies
    bytes: int
    objects_read: int
    bytes_read: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def load(catalog: Catalog, store: str) -> tuple[dict[str, Entry], list[dict[str, Any]]]:
    """The coverage record (entries, runs); empty when there is none or it cannot be read (all due then)."""
    try:
        data = json.loads(catalog.offsite_coverage(store).read_text())
        entries = {k: Entry(**v) for k, v in data.get("objects", {}).items()}
        return entries, list(data.get("runs", []))
    except (OSError, ValueError, TypeError, AttributeError):
        return {}, []


def save(catalog: Catalog, store: str, entries: Mapping[str, Entry], runs: list[dict[str, Any]]) -> None:
    path = catalog.offsite_coverage(store)
    private_dir(path.parent)
    atomic_write_json(path, {"objects": {k: asdict(v) for k, v in sorted(entries.items())},
                             "runs": runs[-KEEP_RUNS:]})


def verify_subset(store: str, artifacts: Iterable[Artifact], target: S3Target, catalog: Catalog,
                  policy: VerifySubset, versions: Callable[[Artifact], Mapping[str, str] | None] = lambda a: None,
                  now: datetime | None = None) -> SubsetRun:
    """Re-read this run's subset of the objects of `artifacts`' off-site copies and record the coverage."""
    now = now or utcnow()
    stamp = now.isoformat(timespec="seconds")
    objects: dict[str, RemoteObject] = {}
    for artifact in artifacts:
        for obj in slot_objects(artifact, target, versions(artifact)):
            objects.setdefault(object_id(obj), obj)
    old, runs = load(catalog, store)
    entries: dict[str, Entry] = {}
    for ident, obj in objects.items():  # objects gone off-site (pruned) leave the record
        kept = old.get(ident)
        entries[ident] = kept if kept is not None and kept.sha256 == obj.sha256 else \
            Entry(obj.bytes, obj.sha256, obj.what, stamp)
    run = SubsetRun(stamp, len(entries), sum(e.bytes for e in entries.values()), 0, 0)
    for ident in plan(entries, policy, now):
        obj, entry = objects[ident], entries[ident]
        try:
            sha, size = read_sha256(target, obj.key, obj.version_id)
            problem = None if (sha, size) == (obj.sha256, obj.bytes) else (
                f"{obj.what}: {target.url(obj.key)} is {size} bytes with sha256 {sha[:12]}…, the manifest says "
                f"{obj.bytes} bytes, {obj.sha256[:12]}…")
        except CbBackupsError as exc:
            problem, size = f"{obj.what}: {exc}", 0
        run.objects_read += 1
        run.bytes_read += size
        if problem is None:
            entry.read_at, entry.failed_at, entry.problem = stamp, None, None
        else:
            entry.failed_at, entry.problem = stamp, problem
            run.problems.append(problem)
    runs.append({"at": stamp, "objects_read": run.objects_read, "bytes_read": run.bytes_read,
                 "objects": run.objects, "bytes": run.bytes, "problems": len(run.problems),
                 "fraction": policy.fraction, "period_days": policy.period_days})
    save(catalog, store, entries, runs)
    return run


def coverage(catalog: Catalog, store: str, policy: VerifySubset | None = None, now: datetime | None = None
             ) -> dict[str, Any]:
    """What the record says now: how much of the store's off-site bytes was re-read within the period
    (`policy`'s, else the last run's), the oldest good read, failing objects, the last run. Empty when no
    run happened yet."""
    entries, runs = load(catalog, store)
    if not runs:
        return {}
    now = now or utcnow()
    if policy is None:
        last = runs[-1]
        policy = VerifySubset(float(last.get("fraction", VerifySubset.fraction)),
                              int(last.get("period_days", VerifySubset.period_days)))
    period = timedelta(days=policy.period_days)
    total = sum(e.bytes for e in entries.values())
    read = sum(e.bytes for e in entries.values() if e.read_at and now - parse_iso(e.read_at) <= period)
    never = [e for e in entries.values() if e.read_at is None]
    oldest = min((parse_iso(e.read_at) for e in entries.values() if e.read_at), default=None)
    return {"period_days": policy.period_days, "fraction": policy.fraction, "objects": len(entries),
            "bytes": total, "read_within_period": round(read / total, 4) if total else 1.0,
            "never_read": len(never), "oldest_read_days": round((now - oldest) / timedelta(days=1), 2)
            if oldest else None, "failing": sum(1 for e in entries.values() if e.failed_at),
            "last_run": runs[-1]}


def describe(summary: Mapping[str, Any]) -> str:
    """One cell for the report: e.g. "100% in 30 d" (share of off-site bytes re-read within the period)."""
    if not summary:
        return "not run"
    text = f"{summary['read_within_period']:.0%} in {summary['period_days']} d"
    return text + (f", {summary['failing']} failing" if summary.get("failing") else "")
