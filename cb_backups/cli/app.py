"""`cb-backups`: the command line. Exit codes: 0 ok, 1 a check or run failed, 2 bad input."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cb_backups.core.errors import CbBackupsError, ConfigError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_DAGSTER_HOME = ".dagster_home"


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or a local `.dagster_home` so CLI runs land in one instance the UI can show."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path(DEFAULT_DAGSTER_HOME).resolve())
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    if not config.exists():
        source = Path(__file__).resolve().parent.parent / "dagster.yaml"
        config.write_text(source.read_text() if source.exists() else "telemetry:\n  enabled: false\n")
    return home


def _instance() -> Any:
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


def _store_names(value: str | None) -> list[str]:
    from cb_backups.core.specs import STORE_NAMES

    if value is not None and value not in STORE_NAMES:  # before importing Dagster: bad input answers fast
        raise ConfigError("store", value, ", ".join(STORE_NAMES))
    from cb_backups.core.specs import BY_NAME, spec_for

    if value is None:
        return list(BY_NAME)
    spec_for(value)  # raises ConfigError naming the allowed stores
    return [value]


def _check_store_settings(value: str | None) -> None:
    """A named store's settings are bad input (exit 2) before any run starts, not a failed run."""
    if value is not None:
        from cb_backups.config.settings import load_settings
        from cb_backups.stores.registry import open_store

        open_store(value, load_settings())  # validates its settings (compression, URLs, ...); does not connect


def _partition(store: str, key: str | None) -> str:
    from cb_backups.core.partitions import parse_slot
    from cb_backups.core.specs import spec_for

    spec = spec_for(store)
    if key is None:
        last = spec.partitions.get_last_partition_key()
        if last is None:
            raise ConfigError("partition key", None, "a slot after the partitions start")
        return last
    parse_slot(spec.partitions, key)
    return key


def run_job(job_name: str, partition: str, instance: Any, run_config: dict[str, Any] | None = None) -> Any:
    from cb_backups.definitions import defs

    job = defs.resolve_job_def(job_name)
    # The CLI prints each failure as one line; Dagster's own log (with stack traces) on CB_LOG_LEVEL=ERROR/INFO.
    config = {"loggers": {"console": {"config": {"log_level": os.environ.get("CB_LOG_LEVEL", "CRITICAL")}}}}
    config.update(run_config or {})
    if job_name.endswith("_verify_job"):
        # A checks-only selection has no asset to validate the key against; pass it as the run's tag.
        return job.execute_in_process(tags={"dagster/partition": partition}, instance=instance,
                                      raise_on_error=False, run_config=config)
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False,
                                  run_config=config)


def check_table(title: str, rows: Sequence[tuple[str, str, bool, str]]) -> Table:
    table = Table(title=title)
    for col in ("store", "slot", "check", "result"):
        table.add_column(col)
    for store, slot, passed, text in rows:
        table.add_row(store, slot, "[green]pass[/]" if passed else "[red]FAIL[/]", text)
    return table


def _evaluations(result: Any) -> list[Any]:
    return list(result.get_asset_check_evaluations())


def _failure_messages(result: Any) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            user = event.step_failure_data.user_failure_data
            messages.append(user.description if user and user.description else (error.message if error else "failed"))
    return [m.strip() for m in messages if m]


def cmd_backup(args: argparse.Namespace) -> int:
    slots = [(store, _partition(store, args.partition)) for store in _store_names(args.store)]
    _check_store_settings(args.store)
    instance = _instance()
    status = 0
    for store, key in slots:
        with console.status(f"backing up {store} slot {key} ..."):
            result = run_job(f"{store}_backup_job", key, instance)
        rows = [(store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in _evaluations(result)]
        if not result.success or not rows or not all(r[2] for r in rows):
            status = 1
        for message in _failure_messages(result):
            err_console.print(f"[red]{store} {key}: {escape(message)}[/]")
        if rows:
            console.print(check_table(f"{store} backup {key}", rows))
    return status


def cmd_verify(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    names = _store_names(args.store)
    if not args.all:
        for store in names:
            _partition(store, args.partition)
    _check_store_settings(args.store)
    instance = _instance()
    catalog = BackupsResource().catalog()
    status = 0
    for store in names:
        keys = [a.partition_key for a in catalog.list(store)] if args.all else [_partition(store, args.partition)]
        for key in keys:
            result = run_job(f"{store}_verify_job", key, instance)
            rows = [(store, key, e.passed, e.check_name + ": " + (e.description or "")) for e in _evaluations(result)]
            if not rows or not all(r[2] for r in rows):
                status = 1
            console.print(check_table(f"{store} verify {key}", rows))
    return status


def cmd_list(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    catalog = BackupsResource().catalog()
    table = Table(title=f"backups in {catalog.root}")
    for col in ("store", "slot", "captured_at", "bytes", "verified", "path"):
        table.add_column(col)
    for store in _store_names(args.store):
        for artifact in catalog.list(store):
            record = catalog.verification_of(artifact)
            verified = "never" if record is None else ("[green]yes[/]" if record.ok else "[red]FAILED[/]")
            table.add_row(store, artifact.partition_key, artifact.manifest.captured_at,
                          f"{artifact.manifest.total_bytes:,}", verified, str(artifact.directory))
    console.print(table)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from cb_backups.defs.resources import BackupsResource

    resource = BackupsResource()
    settings = resource.settings()
    table = Table(title="pre-backup checklist")
    for col in ("store", "item", "result"):
        table.add_column(col)
    status = 0
    configured = settings.configured_stores()
    if not configured:
        err_console.print("no store is configured: set CB_POSTGRES_URL, CB_VALKEY_URL, ... (see README)")
        return 1
    for name in configured if args.store is None else _store_names(args.store):
        try:
            health = resource.store(name).health(settings.backup_dir)
            items = health.items
        except CbBackupsError as exc:
            items = {"adapter": str(exc)}
        for item, result in items.items():
            ok = result == "ok"
            status = status if ok else 1
            table.add_row(name, item, "[green]ok[/]" if ok else f"[red]{result}[/]")
    console.print(table)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from cb_backups.demo.run import run_demo

    return run_demo(Path(args.dir), keep_servers=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cb-backups", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start embedded PostgreSQL and Valkey, back both up through Dagster, verify")
    demo.add_argument("--dir", default="cb-demo", help="where the demo keeps backups and its Dagster instance")
    demo.add_argument("--keep", action="store_true", help="leave the servers running (Ctrl-C stops them)")
    demo.set_defaults(func=cmd_demo)

    backup = sub.add_parser("backup", help="back up one store (or all) for one slot, through Dagster")
    backup.add_argument("store", nargs="?", help="postgres, valkey, neo4j, qdrant or opensearch (default: all)")
    backup.add_argument("--partition", help="slot key, e.g. 2026-11-24-06:00 (six-hourly) or 2026-11-24 (daily)")
    backup.set_defaults(func=cmd_backup)

    verify = sub.add_parser("verify", help="run the post-backup checks again for a slot")
    verify.add_argument("store", nargs="?")
    group = verify.add_mutually_exclusive_group()
    group.add_argument("--partition")
    group.add_argument("--all", action="store_true", help="every backup in the catalog")
    verify.set_defaults(func=cmd_verify)

    listing = sub.add_parser("list", help="backups in the catalog")
    listing.add_argument("store", nargs="?")
    listing.set_defaults(func=cmd_list)

    doctor = sub.add_parser("doctor", help="the runbook's pre-backup checklist for every configured store")
    doctor.add_argument("store", nargs="?")
    doctor.set_defaults(func=cmd_doctor)

    # Feature modules add their own subcommands through `add_commands(sub)`.
    for name in COMMAND_MODULES:
        if find_spec(name) is not None:
            import_module(name).add_commands(sub)
    return parser


COMMAND_MODULES = (
    "cb_backups.cli.restore",  # restore
    "cb_backups.cli.offsite",  # offsite copy / verify
    "cb_backups.cli.prune",  # prune
    "cb_backups.cli.report",  # report
    "cb_backups.cli.bench",  # bench
)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command != "demo":  # the demo configures its own servers
            from cb_backups.config.settings import load_settings

            load_settings()  # bad settings are bad input (exit 2) before any command starts
        return int(args.func(args))
    except CbBackupsError as exc:
        err_console.print("[red]error:[/] " + escape(str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
