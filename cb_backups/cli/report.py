"""`cb-backups report`: the auditor report for a period, as HTML, CSV or JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from cb_backups.cli.args import Subcommands, store_names
from cb_backups.cli.output import console, keep_whole, table
from cb_backups.cli.runs import instance
from cb_backups.core.errors import ConfigError

FORMATS = ("html", "csv", "json")


def cmd_report(args: argparse.Namespace) -> int:
    from cb_backups.config.retention import offsite_from_config
    from cb_backups.core.specs import spec_for
    from cb_backups.defs.resources import BackupsResource
    from cb_backups.report.build import build_report, parse_day, period
    from cb_backups.report.render import write_report

    if args.format not in FORMATS:
        raise ConfigError("--format", args.format, ", ".join(FORMATS))
    start, end = period(parse_day(args.start, "--from"), parse_day(args.end, "--to"))
    named = [*args.stores, *(args.store or [])]
    stores = [spec_for(store_names(s)[0]).name for s in dict.fromkeys(named)] if named else None
    output = Path(args.output or f"cb-backups-report-{args.start}-{args.end}.{args.format}")
    if output.is_dir():
        raise ConfigError("--output", str(output), "a file path, not a folder")
    settings = BackupsResource().settings()
    report = build_report(instance(), settings.backup_dir, start, end, stores,
                          offsite_lag_hours=offsite_from_config(settings.raw).rpo_lag_hours,
                          configured=settings.configured_stores())
    digest = write_report(report, args.format, output)

    out = table(f"backups {args.start} to {args.end}",
                ("store", "slots", "verified", "failed", "missed", "RPO", "longest gap", "RTO"))
    for s in report.stores:
        compliance = "n/a" if s.rpo_compliance is None else f"{s.rpo_compliance:.1%}"
        color = "green" if s.rpo_compliance == 1 else "red"
        if not s.configured:
            compliance, color = "not configured", "dim"
        rto = "no drill" if s.measured_rto_minutes is None else (
            f"{s.measured_rto_minutes:g} min / {s.rto_target_minutes:g} min")
        gap = "n/a" if s.longest_gap_hours is None else f"{s.longest_gap_hours:g} h"
        out.add_row(s.store, str(s.slots), str(s.verified), str(s.failed), str(s.missed),
                    f"[{color}]{compliance}[/]", gap, rto)
    console.print(keep_whole(out, ("store", "slots", "verified", "failed", "missed")))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {output} ({args.format}, sha256 {digest})")
    return 0


def register(sub: Subcommands) -> None:
    report = sub.add_parser("report", help="auditor report: every expected slot, its checks, off-site copy, drill, "
                                           "retention; RPO/RTO compliance per store")
    report.add_argument("--from", dest="start", required=True, metavar="DATE", help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="end", required=True, metavar="DATE", help="last day (included), YYYY-MM-DD")
    report.add_argument("stores", nargs="*", metavar="STORE", help="only these stores (default: all five)")
    report.add_argument("--store", action="append", help="the older way to name a store (repeatable), still accepted")
    report.add_argument("--format", default="html", help="html (default), csv or json")
    report.add_argument("--output", metavar="PATH", help="file to write (default: cb-backups-report-FROM-TO.FORMAT)")
    report.set_defaults(func=cmd_report)
