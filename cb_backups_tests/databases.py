"""A PostgreSQL database of a test's own, so in-place restores never touch the session's database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.demo.sample_data import load_postgres


def databases(pg: EmbeddedPostgres) -> set[str]:
    with pg.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


@contextmanager
def own_database(pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, prefix: str, scale: int,
                 setup: Callable[[psycopg.Connection], object] | None = None) -> Iterator[str]:
    """Create `<prefix>_<random>` with `scale` sample memories, point CB_POSTGRES_URL at it, and drop it
    afterwards together with every database a restore made from its name (`__incoming`, `__replaced_*`)."""
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with pg.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    with pg.connect(db) as conn:
        load_postgres(conn, scale=scale, hnsw=False)
        if setup is not None:
            setup(conn)
    monkeypatch.setenv("CB_POSTGRES_URL", f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{db}")
    try:
        yield db
    finally:
        with pg.connect("postgres") as conn:
            for name in databases(pg):
                if name.startswith(db):
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
