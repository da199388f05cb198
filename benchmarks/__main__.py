"""`python -m benchmarks`: every figure as a ratio against the raw tool, with target and PASS/MISS."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import QUICK_BYTES, SIZES, Bench, Figure, human_bytes, machine, parse_size, unavailable

# key, title, target op, target
FIGURES: list[tuple[str, str, str, float]] = [
    ("pg_dagster_overhead", "PostgreSQL backup through Dagster (gzip:6) / raw pg_dump -Z 6", "<=", 1.05),
    ("pg_default_speedup", "Default backup speed-up over pg_dump -Fc -Z 6", ">=", 5.0),
    ("pg_default_vs_plain", "Default backup time / pg_dump -Fc -Z 0", "<=", 1.3),
    ("full_system", "Full system backup wall time / five stores one after another", "<=", 0.6),
    ("full_system_restore", "Full system restore wall time / five stores restored one after another", "<=", 0.6),
    ("offsite_throughput", "Off-site copy throughput / raw boto3 upload_file", ">=", 0.9),
    ("pg_restore", "PostgreSQL restore / raw pg_restore --jobs N", "<=", 1.10),
    ("pg_restore_runbook", "PostgreSQL restore / the runbook's restore commands", "<=", 1.0),
    ("offsite_restore", "Off-site PostgreSQL restore / raw boto3 download + raw pg_restore", "<=", 0.8),
    ("pg_parallel_dump", "PostgreSQL backup pg_dump -Fd -j N / default -Fc, wide database", "<=", 1.0),
    ("pg_parallel_dump_narrow", "PostgreSQL backup pg_dump -Fd -j N / default -Fc, one large table", "<=", 1.0),
    ("peak_rss", "Peak RSS of backup + off-site copy: large / small artifact", "<=", 1.2),
    ("verify_throughput", "Verification throughput / sha256sum", ">=", 0.8),
    ("report", "Auditor report over ~4,400 slots (seconds)", "<=", 10.0),
    ("pitr_base_backup", "PITR base backup throughput: cb-backups / Barman streaming backup", ">=", 0.9),
    ("pitr_recover", "Time to recover to a point: cb-backups restore --to-time / Barman recover", "<=", 1.5),
    ("pitr_rpo", "RPO under steady inserts, cb-backups wal-receive running (seconds)", "<=", 60.0),
    ("verify_subset", "Rotating deep off-site verification: days to find one flipped byte", "<=", 30.0),
    ("encrypted_offsite", "Encrypted backup + off-site copy throughput / unencrypted", ">=", 0.9),
    ("restic_offsite", "Encrypted off-site copy throughput: cb-backups / restic's first backup", ">=", 2.0),
    ("neo4j_export_memory", "Neo4j online export + restore, peak RSS: 10N-node graph / N-node graph", "<=", 1.2),
]
KEYS = [f[0] for f in FIGURES]
NOT_QUICK = {"pitr_base_backup", "pitr_recover", "pitr_rpo",  # need Barman and minutes: run without --quick
             "pg_parallel_dump", "pg_parallel_dump_narrow",  # a second data set; tests/test_postgres.py covers -Fd
             "restic_offsite",  # needs restic (apt-get install restic)
             "neo4j_export_memory"}  # a 200k-node graph restored over Bolt: minutes
QUICK_KEYS = [k for k in KEYS if k not in NOT_QUICK]


def _groups() -> list[tuple[list[str], Callable[[Bench], Figure | list[Figure]]]]:
    from benchmarks import (
        encrypted,
        fullsys,
        offsite,
        offsite_restore,
        pg_parallel,
        pitr,
        postgres,
        report_bench,
        verify_subset,
    )
    from benchmarks.neo4j_export import export_memory as neo4j_export_memory

    return [
        (["pg_dagster_overhead"], postgres.dagster_overhead),
        (["pg_default_speedup", "pg_default_vs_plain"], postgres.default_vs_runbook),
        (["full_system"], fullsys.full_vs_sequential),
        (["full_system_restore"], fullsys.full_restore_vs_sequential),
        (["offsite_throughput"], offsite.offsite_throughput),
        (["pg_restore", "pg_restore_runbook"], postgres.restore),
        (["offsite_restore"], offsite_restore.offsite_restore),
        (["pg_parallel_dump", "pg_parallel_dump_narrow"], pg_parallel.parallel_dump),
        (["peak_rss"], offsite.peak_memory),
        (["verify_throughput"], offsite.verification_throughput),
        (["report"], report_bench.report_figure),
        (["pitr_base_backup"], pitr.base_backup),
        (["pitr_recover"], pitr.recover),
        (["pitr_rpo"], pitr.rpo),
        (["verify_subset"], verify_subset.verify_subset_figure),
        (["encrypted_offsite"], encrypted.encrypted_offsite),
        (["restic_offsite"], encrypted.restic_offsite),
        (["neo4j_export_memory"], neo4j_export_memory),
    ]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--size", default="200MB", help=f"data set size: {', '.join(SIZES)} (default 200MB); several, "
                        "comma-separated (200MB,1GB), run one after another in one run")
    parser.add_argument("--quick", action="store_true", help="small data, 2 pairs per figure: under 2 minutes")
    parser.add_argument("--repeat", default=None, help="pairs per figure (default 5, quick 2); one per size: 3,2")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--only", action="append", choices=KEYS, metavar="FIGURE",
                        help=f"run only this figure (repeatable): {', '.join(KEYS)}")
    return parser


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def results_table(figures: Sequence[Figure]) -> Table:
    table = Table(title="cb-backups benchmarks (ratios are medians of paired runs)", show_lines=False)
    for col in ("figure", "A (median)", "B (median)", "ratio", "target", "verdict", "what / notes"):
        table.add_column(col, overflow="fold")
    for f in figures:
        ratio = "n/a" if f.ratio is None else f"{f.ratio:.3f}{'s' if f.unit == 's' else 'x'}"
        color = {"PASS": "green", "MISS": "red"}.get(f.verdict, "yellow")
        table.add_row(f.key, _fmt_seconds(f.a_seconds), _fmt_seconds(f.b_seconds), ratio,
                      f"{f.op} {f.target:g}{'s' if f.unit == 's' else 'x'}", f"[{color}]{f.verdict}[/]",
                      f"{f.title}. A: {f.a_label}" + (f"; B: {f.b_label}" if f.b_label else "")
                      + (f". {f.note}" if f.note else ""))
    return table


def _run_one(size_bytes: int, quick: bool, repeat: int, wanted: set[str], console: Console) -> dict[str, Any]:
    """Every wanted figure on one data set (its own servers and data); the JSON payload of that run."""
    console.print(f"[bold]data set[/]: {human_bytes(size_bytes)} of PostgreSQL sample data"
                  f"{' (quick)' if quick else ''}; {repeat} paired runs per figure")
    figures: list[Figure] = []
    started = time.perf_counter()
    with Bench(size_bytes, quick, repeat, lambda m: console.print(f"[dim]{m}[/]")) as bench:
        for keys, runner in _groups():
            if not wanted.intersection(keys):
                continue
            console.print(f"[bold]running[/] {', '.join(keys)} ...")
            t0 = time.perf_counter()
            try:
                result = runner(bench)
                produced = result if isinstance(result, list) else [result]
            except Exception as exc:  # a figure that cannot run is reported, the others still run
                console.print(f"[red]{keys[0]} failed:[/] {type(exc).__name__}: {exc}")
                console.print(f"[dim]{traceback.format_exc(limit=3)}[/]")
                produced = [unavailable(k, t, op, tgt, f"error: {type(exc).__name__}: {str(exc)[:300]}")
                            for k, t, op, tgt in FIGURES if k in keys]
            for figure in produced:
                figure.details.setdefault("figure_seconds", round(time.perf_counter() - t0, 1))
                console.print(f"  {figure.key}: {figure.verdict} "
                              f"{'' if figure.ratio is None else f'{figure.ratio:.3f}'} (target {figure.op} "
                              f"{figure.target:g}) {figure.note}")
            figures += [f for f in produced if f.key in wanted]
    console.print(results_table(figures))
    return {"size_bytes": size_bytes, "quick": quick, "repeat": repeat,
            "total_seconds": round(time.perf_counter() - started, 1), "figures": [f.to_json() for f in figures]}


def sizes_table(runs: Sequence[dict[str, Any]]) -> Table:
    """One row per figure, one column per data set: what README's Performance table shows."""
    table = Table(title="cb-backups benchmarks, every data set of this run", show_lines=False)
    table.add_column("figure")
    for run in runs:
        table.add_column(human_bytes(run["size_bytes"]), overflow="fold")
    table.add_column("target")
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for i, run in enumerate(runs):
        for figure in run["figures"]:
            rows.setdefault(figure["key"], {})[i] = figure
    for key, by_run in rows.items():
        first = next(iter(by_run.values()))
        cells = []
        for i in range(len(runs)):
            f = by_run.get(i)
            cells.append("-" if f is None else "n/a" if f["ratio"] is None else
                         f"{f['ratio']:.3f} {f['verdict']}")
        table.add_row(key, *cells, str(first["target"]))
    return table


def _repeats(text: int | str, count: int) -> list[int]:
    """`--repeat`: one number of pairs for every size, or one per size ("3,2")."""
    from cb_backups.core.errors import ConfigError

    values = [v.strip() for v in str(text).split(",")]
    values = values * count if len(values) == 1 else values
    if len(values) != count or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise ConfigError("--repeat", str(text), f"a whole number of pairs >= 1, or one per size ({count} values, "
                                                 "e.g. 3,2)")
    return [int(v) for v in values]


def run_benchmarks(size: str = "200MB", quick: bool = False, repeat: int | str | None = None,
                   json_path: str | None = None, only: Sequence[str] | None = None,
                   console: Console | None = None) -> int:
    """Run the figures on each data set of `size` ("200MB" or "200MB,1GB": one after another, in one run),
    print machine, tables and JSON; returns 0 (misses are results, not errors)."""
    warnings.filterwarnings("ignore")
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    sizes = [QUICK_BYTES] if quick else [parse_size(s) for s in str(size).split(",")]
    repeats = _repeats(repeat if repeat is not None else (2 if quick else 5), len(sizes))
    info = machine()
    console.print(f"[bold]machine[/]: {info['nproc']} cores, {info['memory']} memory, {info['cpu']}, "
                  f"Python {info['python']}, load at start {info['load_at_start']}")
    wanted = set(only or (QUICK_KEYS if quick else KEYS))
    started = time.perf_counter()
    runs = [_run_one(size_bytes, quick, r, wanted, console) for size_bytes, r in zip(sizes, repeats, strict=True)]
    total = time.perf_counter() - started
    if len(runs) > 1:
        console.print(sizes_table(runs))
    payload: dict[str, Any] = {"machine": info, **runs[0]} if len(runs) == 1 else \
        {"machine": info, "quick": quick, "total_seconds": round(total, 1), "sizes": runs}
    text = json.dumps(payload, indent=2, default=str)
    if json_path:
        Path(json_path).write_text(text + "\n")
        console.print(f"JSON written to {json_path}")
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    figures = [f for run in runs for f in run["figures"]]
    console.print(f"total {total:.0f}s; {sum(f['verdict'] == 'PASS' for f in figures)} PASS, "
                  f"{sum(f['verdict'] == 'MISS' for f in figures)} MISS, "
                  f"{sum(f['verdict'] == 'N/A' for f in figures)} N/A")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from cb_backups.core.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return run_benchmarks(args.size, args.quick, args.repeat, args.json_path, args.only)
    except ConfigError as exc:  # a bad --size / --repeat: one line, exit 2, like the CLI
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
