"""`cb-backups demo`: real PostgreSQL and Valkey with sample data, backed up through Dagster, verified.

The servers and the sample data come from `cb_backups.demo`; this command drives them through the
same Dagster jobs as `cb-backups backup`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import time
from pathlib import Path

from cb_backups.cli.args import Subcommands
from cb_backups.cli.output import console, keep_whole, table
from cb_backups.cli.runs import instance, run_job
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import ConfigError
from cb_backups.core.fileio import atomic_write_bytes
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.demo.sample_data import load_postgres, load_valkey

DEMO_STORES = ("postgres", "valkey")  # the two stores with embedded servers
PORT_ENV = {"postgres": "CB_DEMO_POSTGRES_PORT", "valkey": "CB_DEMO_VALKEY_PORT"}


def port(flag: str, value: str | None) -> int | None:
    """A port from the flag or its environment variable; None (or 0): a free one is picked."""
    if value is None or value == "" or value == "0":
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(flag, value, "a TCP port 1 to 65535, or 0 for a free one")
    return int(value)


def register(sub: Subcommands) -> None:
    demo = sub.add_parser("demo", help="start embedded PostgreSQL and Valkey, back both up through Dagster, verify")
    demo.add_argument("--dir", default="cb-demo", help="where the demo keeps backups and its Dagster instance")
    demo.add_argument("--keep", action="store_true", help="leave the servers running (Ctrl-C stops them)")
    demo.add_argument("--postgres-port", metavar="PORT", default=os.environ.get(PORT_ENV["postgres"]),
                      help=f"PostgreSQL's port (default: ${PORT_ENV['postgres']}, else a free one)")
    demo.add_argument("--valkey-port", metavar="PORT", default=os.environ.get(PORT_ENV["valkey"]),
                      help=f"Valkey's port (default: ${PORT_ENV['valkey']}, else a free one)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ports = {"postgres": port("--postgres-port", args.postgres_port), "valkey": port("--valkey-port", args.valkey_port)}
    return run_demo(Path(args.dir), keep_servers=args.keep, ports=ports)


def next_steps(env_file: Path, keep_servers: bool) -> list[str]:
    """What to try next, as shell lines (the env file points the CLI and `dg dev` at the demo's servers)."""
    load = f"set -a; . {shlex.quote(str(env_file))}; set +a"
    lines = [
        "Next steps, in another terminal from the repository root"
        + (" (the servers keep running until Ctrl-C here):" if keep_servers else
           " (the servers have stopped; run the demo with --keep to back up or restore again):"),
        f"  {load}",
        "  cb-backups status                        # newest verified backup per store, against its RPO",
        "  cb-backups list                          # the backups in the catalog",
        "  cb-backups verify postgres               # run the post-backup checks again",
        "  cb-backups restore postgres --target scratch   # into a scratch database; live data untouched",
        "  dg dev                                   # the Dagster UI on these runs (http://127.0.0.1:3000)",
    ]
    return lines


def run_demo(root: Path, keep_servers: bool = False, scale: int = 300, ports: dict[str, int | None] | None = None
             ) -> int:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "backups").mkdir(mode=0o700, exist_ok=True)  # the demo owns its folder (a missing one is refused)
    os.environ["CB_BACKUP_DIR"] = str(root / "backups")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")

    chosen = {k: v for k, v in (ports or {}).items() if v is not None}
    pg = EmbeddedPostgres(root=root / "postgres", **({"port": chosen["postgres"]} if "postgres" in chosen else {}))
    vk = EmbeddedValkey(root=root / "valkey", **({"port": chosen["valkey"]} if "valkey" in chosen else {}))
    status = 0
    try:
        with console.status("starting PostgreSQL 16 + pgvector and Valkey 8 ..."):
            pg.start()
            vk.start()
        os.environ.update(pg.env())
        os.environ.update(vk.env())
        env_file = root / "demo.env"
        env = {**pg.env(), **vk.env(), "CB_BACKUP_DIR": str(root / "backups"),
               "DAGSTER_HOME": str(root / "dagster_home")}
        atomic_write_bytes(env_file, "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items())).encode())
        with console.status("loading sample data ..."):
            with pg.connect() as conn:
                if not conn.execute("SELECT to_regclass('public.memories')").fetchone()[0]:
                    load_postgres(conn, scale=scale)
            load_valkey(vk.client, scale=scale)
        from cb_backups.core.specs import spec_for

        dagster = instance()
        summary = table("cb-backups demo", ("store", "slot", "bytes", "checks", "path"))
        for store in DEMO_STORES:
            key = spec_for(store).partitions.get_last_partition_key()
            assert key is not None
            with console.status(f"materializing {store}_backup for slot {key} through Dagster ..."):
                result = run_job(f"{store}_backup_job", key, dagster)
            checks = list(result.get_asset_check_evaluations())
            passed = sum(e.passed for e in checks)
            ok = result.success and checks and passed == len(checks)
            status = status if ok else 1
            artifact = Catalog(root / "backups").load(root / "backups" / store / key)
            size = artifact.manifest.total_bytes if artifact is not None else 0  # what `list` shows
            # the path under the backups folder printed below: whole at 80 columns
            summary.add_row(store, key, f"{size:,}", f"{passed}/{len(checks)} {'ok' if ok else 'FAIL'}",
                            f"{store}/{key}")
        console.print(keep_whole(summary, ("store", "slot", "bytes", "checks", "path")))
        console.print(f"backups in {root / 'backups'}; servers: {pg.url} and {vk.url}", soft_wrap=True)
        console.print("")
        for line in next_steps(env_file, keep_servers):
            console.print(line, soft_wrap=True, markup=False)
        console.print("")
        if keep_servers:
            console.print("servers keep running; Ctrl-C stops them.")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        with console.status("stopping servers ..."):
            vk.stop()
            pg.stop()
    return status
