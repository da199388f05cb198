"""`cb-backups offsite` and `cb-backups offsite-verify`: copy or re-verify one slot off-site now,
through the Dagster jobs (so the copy and the `offsite_complete` result are recorded like the
automation's)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cb_backups.cli.args import Subcommands, add_json, add_slot, canonical
from cb_backups.cli.output import (
    check_rows_json,
    check_table,
    console,
    print_json,
    print_run_failures,
    progress_bars,
)
from cb_backups.cli.runs import evaluations, failure_messages, instance, run_job
from cb_backups.core.errors import ConfigError

if TYPE_CHECKING:
    from cb_backups.defs.offsite import OffsiteSource


def _source(name: str) -> OffsiteSource:
    from cb_backups.defs.offsite import BY_STORE

    name = str(canonical(name))
    if name not in BY_STORE:
        raise ConfigError("store", name, ", ".join(BY_STORE))
    return BY_STORE[name]


def _slot(src: OffsiteSource, key: str | None) -> str:
    """The given slot (validated), else the newest local backup of the store."""
    import dagster as dg

    from cb_backups.core.partitions import parse_slot
    from cb_backups.defs.resources import BackupsResource

    if key is not None:
        if isinstance(src.partitions, dg.TimeWindowPartitionsDefinition):
            parse_slot(src.partitions, key)
        elif not src.partitions.has_partition_key(key):
            raise ConfigError("partition key", key, f"a {src.store} slot")
        return key
    backups = BackupsResource().catalog().list(src.store)
    if not backups:
        raise ConfigError("partition key", None, f"--slot KEY: there is no local {src.store} backup to pick")
    return backups[-1].partition_key


def _run(args: argparse.Namespace, verify_only: bool) -> int:
    src = _source(args.store)
    key = _slot(src, args.slot)
    config: dict[str, Any] = {"ops": {src.check_op_name: {"config": {"deep": True}}}} if args.deep else {}
    job = src.verify_job_name if verify_only else src.job_name
    action = "verifying the off-site copy of" if verify_only else "copying off-site"
    if not args.json:
        console.print(f"{action} {src.store} slot {key} ...")
    with progress_bars(enabled=not args.json):
        result = run_job(job, key, instance(), run_config=config)
    rows = [(src.store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in evaluations(result)]
    ok = bool(result.success and rows and all(r[2] for r in rows))
    copy: dict[str, Any] | None = None
    if not verify_only and result.success:
        materialized = result.asset_materializations_for_node(src.name)
        if materialized:
            meta = materialized[0].metadata
            copy = {k: meta[k].value for k in ("bytes", "url", "seconds", "throughput_mib_s", "already_there")
                    if k in meta}
    if args.json:
        print_json({"store": src.store, "slot": key, "passed": ok, "run_id": result.run_id, "copy": copy,
                    "checks": check_rows_json(rows), "errors": failure_messages(result)})
        return 0 if ok else 1
    print_run_failures(f"{src.store} {key}: ", result)
    if copy is not None:
        console.print(f"{src.store} {key}: {copy['bytes']:,} bytes -> {copy['url']} in {copy['seconds']:.1f}s "
                      f"({copy['throughput_mib_s']} MiB/s)" + (" (identical copy already there)"
                                                               if copy.get("already_there") else ""))
    if rows:
        console.print(check_table(f"{src.store} off-site {key}" + (" (deep)" if args.deep else ""), rows))
    return 0 if ok else 1


def cmd_offsite(args: argparse.Namespace) -> int:
    return _run(args, verify_only=False)


def cmd_offsite_verify(args: argparse.Namespace) -> int:
    return _run(args, verify_only=True)


def register(sub: Subcommands) -> None:
    help_store = "postgres, valkey, neo4j, qdrant, opensearch, or full_system (`full` also works)"
    copy = sub.add_parser("offsite", help="copy one backup slot to S3 now and verify it (through Dagster)")
    copy.add_argument("store", help=help_store)
    add_slot(copy, "slot key (default: the newest local backup)")
    copy.add_argument("--deep", action="store_true", help="the check re-reads and hashes every object in S3")
    add_json(copy)
    copy.set_defaults(func=cmd_offsite)

    verify = sub.add_parser("offsite-verify", help="verify one slot's off-site copy again (through Dagster)")
    verify.add_argument("store", help=help_store)
    add_slot(verify, "slot key (default: the newest local backup)")
    verify.add_argument("--deep", action="store_true", help="re-read and hash every object in S3")
    add_json(verify)
    verify.set_defaults(func=cmd_offsite_verify)
