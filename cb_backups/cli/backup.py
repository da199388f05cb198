"""`cb-backups backup [STORE|full_system] [--slot KEY]`: back up one store (or all configured) for a slot,
via Dagster."""

from __future__ import annotations

import argparse

from rich.markup import escape

from cb_backups.cli.args import (
    FULL_SYSTEM,
    Subcommands,
    add_slot,
    canonical,
    check_stores_settings,
    configured,
    partition,
    within_retention,
)
from cb_backups.cli.output import check_table, console, print_run_failures, progress_bars
from cb_backups.cli.runs import evaluations, instance, run_job


def register(sub: Subcommands) -> None:
    backup = sub.add_parser("backup", help="back up one store (or all configured) for one slot, through Dagster")
    backup.add_argument("store", nargs="?",
                        help="postgres, valkey, neo4j, qdrant, opensearch, or full_system (`full`: every "
                             "configured store at once, weekly slots) (default: all configured, one by one)")
    add_slot(backup)
    backup.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = canonical(args.store)
    names, skipped = ([FULL_SYSTEM], []) if store == FULL_SYSTEM else configured(store)
    slots = [(name, partition(name, args.slot)) for name in names]
    for name, key in slots:
        within_retention(name, key)
    check_stores_settings([n for n in names if n != FULL_SYSTEM])
    if skipped:
        console.print(f"not configured, not backed up: {', '.join(skipped)}")
    dagster = instance()
    status = 0
    for name, key in slots:
        console.print(f"backing up {name} slot {key} ...")
        with progress_bars():
            result = run_job(f"{name}_backup_job", key, dagster)
        rows = [(name, key, e.passed, e.check_name + ": " + (e.description or "")) for e in evaluations(result)]
        if not result.success or not rows or not all(r[2] for r in rows):
            status = 1
        print_run_failures(f"{name} {key}: ", result)
        if result.success:
            _say_superseded(name, key)
        if rows:
            console.print(check_table(f"{name} backup {key}", rows))
    return status


def _say_superseded(store: str, key: str) -> None:
    """Nothing good is replaced silently: name the earlier backup of the slot this run kept aside."""
    from cb_backups.defs.backups.assets import superseded_lines
    from cb_backups.defs.resources import BackupsResource

    catalog = BackupsResource().catalog()
    artifact = catalog.get(store, key)
    for line in superseded_lines(catalog, artifact) if artifact is not None else []:
        console.print(f"[yellow]{escape(line)}[/]")
