"""The weekly full system backup through Dagster: all five stores (real PostgreSQL and Valkey,
emulated or real Qdrant, OpenSearch and Neo4j) at once into one folder with one manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from opensearchpy import OpenSearch

from cb_backups.cli.runs import run_job
from cb_backups.config.settings import Neo4jSettings, OpenSearchSettings, QdrantSettings, load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.model import Artifact, Target
from cb_backups.core.partitions import weekly_sunday_0100
from cb_backups.core.specs import STORE_NAMES
from cb_backups.definitions import defs
from cb_backups.full_system.backup import FULL_CHECKS, FULL_SYSTEM, SEPARATOR, store_view, stores_in
from cb_backups.stores.qdrant import QdrantStore
from cb_backups.stores.registry import open_store
from cb_backups_tests.fixtures_neo4j import SEED_INVENTORY
from cb_backups_tests.fixtures_opensearch import SEED_COUNTS
from cb_backups_tests.fixtures_qdrant import SeededCollections
from cb_backups_tests.test_dagster_stores import store_env

KEY = weekly_sunday_0100.get_last_partition_key()


@pytest.fixture()
def all_stores(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
               qdrant_settings: QdrantSettings, opensearch_settings: OpenSearchSettings,
               neo4j_settings: Neo4jSettings, neo4j_seeded: dict, seeded_opensearch: dict[str, int],
               qdrant_seeded: SeededCollections) -> dict[str, str]:
    """All five stores configured and seeded; a fresh backup dir and Dagster instance."""
    extra = store_env(tmp_path, qdrant=qdrant_settings, opensearch=opensearch_settings, neo4j=neo4j_settings)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    assert load_settings().configured_stores() == list(STORE_NAMES)
    return {**cb_env, **extra}


def run_full() -> tuple[dg.ExecuteInProcessResult, dict[str, dg.AssetCheckEvaluation]]:
    assert KEY is not None
    result = run_job("full_system_backup_job", KEY, dg.DagsterInstance.get())
    return result, {e.check_name: e for e in result.get_asset_check_evaluations()}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_part(artifact: Artifact, store: str) -> list[str]:
    with store_view(artifact, store) as view:
        return open_store(store, load_settings()).verify(view).problems


def test_full_backup_of_all_five_stores_runs_concurrently(all_stores: dict[str, str],
                                                          qdrant_seeded: SeededCollections) -> None:
    result, checks = run_full()
    assert result.success
    assert set(checks) == set(FULL_CHECKS)
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    assert {c.partition for c in checks.values()} == {KEY}

    artifact = Catalog(Path(all_stores["CB_BACKUP_DIR"])).require(FULL_SYSTEM, KEY)
    manifest = artifact.manifest
    assert artifact.directory == Path(all_stores["CB_BACKUP_DIR"]) / FULL_SYSTEM / KEY
    assert stores_in(artifact) == list(STORE_NAMES)
    assert manifest.markers["skipped"] == {} and manifest.markers["failed"] == {}

    # one flat folder: <store>__<file> for every artifact, the manifest, the verification sidecar
    names = {f.name for f in manifest.files}
    entries = {p.name for p in artifact.directory.iterdir()}
    assert entries & names == names
    assert all(e == "verification.json" or e.startswith("manifest.json") for e in entries - names)  # catalog's own
    assert {n.split(SEPARATOR, 1)[0] for n in names} == set(STORE_NAMES)
    for expected in ("neo4j__neo4j.dump", "opensearch__snapshot.json", "valkey__dump.rdb"):
        assert expected in names
    assert any(n.startswith("postgres__postgres.dump") for n in names)  # .dump or .dump.zst by compression
    assert sum(n.startswith("qdrant__") and n.endswith(".snapshot") for n in names) >= len(qdrant_seeded.counts)
    # the manifest's checksums are the files' (recomputed here, independently)
    for record in manifest.files:
        path = artifact.path(record.name)
        assert (path.stat().st_size, sha256(path)) == (record.bytes, record.sha256), record.name
    on_disk = json.loads(artifact.path("manifest.json").read_text())
    assert on_disk["markers"]["services"]["postgres"] == [n for n in names if n.startswith("postgres__")]

    # counts, versions and consistency markers per store
    inv = manifest.inventory
    assert inv["postgres.tables"]["memories"] == 300
    assert inv["valkey.databases"]["db0"] > 0
    assert {k: inv[f"neo4j.{k}"] for k in SEED_INVENTORY} == SEED_INVENTORY
    assert {i: inv["opensearch.indices"][i] for i in SEED_COUNTS} == SEED_COUNTS
    assert {c: inv["qdrant.collections"][c] for c in qdrant_seeded.counts} == qdrant_seeded.counts
    assert {"postgres.server", "valkey.valkey", "neo4j.neo4j", "qdrant.qdrant", "opensearch.opensearch"} \
        <= set(manifest.versions)
    consistency = manifest.markers["consistency"]
    assert consistency["postgres"]["wal_lsn"] and consistency["valkey"]["lastsave"] > 0
    assert set(qdrant_seeded.counts) <= set(consistency["qdrant"]["snapshots"])
    assert consistency["opensearch"]["uuid"] and consistency["opensearch"]["snapshot"]
    for store in STORE_NAMES:
        part = manifest.markers["stores"][store]
        assert part["captured_at"] and part["files"], store

    # each part is its own store's artifact again: it verifies with that store's adapter, and restores
    for store in STORE_NAMES:
        assert verify_part(artifact, store) == [], store
    with store_view(artifact, "qdrant") as view:
        assert view.manifest.files[0].name.endswith(".snapshot") and view.manifest.store == "qdrant"
        collection = qdrant_seeded.name("memories")
        restored = QdrantStore(load_settings().qdrant).restore(  # type: ignore[arg-type]
            view, Target("scratch", {"collections": [collection], "suffix": "__full"}))
    assert restored == {"collections": {collection: qdrant_seeded.counts[collection]}}  # counted in the __full copy

    # concurrent, not one after another: every store started before any store finished
    runs = manifest.markers["timing"]["runs"]
    starts = [datetime.fromisoformat(r["started_at"]) for r in runs.values()]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in runs.values()]
    assert max(starts) < min(ends), runs
    timing = manifest.markers["timing"]
    print(f"\nfull system backup: wall {timing['wall_seconds']:.2f}s, slowest store "
          f"{timing['slowest_store']} {timing['slowest_seconds']:.2f}s, sum {timing['sum_seconds']:.2f}s; "
          f"wall/slowest {timing['wall_seconds'] / timing['slowest_seconds']:.2f}, "
          f"wall/sum {timing['wall_seconds'] / timing['sum_seconds']:.2f}")

    meta = result.asset_materializations_for_node("full_system_backup")[0].metadata
    assert meta["count/postgres.tables/memories"].value == 300
    assert meta["stores"].value == ", ".join(STORE_NAMES)
    assert meta["sha256"].value == {f.name: f.sha256 for f in manifest.files}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_one_failing_store_is_named_and_the_others_are_kept(all_stores: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("CB_QDRANT_URL", f"http://127.0.0.1:{port}")
    result, checks = run_full()
    # the good stores were committed and materialized; the blocking checks fail the run, naming qdrant
    assert result.asset_materializations_for_node("full_system_backup")[0].partition == KEY
    failed_steps = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed_steps == {"full_system_backup_checks"}
    assert checks["checksum"].passed
    for name in ("all_stores_verified", "all_stores_present"):
        check = checks[name]
        assert not check.passed and "qdrant" in (check.description or ""), (name, check.description)
        assert f"127.0.0.1:{port}" in (check.description or "")
        for good in ("postgres", "valkey", "neo4j", "opensearch"):
            assert f"{good} " not in (check.description or ""), check.description
    assert all_stores.get("CB_QDRANT_API_KEY", "-") not in str([c.description for c in checks.values()])

    catalog = Catalog(Path(all_stores["CB_BACKUP_DIR"]))
    artifact = catalog.require(FULL_SYSTEM, KEY)
    assert stores_in(artifact) == ["postgres", "valkey", "neo4j", "opensearch"]
    assert list(artifact.manifest.markers["failed"]) == ["qdrant"]
    assert not any(f.name.startswith("qdrant__") for f in artifact.manifest.files)
    for store in stores_in(artifact):
        assert verify_part(artifact, store) == [], store
    record = catalog.verification_of(artifact)
    assert record is not None and not record.ok  # retention never counts it as a good full backup

    # the same verdict again from the verify job (per partition), after qdrant is back
    monkeypatch.setenv("CB_QDRANT_URL", all_stores["CB_QDRANT_URL"])
    again = run_job("full_system_verify_job", KEY, dg.DagsterInstance.get())
    verdicts = {e.check_name: e.passed for e in again.get_asset_check_evaluations()}
    assert verdicts == {"all_stores_present": False, "all_stores_verified": False, "checksum": True}


def test_weekly_schedule_on_sunday_0100_running_by_default() -> None:
    schedule = defs.resolve_schedule_def("full_system_backup_schedule")
    assert schedule.cron_schedule == "0 1 * * 0"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "full_system_backup_job"
    job = defs.resolve_job_def("full_system_backup_job")
    assert job.partitions_def == weekly_sunday_0100


def test_full_system_offsite_copy_carries_the_opensearch_repository_files(
        offsite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, opensearch_server: dict,
        opensearch_settings: OpenSearchSettings, seeded_opensearch: dict[str, int]) -> None:
    """Issue 14 (6): the full system copy holds the OpenSearch part's repository files (shared blobs under
    full_system/_blobs/, listed, checked); with the repository folder, the cluster and the local copy gone,
    `restore opensearch --backup full_system:<key> --from offsite` brings every document back."""
    if opensearch_server["emulator"] is None:
        pytest.skip("needs a fresh cluster to restore into (the emulator starts one)")
    from cb_backups.core.blobs import BLOBS_FILE, read_blob_lists
    from cb_backups.core.model import no_progress
    from cb_backups.full_system.backup import write_full_backup
    from cb_backups.offsite import s3 as offsite
    from cb_backups.restore.execute import execute_restore
    from cb_backups.restore.plan import plan_restore
    from cb_backups.stores.opensearch import OpenSearchStore
    from cb_backups_tests.emulators.opensearch import OpenSearchEmulator

    for key, value in store_env(tmp_path, opensearch=opensearch_settings).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert KEY is not None
    full = write_full_backup(Catalog(settings.backup_dir), KEY, ["opensearch"], lambda n: open_store(n, settings),
                             lambda n: no_progress)
    lists = read_blob_lists(full)
    assert [name for name, _ in lists] == [f"opensearch{SEPARATOR}{BLOBS_FILE}"]
    blobs = lists[0][1]
    target = offsite.S3Target(settings.s3)
    copy = offsite.upload_artifact(full, target)
    assert copy.extra["blobs_uploaded"] == len({b.sha256 for b in blobs.files}) > 0
    assert offsite.verify_offsite(full, target, deep=True).ok

    data = next(b for b in blobs.files if b.path.rsplit("/", 1)[-1].startswith("__"))
    key = target.blob_key(FULL_SYSTEM, data.sha256)
    body = target.client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    target.client.delete_object(Bucket=target.bucket, Key=key)
    check = offsite.verify_offsite(full, target)
    assert not check.ok and any(data.path in p and "missing remotely" in p for p in check.problems), check.problems
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body, Metadata={"sha256": data.sha256})

    expected = full.manifest.inventory["opensearch.indices"]
    assert {i: expected[i] for i in SEED_COUNTS} == SEED_COUNTS
    location = Path(opensearch_settings.repository_settings["location"])
    shutil.rmtree(location)  # the repository folder ...
    shutil.rmtree(full.directory)  # ... and the local copy are gone; the old cluster is not used again
    with OpenSearchEmulator.start(path_repo=[Path(opensearch_server["repo_root"])]) as fresh:
        monkeypatch.setenv("CB_OPENSEARCH_URL", fresh.url)
        settings = load_settings()
        result = execute_restore(plan_restore(settings, "opensearch", f"full_system:{KEY}", source="offsite",
                                              target=Target("in_place")))
        assert result.ok and result.kind == FULL_SYSTEM, result.problems
        assert OpenSearchStore(settings.opensearch).inventory()["indices"] == expected  # type: ignore[arg-type]
        assert not [r for r in OpenSearch(hosts=[fresh.url]).snapshot.get_repository() if "restore" in r]
    shutil.rmtree(location, ignore_errors=True)  # the fresh cluster's safety snapshot
