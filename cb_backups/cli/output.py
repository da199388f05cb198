"""The CLI's two consoles, its JSON output, tables that fit 80 columns, the check table, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Column, Table
from rich.text import Text

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Columns whose values are never cut or folded (slot keys, counts, sizes): the others wrap.
WHOLE = frozenset({"store", "slot", "bytes", "slots", "verified", "failed", "missed", "check", "age", "RPO",
                   "action", "where", "captured_at"})


def print_json(document: Any) -> None:
    """One JSON document on stdout (plain print: rich would wrap long strings at the terminal width)."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def note(text: str, as_json: bool = False) -> None:
    """A side remark: on stdout for people, on stderr when stdout carries JSON."""
    (err_console if as_json else console).print(text)


def table(title: str, columns: Iterable[str]) -> Table:
    """A table whose cells wrap (overflow fold) instead of ending in an ellipsis; see keep_whole."""
    out = Table(title=title)
    for name in columns:
        out.add_column(name, overflow="fold")
    return out


def keep_whole(out: Table, names: Iterable[str] = WHOLE) -> Table:
    """Never break the named columns' values: each gets the width of its widest word (slot keys,
    counts), so at 80 columns the other columns (paths, descriptions) are the ones that wrap."""
    wanted = set(names)
    for column in out.columns:
        if str(column.header) not in wanted:
            continue
        widths = [max((len(w) for w in Text.from_markup(c).plain.split()), default=0)
                  for c in column.cells if isinstance(c, str)]
        column.min_width = max([len(str(column.header)), *widths])
    return out


def short_path(path: object, limit: int = 40) -> str:
    """A path abbreviated from the left (`…/postgres/2026-11-24-06:00`): its end is the part that differs."""
    text = str(path)
    if len(text) <= limit:
        return text
    parts = text.split("/")
    kept: list[str] = []
    while parts and len("/".join([parts[-1], *kept])) + 2 <= limit:
        kept.insert(0, parts.pop())
    return "…/" + "/".join(kept) if kept else "…" + text[-(limit - 1):]


def check_table(title: str, rows: Sequence[tuple[str, str, bool, str]]) -> Table:
    """One row per check: (store, slot, passed, text)."""
    out = table(title, ("store", "slot", "check", "result"))
    for store, slot, passed, text in rows:
        out.add_row(store, slot, "[green]pass[/]" if passed else "[red]FAIL[/]", escape(text))
    return keep_whole(out, ("store", "slot"))


def check_rows_json(rows: Sequence[tuple[str, str, bool, str]]) -> list[dict[str, Any]]:
    """The check table's rows as JSON objects: {store, slot, check, passed, description}."""
    out = []
    for store, slot, passed, text in rows:
        name, _, description = text.partition(": ")
        out.append({"store": store, "slot": slot, "check": name, "passed": bool(passed), "description": description})
    return out


def print_run_failures(prefix: str, result: Any) -> None:
    """Each failed step of a run as one line, with the run id: the stack traces stay in that run's log."""
    from cb_backups.cli.runs import failure_messages

    messages = failure_messages(result) or ([] if result.success else ["the run failed"])
    for message in messages:
        text = " ".join(message.split())  # a multi-line error stays one line
        err_console.print(f"[red]{escape(prefix + text)}[/] (Dagster run {result.run_id} has the details)")


class _AmountColumn(ProgressColumn):
    """done of total, in bytes (KiB/MiB/GiB) or items as the counter is (defs.progress.is_bytes)."""

    def render(self, task: Task) -> Text:
        from cb_backups.defs.progress import amount, is_bytes

        done, total = int(task.completed), None if task.total is None else int(task.total)
        as_bytes = is_bytes(done, total)
        return Text(amount(done, as_bytes) + ("" if total is None else f"/{amount(total, as_bytes)}"))


class _RateColumn(ProgressColumn):
    """The rate (bytes/s or items/s) and the time left; nothing while a step has no counter."""

    def render(self, task: Task) -> Text:
        from cb_backups.defs.progress import amount, duration, is_bytes

        speed = task.finished_speed or task.speed
        if not speed or not task.completed:
            return Text("")
        total = None if task.total is None else int(task.total)
        as_bytes = is_bytes(int(task.completed), total)
        text = f"{amount(speed, as_bytes)}/s" if as_bytes else f"{speed:.1f}/s"
        if total is not None and total > task.completed:
            text += f", {duration((total - task.completed) / speed)} left"
        return Text(text)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """While the block runs a job in this process, draw its byte/item progress (rate and time left)
    in the terminal: one bar per store (full system backups run the stores side by side). Drawn only
    on a terminal and when `enabled` (never into --json output); transient: gone when done."""
    from cb_backups.core.specs import STORE_NAMES
    from cb_backups.defs import progress

    show = enabled and sys.stdout.isatty()
    # the figures never wrap; the description takes what is left of the width (80 columns: ~25) and ends in …
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}", table_column=Column(
                        ratio=1, no_wrap=True, overflow="ellipsis", min_width=12)),
                    BarColumn(bar_width=12), _AmountColumn(table_column=Column(no_wrap=True)),
                    _RateColumn(table_column=Column(no_wrap=True)), console=console, transient=True,
                    disable=not show, speed_estimate_period=10, expand=True)
    tasks: dict[str, TaskID] = {}

    def listener(message: str, done: int, total: int | None) -> None:
        first = message.split(":", 1)[0].split(" ", 1)[0]
        source = first if first in STORE_NAMES else ""
        if source not in tasks:
            tasks[source] = bars.add_task("", total=None)
        task = tasks[source]
        if bars.tasks[task].total != total and total is not None:
            bars.reset(task, total=total)  # a new counter: its rate starts again
        bars.update(task, description=escape(message[:60]), completed=done, total=total)

    with bars:
        progress.LISTENERS.append(listener)
        try:
            yield
        finally:
            progress.LISTENERS.remove(listener)
