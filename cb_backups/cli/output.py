"""The CLI's two consoles and the check table every command that runs checks prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def check_table(title: str, rows: Sequence[tuple[str, str, bool, str]]) -> Table:
    """One row per check: (store, slot, passed, text)."""
    table = Table(title=title)
    for col in ("store", "slot", "check", "result"):
        table.add_column(col)
    for store, slot, passed, text in rows:
        table.add_row(store, slot, "[green]pass[/]" if passed else "[red]FAIL[/]", text)
    return table


def print_run_failures(prefix: str, result: Any) -> None:
    """Each failed step of a run as one line, with the run id: the stack traces stay in that run's log."""
    from cb_backups.cli.runs import failure_messages

    messages = failure_messages(result) or ([] if result.success else ["the run failed"])
    for message in messages:
        text = " ".join(message.split())  # a multi-line error stays one line
        err_console.print(f"[red]{escape(prefix + text)}[/] (Dagster run {result.run_id} has the details)")
