"""The store contract, checked the same way for every adapter (after restic's backend test suite).

Each stage is one test, parametrized over the five stores against real servers or the
emulators (the fixtures switch to real servers when CB_TEST_* is set). Every store gets one
module-scoped backup, written through `Catalog.write` as the product writes it, of sample data
counted through the store's own client:

  backup -> verify -> inventory -> restore into scratch -> counts equal -> a flipped byte fails
  verify -> an incompatible backup is refused before anything changes -> scratch dropped.

What only one store has stays in that store's own test file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from opensearchpy import OpenSearch
from psycopg import sql

from cb_backups.config.settings import Neo4jSettings, Settings, load_settings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.errors import RestoreRefused
from cb_backups.core.model import Artifact, Inventory, Target, Verification
from cb_backups.core.specs import STORE_NAMES, spec_for
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.demo.sample_data import load_valkey
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups.stores.base import Store
from cb_backups.stores.registry import open_store
from cb_backups_tests.fixtures_neo4j import SEED_INVENTORY, SEED_QUERIES, run_cypher
from cb_backups_tests.fixtures_opensearch import SEED_COUNTS, seed_app_indices, wipe_app_indices
from cb_backups_tests.fixtures_qdrant import APP_COLLECTIONS, seed_collection
from cb_backups_tests.test_restore import crafted_copy

SLOT = datetime(2026, 11, 24, 6)  # the shared backup's slot
CRAFTED_SLOT = datetime(2026, 11, 23, 6)  # the incompatible copy's slot
VALKEY_PASSWORD = "vk-C0nf0rm-s3cret-41d2"


def slot_key(store: str, when: datetime) -> str:
    return when.strftime(spec_for(store).partitions.fmt)


# --- what each store brings: sample data, an impossible version, and how to see its scratch targets ----------


@dataclass
class ScratchRun:
    target: Target
    described: str
    during: set[str]  # scratch things while the context was open
    counts: Inventory  # Scratch.counts() inside the context
    after: set[str] = field(default_factory=set)  # scratch things after it closed


@dataclass
class Subject:
    """One store under test: its settings, adapter, the shared backup and the probes the suite needs."""

    name: str
    settings: Settings
    store: Store
    catalog: Catalog
    artifact: Artifact
    seeded: Inventory  # counted through the store's client while seeding, never through the adapter
    impossible_versions: dict[str, str]  # merged into manifest.versions: no server here can load that
    scratch_things: Callable[[], set[str]]  # what could be a scratch target, listed through the client
    secrets: tuple[str, ...] = ()
    has_scratch: bool = True  # False: a store configured without a scratch target (a real Neo4j without a second)
    scratch_result: ScratchRun | None = None  # the scratch restore, run once per store

    def verify(self, artifact: Artifact) -> Verification:
        """Every file's sha256 against the manifest, then the store's own check (as the restore path does)."""
        problems = checksum_problems(artifact)
        if problems:
            return Verification(False, problems)
        return self.store.verify(artifact)


def write_config(root: Path, sections: dict[str, Any]) -> dict[str, str]:
    """A CB_CONFIG file holding `sections`; returns the environment that loads it."""
    path = root / "cb-backups.yaml"
    path.write_text(yaml.safe_dump(sections))
    return {"CB_CONFIG": str(path)}


def make_subject(name: str, env: dict[str, str], root: Path, seeded: Inventory, impossible: dict[str, str],
                 scratch_things: Callable[[], set[str]], secrets: tuple[str, ...] = (),
                 has_scratch: bool = True) -> Subject:
    settings = load_settings({"CB_BACKUP_DIR": str(root / "backups"), "CB_BACKUP_DIR_CREATE": "1", **env})
    store = open_store(name, settings)
    catalog = Catalog(settings.backup_dir)
    artifact = catalog.write(name, slot_key(name, SLOT), store.backup)
    return Subject(name, settings, store, catalog, artifact, seeded, impossible, scratch_things, secrets,
                   has_scratch)


@contextlib.contextmanager
def postgres_subject(request: pytest.FixtureRequest, root: Path) -> Iterator[Subject]:
    pg: EmbeddedPostgres = request.getfixturevalue("pg_server")  # the session database, 300 memories

    def databases() -> set[str]:
        with pg.connect("postgres") as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}

    with pg.connect() as conn:
        seeded = {"tables": {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                             for t in ("memories", "apps", "users")}}
    before = databases()
    try:
        yield make_subject("postgres", pg.env(), root, seeded, {"server": "99.0"},
                           lambda: {d for d in databases() if d.startswith(f"{pg.dbname}__")},
                           secrets=(pg.password,))
    finally:
        with pg.connect("postgres") as conn:
            for name in databases() - before:  # leftovers of a failed stage
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def child_valkey_servers() -> set[str]:
    """valkey-server processes this test process started (a scratch server is one of them)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
            if rest[1] == str(os.getpid()) and comm.startswith("valkey-server"):
                found.add(f"valkey-server pid {stat.parent.name}")
    return found


@contextlib.contextmanager
def valkey_subject(request: pytest.FixtureRequest, root: Path) -> Iterator[Subject]:
    # A server of its own: the sample's 60 s and 300 s TTLs are lengthened, so no key expires while the
    # suite compares inventories (the session server's keys do expire during a long run).
    server = EmbeddedValkey(password=VALKEY_PASSWORD).start()
    try:
        per_db = load_valkey(server.client, scale=200)
        for db in per_db:
            client = server.client(db)
            for key in client.scan_iter(count=500):
                if 0 < client.ttl(key) < 3600:
                    client.expire(key, 7200)
        seeded = {"databases": {f"db{db}": server.client(db).dbsize() for db in per_db}}
        before = child_valkey_servers()  # the server above
        yield make_subject("valkey", server.env(), root, seeded, {"rdb": "99"},
                           lambda: child_valkey_servers() - before, secrets=(VALKEY_PASSWORD,))
    finally:
        server.cleanup()


@contextlib.contextmanager
def neo4j_subject(request: pytest.FixtureRequest, root: Path) -> Iterator[Subject]:
    neo: Neo4jSettings = request.getfixturevalue("neo4j_settings")
    scratch: dict[str, Any] | None = request.getfixturevalue("neo4j_scratch_options")
    run_cypher(neo, *SEED_QUERIES)
    section: dict[str, Any] = {"uri": neo.uri, "user": neo.user, "admin_command": list(neo.admin_command),
                               "stop_command": list(neo.stop_command), "start_command": list(neo.start_command)}
    if neo.password:
        section["password"] = neo.password
    if neo.dump_dir:
        section["dump_dir"] = neo.dump_dir
    config: dict[str, Any] = {"neo4j": section}
    if scratch:
        config["drills"] = {"neo4j": scratch}

    def scratch_labels() -> set[str]:
        """The labels the scratch server holds (it is empty before a scratch restore and after the drop)."""
        if not scratch:
            return set()
        scratch_settings = Neo4jSettings(uri=scratch["uri"], user=neo.user, password=neo.password)
        return {f"label {row[0]}" for row in run_cypher(scratch_settings, "MATCH (n) UNWIND labels(n) AS l "
                                                                          "RETURN DISTINCT l")}

    yield make_subject("neo4j", write_config(root, config), root, SEED_INVENTORY, {"neo4j": "9.9.9"},
                       scratch_labels, secrets=tuple(s for s in (neo.password,) if s), has_scratch=bool(scratch))


@contextlib.contextmanager
def qdrant_subject(request: pytest.FixtureRequest, root: Path) -> Iterator[Subject]:
    url: str = request.getfixturevalue("qdrant_url")
    api_key: str | None = request.getfixturevalue("qdrant_api_key")
    client = request.getfixturevalue("qdrant_client")
    prefix = f"cbt{uuid.uuid4().hex[:8]}_"
    for app, (size, count) in APP_COLLECTIONS.items():
        seed_collection(client, prefix + app, app, size, count)
    seeded = {"collections": {prefix + app: count for app, (_, count) in APP_COLLECTIONS.items()}}
    env = {"CB_QDRANT_URL": url, **({"CB_QDRANT_API_KEY": api_key} if api_key else {})}
    before = {c.name for c in client.get_collections().collections}
    try:
        yield make_subject("qdrant", env, root, seeded, {"qdrant": "99.0.0"},
                           lambda: {c.name for c in client.get_collections().collections} - before,
                           secrets=tuple(s for s in (api_key,) if s))
    finally:
        for collection in client.get_collections().collections:
            if collection.name.startswith(prefix) or collection.name not in before:
                client.delete_collection(collection.name)


@contextlib.contextmanager
def opensearch_subject(request: pytest.FixtureRequest, root: Path) -> Iterator[Subject]:
    server: dict[str, Any] = request.getfixturevalue("opensearch_server")
    client: OpenSearch = request.getfixturevalue("opensearch_client")
    seeded = {"indices": seed_app_indices(client)}
    assert seeded["indices"] == SEED_COUNTS
    tag = uuid.uuid4().hex[:8]
    repository = f"cbtest{tag}"
    config = {"opensearch": {"url": server["url"], "repository": repository, "repository_type": "fs",
                             "repository_settings": {"location": str(Path(server["repo_root"]) / f"cbtest-{tag}"),
                                                     "compress": True}}}

    def indices() -> set[str]:
        return {row["index"] for row in client.cat.indices(format="json") if not row["index"].startswith(".")}

    before = indices()
    try:
        yield make_subject("opensearch", write_config(root, config), root, seeded, {"opensearch": "99.0.0"},
                           lambda: indices() - before)
    finally:
        leftovers = indices() - before
        if leftovers:
            client.indices.delete(index=",".join(sorted(leftovers)), ignore_unavailable=True)
        wipe_app_indices(client)
        listed = client.snapshot.get(repository=repository, snapshot="_all", ignore=404)
        for snap in listed.get("snapshots", []):
            client.snapshot.delete(repository=repository, snapshot=snap["snapshot"], ignore=404)
        client.snapshot.delete_repository(repository=repository, ignore=404)


SUBJECTS: dict[str, Callable[[pytest.FixtureRequest, Path], contextlib.AbstractContextManager[Subject]]] = {
    "postgres": postgres_subject, "valkey": valkey_subject, "neo4j": neo4j_subject, "qdrant": qdrant_subject,
    "opensearch": opensearch_subject,
}
assert tuple(SUBJECTS) == STORE_NAMES


@pytest.fixture(scope="module", params=STORE_NAMES, ids=str)
def subject(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Subject]:
    """The store's sample data and ONE backup of it, shared by every stage of that store."""
    with SUBJECTS[request.param](request, tmp_path_factory.mktemp(f"conformance-{request.param}")) as made:
        yield made


def scratch_target(subject: Subject) -> Target:
    target = subject.store.scratch_target("restore")
    if target is None and not subject.has_scratch:
        pytest.skip(f"no scratch target configured for {subject.name} (CB_TEST_NEO4J_SCRATCH_URI)")
    assert target is not None, f"{subject.name}: no scratch target although one is configured"
    assert target.mode == "scratch"
    return target


def targets(subject: Subject) -> Iterator[Target]:
    """In place, then the store's scratch target (skipping the rest of the test when it has none)."""
    yield Target("in_place")
    yield scratch_target(subject)


def scratch_run(subject: Subject) -> ScratchRun:
    """Restore the shared backup into the store's scratch target once; count inside, look again after."""
    if subject.scratch_result is None:
        before = subject.scratch_things()
        assert not before, f"leftover scratch targets before the restore: {before}"
        with subject.store.scratch(subject.artifact, scratch_target(subject)) as scratch:
            run = ScratchRun(scratch.target, scratch.describe(), subject.scratch_things(), scratch.counts())
        run.after = subject.scratch_things()
        subject.scratch_result = run
    return subject.scratch_result


def flipped_copy(artifact: Artifact, into: Path) -> Artifact:
    """A copy of the artifact with one byte inverted in the middle of its largest file."""
    folder = into / artifact.directory.name
    shutil.copytree(artifact.directory, folder)
    largest = max(artifact.manifest.files, key=lambda f: f.bytes)
    path = folder / largest.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    copy = Catalog(into).load(folder)
    assert copy is not None
    return copy


def incompatible_copy(subject: Subject) -> Artifact:
    """A coherent backup (sha256 recomputed, sealed) whose manifest names a version no server here loads."""
    key = slot_key(subject.name, CRAFTED_SLOT)
    existing = subject.catalog.get(subject.name, key)
    if existing is None:
        versions = {**subject.artifact.manifest.versions, **subject.impossible_versions}
        crafted_copy(subject.catalog, subject.artifact.partition_key, key, store=subject.name, versions=versions)
        existing = subject.catalog.require(subject.name, key)
    return existing


# --- the stages ----------------------------------------------------------------------------------------------


def test_backup_is_complete_and_holds_the_sample(subject: Subject) -> None:
    manifest = subject.artifact.manifest
    assert (manifest.store, manifest.kind) == (subject.name, "backup")
    assert manifest.partition_key == slot_key(subject.name, SLOT)
    assert manifest.files and all(subject.artifact.path(f.name).is_file() for f in manifest.files)
    assert manifest.versions and all(manifest.versions.values())
    for section, names in subject.seeded.items():
        for name, count in names.items():
            assert manifest.inventory[section][name] == count, f"{section}/{name}"
    assert subject.catalog.get(subject.name, manifest.partition_key) == subject.artifact


def test_store_describes_itself_and_its_targets(subject: Subject) -> None:
    store = subject.store
    assert isinstance(store.restore_method, str) and store.restore_method
    for target in targets(subject):
        text = store.describe_target(target)
        assert isinstance(text, str) and text
        assert not [s for s in subject.secrets if s in text], text


def test_backup_verifies(subject: Subject) -> None:
    assert checksum_problems(subject.artifact) == []
    verification = subject.store.verify(subject.artifact)
    assert verification.ok, verification.problems


def test_inventory_equals_the_manifest(subject: Subject) -> None:
    assert subject.store.inventory() == subject.artifact.manifest.inventory


def test_restore_into_scratch_counts_equal(subject: Subject) -> None:
    run = scratch_run(subject)
    assert run.during, "the scratch restore created nothing the client can see"
    assert run.target.mode == "scratch" and run.described
    assert not [s for s in subject.secrets if s in run.described], run.described
    assert subject.store.compare_counts(subject.artifact.manifest.inventory, run.counts, run.target) == []
    for section, names in subject.seeded.items():  # under the backup's names, not the scratch copies'
        assert set(names) <= set(run.counts.get(section, {})), (section, run.counts)


def test_a_flipped_byte_fails_verify(subject: Subject, tmp_path: Path) -> None:
    damaged = flipped_copy(subject.artifact, tmp_path)
    verification = subject.verify(damaged)
    assert not verification.ok and verification.problems
    assert subject.verify(subject.artifact).ok  # the shared backup itself is untouched


def test_an_incompatible_backup_is_refused_by_compatibility(subject: Subject) -> None:
    crafted = incompatible_copy(subject)
    assert subject.verify(crafted).ok, "only the version is wrong"
    for target in targets(subject):
        assert subject.store.compatibility(subject.artifact, target) == [], target
        problems = subject.store.compatibility(crafted, target)
        assert problems and all(isinstance(p, str) and p for p in problems), target


def test_an_incompatible_backup_is_refused_by_the_restore_path_before_anything_changes(subject: Subject) -> None:
    crafted = incompatible_copy(subject)
    for checked in targets(subject):
        requested = Target(checked.mode)  # the restore path fills in the scratch target's options itself
        reason = subject.store.compatibility(crafted, checked)
        assert reason, checked
        live, scratch = subject.store.inventory(), subject.scratch_things()
        plan = plan_restore(subject.settings, subject.name, crafted.partition_key, target=requested)
        with pytest.raises(RestoreRefused) as refused:
            execute_restore(plan)
        assert reason[0] in str(refused.value), requested
        assert subject.store.inventory() == live
        assert subject.scratch_things() == scratch
        assert subject.catalog.list(subject.name, kind="safety") == []  # refused before the safety backup


def test_the_scratch_target_is_dropped(subject: Subject) -> None:
    run = scratch_run(subject)
    assert run.during and not run.after, f"left behind: {run.after}"
    with pytest.raises(RuntimeError, match="interrupted"), \
            subject.store.scratch(subject.artifact, scratch_target(subject)):
        assert subject.scratch_things()
        raise RuntimeError("interrupted between the restore and the count")
    assert not subject.scratch_things()
