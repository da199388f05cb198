"""`cb-backups bench`: the benchmarks (same code as `python -m benchmarks`)."""

from __future__ import annotations

import argparse


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import run_benchmarks
    except ImportError:
        from cb_backups.core.errors import ConfigError

        raise ConfigError("bench", "benchmarks package", "a source checkout of cb-backups (benchmarks/ beside "
                          "cb_backups/) with the test extra installed") from None
    return run_benchmarks(args.size, args.quick, args.repeat, args.json_path, args.only)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks against the raw tools (pg_dump, pg_restore, boto3, sha256sum)")
    try:
        from benchmarks.__main__ import build_parser
    except ImportError:
        bench.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        build_parser(bench)
    bench.set_defaults(func=cmd_bench)
