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

Applying a plan deletes the delete-list only, appends one JSON line per deletion
to `<backup_dir>/_retention/deletions.jsonl` (for the auditor report), and never
leaves a half-deleted backup that looks complete: a local backup folder is first
renamed to a hidden `.deleting-*` name (atomic), an off-site copy loses its
manifest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
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



