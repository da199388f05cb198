"""`cb-backups report`: the auditor report for a period, as HTML, CSV or JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from cb_backups.cli.args import Subcommands
from cb_backups.cli.output import console
from cb_backups.cli.runs import instance
from cb_backups.core.errors import ConfigError

FORMATS = ("html", "csv", "json")


def cmd_report(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cb_backups.config.retention import offsite_from_config
    from cb_backups.core.specs import spec_for
    from cb_backups.defs.resources import BackupsResource
    from cb_backups.report.build import build_report, parse_day, period
    from cb_backups.report.render import write_report

    if args.format not in FORMATS:
        raise ConfigError("--format", args.format, ", ".join(FORMATS))
    start, end = period(parse_day(args.start, "--from"), parse_day(args.end, "--to"))
    stores = [spec_for(s).name for s in args.store] if args.store else None
    output = Path(args.output or f"cb-backups-report-{args.start}-{args.end}.{args.format}")
    if output.is_dir():
        raise ConfigError("--output", str(output), "a file path, not a folder")
    settings = BackupsResource().settings()
    report = build_report(instance(), settings.backup_dir, start, end, stores,
                          offsite_lag_hours=offsite_from_config(settings.raw).rpo_lag_hours)
    digest = write_report(report, args.format, output)

    table = Table(title=f"backups {args.start} to {args.end}")
    for col in ("store", "slots", "verified", "failed", "missed", "RPO compliance", "longest gap", "RTO"):
        table.add_column(col)
    for s in report.stores:
        compliance = "n/a" if s.rpo_compliance is None else f"{s.rpo_compliance:.1%}"
        color = "green" if s.rpo_compliance == 1 else "red"
        rto = "no drill" if s.measured_rto_minutes is None else (
            f"{s.measured_rto_minutes:g} min / {s.rto_target_minutes:g} min")
        gap = "n/a" if s.longest_gap_hours is None else f"{s.longest_gap_hours:g} h"
        table.add_row(s.store, str(s.slots), str(s.verified), str(s.failed), str(s.missed),
                      f"[{color}]{compliance}[/]", gap, rto)
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {output} ({args.format}, sha256 {digest})")
    return 0


def register(sub: Subcommands) -> None:
    report = sub.add_parser("report", help="auditor report: every expected slot, its checks, off-site copy, drill, "
                                           "retention; RPO/RTO compliance per store")
    report.add_argument("--from", dest="start", required=True, metavar="DATE", help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="end", required=True, metavar="DATE", help="last day (included), YYYY-MM-DD")
    report.add_argument("--store", action="append", help="only this store (repeatable; default: all five)")
    report.add_argument("--format", default="html", help="html (default), csv or json")
    report.add_argument("--output", metavar="PATH", help="file to write (default: cb-backups-report-FROM-TO.FORMAT)")
    report.set_defaults(func=cmd_report)
