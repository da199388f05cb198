"""Retention: a policy turns a list of backups into a prune plan (pure), then the plan is applied.

No Dagster here, and no store knowledge: store-specific cleanup (an OpenSearch
snapshot in its repository, a Qdrant server-side snapshot) is passed in as a
callable.

How a plan is made (explicit, never surprising)
------------------------------------------------
1. Protected backups are always kept, whatever the policy says:
   * the newest verified backup (off-site: the newest copy verified off-site);
   * the newest `min_keep` verified backups (topped up with the newest
     unverified ones when fewer than `min_keep` verified backups exist);
   * locally, with off-site copies enabled: every backup whose off-site copy is
     not verified yet (deleting it would lose the only good copy);
   * anything captured after `now` (clock skew is not a reason to delete).
2. A backup is a candidate to keep when it is within `keep_days` of `now`, OR is
   the representative of one of the newest `keep_daily` days, `keep_weekly` ISO
   weeks or `keep_monthly` months that have backups (GFS; the representative is
   the newest verified backup of the bucket, else its newest backup). With no
   `keep_days` and no GFS rule, every backup is a candidate.
3. `keep_last` is a maximum count: while more than `keep_last` backups would be
   kept, the oldest unprotected candidate is deleted. Protected backups count
   towards the maximum but are never deleted by it.
Everything else is deleted, with the reason recorded.

Applying a plan deletes the delete-list only, appends one JSON line per deletion
to `<backup_dir>/_retention/deletions.jsonl` (for the auditor report), and never
leaves a half-deleted backup that looks complete: a local backup folder is first
renamed to a hidden `.deleting-*` name (atomic), an off-site copy loses its
manifest first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cb_backups.catalog import Catalog, SlotBusy, iso, parse_iso, utcnow
from cb_backups.errors import CbBackupsError, ConfigError
from cb_backups.fileio import fsync_dir, private_dir
from cb_backups.settings import STORE_NAMES
from cb_backups.stores.base import Artifact

if TYPE_CHECKING:
    from cb_backups.offsite import S3Target

log = logging.getLogger(__name__)

FULL_SYSTEM = "full_system"
RETENTION_DIR = "_retention"
DELETIONS_LOG = "deletions.jsonl"
LOCAL, OFFSITE = "local", "offsite"


# --- policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: int | None = None  # keep everything captured within this many days
    keep_last: int | None = None  # keep at most this many (protected ones count, but are never deleted)
    keep_daily: int | None = None  # GFS: newest backup of each of the newest N days that have backups
    keep_weekly: int | None = None  # ... of each of the newest N ISO weeks
    keep_monthly: int | None = None  # ... of each of the newest N months
    min_keep: int = 1  # always keep at least this many (the newest verified ones)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name != "min_keep":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                allowed = "a whole number >= 1" + ("" if f.name == "min_keep" else ", or unset")
                raise ConfigError(f"retention {f.name}", value, allowed)
        if not any((self.keep_days, self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)):
            raise ConfigError("retention policy", "no rule", "at least one of keep_days, keep_last, keep_daily, "
                                                             "keep_weekly, keep_monthly")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], what: str = "retention") -> RetentionPolicy:
        if not isinstance(data, Mapping):
            raise ConfigError(f"'{what}' section", data, "a mapping such as {keep_days: 7, keep_last: 28}")
        allowed = [f.name for f in fields(cls)]
        for name in data:
            if name not in allowed:
                raise ConfigError(f"setting '{what}.{name}'", data[name], ", ".join(allowed))
        try:
            return cls(**{k: v for k, v in data.items() if v is not None})
        except ConfigError as exc:
            raise ConfigError(f"{what}.{exc.what.removeprefix('retention ')}", exc.value, exc.allowed) from None

    def describe(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) is not None]
        return ", ".join(parts)


# The runbook's "Recommended Schedule": PostgreSQL 7 days (28 backups), Neo4j/Qdrant/OpenSearch
# 7 days, Valkey 3 days; the weekly full system backup for 4 weeks.
DEFAULT_POLICIES: dict[str, RetentionPolicy] = {
    "postgres": RetentionPolicy(keep_days=7, keep_last=28),
    "neo4j": RetentionPolicy(keep_days=7),
    "qdrant": RetentionPolicy(keep_days=7),
    "opensearch": RetentionPolicy(keep_days=7),
    "valkey": RetentionPolicy(keep_days=3),
    FULL_SYSTEM: RetentionPolicy(keep_days=28),
}
POLICY_NAMES = (*STORE_NAMES, FULL_SYSTEM)


@dataclass(frozen=True)
class RetentionPolicies:
    """Local and off-site policy per store. A store's off-site policy defaults to its local one."""

    local: dict[str, RetentionPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    offsite: dict[str, RetentionPolicy] = field(default_factory=dict)

    def for_store(self, store: str, where: str = LOCAL) -> RetentionPolicy:
        if store not in self.local:
            raise ConfigError("retention store", store, ", ".join(sorted(self.local)))
        if where == OFFSITE:
            return self.offsite.get(store, self.local[store])
        if where != LOCAL:
            raise ConfigError("retention location", where, f"{LOCAL}, {OFFSITE}")
        return self.local[store]


def policies_from_config(raw: Mapping[str, Any] | None) -> RetentionPolicies:
    """Read the `retention:` section of the CB_CONFIG file; a store's section replaces its default whole.

    retention:
      postgres: {keep_days: 14, keep_last: 56}
      offsite:
        postgres: {keep_days: 30, keep_monthly: 12}
    """
    section = (raw or {}).get("retention") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("'retention' section", section, "a mapping of store name to policy")
    local = dict(DEFAULT_POLICIES)
    offsite: dict[str, RetentionPolicy] = {}
    for name, value in section.items():
        if name == OFFSITE:
            if not isinstance(value, Mapping):
                raise ConfigError("'retention.offsite' section", value, "a mapping of store name to policy")
            for store, policy in value.items():
                _check_store(store, "retention.offsite")
                offsite[store] = RetentionPolicy.from_mapping(policy, f"retention.offsite.{store}")
            continue
        _check_store(name, "retention")
        local[name] = RetentionPolicy.from_mapping(value, f"retention.{name}")
    return RetentionPolicies(local=local, offsite=offsite)


def _check_store(name: str, section: str) -> None:
    if name not in POLICY_NAMES:
        raise ConfigError(f"store in '{section}'", name, ", ".join((*POLICY_NAMES, OFFSITE)))


# --- planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    partition_key: str
    captured_at: datetime
    verified: bool
    offsite_verified: bool | None = None  # None: no off-site copy known


@dataclass(frozen=True)
class PrunePlan:
    where: str
    policy: RetentionPolicy
    keep: list[tuple[str, list[str]]]  # newest first, with every reason it is kept
    delete: list[tuple[str, str]]  # oldest first, with the reason

    @property
    def kept_keys(self) -> list[str]:
        return [key for key, _ in self.keep]

    @property
    def deleted_keys(self) -> list[str]:
        return [key for key, _ in self.delete]

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "policy": asdict(self.policy),
                "keep": [{"partition": k, "reasons": r} for k, r in self.keep],
                "delete": [{"partition": k, "reason": r} for k, r in self.delete]}


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _bucket_key(ts: datetime, kind: str) -> str:
    if kind == "daily":
        return ts.strftime("%Y-%m-%d")
    if kind == "weekly":
        year, week, _ = ts.isocalendar()
        return f"{year}-W{week:02d}"
    return ts.strftime("%Y-%m")


def plan(backups: Sequence[BackupInfo], policy: RetentionPolicy, now: datetime, offsite_enabled: bool,
         where: str = LOCAL, tz: tzinfo = UTC) -> PrunePlan:
    """Decide which backups to keep and which to delete (pure; see the module docstring)."""
    if where not in (LOCAL, OFFSITE):
        raise ConfigError("retention location", where, f"{LOCAL}, {OFFSITE}")
    keys = [b.partition_key for b in backups]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError("backup list", duplicates[0], "each partition key once")
    now = _aware(now)
    newest_first = sorted(backups, key=lambda b: (_aware(b.captured_at), b.partition_key), reverse=True)
    good = [b for b in newest_first if (b.verified if where == LOCAL else b.offsite_verified is True)]
    reasons: dict[str, list[str]] = {b.partition_key: [] for b in newest_first}

    # 1. protected
    protected: set[str] = set()

    def protect(key: str, reason: str) -> None:
        protected.add(key)
        reasons[key].append(reason)

    if good:
        protect(good[0].partition_key, "newest verified" if where == LOCAL else "newest verified off-site copy")
    floor = good[: policy.min_keep]
    if len(floor) < policy.min_keep:
        floor += [b for b in newest_first if b not in floor][: policy.min_keep - len(floor)]
    for b in floor:
        protect(b.partition_key, f"min_keep={policy.min_keep}")
    for b in newest_first:
        if where == LOCAL and offsite_enabled and b.offsite_verified is not True:
            protect(b.partition_key, "not yet verified off-site")
        if _aware(b.captured_at) > now:
            protect(b.partition_key, "captured after now (clock skew?)")

    # 2. candidates
    candidates: set[str] = set()
    gfs = {"daily": policy.keep_daily, "weekly": policy.keep_weekly, "monthly": policy.keep_monthly}
    if policy.keep_days is None and not any(gfs.values()):
        candidates = set(reasons)
        for key in candidates:
            reasons[key].append(f"among the newest keep_last={policy.keep_last}")
    if policy.keep_days is not None:
        cutoff = now - timedelta(days=policy.keep_days)
        for b in newest_first:
            if _aware(b.captured_at) >= cutoff:
                candidates.add(b.partition_key)
                reasons[b.partition_key].append(f"within keep_days={policy.keep_days}")
    for kind, count in gfs.items():
        if not count:
            continue
        buckets: dict[str, list[BackupInfo]] = {}
        for b in newest_first:
            buckets.setdefault(_bucket_key(_aware(b.captured_at).astimezone(tz), kind), []).append(b)
        for bucket in list(buckets)[:count]:  # dicts keep insertion order: newest buckets first
            members = buckets[bucket]
            chosen = next((b for b in members if b in good), members[0])
            candidates.add(chosen.partition_key)
            reasons[chosen.partition_key].append(f"keep_{kind} {bucket}")

    # 3. keep_last as a maximum count
    kept = [b for b in newest_first if b.partition_key in candidates or b.partition_key in protected]
    capped: set[str] = set()
    if policy.keep_last is not None:
        for b in reversed(kept):
            if len(kept) - len(capped) <= policy.keep_last:
                break
            if b.partition_key not in protected:
                capped.add(b.partition_key)

    keep: list[tuple[str, list[str]]] = []
    delete: list[tuple[str, str]] = []
    for b in newest_first:
        key = b.partition_key
        if key in capped:
            delete.append((key, f"beyond keep_last={policy.keep_last} (only the newest are kept)"))
        elif key in candidates or key in protected:
            keep.append((key, reasons[key]))
        else:
            delete.append((key, _delete_reason(b, policy)))
    delete.reverse()
    return PrunePlan(where=where, policy=policy, keep=keep, delete=delete)


def _delete_reason(b: BackupInfo, policy: RetentionPolicy) -> str:
    parts = [f"captured {iso(_aware(b.captured_at))}"]
    if policy.keep_days is not None:
        parts.append(f"older than keep_days={policy.keep_days}")
    rules = [f"keep_{k}={v}" for k, v in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly),
                                           ("monthly", policy.keep_monthly)) if v]
    if rules:
        parts.append(f"not selected by {', '.join(rules)}")
    return ", ".join(parts)


def local_backups(catalog: Catalog, store: str, offsite_verified: Mapping[str, bool] | None = None
                  ) -> list[BackupInfo]:
    """What `plan` needs, read from the catalog (verification sidecars) and off-site check results."""
    found = []
    for artifact in catalog.list(store):
        record = catalog.verification_of(artifact)
        found.append(BackupInfo(
            partition_key=artifact.partition_key,
            captured_at=parse_iso(artifact.manifest.captured_at),
            verified=bool(record and record.ok),
            offsite_verified=None if offsite_verified is None else offsite_verified.get(artifact.partition_key),
        ))
    return found


# --- applying --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionRecord:
    store: str
    partition: str
    where: str
    reason: str
    deleted_at: str


class RetentionIncomplete(CbBackupsError):
    """Some deletions failed; the rest were done and logged (`records`)."""

    def __init__(self, message: str, records: list[DeletionRecord]) -> None:
        super().__init__(message)
        self.records = records


def deletions_log(backup_dir: Path) -> Path:
    return Path(backup_dir) / RETENTION_DIR / DELETIONS_LOG


def _append_log(backup_dir: Path | None, records: Iterable[DeletionRecord]) -> None:
    records = list(records)
    if backup_dir is None or not records:
        return
    path = deletions_log(backup_dir)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_deletions(backup_dir: Path, store: str | None = None) -> list[DeletionRecord]:
    """The deletion log, oldest first (unreadable lines are skipped)."""
    path = deletions_log(backup_dir)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = DeletionRecord(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if store is None or record.store == store:
            records.append(record)
    return records


def _remove_backup_dir(directory: Path) -> None:
    """Hide the folder first (atomic rename to a dot-name the catalog never reads), then delete it."""
    hidden = directory.with_name(f".deleting-{directory.name}-{uuid.uuid4().hex[:8]}")
    os.rename(directory, hidden)
    fsync_dir(directory.parent)
    shutil.rmtree(hidden, ignore_errors=True)


def _check_plan(plan_: PrunePlan, where: str) -> None:
    if plan_.where != where:
        raise ConfigError("prune plan", plan_.where, f"a plan made with where='{where}'")


def apply_local(plan_: PrunePlan, catalog: Catalog, store: str,
                deleter: Callable[[Artifact], None] | None = None, now: datetime | None = None
                ) -> list[DeletionRecord]:
    """Delete the plan's local backups (store cleanup via `deleter` first), log each deletion.

    A slot being written by another process is skipped (it is retried next run). A
    failing `deleter` leaves that backup in place; the others are still deleted and
    `RetentionIncomplete` is raised at the end.
    """
    _check_plan(plan_, LOCAL)
    stamp = iso(now or utcnow())
    base = catalog.store_dir(store)
    if base.is_dir():  # leftovers of a run killed mid-delete
        for child in base.iterdir():
            if child.name.startswith(".deleting-"):
                shutil.rmtree(child, ignore_errors=True)
    records: list[DeletionRecord] = []
    failures: list[str] = []
    for key, reason in plan_.delete:
        try:
            with catalog.slot_lock(store, key):
                artifact = catalog.get(store, key)
                if artifact is None:
                    continue
                if deleter is not None:
                    deleter(artifact)
                _remove_backup_dir(artifact.directory)
        except SlotBusy:
            log.info("retention: %s %s is being written; not deleted this time", store, key)
            continue
        except Exception as exc:
            failures.append(f"{key}: {exc}")
            continue
        record = DeletionRecord(store, key, LOCAL, reason, stamp)
        _append_log(catalog.root, [record])
        records.append(record)
        log.info("retention: deleted local %s %s (%s)", store, key, reason)
    if failures:
        raise RetentionIncomplete(f"{store}: {len(failures)} local deletion(s) failed: " + "; ".join(failures),
                                  records)
    return records


def apply_offsite(plan_: PrunePlan, target: S3Target, store: str, backup_dir: Path | None = None,
                  now: datetime | None = None) -> list[DeletionRecord]:
    """Delete the plan's off-site copies (manifest first), log each deletion under `backup_dir`."""
    from cb_backups.offsite import delete_offsite

    _check_plan(plan_, OFFSITE)
    stamp = iso(now or utcnow())
    records: list[DeletionRecord] = []
    failures: list[str] = []
    for key, reason in plan_.delete:
        try:
            deleted = delete_offsite(store, key, target)
        except CbBackupsError as exc:
            failures.append(f"{key}: {exc}")
            continue
        if not deleted:
            continue
        record = DeletionRecord(store, key, OFFSITE, reason, stamp)
        _append_log(backup_dir, [record])
        records.append(record)
        log.info("retention: deleted off-site %s %s (%s)", store, key, reason)
    if failures:
        raise RetentionIncomplete(f"{store}: {len(failures)} off-site deletion(s) failed: " + "; ".join(failures),
                                  records)
    return records
