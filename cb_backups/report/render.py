"""The auditor report rendered: one self-contained HTML file (inline CSS and SVG), CSV, JSON.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
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
             f'<text x="{left}" y="{height - 8}" class="a">{as_iso(x0)[:16]}</text>',
             f'<text x="{left + w}" y="{height - 8}" text-anchor="end" class="a">{as_iso(x1)[:16]}</text>']
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
                 "unverified": "warn", "planned": "warn", "copied, not verified": "warn", "not configured": "muted"}


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
             "longest gap", "failed checks", "failed runs", "off-site RPO", "failed off-site runs", "drills passed",
             "measured RTO", "RTO target", "RTO met"]
    out.append("".join(f"<th>{h}</th>" for h in heads) + "</tr>")
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
            _cell(f"{s.drills_passed}/{s.drills}"),
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
        bad = sum(r.status not in ("verified", "not configured") for r in rows)
        out.append(f"<details{' open' if bad and len(rows) <= 400 else ''}><summary><b>{esc(store)}</b>: "
                   f"{len(rows)} slots, {bad} not verified</summary><table><tr>")
        heads = ["slot", "due", "status", "within RPO", "captured_at", "bytes", "seconds", "sha256", *labels,
                 "off-site key", "off-site", "off-site error", "drill", "RTO s", "retention", "error"]
        out.append("".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>")
        for r in rows:
            cells = [_cell(r.slot), _cell(r.due), _cell(r.status),
                     _cell("n/a", "muted") if r.status == "not configured" else
                     _cell("yes" if r.rpo_ok else "no", "ok" if r.rpo_ok else "bad"),
                     _cell(r.captured_at), _cell("" if r.bytes is None else f"{r.bytes:,}"),
                     _cell("" if r.duration_seconds is None else f"{r.duration_seconds:g}"),
                     '<td class="mono">' + "<br>".join(f"{esc(k)}: {esc(v)}" for k, v in sorted(r.sha256.items()))
                     + "</td>"]
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
        out.append("</table></details>")
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
