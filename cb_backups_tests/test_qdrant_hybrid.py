"""Qdrant collections the application can use after a restore: named dense + sparse vectors, payload
indexes, HNSW/quantization config and aliases; per-collection and full-storage snapshots."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from cb_backups.config.settings import QdrantSettings, VolumeSettings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import ConfigError, RestoreFailed
from cb_backups.core.model import Artifact, Target
from cb_backups.demo.sample_data import QDRANT_INDEXES, QDRANT_SPARSE, load_qdrant
from cb_backups.stores.base import DRILL
from cb_backups.stores.qdrant import QdrantStore
from cb_backups_tests.emulators.qdrant import QdrantEmulator, free_port
from cb_backups_tests.fixtures_qdrant import HybridCollection, make_client
from cb_backups_tests.test_qdrant import needs_emulator, spec, spec_checker, validate  # noqa: F401  (spec is a fixture)

REPO = Path(__file__).resolve().parents[1]
KEY = "2026-11-24"


def backup(store: QdrantStore, root: Path) -> Artifact:
    return Catalog(root).write("qdrant", KEY, store.backup)


def points(client: QdrantClient, collection: str) -> dict[Any, tuple[Any, Any]]:
    """Every point: id -> (payload, vectors), through the public API (dense, named and sparse)."""
    found: dict[Any, tuple[Any, Any]] = {}
    offset = None
    while True:
        page, offset = client.scroll(collection, limit=100, offset=offset, with_payload=True, with_vectors=True)
        for p in page:
            found[p.id] = (p.payload, p.vector)
        if offset is None:
            return found


def schema(client: QdrantClient, collection: str) -> dict[str, Any]:
    info = client.get_collection(collection)
    return {k: (v.data_type, v.params) for k, v in info.payload_schema.items()}


def aliases(client: QdrantClient) -> dict[str, str]:
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


# --- the emulator speaks Qdrant's API for the new parts -------------------------------------------------


def test_emulator_new_endpoints_match_openapi(spec: dict[str, Any], qdrant_url: str,  # noqa: F811
                                              qdrant_api_key: str | None, qdrant_hybrid: HybridCollection) -> None:
    headers = {"api-key": qdrant_api_key} if qdrant_api_key else {}
    name, alias = qdrant_hybrid.collection, qdrant_hybrid.alias
    with httpx.Client(base_url=qdrant_url, headers=headers, timeout=60) as http:
        check = spec_checker(http, spec)

        info = check("GET", f"/collections/{name}", "/collections/{collection_name}")["result"]
        assert set(info["config"]["params"]["vectors"]) == {"text", "code"}
        assert info["config"]["params"]["sparse_vectors"] == {QDRANT_SPARSE: {"modifier": "idf"}}
        assert set(info["payload_schema"]) == set(QDRANT_INDEXES)
        assert info["payload_schema"]["user_id"]["points"] == qdrant_hybrid.count
        listed = check("GET", "/aliases", "/aliases")["result"]["aliases"]
        assert {"alias_name": alias, "collection_name": name} in listed
        own = check("GET", f"/collections/{name}/aliases", "/collections/{collection_name}/aliases")
        assert own["result"]["aliases"] == [{"alias_name": alias, "collection_name": name}]
        # with_vectors is the documented alias of with_vector; a name list selects vectors
        scroll = check("POST", f"/collections/{alias}/points/scroll", "/collections/{collection_name}/points/scroll",
                       json={"limit": 2, "with_vectors": [QDRANT_SPARSE]})["result"]["points"]
        sparse = scroll[0]["vector"][QDRANT_SPARSE]
        assert set(scroll[0]["vector"]) == {QDRANT_SPARSE} and sparse["indices"] == sorted(sparse["indices"])
        index = check("PUT", f"/collections/{name}/index?wait=true", "/collections/{collection_name}/index",
                      json={"field_name": "rating", "field_schema": "integer"})
        assert index["result"]["status"] == "completed"
        check("DELETE", f"/collections/{name}/index/rating?wait=true",
              "/collections/{collection_name}/index/{field_name}")
        renamed = check("POST", "/collections/aliases", "/collections/aliases",
                        json={"actions": [{"rename_alias": {"old_alias_name": alias, "new_alias_name": alias + "2"}}]})
        assert renamed["result"] is True
        # atomic: the second action fails, so the first (delete) is not applied either
        failed = check("POST", "/collections/aliases", "/collections/aliases", "404",
                       json={"actions": [{"delete_alias": {"alias_name": alias + "2"}},
                                         {"create_alias": {"collection_name": "cbt_missing", "alias_name": alias}}]})
        assert "cbt_missing" in failed["status"]["error"]
        assert aliases(qdrant_hybrid.client)[alias + "2"] == name
        full = check("POST", "/snapshots?wait=true", "/snapshots")["result"]
        assert full["name"] in {s["name"] for s in check("GET", "/snapshots", "/snapshots")["result"]}
        download = http.get(f"/snapshots/{full['name']}")
        assert download.status_code == 200 and len(download.content) == full["size"]
        check("DELETE", f"/snapshots/{full['name']}?wait=true", "/snapshots/{snapshot_name}")
        bad = check("PUT", f"/collections/{name}/snapshots/recover", "/collections/{collection_name}/snapshots/recover",
                    "400", json={"location": "file:///etc/passwd"})
        assert "snapshots directory" in bad["status"]["error"]
        wrong = http.put(f"/collections/{name}/points?wait=true", json={"points": [
            {"id": 1, "vector": {QDRANT_SPARSE: {"indices": [1, 2], "values": [0.5]}}}]})
        assert wrong.status_code == 422
        for path, body in (("/healthz", "healthz check passed"), ("/livez", "healthz check passed"),
                           ("/readyz", "all shards are ready")):
            assert httpx.get(qdrant_url + path).text == body


# --- per-collection snapshots: in place and scratch ------------------------------------------------------


def test_round_trip_in_place_brings_back_vectors_indexes_and_aliases(
        tmp_path: Path, qdrant_settings: QdrantSettings, qdrant_hybrid: HybridCollection) -> None:
    store = QdrantStore(qdrant_settings)
    client, name, alias = qdrant_hybrid.client, qdrant_hybrid.collection, qdrant_hybrid.alias
    before, indexes = points(client, name), schema(client, name)
    artifact = backup(store, tmp_path / "backups")
    recorded = artifact.manifest.options["collections"][name]
    assert set(recorded["vectors"]) == {"text", "code"} and QDRANT_SPARSE in recorded["sparse_vectors"]
    assert recorded["hnsw_config"]["m"] == 32 and recorded["quantization_config"]["scalar"]["type"] == "int8"
    assert set(recorded["payload_schema"]) == set(QDRANT_INDEXES)
    assert artifact.manifest.markers["aliases"][alias] == name

    # the application's view breaks: points changed, an index dropped, the alias moved to another collection
    client.delete(name, points_selector=qm.PointIdsList(points=list(before)[:10]), wait=True)
    client.delete_payload_index(name, "app", wait=True)
    client.create_collection(name + "_other", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.DOT))
    client.update_collection_aliases(change_aliases_operations=[
        qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)),
        qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=name + "_other", alias_name=alias))])

    restored = store.restore(artifact, Target("in_place", {"collections": [name]}))

    assert restored == {"collections": {name: qdrant_hybrid.count}}
    assert aliases(client)[alias] == name
    assert client.count(alias, exact=True).count == qdrant_hybrid.count  # queried through the alias
    assert schema(client, name) == indexes
    assert points(client, name) == before  # payloads, named dense and sparse vectors, byte for byte


def test_round_trip_to_scratch_and_drill_names(tmp_path: Path, qdrant_settings: QdrantSettings,
                                               qdrant_hybrid: HybridCollection) -> None:
    store = QdrantStore(qdrant_settings)
    client, name, alias = qdrant_hybrid.client, qdrant_hybrid.collection, qdrant_hybrid.alias
    before = points(client, name)
    artifact = backup(store, tmp_path / "backups")
    target = store.scratch_target(DRILL)
    with store.scratch(artifact, Target(target.mode, {**target.options, "collections": [name]})) as scratch:
        assert scratch.counts() == {"collections": {name: qdrant_hybrid.count}}
        assert aliases(client)[alias + "__drill"] == name + "__drill"
        assert aliases(client)[alias] == name  # the live alias is untouched
        assert points(client, name + "__drill") == before
        assert schema(client, name + "__drill") == schema(client, name)
    assert not client.collection_exists(name + "__drill")
    assert alias + "__drill" not in aliases(client)  # dropped with its collection


@needs_emulator
def test_restore_that_loses_a_payload_index_fails(tmp_path: Path, qdrant_settings: QdrantSettings,
                                                  qdrant_emulator: QdrantEmulator,
                                                  qdrant_hybrid: HybridCollection) -> None:
    store = QdrantStore(qdrant_settings)
    artifact = backup(store, tmp_path / "backups")
    qdrant_emulator.faults.add("forget_payload_indexes")
    try:
        with pytest.raises(RestoreFailed) as caught:
            store.restore(artifact, Target("scratch", {"suffix": "__t", "collections": [qdrant_hybrid.collection]}))
    finally:
        qdrant_emulator.faults.discard("forget_payload_indexes")
        store.drop_collections([qdrant_hybrid.collection + "__t"])
    assert "payload index 'user_id' missing" in str(caught.value)


# --- full-storage snapshots ----------------------------------------------------------------------------------


def test_full_snapshot_round_trip(tmp_path: Path) -> None:
    """A real (emulated) server process restarted with the storage snapshot recovery, as Qdrant documents."""
    data, pidfile, log = tmp_path / "qdrant-storage", tmp_path / "qdrant.pid", tmp_path / "qdrant.log"
    data.mkdir()
    port, key = free_port(), "full-k3y"
    server = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m cb_backups_tests.emulators.qdrant "
              f"--port {port} --api-key {key} --storage {shlex.quote(str(data))}")
    launch = f" >>{shlex.quote(str(log))} 2>&1 & echo $! > {shlex.quote(str(pidfile))}"
    start = ("sh", "-c", server + launch)
    recover = ("sh", "-c", server + " --storage-snapshot {snapshot} --force-snapshot" + launch)
    stop = ("sh", "-c", f"pid=$(cat {shlex.quote(str(pidfile))}); kill $pid; while kill -0 $pid 2>/dev/null && "
                        "[ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do sleep 0.05; done")
    settings = QdrantSettings(url=f"http://127.0.0.1:{port}", api_key=key, method="full_snapshot")
    store = QdrantStore(settings, VolumeSettings(stop_command=stop, start_command=recover))
    subprocess.run(start, check=True)
    try:
        store.wait_ready(20)
        client = make_client(settings.url, key)
        load_qdrant(client, "memories_v1", "memories", scale=40, dense={"text": 16, "code": 8})
        client.create_collection("code_embeddings", vectors_config=qm.VectorParams(size=8, distance=qm.Distance.DOT))
        before, indexes = points(client, "memories_v1"), schema(client, "memories_v1")

        artifact = backup(store, tmp_path / "backups")
        assert artifact.manifest.method == "full_snapshot"
        assert artifact.manifest.inventory == {"collections": {"code_embeddings": 0, "memories_v1": 40}}
        assert artifact.manifest.markers["aliases"] == {"memories": "memories_v1"}
        assert client.list_full_snapshots() == []  # the server's copy was deleted once downloaded
        assert store.verify(artifact).ok

        # a drill from the full snapshot: its collection snapshots uploaded as __drill copies, aliases too
        with store.scratch(artifact, store.scratch_target(DRILL)) as scratch:
            assert scratch.counts() == artifact.manifest.inventory
            assert aliases(client)["memories__drill"] == "memories_v1__drill"
        assert not client.collection_exists("memories_v1__drill")

        client.delete_collection("code_embeddings")
        client.delete(client_name := "memories_v1", points_selector=qm.PointIdsList(points=list(before)[:5]),
                      wait=True)
        client.update_collection_aliases(change_aliases_operations=[
            qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name="memories"))])
        assert client.count(client_name, exact=True).count == 35

        restored = store.restore(artifact, Target("in_place"))

        assert restored == artifact.manifest.inventory
        client = make_client(settings.url, key)
        assert aliases(client) == {"memories": "memories_v1"}
        assert points(client, "memories") == before and schema(client, "memories_v1") == indexes
        assert client.collection_exists("code_embeddings")
    finally:
        if pidfile.exists():
            subprocess.run(stop, check=False, timeout=30)


def test_full_snapshot_needs_a_recovery_command(tmp_path: Path, qdrant_settings: QdrantSettings,
                                                qdrant_hybrid: HybridCollection) -> None:
    settings = QdrantSettings(url=qdrant_settings.url, api_key=qdrant_settings.api_key, method="full_snapshot")
    store = QdrantStore(settings, VolumeSettings(stop_command=("true",), start_command=("qdrant",)))
    qdrant_hybrid.client.create_collection(qdrant_hybrid.collection + "_2",
                                           vectors_config=qm.VectorParams(size=4, distance=qm.Distance.DOT))
    artifact = backup(store, tmp_path / "backups")
    assert store.verify(artifact).ok
    problems = store.compatibility(artifact, Target("in_place"))
    assert any("{snapshot}" in p for p in problems), problems
    with pytest.raises(ConfigError, match="start command that recovers"):
        store.restore(artifact, Target("in_place"))
    assert client_count(qdrant_hybrid) == qdrant_hybrid.count  # nothing was stopped or touched
    with pytest.raises(ConfigError, match="all of them"):
        store.restore(artifact, Target("in_place", {"collections": [qdrant_hybrid.collection]}))
    path = artifact.path(artifact.manifest.markers["file"])
    with open(path, "r+b") as fh:
        fh.seek(700)
        byte = fh.read(1)
        fh.seek(700)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = store.verify(artifact)
    assert not result.ok and "sha256" in " ".join(result.problems)


def client_count(hybrid: HybridCollection) -> int:
    return int(hybrid.client.count(hybrid.collection, exact=True).count)
