"""Data offsets for a custom-format dump that pg_dump wrote to a pipe.

pg_dump writes the table of contents first; on a seekable output it goes back at the end and fills in
where each table's data starts, on a pipe (ours: pg_dump | zstd) it cannot, so every entry says "position
not set". `pg_restore --jobs` then cannot order the tables largest first and each worker scans the file
for its blocks (measured: 10-20% slower than the same dump written with -f). `DataOffsets` walks the
block headers as the plain dump is written (the same pass that hashes and decompresses it) and `patch`
writes the offsets into the copy's TOC, as pg_dump itself would have. Only framing is read (headers,
lengths), never the data. Anything unexpected (another archive version, a truncated stream) turns the
optimisation off: the file is then restored as it is, exactly as before. pg_restore checks the block id
found at each offset, so a wrong offset fails the restore loudly; it cannot restore the wrong data.

Format: PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c (ReadHead, ReadToc) and pg_backup_custom.c.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_SUPPORTED = {(1, 14), (1, 15), (1, 16)}  # PostgreSQL 12..17's archive versions
_POS_NOT_SET, _POS_SET = 1, 2
_BLK_DATA, _BLK_BLOBS = 1, 3
_BLOCK, _CHUNK, _LO = 0, 1, 2  # what the next header is


class _NeedMore(Exception):
    """The header or TOC is not complete yet."""


class _Unsupported(Exception):
    """Not a stream we can walk: leave the file as pg_dump wrote it."""


class _Reader:
    def __init__(self, data: bytes | bytearray) -> None:
        self.data, self.pos, self.int_size = data, 0, 4

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _NeedMore
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _NeedMore
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos])

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def str(self) -> str | None:
        n = self.int()
        if n < 0:
            return None
        return self.take(n).decode(errors="replace")


@dataclass
class DataOffsets:
    """Fed the plain dump in order (`feed`); knows where each data block starts once the stream ended."""

    toc: dict[int, int] = field(default_factory=dict)  # dumpId -> file position of its offset flag
    blocks: dict[int, int] = field(default_factory=dict)  # dumpId -> file position of its data block
    failed: str | None = None
    toc_end: int = -1  # file position where the table of contents ends, once it was read (-1: not yet)
    _head: bytearray = field(default_factory=bytearray)
    _int: int = 4
    _off: int = 8
    _written: int = 0  # bytes fed so far
    _next: int = -1  # file position of the next block/chunk header (-1: still in the header/TOC)
    _mode: int = _BLOCK
    _in_blobs: bool = False
    _tail: bytes = b""  # the last 16 bytes fed, for a header split across two writes

    def feed(self, data: bytes | memoryview) -> None:
        if self.failed is not None or not data:
            return
        start = self._written
        self._written += len(data)
        try:
            if self._next < 0:
                self._head += data
                self._parse_head()  # walks what follows the TOC once it is complete
                return
            self._walk(data, start)
        except _Unsupported as exc:
            self.failed = str(exc) or "unsupported"
            self._head = bytearray()

    def _parse_head(self) -> None:
        reader = _Reader(self._head)
        try:
            if reader.take(5) != b"PGDMP":
                raise _Unsupported("not a custom-format dump")
            version = (reader.byte(), reader.byte())
            reader.byte()  # revision
            if version not in _SUPPORTED:
                raise _Unsupported(f"archive version {version}")
            reader.int_size = self._int = reader.byte()
            self._off = reader.byte()
            if reader.byte() != 1:  # archCustom
                raise _Unsupported("not the custom format")
            if version >= (1, 15):
                reader.byte()  # compression algorithm
            else:
                reader.int()  # compression level
            for _ in range(7):  # creation time
                reader.int()
            for _ in range(3):  # database name, server and pg_dump versions
                reader.str()
            toc: dict[int, int] = {}
            for _ in range(reader.int()):
                dump_id = reader.int()
                reader.int()  # hadDumper
                for _ in range(2):  # tableoid, oid
                    reader.str()
                reader.str()  # tag
                reader.str()  # desc
                reader.int()  # section
                for _ in range(6 if version >= (1, 14) else 5):  # defn, drop, copy, namespace, tablespace, am
                    reader.str()
                if version >= (1, 16):
                    reader.int()  # relkind
                reader.str()  # owner
                reader.str()  # "false" (WITH OIDS)
                while reader.str() is not None:  # dependencies
                    pass
                flag_at = reader.pos
                flag = reader.byte()
                reader.take(self._off)
                if flag == _POS_NOT_SET:
                    toc[dump_id] = flag_at
        except _NeedMore:
            if len(self._head) > 256 * 1024 * 1024:
                raise _Unsupported("table of contents larger than 256 MiB") from None
            return
        self.toc = toc
        self.toc_end = self._next = reader.pos
        rest = bytes(self._head[reader.pos:])
        self._head = bytearray()
        self._written = reader.pos
        self.feed(rest)

    def _walk(self, data: bytes | memoryview, start: int) -> None:
        """Step from header to header through what was fed; `start` is the file position of data[0]."""
        if self._next < start:  # a header began in the previous write: finish it from the kept tail
            joined = self._tail + bytes(data[:16])
            at = self._next - (start - len(self._tail))
            if not self._step(joined, at, len(joined)):
                self._tail = joined[-16:]
                return
        end = len(data)
        while self._next >= start and self._step(data, self._next - start, end):
            pass
        self._tail = bytes(data[-16:]) if len(data) >= 16 else (self._tail + bytes(data))[-16:]

    def _step(self, buf: bytes | memoryview, i: int, end: int) -> bool:
        """Read the header at buf[i]; False when it is not complete in `buf`."""
        size = 1 + self._int
        if self._mode == _BLOCK:
            if i + 1 + size > end:
                return False
            kind, dump_id = buf[i], _int(buf[i + 1:i + 1 + size], self._int)
            if kind not in (_BLK_DATA, _BLK_BLOBS) or dump_id in self.blocks:
                raise _Unsupported(f"unexpected block type {kind} at {self._next}")
            self.blocks[dump_id] = self._next
            self._in_blobs = kind == _BLK_BLOBS
            self._mode = _LO if self._in_blobs else _CHUNK
            self._next += 1 + size
            return True
        if i + size > end:
            return False
        value = _int(buf[i:i + size], self._int)
        if value < 0:
            raise _Unsupported(f"negative length at {self._next}")
        self._next += size
        if self._mode == _CHUNK:
            if value == 0:
                self._mode = _LO if self._in_blobs else _BLOCK
            else:
                self._next += value
        elif value == 0:  # _LO: the end of the large objects
            self._mode = _BLOCK
        else:
            self._mode = _CHUNK
        return True

    def finish(self) -> dict[int, int] | None:
        """{flag position: data offset} to patch, or None when the stream was not walked to its clean end."""
        if self.failed is None:
            if self._next != self._written or self._mode != _BLOCK:
                self.failed = "the stream did not end after a data block"
            elif set(self.blocks) != set(self.toc):
                self.failed = "data blocks do not match the table of contents"
        if self.failed is not None:
            return None
        return {self.toc[dump_id]: at for dump_id, at in self.blocks.items()}


def _int(raw: bytes | memoryview, size: int) -> int:
    value = int.from_bytes(bytes(raw[1:1 + size]), "little")
    return -value if raw[0] else value


def patch(fd: int, offsets: dict[int, int], off_size: int = 8) -> None:
    """Write 'position set' and each offset into the TOC of the open plain dump, as pg_dump does."""
    for flag_at, offset in offsets.items():
        os.pwrite(fd, bytes([_POS_SET]) + offset.to_bytes(off_size, "little"), flag_at)
