"""`cb-backups list [STORE] [--deep]`: the backups in the catalog, with when each was last verified.

"verified" is the catalog's verification record (verification.json), trusted only while the backup's
files are as they were when it was checked: the size and mtime of every file (and the manifest and
seal) are compared with the record, a cheap test that catches a file rewritten, truncated or
replaced. `--deep` re-hashes every file against the manifest as well (and the manifest against its
seal), which also catches a change that kept size and mtime. A record older than a day is flagged.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from rich.table import Table

from cb_backups.cli.args import Subcommands, store_names
from cb_backups.cli.output import console

STALE_AFTER = timedelta(days=1)


def register(sub: Subcommands) -> None:
    listing = sub.add_parser("list", help="backups in the catalog, with when each was last verified")
    listing.add_argument("store", nargs="?")
    listing.add_argument("--deep", action="store_true",
                         help="re-hash every file against its manifest (default: compare size and mtime with the "
                              "verification record)")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.core.catalog import checksum_problems, parse_iso, utcnow
    from cb_backups.defs.resources import BackupsResource

    catalog = BackupsResource().catalog()
    table = Table(title=f"backups in {catalog.root}")
    for col in ("store", "slot", "captured_at", "bytes", "verified", "last verified", "path"):
        table.add_column(col)
    now = utcnow()
    for store in store_names(args.store):
        for artifact in catalog.list(store):
            record = catalog.verification_of(artifact)
            wrong = catalog.binding_problems(artifact)
            if args.deep:
                wrong += checksum_problems(artifact)
            if wrong:
                verified = "[red]CHANGED[/] (" + "; ".join(wrong) + ")"
            elif record is None:
                verified = "never"
            elif not record.ok:
                verified = "[red]FAILED[/]"
            elif changed := record.changed_since(artifact):
                verified = f"[yellow]changed since[/] ({', '.join(changed)}): run verify"
            else:
                verified = "[green]yes[/]"
            if record is None:
                last = "never"
            else:
                age = now - parse_iso(record.checked_at)
                last = f"{record.checked_at} ({_age(age)} ago)"
                if age > STALE_AFTER:
                    last += " [yellow]older than a day[/]"
            table.add_row(store, artifact.partition_key, artifact.manifest.captured_at,
                          f"{artifact.manifest.total_bytes:,}", verified, last, str(artifact.directory))
    console.print(table)
    return 0


def _age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
