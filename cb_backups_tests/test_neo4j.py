"""Neo4j adapter against the emulator (FalkorDB over Bolt + emulated neo4j-admin) or a real
Neo4j 5 (CB_TEST_NEO4J_URI, CB_TEST_NEO4J_ADMIN, CB_TEST_NEO4J_STOP, CB_TEST_NEO4J_START)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cb_backups.config.settings import Neo4jSettings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.errors import BackupFailed, RestoreRefused, StoreUnavailable
from cb_backups.core.model import Artifact, Target
from cb_backups.stores.base import counts_problems
from cb_backups.stores.neo4j import DUMP_FILE, Neo4jStore
from cb_backups_tests.fixtures_neo4j import run_cypher

EMULATED = not os.environ.get("CB_TEST_NEO4J_URI")


@pytest.fixture(scope="module")
def seeded_backup(neo4j_settings: Neo4jSettings, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """One backup of the seeded graph, shared by the tests that only read it."""
    from cb_backups_tests.fixtures_neo4j import SEED_QUERIES

    run_cypher(neo4j_settings, *SEED_QUERIES)
    catalog = Catalog(tmp_path_factory.mktemp("neo4j-catalog"))
    return catalog.write("neo4j", "2026-11-23", Neo4jStore(neo4j_settings).backup)


def graph_count(settings: Neo4jSettings, query: str) -> int:
    return int(run_cypher(settings, query)[0][0])  # type: ignore[call-overload]


def test_round_trip_restores_the_graph_and_drops_later_changes(neo4j_settings: Neo4jSettings,
                                                                neo4j_seeded: dict, tmp_path: Path) -> None:
    store = Neo4jStore(neo4j_settings)
    artifact = Catalog(tmp_path).write("neo4j", "2026-11-24", store.backup)

    manifest = artifact.manifest
    assert manifest.inventory == neo4j_seeded
    assert manifest.versions["neo4j"]
    if EMULATED:
        assert manifest.versions["neo4j"] == "5.26.4"
    assert [f.name for f in manifest.files] == [DUMP_FILE]
    assert artifact.path(DUMP_FILE).read_bytes()[:4] == b"DZV1"  # Neo4j 5's zstd dump container
    assert oct(artifact.path(DUMP_FILE).stat().st_mode & 0o777) == "0o600"
    assert checksum_problems(artifact) == []
    verification = store.verify(artifact)
    assert verification.ok, verification.problems
    assert verification.details["format"] == "DZV1 (zstd)"
    if EMULATED:
        assert verification.details["check"].startswith("passed")

    # the server answers again after the offline dump, and later changes happen
    run_cypher(neo4j_settings,
               "UNWIND range(1, 5) AS i CREATE (:CODE_File {path: 'new/file_' + toString(i) + '.py', added: true})",
               "MATCH (:CODE_Symbol)-[c:CALLS]->(:CODE_Symbol) WITH c LIMIT 30 DELETE c",
               "MATCH (r:CODE_Repo {name: 'repo-2'}) SET r.stars = 999")
    assert counts_problems(manifest.inventory, store.inventory()) != []

    restored = store.restore(artifact, Target("in_place"))

    assert counts_problems(manifest.inventory, restored) == []
    assert store.inventory() == manifest.inventory
    assert graph_count(neo4j_settings, "MATCH (n:CODE_File) WHERE n.added = true RETURN count(n)") == 0
    assert graph_count(neo4j_settings, "MATCH (r:CODE_Repo {name: 'repo-2'}) RETURN r.stars") == 14
    # property values of every type survive the dump and load
    row = run_cypher(neo4j_settings, "MATCH (s:CODE_Symbol {file: 'repo-1/src/module_3.py', name: 'fn_2'}) "
                                     "RETURN s.kind, s.line, s.score, s.exported, s.tags")[0]
    assert row == ["function", 25, 0.5, True, ["auto", "level2"]]


def test_dump_refused_while_running_is_handled_by_stopping_first(neo4j_settings: Neo4jSettings,
                                                                  neo4j_seeded: dict, tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    if EMULATED:  # the admin tool itself refuses a running database, as Neo4j's does
        done = subprocess.run([*neo4j_settings.admin_command, "database", "dump", "neo4j", f"--to-path={dumps}"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 1
        assert "The database is in use. Stop database 'neo4j' and try again." in done.stderr
        assert list(dumps.iterdir()) == []

    without_stop = Neo4jStore(dataclasses.replace(neo4j_settings, stop_command=(), start_command=()))
    with pytest.raises(BackupFailed, match=r"^neo4j: backup failed: .*in use"):
        Catalog(tmp_path / "a").write("neo4j", "2026-11-24", without_stop.backup)
    assert Catalog(tmp_path / "a").list("neo4j") == []

    with_stop = Neo4jStore(neo4j_settings)  # the adapter stops the server first, so the dump succeeds
    artifact = Catalog(tmp_path / "b").write("neo4j", "2026-11-24", with_stop.backup)
    assert artifact.manifest.inventory == neo4j_seeded
    assert with_stop.inventory() == neo4j_seeded  # and it is running again


def test_neo4j_is_started_again_after_a_failing_dump(neo4j_settings: Neo4jSettings, neo4j_seeded: dict,
                                                     tmp_path: Path) -> None:
    failing_admin = (sys.executable, "-c",
                     "import sys; sys.argv[1:2] == ['--version'] and sys.exit(print('5.26.4')); "
                     "sys.exit('Failed to dump database: No space left on device')")
    store = Neo4jStore(dataclasses.replace(neo4j_settings, admin_command=failing_admin))
    catalog = Catalog(tmp_path)
    with pytest.raises(BackupFailed) as caught:
        catalog.write("neo4j", "2026-11-24", store.backup)
    message = str(caught.value)
    assert message.startswith("neo4j: backup failed: neo4j-admin database dump neo4j exited 1")
    assert "No space left on device" in message
    assert catalog.list("neo4j") == []
    assert not any(p.name.startswith(".staging") for p in (tmp_path / "neo4j").iterdir())
    # the server was stopped for the dump and is serving Bolt again with the same data
    assert Neo4jStore(neo4j_settings).inventory() == neo4j_seeded


def test_version_mismatch_is_refused_before_anything_changes(neo4j_settings: Neo4jSettings,
                                                             seeded_backup: Artifact) -> None:
    store = Neo4jStore(neo4j_settings)
    other = dataclasses.replace(seeded_backup.manifest, versions={"neo4j": "5.20.0"})
    run_cypher(neo4j_settings, "CREATE (:CODE_Marker {kept: true})")
    before = store.inventory()
    pid_before = _emulator_pid(neo4j_settings)

    with pytest.raises(RestoreRefused, match=r"taken from Neo4j 5\.20\.0, the target runs \d+\.\d+\.\d+"):
        store.restore(Artifact(seeded_backup.directory, other), Target("in_place"))

    assert store.inventory() == before
    assert graph_count(neo4j_settings, "MATCH (m:CODE_Marker) RETURN count(m)") == 1
    assert _emulator_pid(neo4j_settings) == pid_before  # never stopped
    run_cypher(neo4j_settings, "MATCH (m:CODE_Marker) DELETE m")


def test_scratch_restore_needs_a_separate_server(neo4j_settings: Neo4jSettings, seeded_backup: Artifact) -> None:
    with pytest.raises(RestoreRefused, match="separate scratch server"):
        Neo4jStore(neo4j_settings).restore(seeded_backup, Target("scratch"))


@pytest.mark.parametrize("damage", ["truncated_small", "truncated_half", "flipped"])
def test_verify_fails_on_a_damaged_dump(neo4j_settings: Neo4jSettings, seeded_backup: Artifact,
                                        tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(seeded_backup.directory, copy)
    dump = copy / DUMP_FILE
    data = bytearray(dump.read_bytes())
    if damage == "truncated_small":
        data = data[:700]
    elif damage == "truncated_half":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    dump.write_bytes(bytes(data))
    store = Neo4jStore(neo4j_settings)

    result = store.verify(Artifact(copy, seeded_backup.manifest))

    assert not result.ok
    # judged by the container itself, before and beside neo4j-admin's own check
    assert any(p.startswith(f"{DUMP_FILE}: ") for p in result.problems), result.problems
    assert any(p.startswith("neo4j-admin database check:") for p in result.problems), result.problems
    # a damaged backup is never loaded
    with pytest.raises(RestoreRefused, match="did not verify"):
        store.restore(Artifact(copy, seeded_backup.manifest), Target("in_place"))


def test_verify_says_when_the_check_could_not_run(neo4j_settings: Neo4jSettings, seeded_backup: Artifact) -> None:
    store = Neo4jStore(dataclasses.replace(neo4j_settings, admin_command=("/nonexistent/neo4j-admin",)))
    result = store.verify(seeded_backup)
    assert result.ok  # the container and the manifest are fine; the check was not faked
    assert result.details["check"].startswith("not run: neo4j-admin '/nonexistent/neo4j-admin' is not installed")


def test_unreachable_bolt_is_a_clear_store_unavailable(tmp_path: Path) -> None:
    from cb_backups_tests.emulators.neo4j import free_port

    marker = tmp_path / "stopped"
    settings = Neo4jSettings(uri=f"bolt://127.0.0.1:{free_port()}", password="s3cret-never-shown",
                             stop_command=("touch", str(marker)), start_command=("true",))
    store = Neo4jStore(settings)

    with pytest.raises(StoreUnavailable) as caught:
        store.inventory()
    message = str(caught.value)
    assert message.startswith("neo4j: server unavailable: Bolt at bolt://127.0.0.1:")
    assert "s3cret" not in message

    with pytest.raises(StoreUnavailable):
        Catalog(tmp_path / "c").write("neo4j", "2026-11-24", store.backup)
    assert not marker.exists()  # nothing was stopped for a backup that could not start

    health = store.health(tmp_path)
    assert not health.ok
    assert health.items["bolt"].startswith("neo4j: server unavailable")
    assert health.items["disk_space"] == "ok"


def test_health_ok_on_the_running_server(neo4j_settings: Neo4jSettings, tmp_path: Path) -> None:
    health = Neo4jStore(neo4j_settings).health(tmp_path)
    assert health.ok, health.problems


def _emulator_pid(settings: Neo4jSettings) -> int | None:
    if not EMULATED:
        return None
    from cb_backups_tests.emulators.neo4j import running_pid

    state = Path(settings.admin_command[settings.admin_command.index("--state") + 1])
    return running_pid(state)
