"""`cb-backups status [STORE] [--json]`: each store at a glance, for people, cron and monitoring probes.

Per store: configured or not, the newest verified backup and its age against the RPO, the last failed
backup run, the off-site state of the newest slot, the last restore drill and its RTO, and the next
scheduled slot. Exit 1 when any configured store's newest verified backup is older than its RPO (or
there is none); unconfigured stores never fail it.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from cb_backups.cli.args import Subcommands, add_json, store_names
from cb_backups.cli.output import console, keep_whole, print_json, table

NOT_CONFIGURED = "not configured"


@dataclass
class StoreStatus:
    """One store's line of `status` (the JSON schema: these fields, in this order)."""

    store: str
    configured: bool
    state: str  # ok | outside RPO | no verified backup | not configured
    rpo_hours: float
    newest_verified: str | None = None  # slot key
    captured_at: str | None = None
    age_hours: float | None = None
    within_rpo: bool | None = None  # None: not configured
    last_failure: dict[str, Any] | None = None  # {run_id, job, at, message}
    offsite: str | None = None  # verified | stale | failed | copied, not verified | never copied
    last_drill: dict[str, Any] | None = None  # {at, passed, slot, rto_seconds, rto_target_seconds}
    next_slot: str | None = None  # key of the slot the schedule fills next
    next_slot_due: str | None = None  # when its window ends (the schedule's tick)
    last_verified: str | None = None  # when the newest verified backup was last checked
    verification_stale: bool = False  # that check is more than a day old: run `cb-backups verify`


def register(sub: Subcommands) -> None:
    status = sub.add_parser("status", help="each store's newest verified backup against its RPO, off-site state, "
                                           "last failure and drill; exit 1 when a configured store is outside its RPO")
    status.add_argument("store", nargs="?", help="postgres, valkey, neo4j, qdrant or opensearch (default: all)")
    add_json(status)
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    names = store_names(args.store)
    settings = BackupsResource().settings()
    rows = collect(settings, names)
    if args.json:
        print_json({"stores": [asdict(r) for r in rows],
                    "ok": all(r.within_rpo is not False for r in rows)})
    else:
        # What the user configured; the others in one line (a store asked for by name is always shown).
        shown = rows if args.store else [r for r in rows if r.configured] or rows
        console.print(status_table(shown))
        hidden = [r.store for r in rows if r not in shown]
        if hidden:
            console.print(f"not configured: {', '.join(hidden)} (no backups expected)")
    return 1 if any(r.configured and not r.within_rpo for r in rows) else 0


def collect(settings: Any, names: list[str], now: datetime | None = None) -> list[StoreStatus]:
    from cb_backups.cli.runs import instance
    from cb_backups.core.catalog import parse_iso, utcnow
    from cb_backups.core.specs import spec_for

    now = now or utcnow()
    configured = set(settings.configured_stores())
    catalog = settings.catalog()
    dagster = instance()
    rows = []
    for name in names:
        spec = spec_for(name)
        row = StoreStatus(name, name in configured, NOT_CONFIGURED, spec.rpo / timedelta(hours=1))
        row.next_slot, row.next_slot_due = _next_slot(spec)
        newest = catalog.latest_verified(name)
        if newest is not None:
            captured = parse_iso(newest.manifest.captured_at)
            row.newest_verified, row.captured_at = newest.partition_key, newest.manifest.captured_at
            row.age_hours = round((now - captured) / timedelta(hours=1), 2)
            record = catalog.verification_of(newest)
            if record is not None:
                row.last_verified = record.checked_at
                row.verification_stale = now - parse_iso(record.checked_at) > timedelta(days=1)
        if row.configured:
            row.within_rpo = newest is not None and now - parse_iso(newest.manifest.captured_at) <= spec.rpo
            row.state = "ok" if row.within_rpo else ("no verified backup" if newest is None else "outside RPO")
        row.last_failure = _last_failure(dagster, name)
        newest_any = catalog.list(name)
        if newest_any:
            row.offsite = _offsite(dagster, spec, newest_any[-1])
        row.last_drill = _last_drill(dagster, spec)
        rows.append(row)
    return rows


def _next_slot(spec: Any) -> tuple[str | None, str | None]:
    """The slot whose window is open now: the schedule backs it up when the window ends."""
    last = spec.partitions.get_last_partition_window()  # Dagster's clock: the schedule's view of "now"
    if last is None:  # before the first slot ended
        return None, None
    current = spec.partitions.get_next_partition_window(last.end, respect_bounds=False)
    if current is None:
        return None, None
    return current.start.strftime(spec.partitions.fmt), current.end.isoformat(timespec="minutes")


def _last_failure(dagster: Any, store: str) -> dict[str, Any] | None:
    import dagster as dg

    from cb_backups.report.build import as_iso
    from cb_backups.report.history import run_failure_message

    runs = dagster.get_runs(dg.RunsFilter(job_name=f"{store}_backup_job", statuses=[dg.DagsterRunStatus.FAILURE]),
                            limit=1)
    if not runs:
        return None
    run = runs[0]
    record = dagster.get_run_record_by_id(run.run_id)
    at = (record.end_time or record.create_timestamp.timestamp()) if record else None
    return {"run_id": run.run_id, "job": run.job_name, "slot": run.tags.get("dagster/partition"),
            "at": as_iso(at), "message": run_failure_message(dagster, run.run_id)}


def _offsite(dagster: Any, spec: Any, artifact: Any) -> str:
    import dagster as dg

    from cb_backups.checks.slot import OFFSITE_CHECK
    from cb_backups.core.catalog import MANIFEST
    from cb_backups.core.fileio import sha256_file
    from cb_backups.offsite.state import offsite_state
    from cb_backups.report.build import offsite_seen

    since = (datetime.fromisoformat(artifact.manifest.captured_at) - timedelta(days=1)).timestamp()
    copies, checks = offsite_seen(dagster, spec.offsite_key, dg.AssetCheckKey(spec.offsite_key, OFFSITE_CHECK),
                                  since)
    key = artifact.partition_key
    state = offsite_state(sha256_file(artifact.path(MANIFEST))[0], copies.get(key), checks.get(key))
    return state or "never copied"


def _last_drill(dagster: Any, spec: Any) -> dict[str, Any] | None:
    import dagster as dg

    from cb_backups.checks.slot import DRILL_CHECK
    from cb_backups.report.build import as_iso
    from cb_backups.report.history import check_history

    for run in check_history(dagster, dg.AssetCheckKey(spec.asset_key, DRILL_CHECK), details=True):
        if run.status not in ("passed", "failed"):
            continue
        rto = run.metadata.get("rto_seconds")
        return {"at": as_iso(run.timestamp), "passed": run.status == "passed",
                "slot": run.metadata.get("partition") or run.partition,
                "rto_seconds": float(rto) if isinstance(rto, (int, float)) else None,
                "rto_target_seconds": spec.rto.total_seconds()}
    return None


def status_table(rows: list[StoreStatus]) -> Any:
    """Four columns so that slot keys stay whole at 80 columns: the second line of a cell says more."""
    out = table("backup status", ("store", "newest verified", "off-site / drill", "next slot"))
    for r in rows:
        if not r.configured:
            state = f"[dim]{NOT_CONFIGURED}[/]"
        else:
            state = "[green]ok[/]" if r.within_rpo else f"[red]{r.state}[/]"
        newest = r.newest_verified or "none"
        if r.age_hours is not None:
            newest += f"\n{r.age_hours:g} h old (RPO {r.rpo_hours:g} h)"
        if r.verification_stale:
            newest += "\n[yellow]checked over a day ago[/]"
        if r.last_failure is not None:
            newest += f"\n[yellow]last failure {r.last_failure['at']}[/]"
        drill = "drill: never"
        if r.last_drill is not None:
            rto = r.last_drill["rto_seconds"]
            drill = "drill: " + ("pass" if r.last_drill["passed"] else "[red]FAIL[/]") + (
                f" {rto:.0f}s/{r.last_drill['rto_target_seconds']:.0f}s" if rto is not None else "")
        out.add_row(f"{r.store}\n{state}", newest, f"{r.offsite or '-'}\n{drill}", r.next_slot or "-")
    return keep_whole(out, ("store", "newest verified", "next slot"))
