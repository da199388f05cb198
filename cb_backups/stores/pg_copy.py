"""Load a dump's table data over several connections at once.

`pg_restore --jobs N` restores different tables at once, but each table over one connection, so a
database whose data sits in one large table (coding-brain's `memories`) loads on one server backend,
which spends its core parsing the rows. Here pg_restore still reads the archive, but writes the table
data as SQL text (`-f -`); each COPY block is cut at row ends (text COPY has one row per line: a newline
inside a value is escaped) and dealt, about a MiB at a time, round-robin to N connections running the
same COPY. The SET lines pg_restore writes before the data (encoding, search path, row security) run on
every connection first; a sequence's value (`SELECT pg_catalog.setval(...)`, one line) runs on one.
Anything else in that text is refused: this path takes only dumps whose data section is table data and
sequence values (`data_listing`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import IO, Any

import psycopg

READ = 1 << 20  # bytes of pg_restore's output read (and dealt to one connection) at a time
_END = b"\\."  # the line that ends a text COPY block (a value's backslash is escaped, so it cannot be data)
_SESSION = (b"SET ", b"SELECT pg_catalog.set_config(")
_SEQUENCE = b"SELECT pg_catalog.setval("
# pg_restore >= 16.10 fences its script with psql meta-commands against injected ones; nothing here runs
# meta-commands, so they are skipped
_META = (b"\\restrict ", b"\\unrestrict ")
_BLOB_TYPES = ("BLOB", "LARGE OBJECT")


class CopyFailed(Exception):
    """The parallel load stopped: the server refused a row, or pg_restore wrote something unexpected."""


def data_listing(listing: str) -> list[str] | None:
    """`pg_restore --list` of a dump -> its TABLE DATA and SEQUENCE SET lines (a `pg_restore -L` list of
    what this path loads), or None when the data section holds what it does not load (large objects)."""
    data = []
    for line in listing.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        if any(kind in line for kind in _BLOB_TYPES):
            return None
        if " TABLE DATA " in line or " SEQUENCE SET " in line:
            data.append(line)
    return data


class _Worker(threading.Thread):
    """One connection: runs the SET lines and COPY blocks it is handed, in order."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        super().__init__(daemon=True)
        self.connect = connect
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue(4)  # bounded: memory stays a few MiB each
        self.error: BaseException | None = None
        self.stopped = False

    def _next(self) -> tuple[str, Any]:
        item = self.items.get()
        self.stopped = item[0] == "stop"
        return item

    def run(self) -> None:
        try:
            with self.connect() as conn:
                self._serve(conn)
        except BaseException as exc:  # the dispatcher reports it and stops the load
            self.error = exc
            while not self.stopped:  # keep draining so the dispatcher never blocks on a full queue
                self._next()

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        while True:
            kind, value = self._next()
            if kind == "stop":
                return
            if kind == "sql":
                conn.execute(value)
                continue
            with conn.cursor() as cur, cur.copy(value) as copy:  # kind == "copy": rows follow until "end"
                while (item := self._next())[0] == "rows":
                    copy.write(item[1])
                if item[0] == "stop":
                    raise CopyFailed("the load stopped inside a COPY block")


class ParallelCopy:
    """Reads pg_restore's data text from `stream` and COPYs its rows over `jobs` connections."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], jobs: int) -> None:
        self.workers = [_Worker(connect) for _ in range(max(1, jobs))]
        self.tables = 0
        self.bytes = 0

    def run(self, stream: IO[bytes]) -> None:
        """Load everything; CopyFailed names the first problem (the server's own message for a bad row)."""
        for worker in self.workers:
            worker.start()
        try:
            self._dispatch(stream)
        finally:
            for worker in self.workers:
                worker.items.put(("stop", None))
            for worker in self.workers:
                worker.join()
        self._raise_first()

    def _raise_first(self) -> None:
        for worker in self.workers:
            if worker.error is not None:
                exc = worker.error
                message = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
                raise CopyFailed(message.strip().splitlines()[0] if message.strip() else type(exc).__name__)

    def _broadcast(self, kind: str, value: Any) -> None:
        for worker in self.workers:
            worker.items.put((kind, value))

    def _dispatch(self, stream: IO[bytes]) -> None:
        buf, inside, turn = b"", False, 0
        while True:
            if any(worker.error is not None for worker in self.workers):
                return  # run() raises it
            block = stream.read(READ)
            buf += block
            while True:  # consume what is complete in buf
                if inside:
                    if buf.startswith(_END + b"\n"):
                        rows, buf, ended = b"", buf[3:], True
                    elif (at := buf.find(b"\n" + _END + b"\n")) >= 0:
                        rows, buf, ended = buf[:at + 1], buf[at + 4:], True
                    else:
                        cut = buf.rfind(b"\n") + 1
                        rows, buf, ended = buf[:cut], buf[cut:], False
                    if rows:
                        self.workers[turn].items.put(("rows", rows))
                        turn = (turn + 1) % len(self.workers)
                        self.bytes += len(rows)
                    if not ended:
                        break
                    self._broadcast("end", None)
                    inside = False
                    continue
                at = buf.find(b"\n")
                if at < 0:
                    break
                line, buf = buf[:at], buf[at + 1:]
                if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
                    self._broadcast("copy", line[:-len(b" FROM stdin;")].decode() + " FROM STDIN")
                    self.tables += 1
                    inside = True
                elif line.startswith(_SESSION):
                    self._broadcast("sql", line.decode())
                elif line.startswith(_SEQUENCE) and line.endswith(b");"):
                    self.workers[0].items.put(("sql", line.decode()))
                elif line.strip() and not line.startswith((b"--", *_META)):
                    raise CopyFailed(f"unexpected line in pg_restore's data output: {line[:80]!r}")
            if not block:
                if inside or buf.strip():
                    raise CopyFailed("pg_restore's data output ended inside a COPY block")
                return
