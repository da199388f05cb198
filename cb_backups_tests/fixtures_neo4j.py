"""Neo4j fixtures: the emulator (FalkorDB over Bolt + emulated neo4j-admin), or a real server.

A real Neo4j 5 is used when CB_TEST_NEO4J_URI is set, with
CB_TEST_NEO4J_ADMIN (neo4j-admin prefix, e.g. "docker compose run --rm neo4j neo4j-admin"),
CB_TEST_NEO4J_STOP / CB_TEST_NEO4J_START (e.g. "docker compose stop neo4j"),
CB_TEST_NEO4J_DUMP_DIR (a folder neo4j-admin writes to, same path on both sides),
CB_TEST_NEO4J_USER / CB_TEST_NEO4J_PASSWORD. The seeding fixture WIPES that database:
point it at a disposable test server only. A second server for scratch restores is
CB_TEST_NEO4J_SCRATCH_URI (+ _ADMIN, _STOP, _START, _DUMP_DIR), a second emulator otherwise;
scratch restores overwrite its database.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neo4j import GraphDatabase

from cb_backups.config.settings import Neo4jSettings
from cb_backups.core.model import Inventory

# The CODE_* graph the app keeps: repos contain files contain symbols; symbols call
# symbols; repos and files depend on each other. Literal-free Cypher (FalkorDB's Bolt
# front end mishandles string parameters with quotes) that runs on Neo4j 5 too.
SEED_QUERIES = (
    "MATCH (n) DETACH DELETE n",
    "UNWIND range(0, 2) AS r CREATE (:CODE_Repo {name: 'repo-' + toString(r), "
    "url: 'https://git.example.invalid/repo-' + toString(r), default_branch: 'main', stars: r * 7})",
    "MATCH (r:CODE_Repo) UNWIND range(0, 19) AS f CREATE (r)-[:CONTAINS {since: '2026-01-0' + toString(f % 9 + 1)}]->"
    "(:CODE_File {path: r.name + '/src/module_' + toString(f) + '.py', repo: r.name, lines: f * 10 + 5, "
    "language: 'python', hash: 'h' + toString(f * 31 + r.stars)})",
    "MATCH (f:CODE_File) UNWIND range(0, 3) AS s CREATE (f)-[:CONTAINS]->(:CODE_Symbol {name: 'fn_' + toString(s), "
    "kind: CASE s WHEN 0 THEN 'class' ELSE 'function' END, file: f.path, line: s * 12 + 1, score: 0.25 * s, "
    "exported: s % 2 = 0, tags: ['auto', 'level' + toString(s)]})",
    "MATCH (a:CODE_Symbol), (b:CODE_Symbol) WHERE a.file = b.file AND a.line + 12 = b.line "
    "CREATE (a)-[:CALLS {count: a.line}]->(b)",
    "MATCH (a:CODE_Repo {name: 'repo-0'}), (b:CODE_Repo) WHERE b.name <> 'repo-0' CREATE (a)-[:DEPENDS_ON]->(b)",
    "MATCH (a:CODE_File), (b:CODE_File) WHERE a.repo = 'repo-1' AND b.repo = 'repo-1' AND a.lines + 10 = b.lines "
    "CREATE (a)-[:DEPENDS_ON {kind: 'import'}]->(b)",
)
SEED_INVENTORY: Inventory = {
    "labels": {"CODE_File": 60, "CODE_Repo": 3, "CODE_Symbol": 240},
    "relationships": {"CALLS": 180, "CONTAINS": 300, "DEPENDS_ON": 21},
}


def _split(var: str) -> tuple[str, ...]:
    return tuple(shlex.split(os.environ.get(var, "")))


@pytest.fixture(scope="session")
def neo4j_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neo4jSettings]:
    """Settings for the emulator (started here) or for the real server named by CB_TEST_NEO4J_URI."""
    uri = os.environ.get("CB_TEST_NEO4J_URI")
    if uri:
        yield Neo4jSettings(
            uri=uri,
            user=os.environ.get("CB_TEST_NEO4J_USER", "neo4j"),
            password=os.environ.get("CB_TEST_NEO4J_PASSWORD") or None,
            admin_command=_split("CB_TEST_NEO4J_ADMIN") or ("neo4j-admin",),
            stop_command=_split("CB_TEST_NEO4J_STOP"),
            start_command=_split("CB_TEST_NEO4J_START"),
            dump_dir=os.environ.get("CB_TEST_NEO4J_DUMP_DIR") or None,
        )
        return
    from cb_backups_tests.emulators.neo4j import start_neo4j

    # FalkorDB's Bolt front end aborts on a message over about 4 KB: keep the export's restore batches
    # under it (child processes of the tests inherit it)
    os.environ.setdefault("CB_NEO4J_BATCH_BYTES", "2500")
    emulator = start_neo4j(Path(tmp_path_factory.mktemp("neo4j-emulator")))
    try:
        yield Neo4jSettings(uri=emulator.uri, password=None, admin_command=emulator.admin_command,
                            stop_command=emulator.stop_command, start_command=emulator.start_command)
    finally:
        emulator.stop()


def run_cypher(settings: Neo4jSettings, *queries: str) -> list[list[object]]:
    """Auto-commit queries (FalkorDB's Bolt front end ignores writes in explicit transactions)."""
    auth = (settings.user, settings.password) if settings.password else None
    results: list[list[object]] = []
    with GraphDatabase.driver(settings.uri, auth=auth) as driver, driver.session(database=settings.database) as s:
        for query in queries:
            results = [list(record.values()) for record in s.run(query)]
    return results


@pytest.fixture()
def neo4j_seeded(neo4j_settings: Neo4jSettings) -> Inventory:
    """Replace the graph with the CODE_* sample (303 nodes, 501 relationships); returns its inventory."""
    run_cypher(neo4j_settings, *SEED_QUERIES)
    return SEED_INVENTORY


@pytest.fixture(scope="session")
def neo4j_scratch_options(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any] | None]:
    """A separate Neo4j for scratch restores, as the `drills: {neo4j: ...}` config section names it.

    A second emulator, or the server named by CB_TEST_NEO4J_SCRATCH_URI; None when the main server
    is real and no scratch server is given (Community Edition has one user database per server).
    """
    uri = os.environ.get("CB_TEST_NEO4J_SCRATCH_URI")
    if uri:
        options: dict[str, Any] = {"uri": uri, "admin_command": list(_split("CB_TEST_NEO4J_SCRATCH_ADMIN")),
                                   "stop_command": list(_split("CB_TEST_NEO4J_SCRATCH_STOP")),
                                   "start_command": list(_split("CB_TEST_NEO4J_SCRATCH_START"))}
        if os.environ.get("CB_TEST_NEO4J_SCRATCH_DUMP_DIR"):
            options["dump_dir"] = os.environ["CB_TEST_NEO4J_SCRATCH_DUMP_DIR"]
        yield options
        return
    if os.environ.get("CB_TEST_NEO4J_URI"):
        yield None
        return
    from cb_backups_tests.emulators.neo4j import start_neo4j

    emulator = start_neo4j(Path(tmp_path_factory.mktemp("neo4j-scratch-emulator")))
    try:
        yield {"uri": emulator.uri, "admin_command": list(emulator.admin_command),
               "stop_command": list(emulator.stop_command), "start_command": list(emulator.start_command)}
    finally:
        emulator.stop()
