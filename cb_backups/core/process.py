"""Which process is this, and is that one still running? (Linux /proc, else `kill -0`.)

A run or an in-place restore records `identity()`; a later process calls `gone(recorded)` to learn
whether the recorder died (SIGKILL, OOM, reboot), so what it held can be freed or put back.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST, BOOT, PID, START = "cb/host", "cb/boot", "cb/pid", "cb/pid_start"


def boot_id() -> str:
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.exists() else ""


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if no such process or only its zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
    # A SIGKILLed run worker stays a zombie until its parent (e.g. the daemon's code server) reaps it.
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22


def start_epoch(pid: int) -> float | None:
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def pid_exists(pid: int) -> bool:
    if Path("/proc").is_dir():
        return start_ticks(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity(pid: int | None = None) -> dict[str, str]:
    """What lets a later process tell whether this one still runs (host, boot id, pid, pid start time)."""
    pid = pid or os.getpid()
    found = {HOST: socket.gethostname(), PID: str(pid)}
    if (boot := boot_id()):
        found[BOOT] = boot
    if (ticks := start_ticks(pid)) is not None:
        found[START] = str(ticks)
    return found


def gone(recorded: dict[str, str]) -> str | None:
    """Why the process `recorded` by `identity()` is gone ("pid N gone"); None while it runs, or when it ran on
    another host (its own process table: not judged here)."""
    if recorded.get(HOST) != socket.gethostname() or not str(recorded.get(PID, "")).isdigit():
        return None
    pid = int(recorded[PID])
    if recorded.get(BOOT) and recorded[BOOT] != boot_id():
        return f"pid {pid} gone: the host restarted"
    if not pid_exists(pid):
        return f"pid {pid} gone"
    ticks = start_ticks(pid)
    if recorded.get(START) and ticks is not None and str(ticks) != recorded[START]:
        return f"pid {pid} gone; the number now belongs to another process"
    return None
