"""PostgreSQL directory format (`pg_dump -Fd -j N`, dump_jobs >= 2) against the default one-stream -Fc.

Measured on a wide database (memories plus three more tables of the same size: `add_wide_tables`) and on
the benchmark's usual one (one large table): backup time and restore time, both through PostgresStore.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes, paired

WIDE_COPIES = 3


def _wide_database(bench: Bench) -> str:
    from cb_backups.demo.sample_data import add_wide_tables, load_postgres, postgres_rows_for_bytes

    if "pg_wide" not in bench.cache:
        with bench.pg.connect("postgres") as conn:
            conn.execute("DROP DATABASE IF EXISTS wide")
            conn.execute(f"CREATE DATABASE wide OWNER {bench.pg.user}")
        with bench.pg.connect("wide") as conn:  # the same total size, spread over four tables
            load_postgres(conn, scale=postgres_rows_for_bytes(bench.size_bytes // (WIDE_COPIES + 1)), hnsw=False)
            add_wide_tables(conn, WIDE_COPIES)
        bench.cache["pg_wide"] = "wide"
    return str(bench.cache["pg_wide"])


def parallel_dump(bench: Bench) -> list[Figure]:
    jobs = os.cpu_count() or 2
    work = bench.scratch("pg-parallel")
    narrow = bench.pg.dbname  # starts the server and loads the usual data set first
    wide = _wide_database(bench)
    return [_measure(bench, work, jobs, "wide", wide), _measure(bench, work, jobs, "one large table", narrow)]


def _measure(bench: Bench, work: Path, jobs: int, label: str, dbname: str) -> Figure:
    from psycopg import sql

    from cb_backups.core.catalog import Catalog
    from cb_backups.core.model import Target
    from cb_backups.stores.postgres import PostgresStore

    base = bench.pg_settings(dbname=dbname)
    stores = {"directory": PostgresStore(replace(base, dump_jobs=jobs)), "custom": PostgresStore(base)}
    artifacts: dict[str, Any] = {}

    def backup(name: str) -> None:
        shutil.rmtree(work / name, ignore_errors=True)  # a second backup of a slot would keep the first
        artifacts[name] = Catalog(work / name).write("postgres", "2026-11-24-00:00", stores[name].backup)

    def restore(name: str) -> None:
        stores[name].restore(artifacts[name], Target("scratch", {"dbname": f"bench_par_{name}", "jobs": jobs}))

    def drop() -> None:
        with bench.pg.connect("postgres") as conn:
            for name in stores:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(f"bench_par_{name}")))

    backup("directory")  # warm-up
    backups = paired(lambda: backup("directory"), lambda: backup("custom"), bench.repeat)
    restores = paired(lambda: restore("directory"), lambda: restore("custom"), bench.repeat, between=drop)
    drop()
    sizes = {k: a.manifest.total_bytes for k, a in artifacts.items()}
    details = {"backup_ratio": round(backups.ratio, 3), "backup_ratios": [round(r, 3) for r in backups.ratios],
               "backup_seconds_directory_custom": [round(backups.a_median, 2), round(backups.b_median, 2)],
               "restore_ratio": round(restores.ratio, 3), "restore_ratios": [round(r, 3) for r in restores.ratios],
               "restore_seconds_directory_custom": [round(restores.a_median, 2), round(restores.b_median, 2)],
               "bytes": sizes, "files_directory": len(artifacts["directory"].manifest.files)}
    verdict = "wins" if backups.ratio < 1.0 else "does not win"
    return Figure(
        "pg_parallel_dump" if label == "wide" else "pg_parallel_dump_narrow",
        f"PostgreSQL backup with pg_dump -Fd -j {jobs} / the default -Fc stream, {label} database",
        backups.ratio, "<=", 1.0, f"PostgresStore.backup, dump_jobs={jobs} (directory format, each file zstd "
        "+ sha256)", "PostgresStore.backup, dump_jobs=1 (pg_dump -Fc | zstd, the default)",
        backups.a_median, backups.b_median, len(backups.a),
        code_path="cb_backups.stores.pg_directory: pg_dump -Fd -j N into the staging folder, then each file "
                  "through zstd + HashingWriter; restore: every file hashed + decompressed, pg_restore -j N",
        note=f"{verdict} on {jobs} cores; restore from it / from -Fc {restores.ratio:.2f}; sizes "
             f"{human_bytes(sizes['directory'])} vs {human_bytes(sizes['custom'])}",
        details=details)
