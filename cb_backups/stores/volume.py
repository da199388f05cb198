"""The runbook's volume method: stop the service, tar its data folder, start it again.

Used by the Qdrant and OpenSearch adapters when `method: volume`, and by the
full system backup as the runbook's script does. The service is always started
again, even when the tar fails.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cb_backups.core.errors import BackupFailed, ConfigError, RestoreRefused
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import FileRecord
from cb_backups.stores.base import run_tool


@contextmanager
def service_stopped(store: str, stop: Sequence[str], start: Sequence[str]) -> Iterator[None]:
    """Stop a service for the duration of the block; always start it again.

    If starting fails after a successful block, that failure is raised; if the block
    failed too, the block's error is raised with the start failure chained to it.
    """
    if stop:
        run_tool(store, stop, timeout=600)
    try:
        yield
    finally:
        if start:
            try:
                run_tool(store, start, timeout=600)
            except BackupFailed as exc:
                raise BackupFailed(store, f"service did not start again: {exc}") from exc


def tar_directory(store: str, source: Path, into: Path, name: str) -> FileRecord:
    """Write `source`'s contents as a gzip tar `into/name`, hashing while writing."""
    if not source.is_dir():
        raise ConfigError(f"{store} data_dir", str(source), "an existing folder readable by cb-backups")
    with (HashingWriter(into / name) as out,
          gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as gz,  # type: ignore[arg-type]
          tarfile.open(fileobj=gz, mode="w|") as tar):
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    return FileRecord(name, out.bytes, out.sha256)


def list_tar(path: Path) -> list[str]:
    """Runbook: `tar -tzf`. Reads every member header; raises on a damaged archive."""
    with tarfile.open(path, mode="r:gz") as tar:
        return tar.getnames()


def extract_tar(store: str, archive: Path, target: Path) -> None:
    """Extract safely: absolute member names are refused before anything is written (the 'data' filter would
    only strip the leading slash), and the 'data' filter refuses `..`, links leaving the target and devices."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            absolute = [m.name for m in tar.getmembers() if m.name.startswith(("/", "\\")) or m.name[1:3] == ":\\"]
            if absolute:
                raise RestoreRefused(store, f"archive {archive.name} cannot be extracted safely: absolute member "
                                            f"path {absolute[0]!r}")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise RestoreRefused(store, f"archive {archive.name} cannot be extracted safely: {exc}") from exc
