"""`cb-backups prune [STORE] [--dry-run] [--json]`: the retention plan as a table, applied through the Dagster
`retention_job` (deletions recorded in Dagster and in `_retention/deletions.jsonl`)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from cb_backups.cli.args import Subcommands, add_json, canonical
from cb_backups.cli.output import console, keep_whole, print_json, print_run_failures, table
from cb_backups.cli.runs import failure_messages, instance, run_job
from cb_backups.core.errors import ConfigError


def _stores(value: str | None) -> list[str] | None:
    from cb_backups.config.retention import POLICY_NAMES

    value = canonical(value)
    if value is None:
        return None
    if value not in POLICY_NAMES:
        raise ConfigError("store", value, ", ".join(POLICY_NAMES))
    return [value]


def plan_table(plans: list[dict[str, Any]], title: str) -> Table:
    out = table(title, ("store", "where", "slot", "action", "why"))
    for entry in plans:
        for where in ("local", "offsite"):
            plan = entry.get(where)
            if not plan:
                continue
            for item in reversed(plan["delete"]):  # newest first, like the kept ones
                out.add_row(entry["store"], where, item["partition"], "[red]delete[/]", escape(item["reason"]))
            for item in plan["keep"]:
                out.add_row(entry["store"], where, item["partition"], "[green]keep[/]",
                            escape("; ".join(item["reasons"])))
            for item in plan.get("superseded") or []:  # earlier backups of a slot, replaced by a newer one
                action = "[red]delete[/]" if item["action"] == "delete" else "[green]keep[/]"
                out.add_row(entry["store"], where, item["partition"], action,
                            escape(f"superseded copy {item['copy']}: {item['reason']}"))
    return keep_whole(out, ("store", "where", "slot", "action"))


def _plans_from(result: Any) -> list[dict[str, Any]]:
    """The plans from the op's output, or from its failure metadata when some deletion failed."""
    if result.success:
        return list(result.output_for_node("retention_op"))
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            user = event.step_failure_data.user_failure_data
            if user is not None and "plans" in user.metadata:
                return list(user.metadata["plans"].value)
    return []


def cmd_prune(args: argparse.Namespace) -> int:
    from cb_backups.config.retention import policies_from_config
    from cb_backups.defs.resources import BackupsResource

    stores = _stores(args.store)
    settings = BackupsResource().settings()
    policies_from_config(settings.raw)  # a bad `retention:` section is bad input (exit 2), before any run
    config = {"ops": {"retention_op": {"config": {"stores": stores, "dry_run": bool(args.dry_run)}}}}
    with console.status("planning retention ..." if args.dry_run else "applying retention ..."):
        result = run_job("retention_job", None, instance(), run_config=config)  # not partitioned
    plans = _plans_from(result)
    if args.json:
        print_json({"dry_run": bool(args.dry_run), "success": bool(result.success), "run_id": result.run_id,
                    "plans": plans, "errors": failure_messages(result) if not result.success else []})
        return 0 if result.success else 1
    if not any((e.get(w) or {}).get("keep") or (e.get(w) or {}).get("delete")
               for e in plans for w in ("local", "offsite")):
        console.print("no backups to plan for")
    else:
        title = "retention plan (dry run: nothing deleted)" if args.dry_run else "retention applied"
        console.print(plan_table(plans, title))
    deleted = sum(len(e["deleted"]) for e in plans)
    planned = sum(len((e.get(w) or {}).get("delete", [])) for e in plans for w in ("local", "offsite"))
    if args.dry_run:
        console.print(f"{planned} backup(s) would be deleted; run without --dry-run to apply")
    else:
        console.print(f"{deleted} backup(s) deleted (logged in _retention/deletions.jsonl)")
    print_run_failures("retention: ", result)
    return 0 if result.success else 1


def register(sub: Subcommands) -> None:
    prune = sub.add_parser("prune", help="apply the retention policy (local and off-site); --dry-run shows the plan")
    prune.add_argument("store", nargs="?", help="postgres, valkey, neo4j, qdrant, opensearch, full_system "
                                                "(or `full`; default: all)")
    prune.add_argument("--dry-run", action="store_true", help="print the plan; delete nothing")
    add_json(prune)
    prune.set_defaults(func=cmd_prune)
