"""OpenSearch adapter and emulator tests (emulator by default; CB_TEST_OPENSEARCH_URL for a real server)."""

from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from opensearchpy import OpenSearch, helpers
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cb_backups.config.settings import OpenSearchSettings, VolumeSettings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.errors import BackupFailed, RestoreRefused, StoreUnavailable
from cb_backups.core.model import Target
from cb_backups.stores.base import counts_problems
from cb_backups.stores.opensearch import SNAPSHOT_FILE, OpenSearchStore
from cb_backups_tests.conftest import specs_dir
from cb_backups_tests.fixtures_opensearch import SEED_COUNTS  # fixtures: conftest loads fixtures_opensearch

SPEC = Path(os.environ.get("CB_OPENSEARCH_SPEC") or specs_dir() / "opensearch" / "spec")
KEY = "2026-11-24"


# --- spec validation ---------------------------------------------------------------------


@functools.cache
def _resource(uri: str) -> Resource:
    return Resource.from_contents(yaml.safe_load(Path(urlsplit(uri).path).read_text()),
                                  default_specification=DRAFT202012)


def _check(document: str, pointer: str, instance: Any) -> None:
    """Validate `instance` against the schema at `pointer` inside the spec file `document`."""
    uri = (SPEC / document).resolve().as_uri() + "#" + pointer
    validator = Draft202012Validator({"$ref": uri}, registry=Registry(retrieve=_resource))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{pointer}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _response(namespace: str, operation: str, instance: Any) -> None:
    _check(f"namespaces/{namespace}.yaml",
           f"/components/responses/{operation}@200/content/application~1json/schema", instance)


def _error(instance: Any) -> None:
    _check("schemas/_common.yaml", "/components/schemas/ErrorResponseBase", instance)


@pytest.mark.skipif(not SPEC.is_dir(), reason=f"OpenSearch spec not found at {SPEC}")
def test_snapshot_responses_validate_against_the_spec(opensearch_client: OpenSearch, seeded_opensearch: dict,
                                                      opensearch_settings: OpenSearchSettings) -> None:
    client, repo = opensearch_client, opensearch_settings.repository
    missing = client.snapshot.get_repository(repository=repo, ignore=404)
    _error(missing)
    assert missing["status"] == 404 and missing["error"]["type"] == "repository_missing_exception"

    body = {"type": "fs", "settings": opensearch_settings.repository_settings}
    _response("snapshot", "snapshot.create_repository", client.snapshot.create_repository(repository=repo, body=body))
    got = client.snapshot.get_repository(repository=repo)
    _response("snapshot", "snapshot.get_repository", got)
    assert got[repo]["type"] == "fs" and got[repo]["settings"]["compress"] == "true"
    _response("snapshot", "snapshot.verify_repository", client.snapshot.verify_repository(repository=repo))

    created = client.snapshot.create(repository=repo, snapshot="spec-1", body={"indices": "memories,code_symbols"},
                                     wait_for_completion=True)
    _response("snapshot", "snapshot.create", created)
    info = created["snapshot"]
    for key in ("snapshot", "uuid", "version", "indices", "state", "shards", "start_time", "end_time"):
        assert key in info, key
    assert info["state"] == "SUCCESS" and info["shards"]["failed"] == 0
    assert info["shards"]["total"] == info["shards"]["successful"] == 3  # memories 2 + code_symbols 1
    assert sorted(info["indices"]) == ["code_symbols", "memories"]

    duplicate = client.snapshot.create(repository=repo, snapshot="spec-1", body={}, wait_for_completion=True,
                                       ignore=400)
    _error(duplicate)
    assert duplicate["error"]["type"] == "invalid_snapshot_name_exception"

    for name in ("spec-1", "_all"):
        listed = client.snapshot.get(repository=repo, snapshot=name)
        _response("snapshot", "snapshot.get", listed)
        assert [s["uuid"] for s in listed["snapshots"]] == [info["uuid"]]
    gone = client.snapshot.get(repository=repo, snapshot="nope", ignore=404)
    _error(gone)
    assert gone["error"]["type"] == "snapshot_missing_exception"

    refused = client.snapshot.restore(repository=repo, snapshot="spec-1", body={"indices": "memories"},
                                      wait_for_completion=True, ignore=500)
    _error(refused)
    assert "because an open index with same name already exists" in refused["error"]["reason"]

    closed = client.indices.close(index="memories")
    _response("indices", "indices.close", closed)
    count_closed = client.count(index="memories", ignore=400)
    assert count_closed["error"]["type"] == "index_closed_exception"
    restored = client.snapshot.restore(repository=repo, snapshot="spec-1", wait_for_completion=True,
                                       body={"indices": "*", "rename_pattern": "(.+)", "rename_replacement": "spec_$1"})
    _response("snapshot", "snapshot.restore", restored)
    assert sorted(restored["snapshot"]["indices"]) == ["spec_code_symbols", "spec_memories"]
    counted = client.count(index="spec_memories")
    _response("_core", "count", counted)
    assert counted["count"] == SEED_COUNTS["memories"]
    client.indices.open(index="memories")

    _response("snapshot", "snapshot.delete", client.snapshot.delete(repository=repo, snapshot="spec-1"))
    _response("snapshot", "snapshot.delete_repository", client.snapshot.delete_repository(repository=repo))


# --- adapter -------------------------------------------------------------------------------


def _add_docs(client: OpenSearch, index: str, count: int, prefix: str = "new") -> None:
    docs = ({"_index": index, "_id": f"{prefix}-{n}", "_source": {"content": f"added {n}"}} for n in range(count))
    helpers.bulk(client, docs, refresh=True)


def test_round_trip_in_place(tmp_path: Path, opensearch_client: OpenSearch, seeded_opensearch: dict,
                             opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    assert store.health(tmp_path).ok
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    manifest = artifact.manifest
    assert manifest.inventory == {"indices": SEED_COUNTS}
    assert manifest.method == "snapshot" and manifest.versions["opensearch"].startswith("2.")
    assert manifest.markers["snapshot"].startswith(f"cb-{KEY}-")
    assert manifest.markers["repository"] == opensearch_settings.repository
    record = json.loads(artifact.path(SNAPSHOT_FILE).read_text())
    assert record["uuid"] == manifest.markers["uuid"] and record["state"] == "SUCCESS"
    assert record["indices"] == ["code_symbols", "memories"] and record["shards"]["failed"] == 0
    assert checksum_problems(artifact) == []
    assert store.verify(artifact).ok

    _add_docs(opensearch_client, "memories", 25)
    opensearch_client.delete(index="code_symbols", id="code_symbols-0", refresh=True)
    assert store.inventory()["indices"] == {"memories": 325, "code_symbols": 199}

    restored = store.restore(artifact, Target("in_place"))
    assert counts_problems(manifest.inventory, restored) == []
    assert store.inventory() == manifest.inventory
    assert not opensearch_client.exists(index="memories", id="new-0")
    assert opensearch_client.exists(index="code_symbols", id="code_symbols-0")
    mapping = opensearch_client.indices.get_mapping(index="memories")["memories"]["mappings"]
    assert mapping["properties"]["user_id"]["type"] == "keyword"
    states = {r["index"]: r["status"] for r in opensearch_client.cat.indices(format="json")}
    assert states["memories"] == states["code_symbols"] == "open"


def test_scratch_restore_renames_into_drill_indices(tmp_path: Path, opensearch_client: OpenSearch,
                                                    seeded_opensearch: dict,
                                                    opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    _add_docs(opensearch_client, "memories", 5)

    restored = store.restore(artifact, Target("scratch"))
    assert restored == {"indices": SEED_COUNTS}  # keyed by the original names
    assert opensearch_client.count(index="drill_memories")["count"] == 300
    assert opensearch_client.count(index="drill_code_symbols")["count"] == 200
    assert opensearch_client.count(index="memories")["count"] == 305  # the live index was not touched

    with pytest.raises(RestoreRefused, match="already exist"):
        store.restore(artifact, Target("scratch"))
    assert sorted(store.drop_scratch(artifact, Target("scratch"))) == ["drill_code_symbols", "drill_memories"]
    assert not opensearch_client.indices.exists(index="drill_memories")


def test_missing_repository_is_registered_again(tmp_path: Path, opensearch_client: OpenSearch,
                                                seeded_opensearch: dict,
                                                opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    repo = opensearch_settings.repository
    assert store.ensure_repository() == "registered"
    assert store.ensure_repository() == "unchanged"
    catalog = Catalog(tmp_path)
    first = catalog.write("opensearch", KEY, store.backup)

    opensearch_client.snapshot.delete_repository(repository=repo)  # runbook: "repository not registered"
    assert store.verify(first).ok  # re-registers, and the snapshot files are still there
    assert repo in opensearch_client.snapshot.get_repository(repository=repo)

    opensearch_client.snapshot.delete_repository(repository=repo)
    second = catalog.write("opensearch", "2026-11-25", store.backup)
    assert second.manifest.options["repository_registration"] == "registered"
    assert store.verify(second).ok

    drifted = {"type": "fs", "settings": {**opensearch_settings.repository_settings, "compress": False}}
    opensearch_client.snapshot.create_repository(repository=repo, body=drifted)
    assert store.ensure_repository() == "re-registered"
    assert opensearch_client.snapshot.get_repository(repository=repo)[repo]["settings"]["compress"] == "true"


def test_snapshot_deleted_from_repository_fails_verify(tmp_path: Path, seeded_opensearch: dict,
                                                       opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    assert store.verify(artifact).ok
    assert store.delete_snapshot(artifact.manifest.markers["snapshot"]) is True
    assert store.delete_snapshot(artifact.manifest.markers["snapshot"]) is False  # already gone: idempotent

    result = store.verify(artifact)
    assert not result.ok
    assert "not found" in result.problems[0] and artifact.manifest.markers["snapshot"] in result.problems[0]
    with pytest.raises(RestoreRefused, match="not found"):
        store.restore(artifact, Target("in_place"))


def test_snapshot_taken_again_under_same_name_fails_verify(tmp_path: Path, opensearch_client: OpenSearch,
                                                           seeded_opensearch: dict,
                                                           opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    name = artifact.manifest.markers["snapshot"]
    store.delete_snapshot(name)
    opensearch_client.snapshot.create(repository=opensearch_settings.repository, snapshot=name,
                                      body={"indices": "memories"}, wait_for_completion=True)
    result = store.verify(artifact)
    assert not result.ok and any("uuid" in p for p in result.problems)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_a_clear_store_unavailable(tmp_path: Path) -> None:
    port = _free_port()
    settings = OpenSearchSettings(url=f"http://admin:s3cret-pw@127.0.0.1:{port}", user="admin", password="s3cret-pw",
                                  repository_settings={"location": str(tmp_path / "repo")})
    store = OpenSearchStore(settings)
    with pytest.raises(StoreUnavailable) as caught:
        store.inventory()
    message = str(caught.value)
    assert message.startswith("opensearch: server unavailable") and f"http://127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        Catalog(tmp_path / "catalog").write("opensearch", KEY, store.backup)
    health = store.health(tmp_path)
    assert not health.ok and f"127.0.0.1:{port}" in health.items["cluster health"]
    assert "s3cret-pw" not in " ".join(health.problems)


def test_corrupted_snapshot_record_is_refused_and_target_untouched(tmp_path: Path, opensearch_client: OpenSearch,
                                                                   seeded_opensearch: dict,
                                                                   opensearch_settings: OpenSearchSettings) -> None:
    store = OpenSearchStore(opensearch_settings)
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    _add_docs(opensearch_client, "memories", 3)
    path = artifact.path(SNAPSHOT_FILE)
    path.write_text(path.read_text().replace('"SUCCESS"', '"SUCCES').replace("}", "", 1))

    assert not store.verify(artifact).ok
    with pytest.raises(RestoreRefused, match="target untouched") as caught:
        store.restore(artifact, Target("in_place"))
    assert SNAPSHOT_FILE in str(caught.value)
    assert store.inventory()["indices"] == {"memories": 303, "code_symbols": 200}
    states = {r["index"]: r["status"] for r in opensearch_client.cat.indices(format="json")}
    assert states["memories"] == "open" and opensearch_client.exists(index="memories", id="new-0")


def test_failed_shards_fail_the_backup(tmp_path: Path, opensearch_server: dict, opensearch_client: OpenSearch,
                                       seeded_opensearch: dict, opensearch_settings: OpenSearchSettings) -> None:
    if opensearch_server["emulator"] is None:
        pytest.skip("needs the emulator's fault injection")
    opensearch_client.transport.perform_request("POST", "/_emulator/faults",
                                                body={"snapshot_shard_failures": ["memories"]})
    try:
        with pytest.raises(BackupFailed, match=r"PARTIAL with 2 of 3 shards failed: memories\[0\]"):
            Catalog(tmp_path).write("opensearch", KEY, OpenSearchStore(opensearch_settings).backup)
    finally:
        opensearch_client.transport.perform_request("POST", "/_emulator/faults", body={})
    assert Catalog(tmp_path).get("opensearch", KEY) is None


def test_repository_outside_path_repo_is_a_clear_backup_failure(tmp_path: Path, opensearch_url: str,
                                                               seeded_opensearch: dict) -> None:
    settings = OpenSearchSettings(url=opensearch_url, repository="cbtestoutside",
                                  repository_settings={"location": "/definitely/not/in/path_repo"})
    with pytest.raises(BackupFailed, match=r"cannot register snapshot repository \[cbtestoutside\].*path.repo"):
        Catalog(tmp_path).write("opensearch", KEY, OpenSearchStore(settings).backup)


def test_emulator_snapshots_survive_a_restart(tmp_path: Path, opensearch_server: dict, seeded_opensearch: dict,
                                              opensearch_settings: OpenSearchSettings) -> None:
    if opensearch_server["emulator"] is None:
        pytest.skip("emulator only")
    from cb_backups_tests.emulators.opensearch import OpenSearchEmulator

    artifact = Catalog(tmp_path).write("opensearch", KEY, OpenSearchStore(opensearch_settings).backup)
    with OpenSearchEmulator.start(path_repo=[Path(opensearch_server["repo_root"])]) as fresh:
        store = OpenSearchStore(OpenSearchSettings(**{**opensearch_settings.__dict__, "url": fresh.url}))
        assert store.inventory() == {"indices": {}}
        assert store.verify(artifact).ok  # registers the repository on the new cluster, finds the snapshot
        assert store.restore(artifact, Target("in_place")) == {"indices": SEED_COUNTS}


def test_volume_method_archives_the_data_folder(tmp_path: Path, opensearch_url: str, seeded_opensearch: dict) -> None:
    data = tmp_path / "data"
    (data / "nodes" / "0").mkdir(parents=True)
    (data / "nodes" / "0" / "segments_1").write_bytes(os.urandom(4096))
    settings = OpenSearchSettings(url=opensearch_url, method="volume")
    store = OpenSearchStore(settings, VolumeSettings(data_dir=str(data)))
    artifact = Catalog(tmp_path / "catalog").write("opensearch", KEY, store.backup)
    assert artifact.manifest.method == "volume" and artifact.manifest.inventory == {"indices": SEED_COUNTS}
    assert store.verify(artifact).ok
    scratch = tmp_path / "scratch"
    store.restore(artifact, Target("scratch", {"data_dir": str(scratch)}))
    assert (scratch / "nodes" / "0" / "segments_1").read_bytes() == (data / "nodes" / "0" / "segments_1").read_bytes()


def test_failed_restore_reopens_the_indices_it_closed(tmp_path: Path, opensearch_server: dict,
                                                      opensearch_client: OpenSearch, seeded_opensearch: dict,
                                                      opensearch_settings: OpenSearchSettings) -> None:
    if opensearch_server["emulator"] is None:
        pytest.skip("damages the repository's files directly")
    from cb_backups.stores.opensearch import RestoreFailed

    store = OpenSearchStore(opensearch_settings)
    artifact = Catalog(tmp_path).write("opensearch", KEY, store.backup)
    opensearch_client.transport.perform_request("POST", "/_emulator/faults", body={"restore_failures": ["memories"]})
    try:
        _add_docs(opensearch_client, "memories", 2)
        with pytest.raises(RestoreFailed, match=r"memories.*reopened"):
            store.restore(artifact, Target("in_place"))
    finally:
        opensearch_client.transport.perform_request("POST", "/_emulator/faults", body={})
    assert opensearch_client.count(index="memories")["count"] == 302  # reopened, untouched
