"""The auditor report over about 4,400 slots (13 months of five stores): under 10 seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path

from benchmarks.common import Bench, Figure, unavailable

TITLE = "Auditor report (build + HTML + CSV) over ~4,400 slots"
FULL_DAYS = 400  # 4 + 4 + 1 + 1 + 1 slots a day -> 4,400 slots
QUICK_DAYS = 10


def cache_dir() -> Path:
    base = os.environ.get("CB_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cb-backups-bench")
    return Path(base)


def report_figure(bench: Bench) -> Figure:
    if find_spec("cb_backups.report") is None:
        return unavailable("report", TITLE, "<=", 10.0, "not available yet (cb_backups/report.py missing)")
    import dagster as dg

    days = QUICK_DAYS if bench.quick else FULL_DAYS
    home = cache_dir() / f"report-history-{dg.__version__}-{days}d"
    meta_path = home / "period.json"
    if meta_path.exists():  # a cached history keeps its own dates
        period = json.loads(meta_path.read_text())
    else:
        end = datetime.now(UTC).date() - timedelta(days=1)
        period = {"start": (end - timedelta(days=days - 1)).isoformat(), "end": end.isoformat()}
        home.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(period))
        bench.log(f"  building {days} days of synthetic history in {home} (cached for later runs) ...")
    partitions_start = (datetime.fromisoformat(period["start"]) - timedelta(days=1)).date().isoformat()
    env = {**os.environ, "CB_PARTITIONS_START": partitions_start, "DAGSTER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.report_child", "--home", str(home), "--start",
                           period["start"], "--end", period["end"], "--repeat", str(bench.repeat),
                           "--out", str(bench.scratch("report"))], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"report child failed: {done.stderr.strip()[-600:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    slots = result["slots"]
    title = TITLE if not bench.quick else f"Auditor report over {slots} slots (quick: the target is for 4,400)"
    return Figure("report", title, result["median"], "<=", 10.0,
                  f"build_report over {slots} slots", "", result["median"], None, len(result["seconds"]), unit="s",
                  code_path="cb_backups.report.build_report + render(html, csv) on a sqlite instance with 1 "
                            "materialization + 4 slot checks per slot",
                  note=f"{slots} slots, {period['start']} to {period['end']}; {result['html_bytes']:,} bytes of HTML",
                  details=result)
