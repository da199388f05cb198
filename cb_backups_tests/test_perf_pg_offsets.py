"""The data offsets written into a piped dump's copy (issue 19, item 1) are exactly pg_dump's own, on the real
server: the same dump written with `-f` (where pg_dump fills them in itself) is the reference."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cb_backups.config.settings import load_settings
from cb_backups.stores.pg_archive import DataOffsets, patch
from cb_backups.stores.postgres import PostgresStore
from cb_backups.stores.registry import open_store


@pytest.fixture()
def store(cb_env: dict[str, str]) -> PostgresStore:
    return open_store("postgres", load_settings())  # type: ignore[return-value]


def _dump(store: PostgresStore, *extra: str) -> bytes:
    pg = store.settings
    env = {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": pg.password or ""}
    tool = str(Path(pg.bin_dir) / "pg_dump") if pg.bin_dir else "pg_dump"
    return subprocess.run([tool, "-Fc", "-Z", "0", "-d", pg.dbname, *extra], env=env, capture_output=True,
                          check=True).stdout


def test_offsets_of_a_piped_dump_equal_pg_dumps_own(store: PostgresStore, tmp_path: Path) -> None:
    reference = tmp_path / "file.dump"
    _dump(store, "-f", str(reference))
    piped = _dump(store)  # a pipe: pg_dump cannot go back, every entry says "position not set"
    expected = reference.read_bytes()
    assert len(piped) == len(expected) and piped != expected
    for sizes in ([len(piped)], [131072], [1, 2, 3, 5, 7, 11, 4093]):  # header splits at every byte too
        offsets, pos, i = DataOffsets(), 0, 0
        while pos < len(piped):
            step = sizes[i % len(sizes)]
            offsets.feed(memoryview(piped)[pos:pos + step])
            pos, i = pos + step, i + 1
        found = offsets.finish()
        assert found is not None, offsets.failed
        assert len(found) >= 5  # a data block per table
    copy = tmp_path / "piped.dump"
    copy.write_bytes(piped)
    fd = os.open(copy, os.O_RDWR)
    try:
        patch(fd, found)
    finally:
        os.close(fd)
    assert copy.read_bytes() == expected  # byte for byte what pg_dump writes to a file


def test_a_stream_that_does_not_end_cleanly_is_left_alone() -> None:
    offsets = DataOffsets()
    offsets.feed(b"PGDMP\x01\x0f\x00\x04\x08\x01\x00")  # a header cut short
    assert offsets.finish() is None and offsets.failed
    other = DataOffsets()
    other.feed(b"not a dump at all")
    assert other.finish() is None
