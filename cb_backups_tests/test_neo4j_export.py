"""The online export (`neo4j: {method: export}`) against the Bolt server (FalkorDB emulator, or a real
Neo4j 5 with CB_TEST_NEO4J_URI): every property type the server stores, schema, digest, kill."""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import sys
import textwrap
from pathlib import Path
from typing import Any

import neo4j.spatial
import neo4j.time
import pytest
from neo4j import GraphDatabase

from cb_backups.config.settings import Neo4jSettings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import BackupFailed, RestoreRefused
from cb_backups.core.model import Target
from cb_backups.stores import neo4j_export
from cb_backups.stores.neo4j import EXPORT_METHOD, Neo4jStore
from cb_backups_tests.test_faults_process import assert_nothing_looks_good_that_does_not_verify, kill, spawn, wait_for

EMULATED = not os.environ.get("CB_TEST_NEO4J_URI")
# FalkorDB's Bolt front end: no temporal, spatial or byte-array values over Bolt (returning one kills the
# server), no NaN, no single quote inside a string, no SHOW INDEXES (db.indexes() instead), no constraints.
COMMON: dict[str, Any] = {
    "int": 42, "negative": -(2 ** 63), "big": 2 ** 62, "float": 0.1, "neg_zero": -0.0, "huge": 1e308,
    "whole_float": 3.0, "text": 'say "hi" \\ back\nslash\ttab é 日本 🎉', "empty": "", "yes": True, "no": False,
    "ints": [1, 2, 3], "floats": [1.5, -2.25], "texts": ["a", "b c"], "bools": [True, False],
}
NEO4J_ONLY: dict[str, Any] = {
    "date": neo4j.time.Date(2026, 11, 24), "local_dt": neo4j.time.DateTime(2026, 11, 24, 3, 4, 5, 123456789),
    "dt_offset": neo4j.time.DateTime(2026, 11, 24, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "local_time": neo4j.time.Time(3, 4, 5, 6),
    "duration": neo4j.time.Duration(months=14, days=3, seconds=7, nanoseconds=9),
    "wgs84": neo4j.spatial.WGS84Point((12.5, 55.7)), "cartesian3d": neo4j.spatial.CartesianPoint((1.0, 2.0, 3.0)),
    "bytes": bytearray(b"\x00\x01\xfe\xff"), "nan": float("nan"), "quote": "it's",
}


def typed_props() -> dict[str, Any]:
    return COMMON if EMULATED else {**COMMON, **NEO4J_ONLY}


def run(settings: Neo4jSettings, cypher: str, **params: Any) -> list[list[Any]]:
    auth = (settings.user, settings.password) if settings.password else None
    with GraphDatabase.driver(settings.uri, auth=auth) as driver, driver.session(database=settings.database) as s:
        return [list(r.values()) for r in s.run(cypher, params)]


def schema(settings: Neo4jSettings) -> list[str]:
    with neo4j_export.bolt(settings) as db:
        return [s["statement"] for s in neo4j_export.schema_statements(db)[1]]


def seed_typed_graph(settings: Neo4jSettings) -> None:
    """Nodes with every supported type, several labels, none, a self loop, typed relationship properties."""
    with neo4j_export.bolt(settings) as db:
        neo4j_export.empty_graph(db)
    run(settings, "CREATE (n:Typed:Extra) SET n = $p", p=typed_props())
    run(settings, "UNWIND range(1, 40) AS i CREATE (:Item {n: i, name: 'item-' + toString(i), w: i * 0.5})")
    run(settings, "CREATE (:Unlabelled {tmp: 1})")
    run(settings, "MATCH (n:Unlabelled) REMOVE n:Unlabelled")
    run(settings, "MATCH (t:Typed), (i:Item) WHERE i.n <= 10 CREATE (t)-[:HAS {rank: i.n, tags: ['x']}]->(i)")
    run(settings, "MATCH (a:Item), (b:Item) WHERE b.n = a.n + 1 CREATE (a)-[:NEXT {gap: 1.0}]->(b)")
    run(settings, "MATCH (a:Item {n: 1}) CREATE (a)-[:SELF]->(a)")
    run(settings, "CREATE INDEX FOR (n:Item) ON (n.n)")


def export_store(settings: Neo4jSettings) -> Neo4jStore:
    return Neo4jStore(dataclasses.replace(settings, method="export"))


def live_digest(settings: Neo4jSettings) -> str:
    with neo4j_export.bolt(settings) as db:
        return neo4j_export.live_digest(db).hexdigest()


def test_values_keep_their_type_and_the_digest_ignores_order() -> None:
    values = {**COMMON, **NEO4J_ONLY}
    encoded = {k: neo4j_export.encode(v) for k, v in values.items()}
    again = {k: neo4j_export.encode(neo4j_export.decode(v)) for k, v in encoded.items()}
    assert again == encoded
    # Neo4j tells integers from floats, so does the digest
    assert neo4j_export.node_hash([], {"v": neo4j_export.encode(1)}) != \
        neo4j_export.node_hash([], {"v": neo4j_export.encode(1.0)})
    nodes = [(["A"], {"i": i}) for i in range(50)] + [(["A"], {"i": 0})]  # a duplicate counts twice
    one, two = neo4j_export.Digest(), neo4j_export.Digest()
    for labels, props in nodes:
        one.node(labels, props)
    for labels, props in random.Random(3).sample(nodes, len(nodes)):
        two.node(list(reversed(labels)), props)
    assert one.hexdigest() == two.hexdigest()
    two.node(["A"], {"i": 0})
    assert one.hexdigest() != two.hexdigest()


def test_export_round_trip_restores_the_backup_digest(neo4j_settings: Neo4jSettings, tmp_path: Path) -> None:
    seed_typed_graph(neo4j_settings)
    store = export_store(neo4j_settings)
    expected_schema = schema(neo4j_settings)
    assert expected_schema  # the Item index

    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)

    manifest = artifact.manifest
    assert manifest.method == EXPORT_METHOD
    assert [f.name for f in manifest.files] == [neo4j_export.EXPORT_FILE]
    assert oct(artifact.path(neo4j_export.EXPORT_FILE).stat().st_mode & 0o777) == "0o600"
    assert manifest.inventory == {"labels": {"Extra": 1, "Item": 40, "Typed": 1},
                                  "relationships": {"HAS": 10, "NEXT": 39, "SELF": 1}}
    assert manifest.options["digest"] == live_digest(neo4j_settings)
    assert manifest.options["schema_statements"] == len(expected_schema)
    verification = store.verify(artifact)
    assert verification.ok, verification.problems
    assert verification.details["nodes"] == 42

    # the graph moves on: a node more, a relationship less, a property changed, the index dropped
    run(neo4j_settings, "CREATE (:Item {n: 999})")
    run(neo4j_settings, "MATCH (:Item {n: 5})-[r:NEXT]->() DELETE r")
    run(neo4j_settings, "MATCH (t:Typed) SET t.int = 43")
    with neo4j_export.bolt(neo4j_settings) as db:  # Neo4j 5 drops by name, FalkorDB by pattern
        names = db.supported("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name")
        for statement in [f"DROP INDEX {r['name']}" for r in names or []] or ["DROP INDEX FOR (n:Item) ON (n.n)"]:
            db.run(statement, "dropping the index")
    assert schema(neo4j_settings) == []
    assert live_digest(neo4j_settings) != manifest.options["digest"]

    restored = store.restore(artifact, Target("in_place"))

    assert restored == manifest.inventory
    assert live_digest(neo4j_settings) == manifest.options["digest"]
    assert schema(neo4j_settings) == expected_schema
    props = run(neo4j_settings, "MATCH (t:Typed) RETURN properties(t)")[0][0]
    expected = typed_props()
    assert {k: neo4j_export.encode(v) for k, v in props.items()} == \
        {k: neo4j_export.encode(v) for k, v in expected.items()}
    assert run(neo4j_settings, "MATCH (n) WHERE size(labels(n)) = 0 RETURN n.tmp") == [[1]]
    assert run(neo4j_settings, "MATCH (a:Item {n: 1})-[:SELF]->(b) RETURN b.n") == [[1]]
    # no trace of the restore's bookkeeping
    assert run(neo4j_settings, f"MATCH (n:{neo4j_export.TMP_LABEL}) RETURN count(n)") == [[0]]
    assert run(neo4j_settings, f"MATCH (n) WHERE n.{neo4j_export.TMP_ID} IS NOT NULL RETURN count(n)") == [[0]]


def test_export_into_a_scratch_server_needs_no_admin_tool(neo4j_settings: Neo4jSettings,
                                                          neo4j_scratch_options: dict[str, Any] | None,
                                                          neo4j_seeded: dict, tmp_path: Path) -> None:
    if neo4j_scratch_options is None:
        pytest.skip("no scratch Neo4j server (CB_TEST_NEO4J_SCRATCH_URI)")
    store = export_store(neo4j_settings)
    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)
    assert artifact.manifest.inventory == neo4j_seeded
    options = {**neo4j_scratch_options, "admin_command": ["/nonexistent/neo4j-admin"]}
    with store.scratch(artifact, Target("scratch", options)) as scratch:
        assert scratch.counts() == neo4j_seeded
    scratch_settings = dataclasses.replace(neo4j_settings, uri=options["uri"])
    assert run(scratch_settings, "MATCH (n) RETURN count(n)") == [[0]]  # emptied afterwards


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_export_does_not_verify_and_is_never_loaded(neo4j_settings: Neo4jSettings, neo4j_seeded: dict,
                                                              tmp_path: Path, damage: str) -> None:
    store = export_store(neo4j_settings)
    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)
    path = artifact.path(neo4j_export.EXPORT_FILE)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))

    result = store.verify(artifact)

    assert not result.ok
    run(neo4j_settings, "CREATE (:Marker {kept: true})")
    with pytest.raises(RestoreRefused, match="did not verify"):
        store.restore(artifact, Target("in_place"))
    assert run(neo4j_settings, "MATCH (m:Marker) RETURN count(m)") == [[1]]  # nothing was touched


def test_counts_that_move_during_the_export_fail_it(neo4j_settings: Neo4jSettings, neo4j_seeded: dict,
                                                    tmp_path: Path) -> None:
    def write_meanwhile(message: str, done: int, total: int | None) -> None:
        if message == "exporting the graph over Bolt":  # counted before, the scan has not started
            run(neo4j_settings, "CREATE (:CODE_File {path: 'written/during/export.py'})")

    catalog = Catalog(tmp_path)
    with pytest.raises(BackupFailed, match=r"the graph changed during the export .*labels/CODE_File"):
        catalog.write("neo4j", "2026-11-24", lambda into: export_store(neo4j_settings).backup(into, write_meanwhile))
    assert catalog.list("neo4j") == []


KILLED_EXPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cb_backups.config.settings import Neo4jSettings
    from cb_backups.core.catalog import Catalog
    from cb_backups.stores import neo4j_export
    from cb_backups.stores.neo4j import Neo4jStore

    uri, root, marker = sys.argv[1:4]
    real_rel = neo4j_export.Digest.rel

    def rel(self, *args):  # pause halfway through the relationships: nodes and some edges are written
        if self.relationships == 250:
            Path(marker).touch()
            time.sleep(120)
        return real_rel(self, *args)

    neo4j_export.Digest.rel = rel
    store = Neo4jStore(Neo4jSettings(uri=uri, password=None, method="export"))
    Catalog(Path(root)).write("neo4j", "2026-11-24", store.backup)
    print("completed")
""")


def test_a_killed_export_leaves_nothing_that_looks_good(neo4j_settings: Neo4jSettings, neo4j_seeded: dict,
                                                        tmp_path: Path) -> None:
    if not EMULATED:
        pytest.skip("the child connects without credentials")
    marker, root = tmp_path / "paused", tmp_path / "catalog"
    proc = spawn([sys.executable, "-c", KILLED_EXPORT, neo4j_settings.uri, str(root), str(marker)])
    try:
        wait_for(marker.exists, proc)
    finally:
        kill(proc)
    store = export_store(neo4j_settings)
    catalog = Catalog(root)

    leftovers = assert_nothing_looks_good_that_does_not_verify(catalog, {"neo4j": store})

    assert catalog.list("neo4j") == []
    assert leftovers and all(name.startswith(".staging-") for name in leftovers)
    # the next run of the same slot succeeds, and the server was never disturbed
    artifact = catalog.write("neo4j", "2026-11-24", store.backup)
    assert artifact.manifest.inventory == neo4j_seeded
    assert store.verify(artifact).ok
    assert catalog.sweep("neo4j")  # the killed run's staging folder goes
