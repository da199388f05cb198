"""PostgreSQL's directory format (`pg_dump -Fd -j N`): one file per table, dumped by N workers at once.

A backup holds the directory's files flat, each named `postgres.dir.<file>` (`.zst` added when zstd
compressed it): the catalog keeps one level of files per backup, and each file is hashed on its own so a
damaged table names itself. pg_dump writes the directory into a private folder inside the staging
folder; each file then goes through the same zstd and HashingWriter as the custom format's stream and
its plain copy is deleted at once, so at most the plain dump plus one compressed file are on disk.

For a restore every file is hashed and decompressed in ONE read into a private temporary directory, and
`pg_restore --jobs N` reads that directory only after every file's size and sha256 matched the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from cb_backups.core.fileio import CHUNK, HashingWriter
from cb_backups.core.model import Artifact, FileRecord, Progress

PREFIX = "postgres.dir."
TOC = "toc.dat"


def is_directory(artifact: Artifact) -> bool:
    return any(f.name.startswith(PREFIX) for f in artifact.manifest.files)


def plain_name(record_name: str) -> str:
    """`postgres.dir.3456.dat.zst` -> `3456.dat` (the name pg_restore looks for)."""
    return record_name.removeprefix(PREFIX).removesuffix(".zst")


def collect(dumped: Path, into: Path, compressor: Callable[[], zstandard.ZstdCompressor] | None,
            progress: Progress) -> list[FileRecord]:
    """Move pg_dump's directory `dumped` into `into` as flat, hashed (and zstd compressed) files.

    toc.dat goes last: a backup killed half-way has no table of contents, so nothing can read it as whole.
    """
    names = sorted((p.name for p in dumped.iterdir()), key=lambda n: (n == TOC, n))
    records = []
    done = 0
    for name in names:
        src_path = dumped / name
        if not src_path.is_file():
            raise OSError(f"pg_dump wrote {name}, which is not a file")
        target = into / (PREFIX + name + (".zst" if compressor else ""))
        with open(src_path, "rb") as src, HashingWriter(target) as out:
            if compressor is None:
                out.copy_from(src)
            else:
                with compressor().stream_writer(out, closefd=False) as sink:
                    while block := src.read(CHUNK):
                        sink.write(block)
        done += src_path.stat().st_size
        src_path.unlink()  # the plain copy goes at once: disk holds the plain dump once at most
        records.append(FileRecord(target.name, out.bytes, out.sha256))
        progress(f"pg_dump directory: {len(records)}/{len(names)} files compressed", done, None)
    shutil.rmtree(dumped)
    return records


def dump_folder(into: Path) -> Path:
    """Where pg_dump -Fd writes, inside the staging folder; pg_dump creates it (mode 0700)."""
    return into / ".pgdir"


class Damaged(Exception):
    """A file's bytes differ from the manifest, or its zstd stream does not decode."""


@contextmanager
def verified_directory(artifact: Artifact) -> Iterator[Path]:
    """The dump as the directory pg_restore reads, each file hashed and decompressed in one read.

    Raises Damaged before the directory is handed out when any file's size or sha256 differs from the
    manifest or does not decompress: nothing is restored from a partly good backup.
    """
    records = [f for f in artifact.manifest.files if f.name.startswith(PREFIX)]
    if not any(plain_name(r.name) == TOC for r in records):
        raise Damaged(f"{PREFIX}{TOC} is not in the manifest")
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=artifact.directory.parent) as tmp:
        folder = Path(tmp) / "dump"
        folder.mkdir(mode=0o700)
        for record in records:
            path = artifact.path(record.name)
            if not path.is_file():
                raise Damaged(f"{record.name} missing")
            digest, size = _copy(path, folder / plain_name(record.name), record.name.endswith(".zst"))
            if size != record.bytes or digest != record.sha256:
                raise Damaged(f"{record.name}: size or sha256 differs from the manifest")
        yield folder


def _copy(path: Path, plain: Path, compressed: bool) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as src, open(plain, "wb") as dst, contextlib.ExitStack() as stack:
            sink = stack.enter_context(zstandard.ZstdDecompressor().stream_writer(dst, closefd=False)) \
                if compressed else dst
            while block := src.read(CHUNK):
                digest.update(block)
                size += len(block)
                sink.write(block)
    except zstandard.ZstdError as exc:
        raise Damaged(f"{path.name}: zstd stream damaged: {exc}") from None
    return digest.hexdigest(), size


def decodes(artifact: Artifact) -> list[str]:
    """Every zstd file of a directory dump decompresses to its end (verify's proof, without writing)."""
    problems = []
    for record in artifact.manifest.files:
        if record.name.startswith(PREFIX) and record.name.endswith(".zst"):
            try:
                with open(artifact.path(record.name), "rb") as fh, \
                        zstandard.ZstdDecompressor().stream_reader(fh) as stream:
                    while stream.read(CHUNK):
                        pass
            except FileNotFoundError:
                problems.append(f"{record.name} missing")
            except zstandard.ZstdError as exc:
                problems.append(f"{record.name}: zstd stream damaged: {exc}")
    return problems


@contextmanager
def toc_only(artifact: Artifact) -> Iterator[Path]:
    """A directory holding just the decompressed toc.dat: enough for `pg_restore --list`."""
    record = next((f for f in artifact.manifest.files if f.name.startswith(PREFIX)
                   and plain_name(f.name) == TOC), None)
    if record is None:
        raise Damaged(f"{PREFIX}{TOC} is not in the manifest")
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=artifact.directory.parent) as tmp:
        folder = Path(tmp)
        path = artifact.path(record.name)
        if not path.is_file():
            raise Damaged(f"{record.name} missing")
        _copy(path, folder / TOC, record.name.endswith(".zst"))
        yield folder
