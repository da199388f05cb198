"""Restore drills: per-partition asset checks that restore into scratch targets (real PostgreSQL and Valkey,
the Qdrant emulator) and the 05:00 schedule."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.definitions import defs
from cb_backups.defs.drills import DRILL_CHECK, drill_requests
from cb_backups.defs.resources import BackupsResource
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.restore.drill import run_drill
from cb_backups.stores.base import DRILL, Scratch
from cb_backups.stores.neo4j import scratch_server_options
from cb_backups.stores.registry import open_store
from cb_backups.stores.valkey import ValkeyScratch
from cb_backups_tests.fixtures_qdrant import SeededCollections
from cb_backups_tests.test_restore import crafted_copy

PG_KEY = "2026-11-24-06:00"
VK_KEYS = ("2026-11-24-00:00", "2026-11-24-06:00")


def backup(store_name: str, key: str) -> Catalog:
    settings = load_settings()
    catalog = Catalog(settings.backup_dir)
    catalog.write(store_name, key, open_store(store_name, settings).backup)
    return catalog


def run_drill_check(store: str, key: str) -> dg.AssetCheckEvaluation:
    """Launch one store's drill check for one partition, as the schedule's run request does."""
    job = defs.resolve_job_def("restore_drills_job")
    check = dg.AssetCheckKey(dg.AssetKey(f"{store}_backup"), DRILL_CHECK)
    subset = job.get_subset(asset_check_selection={check}, asset_selection=set())
    result = subset.execute_in_process(instance=dg.DagsterInstance.get(), tags={"dagster/partition": key},
                                       raise_on_error=False)
    evaluations = list(result.get_asset_check_evaluations())
    assert len(evaluations) == 1
    return evaluations[0]


def test_postgres_drill_passes_and_removes_the_scratch_database(cb_env: dict[str, str],
                                                                pg_server: EmbeddedPostgres) -> None:
    backup("postgres", PG_KEY)
    evaluation = run_drill_check("postgres", PG_KEY)
    assert evaluation.passed, evaluation.description
    assert evaluation.partition == PG_KEY and evaluation.severity == dg.AssetCheckSeverity.ERROR
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert meta["restored_partition"] == PG_KEY and meta["count/tables/memories"] == 300
    assert meta["scratch_target"] == "database codingbrain__drill"
    assert float(meta["rto_seconds"]) > 0 and meta["within_rto"] is True  # type: ignore[arg-type]
    assert "counts equal the manifest" in (evaluation.description or "")
    with pg_server.connect("postgres") as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert not {n for n in names if n.startswith("codingbrain__")}


def test_drill_fails_when_the_scratch_data_is_tampered_with(cb_env: dict[str, str]) -> None:
    backup("valkey", VK_KEYS[1])
    settings = load_settings()
    assert run_drill(settings, "valkey", VK_KEYS[1]).passed

    def tamper(scratch: Scratch) -> None:  # the test hook: between restore and count
        assert isinstance(scratch, ValkeyScratch)
        client = scratch.client()
        client.mset({f"tampered:{n}": "x" for n in range(5)})

    result = run_drill(settings, "valkey", VK_KEYS[1], between=tamper)
    assert not result.passed and result.problems and result.problems[0].startswith("db0: expected")
    assert "counts differ" in result.description


def test_drill_check_fails_on_a_backup_whose_data_disagrees_with_its_manifest(
        cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A coherent artifact (checksums recomputed) whose manifest records 7 fewer keys than its RDB holds:
    # only restoring and counting can notice.
    catalog = backup("valkey", VK_KEYS[0])
    inventory = catalog.require("valkey", VK_KEYS[0]).manifest.inventory
    claimed = {**inventory, "databases": {**inventory["databases"], "db0": inventory["databases"]["db0"] - 7}}
    crafted_copy(catalog, VK_KEYS[0], VK_KEYS[1], store="valkey", inventory=claimed)
    good = run_drill_check("valkey", VK_KEYS[0])
    assert good.passed, good.description
    bad = run_drill_check("valkey", VK_KEYS[1])
    assert not bad.passed and "db0: expected" in (bad.description or "")
    assert bad.severity == dg.AssetCheckSeverity.ERROR
    monkeypatch.setenv("CB_DRILL_SEVERITY", "WARN")
    assert run_drill_check("valkey", VK_KEYS[1]).severity == dg.AssetCheckSeverity.WARN


def test_drill_of_a_missing_partition_fails_clearly(cb_env: dict[str, str]) -> None:
    evaluation = run_drill_check("valkey", VK_KEYS[0])
    assert not evaluation.passed
    assert evaluation.description == f"no complete valkey backup for slot {VK_KEYS[0]}"


def test_qdrant_drill_restores_into_drill_collections_and_drops_them(
        cb_env: dict[str, str], qdrant_seeded: SeededCollections, qdrant_url: str, qdrant_api_key: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    backup("qdrant", "2026-11-24")
    result = run_drill(load_settings(), "qdrant")
    assert result.passed, result.description
    for name, count in qdrant_seeded.counts.items():
        assert result.counts["collections"][name] == count
    left = {c.name for c in qdrant_seeded.client.get_collections().collections}
    assert not {n for n in left if n.endswith("__drill")}


def test_neo4j_without_a_scratch_server_is_check_only_and_says_so(cb_env: dict[str, str]) -> None:
    settings = load_settings({**cb_env, "CB_NEO4J_URI": "bolt://127.0.0.1:1"})
    assert scratch_server_options(settings, {}) == {}
    assert open_store("neo4j", settings).scratch_target(DRILL) is None
    options = scratch_server_options(settings, {"CB_NEO4J_SCRATCH_URI": "bolt://127.0.0.1:7688"})
    assert options == {"uri": "bolt://127.0.0.1:7688"}


def test_schedule_runs_each_configured_store_on_its_newest_backup(cb_env: dict[str, str]) -> None:
    backup("valkey", VK_KEYS[0])
    backup("valkey", VK_KEYS[1])
    schedule = defs.resolve_schedule_def("restore_drills_schedule")
    assert schedule.cron_schedule == "0 5 * * *"
    requests = {r.tags["store"]: r for r in drill_requests(BackupsResource())}
    assert set(requests) == {"postgres", "valkey"}  # the stores cb_env configures
    assert requests["valkey"].tags["dagster/partition"] == VK_KEYS[1]
    assert requests["valkey"].asset_check_keys == [dg.AssetCheckKey(dg.AssetKey("valkey_backup"), DRILL_CHECK),
                                                   dg.AssetCheckKey(dg.AssetKey("valkey_backup"), "tamper_evidence")]
    assert requests["valkey"].asset_selection == []
    with dg.build_schedule_context(instance=dg.DagsterInstance.get(), resources={"backups": BackupsResource()}) as ctx:
        data = schedule.evaluate_tick(ctx)
    assert {r.tags["store"] for r in data.run_requests or []} == {"postgres", "valkey"}


def test_drill_checks_are_per_partition_and_non_blocking() -> None:
    graph = defs.get_repository_def().asset_graph
    for store in ("postgres", "valkey", "neo4j", "qdrant", "opensearch"):
        key = dg.AssetCheckKey(dg.AssetKey(f"{store}_backup"), DRILL_CHECK)
        spec = graph.get_check_spec(key)
        assert spec.blocking is False and spec.partitions_def is not None


def test_backup_dir_is_untouched_by_a_drill(cb_env: dict[str, str], backup_dir: Path) -> None:
    catalog = backup("valkey", VK_KEYS[1])
    before = sorted(p.relative_to(backup_dir) for p in backup_dir.rglob("*") if p.name != "verification.json")
    assert run_drill(load_settings(), "valkey").passed
    after = sorted(p.relative_to(backup_dir) for p in backup_dir.rglob("*") if p.name != "verification.json")
    assert before == after and catalog.list("valkey", kind="safety") == []
