"""The auditor report: one row per EXPECTED backup slot, judged by its checks (no Dagster decorators).

Sources, all read in bulk (a handful of queries per store, never one per slot):
* the Dagster instance: materializations of `<store>_backup` and `<store>_offsite`
  (public `fetch_materializations`), every asset check's execution history
  (`cb_backups.history`, the one wrapper of a non-public API), failed runs;
* the catalog on disk (manifests: captured_at, bytes, sha256);
* the retention log (`Catalog.deletions_log`).

A slot is "verified" when the latest result of each of its post-backup checks
passed, "failed" when one failed (or its backup run failed), "unverified" when
it was backed up but never checked, and "missed" when nothing happened at all.
A materialization alone never counts: a failed blocking check still records one.

Rendered as one self-contained HTML file (inline CSS and SVG), CSV (one line per
slot) or JSON (everything, with every artifact's sha256). Secrets known to the
settings or the environment are redacted from the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from cb_backups.checks.slot import DRILL_CHECK, FRESHNESS_CHECK, OFFSITE_CHECK, SLOT_CHECKS
from cb_backups.core.catalog import MANIFEST, Catalog, parse_iso
from cb_backups.core.errors import ConfigError
from cb_backups.core.fileio import sha256_file
from cb_backups.core.partitions import TIMEZONE
from cb_backups.core.specs import STORES, StoreSpec, spec_for
from cb_backups.offsite.state import OFFSITE_FRESHNESS_CHECK, STALE, VERIFIED, Seen, offsite_state
from cb_backups.offsite.subset import SUBSET_CHECK
from cb_backups.offsite.subset import coverage as deep_coverage
from cb_backups.offsite.subset import describe as describe_coverage
from cb_backups.report import history
from cb_backups.retention.apply import read_deletions

FORMATS = ("html", "csv", "json")
NOT_CONFIGURED = "not configured"  # a slot's status, and a store's verdict, when it has no connection settings
PAGE = 2000
_RTO_KEYS = ("rto_seconds", "restore_seconds", "duration_seconds", "seconds", "rto")
_OFFSITE_KEYS = ("url", "s3_url", "location", "prefix", "key", "manifest_key", "keys")


# --- the model ---------------------------------------------------------------------


@dataclass
class CheckCell:
    status: str  # passed | failed | planned | execution_failed
    at: str
    description: str = ""


@dataclass
class SlotRow:
    store: str
    slot: str
    due: str  # when the slot's window ended (the runbook's cron time)
    status: str = "missed"  # verified | failed | unverified | missed | not configured
    rpo_ok: bool = False
    captured_at: str = ""
    bytes: int | None = None
    duration_seconds: float | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    manifest_sha256: str = ""
    checks: dict[str, CheckCell] = field(default_factory=dict)  # label -> latest result
    offsite_key: str = ""
    offsite_verification: str = ""  # verified | stale | failed | copied, not verified | "" (offsite/state.py)
    offsite_failed_runs: list[str] = field(default_factory=list)
    offsite_error: str = ""
    drill: str = ""
    drill_rto_seconds: float | None = None
    retention: str = ""
    failed_runs: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class StoreSummary:
    store: str
    title: str
    rpo_hours: float
    rto_target_minutes: float
    configured: bool = True  # False: no connection settings; its empty slots are "not configured", not missed
    slots: int = 0
    verified: int = 0
    failed: int = 0
    unverified: int = 0
    missed: int = 0
    rpo_compliant: int = 0
    rpo_compliance: float | None = None  # share of slots with a verified backup within the RPO
    longest_gap_hours: float | None = None
    longest_gap_between: tuple[str, str] = ("", "")
    failed_check_evaluations: int = 0
    failed_runs: int = 0
    offsite_failed_runs: int = 0
    offsite_newest_verified: str = ""  # the newest slot whose verified copy is of its current manifest
    offsite_age_hours: float | None = None  # its age at the end of the period (or now)
    offsite_limit_hours: float = 0.0  # RPO + offsite.rpo_lag_hours
    offsite_rpo_ok: bool | None = None
    offsite_deep_coverage: str = ""  # off-site bytes re-read within the period (offsite/subset.py)
    drills: int = 0
    drills_passed: int = 0
    measured_rto_minutes: float | None = None  # the slowest drill in the period
    rto_met: bool | None = None
    pass_rates: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (passed, total)
    unpartitioned: dict[str, tuple[int, int]] = field(default_factory=dict)  # e.g. freshness


@dataclass
class Report:
    start: str
    end: str
    generated_at: str
    stores: list[StoreSummary]
    rows: list[SlotRow]
    check_labels: list[str]
    dagster_version: str = dg.__version__
    warnings: list[str] = field(default_factory=list)


# --- periods and slots -------------------------------------------------------------


# Report days: the epoch to a year before datetime's last day (the period and its slot lookups run past --to).
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)


def parse_day(text: str, what: str) -> date:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date() if text.isascii() else None
    except (TypeError, ValueError):
        day = None
    if day is None or day.isoformat() != text:
        raise ConfigError(what, text, "a date YYYY-MM-DD")
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ConfigError(what, text, f"a date from {FIRST_DAY} to {LAST_DAY}")
    return day


def period(start: date, end: date, tz: str = TIMEZONE) -> tuple[datetime, datetime]:
    """[start 00:00, the day after `end` 00:00) in the partitions' time zone: both days included."""
    if end < start:
        raise ConfigError("--to", end.isoformat(), f"a date on or after --from {start.isoformat()}")
    zone = ZoneInfo(tz)
    return (datetime.combine(start, datetime.min.time(), zone),
            datetime.combine(end + timedelta(days=1), datetime.min.time(), zone))


def expected_slots(spec: StoreSpec, start: datetime, end: datetime, now: datetime
                   ) -> list[tuple[str, datetime, datetime]]:
    """(key, window start, window end) of every slot starting in [start, end) whose window has ended by now."""
    parts = spec.partitions
    keys = parts.get_partition_keys(current_time=min(now, end + timedelta(days=8)))
    zone = ZoneInfo(parts.timezone or "UTC")
    starts = [datetime.strptime(k, parts.fmt).replace(tzinfo=zone) for k in keys]
    slots = []
    for i, (key, begin) in enumerate(zip(keys, starts, strict=True)):
        if begin < start or begin >= end:
            continue
        finish = starts[i + 1] if i + 1 < len(starts) else parts.time_window_for_partition_key(key).end
        if finish > now:
            continue
        slots.append((key, begin, finish))
    return slots


# --- reading the instance in bulk --------------------------------------------------


@dataclass
class Materialization:
    partition: str
    timestamp: float
    run_id: str
    metadata: dict[str, Any]


def latest_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey, since: float
                            ) -> dict[str, Materialization]:
    """The newest materialization per partition, recorded at or after `since` (paged, newest first)."""
    latest: dict[str, Materialization] = {}
    cursor: str | None = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, after_timestamp=float(since)), limit=PAGE, cursor=cursor)
        for record in result.records:
            event = record.asset_materialization
            if event is None or event.partition is None or event.partition in latest:
                continue
            latest[event.partition] = Materialization(event.partition, record.timestamp, record.run_id,
                                                      history.plain_metadata(event.metadata))
        if not result.has_more or not result.records:
            return latest
        cursor = result.cursor


def seen_copies(materializations: dict[str, Materialization]) -> dict[str, Seen]:
    """Each slot's newest off-site copy with the manifest sha256 it recorded."""
    return {key: Seen(m.timestamp, str(m.metadata.get("manifest_sha256") or "") or None, True, m.run_id)
            for key, m in materializations.items()}


def seen_checks(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, since: float, details: bool = True
                ) -> dict[str, Seen]:
    """Each slot's newest finished `offsite_complete` result with the manifest sha256 it verified
    (`details=False` skips reading passed results' metadata: sha256 unknown, timestamps only)."""
    checks: dict[str, Seen] = {}
    for run in history.check_history(instance, check_key, since, details=details):
        if run.partition is None or run.status not in ("passed", "failed"):
            continue
        seen = checks.get(run.partition)
        if seen is None or run.timestamp > seen.at:  # newest by time: ids follow creation, not evaluation
            checks[run.partition] = Seen(run.timestamp, str(run.metadata.get("manifest_sha256") or "") or None,
                                         run.status == "passed", run.run_id)
    return checks


def offsite_seen(instance: dg.DagsterInstance, offsite_key: dg.AssetKey, check_key: dg.AssetCheckKey, since: float,
                 details: bool = True) -> tuple[dict[str, Seen], dict[str, Seen]]:
    """(newest copy, newest finished check result) per slot since `since` (see seen_copies, seen_checks)."""
    return (seen_copies(latest_materializations(instance, offsite_key, since)),
            seen_checks(instance, check_key, since, details))


TAMPER_CHECK = "tamper_evidence"  # beside each drill (defs/drills.py TAMPER_CHECK; test_report pins them equal)


def store_checks(spec: StoreSpec) -> list[dg.AssetCheckKey]:
    """Every asset check on a store's slots, sorted: the post-backup checks, freshness and the restore drill on
    `<store>_backup`, the off-site checks on `<store>_offsite` (test_report: the definitions build exactly these)."""
    keys = [dg.AssetCheckKey(spec.asset_key, name)
            for name in (*SLOT_CHECKS, FRESHNESS_CHECK, DRILL_CHECK, TAMPER_CHECK)]
    keys += [dg.AssetCheckKey(spec.offsite_key, name) for name in (OFFSITE_CHECK, OFFSITE_FRESHNESS_CHECK,
                                                                   SUBSET_CHECK)]
    keys += [dg.AssetCheckKey(dg.AssetKey(asset), name) for asset, name in
             (related.split(":", 1) for related in spec.related_checks)]  # e.g. the WAL archive's RPO
    return sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name))


def check_label(spec: StoreSpec, key: dg.AssetCheckKey) -> str:
    if key.asset_key == spec.asset_key:
        return key.name
    if key.asset_key == spec.offsite_key:
        return f"offsite:{key.name}"
    return f"{key.asset_key.to_user_string()}:{key.name}"


def failed_runs(instance: dg.DagsterInstance, since: datetime) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], created_after=since)))


def _is_backup_run(run: dg.DagsterRun, spec: StoreSpec) -> bool:
    if run.job_name == f"{spec.name}_backup_job":
        return True
    return bool(run.asset_selection) and spec.asset_key in (run.asset_selection or set())


def _is_offsite_run(run: dg.DagsterRun, spec: StoreSpec) -> bool:
    if run.job_name == f"{spec.offsite_key.to_user_string()}_job":
        return True
    return bool(run.asset_selection) and spec.offsite_key in (run.asset_selection or set())


# --- building ----------------------------------------------------------------------


def as_iso(ts: float | datetime | None) -> str:
    if ts is None:
        return ""
    moment = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _offsite_location(metadata: dict[str, Any]) -> str:
    for value in metadata.values():
        if isinstance(value, str) and value.startswith("s3://"):
            return value
    for name in _OFFSITE_KEYS:
        value = metadata.get(name)
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if value:
            return str(value)
    return ""


def _drill_rto(metadata: dict[str, Any]) -> float | None:
    for name in _RTO_KEYS:
        number = _number(metadata.get(name))
        if number is not None:
            return number
    for name, value in metadata.items():
        if "rto" in name.lower() or name.lower().endswith("seconds"):
            number = _number(value)
            if number is not None:
                return number * 60 if name.lower().endswith("minutes") else number
    return None


def build_report(instance: dg.DagsterInstance, backup_dir: Path, start: datetime, end: datetime,
                 stores: Sequence[str] | None = None, now: datetime | None = None,
                 offsite_lag_hours: float = 1.0, configured: Sequence[str] | None = None) -> Report:
    """Read everything for the period (bulk queries) and judge every expected slot.

    `configured`: the stores with connection settings (None: all). A slot of any other store that has
    no backup is "not configured" (not missed), and the store has no RPO compliance (None, not 0%).

    Off-site state per slot is `offsite.state.offsite_state`: a passing check about an older manifest
    than the slot's current one is "stale", never "verified"."""
    now = now or datetime.now(UTC)
    specs = [spec_for(s) for s in stores] if stores else list(STORES)
    warnings: list[str] = []
    if not history.version_guard():
        warnings.append(f"dagster {dg.__version__} is not the version cb_backups.history was checked on "
                        f"({history.PINNED_DAGSTER}); check results may be incomplete")
    since = start.timestamp()
    catalog = Catalog(backup_dir)
    deletions: dict[tuple[str, str], list[str]] = {}
    for record in read_deletions(catalog.root):
        deletions.setdefault((record.store, record.partition), []).append(
            f"deleted {record.where} {record.deleted_at} ({record.reason})")
    runs = failed_runs(instance, start)
    errors_left = 100  # look up at most this many failed runs' messages
    rows: list[SlotRow] = []
    summaries: list[StoreSummary] = []
    labels: list[str] = []
    for spec in specs:
        slots = expected_slots(spec, start, end, now)
        slot_keys = {key for key, _, _ in slots}
        backups = latest_materializations(instance, spec.asset_key, since)
        offsite_mats = latest_materializations(instance, spec.offsite_key, since)
        copies = seen_copies(offsite_mats)
        off_checks = seen_checks(instance, dg.AssetCheckKey(spec.offsite_key, OFFSITE_CHECK), since)
        on_disk = {a.partition_key: a for a in catalog.list(spec.name)}
        summary = StoreSummary(spec.name, spec.title, spec.rpo / timedelta(hours=1), spec.rto / timedelta(minutes=1),
                               configured=configured is None or spec.name in configured)
        summary.offsite_deep_coverage = describe_coverage(deep_coverage(catalog, spec.name))
        latest: dict[tuple[str, str], history.CheckRun] = {}
        for key in store_checks(spec):
            label = check_label(spec, key)
            runs_of = history.check_history(instance, key, since, details=key.name == DRILL_CHECK)
            passed = total = 0
            for run in runs_of:  # newest first
                if run.partition is None:
                    if run.status in ("passed", "failed"):
                        p, t = summary.unpartitioned.get(label, (0, 0))
                        summary.unpartitioned[label] = (p + (run.status == "passed"), t + 1)
                    if key.name == DRILL_CHECK and run.metadata.get("partition") in slot_keys:
                        latest.setdefault((label, str(run.metadata["partition"])), run)
                    continue
                if run.partition not in slot_keys:
                    continue
                latest.setdefault((label, run.partition), run)
                if run.status in ("passed", "failed"):
                    total += 1
                    passed += run.status == "passed"
                    if run.status == "failed" and key.asset_key == spec.asset_key and key.name != DRILL_CHECK:
                        summary.failed_check_evaluations += 1
            if total or label in SLOT_CHECKS or any(k[0] == label for k in latest):
                summary.pass_rates[label] = (passed, total)
        labels += [label for label in summary.pass_rates if label not in labels]
        store_runs: dict[str, list[str]] = {}
        offsite_runs: dict[str, list[str]] = {}
        failed_run_ids = set()
        for run in runs:
            part = run.tags.get("dagster/partition")
            if part in slot_keys and _is_backup_run(run, spec):
                store_runs.setdefault(part, []).append(run.run_id)
                failed_run_ids.add(run.run_id)
            elif part in slot_keys and _is_offsite_run(run, spec):
                offsite_runs.setdefault(part, []).append(run.run_id)
                failed_run_ids.add(run.run_id)
        summary.failed_runs = sum(len(v) for v in store_runs.values())
        summary.offsite_failed_runs = sum(len(v) for v in offsite_runs.values())
        summary.offsite_limit_hours = round((spec.rpo.total_seconds() + offsite_lag_hours * 3600) / 3600, 2)
        newest_copy: tuple[datetime, str] | None = None
        slot_labels = [label for label in summary.pass_rates if label in SLOT_CHECKS] or \
            [label for label in summary.pass_rates if ":" not in label and label != DRILL_CHECK]

        verified_times: list[tuple[datetime, str]] = []
        rto_seen: list[float] = []
        for key, _begin, finish in slots:
            row = SlotRow(spec.name, key, as_iso(finish))
            for label in summary.pass_rates:
                run = latest.get((label, key))
                if run is not None:
                    status = run.status
                    if status == "planned" and run.run_id in failed_run_ids:
                        status = "execution_failed"
                    row.checks[label] = CheckCell(status, as_iso(run.timestamp), run.description)
            mat, artifact = backups.get(key), on_disk.get(key)
            if artifact is not None:
                m = artifact.manifest
                row.captured_at, row.bytes, row.duration_seconds = m.captured_at, m.total_bytes, m.duration_seconds
                row.sha256 = {f.name: f.sha256 for f in m.files}
            if mat is not None:
                meta = mat.metadata
                captured = meta.get("captured_at")  # MetadataValue.timestamp (seconds); ISO text in older runs
                row.captured_at = row.captured_at or (as_iso(float(captured)) if _number(captured) is not None
                                                      else str(captured or as_iso(mat.timestamp)))
                if row.bytes is None and _number(meta.get("bytes")) is not None:
                    row.bytes = int(meta["bytes"])
                if row.duration_seconds is None:
                    row.duration_seconds = _number(meta.get("duration_seconds"))
                if not row.sha256 and isinstance(meta.get("sha256"), dict):
                    row.sha256 = {str(k): str(v) for k, v in meta["sha256"].items()}
                row.manifest_sha256 = str(meta.get("manifest_sha256") or "")
            row.failed_runs = store_runs.get(key, [])
            results = [row.checks[label].status for label in slot_labels if label in row.checks]
            if mat is None and artifact is None:
                row.status = "failed" if row.failed_runs else "missed"
            elif "failed" in results or "execution_failed" in results:
                row.status = "failed"
            elif results and len(results) == len(slot_labels) and all(r == "passed" for r in results):
                row.status = "verified"
            else:
                row.status = "failed" if row.failed_runs and not results else "unverified"
            if row.status == "verified":
                try:
                    captured = parse_iso(row.captured_at)
                except ValueError:
                    captured = datetime.fromtimestamp(mat.timestamp, UTC) if mat else finish
                row.rpo_ok = captured <= finish + spec.rpo
                verified_times.append((captured, key))
            failing = [f"{label}: {row.checks[label].description}" for label in slot_labels
                       if label in row.checks and row.checks[label].status != "passed"]
            if row.failed_runs and errors_left > 0:
                errors_left -= 1
                failing.insert(0, history.run_failure_message(instance, row.failed_runs[0]))
            row.error = "; ".join(f for f in failing if f)[:500]
            # off-site: verified only when the verified copy is of the slot's current manifest
            off = offsite_mats.get(key)
            if off is not None:
                row.offsite_key = _offsite_location(off.metadata)
            local_sha = (sha256_file(artifact.path(MANIFEST))[0] if artifact is not None
                         else row.manifest_sha256 or None)
            row.offsite_verification = offsite_state(local_sha, copies.get(key), off_checks.get(key))
            if row.offsite_verification == STALE:
                copied = (copies[key].manifest_sha256 or "?") if key in copies else "?"
                row.offsite_error = (f"stale: S3 was last verified with manifest {copied[:12]}…, the slot's is "
                                     f"{str(local_sha)[:12]}…")
            row.offsite_failed_runs = offsite_runs.get(key, [])
            if row.offsite_failed_runs and errors_left > 0:
                errors_left -= 1
                message = history.run_failure_message(instance, row.offsite_failed_runs[0])
                row.offsite_error = "; ".join(e for e in (row.offsite_error, message) if e)[:500]
            if row.offsite_verification == VERIFIED and row.captured_at:
                try:
                    moment = parse_iso(row.captured_at)
                    if newest_copy is None or moment > newest_copy[0]:
                        newest_copy = (moment, key)
                except ValueError:
                    pass
            # restore drill
            drill = latest.get((DRILL_CHECK, key)) or next(
                (latest[(label, key)] for label in summary.pass_rates
                 if label.endswith(DRILL_CHECK) and (label, key) in latest), None)
            if drill is not None:
                row.drill = drill.status
                row.drill_rto_seconds = _drill_rto(drill.metadata)
                summary.drills += 1
                summary.drills_passed += drill.status == "passed"
                if row.drill_rto_seconds is not None and drill.status == "passed":
                    rto_seen.append(row.drill_rto_seconds)
            # retention
            if (spec.name, key) in deletions:
                row.retention = "; ".join(deletions[(spec.name, key)])
            elif artifact is not None:
                row.retention = "kept"
            elif mat is not None:
                row.retention = "not on disk (no deletion recorded)"
            if row.status == "missed" and not summary.configured:
                row.status = NOT_CONFIGURED
            else:
                setattr(summary, row.status, getattr(summary, row.status) + 1)
            summary.rpo_compliant += row.rpo_ok
            rows.append(row)
        summary.slots = len(slots)
        if newest_copy is not None:
            summary.offsite_newest_verified = newest_copy[1]
            summary.offsite_age_hours = round((min(end, now) - newest_copy[0]) / timedelta(hours=1), 2)
            summary.offsite_rpo_ok = summary.offsite_age_hours <= summary.offsite_limit_hours
        elif slots and summary.configured:
            summary.offsite_rpo_ok = False
        if slots and summary.configured:
            summary.rpo_compliance = round(summary.rpo_compliant / len(slots), 4)
            gap = _longest_gap(sorted(verified_times), slots[0][2], min(end, now))
            summary.longest_gap_hours = round(gap[0] / timedelta(hours=1), 2)
            summary.longest_gap_between = gap[1]
        if rto_seen:
            summary.measured_rto_minutes = round(max(rto_seen) / 60, 2)
            summary.rto_met = max(rto_seen) <= spec.rto.total_seconds()
        summaries.append(summary)
    return Report(as_iso(start), as_iso(end), as_iso(now), summaries, rows, labels, warnings=warnings)


def _longest_gap(verified: list[tuple[datetime, str]], first_due: datetime, end: datetime
                 ) -> tuple[timedelta, tuple[str, str]]:
    """The longest stretch without a new verified backup, from the first slot's due time to the period's end."""
    points = [(first_due, "period start"), *verified, (max(end, first_due), "period end")]
    best, between = timedelta(0), ("", "")
    for (a, name_a), (b, name_b) in pairwise(points):
        if b - a > best:
            best, between = b - a, (name_a, name_b)
    return best, between


# --- secrets ---------------------------------------------------------------------------

