"""A real `dagster-daemon run` on the test instance, and a bounded wait on what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def dagster_daemon(log: Path, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon for `cb_backups.definitions` (DefaultRunLauncher: each run its own process), its output
    in `log`; stopped with its whole process group (code server and run processes) afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-m", "cb_backups.definitions"],
                                   cwd=ROOT, env=dict(os.environ if env is None else env), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_until(what: str, condition: Callable[[], Any], log: Path, timeout: float) -> Any:
    """Poll `condition` until it is truthy (returned); on timeout fail with the daemon log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)  # polling interval of the wait, not a synchronisation
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; daemon log tail:\n{tail}")
