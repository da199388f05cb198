"""The WAL archive: `<backup_dir>/postgres_wal/`, one compressed file and one record per completed segment.

Layout::

    postgres_wal/.spool/                   pg_receivewal's own directory (the current `.partial` segment)
    postgres_wal/segments/<name>.zst       a completed segment (or a timeline history file), zstd, 0600
                                           (`<name>.zst.age` when postgres is encrypted: age over the zstd)
    postgres_wal/segments/<name>.json      its record, written after the data: sha256 of both forms, when
                                           it completed; a segment without a record does not exist
    postgres_wal/receiver.heartbeat        touched by a running receiver (its last sign of life)
    postgres_wal/offsite/<name>.json       the segment's verified off-site copy (offsite/wal.py)

Both files are written under a temporary name, fsynced and renamed, and the folder fsynced, so a killed
receiver leaves a segment either recorded or still in the spool (recorded on the next start).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO

import zstandard

from cb_backups.core import crypto
from cb_backups.core.catalog import Catalog, iso, parse_iso, utcnow
from cb_backups.core.fileio import (
    CHUNK,
    FILE_MODE,
    HashingWriter,
    atomic_write_json,
    fsync_dir,
    private_dir,
    sha256_file,
)
from cb_backups.stores.pitr.basebackup import BASE_STORE
from cb_backups.stores.pitr.server import STORE
from cb_backups.stores.pitr.wal import DEFAULT_SEGMENT_SIZE, HISTORY, SEGMENT, parse_segment, segment_name

WAL_STORE = "postgres_wal"
SPOOL = ".spool"
SEGMENTS = "segments"
OFFSITE = "offsite"
HEARTBEAT = "receiver.heartbeat"


def pitr_catalog(catalog: Catalog) -> Catalog:
    """`catalog` with base backups and WAL encrypted exactly when the postgres store is (they are its data;
    `encryption.stores` names only the five stores)."""
    enc = catalog.encryption
    follow = enc.stores.get(STORE, enc.default)
    return Catalog(catalog.root, replace(enc, stores={**enc.stores, BASE_STORE: follow, WAL_STORE: follow}))


@dataclass(frozen=True)
class Segment:
    """One archived WAL file (a segment, or a timeline's `.history`)."""

    name: str
    kind: str  # "segment" | "history"
    timeline: int
    segno: int  # 0 for a history file
    seg_size: int
    bytes: int  # the stored (.zst) file
    sha256: str
    raw_bytes: int  # the WAL file itself
    raw_sha256: str
    completed_at: str  # ISO time it was recorded
    encrypted: bool = False  # the stored file is age over the zstd (`.zst.age`); bytes/sha256 are the ciphertext's

    @property
    def file_name(self) -> str:
        return f"{self.name}.zst.age" if self.encrypted else f"{self.name}.zst"

    @property
    def record_name(self) -> str:
        return f"{self.name}.json"

    @property
    def completed(self) -> datetime:
        return parse_iso(self.completed_at)

    @property
    def start_lsn(self) -> int:
        return self.segno * self.seg_size

    @property
    def end_lsn(self) -> int:
        return (self.segno + 1) * self.seg_size


class WalArchive:
    def __init__(self, catalog: Catalog, seg_size: int = DEFAULT_SEGMENT_SIZE, level: int = 3) -> None:
        self.catalog = catalog
        self.root = catalog.store_dir(WAL_STORE)
        self.seg_size = seg_size
        self.level = level
        self.recipients = pitr_catalog(catalog).encryption.recipients_for(WAL_STORE)

    @property
    def spool(self) -> Path:
        return self.root / SPOOL

    @property
    def segments_dir(self) -> Path:
        return self.root / SEGMENTS

    @property
    def offsite_dir(self) -> Path:
        return self.root / OFFSITE

    @property
    def heartbeat(self) -> Path:
        return self.root / HEARTBEAT

    def prepare(self) -> None:
        private_dir(self.spool)
        private_dir(self.segments_dir)

    def beat(self) -> None:
        """The receiver is alive (the RPO check reads the mtime when the receiver is not connected)."""
        self.heartbeat.touch(mode=0o600)

    # --- writing ------------------------------------------------------------------
    def record(self, source: Path) -> Segment:
        """Compress `source` (a completed WAL file) into the archive and record it; idempotent."""
        name = source.name
        kind = "history" if HISTORY.match(name) else "segment"
        timeline, segno = (int(name[:8], 16), 0) if kind == "history" else parse_segment(name, self.seg_size)
        existing = self.get(name)
        raw_sha256, raw_bytes = sha256_file(source)
        if existing is not None and existing.raw_sha256 == raw_sha256 and self.path(existing).is_file():
            return existing  # recorded before a crash removed it from the spool
        self.prepare()
        encrypted = bool(self.recipients)
        final = self.segments_dir / (f"{name}.zst.age" if encrypted else f"{name}.zst")
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            stored_sha256, stored_bytes = self._compress(source, tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.segments_dir)
        segment = Segment(name, kind, timeline, segno, self.seg_size, stored_bytes, stored_sha256, raw_bytes,
                          raw_sha256, iso(utcnow()) if kind == "history" else _precise_now(), encrypted)
        self.write_record(segment)
        return segment

    def _compress(self, source: Path, tmp: Path) -> tuple[str, int]:
        """zstd `source` into `tmp` (age-encrypted on the way when postgres is); the stored file's digest."""
        compressor = zstandard.ZstdCompressor(level=self.level)
        if not self.recipients:
            with open(source, "rb") as src, HashingWriter(tmp) as out, \
                    compressor.stream_writer(out, closefd=False) as sink:
                while block := src.read(CHUNK):
                    sink.write(block)
            return out.sha256, out.bytes
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as raw:
            encryptor = crypto.StreamEncryptor(raw, self.recipients)
            try:
                with open(source, "rb") as src, compressor.stream_writer(_Pushing(encryptor), closefd=False) as sink:
                    while block := src.read(CHUNK):
                        sink.write(block)
            except BaseException:
                encryptor.abort()
                raise
            digest, size = encryptor.close()  # the ciphertext's: what the record and off-site checks compare
            raw.flush()
            os.fsync(raw.fileno())
        return digest, size

    def delete(self, segment: Segment) -> None:
        """Record first, then data: a segment without a record is not in the archive."""
        (self.segments_dir / segment.record_name).unlink(missing_ok=True)
        self.path(segment).unlink(missing_ok=True)
        fsync_dir(self.segments_dir)

    # --- reading ------------------------------------------------------------------
    def path(self, segment: Segment) -> Path:
        return self.segments_dir / segment.file_name

    def record_path(self, segment: Segment) -> Path:
        return self.segments_dir / segment.record_name

    def write_record(self, segment: Segment) -> None:
        """The record, written after its (already verified) stored file: the segment now exists."""
        atomic_write_json(self.record_path(segment), asdict(segment))

    def get(self, name: str) -> Segment | None:
        try:
            return Segment(**json.loads((self.segments_dir / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def segments(self) -> list[Segment]:
        """Every recorded WAL segment, in WAL order (timeline, then number); history files excluded."""
        found = [s for s in self._all() if s.kind == "segment"]
        return sorted(found, key=lambda s: (s.timeline, s.segno))

    def histories(self) -> list[Segment]:
        return [s for s in self._all() if s.kind == "history"]

    def _all(self) -> Iterator[Segment]:
        if not self.segments_dir.is_dir():
            return
        for record in sorted(self.segments_dir.glob("*.json")):
            segment = self.get(record.stem)
            if segment is not None:
                yield segment

    def partial(self) -> Path | None:
        """pg_receivewal's segment in progress (the newest WAL received, not yet complete)."""
        found = sorted(self.spool.glob("*.partial")) if self.spool.is_dir() else []
        return found[-1] if found else None

    def completed_in_spool(self) -> list[Path]:
        if not self.spool.is_dir():
            return []
        return sorted(p for p in self.spool.iterdir() if SEGMENT.match(p.name) or HISTORY.match(p.name))

    def missing(self, segment: Segment) -> list[str]:
        """The stored file against its record without reading it: present, and of the recorded size (planning;
        `extract` checks the sha256 in the one read that decompresses it)."""
        path = self.path(segment)
        try:
            size = path.stat().st_size
        except OSError:
            return [f"{segment.name}: archived file {path.name} is missing"]
        if size != segment.bytes:
            return [f"{segment.name}: archived file {path.name} is {size} bytes, its record says {segment.bytes}"]
        return []

    def problems(self, segment: Segment) -> list[str]:
        """The stored file against its record: present, size and sha256."""
        path = self.path(segment)
        if not path.is_file():
            return [f"{segment.name}: archived file {path.name} is missing"]
        digest, size = sha256_file(path)
        if (digest, size) != (segment.sha256, segment.bytes):
            return [f"{segment.name}: sha256 {digest[:12]}… ({size} bytes) differs from its record "
                    f"{segment.sha256[:12]}… ({segment.bytes} bytes)"]
        return []

    def extract(self, segment: Segment, into: Path) -> Path:
        """Decompress (and decrypt) `segment` to `into/<name>` (temp name + fsync + rename), checking both sha256:
        the stored file's against its record, and the WAL file's."""
        final = into / segment.name
        tmp = final.with_name(f".{segment.name}.tmp")
        clear = final.with_name(f".{segment.name}.zst.tmp")  # an encrypted segment's zstd, private to `into`
        try:
            with open(self.path(segment), "rb") as src:
                stored = _Hashing(src)
                if segment.encrypted:
                    self._decrypt(segment, stored, clear)  # reads (and hashes) the whole stored file
                    with open(clear, "rb") as plain:
                        out = _decompress(plain, tmp)
                else:
                    out = _decompress(stored, tmp)
                    while stored.read(CHUNK):  # bytes after the frame count too: the stored file's sha256
                        pass
        except zstandard.ZstdError as exc:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{segment.name}: the archived file does not decompress ({exc})") from None
        finally:
            clear.unlink(missing_ok=True)
        if (stored.digest(), stored.size) != (segment.sha256, segment.bytes):
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{segment.name}: the archived file's sha256 differs from its record")
        if (out.sha256, out.bytes) != (segment.raw_sha256, segment.raw_bytes):
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{segment.name}: decompresses to sha256 {out.sha256[:12]}…, its record says "
                             f"{segment.raw_sha256[:12]}…")
        os.replace(tmp, final)
        return final


    def _decrypt(self, segment: Segment, stored: _Hashing, clear: Path) -> None:
        identities = self.catalog.encryption.identities()
        if not identities:
            raise ValueError(f"{segment.name}: {crypto.mismatch_message('the WAL segment', [], [], ())}")
        fd = os.open(clear, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            try:
                crypto.decrypt_into(stored, out, identities)
            except crypto.DecryptError as exc:
                raise ValueError(f"{segment.name}: does not decrypt with the identities in CB_AGE_IDENTITY_FILE "
                                 f"({exc})") from None


def _decompress(source: IO[bytes] | _Hashing, tmp: Path) -> HashingWriter:
    with HashingWriter(tmp) as out, zstandard.ZstdDecompressor().stream_reader(source) as reader:
        while block := reader.read(CHUNK):
            out.write(block)
    return out


class _Pushing:
    """zstd's sink in front of the age encryptor (which takes writes but returns nothing)."""

    def __init__(self, encryptor: crypto.StreamEncryptor) -> None:
        self.encryptor = encryptor

    def write(self, data: bytes) -> int:
        self.encryptor.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def _precise_now() -> str:
    return utcnow().isoformat(timespec="milliseconds")


class _Hashing:
    """A read-only stream that hashes what is read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        import hashlib

        self.stream, self.hash, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        block = self.stream.read(n)
        self.hash.update(block)
        self.size += len(block)
        return block

    def readinto(self, buffer: memoryview | bytearray) -> int:
        block = self.read(len(buffer))
        buffer[:len(block)] = block
        return len(block)

    def digest(self) -> str:
        return self.hash.hexdigest()


def gaps(segments: Iterable[Segment], timeline: int, first: int, last: int | None = None) -> list[str]:
    """Names of the segments missing on `timeline` from number `first` to `last` (default: the newest)."""
    have = {s.segno for s in segments if s.timeline == timeline}
    top = last if last is not None else max(have, default=first - 1)
    return [segment_name(timeline, n) for n in range(first, top + 1) if n not in have]
