"""Synthetic artifacts: random bytes written through the catalog by a fake store (streamed, never in memory)."""

from __future__ import annotations

import os
from pathlib import Path

from cb_backups.core.catalog import Catalog
from cb_backups.core.crypto import Encryption
from cb_backups.core.fileio import CHUNK, HashingWriter
from cb_backups.core.model import Artifact, BackupOutput, FileRecord

STORE = "synthetic"
FILE = "payload.bin"


class RandomStore:
    """A fake store whose backup is `size` random bytes in one file."""

    name = STORE

    def __init__(self, size: int) -> None:
        self.size = size

    def backup(self, into: Path) -> BackupOutput:
        with HashingWriter(into / FILE) as out:
            left = self.size
            block = os.urandom(CHUNK)
            while left > 0:
                # a fresh random head per chunk keeps every chunk distinct without 2 GiB of urandom
                chunk = os.urandom(64) + block[64:min(CHUNK, left)] if left >= 64 else os.urandom(left)
                out.write(chunk)
                left -= len(chunk)
        return BackupOutput(files=[FileRecord(FILE, out.bytes, out.sha256)], method="random", options={},
                            versions={}, inventory={"bytes": {FILE: out.bytes}})


def make_artifact(root: Path, size: int, key: str = "2026-11-24", recipients: tuple[str, ...] = ()) -> Artifact:
    """`recipients`: encrypt to these age public keys while writing (one pass, as a real encrypted backup)."""
    encryption = Encryption(default=True, recipients=recipients) if recipients else None
    return Catalog(root, encryption=encryption).write(STORE, key, RandomStore(size).backup)
