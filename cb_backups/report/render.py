"""The auditor report rendered: one self-contained HTML file (inline CSS and SVG), CSV, JSON.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cb_backups.config.redact import redactor
from cb_backups.config.settings import configured_secrets
from cb_backups.core.catalog import parse_iso
from cb_backups.core.errors import ConfigError
from cb_backups.core.fileio import atomic_write_bytes, private_dir
from cb_backups.report.build import FORMATS, Report, SlotRow, StoreSummary, as_iso


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
CSV_TAIL = ["offsite_key", "offsite_verification", "offsite_failed_runs", "offsite_error", "drill", "drill_rto_seconds",
            "retention", "failed_runs", "error"]


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
        line += [r.offsite_key, r.offsite_verification, " ".join(r.offsite_failed_runs), r.offsite_error, r.drill,
                 "" if r.drill_rto_seconds is None else r.drill_rto_seconds, r.retention, " ".join(r.failed_runs),
                 r.error]
        writer.writerow(line)
    return out.getvalue()


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above `value` (an axis top a reader can read)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10 ** exponent
        if top >= value * (1 - 1e-9):
            return float(top)
    return float(10 ** (exponent + 1))


def _svg_series(title: str, series: dict[str, list[tuple[float, float]]], unit: str, width: int = 900,
                height: int = 240) -> str:
    """A line plot of several series (x: epoch seconds, y: value) as inline SVG that scales to its box.

    Every point has a marker (one point draws no line), the y axis runs from 0 to a round value above the
    largest one with gridlines at quarters, and one instant (or one point) gets an hour either side."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    pts = [p for s in series.values() for p in s]
    esc = html.escape
    if not pts:
        return f'<p class="muted">{esc(title)}: no data</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if x1 - x0 < 3600:
        x0, x1 = (x0 + x1) / 2 - 3600, (x0 + x1) / 2 + 3600
    top_value = max(p[1] for p in pts)
    scale = _unit_size(top_value) if unit == "bytes" else 1.0  # round MiB, not round bytes
    y1 = _nice_ceiling(top_value / scale) * scale
    left, right, top, bottom = 80, 20, 44, 34
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + h - (y / y1) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="plot" role="img" '
             f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
             f'<text x="{left}" y="16" class="t">{esc(title)}</text>']
    for i in range(5):  # gridlines and labels at 0, 1/4, 1/2, 3/4, top
        value = y1 * i / 4
        y = sy(value)
        stroke = "#999" if i == 0 else "#e4e4e4"
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="{stroke}"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="a">{_human(value, unit)}</text>')
    parts += [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#999"/>',
              f'<text x="{left}" y="{height - 10}" class="a">{as_iso(x0)[:16].replace("T", " ")}</text>',
              f'<text x="{left + w / 2:.1f}" y="{height - 10}" text-anchor="middle" class="a">'
              f'{as_iso((x0 + x1) / 2)[:16].replace("T", " ")}</text>',
              f'<text x="{left + w}" y="{height - 10}" text-anchor="end" class="a">'
              f'{as_iso(x1)[:16].replace("T", " ")} UTC</text>']
    legend_x = left
    for i, (name, points) in enumerate(sorted(series.items())):
        if not points:
            continue
        color = colors[i % len(colors)]
        ordered = sorted(points)
        if len(ordered) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        radius = 3.5 if len(ordered) <= 60 else 2
        for x, y in ordered:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{radius}" fill="{color}">'
                         f"<title>{esc(name)} {as_iso(x)}: {_human(y, unit, exact=True)}</title></circle>")
        if len(ordered) == 1:  # a lone point: say its value beside it
            x, y = ordered[0]
            parts.append(f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}" class="a">'
                         f"{_human(y, unit, exact=True)}</text>")
        parts.append(f'<rect x="{legend_x}" y="24" width="10" height="10" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="33" class="a">{esc(name)} ({len(ordered)})</text>')
        legend_x += 44 + 7 * len(name)
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


def _unit_size(value: float) -> float:
    return next((float(size) for size in (1 << 30, 1 << 20, 1 << 10) if value >= size), 1.0)


def _when(text: str) -> str:
    """An ISO time as `2026-11-24 06:00` (UTC, minutes): what a reader needs; the CSV/JSON keep it whole."""
    try:
        return as_iso(parse_iso(text))[:16].replace("T", " ") if text else ""
    except ValueError:
        return text


def _human(value: float | None, unit: str, exact: bool = False) -> str:
    """A value with its unit, to 3 significant digits (`exact`: a measured value; else an axis label)."""
    if value is None:
        return ""
    if unit == "bytes":
        for name, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} B"
    return f"{value:.3g} {unit}" if value or exact else f"0 {unit}"


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1500px;padding:0 16px;
color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
.scroll{overflow:auto;max-width:100%;max-height:80vh;border:1px solid #ddd;margin:8px 0}
table{border-collapse:separate;border-spacing:0;width:max-content;max-width:none}
th,td{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:top;font-size:12px;max-width:22em;overflow-wrap:break-word}
th{background:#f4f4f4;position:sticky;top:0;z-index:1;white-space:nowrap}
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}
.warn{color:#b26a00}.muted{color:#777}.t{font:600 13px sans-serif}.a{font:11px sans-serif;fill:#444}
td.mono{font-family:ui-monospace,monospace;font-size:11px;white-space:nowrap;max-width:none}
td.nowrap{white-space:nowrap}details{margin:6px 0}summary{cursor:pointer}
svg.plot{width:100%;max-width:900px;height:auto;display:block}
ul.verdicts{padding-left:20px}ul.verdicts li{margin:3px 0}
@page{size:A4 landscape;margin:12mm}
@media print{
body{margin:0;max-width:none;padding:0;font-size:11px}
.scroll{overflow:visible;max-height:none;border:0}
table{width:100%}th{position:static}thead{display:table-header-group}
tr,svg,li{break-inside:avoid}h2{break-after:avoid}
th,td{font-size:9px;max-width:16em;padding:2px 3px}th{white-space:normal}td.mono{font-size:8px}
summary{list-style:none}
details::details-content{content-visibility:visible;display:block}
}
"""
_STATUS_CLASS = {"verified": "ok", "passed": "ok", "failed": "bad", "execution_failed": "bad", "missed": "bad",
                 "unverified": "warn", "planned": "warn", "copied, not verified": "warn", "not configured": "muted"}


def _cell(text: Any, cls: str = "") -> str:
    value = "" if text is None else str(text)
    css = cls or _STATUS_CLASS.get(value, "")
    return f'<td class="{css}">{html.escape(value)}</td>' if css else f"<td>{html.escape(value)}</td>"


def verdict(s: StoreSummary) -> tuple[str, str]:
    """The period's verdict for one store, in one sentence, and its CSS class (ok, warn, bad, muted)."""
    if not s.configured:
        return "muted", f"{s.store}: not configured (no connection settings), so nothing was expected."
    if not s.slots:
        return "muted", f"{s.store}: no slot was due in the period."
    problems = []
    if s.missed or s.failed:
        problems.append(f"{s.missed + s.failed} of {s.slots} slots missed or failed")
    if s.unverified:
        problems.append(f"{s.unverified} not verified yet")
    late = s.slots - s.missed - s.failed - s.rpo_compliant
    if s.rpo_compliance is not None and s.rpo_compliance < 1 and late > 0:
        problems.append(f"{late} backed up outside the RPO")
    if s.offsite_rpo_ok is False:
        problems.append("no current verified off-site copy within the off-site RPO")
    if s.rto_met is False:
        problems.append(f"the slowest drill took {s.measured_rto_minutes:g} min against a "
                        f"{s.rto_target_minutes:g} min RTO")
    compliance = _pct(s.rpo_compliance)
    drills = ("no restore drill ran" if not s.drills else
              f"{s.drills_passed} of {s.drills} restore drills passed"
              + (f" (slowest {s.measured_rto_minutes:g} min, RTO {s.rto_target_minutes:g} min)"
                 if s.measured_rto_minutes is not None else ""))
    offsite = ("" if s.offsite_rpo_ok is None else
               "; off-site copies current" if s.offsite_rpo_ok else "")
    if problems:
        cls = "bad" if (s.missed or s.failed or s.offsite_rpo_ok is False or s.rto_met is False) else "warn"
        return cls, (f"{s.store}: NOT met: {'; '.join(problems)} (RPO {s.rpo_hours:g} h compliance "
                     f"{compliance}); {drills}.")
    slots = f"all {s.slots} slots" if s.slots > 1 else "its one slot"
    return "ok", (f"{s.store}: met: {slots} verified within the {s.rpo_hours:g} h RPO "
                  f"({compliance}){offsite}; {drills}.")


def _table(heads: Iterable[str]) -> str:
    """The opening of a table that scrolls sideways inside its own box, with a header row that stays."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return f'<div class="scroll"><table><thead><tr>{cells}</tr></thead><tbody>'


_TABLE_END = "</tbody></table></div>"


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
    out.append('<h2>Verdict</h2><ul class="verdicts">')
    for s in report.stores:
        cls, sentence = verdict(s)
        out.append(f'<li class="{cls}">{esc(sentence)}</li>')
    out.append("</ul>")
    for warning in report.warnings:
        out.append(f'<p class="warn">warning: {esc(warning)}</p>')
    out.append("<h2>Summary</h2>")
    heads = ["store", "slots", "verified", "failed", "unverified", "missed", "RPO", "RPO compliance",
             "longest gap", "failed checks", "failed runs", "off-site RPO", "failed off-site runs",
             "off-site deep re-read", "drills passed", "measured RTO", "RTO target", "RTO met"]
    out.append(_table(heads))
    for s in report.stores:
        compliance_cls = "ok" if s.rpo_compliance == 1 else ("bad" if s.rpo_compliance is not None else "muted")
        compliance = _pct(s.rpo_compliance) if s.configured else "not configured"
        rto_cls = {True: "ok", False: "bad", None: "muted"}[s.rto_met]
        gap = "n/a" if s.longest_gap_hours is None else (
            f"{s.longest_gap_hours:g} h ({s.longest_gap_between[0]} → {s.longest_gap_between[1]})")
        out.append("<tr>" + "".join([
            _cell(s.store if s.configured else f"{s.store} (not configured)", "" if s.configured else "muted"),
            _cell(s.slots), _cell(s.verified, "ok" if s.verified else ""),
            _cell(s.failed, "bad" if s.failed else ""), _cell(s.unverified, "warn" if s.unverified else ""),
            _cell(s.missed, "bad" if s.missed else ""), _cell(f"{s.rpo_hours:g} h"),
            _cell(compliance, compliance_cls), _cell(gap),
            _cell(s.failed_check_evaluations, "bad" if s.failed_check_evaluations else ""),
            _cell(s.failed_runs, "bad" if s.failed_runs else ""), _offsite_rpo_cell(s),
            _cell(s.offsite_failed_runs, "bad" if s.offsite_failed_runs else ""),
            _cell(s.offsite_deep_coverage, "bad" if "failing" in s.offsite_deep_coverage else ""),
            _cell(f"{s.drills_passed}/{s.drills}"),
            _cell("no drill" if s.measured_rto_minutes is None else f"{s.measured_rto_minutes:g} min", rto_cls),
            _cell(f"{s.rto_target_minutes:g} min"),
            _cell({True: "yes", False: "NO", None: "n/a"}[s.rto_met], rto_cls)]) + "</tr>")
    out.append(_TABLE_END)

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
        bad = sum(r.status not in ("verified", "not configured") for r in rows)
        out.append(f"<details{' open' if bad and len(rows) <= 400 else ''}><summary><b>{esc(store)}</b>: "
                   f"{len(rows)} slots, {bad} not verified</summary>")
        heads = ["slot", "due (UTC)", "status", "within RPO", "captured (UTC)", "bytes", "seconds", "sha256", *labels,
                 "off-site key", "off-site", "off-site error", "drill", "RTO s", "retention", "error"]
        out.append(_table(heads))
        for r in rows:
            cells = [_cell(r.slot, "nowrap"), _cell(_when(r.due), "nowrap"), _cell(r.status),
                     _cell("n/a", "muted") if r.status == "not configured" else
                     _cell("yes" if r.rpo_ok else "no", "ok" if r.rpo_ok else "bad"),
                     _cell(_when(r.captured_at), "nowrap"), _cell("" if r.bytes is None else f"{r.bytes:,}", "nowrap"),
                     _cell("" if r.duration_seconds is None else f"{r.duration_seconds:g}", "nowrap"),
                     # the first 16 hex digits on the page (enough to compare by eye), the whole digest on
                     # hover and in the CSV/JSON
                     '<td class="mono">' + "<br>".join(f'<span title="{esc(v)}">{esc(k)}: {esc(v[:16])}…</span>'
                                                       for k, v in sorted(r.sha256.items())) + "</td>"]
            for label in labels:
                c = r.checks.get(label)
                cells.append(f'<td class="{_STATUS_CLASS.get(c.status, "")}" title="{esc(c.at)} {esc(c.description)}">'
                             f"{esc(c.status)}</td>" if c else "<td></td>")
            cells += [_cell(r.offsite_key),
                      _cell(r.offsite_verification, _OFFSITE_CLASS.get(r.offsite_verification, "")),
                      _cell(r.offsite_error), _cell(r.drill),
                      _cell("" if r.drill_rto_seconds is None else f"{r.drill_rto_seconds:g}"), _cell(r.retention),
                      _cell(r.error)]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append(_TABLE_END + "</details>")
    out.append("</body></html>\n")
    return "".join(out)


_OFFSITE_CLASS = {"verified": "ok", "stale": "bad", "failed": "bad", "copied, not verified": "warn"}


def _offsite_rpo_cell(s: StoreSummary) -> str:
    """Newest verified (never stale) off-site copy's age against RPO + lag."""
    if s.offsite_rpo_ok is None:
        return _cell("n/a", "muted")
    if not s.offsite_newest_verified:
        return _cell(f"NO verified copy (limit {s.offsite_limit_hours:g} h)", "bad")
    return _cell(f"{s.offsite_age_hours:g} h / {s.offsite_limit_hours:g} h ({s.offsite_newest_verified})",
                 "ok" if s.offsite_rpo_ok else "bad")


RENDERERS: dict[str, Callable[[Report], str]] = {"html": to_html, "csv": to_csv, "json": to_json}


def render(report: Report, fmt: str, redact: Callable[[str], str] | None = None) -> bytes:
    if fmt not in RENDERERS:
        raise ConfigError("report format", fmt, ", ".join(FORMATS))
    text = RENDERERS[fmt](report)
    return (redact or redactor(configured_secrets()))(text).encode()


def write_report(report: Report, fmt: str, path: Path, redact: Callable[[str], str] | None = None) -> str:
    """Render and write atomically (0600); returns the file's sha256."""
    data = render(report, fmt, redact)
    if not Path(path).parent.exists():
        private_dir(Path(path).parent)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def write_all(report: Report, formats: Iterable[str], directory: Path, stem: str) -> dict[str, tuple[Path, str]]:
    redact = redactor(configured_secrets())
    written = {}
    for fmt in formats:
        path = Path(directory) / f"{stem}.{fmt}"
        written[fmt] = (path, write_report(report, fmt, path, redact))
    return written
