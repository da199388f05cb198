"""Durable, private file writing: hash while streaming, fsync, rename into place.

Every artifact byte passes through `HashingWriter`, so the sha256 recorded in a
manifest is computed in the same pass that writes the file (no second read).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK = 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingWriter:
    """A write-only binary file (0600) that hashes and counts what it writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        self._file: IO[bytes] = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hash.update(view)
        written = 0
        while written < len(view):
            written += self._file.write(view[written:])
        self.bytes += written
        return written

    def copy_from(self, stream: IO[bytes], chunk: int = CHUNK) -> int:
        while block := stream.read(chunk):
            self.write(block)
        return self.bytes

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_file(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(chunk):
            yield block


def sha256_of(blocks: Iterable[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for block in blocks:
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """Stream a file through sha256; returns (hexdigest, bytes)."""
    return sha256_of(iter_file(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with HashingWriter(tmp) as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stray temporary file behind
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
