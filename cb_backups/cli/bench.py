"""`cb-backups bench`: the benchmarks (same code as `python -m benchmarks`).

`benchmarks/` is not in the wheel: it lives in the source checkout beside `cb_backups/`, so the command
works from a checkout (editable install) and says so in one line everywhere else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from cb_backups.cli.args import Subcommands
from cb_backups.core.errors import ConfigError

CHECKOUT = Path(__file__).resolve().parents[2]  # in a source checkout: the folder holding cb_backups/ and benchmarks/


def benchmarks_main() -> ModuleType | None:
    """`benchmarks.__main__`, from the path or from the checkout beside this package; None when neither has it."""
    try:
        import benchmarks.__main__ as found
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks" or not (CHECKOUT / "benchmarks" / "__main__.py").is_file():
            return None
        # The `cb-backups` script's sys.path holds its own bin folder, not the checkout: add the checkout.
        sys.path.insert(0, str(CHECKOUT))
        import benchmarks.__main__ as found
    return found


def register(sub: Subcommands) -> None:
    bench = sub.add_parser("bench", help="benchmarks against the raw tools (pg_dump, pg_restore, boto3, sha256sum)")
    found = benchmarks_main()
    if found is None:
        bench.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        found.build_parser(bench)
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = benchmarks_main()
    if found is None:
        raise ConfigError("bench location", str(CHECKOUT), "a source checkout of cb-backups, with benchmarks/ beside "
                          "cb_backups/ (the wheel ships cb_backups only)")
    return int(found.run_benchmarks(args.size, args.quick, args.repeat, args.json_path, args.only))
