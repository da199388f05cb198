"""Child process for the auditor-report figure (it needs CB_PARTITIONS_START before cb_backups is imported).

Builds (once, cached) a Dagster instance holding `days` of history for the five stores: one
materialization and the four slot checks per slot, about 1% of them failed, then times
`build_report` plus rendering HTML and CSV. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def build_history(home: Path, start: datetime, end: datetime) -> int:
    import dagster as dg

    from cb_backups.checks.slot import SLOT_CHECKS
    from cb_backups.core.specs import STORES
    from cb_backups.report.build import expected_slots

    instance = dg.DagsterInstance.local_temp(str(home))
    now = datetime.now(UTC)
    slots = 0
    for spec in STORES:
        for n, (key, _begin, finish) in enumerate(expected_slots(spec, start, end, now)):
            slots += 1
            captured = (finish + timedelta(minutes=3)).isoformat(timespec="seconds")
            instance.report_runless_asset_event(dg.AssetMaterialization(
                spec.asset_key, partition=key,
                metadata={"bytes": 50_000_000 + n, "duration_seconds": 42.0, "captured_at": captured,
                          "sha256": {"postgres.dump.zst": f"{n:064x}"}}))
            for check in SLOT_CHECKS:
                passed = not (check == "checksum" and n % 97 == 13)
                instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                    asset_key=spec.asset_key, check_name=check, passed=passed, partition=key,
                    description="ok" if passed else "sha256 differs from the manifest"))
    instance.dispose()
    return slots


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import dagster as dg

    from cb_backups.report.build import build_report, period
    from cb_backups.report.render import render

    home = Path(args.home)
    start, end = period(datetime.fromisoformat(args.start).date(), datetime.fromisoformat(args.end).date())
    marker = home / "built.json"
    build_seconds = None
    if not marker.exists():
        home.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        events_slots = build_history(home, start, end)
        build_seconds = round(time.perf_counter() - t0, 1)
        marker.write_text(json.dumps({"slots": events_slots, "build_seconds": build_seconds}))
    instance = dg.DagsterInstance.local_temp(str(home))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times, rows, summary = [], 0, {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        report = build_report(instance, out / "backups", start, end)
        html = render(report, "html")
        csv = render(report, "csv")
        times.append(time.perf_counter() - t0)
        rows = len(report.rows)
        summary = {s.store: {"slots": s.slots, "verified": s.verified, "failed": s.failed} for s in report.stores}
    print(json.dumps({"slots": rows, "seconds": times, "median": statistics.median(times),
                      "html_bytes": len(html), "csv_bytes": len(csv), "stores": summary,
                      "build_seconds": build_seconds}))


if __name__ == "__main__":
    main()
