"""`cb-backups`: the command line. Exit codes: 0 ok, 1 a check or run failed, 2 bad input.

Each command is one module with `register(sub)`, listed once in COMMANDS. What the commands share
lives below this module (args, output, runs), so no command imports it and there is no cycle.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from rich.markup import escape

from cb_backups.cli import backup, bench, demo, doctor, keys, listing, offsite, prune, report, restore, status, verify
from cb_backups.cli import wal as wal_receive
from cb_backups.cli.output import err_console
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.fileio import disk_full_of

# The commands, in the order `cb-backups --help` lists them. Adding one: its module, and one line here.
COMMANDS: tuple[ModuleType, ...] = (
    demo,
    status,
    backup,
    verify,
    listing,  # `list`
    doctor,
    restore,
    offsite,  # `offsite` and `offsite-verify`
    prune,
    report,
    bench,
    keys,  # `keys generate|show`: age encryption keys
    wal_receive,  # `wal-receive`: PostgreSQL's continuous WAL archive (point-in-time recovery)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cb-backups", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command != "demo":  # the demo configures its own servers
            from cb_backups.config.settings import load_settings

            load_settings()  # bad settings are bad input (exit 2) before any command starts
        return int(args.func(args))
    except CbBackupsError as exc:
        err_console.print("[red]error:[/] " + escape(str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # a full disk anywhere (DAGSTER_HOME's SQLite too) is one line, not a traceback
        full = disk_full_of(exc)
        if full is None:
            raise
        err_console.print("[red]error:[/] " + escape(str(full)))
        return full.exit_code


if __name__ == "__main__":
    sys.exit(main())
