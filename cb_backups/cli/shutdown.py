"""SIGTERM and SIGINT stop the CLI within seconds, with no child process left behind.

Inside a run Dagster owns the SIGINT/SIGTERM handlers: a signal during a step raises in the step (the
store code kills its pg_dump etc. on the way out), but a signal while Dagster itself waits is only
noted. So a watchdog thread learns of every signal through the wakeup fd and, if the run has not
ended GRACE_SECONDS later, kills this process's children, marks the run failed, frees its pool slots
and exits. Either way the command stops (KeyboardInterrupt: `interrupted`, exit 130).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from os import _exit as hard_exit  # documented os API: exit now, from a thread, without cleanup
from pathlib import Path
from typing import Any

from cb_backups.core import process

GRACE_SECONDS = 5.0
KILL_WAIT_SECONDS = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_children(wait: float = KILL_WAIT_SECONDS) -> None:
    """SIGTERM every descendant, then SIGKILL whatever is still there after `wait` seconds."""
    pids = children(os.getpid())
    _signal_all(pids, signal.SIGTERM)
    pause = threading.Event()
    for _ in range(int(wait / 0.05)):
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not pids:
            return
        pause.wait(0.05)  # give them a moment to exit cleanly
    _signal_all(pids, signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def fail_own_runs(instance: Any) -> list[str]:
    """Mark the in-progress runs of this process failed and free their slots."""
    import dagster as dg

    from cb_backups.defs import liveness

    mine = process.identity()
    records = instance.get_run_records(filters=dg.RunsFilter(
        statuses=liveness.IN_PROGRESS, tags={liveness.PID_TAG: mine[liveness.PID_TAG],
                                             liveness.HOST_TAG: mine[liveness.HOST_TAG]}))
    for record in records:
        instance.report_run_failed(record.dagster_run, "stopped by a signal (SIGTERM/SIGINT); marked failed")
        instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return [r.dagster_run.run_id for r in records]


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def guard(instance: Any) -> Iterator[None]:
    """Around one in-process run: stop within GRACE_SECONDS (+ KILL_WAIT_SECONDS) of SIGTERM or SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # default SIGTERM would skip all cleanup
    done, received = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if any(b in STOP_SIGNALS for b in data):
                received.set()
                if done.wait(GRACE_SECONDS):
                    return
                kill_children()
                failed = fail_own_runs(instance)
                sys.stderr.write(f"stopped: run {', '.join(failed) or '?'} marked failed, child processes "
                                 "killed\n")
                sys.stderr.flush()
                hard_exit(130)  # the main thread is stuck inside Dagster: leave without it

    watcher = threading.Thread(target=watch, name="cb-shutdown-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_term)
        writer.close()
        watcher.join(timeout=1)
        reader.close()
        if received.is_set():
            kill_children()
    if received.is_set():
        raise KeyboardInterrupt
