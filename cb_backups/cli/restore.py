"""`cb-backups restore STORE|full_system [--slot KEY] [--source local|offsite] [--json]`: print the plan,
confirm, run the restore job through Dagster."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rich.markup import escape
from rich.table import Table

from cb_backups.cli.args import SLOT_ALIAS_NOTE, Subcommands, add_json, canonical
from cb_backups.cli.output import (
    console,
    err_console,
    keep_whole,
    print_json,
    print_run_failures,
    progress_bars,
    table,
)
from cb_backups.cli.runs import execute, failure_messages, instance
from cb_backups.core.errors import ConfigError

TARGET_CHOICES = {"scratch": "scratch", "in-place": "in_place", "in_place": "in_place"}


def register(sub: Subcommands) -> None:
    restore = sub.add_parser(
        "restore", help="restore one store (or `full_system`) from a backup, through Dagster",
        description="Verify the backup, check versions, take a safety backup of the current data (in place), "
                    "restore, compare counts with the manifest, and report the measured RTO.")
    restore.add_argument("store", help="postgres, valkey, neo4j, qdrant, opensearch, or full_system (or `full`)")
    restore.add_argument("--slot", "--partition", "--backup", dest="backup", metavar="KEY", default="latest",
                         help="slot key, `latest` (newest backup that verifies; the default), `safety:<stamp>`, "
                              "or for full_system a full system backup key" + SLOT_ALIAS_NOTE.replace(
                                  "--partition is the older name", "--partition and --backup are older names"))
    restore.add_argument("--source", "--from", dest="source", choices=("local", "offsite"), default="local",
                         help="restore from the local catalog (default) or the off-site S3 copy (--from is the "
                              "older name, still accepted)")
    restore.add_argument("--target", choices=("scratch", "in-place"), default="scratch",
                         help="scratch (default; leaves the live data alone) or in-place (replaces it)")
    restore.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="target override, e.g. dbname=restored, collections=memories, safety_backup=skip "
                              "(unknown keys are refused, naming the allowed ones)")
    restore.add_argument("--to-time", metavar="TIME",
                         help="postgres point-in-time recovery: an ISO 8601 time with a zone (e.g. "
                              "2026-12-01T07:42:10Z) or `latest`; needs base backups and `cb-backups wal-receive`")
    restore.add_argument("--to-lsn", metavar="LSN", help="postgres point-in-time recovery to an LSN, e.g. 0/3000148")
    restore.add_argument("--yes", action="store_true", help="do not ask before an in-place restore")
    add_json(restore)
    restore.set_defaults(func=cmd_restore)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", pair, "KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _confirmed(what: str, answer_word: str) -> bool:
    console.print(f"[bold red]This replaces the live data of {what}.[/] A safety backup is taken first.")
    try:
        answer = input(f"Restore {what} in place? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes", answer_word)


def cmd_restore(args: argparse.Namespace) -> int:
    from cb_backups.core.model import Target
    from cb_backups.core.specs import FULL_SYSTEM
    from cb_backups.defs.resources import BackupsResource
    from cb_backups.restore.plan import plan_full_restore, plan_restore

    full = canonical(args.store) == FULL_SYSTEM
    mode = TARGET_CHOICES[args.target]
    overrides = _overrides(args.overrides)
    settings = BackupsResource().settings()
    target = Target(mode, dict(overrides))
    # The plan validates the request (exit 2 on bad input) and is printed before anything happens.
    if full:
        plan: Any = plan_full_restore(settings, args.backup, args.source, target)
        job_name, confirm = "full_system_restore", FULL_SYSTEM
    else:
        if args.to_time or args.to_lsn:  # point-in-time recovery (restore/pitr.py)
            from cb_backups.restore.pitr import plan_pitr

            plan = plan_pitr(settings, args.to_time, args.to_lsn, mode, args.source)
        else:
            plan = plan_restore(settings, args.store, args.backup, args.source, target)
        job_name, confirm = f"restore_{args.store}", args.store
    if not args.json:
        console.print("[bold]plan[/]")
        for line in plan.describe():
            console.print(escape(line))
    if mode == "in_place" and not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            err_console.print(f"refused: an in-place restore of {confirm} replaces live data; pass --yes to run "
                              "it without a terminal to confirm on. Nothing was changed.")
            return 2
        if not _confirmed(confirm, confirm):
            err_console.print("not confirmed; nothing was changed")
            return 2
    config = {"backup": args.backup, "source": args.source, "target": mode, "overrides": overrides,
              "confirm": confirm if mode == "in_place" else "", "to_time": args.to_time or "",
              "to_lsn": args.to_lsn or ""}
    result = run_restore_job(job_name, config, instance(), show_progress=not args.json)
    outputs = _outputs(result)
    if args.json:
        print_json({"plan": plan.describe(), "store": confirm, "backup": args.backup, "source": args.source,
                    "target": mode, "success": bool(result.success), "run_id": result.run_id,
                    "results": outputs, "errors": failure_messages(result)})
        return 0 if result.success else 1
    print_run_failures("", result)
    if result.success and (args.to_time or args.to_lsn):
        recovered = result.output_for_node(f"{job_name}_op")
        console.print(escape(f"recovered to LSN {recovered['point']['lsn']}, last transaction "
                             f"{recovered['point']['last_transaction_at']}, timeline {recovered['point']['timeline']}; "
                             f"counts {recovered['counts']}; {recovered['connection'] or recovered['data_dir']}"
                             + (f"; stop it with: {recovered['stop_command']}" if recovered['stop_command'] else "")
                             + (f"; old data kept at {recovered['safety_copy']}" if recovered['safety_copy'] else "")))
    if outputs:
        console.print(result_table(outputs))
    return 0 if result.success else 1


def run_restore_job(job_name: str, config: dict[str, Any], instance: Any, show_progress: bool = True) -> Any:
    """Execute a restore job in this process against the instance (so the run and its results are recorded)."""
    from cb_backups.definitions import defs

    job = defs.resolve_job_def(job_name)
    op_name = "full_system_restore_op" if job_name == "full_system_restore" else f"{job_name}_op"
    run_config = {"ops": {op_name: {"config": config}},
                  "loggers": {"console": {"config": {"log_level": os.environ.get("CB_LOG_LEVEL", "CRITICAL")}}}}
    with progress_bars(enabled=show_progress):  # every dagster_progress adapter feeds defs.progress.LISTENERS
        return execute(job, instance, run_config=run_config)  # frees dead runs, waits for live ones


def _outputs(result: Any) -> list[dict[str, Any]]:
    """The restore results the op returned (one per store)."""
    found = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.event_specific_data.asset_observation
            meta = {k: v.value for k, v in observation.metadata.items()}
            found.append({"store": observation.asset_key.path[-1].removesuffix("_backup"), **meta})
    return found


def result_table(rows: list[dict[str, Any]]) -> Table:
    out = table("restore", ("store", "restored", "target", "counts", "RTO", "safety backup"))
    for row in rows:
        counts = ", ".join(f"{k.split('/')[-1]}={v}" for k, v in row.items() if k.startswith("count/"))
        rto = f"{row['rto_seconds']:.1f}s / {row['rto_target_seconds']:.0f}s"
        rto = f"[green]{rto}[/]" if row.get("within_rto") else f"[red]{rto} EXCEEDED[/]"
        ok = "[green]match[/]" if row.get("counts_match") else "[red]DIFFER[/]"
        skipped = f"\n[yellow]skipped (failed verification): {escape(str(row['skipped_failed_backups']))}[/]" \
            if row.get("skipped_failed_backups") else ""
        out.add_row(row["store"], f"{row.get('backup_kind')}\n{row.get('restored_partition')}{skipped}",
                    str(row.get("target")), f"{ok}\n{escape(counts)}", rto, escape(str(row.get("safety_backup"))))
    return keep_whole(out, ("store", "restored", "RTO"))
