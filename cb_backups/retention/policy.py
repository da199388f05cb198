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
     not verified yet (deleting it would lose the only good copy); a copy verified
     for an older manifest of the slot (`offsite_sha256` != `manifest_sha256`:
     stale) counts as not verified;
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
4. A superseded copy (an earlier backup of a slot, kept when a newer backup of the slot replaced it) is
   kept until its replacement has verified and, with off-site copies enabled, has a verified off-site
   copy of its own manifest; then it is deleted. It goes with its slot when the policy deletes the slot,
   but never while the store has no verified backup at all (it may be the last good one).

Applying a plan deletes the delete-list only, appends one JSON line per deletion
to `<backup_dir>/_retention/deletions.jsonl` (for the auditor report), and never
leaves a half-deleted backup that looks complete: a local backup folder is first
renamed to a hidden `.deleting-*` name (atomic), an off-site copy loses its
manifest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from cb_backups.config.retention import LOCAL, OFFSITE, RetentionPolicy
from cb_backups.core.catalog import iso
from cb_backups.core.errors import ConfigError

# --- planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    partition_key: str
    captured_at: datetime
    verified: bool
    offsite_verified: bool | None = None  # None: no off-site copy known
    manifest_sha256: str | None = None  # this backup's manifest; None: not known (no comparison)
    offsite_sha256: str | None = None  # the manifest sha256 the off-site verification verified
    superseded: tuple[str, ...] = ()  # ids of the slot's superseded copies (earlier backups it replaced)

    @property
    def offsite_current(self) -> bool:
        """Verified off-site, and of THIS manifest: a stale copy (an older manifest of the slot) never counts."""
        if self.offsite_verified is not True:
            return False
        return self.manifest_sha256 is None or self.offsite_sha256 == self.manifest_sha256


@dataclass(frozen=True)
class PrunePlan:
    where: str
    policy: RetentionPolicy
    keep: list[tuple[str, list[str]]]  # newest first, with every reason it is kept
    delete: list[tuple[str, str]]  # oldest first, with the reason
    # superseded copies: (slot, copy id, reason), oldest slot first
    superseded_keep: list[tuple[str, str, str]] = field(default_factory=list)
    superseded_delete: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def kept_keys(self) -> list[str]:
        return [key for key, _ in self.keep]

    @property
    def deleted_keys(self) -> list[str]:
        return [key for key, _ in self.delete]

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "policy": asdict(self.policy),
                "keep": [{"partition": k, "reasons": r} for k, r in self.keep],
                "delete": [{"partition": k, "reason": r} for k, r in self.delete],
                "superseded": [{"partition": k, "copy": c, "action": action, "reason": r}
                               for action, items in (("keep", self.superseded_keep), ("delete", self.superseded_delete))
                               for k, c, r in items]}


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
    good = [b for b in newest_first if (b.verified if where == LOCAL else b.offsite_current)]
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
        if where == LOCAL and offsite_enabled and not b.offsite_current:
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
    sup_keep, sup_delete = _superseded(newest_first, dict(delete), bool(good), offsite_enabled)
    return PrunePlan(where=where, policy=policy, keep=keep, delete=delete, superseded_keep=sup_keep,
                     superseded_delete=sup_delete)


def _superseded(newest_first: list[BackupInfo], deleted: dict[str, str], any_verified: bool,
                offsite_enabled: bool) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Rule 4 (module docstring): which superseded copies to keep and which to delete, with the reason."""
    keep: list[tuple[str, str, str]] = []
    delete: list[tuple[str, str, str]] = []
    for b in reversed(newest_first):
        for copy in b.superseded:
            if b.partition_key in deleted and any_verified:  # never while it may be the last good backup
                delete.append((b.partition_key, copy, f"its slot is deleted ({deleted[b.partition_key]})"))
            elif not b.verified:
                keep.append((b.partition_key, copy, "its replacement has not verified yet"))
            elif offsite_enabled and not b.offsite_current:
                keep.append((b.partition_key, copy, "its replacement is not yet verified off-site"))
            else:
                delete.append((b.partition_key, copy, "superseded: its replacement verified"
                                                      + (" and was copied off-site" if offsite_enabled else "")))
    return keep, delete


def _delete_reason(b: BackupInfo, policy: RetentionPolicy) -> str:
    parts = [f"captured {iso(_aware(b.captured_at))}"]
    if policy.keep_days is not None:
        parts.append(f"older than keep_days={policy.keep_days}")
    rules = [f"keep_{k}={v}" for k, v in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly),
                                           ("monthly", policy.keep_monthly)) if v]
    if rules:
        parts.append(f"not selected by {', '.join(rules)}")
    return ", ".join(parts)





# --- WAL (point-in-time recovery) ------------------------------------------------------


@dataclass(frozen=True)
class WalBase:
    """A base backup as the WAL rule sees it: where its WAL starts, and whether it verified."""

    partition_key: str
    timeline: int
    start_segno: int
    verified: bool


def plan_wal(segments: Sequence[tuple[int, int]], bases: Sequence[WalBase], kept: Sequence[str]
             ) -> list[tuple[int, int]]:
    """The WAL segments (timeline, number) that may be deleted, oldest first (pure).

    A segment is deleted only when it is older than the start of EVERY kept base backup and of the newest
    verified base backup (kept or not): each kept base backup can be recovered to any point after it, and
    nothing newer than the newest verified base backup is ever pruned. Without a verified base backup,
    nothing is deleted.
    """
    verified = [b for b in bases if b.verified]
    if not verified:
        return []
    newest = max(verified, key=lambda b: (b.timeline, b.start_segno))
    floor = [newest, *(b for b in bases if b.partition_key in set(kept))]
    return sorted(s for s in set(segments)
                  if all(s[1] < b.start_segno and s[0] <= b.timeline for b in floor))
