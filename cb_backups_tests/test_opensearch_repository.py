"""OpenSearch backups that contain the data: the snapshot repository's files listed, checked, copied
off-site incrementally, restorable on a fresh cluster with the repository folder gone (issue 14).

Against the emulator (whose fs repository follows OpenSearch 2.x's layout) or, with
CB_TEST_OPENSEARCH_URL and CB_TEST_OPENSEARCH_REPO readable here, a real server; S3 is SeaweedFS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opensearchpy import OpenSearch, helpers

from cb_backups.config.retention import OFFSITE, RetentionPolicy
from cb_backups.config.settings import OpenSearchSettings, S3Settings
from cb_backups.core.blobs import BLOBS_FILE, read_blob_list
from cb_backups.core.catalog import Catalog
from cb_backups.core.model import Artifact, Target
from cb_backups.core.specs import spec_for
from cb_backups.offsite import s3 as offsite
from cb_backups.retention.apply import apply_offsite
from cb_backups.retention.policy import PrunePlan
from cb_backups.stores.opensearch import OpenSearchStore
from cb_backups.stores.opensearch_files import GENERATIONS_FILE
from cb_backups_tests.servers.s3 import SeaweedS3

BENCH = "bench_docs"
BENCH_DOCS = 2000  # ~1 MB of documents in one shard


def _bench_docs(client: OpenSearch, start: int, stop: int, version: int) -> None:
    docs = ({"_index": BENCH, "_id": f"doc-{n:06d}",
             "_source": {"content": f"v{version} document {n} " + "lorem ipsum dolor sit amet " * 16, "n": n}}
            for n in range(start, stop))
    helpers.bulk(client, docs, refresh=True)


@pytest.fixture
def bench_index(opensearch_client: OpenSearch) -> Iterator[None]:
    opensearch_client.indices.delete(index=BENCH, ignore_unavailable=True)
    opensearch_client.indices.create(index=BENCH, body={"settings": {"number_of_shards": 1,
                                                                     "number_of_replicas": 0}})
    _bench_docs(opensearch_client, 0, BENCH_DOCS, 1)
    yield
    opensearch_client.indices.delete(index=BENCH, ignore_unavailable=True)


@pytest.fixture
def readable_repo(opensearch_server: dict, opensearch_settings: OpenSearchSettings) -> Path:
    location = Path(opensearch_settings.repository_settings["location"])
    if opensearch_server["emulator"] is None and not Path(opensearch_server["repo_root"]).is_dir():
        pytest.skip("the real server's repository folder is not readable here")
    return location


@pytest.fixture
def target(s3_server: SeaweedS3, s3_bucket: str, s3_env: dict[str, str]) -> offsite.S3Target:
    settings = S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="cb", multipart_chunk_mb=5)
    return offsite.S3Target(settings, connect_timeout=2, read_timeout=20)


def _slot(n: int) -> str:
    return f"2026-01-{n:02d}"


def _data_blob(artifact: Artifact) -> str:
    blobs = read_blob_list(artifact)
    assert blobs is not None
    return next(b.path for b in blobs.files if b.path.rsplit("/", 1)[-1].startswith("__"))


def test_manifest_lists_the_snapshot_files_and_a_deleted_or_changed_blob_fails_the_check(
        tmp_path: Path, seeded_opensearch: dict, opensearch_settings: OpenSearchSettings,
        readable_repo: Path) -> None:
    store = OpenSearchStore(opensearch_settings)
    catalog = Catalog(tmp_path)
    first = catalog.write("opensearch", _slot(1), store.backup)
    names = {f.name for f in first.manifest.files}
    assert {BLOBS_FILE, GENERATIONS_FILE} <= names
    blobs = read_blob_list(first)
    assert blobs is not None and Path(blobs.root) == readable_repo
    uuid = first.manifest.markers["uuid"]
    paths = {b.path for b in blobs.files}
    assert {f"snap-{uuid}.dat", f"meta-{uuid}.dat"} <= paths
    assert any(p.startswith("indices/") and "/meta-" in p for p in paths)
    assert any(p.endswith(f"/snap-{uuid}.dat") and p.count("/") == 3 for p in paths)  # per shard
    data = [p for p in paths if p.rsplit("/", 1)[-1].startswith("__")]
    assert data and sum(b.bytes for b in blobs.files if b.path in data) > 0
    for blob in blobs.files:  # what the manifest says is what is on disk
        assert (readable_repo / blob.path).stat().st_size == blob.bytes
    assert first.manifest.options["repository_files"] == len(blobs.files)

    second = catalog.write("opensearch", _slot(2), store.backup)  # unchanged: shares the first's data blobs
    second_data = {b.path for b in read_blob_list(second).files if "/__" in b.path}  # type: ignore[union-attr]
    assert set(data) == second_data

    checker = OpenSearchStore(opensearch_settings)
    assert checker.verify(first).ok and checker.verify(second).ok
    distinct = len({b.path for a in (first, second) for b in read_blob_list(a).files})  # type: ignore[union-attr]
    assert checker.hashes.hashed == distinct  # a blob both slots list was hashed once in this run

    victim = readable_repo / data[0]
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 0x01]) + original[1:])  # same size, one bit flipped
    result = OpenSearchStore(opensearch_settings).verify(first)
    assert not result.ok and any(data[0] in p and "sha256" in p for p in result.problems), result.problems
    victim.write_bytes(original)
    assert OpenSearchStore(opensearch_settings).verify(first).ok
    victim.unlink()
    result = OpenSearchStore(opensearch_settings).verify(second)
    assert not result.ok and any(data[0] in p and "missing" in p for p in result.problems), result.problems
    victim.write_bytes(original)


def _copy(artifact: Artifact, target: offsite.S3Target) -> dict:
    copy = offsite.upload_artifact(artifact, target)
    assert offsite.verify_offsite(artifact, target, deep=True).ok
    return copy.extra


def test_offsite_copy_is_incremental_and_restores_on_a_fresh_cluster_without_the_repository(
        tmp_path: Path, opensearch_server: dict, opensearch_client: OpenSearch, bench_index: None,
        opensearch_settings: OpenSearchSettings, readable_repo: Path, target: offsite.S3Target) -> None:
    if opensearch_server["emulator"] is None:
        pytest.skip("needs a fresh cluster to restore into (the emulator starts one)")
    from cb_backups_tests.emulators.opensearch import OpenSearchEmulator

    store = OpenSearchStore(opensearch_settings)
    catalog = Catalog(tmp_path / "backups")
    sent = {}
    slots = {}
    for n in (1, 2, 3):  # unchanged index set
        slots[n] = catalog.write("opensearch", _slot(n), store.backup)
        sent[n] = _copy(slots[n], target)
    for n in (4, 5):  # each day 5% of the documents changed
        _bench_docs(opensearch_client, BENCH_DOCS - BENCH_DOCS // 20, BENCH_DOCS, n)
        slots[n] = catalog.write("opensearch", _slot(n), store.backup)
        sent[n] = _copy(slots[n], target)
    print("\nbytes uploaded per slot (files + new blobs):",
          json.dumps({n: {k: v for k, v in s.items() if k in ("bytes_uploaded", "blob_bytes_uploaded",
                                                                "blob_bytes_present")} for n, s in sent.items()}))
    total = sent[1]["blob_bytes_uploaded"]
    assert total > 900_000 and sent[1]["blob_bytes_present"] == 0
    for n in (2, 3):  # unchanged: only the snapshot's own small metadata files are new, no data blob
        assert 0 < sent[n]["blob_bytes_uploaded"] < total * 0.01, sent[n]
    for n in (4, 5):  # 5% changed: only the changed segments are new
        assert 0 < sent[n]["blob_bytes_uploaded"] < total * 0.15, sent[n]

    blobs = read_blob_list(slots[1])
    assert blobs is not None
    one = blobs.files[-1]
    key = target.blob_key("opensearch", one.sha256)
    body = target.client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    target.client.delete_object(Bucket=target.bucket, Key=key)
    result = offsite.verify_offsite(slots[1], target)
    assert not result.ok and any(one.path in p and "missing remotely" in p for p in result.problems)
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]),
                             Metadata={"sha256": one.sha256})
    result = offsite.verify_offsite(slots[1], target, deep=True)
    assert not result.ok and any(one.path in p and "remote content" in p for p in result.problems)
    target.client.put_object(Bucket=target.bucket, Key=key, Body=body, Metadata={"sha256": one.sha256})

    # Scenario 2: the repository folder and the cluster are gone; a fresh cluster, the off-site copy only
    expected = slots[5].manifest.inventory
    shutil.rmtree(readable_repo)
    opensearch_client.indices.delete(index=BENCH)
    with OpenSearchEmulator.start(path_repo=[Path(opensearch_server["repo_root"])]) as fresh:
        settings = OpenSearchSettings(**{**opensearch_settings.__dict__, "url": fresh.url})
        fresh_store = OpenSearchStore(settings)
        downloaded = offsite.download_artifact("opensearch", slots[5].partition_key, target,
                                               tmp_path / "download" / slots[5].partition_key)
        artifact = Catalog(tmp_path / "download").load(downloaded)
        assert artifact is not None and fresh_store.verify(artifact).ok
        restored = fresh_store.restore(artifact, Target("in_place"))
        assert restored == expected
        assert fresh_store.inventory()["indices"][BENCH] == expected["indices"][BENCH]
        client = OpenSearch(hosts=[fresh.url])
        doc = client.get(index=BENCH, id=f"doc-{BENCH_DOCS - 1:06d}")["_source"]
        assert doc["content"].startswith("v5 ")  # the newest slot's documents, not an older one's
        assert not [r for r in client.snapshot.get_repository() if "restore" in r]  # unregistered afterwards


def test_offsite_retention_deletes_only_blobs_no_kept_slot_lists(
        tmp_path: Path, opensearch_client: OpenSearch, bench_index: None,
        opensearch_settings: OpenSearchSettings, readable_repo: Path, target: offsite.S3Target) -> None:
    store = OpenSearchStore(opensearch_settings)
    catalog = Catalog(tmp_path / "backups")
    old = catalog.write("opensearch", _slot(1), store.backup)
    offsite.upload_artifact(old, target)
    _bench_docs(opensearch_client, 0, BENCH_DOCS // 20, 2)  # 5% changed: the old slot has blobs of its own
    kept = catalog.write("opensearch", _slot(2), store.backup)
    offsite.upload_artifact(kept, target)
    old_only = ({b.sha256 for b in read_blob_list(old).files}  # type: ignore[union-attr]
                - {b.sha256 for b in read_blob_list(kept).files})  # type: ignore[union-attr]
    assert old_only
    plan = PrunePlan(OFFSITE, RetentionPolicy(keep_last=1), [(kept.partition_key, ["keep_last"])],
                     [(old.partition_key, "beyond keep_last")])
    records = apply_offsite(plan, target, "opensearch", tmp_path / "backups")
    assert [r.partition for r in records] == [old.partition_key]
    listing = target.client.list_objects_v2(Bucket=target.bucket, Prefix=target.blob_key("opensearch", ""))
    remaining = {o["Key"].rsplit("/", 1)[-1] for o in listing.get("Contents", [])}
    assert remaining
    assert not remaining & old_only  # the old slot's own blobs are gone ...
    assert offsite.verify_offsite(kept, target, deep=True).ok  # ... every blob the kept slot lists is there
    assert offsite.list_offsite("opensearch", target) == [kept.partition_key]


def test_repository_host_path_must_be_absolute() -> None:
    from cb_backups.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"opensearch.repository_host_path.*relative/repo.*absolute path"):
        OpenSearchStore(OpenSearchSettings(repository_host_path="relative/repo"))


def test_s3_repository_objects_are_listed_and_a_missing_or_resized_one_fails_the_check(
        tmp_path: Path, opensearch_server: dict, seeded_opensearch: dict, s3_server: SeaweedS3, s3_bucket: str,
        s3_env: dict[str, str]) -> None:
    """Item 4: the cluster writes the snapshot into the bucket itself (the emulator mirrors its s3
    repository into SeaweedFS); the manifest lists the objects with sizes and the check lists the bucket."""
    if opensearch_server["emulator"] is None:
        pytest.skip("the emulator writes its s3 repository into SeaweedFS; a real cluster needs its own bucket")
    from cb_backups.stores.opensearch_s3 import OBJECTS_FILE, read_object_list

    settings = OpenSearchSettings(url=opensearch_server["url"], repository="cbs3test", repository_type="s3",
                                  repository_settings={"bucket": s3_bucket, "base_path": "snapshots/os",
                                                       "endpoint": s3_server.endpoint_url})
    store = OpenSearchStore(settings)
    artifact = Catalog(tmp_path).write("opensearch", _slot(1), store.backup)
    assert artifact.manifest.options["repository_storage"] == f"s3://{s3_bucket}/snapshots/os/"
    objects = read_object_list(artifact.path(OBJECTS_FILE))
    uuid = artifact.manifest.markers["uuid"]
    assert f"snap-{uuid}.dat" in objects.files and any("/__" in p for p in objects.files)
    assert OpenSearchStore(settings).verify(artifact).ok

    client = s3_server.client()
    data = next(p for p in objects.files if "/__" in p)
    key = f"snapshots/os/{data}"
    body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=body[:-1])
    result = OpenSearchStore(settings).verify(artifact)
    assert not result.ok and any(data in p and "bytes" in p for p in result.problems), result.problems
    client.delete_object(Bucket=s3_bucket, Key=key)
    result = OpenSearchStore(settings).verify(artifact)
    assert not result.ok and any(data in p and "missing" in p for p in result.problems), result.problems
    client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    assert OpenSearchStore(settings).verify(artifact).ok
    OpenSearch(hosts=[opensearch_server["url"]]).snapshot.delete_repository(repository="cbs3test", ignore=404)


def test_scenario_2_cli_restores_latest_from_offsite_into_a_fresh_cluster_with_everything_else_gone(
        tmp_path: Path, opensearch_server: dict, opensearch_settings: OpenSearchSettings, seeded_opensearch: dict,
        readable_repo: Path, offsite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The runbook's full system recovery for OpenSearch, as an operator types it: the repository folder,
    the local backups and the cluster are gone; `restore opensearch --backup latest --from offsite
    --target in-place --yes` against a fresh cluster brings back every document."""
    if opensearch_server["emulator"] is None:
        pytest.skip("needs a fresh cluster to restore into (the emulator starts one)")
    from cb_backups_tests.emulators.opensearch import OpenSearchEmulator

    config = tmp_path / "cb-opensearch.yaml"
    config.write_text(yaml.safe_dump({"opensearch": {
        "repository": opensearch_settings.repository, "repository_type": "fs",
        "repository_settings": dict(opensearch_settings.repository_settings)}}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    monkeypatch.setenv("CB_OPENSEARCH_URL", opensearch_settings.url)
    key = spec_for("opensearch").partitions.get_partition_keys()[-1]
    for argv in (["backup", "opensearch", "--partition", key], ["offsite", "opensearch", "--partition", key]):
        done = _cli(argv)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    expected = OpenSearchStore(opensearch_settings).inventory()["indices"]
    assert {i: expected[i] for i in seeded_opensearch} == seeded_opensearch

    shutil.rmtree(readable_repo)  # the host is lost: repository folder and local backups
    shutil.rmtree(Path(offsite_env["CB_BACKUP_DIR"]) / "opensearch")
    with OpenSearchEmulator.start(path_repo=[Path(opensearch_server["repo_root"])]) as fresh:
        monkeypatch.setenv("CB_OPENSEARCH_URL", fresh.url)
        done = _cli(["restore", "opensearch", "--backup", "latest", "--from", "offsite", "--target", "in-place",
                     "--yes"])
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        restored = OpenSearchStore(OpenSearchSettings(**{**opensearch_settings.__dict__, "url": fresh.url}))
        counts = restored.inventory()["indices"]
        assert {i: counts.get(i) for i in seeded_opensearch} == seeded_opensearch  # every document is back


def _cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *argv], env=dict(os.environ), text=True,
                          capture_output=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
