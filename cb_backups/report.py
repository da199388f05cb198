"""The auditor report: one row per EXPECTED backup slot, judged by its checks (no Dagster decorators).

Sources, all read in bulk (a handful of queries per store, never one per slot):
* the Dagster instance: materializations of `<store>_backup` and `<store>_offsite`
  (public `fetch_materializations`), every asset check's execution history
  (`cb_backups.history`, the one wrapper of a non-public API), failed runs;
* the catalog on disk (manifests: captured_at, bytes, sha256);
* the retention log `<backup_dir>/_retention/deletions.jsonl`.

A slot is "verified" when the latest result of each of its post-backup checks
passed, "failed" when one failed (or its backup run failed), "unverified" when
it was backed up but never checked, and "missed" when nothing happened at all.
A materialization alone never counts: a failed blocking check still records one.

Rendered as one self-contained HTML file (inline CSS and SVG), CSV (one line per
slot) or JSON (everything, with every artifact's sha256). Secrets known to the
settings or the environment are redacted from the output.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from cb_backups import history
from cb_backups.catalog import Catalog, parse_iso
from cb_backups.errors import ConfigError
from cb_backups.fileio import atomic_write_bytes, private_dir
from cb_backups.partitions import TIMEZONE
from cb_backups.retention import read_deletions
from cb_backups.specs import STORES, StoreSpec, spec_for
from cb_backups.verification import FRESHNESS_CHECK, SLOT_CHECKS

FORMATS = ("html", "csv", "json")
DRILL_CHECK = "restore_drill"
REPORTS_DIR = "_reports"
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
    status: str = "missed"  # verified | failed | unverified | missed
    rpo_ok: bool = False
    captured_at: str = ""
    bytes: int | None = None
    duration_seconds: float | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    manifest_sha256: str = ""
    checks: dict[str, CheckCell] = field(default_factory=dict)  # label -> latest result
    offsite_key: str = ""
    offsite_verification: str = ""
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


def parse_day(text: str, what: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except (TypeError, ValueError):
        raise ConfigError(what, text, "a date YYYY-MM-DD") from None


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
            dg.AssetRecordsFilter(asset_key=asset_key, after_timestamp=since), limit=PAGE, cursor=cursor)
        for record in result.records:
            event = record.asset_materialization
            if event is None or event.partition is None or event.partition in latest:
                continue
            latest[event.partition] = Materialization(event.partition, record.timestamp, record.run_id,
                                                      history.plain_metadata(event.metadata))
        if not result.has_more or not result.records:
            return latest
        cursor = result.cursor


def checks_by_asset(stores: Sequence[StoreSpec], warnings: list[str]) -> dict[str, list[dg.AssetCheckKey]]:
    """Every asset check on `<store>_backup`, `<store>_offsite` (and any `restore_drill`) per store."""
    try:
        from cb_backups.definitions import defs

        keys = list(defs.resolve_asset_graph().asset_check_keys)
    except Exception as exc:  # the report still runs on the core checks
        warnings.append(f"could not load the definitions ({type(exc).__name__}: {exc}); using the core checks")
        keys = [dg.AssetCheckKey(s.asset_key, n) for s in stores for n in (*SLOT_CHECKS, FRESHNESS_CHECK)]
    found: dict[str, list[dg.AssetCheckKey]] = {}
    for spec in stores:
        mine = {f"{spec.name}_backup", f"{spec.name}_offsite"}
        found[spec.name] = sorted(
            (k for k in keys if k.asset_key.to_user_string() in mine
             or (k.name == DRILL_CHECK and k.asset_key.to_user_string().startswith(spec.name))),
            key=lambda k: (k.asset_key.to_user_string(), k.name))
    return found


def check_label(spec: StoreSpec, key: dg.AssetCheckKey) -> str:
    asset = key.asset_key.to_user_string()
    if asset == f"{spec.name}_backup":
        return key.name
    if asset == f"{spec.name}_offsite":
        return f"offsite:{key.name}"
    return f"{asset}:{key.name}"


def failed_runs(instance: dg.DagsterInstance, since: datetime) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], created_after=since)))


def _is_backup_run(run: dg.DagsterRun, spec: StoreSpec) -> bool:
    if run.job_name == f"{spec.name}_backup_job":
        return True
    return bool(run.asset_selection) and spec.asset_key in (run.asset_selection or set())


# --- building ----------------------------------------------------------------------


def _iso(ts: float | datetime | None) -> str:
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
                 stores: Sequence[str] | None = None, now: datetime | None = None) -> Report:
    """Read everything for the period (bulk queries) and judge every expected slot."""
    now = now or datetime.now(UTC)
    specs = [spec_for(s) for s in stores] if stores else list(STORES)
    warnings: list[str] = []
    if not history.version_guard():
        warnings.append(f"dagster {dg.__version__} is not the version cb_backups.history was checked on "
                        f"({history.PINNED_DAGSTER}); check results may be incomplete")
    since = start.timestamp()
    catalog = Catalog(backup_dir)
    deletions: dict[tuple[str, str], list[str]] = {}
    for record in read_deletions(backup_dir):
        deletions.setdefault((record.store, record.partition), []).append(
            f"deleted {record.where} {record.deleted_at} ({record.reason})")
    runs = failed_runs(instance, start)
    all_checks = checks_by_asset(specs, warnings)
    errors_left = 100  # look up at most this many failed runs' messages
    rows: list[SlotRow] = []
    summaries: list[StoreSummary] = []
    labels: list[str] = []
    for spec in specs:
        slots = expected_slots(spec, start, end, now)
        slot_keys = {key for key, _, _ in slots}
        backups = latest_materializations(instance, spec.asset_key, since)
        offsite = latest_materializations(instance, dg.AssetKey(f"{spec.name}_offsite"), since)
        on_disk = {a.partition_key: a for a in catalog.list(spec.name)}
        summary = StoreSummary(spec.name, spec.title, spec.rpo / timedelta(hours=1), spec.rto / timedelta(minutes=1))
        latest: dict[tuple[str, str], history.CheckRun] = {}
        for key in all_checks[spec.name]:
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
        failed_run_ids = set()
        for run in runs:
            part = run.tags.get("dagster/partition")
            if part in slot_keys and _is_backup_run(run, spec):
                store_runs.setdefault(part, []).append(run.run_id)
                failed_run_ids.add(run.run_id)
        summary.failed_runs = sum(len(v) for v in store_runs.values())
        slot_labels = [label for label in summary.pass_rates if label in SLOT_CHECKS] or \
            [label for label in summary.pass_rates if ":" not in label and label != DRILL_CHECK]
        offsite_labels = [label for label in summary.pass_rates if label.startswith("offsite:")]

        verified_times: list[tuple[datetime, str]] = []
        rto_seen: list[float] = []
        for key, _begin, finish in slots:
            row = SlotRow(spec.name, key, _iso(finish))
            for label in summary.pass_rates:
                run = latest.get((label, key))
                if run is not None:
                    status = run.status
                    if status == "planned" and run.run_id in failed_run_ids:
                        status = "execution_failed"
                    row.checks[label] = CheckCell(status, _iso(run.timestamp), run.description)
            mat, artifact = backups.get(key), on_disk.get(key)
            if artifact is not None:
                m = artifact.manifest
                row.captured_at, row.bytes, row.duration_seconds = m.captured_at, m.total_bytes, m.duration_seconds
                row.sha256 = {f.name: f.sha256 for f in m.files}
            if mat is not None:
                meta = mat.metadata
                row.captured_at = row.captured_at or str(meta.get("captured_at") or _iso(mat.timestamp))
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
            # off-site
            off = offsite.get(key)
            if off is not None:
                row.offsite_key = _offsite_location(off.metadata)
            off_results = [row.checks[label].status for label in offsite_labels if label in row.checks]
            if "failed" in off_results:
                row.offsite_verification = "failed"
            elif off_results and len(off_results) == len(offsite_labels):
                row.offsite_verification = "verified"
            elif off is not None:
                row.offsite_verification = "copied, not verified"
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
            setattr(summary, row.status, getattr(summary, row.status) + 1)
            summary.rpo_compliant += row.rpo_ok
            rows.append(row)
        summary.slots = len(slots)
        if slots:
            summary.rpo_compliance = round(summary.rpo_compliant / len(slots), 4)
            gap = _longest_gap(sorted(verified_times), slots[0][2], min(end, now))
            summary.longest_gap_hours = round(gap[0] / timedelta(hours=1), 2)
            summary.longest_gap_between = gap[1]
        if rto_seen:
            summary.measured_rto_minutes = round(max(rto_seen) / 60, 2)
            summary.rto_met = max(rto_seen) <= spec.rto.total_seconds()
        summaries.append(summary)
    return Report(_iso(start), _iso(end), _iso(now), summaries, rows, labels, warnings=warnings)


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

_SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK|CREDENTIAL)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]+):[^@/\s]+@", re.I)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values to redact: every secret in the settings and secret-named environment variables."""
    env = dict(os.environ if env is None else env)
    values: list[str] = [v for k, v in env.items() if _SECRET_ENV.search(k) and not k.endswith("_FILE")]
    try:
        from cb_backups.settings import load_settings

        settings = load_settings(env)
        values.append(settings.webhook_url or "")
        for name in settings.configured_stores():
            store = getattr(settings, name)
            values += [getattr(store, attr, None) or "" for attr in ("password", "api_key")]
    except Exception:  # a broken config file is reported elsewhere
        pass
    return sorted({v for v in values if v and len(v) >= 6}, key=len, reverse=True)


def redactor(env: dict[str, str] | None = None) -> Callable[[str], str]:
    secrets = secret_values(env)

    def redact(text: str) -> str:
        for value in secrets:
            text = text.replace(value, "<redacted>")
        return _URL_PASSWORD.sub(r"\g<head>:<redacted>@", text)

    return redact


# --- rendering ---------------------------------------------------------------------


def artifacts(report: Report) -> list[dict[str, Any]]:
    return [{"store": r.store, "slot": r.slot, "file": name, "sha256": digest}
            for r in report.rows for name, digest in sorted(r.sha256.items())]


def to_json(report: Report) -> str:
    data = asdict(report)
    data["artifacts"] = artifacts(report)
    data["format"] = "cb-backups auditor report v1"
    return json.dumps(data, sort_keys=True, default=str) + "\n"


CSV_BASE = ["store", "slot", "due", "status", "rpo_ok", "captured_at", "bytes", "duration_seconds", "sha256",
            "manifest_sha256"]
CSV_TAIL = ["offsite_key", "offsite_verification", "drill", "drill_rto_seconds", "retention", "failed_runs", "error"]


def to_csv(report: Report) -> str:
    out = io.StringIO()
    header = [*CSV_BASE]
    for label in report.check_labels:
        header += [label, f"{label}_at"]
    header += CSV_TAIL
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for r in report.rows:
        line: list[Any] = [r.store, r.slot, r.due, r.status, r.rpo_ok, r.captured_at,
                           "" if r.bytes is None else r.bytes, "" if r.duration_seconds is None else r.duration_seconds,
                           ";".join(f"{k}={v}" for k, v in sorted(r.sha256.items())), r.manifest_sha256]
        for label in report.check_labels:
            cell = r.checks.get(label)
            line += [cell.status, cell.at] if cell else ["", ""]
        line += [r.offsite_key, r.offsite_verification, r.drill,
                 "" if r.drill_rto_seconds is None else r.drill_rto_seconds, r.retention, " ".join(r.failed_runs),
                 r.error]
        writer.writerow(line)
    return out.getvalue()


def _svg_series(title: str, series: dict[str, list[tuple[float, float]]], unit: str, width: int = 900,
                height: int = 220) -> str:
    """A line plot of several series (x: epoch seconds, y: value) as inline SVG."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    pts = [p for s in series.values() for p in s]
    esc = html.escape
    if not pts:
        return f'<p class="muted">{esc(title)}: no data</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y1 = max(p[1] for p in pts) or 1.0
    left, right, top, bottom = 70, 10, 40, 30
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (0.5 if x1 == x0 else (x - x0) / (x1 - x0)) * w

    def sy(y: float) -> float:
        return top + h - (y / y1) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
             f'<text x="{left}" y="16" class="t">{esc(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="a">{_human(y1, unit)}</text>',
             f'<text x="{left - 4}" y="{top + h}" text-anchor="end" class="a">0</text>',
             f'<text x="{left}" y="{height - 8}" class="a">{_iso(x0)[:16]}</text>',
             f'<text x="{left + w}" y="{height - 8}" text-anchor="end" class="a">{_iso(x1)[:16]}</text>']
    legend_x = left
    for i, (name, points) in enumerate(sorted(series.items())):
        if not points:
            continue
        color = colors[i % len(colors)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(points))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<rect x="{legend_x}" y="24" width="10" height="10" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="33" class="a">{esc(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(title: str, bars: list[tuple[str, int, int]], width: int = 900) -> str:
    """Horizontal bars of pass rates: (label, passed, total)."""
    esc = html.escape
    if not bars:
        return f'<p class="muted">{esc(title)}: no check results</p>'
    row_h, left = 18, 260
    height = 28 + row_h * len(bars)
    w = width - left - 150
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
             f'<text x="4" y="16" class="t">{esc(title)}</text>']
    for i, (label, passed, total) in enumerate(bars):
        y = 24 + i * row_h
        rate = passed / total if total else 0.0
        color = "#2ca02c" if total and rate == 1 else ("#ff7f0e" if rate >= 0.9 else "#d62728")
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" class="a">{esc(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{w}" height="{row_h - 5}" fill="#eee"/>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{w * rate:.1f}" height="{row_h - 5}" fill="{color}"/>')
        text = f"{rate:.1%} ({passed}/{total})" if total else "no results"
        parts.append(f'<text x="{left + w + 4}" y="{y + 12}" class="a">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _human(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "bytes":
        for name, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    return f"{value:.1f} {unit}"


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top;font-size:12px}
th{background:#f4f4f4;position:sticky;top:0}.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}
.warn{color:#b26a00}.muted{color:#777}.t{font:600 13px sans-serif}.a{font:11px sans-serif;fill:#444}
td.mono{font-family:ui-monospace,monospace;font-size:11px}details{margin:6px 0}
td:nth-child(-n+7){white-space:nowrap}
"""
_STATUS_CLASS = {"verified": "ok", "passed": "ok", "failed": "bad", "execution_failed": "bad", "missed": "bad",
                 "unverified": "warn", "planned": "warn", "copied, not verified": "warn"}


def _cell(text: Any, cls: str = "") -> str:
    value = "" if text is None else str(text)
    css = cls or _STATUS_CLASS.get(value, "")
    return f'<td class="{css}">{html.escape(value)}</td>' if css else f"<td>{html.escape(value)}</td>"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def to_html(report: Report) -> str:
    esc = html.escape
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           f"<title>cb-backups auditor report {esc(report.start[:10])} to {esc(report.end[:10])}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>cb-backups auditor report</h1>",
           f"<p>Period <b>{esc(report.start)}</b> to <b>{esc(report.end)}</b> (end excluded); generated "
           f"{esc(report.generated_at)} from the Dagster instance (dagster {esc(report.dagster_version)}), the "
           "backup catalog and the retention log. One row per expected slot; a slot counts as backed up only "
           "when every post-backup check passed.</p>"]
    for warning in report.warnings:
        out.append(f'<p class="warn">warning: {esc(warning)}</p>')
    out.append("<h2>Summary</h2><table><tr>")
    heads = ["store", "slots", "verified", "failed", "unverified", "missed", "RPO", "RPO compliance",
             "longest gap", "failed checks", "failed runs", "drills passed", "measured RTO", "RTO target",
             "RTO met"]
    out.append("".join(f"<th>{h}</th>" for h in heads) + "</tr>")
    for s in report.stores:
        compliance_cls = "ok" if s.rpo_compliance == 1 else ("bad" if s.rpo_compliance is not None else "muted")
        rto_cls = {True: "ok", False: "bad", None: "muted"}[s.rto_met]
        gap = "n/a" if s.longest_gap_hours is None else (
            f"{s.longest_gap_hours:g} h ({s.longest_gap_between[0]} → {s.longest_gap_between[1]})")
        out.append("<tr>" + "".join([
            _cell(s.store), _cell(s.slots), _cell(s.verified, "ok" if s.verified else ""),
            _cell(s.failed, "bad" if s.failed else ""), _cell(s.unverified, "warn" if s.unverified else ""),
            _cell(s.missed, "bad" if s.missed else ""), _cell(f"{s.rpo_hours:g} h"),
            _cell(_pct(s.rpo_compliance), compliance_cls), _cell(gap),
            _cell(s.failed_check_evaluations, "bad" if s.failed_check_evaluations else ""),
            _cell(s.failed_runs, "bad" if s.failed_runs else ""), _cell(f"{s.drills_passed}/{s.drills}"),
            _cell("no drill" if s.measured_rto_minutes is None else f"{s.measured_rto_minutes:g} min", rto_cls),
            _cell(f"{s.rto_target_minutes:g} min"),
            _cell({True: "yes", False: "NO", None: "n/a"}[s.rto_met], rto_cls)]) + "</tr>")
    out.append("</table>")

    by_store: dict[str, list[SlotRow]] = {}
    for row in report.rows:
        by_store.setdefault(row.store, []).append(row)
    out.append("<h2>Backup size and duration over time</h2>")

    def when(r: SlotRow) -> float | None:
        try:
            return parse_iso(r.captured_at).timestamp() if r.captured_at else None
        except ValueError:
            return None

    sizes = {s: [(t, float(r.bytes)) for r in rows if r.bytes is not None and (t := when(r)) is not None]
             for s, rows in by_store.items()}
    durations = {s: [(t, float(r.duration_seconds)) for r in rows
                     if r.duration_seconds is not None and (t := when(r)) is not None] for s, rows in by_store.items()}
    out.append(_svg_series("backup size", sizes, "bytes"))
    out.append(_svg_series("backup duration", durations, "s"))
    out.append("<h2>Check pass rates</h2>")
    bars = [(f"{s.store} {label}", p, t) for s in report.stores for label, (p, t) in s.pass_rates.items()]
    bars += [(f"{s.store} {label} (unpartitioned)", p, t) for s in report.stores
             for label, (p, t) in s.unpartitioned.items()]
    out.append(_svg_bars("share of check evaluations that passed, per store and check", bars))

    out.append("<h2>Slots</h2>")
    for store, rows in by_store.items():
        labels = [label for label in report.check_labels if any(label in r.checks for r in rows)]
        bad = sum(r.status != "verified" for r in rows)
        out.append(f"<details{' open' if bad and len(rows) <= 400 else ''}><summary><b>{esc(store)}</b>: "
                   f"{len(rows)} slots, {bad} not verified</summary><table><tr>")
        heads = ["slot", "due", "status", "within RPO", "captured_at", "bytes", "seconds", "sha256", *labels,
                 "off-site key", "off-site", "drill", "RTO s", "retention", "error"]
        out.append("".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>")
        for r in rows:
            cells = [_cell(r.slot), _cell(r.due), _cell(r.status), _cell("yes" if r.rpo_ok else "no",
                                                                         "ok" if r.rpo_ok else "bad"),
                     _cell(r.captured_at), _cell("" if r.bytes is None else f"{r.bytes:,}"),
                     _cell("" if r.duration_seconds is None else f"{r.duration_seconds:g}"),
                     '<td class="mono">' + "<br>".join(f"{esc(k)}: {esc(v)}" for k, v in sorted(r.sha256.items()))
                     + "</td>"]
            for label in labels:
                c = r.checks.get(label)
                cells.append(f'<td class="{_STATUS_CLASS.get(c.status, "")}" title="{esc(c.at)} {esc(c.description)}">'
                             f"{esc(c.status)}</td>" if c else "<td></td>")
            cells += [_cell(r.offsite_key), _cell(r.offsite_verification), _cell(r.drill),
                      _cell("" if r.drill_rto_seconds is None else f"{r.drill_rto_seconds:g}"), _cell(r.retention),
                      _cell(r.error)]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table></details>")
    out.append("</body></html>\n")
    return "".join(out)


RENDERERS: dict[str, Callable[[Report], str]] = {"html": to_html, "csv": to_csv, "json": to_json}


def render(report: Report, fmt: str, redact: Callable[[str], str] | None = None) -> bytes:
    if fmt not in RENDERERS:
        raise ConfigError("report format", fmt, ", ".join(FORMATS))
    text = RENDERERS[fmt](report)
    return (redact or redactor())(text).encode()


def write_report(report: Report, fmt: str, path: Path, redact: Callable[[str], str] | None = None) -> str:
    """Render and write atomically (0600); returns the file's sha256."""
    data = render(report, fmt, redact)
    if not Path(path).parent.exists():
        private_dir(Path(path).parent)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def write_all(report: Report, formats: Iterable[str], directory: Path, stem: str) -> dict[str, tuple[Path, str]]:
    redact = redactor()
    written = {}
    for fmt in formats:
        path = Path(directory) / f"{stem}.{fmt}"
        written[fmt] = (path, write_report(report, fmt, path, redact))
    return written
