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

from rich.table import Table

from cb_backups.cli.args import Subcommands
from cb_backups.cli.output import console
from cb_backups.cli.runs import instance, run_job
from cb_backups.core.fileio import atomic_write_bytes
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.demo.sample_data import load_postgres, load_valkey

DEMO_STORES = ("postgres", "valkey")  # the two stores with embedded servers


def register(sub: Subcommands) -> None:
    demo = sub.add_parser("demo", help="start embedded PostgreSQL and Valkey, back both up through Dagster, verify")
    demo.add_argument("--dir", default="cb-demo", help="where the demo keeps backups and its Dagster instance")
    demo.add_argument("--keep", action="store_true", help="leave the servers running (Ctrl-C stops them)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(Path(args.dir), keep_servers=args.keep)


def run_demo(root: Path, keep_servers: bool = False, scale: int = 300) -> int:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "backups").mkdir(mode=0o700, exist_ok=True)  # the demo owns its folder (a missing one is refused)
    os.environ["CB_BACKUP_DIR"] = str(root / "backups")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")

    pg = EmbeddedPostgres(root=root / "postgres")
    vk = EmbeddedValkey(root=root / "valkey")
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
        summary = Table(title="cb-backups demo")
        for col in ("store", "slot", "bytes", "checks", "path"):
            summary.add_column(col)
        for store in DEMO_STORES:
            key = spec_for(store).partitions.get_last_partition_key()
            assert key is not None
            with console.status(f"materializing {store}_backup for slot {key} through Dagster ..."):
                result = run_job(f"{store}_backup_job", key, dagster)
            checks = list(result.get_asset_check_evaluations())
            passed = sum(e.passed for e in checks)
            ok = result.success and checks and passed == len(checks)
            status = status if ok else 1
            path = root / "backups" / store / key
            size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else 0
            summary.add_row(store, key, f"{size:,}", f"{passed}/{len(checks)} passed", str(path))
        console.print(summary)
        for store in DEMO_STORES:
            for manifest in sorted((root / "backups" / store).glob("*/manifest.json")):
                console.print(f"{store}: {manifest}")
        console.print("\nOpen the Dagster UI on these backups, from the repository root (the servers must be up "
                      "for new materializations: add --keep):", soft_wrap=True)
        console.print(f"  set -a; . {env_file}; set +a; dg dev\n", soft_wrap=True)
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
