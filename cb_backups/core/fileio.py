"""Durable, private file writing: hash while streaming, fsync, rename into place.

Every artifact byte passes through `HashingWriter`, so the sha256 recorded in a
manifest is computed in the same pass that writes the file (no second read).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cb_backups.core import crypto
from cb_backups.core.errors import CbBackupsError

CHUNK = 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


class DiskFull(CbBackupsError):
    """A write did not fit: the message names the filesystem (its mount point) and what was kept."""

    def __init__(self, path: Path | str, doing: str, kept: str) -> None:
        where = Path(path)
        super().__init__(f"disk full: {doing}: the filesystem mounted at {mount_point(where)} (holding {where}) "
                         f"has {free_bytes(where):,} bytes free; {kept}")
        self.path = where


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = "database or disk is full"
_SQLITE_IO = "disk I/O error"
LOW_SPACE = 256 * 1024  # less than this free beside a SQLite I/O error: the disk is full


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, or SQLite's "database or disk is full", anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if _SQLITE_FULL in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def full_path(exc: BaseException) -> Path | None:
    """The file an ENOSPC/EDQUOT in the chain was about, when the OS said."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return current.path
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS and (current.filename2 or current.filename):
            # a copy names (source, destination): the destination is what did not fit
            return Path(os.fsdecode(current.filename2 or current.filename))
        current = current.__cause__ or current.__context__
    return None


def as_disk_full(exc: BaseException, doing: str, kept: str, default: Path | None = None) -> DiskFull | None:
    """`exc` as a DiskFull naming the full filesystem (the file the OS named, else `default`, else the temp
    dir), or None when it is not about space."""
    if not is_disk_full(exc):
        return None
    if isinstance(exc, DiskFull):
        return exc
    return DiskFull(full_path(exc) or default or Path(tempfile.gettempdir()), doing, kept)


def disk_full_of(exc: BaseException) -> DiskFull | None:
    """For the CLI's top level: a write anywhere that did not fit, as one DiskFull. Without a file name in
    the error it was Dagster's SQLite storage in DAGSTER_HOME (its only writer that does not say)."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".")
    kept = ("the run stopped; backups already complete in the catalog are kept as they were (cb-backups list), "
            "a partial one is never listed")
    if not is_disk_full(exc) and _chain_says(exc, _SQLITE_IO) and free_bytes(home) < LOW_SPACE:
        # SQLite reports a journal it cannot create as "disk I/O error": with no room left, that is a full disk.
        return DiskFull(home, "Dagster's storage in DAGSTER_HOME could not be written", kept)
    return as_disk_full(exc, "the run could not write its records" if full_path(exc) is None else "a write did not fit",
                        kept, default=home)


def _chain_says(exc: BaseException, text: str) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if text in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or the nearest existing parent)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def free_bytes(path: Path) -> int:
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return shutil.disk_usage(current).free
    except OSError:
        return 0


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
    """A write-only binary file (0600) that hashes and counts what it writes.

    Under a staging folder marked by `crypto.encrypting`, the bytes are age-encrypted on their way to
    the file: `sha256`/`bytes` stay those of the plaintext (what the adapter wrote and may compare), and
    the ciphertext's are recorded with the folder for the catalog's commit (by inode: renames are fine).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        self._file: IO[bytes] = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.bytes = 0
        self._marked = crypto.marked_for(path)
        self._encryptor = crypto.StreamEncryptor(self._file, self._marked.recipients) if self._marked else None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hash.update(view)
        if self._encryptor is not None:
            self._encryptor.write(view)
            self.bytes += len(view)
            return len(view)
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
        if self._file.closed:
            return
        try:
            if self._encryptor is not None and self._marked is not None:
                digest, size = self._encryptor.close()
                st = os.fstat(self._file.fileno())
                self._marked.sealed[(st.st_dev, st.st_ino)] = crypto.Sealed(
                    self.sha256, self.bytes, digest, size, tuple(map(crypto.fingerprint, self._marked.recipients)))
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self._encryptor is not None:
            self._encryptor.abort()  # a failed write: no final chunk, the file is never "sealed"
            self._file.close()
            return
        self.close()


# sha256 of files this process wrote and hashed as it wrote them (a restore's download), keyed by what any
# later write changes (inode, size, mtime, ctime: no one can set a ctime), so a restore reading one of
# them straight after need not read it a second time for its hash (`sha256_file`, `known_digest`)
_DIGESTS: dict[tuple[int, ...], str] = {}
_DIGESTS_KEPT = 4096  # a long-running process downloads for years: the oldest are forgotten


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_identity(fd: int) -> tuple[int, ...]:
    """What any write to the open file `fd` changes (device, inode, size, modification and change times)."""
    return _identity(os.fstat(fd))


def remember_digest(path: Path, sha256: str) -> None:
    """`path` (as it is now) has this sha256: it was hashed while this process wrote it."""
    _DIGESTS[_identity(os.stat(path))] = sha256
    if len(_DIGESTS) > _DIGESTS_KEPT:
        del _DIGESTS[next(iter(_DIGESTS))]


def known_digest(fd: int) -> str | None:
    """The sha256 `remember_digest` recorded for the open file `fd`, if nothing changed it since."""
    return _DIGESTS.get(file_identity(fd))


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
    """Stream a file through sha256; returns (hexdigest, bytes). A file this process hashed while it wrote
    it, unchanged since (`remember_digest`), is not read again."""
    st = os.stat(path)
    known = _DIGESTS.get(_identity(st))
    if known is not None:
        return known, st.st_size
    return sha256_of(iter_file(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with HashingWriter(tmp) as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stray temporary file behind
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            state = "left as it was" if path.exists() else "not written"
            raise DiskFull(path, f"cannot write {path.name}", f"{path} was {state}") from None
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
