"""`cb-backups doctor [STORE] [--json]`: the runbook's pre-backup checklist for every configured store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.markup import escape

from cb_backups.cli.args import Subcommands, add_json, store_names
from cb_backups.cli.output import console, err_console, keep_whole, print_json, table
from cb_backups.core.errors import CbBackupsError

if TYPE_CHECKING:  # settings are read by each command, after main() can turn bad settings into one line
    from cb_backups.config.settings import Settings


def register(sub: Subcommands) -> None:
    doctor = sub.add_parser("doctor", help="the runbook's pre-backup checklist for every configured store")
    doctor.add_argument("store", nargs="?")
    add_json(doctor)
    doctor.set_defaults(func=run)


def object_lock_item(settings: Settings) -> dict[str, object]:
    """`offsite.object_lock` configured: the bucket must have versioning and Object Lock enabled."""
    from cb_backups.offsite.lock import bucket_problems
    from cb_backups.offsite.s3 import S3Target

    lock = settings.s3.object_lock
    assert lock is not None
    try:
        problems = bucket_problems(S3Target(settings.s3))
    except CbBackupsError as exc:
        problems = [str(exc)]
    result = "; ".join(problems) or "ok"
    return {"store": "offsite", "item": f"object lock ({lock.mode}) on s3://{settings.s3.bucket}", "ok": not problems,
            "result": result}


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    resource = BackupsResource()
    settings = resource.settings()
    configured = settings.configured_stores()
    if not configured:
        err_console.print("no store is configured: set CB_POSTGRES_URL, CB_VALKEY_URL, ... (see README)")
        return 1
    items: list[dict[str, object]] = []
    for name in configured if args.store is None else store_names(args.store):
        try:
            found = resource.store(name).health(settings.backup_dir).items
        except CbBackupsError as exc:
            found = {"adapter": str(exc)}
        items += [{"store": name, "item": item, "ok": result == "ok", "result": result}
                  for item, result in found.items()]
    if settings.s3.enabled and settings.s3.object_lock is not None and args.store is None:
        items.append(object_lock_item(settings))
    status = 0 if all(i["ok"] for i in items) else 1
    if args.json:
        print_json({"ok": status == 0, "items": items})
        return status
    out = table("pre-backup checklist", ("store", "item", "result"))
    for i in items:
        result = "[green]ok[/]" if i["ok"] else f"[red]{escape(str(i['result']))}[/]"
        out.add_row(str(i["store"]), str(i["item"]), result)
    console.print(keep_whole(out, ("store",)))
    return status
