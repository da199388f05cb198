"""Qdrant adapter against the Qdrant emulator (or a real server via CB_TEST_QDRANT_URL)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from qdrant_client import models as qm

from cb_backups.config.settings import QdrantSettings, VolumeSettings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.errors import BackupFailed, CbBackupsError, ConfigError, RestoreRefused, StoreUnavailable
from cb_backups.core.model import Artifact, Target
from cb_backups.stores.base import Store
from cb_backups.stores.qdrant import QdrantStore, scan_archive
from cb_backups_tests.conftest import specs_dir
from cb_backups_tests.emulators.qdrant import QdrantEmulator, free_port
from cb_backups_tests.fixtures_qdrant import SeededCollections, app_points, make_client, seed_collection

SPEC = specs_dir() / "qdrant-1.12" / "openapi.json"
REPO = Path(__file__).resolve().parents[1]
KEY = "2026-11-24"

needs_emulator = pytest.mark.skipif(bool(os.environ.get("CB_TEST_QDRANT_URL")),
                                    reason="fault injection needs the emulator")


# --- helpers ---------------------------------------------------------------------------------


def _openapi_nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` -> JSON Schema `anyOf [..., null]` (recursively)."""
    if isinstance(node, list):
        return [_openapi_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _openapi_nullable(v) for k, v in node.items() if k not in ("nullable", "example", "format")}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]} if converted else {"type": "null"}
    return converted


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


def spec_checker(http: httpx.Client, spec: dict) -> Callable[..., Any]:
    """`check(method, url, spec_path, status="200", **request)`: the request's status, and its body validated
    against the OpenAPI spec's response schema for that path; returns the body."""
    def check(method: str, url: str, path: str, status: str = "200", **kw: Any) -> Any:
        response = http.request(method, url, **kw)
        assert str(response.status_code) == status, response.text
        body = response.json()
        validate(spec, path, method.lower(), status, body)
        return body
    return check


def validate(spec: dict[str, Any], path: str, method: str, status: str, body: Any) -> None:
    responses = spec["paths"][path][method]["responses"]
    response = responses.get(status) or responses.get(f"{status[0]}XX") or responses["default"]
    schema = response["content"]["application/json"]["schema"]
    root = {**_openapi_nullable(schema), "components": _openapi_nullable(spec["components"])}
    jsonschema.Draft202012Validator(root).validate(body)


def ours(inventory: dict[str, dict[str, int]], seeded: SeededCollections) -> dict[str, int]:
    return {k: v for k, v in inventory["collections"].items() if k in seeded.counts}


def backup(store: QdrantStore, root: Path) -> Artifact:
    return Catalog(root).write("qdrant", KEY, store.backup)


def assert_clean_error(exc: BaseException, *needles: str, secret: str | None = None) -> None:
    message = str(exc)
    assert message.startswith("qdrant: ")
    for needle in needles:
        assert needle in message, message
    assert "Traceback" not in message and "UnexpectedResponse" not in message
    assert exc.__cause__ is None and exc.__suppress_context__  # no client traceback chained
    if secret:
        assert secret not in message


# --- (1) the emulator's bodies validate against Qdrant's OpenAPI spec ---------------------------


def test_response_bodies_match_openapi(spec: dict[str, Any], qdrant_url: str, qdrant_api_key: str | None,
                                       qdrant_seeded: SeededCollections) -> None:
    name = qdrant_seeded.name("memories")
    headers = {"api-key": qdrant_api_key} if qdrant_api_key else {}
    with httpx.Client(base_url=qdrant_url, headers=headers, timeout=60) as http:
        check = spec_checker(http, spec)

        check("GET", "/", "/")
        listed = check("GET", "/collections", "/collections")
        assert name in {c["name"] for c in listed["result"]["collections"]}
        info = check("GET", f"/collections/{name}", "/collections/{collection_name}")
        assert info["result"]["config"]["params"]["vectors"]["size"] == 384
        count = check("POST", f"/collections/{name}/points/count", "/collections/{collection_name}/points/count",
                      json={"exact": True})
        assert count["result"]["count"] == 300
        scroll = check("POST", f"/collections/{name}/points/scroll", "/collections/{collection_name}/points/scroll",
                       json={"limit": 7, "with_payload": True, "with_vector": True})
        assert len(scroll["result"]["points"]) == 7 and scroll["result"]["next_page_offset"] is not None
        upsert = check("PUT", f"/collections/{name}/points?wait=true", "/collections/{collection_name}/points",
                       json={"points": [{"id": 999_001, "vector": [0.1] * 384, "payload": {"x": 1}}]})
        assert upsert["result"]["status"] == "completed"
        created = check("POST", f"/collections/{name}/snapshots?wait=true", "/collections/{collection_name}/snapshots")
        snapshot = created["result"]
        assert len(snapshot["checksum"]) == 64 and snapshot["size"] > 0
        listing = check("GET", f"/collections/{name}/snapshots", "/collections/{collection_name}/snapshots")
        assert snapshot["name"] in {s["name"] for s in listing["result"]}
        download = http.get(f"/collections/{name}/snapshots/{snapshot['name']}")
        assert download.status_code == 200 and len(download.content) == snapshot["size"]
        deleted = check("DELETE", f"/collections/{name}/snapshots/{snapshot['name']}?wait=true",
                        "/collections/{collection_name}/snapshots/{snapshot_name}")
        assert deleted["result"] is True
        missing = check("GET", "/collections/cbt_no_such_collection", "/collections/{collection_name}", "404")
        assert missing["status"]["error"] == "Not found: Collection `cbt_no_such_collection` doesn't exist!"
        check("POST", "/collections/cbt_no_such_collection/points/count",
              "/collections/{collection_name}/points/count", "404", json={"exact": True})
        check("POST", "/collections/cbt_no_such_collection/snapshots", "/collections/{collection_name}/snapshots",
              "404")


def test_emulator_refuses_what_qdrant_refuses(qdrant_url: str, qdrant_api_key: str | None,
                                              qdrant_seeded: SeededCollections, spec: dict[str, Any]) -> None:
    name = qdrant_seeded.name("code_embeddings")
    headers = {"api-key": qdrant_api_key} if qdrant_api_key else {}
    with httpx.Client(base_url=qdrant_url, headers=headers, timeout=60) as http:
        wrong_dim = http.put(f"/collections/{name}/points?wait=true",
                             json={"points": [{"id": 1, "vector": [0.1, 0.2], "payload": {}}]})
        assert wrong_dim.status_code == 400 and "dimension" in wrong_dim.json()["status"]["error"]
        # an upload with a checksum that is not the file's is refused; the collection stays as it was
        snapshot = http.post(f"/collections/{name}/snapshots", params={"wait": "true"}).json()["result"]
        data = http.get(f"/collections/{name}/snapshots/{snapshot['name']}").content
        http.delete(f"/collections/{name}/snapshots/{snapshot['name']}")
        refused = http.post(f"/collections/{name}/snapshots/upload",
                            params={"priority": "snapshot", "wait": "true", "checksum": "0" * 64},
                            files={"snapshot": ("x.snapshot", data, "application/octet-stream")})
        assert refused.status_code == 400
        validate(spec, "/collections/{collection_name}/snapshots/upload", "post", "400", refused.json())
        assert refused.json()["status"]["error"].startswith("Checksum mismatch")
        assert qdrant_seeded.client.count(name, exact=True).count == 200
    if qdrant_api_key:
        anonymous = httpx.get(f"{qdrant_url}/collections", timeout=10)
        assert anonymous.status_code == 401


# --- (2) round trip in place, (6) no server-side snapshots left ------------------------------------


def test_backup_and_restore_in_place(tmp_path: Path, qdrant_settings: QdrantSettings,
                                     qdrant_seeded: SeededCollections) -> None:
    store = QdrantStore(qdrant_settings)
    assert isinstance(store, Store)
    client = qdrant_seeded.client
    memories, code = qdrant_seeded.name("memories"), qdrant_seeded.name("code_embeddings")
    original = client.retrieve(code, ids=[5, 6, 7], with_vectors=True)

    artifact = backup(store, tmp_path / "backups")

    manifest = artifact.manifest
    assert ours(manifest.inventory, qdrant_seeded) == qdrant_seeded.counts
    assert manifest.method == "snapshot" and manifest.versions["qdrant"]
    assert set(qdrant_seeded.counts) <= set(manifest.markers["snapshots"])
    for collection in qdrant_seeded.counts:
        record = artifact.file(manifest.markers["files"][collection])
        assert record.sha256 == manifest.markers["checksums"][collection]  # Qdrant's checksum == ours
        assert oct(artifact.path(record.name).stat().st_mode & 0o777) == "0o600"
        assert client.list_snapshots(collection) == []  # (6) server-side snapshot deleted
    assert store.verify(artifact).ok
    assert checksum_problems(artifact) == []
    if qdrant_settings.api_key:
        assert qdrant_settings.api_key not in (artifact.directory / "manifest.json").read_text()

    # change the data: new points, deleted points
    client.upsert(code, points=app_points("code_embeddings", 256, 25, seed=99, start=1000), wait=True)
    client.delete(code, points_selector=qm.PointIdsList(points=[5, 6, 7]), wait=True)
    client.delete(memories, points_selector=qm.FilterSelector(
        filter=qm.Filter(must=[qm.FieldCondition(key="app", match=qm.MatchValue(value="cli"))])), wait=True)
    assert client.count(code, exact=True).count == 222
    assert client.count(memories, exact=True).count == 200

    restored = store.restore(artifact, Target("in_place", {"collections": sorted(qdrant_seeded.counts)}))

    assert restored == {"collections": qdrant_seeded.counts}
    assert store.inventory()["collections"][code] == manifest.inventory["collections"][code]
    assert client.retrieve(code, ids=[1001, 1010, 1024]) == []  # newer points are gone
    back = client.retrieve(code, ids=[5, 6, 7], with_vectors=True)
    assert [(p.id, p.payload, p.vector) for p in back] == [(p.id, p.payload, p.vector) for p in original]
    cli = client.count(memories, count_filter=qm.Filter(must=[qm.FieldCondition(
        key="app", match=qm.MatchValue(value="cli"))]), exact=True).count
    assert cli == 100


# --- (3) scratch restore --------------------------------------------------------------------------


def test_restore_to_scratch_with_suffix(tmp_path: Path, qdrant_settings: QdrantSettings,
                                        qdrant_seeded: SeededCollections) -> None:
    store = QdrantStore(qdrant_settings)
    artifact = backup(store, tmp_path / "backups")
    client = qdrant_seeded.client
    code = qdrant_seeded.name("code_embeddings")
    client.delete(code, points_selector=qm.PointIdsList(points=list(range(1, 51))), wait=True)

    wanted = sorted(qdrant_seeded.counts)
    restored = store.restore(artifact, Target("scratch", {"suffix": "__t", "collections": wanted}))

    assert restored == {"collections": qdrant_seeded.counts}  # counted in the __t copies, under the backup's names
    assert client.count(code, exact=True).count == 150  # the live collection is untouched
    assert client.count(f"{code}__t", exact=True).count == 200
    info = client.get_collection(f"{code}__t")
    assert info.config.params.vectors.size == 256
    assert sorted(store.drop_collections([f"{c}__t" for c in wanted])) == [f"{c}__t" for c in wanted]
    assert not client.collection_exists(f"{code}__t")
    with pytest.raises(ConfigError, match="suffix"):
        store.restore(artifact, Target("scratch", {"suffix": ""}))
    with pytest.raises(ConfigError, match="mode"):
        store.restore(artifact, Target("elsewhere"))


# --- (4) checksum mismatches --------------------------------------------------------------------------


def test_damaged_snapshot_file_fails_verify_and_refuses_restore(tmp_path: Path, qdrant_settings: QdrantSettings,
                                                                qdrant_seeded: SeededCollections) -> None:
    store = QdrantStore(qdrant_settings)
    artifact = backup(store, tmp_path / "backups")
    memories = qdrant_seeded.name("memories")
    path = artifact.path(artifact.manifest.markers["files"][memories])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    result = store.verify(artifact)
    assert not result.ok
    assert any(memories in p and "sha256" in p for p in result.problems), result.problems

    qdrant_seeded.client.delete(memories, points_selector=qm.PointIdsList(
        points=[p.id for p in qdrant_seeded.client.scroll(memories, limit=10)[0]]), wait=True)
    with pytest.raises(RestoreRefused, match=memories):
        store.restore(artifact, Target("in_place", {"collections": [memories]}))
    assert qdrant_seeded.client.count(memories, exact=True).count == 290  # target untouched


def test_truncated_snapshot_is_not_a_readable_archive(tmp_path: Path, qdrant_settings: QdrantSettings,
                                                      qdrant_seeded: SeededCollections) -> None:
    store = QdrantStore(qdrant_settings)
    artifact = backup(store, tmp_path / "backups")
    code = qdrant_seeded.name("code_embeddings")
    path = artifact.path(artifact.manifest.markers["files"][code])
    _digest, size, members = scan_archive(path)
    assert members >= 1 and size == path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(700)
    problems = store.verify(artifact).problems
    assert any(code in p for p in problems), problems


@needs_emulator
@pytest.mark.parametrize("fault", ["misreport_checksum", "corrupt_download"])
def test_checksum_mismatch_during_backup_fails(fault: str, tmp_path: Path, qdrant_settings: QdrantSettings,
                                               qdrant_emulator: QdrantEmulator,
                                               qdrant_seeded: SeededCollections) -> None:
    store = QdrantStore(qdrant_settings)
    qdrant_emulator.faults.add(fault)
    try:
        with pytest.raises(BackupFailed) as caught:
            backup(store, tmp_path / "backups")
    finally:
        qdrant_emulator.faults.discard(fault)
    message = str(caught.value)
    assert "collection 'cbt" in message and "sha256" in message and "reported" in message
    catalog = Catalog(tmp_path / "backups")
    assert catalog.list("qdrant") == []
    assert [p.name for p in (tmp_path / "backups" / "qdrant").iterdir() if p.name.startswith(".staging")] == []
    for collection in qdrant_seeded.counts:  # nothing left behind on the server either
        assert qdrant_seeded.client.list_snapshots(collection) == []


# --- (5) clear errors -------------------------------------------------------------------------------


def test_unknown_collection_and_bad_key_give_clear_errors(qdrant_settings: QdrantSettings) -> None:
    store = QdrantStore(qdrant_settings)
    with pytest.raises(StoreUnavailable) as caught:
        store.count("cbt_no_such_collection")
    assert_clean_error(caught.value, "cbt_no_such_collection", qdrant_settings.url, "404", "doesn't exist")

    if qdrant_settings.api_key:
        wrong = QdrantStore(QdrantSettings(url=qdrant_settings.url, api_key="wrong-k3y-do-not-print"))
        with pytest.raises(StoreUnavailable) as caught:
            wrong.inventory()
        assert_clean_error(caught.value, "401", "API key", secret="wrong-k3y-do-not-print")
        health = wrong.health(Path("/tmp"))
        assert not health.ok and "api access" in " ".join(health.problems)


def test_unreachable_server(tmp_path: Path, qdrant_settings: QdrantSettings,
                            qdrant_seeded: SeededCollections) -> None:
    artifact = backup(QdrantStore(qdrant_settings), tmp_path / "backups")
    url = f"http://127.0.0.1:{free_port()}"
    store = QdrantStore(QdrantSettings(url=url, api_key="s3cret-never-shown"))
    for call in (store.inventory, lambda: store.backup(tmp_path)):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert_clean_error(caught.value, url, "cannot reach", secret="s3cret-never-shown")
    health = store.health(tmp_path)
    assert not health.ok and url in health.items["server reachable"]
    assert health.items["disk space"] == "ok"
    with pytest.raises(RestoreRefused, match="cannot reach"):
        store.restore(artifact, Target("scratch"))
    with pytest.raises(ConfigError, match="method"):
        QdrantStore(QdrantSettings(url=url, method="docker-cp"))


def test_health_ok(tmp_path: Path, qdrant_settings: QdrantSettings) -> None:
    health = QdrantStore(qdrant_settings).health(tmp_path)
    assert health.ok, health.problems


# --- (7) the runbook's volume method -------------------------------------------------------------------


def _sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def test_volume_method_round_trip(tmp_path: Path) -> None:
    """Stop, tar, start a real (emulated) server process whose state lives in the data folder."""
    data, pidfile, log = tmp_path / "qdrant-storage", tmp_path / "qdrant.pid", tmp_path / "qdrant.log"
    data.mkdir()
    port, key = free_port(), "vol-k3y"
    start = _sh(f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m cb_backups_tests.emulators.qdrant "
                f"--port {port} --api-key {key} --storage {shlex.quote(str(data))} >>{shlex.quote(str(log))} 2>&1 & "
                f"echo $! > {shlex.quote(str(pidfile))}")
    # wait until the process is gone (or a zombie nobody reaped yet: its files are closed)
    stop = _sh(f"pid=$(cat {shlex.quote(str(pidfile))}); kill $pid; while kill -0 $pid 2>/dev/null && "
               "[ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do sleep 0.05; done")
    settings = QdrantSettings(url=f"http://127.0.0.1:{port}", api_key=key, method="volume")
    store = QdrantStore(settings, VolumeSettings(data_dir=str(data), stop_command=stop, start_command=start))
    subprocess.run(start, check=True)
    try:
        store.wait_ready(20)
        client = make_client(settings.url, key)
        seed_collection(client, "memories", "memories", 16, 60)
        seed_collection(client, "code_embeddings", "code_embeddings", 8, 40)

        artifact = backup(store, tmp_path / "backups")
        assert artifact.manifest.method == "volume"
        assert artifact.manifest.inventory == {"collections": {"code_embeddings": 40, "memories": 60}}
        assert store.verify(artifact).ok
        store.wait_ready(20)  # the start command brought it back

        client = make_client(settings.url, key)
        client.upsert("code_embeddings", points=app_points("code_embeddings", 8, 5, seed=3, start=500), wait=True)
        client.delete("code_embeddings", points_selector=qm.PointIdsList(points=[1, 2]), wait=True)
        client.delete_collection("memories")

        restored = store.restore(artifact, Target("in_place"))

        assert restored == artifact.manifest.inventory
        client = make_client(settings.url, key)
        assert client.retrieve("code_embeddings", ids=[501, 505]) == []
        assert [p.id for p in client.retrieve("code_embeddings", ids=[1, 2])] == [1, 2]

        scratch = tmp_path / "scratch-volume"
        inventory = store.restore(artifact, Target("scratch", {"data_dir": str(scratch)}))
        assert (scratch / "collections" / "memories" / "state.json").is_file()
        assert inventory["volume"]["entries"] > 0
    finally:
        if pidfile.exists():
            subprocess.run(stop, check=False, timeout=30)


def test_volume_start_runs_even_when_tar_fails(tmp_path: Path, qdrant_settings: QdrantSettings) -> None:
    data, started = tmp_path / "data", tmp_path / "started"
    data.mkdir()
    (data / "segment.bin").write_bytes(b"x" * 1000)
    # the stop command takes the volume away, so the tar fails after the service was stopped
    volume = VolumeSettings(data_dir=str(data), stop_command=("mv", str(data), str(tmp_path / "moved")),
                            start_command=("touch", str(started)))
    store = QdrantStore(QdrantSettings(url=qdrant_settings.url, api_key=qdrant_settings.api_key, method="volume"),
                        volume)
    with pytest.raises(CbBackupsError, match="data_dir"):
        backup(store, tmp_path / "backups")
    assert started.exists()
    assert Catalog(tmp_path / "backups").list("qdrant") == []

    # a start command that fails is reported, after a good tar
    (tmp_path / "moved").rename(data)
    failing = QdrantStore(store.settings, VolumeSettings(data_dir=str(data), stop_command=("true",),
                                                         start_command=("false",)))
    with pytest.raises(BackupFailed, match="did not start again"):
        backup(failing, tmp_path / "backups")


def test_volume_restore_refuses_damaged_archive(tmp_path: Path, qdrant_settings: QdrantSettings) -> None:
    data = tmp_path / "data"
    (data / "collections").mkdir(parents=True)
    (data / "collections" / "keep.txt").write_text("live data")
    ran = tmp_path / "ran"
    store = QdrantStore(QdrantSettings(url=qdrant_settings.url, api_key=qdrant_settings.api_key, method="volume"),
                        VolumeSettings(data_dir=str(data), stop_command=("touch", str(ran)), start_command=("true",)))
    artifact = backup(store, tmp_path / "backups")
    ran.unlink()
    archive = artifact.path(artifact.manifest.files[0].name)
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(RestoreRefused):
        store.restore(artifact, Target("in_place"))
    assert not ran.exists()  # the service was never stopped
    assert (data / "collections" / "keep.txt").read_text() == "live data"


def test_emulator_standalone_cli(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cb_backups_tests.emulators.qdrant", "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        assert body["title"] == "qdrant - vector search engine" and body["version"].startswith("1.12")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
