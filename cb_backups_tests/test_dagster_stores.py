"""The Dagster layer for the emulated stores: Neo4j, Qdrant and OpenSearch backups materialized
through their jobs (settings from env vars and a CB_CONFIG file, as in production), all four slot
checks passing, counts in the metadata, and the freshness check passing right after.

The same tests run against real servers when CB_TEST_QDRANT_URL, CB_TEST_OPENSEARCH_URL and
CB_TEST_NEO4J_URI (+ ...) are set (see the fixture modules).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from cb_backups.checks.slot import SLOT_CHECKS
from cb_backups.cli.runs import run_job
from cb_backups.config.settings import Neo4jSettings, OpenSearchSettings, QdrantSettings
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs
from cb_backups_tests.fixtures_neo4j import SEED_INVENTORY
from cb_backups_tests.fixtures_opensearch import SEED_COUNTS


def store_env(config_dir: Path, *, qdrant: QdrantSettings | None = None, opensearch: OpenSearchSettings | None = None,
              neo4j: Neo4jSettings | None = None) -> dict[str, str]:
    """The env vars (and a CB_CONFIG YAML for what has no env var) that point cb-backups at these servers."""
    env: dict[str, str] = {}
    config: dict[str, dict[str, object]] = {}
    if qdrant is not None:
        env["CB_QDRANT_URL"] = qdrant.url
        if qdrant.api_key:
            env["CB_QDRANT_API_KEY"] = qdrant.api_key
    if opensearch is not None:
        env["CB_OPENSEARCH_URL"] = opensearch.url
        # The repository location must lie inside the server's path.repo: only the YAML file can say so.
        config["opensearch"] = {"repository": opensearch.repository, "repository_type": opensearch.repository_type,
                                "repository_settings": dict(opensearch.repository_settings)}
    if neo4j is not None:
        env["CB_NEO4J_URI"] = neo4j.uri
        env["CB_NEO4J_USER"] = neo4j.user
        if neo4j.password:
            env["CB_NEO4J_PASSWORD"] = neo4j.password
        if neo4j.dump_dir:
            env["CB_NEO4J_DUMP_DIR"] = neo4j.dump_dir
        commands = {"admin_command": ("CB_NEO4J_ADMIN", neo4j.admin_command),
                    "stop_command": ("CB_NEO4J_STOP", neo4j.stop_command),
                    "start_command": ("CB_NEO4J_START", neo4j.start_command)}
        for key, (var, argv) in commands.items():
            if any(part.split() != [part] for part in argv):  # env values split on spaces; YAML keeps lists
                config.setdefault("neo4j", {})[key] = list(argv)
            elif argv:
                env[var] = " ".join(argv)
    if config:
        path = config_dir / "cb-config.yaml"
        path.write_text(yaml.safe_dump(config))
        env["CB_CONFIG"] = str(path)
    return env


@pytest.fixture()
def emulated_env(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                 qdrant_settings: QdrantSettings, opensearch_settings: OpenSearchSettings,
                 neo4j_settings: Neo4jSettings) -> dict[str, str]:
    """cb_env (PostgreSQL, Valkey, fresh backup dir and Dagster home) plus Qdrant, OpenSearch and Neo4j."""
    extra = store_env(tmp_path, qdrant=qdrant_settings, opensearch=opensearch_settings, neo4j=neo4j_settings)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return {**cb_env, **extra}


def expected_counts(store: str, request: pytest.FixtureRequest) -> dict[str, dict[str, int]]:
    """Seed the store; returns section -> name -> count the backup must record."""
    if store == "neo4j":
        request.getfixturevalue("neo4j_seeded")
        return SEED_INVENTORY
    if store == "qdrant":
        return {"collections": dict(request.getfixturevalue("qdrant_seeded").counts)}
    request.getfixturevalue("seeded_opensearch")
    return {"indices": dict(SEED_COUNTS)}


@pytest.mark.parametrize("store", ["neo4j", "qdrant", "opensearch"])
def test_backup_job_materializes_with_checks_and_counts_then_fresh(store: str, emulated_env: dict[str, str],
                                                                    request: pytest.FixtureRequest) -> None:
    expected = expected_counts(store, request)
    instance = dg.DagsterInstance.get()
    key = spec_for(store).partitions.get_last_partition_key()
    assert key is not None

    result = run_job(f"{store}_backup_job", key, instance)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(SLOT_CHECKS)
    assert all(e.passed for e in evaluations.values()), {n: e.description for n, e in evaluations.items()}
    assert {e.partition for e in evaluations.values()} == {key}

    materialization = result.asset_materializations_for_node(f"{store}_backup")[0]
    assert materialization.partition == key
    meta = materialization.metadata
    for section, counts in expected.items():
        for name, count in counts.items():
            assert meta[f"count/{section}/{name}"].value == count, (section, name)
    artifact = Catalog(Path(emulated_env["CB_BACKUP_DIR"])).require(store, key)
    assert meta["sha256"].value == {f.name: f.sha256 for f in artifact.manifest.files}
    assert meta["bytes"].value == artifact.manifest.total_bytes > 0
    if store == "opensearch":  # the repository came from the CB_CONFIG file, inside the server's path.repo
        assert artifact.manifest.markers["repository"] == request.getfixturevalue("opensearch_settings").repository

    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    fresh = defs.resolve_job_def("freshness_checks_job").execute_in_process(instance=instance, raise_on_error=False,
                                                                           run_config=quiet)
    by_asset = {e.asset_key.to_user_string(): e for e in fresh.get_asset_check_evaluations()}
    assert by_asset[f"{store}_backup"].passed, by_asset[f"{store}_backup"].description
    assert by_asset[f"{store}_backup"].metadata["partition"].value == key
