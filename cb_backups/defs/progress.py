"""The one adapter from the core's `Progress` callbacks to Dagster's run log.

Step messages (no total: "stopping valkey", "pg_restore into ...") are logged as they come;
byte and item counters at most once every `every` seconds, and when they reach their total.
Safe to call from several threads (full system backups run one thread per store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import dagster as dg

from cb_backups.core.model import Progress

EVERY_SECONDS = 5.0

RunContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext


def dagster_progress(context: RunContext, every: float = EVERY_SECONDS, *, prefix: str = "",
                     listeners: Sequence[Progress] = (), lock: threading.Lock | None = None) -> Progress:
    """Progress into `context.log`. `prefix` names the source ("postgres: ..."); `listeners` get every
    call (read at each call, so a list may change meanwhile); `lock` is shared by adapters logging together."""
    lock = lock or threading.Lock()
    last = [0.0]

    def report(message: str, done: int, total: int | None) -> None:
        if prefix and not message.startswith(prefix):
            message = f"{prefix}: {message}"
        with lock:
            for listener in listeners:
                listener(message, done, total)
            now = time.monotonic()
            step = total is None and done == 0
            if step or now - last[0] >= every or (total is not None and done >= total):
                last[0] = now
                context.log.info(message)

    return report


def per_store_progress(context: RunContext, every: float = EVERY_SECONDS) -> Callable[[str], Progress]:
    """One adapter per store, each throttled on its own, named by its store, logging one at a time."""
    lock = threading.Lock()

    def for_store(name: str) -> Progress:
        return dagster_progress(context, every, prefix=name, lock=lock)

    return for_store
