"""Off-site copies against a REAL S3 server (SeaweedFS, signatures checked)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from cb_backups.config.retention import OffsitePolicy, offsite_from_config
from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import MANIFEST, Catalog, checksum_problems
from cb_backups.core.errors import ConfigError, VerificationFailed
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import Artifact, BackupOutput, FileRecord
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite.state import COPIED, FAILED, STALE, VERIFIED, Attempt, Seen, decide_copy, offsite_state
from cb_backups_tests.servers.s3 import SeaweedS3

# s3_server, s3_bucket and s3_env come from cb_backups_tests/fixtures_s3.py (loaded by conftest.py)

MiB = 1024 * 1024
PK = "2025-06-01T06:00"


def fake_backup(sizes: dict[str, int], seed: int = 0) -> Callable[[Path], BackupOutput]:
    """Test data: a backup callable that streams pseudo-random bytes through HashingWriter."""

    def backup(into: Path) -> BackupOutput:
        files = []
        for index, (name, size) in enumerate(sorted(sizes.items())):
            block = hashlib.sha256(f"{seed}-{index}".encode()).digest() * 32768  # 1 MiB pattern per file
            block = os.urandom(4096) + block[4096:]
            with HashingWriter(into / name) as out:
                left = size
                while left:
                    piece = block[: min(left, len(block))]
                    out.write(piece)
                    left -= len(piece)
            files.append(FileRecord(name, out.bytes, out.sha256))
        return BackupOutput(files=files, method="fake", options={}, versions={"fake": "1"},
                            inventory={"rows": {"t": len(files)}})

    return backup


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "backups")


@pytest.fixture
def artifact(catalog: Catalog) -> Artifact:
    # 7 MiB: multipart with 5 MiB parts; 300 KiB: one PUT; an empty file: a zero-byte PUT
    return catalog.write("postgres", PK, fake_backup({"db.dump": 7 * MiB, "globals.sql": 300 * 1024, "empty": 0}))


@pytest.fixture
def make_target(s3_server: SeaweedS3, s3_bucket: str, s3_env: dict[str, str]) -> Callable[..., offsite.S3Target]:
    def make(**overrides: Any) -> offsite.S3Target:
        options = {k: overrides.pop(k) for k in list(overrides) if k in S3Settings.__dataclass_fields__}
        settings = S3Settings(**{"bucket": s3_bucket, "endpoint_url": s3_server.endpoint_url, "prefix": "prod/cb",
                                 "multipart_chunk_mb": 5, "concurrency": 4, **options})
        overrides.setdefault("connect_timeout", 2)
        overrides.setdefault("read_timeout", 20)
        return offsite.S3Target(settings, **overrides)

    return make


def record_calls(target: offsite.S3Target) -> list[tuple[str, str]]:
    """Observe the S3 operations the target's client sends (operation, key), in order."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        with lock:
            calls.append((model.name, params.get("Key", "")))

    target.client.meta.events.register("provide-client-params.s3.*", hook)
    return calls


def test_copy_and_verify(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                         s3_server: SeaweedS3, s3_bucket: str) -> None:
    target = make_target(storage_class="STANDARD_IA")
    seen: list[int] = []
    copy = offsite.upload_artifact(artifact, target, progress=lambda _m, done, _t: seen.append(done))

    expected_keys = [f"prod/cb/postgres/{PK}/{name}" for name in ("db.dump", "empty", "globals.sql", MANIFEST)]
    assert copy.keys == expected_keys
    assert copy.bytes == 7 * MiB + 300 * 1024
    assert copy.sha256() == {f.name: f.sha256 for f in artifact.manifest.files}
    assert copy.seconds > 0 and copy.throughput_mib_s > 0
    # SeaweedFS supports additional checksums: SHA256 for single PUTs, CRC32 for the parts of db.dump
    assert copy.checksum_algorithm == "SHA256, CRC32 (parts)"
    assert seen and seen[-1] == artifact.manifest.total_bytes + artifact.path(MANIFEST).stat().st_size

    client = s3_server.client()
    for record in artifact.manifest.files:
        head = client.head_object(Bucket=s3_bucket, Key=target.key("postgres", PK, record.name),
                                  ChecksumMode="ENABLED")
        assert head["ContentLength"] == record.bytes
        assert head["Metadata"]["sha256"] == record.sha256
        assert head["StorageClass"] == "STANDARD_IA"
        if record.bytes < 5 * MiB:  # single PUT: the server's full-object SHA256 equals the manifest's
            assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(record.sha256)).decode()
        else:  # multipart: each part was checked by the server against its CRC32
            assert head.get("ChecksumCRC32") and not head.get("ChecksumSHA256")
    body = client.get_object(Bucket=s3_bucket, Key=target.key("postgres", PK, "db.dump"))["Body"].read()
    assert body == artifact.path("db.dump").read_bytes()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") in (None, [])

    assert offsite.list_offsite("postgres", target) == [PK]
    shallow = offsite.verify_offsite(artifact, target)
    assert shallow.ok, shallow.problems
    deep = offsite.verify_offsite(artifact, target, deep=True)
    assert deep.ok, deep.problems
    assert deep.details["bytes_read"] == artifact.manifest.total_bytes

    again = offsite.upload_artifact(artifact, target)  # an identical complete copy is not re-sent
    assert again.skipped and again.keys == copy.keys


def test_manifest_is_uploaded_last(artifact: Artifact, make_target: Callable[..., offsite.S3Target]) -> None:
    target = make_target()
    calls = record_calls(target)
    offsite.upload_artifact(artifact, target)
    writes = [(op, key) for op, key in calls if op in ("PutObject", "CompleteMultipartUpload")]
    assert [key.rsplit("/", 1)[1] for _, key in writes] == ["db.dump", "empty", "globals.sql", MANIFEST]
    assert ("CompleteMultipartUpload", target.key("postgres", PK, "db.dump")) in writes
    last_data_write = max(i for i, (op, key) in enumerate(calls)
                          if op in ("PutObject", "UploadPart", "CompleteMultipartUpload") and
                          not key.endswith(MANIFEST))
    manifest_put = calls.index(("PutObject", target.key("postgres", PK, MANIFEST)))
    assert manifest_put > last_data_write


def test_corrupted_remote_object(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                                 s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path) -> None:
    target = make_target()
    offsite.upload_artifact(artifact, target)
    client = s3_server.client()
    record = artifact.file("db.dump")
    key = target.key("postgres", PK, "db.dump")

    # Same size, same sha256 metadata, different bytes: only a deep check can see it.
    forged = bytearray(artifact.path("db.dump").read_bytes())
    forged[12345] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(forged), Metadata={"sha256": record.sha256})
    assert offsite.verify_offsite(artifact, target).ok
    deep = offsite.verify_offsite(artifact, target, deep=True)
    assert not deep.ok
    assert any(p.startswith("db.dump: remote content") for p in deep.problems), deep.problems

    # A restore from this copy refuses, and leaves nothing half-written behind.
    into = tmp_path / "restore"
    with pytest.raises(VerificationFailed, match=r"db\.dump"):
        offsite.download_artifact("postgres", PK, target, into)
    assert not (into / "db.dump").exists() and not (into / MANIFEST).exists()
    assert [p.name for p in into.iterdir() if p.name.startswith(".")] == []

    # A shorter object and a wrong sha256 tag are both seen without reading the data.
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(forged[:-10]), Metadata={"sha256": record.sha256})
    short = offsite.verify_offsite(artifact, target)
    assert any(f"{record.bytes - 10} bytes remotely" in p for p in short.problems), short.problems
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(forged), Metadata={"sha256": "0" * 64})
    tagged = offsite.verify_offsite(artifact, target)
    assert any("sha256 metadata" in p for p in tagged.problems), tagged.problems

    # A single-part object rewritten with a server checksum: the checksum disagrees with the manifest.
    small = target.key("postgres", PK, "globals.sql")
    client.put_object(Bucket=s3_bucket, Key=small, Body=b"x" * (300 * 1024), ChecksumAlgorithm="SHA256",
                      Metadata={"sha256": artifact.file("globals.sql").sha256})
    checked = offsite.verify_offsite(artifact, target)
    assert any("server's SHA256 checksum" in p for p in checked.problems), checked.problems


def test_missing_objects(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                         s3_server: SeaweedS3, s3_bucket: str) -> None:
    target = make_target()
    offsite.upload_artifact(artifact, target)
    client = s3_server.client()
    client.delete_object(Bucket=s3_bucket, Key=target.key("postgres", PK, "globals.sql"))
    result = offsite.verify_offsite(artifact, target, deep=True)
    assert not result.ok
    assert result.problems == [f"globals.sql: missing remotely (s3://{s3_bucket}/prod/cb/postgres/{PK}/globals.sql)"]

    client.delete_object(Bucket=s3_bucket, Key=target.key("postgres", PK, MANIFEST))
    assert offsite.list_offsite("postgres", target) == []
    result = offsite.verify_offsite(artifact, target)
    assert f"{MANIFEST}: missing remotely (the copy is incomplete)" in result.problems


def test_local_file_changed_commits_nothing(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                                            s3_server: SeaweedS3, s3_bucket: str) -> None:
    target = make_target()
    client = s3_server.client()
    for name, change in (("db.dump", b"\x00"), ("globals.sql", b"")):
        path = artifact.path(name)
        data = bytearray(path.read_bytes())
        if change:
            data[-1] ^= 0xFF  # same size, different bytes
        else:
            data = data[:-1]  # truncated
        path.write_bytes(bytes(data))
    with pytest.raises(offsite.LocalFileMismatch, match=r"db\.dump: sha256"):
        offsite.upload_artifact(artifact, target)
    for name in ("db.dump", MANIFEST):
        with pytest.raises(botocore.exceptions.ClientError, match="404"):
            client.head_object(Bucket=s3_bucket, Key=target.key("postgres", PK, name))
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") in (None, [])


def _crash_when(server: SeaweedS3, fraction: float, total: int, restart_after: float | None
                ) -> tuple[Callable[[str, int, int | None], None], threading.Event, list[BaseException]]:
    crashed = threading.Event()
    errors: list[BaseException] = []

    def crash_and_restart() -> None:
        try:
            server.crash()
            if restart_after is not None:
                threading.Event().wait(restart_after)
                server.start()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def progress(_message: str, done: int, _total: int | None) -> None:
        if done >= total * fraction and not crashed.is_set():
            crashed.set()
            threading.Thread(target=crash_and_restart, daemon=True).start()

    return progress, crashed, errors


def test_server_dies_mid_upload_then_returns(catalog: Catalog, make_target: Callable[..., offsite.S3Target],
                                             s3_server: SeaweedS3, s3_bucket: str) -> None:
    art = catalog.write("neo4j", PK, fake_backup({"neo4j.dump": 40 * MiB}, seed=3))
    target = make_target(concurrency=2, max_attempts=2, file_attempts=8, retry_wait_max=1.5, connect_timeout=1,
                         read_timeout=10)
    progress, crashed, errors = _crash_when(s3_server, 0.3, art.manifest.total_bytes, restart_after=0.5)
    try:
        copy = offsite.upload_artifact(art, target, progress=progress)
    finally:
        if s3_server.process is None or s3_server.process.poll() is not None:
            s3_server.start()
    assert crashed.is_set() and not errors
    # The file was re-sent after the server came back; nothing half-written is left anywhere.
    client = s3_server.client()
    assert copy.bytes == 40 * MiB
    assert client.head_object(Bucket=s3_bucket, Key=target.key("neo4j", PK, "neo4j.dump"))["ContentLength"] == 40 * MiB
    assert offsite.verify_offsite(art, target, deep=True).ok
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") in (None, [])


def test_server_dies_and_stays_down_fails_cleanly(catalog: Catalog, make_target: Callable[..., offsite.S3Target],
                                                  s3_server: SeaweedS3, s3_bucket: str) -> None:
    art = catalog.write("qdrant", PK, fake_backup({"points.snapshot": 24 * MiB}, seed=4))
    target = make_target(concurrency=2, max_attempts=1, file_attempts=2, retry_wait_max=0.2, connect_timeout=1,
                         read_timeout=5)
    progress, crashed, errors = _crash_when(s3_server, 0.3, art.manifest.total_bytes, restart_after=None)
    try:
        with pytest.raises(offsite.OffsiteError) as caught:
            offsite.upload_artifact(art, target, progress=progress)
    finally:
        s3_server.start()
    assert crashed.is_set() and not errors
    message = str(caught.value)
    assert f"s3://{s3_bucket}/prod/cb/qdrant/{PK}/points.snapshot" in message
    assert "Traceback" not in message and caught.value.__suppress_context__
    client = s3_server.client()
    for name in ("points.snapshot", MANIFEST):
        with pytest.raises(botocore.exceptions.ClientError, match="404"):
            client.head_object(Bucket=s3_bucket, Key=target.key("qdrant", PK, name))
    # The next copy of the partition clears any upload the crash left behind and succeeds.
    offsite.upload_artifact(art, target)
    assert offsite.verify_offsite(art, target).ok
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") in (None, [])


def test_download_round_trip(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                             tmp_path: Path) -> None:
    target = make_target()
    offsite.upload_artifact(artifact, target)
    into = offsite.download_artifact("postgres", PK, target, tmp_path / "from-s3")
    restored = Catalog(tmp_path).load(into)
    assert restored is not None
    assert restored.manifest == artifact.manifest
    assert checksum_problems(restored) == []
    for record in artifact.manifest.files:
        assert (into / record.name).read_bytes() == artifact.path(record.name).read_bytes()
        assert oct((into / record.name).stat().st_mode & 0o777) == "0o600"
    assert (into / MANIFEST).read_bytes() == artifact.path(MANIFEST).read_bytes()
    with pytest.raises(offsite.OffsiteError, match="no complete copy"):
        offsite.download_artifact("postgres", "2020-01-01T00:00", target, tmp_path / "none")


def test_delete_offsite_removes_manifest_first(artifact: Artifact,
                                               make_target: Callable[..., offsite.S3Target]) -> None:
    target = make_target()
    offsite.upload_artifact(artifact, target)
    calls = record_calls(target)
    deleted = offsite.delete_offsite("postgres", PK, target)
    assert deleted[0].endswith(f"/{PK}/{MANIFEST}")
    assert sorted(k.rsplit("/", 1)[1] for k in deleted) == sorted(["db.dump", "empty", "globals.sql", MANIFEST])
    deletes = [key for op, key in calls if op == "DeleteObject"]
    assert deletes[0] == target.key("postgres", PK, MANIFEST)
    assert offsite.list_offsite("postgres", target) == []
    assert list(offsite._keys(target, target.key("postgres", PK, ""))) == []


def test_secrets_never_in_errors_or_metadata(artifact: Artifact, make_target: Callable[..., offsite.S3Target],
                                             s3_server: SeaweedS3, s3_bucket: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    secret = s3_server.secret_key
    target = make_target()
    offsite.upload_artifact(artifact, target)
    client = s3_server.client()
    for record in artifact.manifest.files:
        head = client.head_object(Bucket=s3_bucket, Key=target.key("postgres", PK, record.name))
        assert secret not in repr(head["Metadata"]) and s3_server.access_key not in repr(head["Metadata"])
    assert secret not in repr(target)

    failures: list[BaseException] = []
    missing_bucket = make_target(bucket="no-such-bucket-cb")
    for call in (lambda: offsite.upload_artifact(artifact, missing_bucket),
                 lambda: offsite.download_artifact("postgres", PK, missing_bucket, Path("/nonexistent/x"))):
        with pytest.raises(offsite.OffsiteError) as caught:
            call()
        failures.append(caught.value)
    assert "NoSuchBucket" in str(failures[0])

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret[::-1])  # a wrong secret: the server refuses the signature
    wrong = make_target()
    with pytest.raises(offsite.OffsiteError, match="SignatureDoesNotMatch") as caught:
        offsite.upload_artifact(artifact, wrong, force=True)
    failures.append(caught.value)
    verification = offsite.verify_offsite(artifact, wrong)
    assert not verification.ok and "SignatureDoesNotMatch" in verification.problems[0]

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(offsite.OffsiteError, match="no AWS credentials found") as caught:
        offsite.upload_artifact(artifact, make_target(), force=True)
    failures.append(caught.value)

    for failure in failures:
        text = "".join(traceback.format_exception(failure))
        assert secret not in text and secret[::-1] not in text
        assert failure.__cause__ is None and failure.__suppress_context__


def test_target_settings_are_validated() -> None:
    good = S3Settings(bucket="b")
    assert offsite.S3Target(good).key("valkey", "k", "dump.rdb") == "cb-backups/valkey/k/dump.rdb"
    assert offsite.S3Target(S3Settings(bucket="b", prefix="")).key("valkey", "k", "f") == "valkey/k/f"
    bad = [
        (S3Settings(bucket=None), "s3.bucket"),
        (S3Settings(bucket="b", concurrency=0), "s3.concurrency"),
        (S3Settings(bucket="b", multipart_chunk_mb=4), "s3.multipart_chunk_mb"),
        (S3Settings(bucket="b", storage_class="COLD"), "s3.storage_class"),
        (S3Settings(bucket="b", sse="rot13"), "s3.sse"),
    ]
    for settings, what in bad:
        with pytest.raises(ConfigError, match=what):
            offsite.S3Target(settings)
    with pytest.raises(ConfigError, match="retry mode"):
        offsite.S3Target(good, retry_mode="legacy")


def test_checksum_refusal_is_recognised() -> None:
    refused = botocore.exceptions.ClientError(
        {"Error": {"Code": "InvalidRequest", "Message": "x-amz-checksum-sha256 is not supported"},
         "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    other = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "PutObject")
    assert offsite._checksum_refused(refused) and not offsite._checksum_refused(other)
    assert not offsite.is_transient(other)
    assert offsite.is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))


# --- off-site state and the copy decision (pure) ------------------------------------------

OLD, NEW = "a" * 64, "b" * 64


def test_offsite_state_is_verified_only_for_the_current_manifest() -> None:
    copy, check = Seen(100.0, OLD), Seen(101.0, OLD)
    assert offsite_state(OLD, copy, check) == VERIFIED
    assert offsite_state(NEW, copy, check) == STALE  # backed up again after the copy was verified
    assert offsite_state(NEW, Seen(102.0, NEW), check) == COPIED  # re-copied, not checked yet
    assert offsite_state(NEW, Seen(102.0, NEW), Seen(103.0, NEW)) == VERIFIED
    assert offsite_state(NEW, copy, Seen(103.0, None, passed=False)) == FAILED
    # a check that recorded no manifest (older runs) verified the copy it followed, never a later one
    assert offsite_state(OLD, copy, Seen(101.0, None)) == VERIFIED
    assert offsite_state(NEW, Seen(102.0, NEW), Seen(101.0, None)) == COPIED
    assert offsite_state(NEW, copy, Seen(101.0, None)) == STALE
    assert offsite_state(None, copy, check) == VERIFIED  # pruned locally: judged against its own manifest
    assert offsite_state(OLD, None, None) == ""


def test_decide_copy_compares_manifests_and_backs_off() -> None:
    policy = OffsitePolicy()
    wait = policy.retry_wait_seconds
    assert decide_copy(NEW, None, None, [], wait, 0.0).copy  # never copied
    same_second = decide_copy(NEW, Seen(100.0, OLD), Seen(100.0, OLD), [], wait, 100.0)
    assert same_second.copy and same_second.attempt == 1  # re-taken in the same second: copied again
    assert not decide_copy(NEW, Seen(100.0, NEW), Seen(101.0, NEW), [], wait, 200.0).copy
    failed = [Attempt(True, 1000.0, "r1")]
    assert not decide_copy(NEW, Seen(100.0, OLD), None, failed, wait, 1000.0 + 299).copy  # 5 min
    retry = decide_copy(NEW, Seen(100.0, OLD), None, failed, wait, 1000.0 + 300)
    assert retry.copy and retry.attempt == 2 and retry.failures == 1
    two = [Attempt(True, 2000.0, "r2"), *failed]
    assert not decide_copy(NEW, None, None, two, wait, 2000.0 + 899).copy  # then 15 min
    assert decide_copy(NEW, None, None, two, wait, 2000.0 + 900).attempt == 3
    many = [Attempt(True, 9000.0 - i, f"r{i}") for i in range(6)]
    assert not decide_copy(NEW, None, None, many, wait, 9000.0 + 3599).copy  # then hourly
    # S3 seen down and then reachable again after the last failure: retry at once, not at the backoff step
    back = decide_copy(NEW, None, None, many, wait, 9000.0 + 60, s3_back_at=9000.0 + 30)
    assert back.copy and "reachable again" in back.reason
    assert not decide_copy(NEW, None, None, many, wait, 9000.0 + 60, s3_back_at=8000.0).copy  # before the failure
    # a failing offsite_complete of the current copy: re-sent (forced), counted as a failure
    broken = decide_copy(NEW, Seen(100.0, NEW), Seen(500.0, None, passed=False, run_id="v1"), [], wait, 500.0)
    assert not broken.copy and broken.failures == 1 and broken.force
    assert decide_copy(NEW, Seen(100.0, NEW), Seen(500.0, None, passed=False), [], wait, 800.0).force
    # a success since the failures resets the count
    assert decide_copy(NEW, None, None, [Attempt(False, 50.0), *failed], wait, 1000.0).failures == 0


@pytest.mark.parametrize(("section", "name"), [
    ({"retry_minutes": []}, "offsite.retry_minutes"), ({"retry_minutes": [5, "x"]}, "offsite.retry_minutes"),
    ({"retry_minutes": 5}, "offsite.retry_minutes"), ({"notify_after": 0}, "offsite.notify_after"),
    ({"notify_after": True}, "offsite.notify_after"), ({"rpo_lag_hours": -1}, "offsite.rpo_lag_hours"),
    ({"sensor_interval_seconds": 0}, "offsite.sensor_interval_seconds"),
    ({"deep_verify": "yes"}, "offsite.deep_verify"),
    ({"retries": 3}, "setting in the 'offsite' section"),
])
def test_bad_offsite_settings_are_named(section: dict, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        offsite_from_config({"offsite": section})
    assert name in str(caught.value)


def test_offsite_settings_defaults_and_overrides() -> None:
    assert offsite_from_config({}) == OffsitePolicy((5.0, 15.0, 60.0), 3, 1.0, 30, False)
    custom = offsite_from_config({"offsite": {"retry_minutes": [1, 2], "notify_after": 5, "rpo_lag_hours": 0.5}})
    assert custom.retry_wait_seconds(1) == 60 and custom.retry_wait_seconds(9) == 120
    assert custom.notify_after == 5 and custom.rpo_lag_hours == 0.5


def test_a_flipped_byte_deep_in_a_download_fails_it_and_leaves_nothing(make_target: Callable[..., offsite.S3Target],
                                                                  s3_bucket: str, tmp_path: Path) -> None:
    target = make_target(concurrency=2)
    body = bytearray(os.urandom(16 * MiB))
    expected = hashlib.sha256(body).hexdigest()
    body[14 * MiB] ^= 1
    key = target.key("postgres", PK, "flipped.dump")
    target.client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    with pytest.raises(VerificationFailed, match="the manifest says"):
        offsite.download_object(target, "postgres", key, None, tmp_path / "flipped.dump", len(body), expected,
                                "flipped.dump")
    assert list(tmp_path.iterdir()) == []
