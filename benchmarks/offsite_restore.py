"""Off-site PostgreSQL restore: our restore from S3 / a raw download of the same object + raw pg_restore.

Both sides read the same `.zst` object from the same SeaweedFS bucket and restore it into a fresh database.
The raw side is what an operator would type without cb-backups, two ways, and the faster of the two counts
in each round (the stricter peer): `download_file` then `zstd -dc | pg_restore -d db` (one pass, one job:
pg_restore cannot seek a pipe), or `download_file`, `zstd -d` to a file, then `pg_restore --jobs N`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes, run, timed

DB_OURS, DB_PIPE, DB_JOBS = "bench_offsite_a", "bench_offsite_b", "bench_offsite_c"


def offsite_restore(bench: Bench) -> Figure:
    """execute_restore(source=offsite, scratch) / (boto3 download_file + raw pg_restore), same object."""
    import boto3
    from psycopg import sql

    from benchmarks.postgres import DEFAULT
    from cb_backups.config.settings import S3Settings, Settings
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.model import Target
    from cb_backups.offsite.s3 import S3Target, upload_artifact
    from cb_backups.restore.execute import execute_restore
    from cb_backups.restore.plan import plan_restore
    from cb_backups.stores.postgres import PostgresStore, dump_file

    work = bench.scratch("offsite-restore")
    bucket = bench.s3_bucket("cb-bench-offsite-restore")
    slot = "2026-11-24-00:00"
    pg = bench.pg_settings(DEFAULT)
    catalog = Catalog(work / "backups")
    artifact = catalog.write("postgres", slot, PostgresStore(pg).backup)
    jobs = os.cpu_count() or 2
    results: dict[str, Any] = {"counts_match": []}
    with bench.aws_env():
        settings = Settings(backup_dir=work / "backups", postgres=pg,
                            s3=S3Settings(bucket=bucket, endpoint_url=bench.s3.endpoint_url, region=bench.s3.region))
        target = S3Target(settings.s3)
        upload_artifact(artifact, target, force=True)
        object_key = target.key("postgres", slot, dump_file(artifact).name)
        # a fresh session: boto3.client's default one keeps the first credentials it found (in a
        # --size 200MB,1GB run, those of the first size's server)
        client = boto3.session.Session().client("s3", endpoint_url=bench.s3.endpoint_url,
                                                 region_name=bench.s3.region)
        local = work / "raw" / dump_file(artifact).name
        local.parent.mkdir()

        def drop(name: str) -> None:
            with bench.pg.connect("postgres") as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

        def createdb(name: str) -> None:
            with bench.pg.connect("postgres") as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))

        def ours() -> None:
            plan = plan_restore(settings, "postgres", slot, source="offsite",
                                target=Target("scratch", {"dbname": DB_OURS, "jobs": jobs}))
            result = execute_restore(plan)
            results["counts_match"].append(result.ok and result.counts.get("tables") == artifact.manifest.inventory
                                           .get("tables"))

        def raw_pipe() -> None:
            client.download_file(bucket, object_key, str(local))
            createdb(DB_PIPE)
            with open(local, "rb") as src:
                unzstd = subprocess.Popen(["zstd", "-dc", "-q"], stdin=src, stdout=subprocess.PIPE)
                done = subprocess.run([bench.pg_tool("pg_restore"), "--exit-on-error", "-d", DB_PIPE],
                                      stdin=unzstd.stdout, capture_output=True, env=bench.pg_env(), check=False)
                assert unzstd.stdout is not None
                unzstd.stdout.close()
                if unzstd.wait() != 0 or done.returncode != 0:
                    raise RuntimeError(f"raw zstd | pg_restore failed: {done.stderr.decode()[-300:]}")
            local.unlink()

        def raw_jobs() -> None:
            client.download_file(bucket, object_key, str(local))
            plain = local.with_suffix("")
            run(["zstd", "-d", "-q", "-f", "--rm", str(local), "-o", str(plain)])
            createdb(DB_JOBS)
            run([bench.pg_tool("pg_restore"), "--jobs", str(jobs), "--exit-on-error", "-d", DB_JOBS, str(plain)],
                env=bench.pg_env())
            plain.unlink()

        def clean() -> None:
            for name in (DB_OURS, DB_PIPE, DB_JOBS):
                drop(name)

        clean()
        times: dict[str, list[float]] = {"ours": [], "raw_pipe": [], "raw_jobs": []}
        fns = [("ours", ours), ("raw_pipe", raw_pipe), ("raw_jobs", raw_jobs)]
        for i in range(bench.repeat):  # rotate the order every round (cancels warm-up and drift)
            for name, fn in fns[i % 3:] + fns[:i % 3]:
                seconds, _ = timed(fn)
                times[name].append(seconds)
                clean()
    raw = [min(p, j) for p, j in zip(times["raw_pipe"], times["raw_jobs"], strict=True)]
    ratios = [a / b for a, b in zip(times["ours"], raw, strict=True)]
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return Figure("offsite_restore", "Off-site PostgreSQL restore / raw download of the same object (boto3) + raw "
                  "pg_restore", statistics.median(ratios), "<=", 0.8,
                  f"execute_restore(postgres, source=offsite, scratch, --jobs {jobs})",
                  "boto3 download_file + the faster of `zstd -dc | pg_restore` and "
                  f"`zstd -d; pg_restore --jobs {jobs}`",
                  statistics.median(times["ours"]), statistics.median(raw), len(ratios),
                  code_path="download_artifact (sha256 while streaming) -> manifest against its S3 metadata -> "
                            "PostgresStore staging (sha256 + zstd + data offsets in one read, pg_restore --list, "
                            "pg_restore --jobs into <db>__incoming, counts) -> rename",
                  note=f"object {human_bytes(artifact.manifest.total_bytes)}; medians: ours {med['ours']}s, "
                       f"raw pipe {med['raw_pipe']}s, raw --jobs {med['raw_jobs']}s",
                  details={"seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                           "ratios": [round(r, 3) for r in ratios], "object_bytes": artifact.manifest.total_bytes,
                           "counts_match": all(results["counts_match"]), "object": str(Path(object_key).name)})
