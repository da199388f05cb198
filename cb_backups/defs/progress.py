"""The one adapter from the core's `Progress` callbacks to Dagster's run log.

Step messages (no total: "stopping valkey", "pg_restore into ...") are logged as they come;
byte and item counters at most once every `every` seconds, and when they reach their total, with
the amount done, the rate and the time left ("12.0 MiB of 48.0 MiB (25%), 3.1 MiB/s, 12s left").
Every call also goes to `LISTENERS` (the CLI's terminal progress bar, when it runs the job in its own
process). Safe to call from several threads (full system backups run one thread per store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import dagster as dg

from cb_backups.core.model import Progress

EVERY_SECONDS = 5.0
BYTES_FROM = 64 * 1024  # a total this large is a byte count; smaller ones count items (indices, collections)

RunContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext

# Extra sinks for every adapter's calls, read at each call (the CLI appends its terminal bar for a run).
LISTENERS: list[Progress] = []


def is_bytes(done: int, total: int | None) -> bool:
    return (total if total is not None else done) >= BYTES_FROM


def amount(value: float, as_bytes: bool) -> str:
    if not as_bytes:
        return f"{int(value):,}"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rate_text(done: int, total: int | None, elapsed: float) -> str:
    """"12.0 MiB of 48.0 MiB (25%), 3.1 MiB/s, 12s left" (without a total: the amount and the rate)."""
    as_bytes = is_bytes(done, total)
    parts = [amount(done, as_bytes) + ("" if total is None else f" of {amount(total, as_bytes)}"
                                       + (f" ({100 * done // total}%)" if total else ""))]
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        parts.append(f"{amount(rate, as_bytes)}/s" if as_bytes else f"{rate:.1f}/s")
        if total is not None and total > done:
            parts.append(f"{duration((total - done) / rate)} left")
    return ", ".join(parts)


class Meter:
    """Rate and time left for one counter: restarts whenever the total changes (a new file, a new phase)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.started = time.monotonic()
        self.last_done = 0

    def text(self, done: int, total: int | None) -> str:
        now = time.monotonic()
        if total != self.total or done < self.last_done:
            self.total, self.started = total, now
        self.last_done = done
        return rate_text(done, total, now - self.started)


def dagster_progress(context: RunContext, every: float = EVERY_SECONDS, *, prefix: str = "",
                     listeners: Sequence[Progress] = (), lock: threading.Lock | None = None) -> Progress:
    """Progress into `context.log`. `prefix` names the source ("postgres: ..."); `listeners` get every
    call (read at each call, so a list may change meanwhile); `lock` is shared by adapters logging together."""
    lock = lock or threading.Lock()
    last = [0.0]
    meter = Meter()

    def report(message: str, done: int, total: int | None) -> None:
        if prefix and not message.startswith(prefix):
            message = f"{prefix}: {message}"
        with lock:
            for listener in [*listeners, *LISTENERS]:
                listener(message, done, total)
            now = time.monotonic()
            step = total is None and done == 0
            counted = "" if step else meter.text(done, total)
            if step or now - last[0] >= every or (total is not None and done >= total):
                last[0] = now
                context.log.info(f"{message} [{counted}]" if counted else message)

    return report


def per_store_progress(context: RunContext, every: float = EVERY_SECONDS) -> Callable[[str], Progress]:
    """One adapter per store, each throttled on its own, named by its store, logging one at a time."""
    lock = threading.Lock()

    def for_store(name: str) -> Progress:
        return dagster_progress(context, every, prefix=name, lock=lock)

    return for_store
