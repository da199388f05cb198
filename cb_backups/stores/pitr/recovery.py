"""A data directory recovered to a point: base backup extracted, WAL staged, recovery target set, started.

The WAL the recovery needs is decompressed (both sha256 checked) into a folder beside the data directory
before the server starts; `restore_command` copies from there. The recovery settings go in
postgresql.auto.conf between two marker lines, removed again before an in-place swap; the port and
sockets are given on pg_ctl's command line, never written into the recovered configuration.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cb_backups.core.errors import RestoreFailed
from cb_backups.core.fileio import private_dir
from cb_backups.core.model import Artifact
from cb_backups.core.net import free_port
from cb_backups.stores.pitr import basebackup
from cb_backups.stores.pitr.archive import Segment, WalArchive
from cb_backups.stores.pitr.server import STORE, Server, first_line, quote
from cb_backups.stores.pitr.wal import PARTIAL_SUFFIX

BEGIN, END = "# cb-backups point-in-time recovery: begin", "# cb-backups point-in-time recovery: end"


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str  # "latest" | "time" | "lsn"
    time: datetime | None = None
    lsn: str | None = None

    def describe(self) -> str:
        if self.kind == "time":
            assert self.time is not None
            return f"time {self.time.isoformat()}"
        return f"LSN {self.lsn}" if self.kind == "lsn" else "the end of the archived WAL (latest)"

    def settings(self) -> dict[str, str]:
        if self.kind == "time":
            assert self.time is not None
            return {"recovery_target_time": self.time.isoformat(), "recovery_target_action": "promote"}
        if self.kind == "lsn":
            assert self.lsn is not None
            return {"recovery_target_lsn": self.lsn, "recovery_target_action": "promote"}
        return {}


@dataclass
class Recovered:
    data_dir: Path
    wal_dir: Path
    port: int
    socket_dir: Path
    log: Path
    point: dict[str, Any]


def prepare(server: Server, base: Artifact, archive: WalArchive, segments: list[Segment], partial: Path | None,
            target: RecoveryTarget, workdir: Path) -> tuple[Path, Path]:
    """`workdir/data` (the base, recovery settings) and `workdir/wal` (every needed WAL file, checked)."""
    data, wal = workdir / "data", private_dir(workdir / "wal")
    basebackup.extract(base, data)
    for segment in [*archive.histories(), *segments]:
        archive.extract(segment, wal)
    if partial is not None:
        # The newest WAL received, still being written: a snapshot of it (no record yet to check it against).
        shutil.copyfile(partial, wal / partial.name.removesuffix(PARTIAL_SUFFIX))
    lines = [BEGIN, f"restore_command = {quote(f'cp {_sh(str(wal))}/%f %p')}",
             *(f"{k} = {quote(v)}" for k, v in target.settings().items()), "archive_mode = off", END]
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write("\n" + "\n".join(lines) + "\n")
    (data / "recovery.signal").touch(mode=0o600)
    for stale in ("postmaster.pid", "standby.signal"):
        (data / stale).unlink(missing_ok=True)
    return data, wal


def _sh(path: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./:+-]+", path):
        raise RestoreFailed(STORE, f"the recovery folder {path!r} has characters restore_command cannot quote")
    return path


def start(server: Server, data: Path, wal: Path, workdir: Path, timeout: float = 600) -> Recovered:
    """Start a temporary server on a free loopback port; wait until it has promoted; read the recovery point."""
    sock = private_dir(workdir / "sock")
    log = workdir / "postgres.log"
    server.give(workdir)
    port = free_port()
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    done = server.pg_ctl(data, "start", log=log, options=options, timeout=int(timeout))
    if done.returncode != 0:
        why = _tail(log) if log.exists() else (done.stderr or done.stdout).strip()[-300:]
        raise RestoreFailed(STORE, f"the recovered server did not start: {why}")
    deadline = time.monotonic() + timeout
    while True:
        if not (data / "postmaster.pid").exists():
            raise RestoreFailed(STORE, f"the recovered server stopped during recovery: {_tail(log)}")
        try:
            with server.connect("127.0.0.1", port) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                    point = recovery_point(conn)
                    break
        except Exception as exc:  # still starting: the deadline below decides
            last = first_line(exc)
        else:
            last = "still in recovery"
        if time.monotonic() > deadline:
            raise RestoreFailed(STORE, f"the recovered server did not finish recovery in {timeout:.0f}s ({last}): "
                                       f"{_tail(log)}")
        time.sleep(0.05)  # polling the server's state (a cheap query), not synchronising with our own code
    return Recovered(data, wal, port, sock, log, point)


def recovery_point(conn: Any) -> dict[str, Any]:
    lsn, ts = conn.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").fetchone()
    timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    return {"lsn": lsn, "last_transaction_at": ts.isoformat() if ts else None, "timeline": int(timeline)}


def strip_recovery_settings(data: Path) -> None:
    """Remove our block from postgresql.auto.conf (the recovered server runs on without it)."""
    conf = data / "postgresql.auto.conf"
    text = conf.read_text()
    if BEGIN in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        conf.write_text(head.rstrip("\n") + "\n" + tail.lstrip("\n"))


def stop(server: Server, data: Path) -> None:
    if (data / "postmaster.pid").exists():
        done = server.pg_ctl(data, "stop")
        if done.returncode != 0:
            raise RestoreFailed(STORE, f"pg_ctl stop {data} failed: {done.stderr.strip()[-300:]}")


def _tail(log: Path, lines: int = 3) -> str:
    try:
        found = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"(no log at {log})"
    important = [ln for ln in found if "FATAL" in ln or "PANIC" in ln] or found
    return " | ".join(important[-lines:])
