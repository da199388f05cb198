"""`cb-backups verify [STORE] [--partition KEY | --all]`: run the post-backup checks again, through Dagster."""

from __future__ import annotations

import argparse

from rich.markup import escape

from cb_backups.cli.args import Subcommands, check_store_settings, partition, store_names
from cb_backups.cli.output import check_table, console, err_console
from cb_backups.cli.runs import evaluations, failure_messages, instance, run_job


def register(sub: Subcommands) -> None:
    verify = sub.add_parser("verify", help="run the post-backup checks again for a slot")
    verify.add_argument("store", nargs="?")
    group = verify.add_mutually_exclusive_group()
    group.add_argument("--partition")
    group.add_argument("--all", action="store_true", help="every backup in the catalog")
    verify.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    names = store_names(args.store)
    if not args.all:
        for store in names:
            partition(store, args.partition)
    check_store_settings(args.store)
    dagster = instance()
    catalog = BackupsResource().catalog()
    status = 0
    for store in names:
        keys = [a.partition_key for a in catalog.list(store)] if args.all else [partition(store, args.partition)]
        for key in keys:
            result = run_job(f"{store}_verify_job", key, dagster)
            rows = [(store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in evaluations(result)]
            if not rows or not all(r[2] for r in rows) or not result.success:
                status = 1
            if rows:
                console.print(check_table(f"{store} verify {key}", rows))
            for message in failure_messages(result):  # a run that could not finish (a full disk): one line each
                err_console.print(f"[red]error:[/] {escape(f'{store} {key}: {message}')}")
    return status
