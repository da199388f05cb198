"""`cb-backups backup [STORE] [--partition KEY]`: back up one store (or all configured) for a slot, via Dagster."""

from __future__ import annotations

import argparse

from cb_backups.cli.args import Subcommands, check_stores_settings, configured, partition, within_retention
from cb_backups.cli.output import check_table, console, print_run_failures
from cb_backups.cli.runs import evaluations, instance, run_job


def register(sub: Subcommands) -> None:
    backup = sub.add_parser("backup", help="back up one store (or all configured) for one slot, through Dagster")
    backup.add_argument("store", nargs="?",
                        help="postgres, valkey, neo4j, qdrant or opensearch (default: all configured)")
    backup.add_argument("--partition", help="slot key, e.g. 2026-11-24-06:00 (six-hourly) or 2026-11-24 (daily)")
    backup.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names, skipped = configured(args.store)
    slots = [(store, partition(store, args.partition)) for store in names]
    for store, key in slots:
        within_retention(store, key)
    check_stores_settings(names)
    if skipped:
        console.print(f"not configured, not backed up: {', '.join(skipped)}")
    dagster = instance()
    status = 0
    for store, key in slots:
        with console.status(f"backing up {store} slot {key} ..."):
            result = run_job(f"{store}_backup_job", key, dagster)
        rows = [(store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in evaluations(result)]
        if not result.success or not rows or not all(r[2] for r in rows):
            status = 1
        print_run_failures(f"{store} {key}: ", result)
        if rows:
            console.print(check_table(f"{store} backup {key}", rows))
    return status
