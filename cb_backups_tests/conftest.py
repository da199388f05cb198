"""Session fixtures that start REAL servers: PostgreSQL 16 + pgvector, Valkey 8.

Per-store fixture modules (emulators, S3) are loaded as plugins when present.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.demo.sample_data import load_postgres, load_valkey

pytest_plugins = [
    name for name in (
        "cb_backups_tests.fixtures_s3",
        "cb_backups_tests.fixtures_qdrant",
        "cb_backups_tests.fixtures_opensearch",
        "cb_backups_tests.fixtures_neo4j",
    ) if importlib.util.find_spec(name) is not None
]

PG_PASSWORD = "pg-T3st-s3cret-9f1c"
VALKEY_PASSWORD = "vk-T3st-s3cret-77ab"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(password=PG_PASSWORD).start()
    try:
        with server.connect() as conn:
            load_postgres(conn, scale=300)
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(password=VALKEY_PASSWORD).start()
    try:
        load_valkey(server.client, scale=200)
        yield server
    finally:
        server.cleanup()


@pytest.fixture()
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture()
def cb_env(monkeypatch: pytest.MonkeyPatch, backup_dir: Path, pg_server: EmbeddedPostgres,
           valkey_server: EmbeddedValkey, tmp_path: Path) -> dict[str, str]:
    """Point cb-backups (settings, CLI, Dagster) at the test servers and a fresh instance."""
    env = {"CB_BACKUP_DIR": str(backup_dir), "CB_BACKUP_DIR_CREATE": "1",  # a fresh folder: let cb-backups make it
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), **pg_server.env(), **valkey_server.env()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


def specs_dir() -> Path:
    """The official API specs: `CB_SPECS_DIR`, else `shared/specs` beside the repository (as CI has it)."""
    root = Path(__file__).resolve().parent.parent
    for candidate in (os.environ.get("CB_SPECS_DIR"), root.parent / "shared" / "specs", "/work/shared/specs"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return root.parent / "shared" / "specs"


def live(var: str) -> str | None:
    """The URL of a real server for the live tier, when given."""
    return os.environ.get(var) or None
