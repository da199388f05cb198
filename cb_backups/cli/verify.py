"""`cb-backups verify [STORE|full_system] [--slot KEY | --all] [--deep] [--json]`: run the post-backup checks
again, through Dagster. `--deep` insists that encrypted backups are decrypted (CB_AGE_IDENTITY_FILE) so their
plaintext sha256 and the store's own check are verified, not only the ciphertext."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from cb_backups.cli.args import (
    FULL_SYSTEM,
    Subcommands,
    add_json,
    add_slot,
    check_store_settings,
    partition,
    store_or_full,
)
from cb_backups.cli.output import check_rows_json, check_table, console, err_console, print_json
from cb_backups.cli.runs import evaluations, failure_messages, instance, run_job
from cb_backups.core.errors import CbBackupsError


class DeepNeedsIdentity(CbBackupsError):
    """`--deep` of an encrypted backup without a key to decrypt it: bad input (exit 2)."""

    exit_code = 2


def register(sub: Subcommands) -> None:
    verify = sub.add_parser("verify", help="run the post-backup checks again for a slot")
    verify.add_argument("store", nargs="?", help="postgres, valkey, neo4j, qdrant, opensearch or full_system "
                                                 "(default: the five stores)")
    group = verify.add_mutually_exclusive_group()
    add_slot(group, "slot key (default: the newest slot)")
    group.add_argument("--all", action="store_true", help="every backup in the catalog")
    verify.add_argument("--deep", action="store_true",
                        help="decrypt encrypted backups (needs CB_AGE_IDENTITY_FILE) and check their plaintext")
    add_json(verify)
    verify.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    names = store_or_full(args.store)
    if not args.all:
        for store in names:
            partition(store, args.slot)
    check_store_settings(args.store if args.store not in (None, FULL_SYSTEM) else None)
    dagster = instance()
    catalog = BackupsResource().catalog()
    status = 0
    results: list[dict[str, Any]] = []
    selected = {store: [a.partition_key for a in catalog.list(store)] if args.all else [partition(store, args.slot)]
                for store in names}
    if args.deep and not catalog.encryption.identity_files:
        encrypted = [f"{store} {key}" for store, keys in selected.items() for key in keys
                     if (a := catalog.get(store, key)) is not None and a.manifest.encrypted]
        if encrypted:
            raise DeepNeedsIdentity(f"verify --deep: {', '.join(encrypted[:3])}{' …' if len(encrypted) > 3 else ''} "
                                    "is encrypted (age); set CB_AGE_IDENTITY_FILE to the identity file to check its "
                                    "plaintext, or drop --deep to check the ciphertext only")
    for store, keys in selected.items():
        for key in keys:
            result = run_job(f"{store}_verify_job", key, dagster)
            rows = [(store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in evaluations(result)]
            ok = bool(rows) and all(r[2] for r in rows) and result.success
            status = status if ok else 1
            errors = [f"{store} {key}: {m}" for m in failure_messages(result)]
            results.append({"store": store, "slot": key, "passed": ok, "run_id": result.run_id,
                            "checks": check_rows_json(rows), "errors": errors})
            if args.json:
                continue
            if rows:
                console.print(check_table(f"{store} verify {key}", rows))
            for message in errors:  # a run that could not finish (a full disk): one line each
                err_console.print(f"[red]error:[/] {escape(message)}")
    if args.json:
        print_json({"passed": status == 0, "slots": results})
    return status
