"""Small helpers for launching local servers (demo and tests): free ports, waiting, port races."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from cb_backups.core.errors import CbBackupsError

T = TypeVar("T")
PORT_ATTEMPTS = 3


class PortInUse(CbBackupsError):
    """A server could not listen on its port because another process already does."""

    exit_code = 2

    def __init__(self, server: str, port: int, log: Path) -> None:
        super().__init__(f"{server} cannot listen on 127.0.0.1:{port}: the address is already in use "
                         f"(choose another port, or 0 for a free one; log: {log})")
        self.port = port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_size(log: Path) -> int:
    """Where the next start attempt's lines begin (server logs are appended to)."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def address_in_use(log: Path, since: int) -> bool:
    """Whether the log, from byte `since` on, says the server's bind failed on a taken address."""
    try:
        with open(log, "rb") as fh:
            fh.seek(since)
            return b"address already in use" in fh.read().lower()
    except FileNotFoundError:
        return False


def start_on_port(attempt: Callable[[], T], auto_port: bool, new_port: Callable[[int], None]) -> T:
    """Run `attempt`; when it raises PortInUse on a port chosen automatically, take a new one and try again.

    free_port() closes its socket before the server binds, so another process (a parallel test worker) can
    take the port in between. An explicit port is the user's choice and fails at once instead of moving.
    """
    retrying = Retrying(stop=stop_after_attempt(PORT_ATTEMPTS if auto_port else 1),
                        retry=retry_if_exception_type(PortInUse), reraise=True,
                        before_sleep=lambda _state: new_port(free_port()))
    return retrying(attempt)


def wait_until(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s" + (f": {last}" if last else ""))
