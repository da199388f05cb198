"""Deep off-site verification in rotating subsets (issue 19.4): bytes read a day, time to find a flipped byte.

Two parts. A year of daily backups of the benchmark's size, kept off-site for the year, run through the
planner (`offsite.subset.plan`, pure) day by day: the bytes a day the rotation reads at the end of the
year, against re-reading everything (`verify_offsite(deep=True)` on every slot) every day. Then, for real
against SeaweedFS: slots uploaded, a few daily runs, one byte flipped in the object read most recently
(the worst case: the rotation comes back to it last), and daily runs (simulated dates, real reads) until
one fails: the days that took are the figure, the target the configured period.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.artifacts import make_artifact
from benchmarks.common import Bench, Figure, MiB, human_bytes

START = datetime(2026, 1, 1, 4, 40, tzinfo=UTC)


def year_of_reads(size: int, policy: Any) -> tuple[list[int], int]:
    """(bytes read per day, off-site bytes at the end) for 365 daily backups of `size` kept a year."""
    from cb_backups.offsite.subset import Entry, plan

    entries: dict[str, Any] = {}
    per_day = []
    for day in range(365):
        now = START + timedelta(days=day)
        entries[f"day-{day}"] = Entry(size, "x", f"day {day}", now.isoformat())
        chosen = plan(entries, policy, now)
        per_day.append(sum(entries[i].bytes for i in chosen))
        for ident in chosen:
            entries[ident].read_at = now.isoformat()
    return per_day, sum(e.bytes for e in entries.values())


def verify_subset_figure(bench: Bench) -> Figure:
    from cb_backups.config.retention import VerifySubset
    from cb_backups.config.settings import S3Settings
    from cb_backups.core.catalog import Catalog
    from cb_backups.offsite.s3 import S3Target, upload_artifact
    from cb_backups.offsite.subset import load, verify_subset

    policy = VerifySubset()  # the default: 5% a run, every object within 30 days
    per_day, total = year_of_reads(bench.size_bytes, policy)
    steady = sum(per_day[-30:]) / 30
    full = total  # re-reading everything every day, at the end of the year

    slots, slot_bytes = (12, 256 * 1024) if bench.quick else (30, 2 * MiB)
    root = bench.scratch("verify-subset")
    catalog = Catalog(root / "backups")
    bucket = bench.s3_bucket("cb-bench-subset")
    with bench.aws_env():
        target = S3Target(S3Settings(bucket=bucket, endpoint_url=bench.s3.endpoint_url, region=bench.s3.region))
        artifacts = []
        for i in range(slots):
            artifact = make_artifact(root / "src", slot_bytes, key=f"2026-01-{i + 1:02d}")
            upload_artifact(artifact, target, force=True)
            # the catalog the runs record coverage in holds no data: the slot's own folder is read for its list
            artifacts.append(artifact)
        day = 0
        for day in range(3):  # a few runs so that read times differ
            verify_subset("synthetic", artifacts, target, catalog, policy, now=START + timedelta(days=day))
        entries, _ = load(catalog, "synthetic")
        newest = max(entries, key=lambda i: entries[i].since())
        key = newest.split("@")[0]
        victim = next(a for a in artifacts if key.startswith(target.key("synthetic", a.partition_key, "")))
        name = victim.manifest.files[0].name
        data = bytearray(victim.path(name).read_bytes())
        data[len(data) // 3] ^= 0x01
        target.client.put_object(Bucket=bucket, Key=key, Body=bytes(data),
                                 Metadata={"sha256": victim.manifest.files[0].sha256})
        flipped_on = day
        found = None
        wall = time.perf_counter()
        read_until_found = 0
        for day in range(flipped_on + 1, flipped_on + 1 + 2 * policy.period_days):
            run = verify_subset("synthetic", artifacts, target, catalog, policy, now=START + timedelta(days=day))
            read_until_found += run.bytes_read
            if run.problems:
                found = day - flipped_on
                break
        wall = time.perf_counter() - wall
    days = float(found) if found is not None else None
    return Figure("verify_subset", "Rotating deep off-site verification: days to find one flipped byte (worst case)",
                  days, "<=", float(policy.period_days), "offsite.subset.verify_subset, daily runs",
                  "the period (every object re-read within it)", wall, None, 1, unit="days",
                  condition_ok=steady <= 2 * total / policy.period_days,
                  code_path="plan (failing, due, then least recently read up to the fraction) -> GET + sha256 "
                            "of each chosen object -> coverage record (Catalog.offsite_coverage)",
                  note=f"a year of daily {human_bytes(bench.size_bytes)} backups kept off-site "
                       f"({human_bytes(total)}): {human_bytes(steady)} read a day at the end of the year vs "
                       f"{human_bytes(full)} a day re-reading everything ({steady / full:.3f}x); real run: "
                       f"{slots} slots of {human_bytes(slot_bytes)}, the byte flipped in the object read last, "
                       f"found after {found} daily run(s) ({human_bytes(read_until_found)} read, {wall:.1f} s)",
                  details={"bytes_per_day_end_of_year": steady, "bytes_per_day_full": full,
                           "bytes_per_day": per_day[::30], "found_after_runs": found,
                           "bytes_read_until_found": read_until_found, "seconds_until_found": round(wall, 2)})
