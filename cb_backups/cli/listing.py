"""`cb-backups list [STORE]`: the backups in the catalog, with their verification."""

from __future__ import annotations

import argparse

from rich.table import Table

from cb_backups.cli.args import Subcommands, store_names
from cb_backups.cli.output import console


def register(sub: Subcommands) -> None:
    listing = sub.add_parser("list", help="backups in the catalog")
    listing.add_argument("store", nargs="?")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    catalog = BackupsResource().catalog()
    table = Table(title=f"backups in {catalog.root}")
    for col in ("store", "slot", "captured_at", "bytes", "verified", "path"):
        table.add_column(col)
    for store in store_names(args.store):
        for artifact in catalog.list(store):
            record = catalog.verification_of(artifact)
            verified = "never" if record is None else ("[green]yes[/]" if record.ok else "[red]FAILED[/]")
            table.add_row(store, artifact.partition_key, artifact.manifest.captured_at,
                          f"{artifact.manifest.total_bytes:,}", verified, str(artifact.directory))
    console.print(table)
    return 0
