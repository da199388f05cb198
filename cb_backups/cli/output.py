"""The CLI's two consoles and the check table every command that runs checks prints."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
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
