"""`cb-backups list [STORE|full_system] [--deep] [--json]`: the backups in the catalog, and when each was
last verified.

"verified" is the catalog's verification record (verification.json), trusted only while the backup's
files are as they were when it was checked: the size and mtime of every file (and the manifest and
seal) are compared with the record, a cheap test that catches a file rewritten, truncated or
replaced. `--deep` re-hashes every file against the manifest as well (and the manifest against its
seal), which also catches a change that kept size and mtime. A record older than a day is flagged.
Superseded copies (earlier backups of a slot, kept when a newer backup replaced them) are listed after
the store's backups, with `superseded` set in the JSON (null for a slot's current backup).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from rich.markup import escape

from cb_backups.cli.args import FULL_SYSTEM, Subcommands, add_json, store_or_full
from cb_backups.cli.output import console, keep_whole, print_json, table

STALE_AFTER = timedelta(days=1)


def register(sub: Subcommands) -> None:
    listing = sub.add_parser("list", help="backups in the catalog, with when each was last verified")
    listing.add_argument("store", nargs="?", help="postgres, valkey, neo4j, qdrant, opensearch or full_system "
                                                  "(`full` also works; default: all, full_system included)")
    add_json(listing)
    listing.add_argument("--deep", action="store_true",
                         help="re-hash every file against its manifest (default: compare size and mtime with the "
                              "verification record)")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.core.catalog import checksum_problems, parse_iso, utcnow
    from cb_backups.defs.resources import BackupsResource

    catalog = BackupsResource().catalog()
    names = store_or_full(args.store) if args.store else [*store_or_full(None), FULL_SYSTEM]
    now = utcnow()
    entries: list[dict[str, Any]] = []
    for store in names:
        for artifact in catalog.list(store):
            record = catalog.verification_of(artifact)
            wrong = catalog.binding_problems(artifact)
            if args.deep:
                wrong += checksum_problems(artifact)
            changed = record.changed_since(artifact) if record is not None and record.ok else []
            state = ("changed" if wrong else "never" if record is None else "failed" if not record.ok
                     else "changed since" if changed else "yes")
            age = None if record is None else now - parse_iso(record.checked_at)
            entries.append({"store": store, "slot": artifact.partition_key,
                            "captured_at": artifact.manifest.captured_at, "bytes": artifact.manifest.total_bytes,
                            "verified": state, "problems": wrong or changed,
                            "last_verified": None if record is None else record.checked_at,
                            "stale": age is not None and age > STALE_AFTER, "path": str(artifact.directory),
                            "superseded": None})
        for copy in catalog.superseded(store):
            record = catalog.verification_of(copy.artifact)
            entries.append({"store": store, "slot": copy.artifact.partition_key,
                            "captured_at": copy.artifact.manifest.captured_at,
                            "bytes": copy.artifact.manifest.total_bytes,
                            "verified": "never" if record is None else "yes" if record.ok else "failed",
                            "problems": [], "last_verified": None if record is None else record.checked_at,
                            "stale": False, "path": str(copy.artifact.directory),
                            "superseded": {"copy": copy.name, "superseded_at": copy.superseded_at,
                                           "label": copy.label}})
    if args.json:
        print_json({"backup_dir": str(catalog.root), "backups": entries})
        return 0
    # The path is the root in the title + store/slot (the full one is in --json): every column fits 80.
    out = table(f"backups in {catalog.root}/STORE/SLOT", ("store", "slot", "bytes", "verified", "last verified"))
    for e in entries:
        verified = {"yes": "[green]yes[/]", "never": "never", "failed": "[red]FAILED[/]"}.get(e["verified"])
        if verified is None:
            verified = ("[red]CHANGED[/] (" if e["verified"] == "changed" else "[yellow]changed since[/] (") + \
                escape("; ".join(e["problems"])) + ")" + ("" if e["verified"] == "changed" else ": run verify")
        last = "never"
        if e["last_verified"] is not None:
            last = f"{_age(now - parse_iso(e['last_verified']))} ago"
            if e["stale"]:
                last += " [yellow]older than a day[/]"
        if e["superseded"] is not None:
            # an earlier backup of the slot, kept when a newer one replaced it (retention removes it later)
            verified = f"[yellow]superseded[/] ({verified} when replaced), kept as {escape(e['superseded']['label'])}"
        out.add_row(e["store"], e["slot"], f"{e['bytes']:,}", verified, last)
    console.print(keep_whole(out, ("store", "slot", "bytes")))
    return 0


def _age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
