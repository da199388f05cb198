"""`cb-backups wal-receive`: pg_receivewal on a physical replication slot, every completed segment recorded.

pg_receivewal (the server's own, from the configured bin dir) writes into the archive's spool with
`--synchronous` (every write flushed and acknowledged: the slot and the RPO check see it at once) and
`--no-loop` (this loop restarts it, so the failure is logged, not hidden). Each completed segment is
compressed, fsynced, hashed and recorded (archive.record), then removed from the spool. A restart
resumes from the spool's `.partial` segment or, with none, from the slot's restart_lsn: the slot keeps
the server from recycling WAL not yet received, so a restart never leaves a gap.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cb_backups.core.errors import StoreUnavailable
from cb_backups.stores.pitr.archive import Segment, WalArchive
from cb_backups.stores.pitr.server import PitrError, Server, first_line

APPLICATION_NAME = "cb-wal-receive"
POLL_SECONDS = 1.0
RESTART_SECONDS = (1, 2, 5, 10, 30)  # back-off between restarts of a pg_receivewal that exited


@dataclass(frozen=True)
class ServerFacts:
    version: int
    wal_level: str
    seg_size: int
    timeline: int


def preflight(server: Server) -> ServerFacts:
    """What pg_receivewal needs, each missing one a clear line (PitrError, exit 1)."""
    with server.connect() as conn:
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        level = str(conn.execute("SHOW wal_level").fetchone()[0])  # type: ignore[index]
        seg_size = int(conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'wal_segment_size'")
                       .fetchone()[0])  # type: ignore[index]
        role = conn.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()
        senders = int(conn.execute("SHOW max_wal_senders").fetchone()[0])  # type: ignore[index]
        used = int(conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0])  # type: ignore[index]
        timeline = int(conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0])  # type: ignore[index]
    where = f"{server.pg.host}:{server.pg.port}"
    if level not in ("replica", "logical"):
        raise PitrError(f"{where} runs with wal_level={level}: WAL archiving needs wal_level=replica (or logical); "
                        "set it in postgresql.conf and restart the server")
    if not role or not (role[0] or role[1]):
        raise PitrError(f"role {server.pg.user!r} on {where} may not stream WAL: grant it with "
                        f"ALTER ROLE {server.pg.user} REPLICATION (and a `replication` line in pg_hba.conf)")
    if used >= senders:
        raise PitrError(f"{where} has no free WAL sender: max_wal_senders={senders} and {used} in use; raise "
                        "max_wal_senders (restart needed)")
    return ServerFacts(version, level, seg_size, timeline)


def ensure_slot(server: Server) -> bool:
    """Create the physical slot, reserving WAL from now, if missing; True when it was created."""
    slot = server.pitr.slot
    with server.connect() as conn:
        row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is not None:
            if row[0] != "physical":
                raise PitrError(f"replication slot {slot!r} exists but is {row[0]}; pg_receivewal needs a physical "
                                "slot: set postgres_wal.slot to another name")
            return False
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    return True


class Receiver:
    def __init__(self, server: Server, archive: WalArchive, log: Callable[[str], None] = print) -> None:
        self.server, self.archive, self.log = server, archive, log
        self.stop = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.recorded: list[Segment] = []

    def argv(self) -> list[str]:
        return [self.server.tool("pg_receivewal"), "-D", str(self.archive.spool), f"--slot={self.server.pitr.slot}",
                "--synchronous", "--no-loop", "--no-password", "--status-interval=10", "--verbose"]

    def collect(self) -> list[Segment]:
        """Record every completed WAL file in the spool, then remove it there."""
        done = []
        for path in self.archive.completed_in_spool():
            segment = self.archive.record(path)
            path.unlink()
            done.append(segment)
            self.log(f"archived {segment.name} ({segment.raw_bytes} bytes, {segment.bytes} stored, "
                     f"sha256 {segment.sha256[:12]}…)")
        self.recorded += done
        return done

    def drop_unpadded_partial(self) -> None:
        """Remove a `.partial` that pg_receivewal was killed while creating (shorter than a segment, not empty).

        pg_receivewal pads a new segment file to its full size before writing any WAL into it, and refuses to
        resume with one of another size ("has N bytes, should be 0 or 16777216"), for ever. Such a file holds
        nothing received: the slot still holds that WAL on the server, so the next run receives it again."""
        for path in self.archive.spool.glob("*.partial") if self.archive.spool.is_dir() else []:
            size = path.stat().st_size
            if size not in (0, self.archive.seg_size):
                path.unlink()
                self.log(f"removed {path.name} ({size} bytes, not padded to a segment: pg_receivewal was killed "
                         "while creating it); its WAL is received again from the slot")

    def start(self) -> ServerFacts:
        """Preflight, slot, spool; then the first pg_receivewal."""
        facts = preflight(self.server)
        self.archive.seg_size = facts.seg_size
        if ensure_slot(self.server):
            self.log(f"created physical replication slot {self.server.pitr.slot!r}")
        self.archive.prepare()
        self.collect()  # left by a receiver that was killed
        return facts

    def run(self) -> int:
        """Receive until `stop` is set (SIGTERM/SIGINT in the command); 0 after a clean stop."""
        self.start()
        attempt = 0
        while not self.stop.is_set():
            self.drop_unpadded_partial()
            env = self.server.env()
            env["PGAPPNAME"] = APPLICATION_NAME
            try:
                self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                             start_new_session=True)
            except FileNotFoundError:
                raise PitrError(f"pg_receivewal not found at {self.argv()[0]} (set CB_PG_BIN_DIR to the server's "
                                "bin folder)") from None
            stderr = _drain(self.proc)
            while self.proc.poll() is None and not self.stop.is_set():
                self.archive.beat()
                self.collect()
                self.stop.wait(POLL_SECONDS)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # pg_receivewal flushes and exits cleanly on SIGINT
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.collect()
            if self.stop.is_set():
                break
            # The cause is usually the line before the final "error: disconnected": keep the last three.
            lines = [ln for ln in stderr() if any(w in ln.lower() for w in ("error", "fatal", "could not", "warning"))]
            self.log(f"pg_receivewal exited {self.proc.returncode}: {' | '.join(lines[-3:]) or 'no error printed'}")
            try:
                preflight(self.server)  # a changed server setting ends the service with its clear line
            except StoreUnavailable as exc:
                self.log(first_line(exc))
            self.stop.wait(RESTART_SECONDS[min(attempt, len(RESTART_SECONDS) - 1)])
            attempt += 1
        return 0


def _drain(proc: subprocess.Popen[bytes]) -> Callable[[], list[str]]:
    """Read pg_receivewal's stderr in a thread (a full pipe would block it); return the lines so far."""
    lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip())
            del lines[:-50]

    threading.Thread(target=pump, daemon=True).start()
    return lambda: list(lines)
