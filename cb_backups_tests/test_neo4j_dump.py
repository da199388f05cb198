"""The offline dump judged by its container (Neo4j 5's DZV1/DGV1 layout), not by its size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cb_backups.config.settings import Neo4jSettings
from cb_backups.core.catalog import Catalog
from cb_backups.stores.neo4j import DUMP_FILE, Neo4jStore, dump_format_problems
from cb_backups_tests.fixtures_neo4j import SEED_QUERIES, run_cypher

EMULATED = not os.environ.get("CB_TEST_NEO4J_URI")


def test_an_empty_database_dump_is_small_and_valid(neo4j_settings: Neo4jSettings, tmp_path: Path) -> None:
    run_cypher(neo4j_settings, "MATCH (n) DETACH DELETE n")
    store = Neo4jStore(neo4j_settings)

    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)

    assert artifact.manifest.inventory == {"labels": {}, "relationships": {}}
    if EMULATED:
        assert artifact.path(DUMP_FILE).stat().st_size < 1024  # the runbook's "> 1 KB" would have failed it
    verification = store.verify(artifact)
    assert verification.ok, verification.problems
    assert verification.details["format"] == "DZV1 (zstd)"
    run_cypher(neo4j_settings, *SEED_QUERIES)


@pytest.mark.skipif(not EMULATED, reason="the emulator's neo4j-admin picks gzip on request; Neo4j only without zstd")
def test_a_gzip_dump_is_checked_too(neo4j_settings: Neo4jSettings, neo4j_seeded: dict, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEO4J_EMULATOR_DUMP_FORMAT", "gzip")  # Neo4j's fallback when zstd cannot load
    store = Neo4jStore(neo4j_settings)
    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)
    dump = artifact.path(DUMP_FILE)
    assert dump.read_bytes()[:4] == b"DGV1"
    verification = store.verify(artifact)
    assert verification.ok, verification.problems
    assert verification.details["format"] == "DGV1 (gzip)"

    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) - 8])  # without the gzip trailer (CRC + size)
    fmt, problems = dump_format_problems(dump)
    assert fmt == "DGV1 (gzip)"
    assert problems and problems[0].startswith("the archive is damaged or truncated")


@pytest.mark.parametrize("content", [b"", b"NEO4J-EMULATOR-DUMP\n{}\n", b"DZV1" + b"\x00" * 64, b"x" * 4096])
def test_what_is_not_a_neo4j_dump_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / DUMP_FILE
    path.write_bytes(content)
    fmt, problems = dump_format_problems(path)
    assert len(problems) == 1
    if content.startswith(b"DZV1"):
        assert fmt == "DZV1 (zstd)" and "damaged" in problems[0]
    else:
        assert fmt == "unknown"
        assert problems[0].startswith("not a Neo4j dump: it starts with ")
        assert "b'DZV1' (zstd) or b'DGV1' (gzip)" in problems[0]
