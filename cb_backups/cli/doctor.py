"""`cb-backups doctor [STORE]`: the runbook's pre-backup checklist for every configured store."""

from __future__ import annotations

import argparse

from rich.table import Table

from cb_backups.cli.args import Subcommands, store_names
from cb_backups.cli.output import console, err_console
from cb_backups.core.errors import CbBackupsError


def register(sub: Subcommands) -> None:
    doctor = sub.add_parser("doctor", help="the runbook's pre-backup checklist for every configured store")
    doctor.add_argument("store", nargs="?")
    doctor.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    resource = BackupsResource()
    settings = resource.settings()
    table = Table(title="pre-backup checklist")
    for col in ("store", "item", "result"):
        table.add_column(col)
    status = 0
    configured = settings.configured_stores()
    if not configured:
        err_console.print("no store is configured: set CB_POSTGRES_URL, CB_VALKEY_URL, ... (see README)")
        return 1
    for name in configured if args.store is None else store_names(args.store):
        try:
            health = resource.store(name).health(settings.backup_dir)
            items = health.items
        except CbBackupsError as exc:
            items = {"adapter": str(exc)}
        for item, result in items.items():
            ok = result == "ok"
            status = status if ok else 1
            table.add_row(name, item, "[green]ok[/]" if ok else f"[red]{result}[/]")
    console.print(table)
    return status
