"""Off-site copies of backups in S3 (or any S3-compatible store). No Dagster here.

Layout: ``s3://<bucket>/<prefix>/<store>/<partition_key>/<file>``, with the
backup's ``manifest.json`` beside its files. As on local disk, the manifest is
the completeness marker: it is uploaded LAST and deleted FIRST, so a copy that
was interrupted (upload) or half pruned (delete) never looks complete.

Why there is never a truncated or wrong object under a final key
-----------------------------------------------------------------
S3 makes an object visible under its key only when the request that writes it
completes: a single PutObject is atomic, and a multipart upload shows nothing
under the key until CompleteMultipartUpload. So files are uploaded straight to
their final keys, without a temporary key and a server-side copy (which would
write every byte twice on the server). What remains is to make sure the
request never completes with the wrong bytes:

* Each file is read through `VerifyingReader`, a non-seekable reader that
  feeds the boto3 transfer manager and hashes in the same pass (every byte is
  read from disk once; retries of a part re-send the in-memory part). It knows
  the size and sha256 from the local manifest and raises as soon as the file
  is longer, at EOF when it is shorter, and at the last byte when the sha256
  differs. The transfer manager reads the whole file before it sends the
  single PutObject (files below one chunk) or before CompleteMultipartUpload
  (larger files), so a mismatch fails the request that would commit the
  object and the multipart upload is aborted.
* A dropped connection or a server that dies mid-upload fails the request the
  same way; the whole file is retried (tenacity, connection errors and 5xx
  only) after botocore's own per-request retries. Incomplete multipart
  uploads are aborted on failure, and any left by a killed process are
  aborted before the next copy of the same partition.

Files a backup keeps outside its folder (an OpenSearch snapshot repository's blobs, listed in the
backup's `repository_files.json`) are stored content-addressed, ``<prefix>/<store>/_blobs/<sha256>``,
shared by every slot that lists them: a blob already there with that size and sha256 is not sent
again, so a copy of an incremental snapshot sends only its new blobs. They are uploaded after the
slot's own files (the list first, so off-site retention always sees it) and before its manifest.
`delete_unreferenced_blobs` removes only blobs that no slot's list (complete or not) names.
A full system backup's lists (`opensearch__repository_files.json`) work the same way, under
``<prefix>/full_system/_blobs/`` (its retention only ever looks at full system slots).

Where the server supports S3 additional checksums, objects are also uploaded
with ``ChecksumAlgorithm=SHA256`` (the server verifies each request body);
servers that refuse it are detected once and the copy falls back to
``x-amz-meta-sha256`` alone, which is always written. Credentials come from
the standard AWS chain (environment, profile, instance role) and never appear
in messages: every client error is translated into an `OffsiteError` with the
secret redacted, raised `from None`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.exceptions as bex
import tenacity

from cb_backups.core.blobs import (
    BLOBS_FILE,
    Blob,
    BlobList,
    carried_dir,
    list_names,
    list_root,
    parse_blob_list,
    read_blob_lists,
)
from cb_backups.core.catalog import MANIFEST, parse_iso, utcnow, write_seal
from cb_backups.core.errors import CbBackupsError, VerificationFailed
from cb_backups.core.fileio import (
    CHUNK,
    HashingWriter,
    atomic_write_bytes,
    fsync_dir,
    private_dir,
    remember_digest,
    sha256_file,
)
from cb_backups.core.model import Artifact, Manifest, Progress, Verification, no_progress
from cb_backups.offsite.lock import (
    extend,
    latest_version,
    lock_of,
    lock_problem,
    oldest_version,
    put_args,
    require_locking_bucket,
    retention,
)
from cb_backups.offsite.lock import versions as object_versions
from cb_backups.stores.s3client import (  # re-exported: the off-site API is this module's
    BLOB_FOLDER,
    OffsiteError,
    S3Target,
    describe,
    get_bytes,
    head,
    is_transient,
    remote_sha256,
)
from cb_backups.stores.s3client import not_found as _not_found

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256
MULTIPART_CHECKSUM = "CRC32"  # per part of a multipart upload (see part_checksum)
_CHECKSUM_REFUSALS = {"NotImplemented", "InvalidRequest", "InvalidArgument", "BadRequest", "InvalidChecksum"}


class LocalFileMismatch(VerificationFailed):
    """The local file no longer matches its manifest; nothing was committed under the final key."""


class _RetryWithoutChecksum(Exception):
    """The server refused S3 additional checksums; send the file again without them."""


def _retrying(target: S3Target) -> tenacity.Retrying:
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: is_transient(exc) or isinstance(exc, _RetryWithoutChecksum)),
        stop=tenacity.stop_after_attempt(target.file_attempts),
        wait=tenacity.wait_exponential(multiplier=0.5, min=0.5, max=target.retry_wait_max),
        reraise=True,
        before_sleep=lambda state: log.warning("s3: attempt %d failed (%s); retrying", state.attempt_number,
                                               describe(state.outcome.exception(), target.settings.endpoint_url)
                                               if state.outcome else "?"),
    )


# --- reading local files -----------------------------------------------------------


class VerifyingReader:
    """A non-seekable binary reader that hashes what it hands out and refuses a file that changed.

    It raises `LocalFileMismatch` from `read()` as soon as more than `expected_bytes`
    come from disk, at EOF when fewer did, and when the last expected byte is read
    and the sha256 differs: always before the transfer manager can commit the object.
    """

    def __init__(self, path: Path, expected_bytes: int, expected_sha256: str, store: str) -> None:
        self.path = path
        self.expected_bytes = expected_bytes
        self.expected_sha256 = expected_sha256
        self.store = store
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int | None = -1) -> bytes:
        if amount is None or amount < 0:
            blocks = []
            while block := self._read_some(CHUNK):
                blocks.append(block)
            return b"".join(blocks)
        first = self._read_some(amount)
        if len(first) == amount or not first:
            return first
        data = bytearray(first)
        while len(data) < amount:
            block = self._read_some(amount - len(data))
            if not block:
                break
            data += block
        return bytes(data)

    def _read_some(self, amount: int) -> bytes:
        block = self._file.read(amount)
        if block:
            self._hash.update(block)
            self.bytes += len(block)
            if self.bytes > self.expected_bytes:
                raise LocalFileMismatch(self.store, f"{self.path.name}: grew beyond the {self.expected_bytes} bytes "
                                                    "in the manifest while being copied; nothing was uploaded")
            if self.bytes == self.expected_bytes and self.sha256 != self.expected_sha256:
                raise LocalFileMismatch(self.store, f"{self.path.name}: sha256 {self.sha256[:12]}… differs from the "
                                                    f"manifest's {self.expected_sha256[:12]}…; nothing was uploaded")
        elif self.bytes < self.expected_bytes:
            raise LocalFileMismatch(self.store, f"{self.path.name}: {self.bytes} bytes on disk, the manifest says "
                                                f"{self.expected_bytes}; nothing was uploaded")
        return block

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


# --- records -----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    name: str
    key: str
    bytes: int
    sha256: str
    etag: str | None = None
    checksum_sha256: str | None = None  # the server's additional checksum (base64; "-N" when composite)
    version_id: str | None = None  # in a versioned bucket: the version this upload wrote


@dataclass
class OffsiteCopy:
    store: str
    partition_key: str
    bucket: str
    files: list[RemoteFile]
    manifest_key: str
    seconds: float
    checksum_algorithm: str | None
    skipped: bool = False  # an identical complete copy was already there
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # object key -> version id (versioned buckets)
    locked_until: str | None = None  # Object Lock retain-until of every object written (ISO, UTC)

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.files] + [self.manifest_key]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def throughput_mib_s(self) -> float:
        return round(self.bytes / 1048576 / self.seconds, 2) if self.seconds > 0 and not self.skipped else 0.0

    def sha256(self) -> dict[str, str]:
        return {f.name: f.sha256 for f in self.files}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(bytes=self.bytes, throughput_mib_s=self.throughput_mib_s, keys=self.keys)
        return data


# --- upload ------------------------------------------------------------------------


def upload_artifact(artifact: Artifact, target: S3Target, progress: Progress = no_progress,
                    force: bool = False) -> OffsiteCopy:
    """Copy a complete local backup to S3: files first (verified while streaming), manifest.json last.

    When an identical complete copy is already there (same manifest bytes, every
    object of the right size and sha256), nothing is sent unless `force`.
    """
    store, pk = artifact.store, artifact.partition_key
    manifest_path = artifact.path(MANIFEST)
    manifest_sha, manifest_bytes = sha256_file(manifest_path)
    manifest_key = target.key(store, pk, MANIFEST)
    started = time.monotonic()
    lock = require_locking_bucket(target)
    until = lock.retain_until(store, parse_iso(artifact.manifest.captured_at), utcnow()) if lock else None
    locking = put_args(lock, until)

    if not force and remote_sha256(target, manifest_key) == manifest_sha:
        check = verify_offsite(artifact, target)  # of the latest versions: those are what gets recorded
        if check.ok:
            files = [RemoteFile(f.name, target.key(store, pk, f.name), f.bytes, f.sha256)
                     for f in artifact.manifest.files]
            present = {k: v for k, v in check.details.get("versions", {}).items() if v}
            return OffsiteCopy(store, pk, target.bucket, files, manifest_key, time.monotonic() - started,
                               None, skipped=True, versions=present)

    # A previous copy of this partition stops counting as complete before anything is replaced. Not in a
    # locked bucket: the writer may not delete there (deploy/iam-policy.json), every version stays anyway,
    # and verification and restores read the versions recorded for this upload.
    if lock is None:
        _delete_key(target, manifest_key)
    abort_incomplete_uploads(target, target.key(store, pk, ""))

    total = artifact.manifest.total_bytes + manifest_bytes
    sent = _Counter(progress, total)
    uploaded: list[RemoteFile] = []
    for record in artifact.manifest.files:
        key = target.key(store, pk, record.name)
        sent.label = f"{store} {pk}: {record.name} -> {target.url(key)}"
        uploaded.append(_upload_file(target, store, artifact.path(record.name), key, record.bytes,
                                     record.sha256, sent, locking))
    blob_versions: dict[str, str] = {}
    blob_stats = _upload_blobs(artifact, target, sent, force, until, blob_versions)
    sent.label = f"{store} {pk}: {MANIFEST} -> {target.url(manifest_key)}"
    sent_manifest = _upload_file(target, store, manifest_path, manifest_key, manifest_bytes, manifest_sha, sent,
                                 locking)
    seconds = time.monotonic() - started
    versions = {f.key: f.version_id for f in (*uploaded, sent_manifest) if f.version_id} | blob_versions
    copy = OffsiteCopy(store, pk, target.bucket, uploaded, manifest_key, round(seconds, 3),
                       _algorithms(target, uploaded) if target.checksums_supported else None, extra=blob_stats,
                       versions=versions, locked_until=until.isoformat(timespec="seconds") if until else None)
    copy.extra["bytes_uploaded"] = copy.bytes + manifest_bytes + blob_stats.get("blob_bytes_uploaded", 0)
    log.info("s3: copied %s %s (%d bytes) to %s in %.1fs (%.1f MiB/s)", store, pk, copy.bytes,
             target.url(target.key(store, pk, "")), seconds, copy.throughput_mib_s)
    return copy


def _algorithms(target: S3Target, files: list[RemoteFile]) -> str | None:
    """The additional checksums the files were sent with, e.g. "SHA256" or "SHA256, CRC32 (parts)"."""
    used = {part_checksum(target, f.bytes) for f in files} | {part_checksum(target, 0)}
    ordered = sorted((a for a in used if a), key=lambda a: (a != target.checksum_algorithm, a))
    return ", ".join(a if a == target.checksum_algorithm else f"{a} (parts)" for a in ordered) or None


def _blob_lists(artifact: Artifact) -> list[tuple[str, BlobList]]:
    try:
        return read_blob_lists(artifact)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationFailed(artifact.store, f"{BLOBS_FILE}: cannot read ({exc})") from None


def _distinct(artifact: Artifact) -> dict[str, tuple[Blob, Path]] | None:
    """Every listed file of every list by sha256 (one remote object each), with the folder it is read
    from; None when the artifact keeps nothing outside its folder."""
    lists = _blob_lists(artifact)
    if not lists:
        return None
    found: dict[str, tuple[Blob, Path]] = {}
    for name, blobs in lists:
        root = list_root(artifact, name, blobs)
        for blob in blobs.files:
            found.setdefault(blob.sha256, (blob, root))
    return found


def _remote_blob_ok(stored: dict[str, Any] | None, blob: Blob) -> bool:
    return (stored is not None and stored.get("ContentLength") == blob.bytes
            and (stored.get("Metadata") or {}).get(SHA256_METADATA) == blob.sha256)


def _upload_blobs(artifact: Artifact, target: S3Target, sent: _Counter, force: bool, until: datetime | None = None,
                  versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Send the listed repository files S3 lacks (by sha256); `force` re-sends every one. Locked: a blob
    already there stays locked until the latest of the slots listing it (its retention is lengthened)."""
    lock = lock_of(target) if until is not None else None
    versions = {} if versions is None else versions
    distinct = _distinct(artifact)
    if distinct is None:
        return {}
    stats = {"blobs": len(distinct), "blobs_uploaded": 0, "blob_bytes_uploaded": 0, "blobs_present": 0,
             "blob_bytes_present": 0}
    for sha, (blob, root) in distinct.items():
        key = target.blob_key(artifact.store, sha)
        present = None if force else head(target, key)
        if _remote_blob_ok(present, blob):
            assert present is not None
            if lock is not None and until is not None:
                extend(target, key, present.get("VersionId"), lock, until)
            if present.get("VersionId"):
                versions[key] = present["VersionId"]
            stats["blobs_present"] += 1
            stats["blob_bytes_present"] += blob.bytes
            continue
        sent.label = f"{artifact.store} {artifact.partition_key}: {blob.path} -> {target.url(key)}"
        written = _upload_file(target, artifact.store, root / blob.path, key, blob.bytes, sha, sent,
                               put_args(lock, until))
        if written.version_id:
            versions[key] = written.version_id
        stats["blobs_uploaded"] += 1
        stats["blob_bytes_uploaded"] += blob.bytes
    return stats


class _Counter:
    """Thread-safe progress adapter for the transfer manager's byte callbacks."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done, self.label = progress, total, 0, ""
        self._lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            done = self.done
        self.progress(self.label, done, self.total)


def part_checksum(target: S3Target, size: int) -> str | None:
    """The additional checksum a file of `size` bytes is sent with: the configured one (SHA256) for a
    single PutObject, whose full-object checksum the server verifies against the manifest's sha256; CRC32
    for each part of a multipart upload. A part's SHA256 is a second SHA256 pass over every byte on both
    sides and its composite can never be compared with the manifest (the profile of issue 19: 0.79 of
    boto3 with SHA256 parts, >= 0.9 with CRC32 ones, boto3's own default); the whole file's sha256 is
    already checked in the one read before the upload may complete."""
    if not target.checksum_algorithm:
        return None
    if size >= target.transfer_config.multipart_threshold and target.checksum_algorithm == "SHA256":
        return MULTIPART_CHECKSUM
    return target.checksum_algorithm


def _extra_args(target: S3Target, sha256: str, checksums: bool, locking: dict[str, Any] | None = None,
                size: int = 0) -> dict[str, Any]:
    extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: sha256}, **(locking or {})}
    if target.settings.storage_class:
        extra["StorageClass"] = target.settings.storage_class
    if target.settings.sse:
        extra["ServerSideEncryption"] = target.settings.sse
    algorithm = part_checksum(target, size) if checksums else None
    if algorithm:
        extra["ChecksumAlgorithm"] = algorithm
    return extra


def _checksum_refused(exc: BaseException) -> bool:
    if not isinstance(exc, bex.ClientError):
        return False
    err = exc.response.get("Error", {})
    text = f"{err.get('Code', '')} {err.get('Message', '')}".lower()
    return err.get("Code") in _CHECKSUM_REFUSALS and "checksum" in text


def _upload_file(target: S3Target, store: str, path: Path, key: str, size: int, sha256: str,
                 sent: _Counter, locking: dict[str, Any] | None = None) -> RemoteFile:
    client = target.client
    where = target.url(key)
    retried = False
    try:
        for attempt in _retrying(target):
            with attempt:
                checksums = target.checksums_supported is not False
                reader = VerifyingReader(path, size, sha256, store)
                try:
                    client.upload_fileobj(reader, target.bucket, key,
                                          ExtraArgs=_extra_args(target, sha256, checksums, locking, size),
                                          Config=target.transfer_config, Callback=sent)
                except Exception as exc:
                    retried = True
                    abort_incomplete_uploads(target, key, exact=True, quiet=True)
                    if checksums and target.checksums_supported is None and _checksum_refused(exc):
                        log.info("s3: %s refuses additional checksums; using x-amz-meta-sha256 only",
                                 target.settings.endpoint_url or "the endpoint")
                        target.checksums_supported = False
                        raise _RetryWithoutChecksum() from None
                    raise
                finally:
                    reader.close()
                if checksums:
                    target.checksums_supported = True
    except CbBackupsError:
        raise
    except Exception as exc:
        raise target.error("upload to", where, exc) from None
    if retried:  # an abort tried while the server was down failed quietly: no part of a failed attempt stays
        abort_incomplete_uploads(target, key, exact=True, quiet=True)
    stored = head(target, key)
    if stored is None or stored.get("ContentLength") != size:
        raise OffsiteError(f"s3: upload to {where} reported success but the object is "
                           f"{'missing' if stored is None else str(stored.get('ContentLength')) + ' bytes'}")
    # the HEAD just after the upload names its version: nobody else writes under a slot's keys meanwhile
    return RemoteFile(path.name, key, size, sha256, (stored.get("ETag") or "").strip('"') or None,
                      stored.get("ChecksumSHA256"), stored.get("VersionId"))


def abort_incomplete_uploads(target: S3Target, prefix: str, exact: bool = False, quiet: bool = False) -> int:
    """Abort multipart uploads under `prefix` (or of exactly that key); returns how many."""
    aborted = 0
    try:
        response = target.client.list_multipart_uploads(Bucket=target.bucket, Prefix=prefix)
        for upload in response.get("Uploads", []) or []:
            if exact and upload["Key"] != prefix:
                continue
            target.client.abort_multipart_upload(Bucket=target.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    except Exception as exc:
        if not quiet:
            raise target.error("aborting incomplete uploads under", target.url(prefix), exc) from None
    return aborted


# --- reading remote objects -----------------------------------------------------------


def unreachable(target: S3Target) -> str | None:
    """Why the bucket cannot be reached now (one quick HEAD, no retries), or None when it can."""
    try:
        target.client.head_bucket(Bucket=target.bucket)
    except (bex.BotoCoreError, bex.ClientError) as exc:
        return describe(exc, target.settings.endpoint_url)
    return None


def _manifest_sha(target: S3Target, key: str, version_id: str | None) -> str | None:
    """sha256 of a manifest (a small object): the given version, else the latest; None when absent."""
    if not version_id:
        return remote_sha256(target, key)
    body = _get_version(target, key, version_id)
    return None if body is None else hashlib.sha256(body).hexdigest()


def _stream(target: S3Target, key: str, version_id: str | None = None) -> Iterator[bytes]:
    try:
        body = target.client.get_object(**_get_args(target, key, version_id))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()
    except CbBackupsError:
        raise
    except Exception as exc:
        if _not_found(exc):
            raise OffsiteError(f"s3: {target.url(key)} is missing") from None
        raise target.error("reading", target.url(key), exc) from None


def _checksum_problem(name: str, stored: dict[str, Any], sha256_hex: str) -> str | None:
    """Compare the server's full-object SHA256 (single-part objects only) with the manifest."""
    remote = stored.get("ChecksumSHA256")
    if not remote or "-" in remote:  # absent, or composite (multipart: a hash of part hashes)
        return None
    expected = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    if remote != expected:
        return f"{name}: the server's SHA256 checksum differs from the manifest"
    return None


def head_version(target: S3Target, key: str, version_id: str | None) -> dict[str, Any] | None:
    """HEAD of one version of `key` (the latest when `version_id` is None); None when it is not there."""
    if not version_id:
        return head(target, key)
    try:
        return target.client.head_object(Bucket=target.bucket, Key=key, VersionId=version_id, ChecksumMode="ENABLED")
    except Exception as exc:
        if _not_found(exc):
            return None
        raise target.error("reading", f"{target.url(key)} version {version_id}", exc) from None


def _get_args(target: S3Target, key: str, version_id: str | None) -> dict[str, Any]:
    return {"Bucket": target.bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}


def verify_offsite(artifact: Artifact, target: S3Target, deep: bool = False,
                   versions: Mapping[str, str] | None = None) -> Verification:
    """Check the remote copy against the local manifest: manifest present and identical, every
    file present with the manifest's size and sha256 metadata; `deep` re-reads and hashes every object.
    With `versions` (recorded at upload) exactly those versions are checked, and a newer version under a
    key (an overwrite, or a delete marker) is reported; with Object Lock configured each version must be
    locked in the configured mode (GetObjectRetention) until at least the slot's retention end.

    An unreachable or refusing S3 endpoint is reported as a problem (ok=False), not raised."""
    store, pk = artifact.store, artifact.partition_key
    problems: list[str] = []
    details: dict[str, Any] = {"bucket": target.bucket, "prefix": target.key(store, pk, ""), "deep": deep,
                               "files_checked": 0, "bytes_read": 0, "versions": {}}
    lock = lock_of(target)
    expected_until = lock.retain_until(store, parse_iso(artifact.manifest.captured_at),
                                       parse_iso(artifact.manifest.finished_at)) if lock else None
    recorded = dict(versions or {})

    def check_version(name: str, key: str, stored: dict[str, Any]) -> None:
        """The lock of the version checked, and whether a newer one hides it."""
        version = stored.get("VersionId")
        details["versions"][key] = version
        if lock is not None:
            problem = lock_problem(target, name, key, version, lock, expected_until)
            if problem:
                problems.append(problem)
        if recorded.get(key):
            latest = latest_version(target, key)
            if latest != recorded[key]:
                problems.append(f"{name}: overwritten or deleted off-site (the latest version is "
                                f"{latest or 'a delete marker'}, the upload wrote {recorded[key]}; the recorded "
                                "version is the one verified and restored)")
    try:
        manifest_key = target.key(store, pk, MANIFEST)
        # a GET first: a HEAD's error has no body, so it could not say why S3 refused
        remote_manifest = _manifest_sha(target, manifest_key, recorded.get(manifest_key))
        manifest_head = head_version(target, manifest_key, recorded.get(manifest_key)) if remote_manifest else None
        if manifest_head is not None:
            check_version(MANIFEST, manifest_key, manifest_head)
        details["manifest_sha256"] = remote_manifest  # which manifest S3 holds: stale when not the local one
        if remote_manifest is None:
            problems.append(f"{MANIFEST}: missing remotely (the copy is incomplete)")
        elif remote_manifest != sha256_file(artifact.path(MANIFEST))[0]:
            problems.append(f"{MANIFEST}: the remote manifest differs from the local one")
        for record in artifact.manifest.files:
            key = target.key(store, pk, record.name)
            details["files_checked"] += 1
            stored = head_version(target, key, recorded.get(key))
            if stored is None:
                problems.append(f"{record.name}: missing remotely ({target.url(key)})")
                continue
            check_version(record.name, key, stored)
            if stored.get("ContentLength") != record.bytes:
                problems.append(f"{record.name}: {stored.get('ContentLength')} bytes remotely, manifest says "
                                f"{record.bytes}")
            meta = (stored.get("Metadata") or {}).get(SHA256_METADATA)
            if meta != record.sha256:
                problems.append(f"{record.name}: remote sha256 metadata {str(meta)[:12]}… differs from the "
                                f"manifest's {record.sha256[:12]}…")
            checksum = _checksum_problem(record.name, stored, record.sha256)
            if checksum:
                problems.append(checksum)
            if deep:
                digest = hashlib.sha256()
                size = 0
                for block in _stream(target, key, stored.get("VersionId") if recorded else None):
                    digest.update(block)
                    size += len(block)
                details["bytes_read"] += size
                if size != record.bytes or digest.hexdigest() != record.sha256:
                    problems.append(f"{record.name}: remote content ({size} bytes, sha256 "
                                    f"{digest.hexdigest()[:12]}…) differs from the manifest "
                                    f"({record.bytes} bytes, {record.sha256[:12]}…)")
        problems += _blob_problems(artifact, target, deep, details, recorded)
    except CbBackupsError as exc:
        problems.append(str(exc))
    return Verification(ok=not problems, problems=problems, details=details)


def _blob_problems(artifact: Artifact, target: S3Target, deep: bool, details: dict[str, Any],
                   recorded: Mapping[str, str] | None = None) -> list[str]:
    """Every listed repository file present off-site with its size and sha256 (each object read once); the
    recorded version when there is one, locked when Object Lock is configured."""
    recorded = recorded or {}
    lock = lock_of(target)
    distinct = _distinct(artifact)
    if distinct is None:
        return []
    problems = []
    details["blobs_checked"] = 0
    for sha, (blob, _) in distinct.items():
        key = target.blob_key(artifact.store, sha)
        details["blobs_checked"] += 1
        stored = head_version(target, key, recorded.get(key))
        if stored is None:
            problems.append(f"repository file {blob.path}: missing remotely ({target.url(key)})")
            continue
        details["versions"][key] = stored.get("VersionId")
        if lock is not None:
            problem = lock_problem(target, f"repository file {blob.path}", key, stored.get("VersionId"), lock, None)
            if problem:
                problems.append(problem)
        if not _remote_blob_ok(stored, blob):
            meta = str((stored.get("Metadata") or {}).get(SHA256_METADATA))
            problems.append(f"repository file {blob.path}: {target.url(key)} is {stored.get('ContentLength')} "
                            f"bytes with sha256 metadata {meta[:12]}…, the manifest says {blob.bytes} bytes, "
                            f"{sha[:12]}…")
            continue
        if deep:
            digest, size = hashlib.sha256(), 0
            for block in _stream(target, key, stored.get("VersionId") if recorded else None):
                digest.update(block)
                size += len(block)
            details["bytes_read"] += size
            if size != blob.bytes or digest.hexdigest() != sha:
                problems.append(f"repository file {blob.path}: remote content ({size} bytes, sha256 "
                                f"{digest.hexdigest()[:12]}…) differs from the manifest ({blob.bytes} bytes, "
                                f"{sha[:12]}…)")
    return problems


@dataclass(frozen=True)
class RemoteObject:
    """One object of a slot's off-site copy with what its content must be (for the rotating deep check)."""

    key: str
    version_id: str | None  # the version recorded at upload; None: the latest
    bytes: int
    sha256: str
    what: str  # "<partition> <file>" for messages


def slot_objects(artifact: Artifact, target: S3Target, versions: Mapping[str, str] | None = None
                 ) -> list[RemoteObject]:
    """Every object of the slot's off-site copy but its manifest (small, read by every shallow check):
    the files, then the repository files it lists (when the list is on the local disk)."""
    store, pk, recorded = artifact.store, artifact.partition_key, dict(versions or {})
    found = []
    for record in artifact.manifest.files:
        key = target.key(store, pk, record.name)
        found.append(RemoteObject(key, recorded.get(key), record.bytes, record.sha256, f"{pk} {record.name}"))
    try:
        distinct = _distinct(artifact) or {}
    except VerificationFailed:
        distinct = {}  # the list is not on this disk (the slot came from S3): its files are not covered here
    for sha, (blob, _) in distinct.items():
        key = target.blob_key(store, sha)
        found.append(RemoteObject(key, recorded.get(key), blob.bytes, sha, f"{pk} repository file {blob.path}"))
    return found


def read_sha256(target: S3Target, key: str, version_id: str | None = None) -> tuple[str, int]:
    """(sha256, bytes) of an object's content, streamed; OffsiteError when it is missing or unreadable."""
    digest, size = hashlib.sha256(), 0
    for block in _stream(target, key, version_id):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


# --- download (restore from off-site) ---------------------------------------------------


def download_artifact(store: str, partition_key: str, target: S3Target, into_dir: Path,
                      progress: Progress = no_progress, versions: Mapping[str, str] | None = None) -> Path:
    """Download a complete off-site copy into `into_dir` (created 0700), verifying sha256 while
    streaming. Files land under temporary names and are renamed only once verified; manifest.json
    is written last. Raises VerificationFailed on a mismatch (the bad file is removed).

    In a locked bucket the versions recorded at upload are read (`versions`, or without a record the
    oldest version of each object): an overwrite by someone else is a newer version and is ignored."""
    into_dir = Path(into_dir)
    manifest_key = target.key(store, partition_key, MANIFEST)
    pick = _version_picker(target, versions)
    raw = _get_version(target, manifest_key, pick(manifest_key))
    if raw is None:
        raise OffsiteError(f"s3: no complete copy of {store} {partition_key}: {target.url(manifest_key)} is missing")
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        raise VerificationFailed(store, f"{target.url(manifest_key)} is not a readable manifest") from None
    if manifest.store != store or manifest.partition_key != partition_key:
        raise VerificationFailed(store, f"{target.url(manifest_key)} describes {manifest.store} "
                                        f"{manifest.partition_key}, not {store} {partition_key}")
    private_dir(into_dir)
    (into_dir / MANIFEST).unlink(missing_ok=True)  # a folder refilled by a failed download never looks complete
    total, done = manifest.total_bytes, 0
    for record in manifest.files:
        if "/" in record.name or record.name in ("", ".", "..") or record.name == MANIFEST:
            raise VerificationFailed(store, f"manifest names an unsafe file {record.name!r}")
        key = target.key(store, partition_key, record.name)
        _download_verified(target, store, key, pick(key), into_dir / record.name, record.bytes, record.sha256,
                           record.name, lambda n, d=done, label=f"{store} {partition_key}: {record.name}":
                           progress(label, d + n, total), durable=False)
        done += record.bytes
    for name in list_names(r.name for r in manifest.files):
        _download_blobs(store, target, into_dir, name, progress, pick)
    atomic_write_bytes(into_dir / MANIFEST, raw)
    write_seal(into_dir)  # sealed as downloaded; the manifest itself is checked against S3 by the restore
    fsync_dir(into_dir)
    return into_dir


def _download_blobs(store: str, target: S3Target, into_dir: Path, list_name: str, progress: Progress,
                    pick: Callable[[str], str | None] = lambda key: None) -> None:
    """The files of list `list_name` into `<into_dir>/repository/<path>` (`<prefix>__repository/` for a
    prefixed list), each verified while streaming."""
    try:
        blobs = parse_blob_list((into_dir / list_name).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationFailed(store, f"{list_name}: cannot read ({exc})") from None
    done, total = 0, blobs.total_bytes
    for blob in blobs.files:
        key = target.blob_key(store, blob.sha256)
        final = into_dir / carried_dir(list_name) / blob.path
        private_dir(final.parent)
        _download_verified(target, store, key, pick(key), final, blob.bytes, blob.sha256,
                           f"repository file {blob.path}",
                           lambda n, d=done, label=f"{store}: repository file {blob.path}": progress(label, d + n,
                                                                                                      total),
                           durable=False)
        done += blob.bytes


def _download_verified(target: S3Target, store: str, key: str, version_id: str | None, final: Path,
                       expect_bytes: int, expect_sha256: str, what: str, progress: Callable[[int], None],
                       durable: bool = True) -> None:
    """Stream `key` into a temporary name beside `final`, hashing as it comes; renamed to `final` only when
    its size and sha256 are the expected ones. Anything else removes the partial file and raises.
    `durable` False: no fsync, for a restore's download folder (removed afterwards; a crash restarts the
    restore, so flushing 100s of MiB to the disk first only delays it)."""
    partial = final.with_name(f".{final.name}.part")
    try:
        for attempt in _retrying(target):
            with attempt, (HashingWriter(partial) if durable else _HashingFile(partial)) as out:
                for block in _stream_raw(target, key, version_id):
                    out.write(block)
                    progress(out.bytes)
        if out.bytes != expect_bytes or out.sha256 != expect_sha256:
            raise VerificationFailed(store, f"{what} from {target.url(key)}: {out.bytes} bytes, sha256 "
                                            f"{out.sha256[:12]}…; the manifest says {expect_bytes} bytes, "
                                            f"{expect_sha256[:12]}…")
    except CbBackupsError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:
        partial.unlink(missing_ok=True)
        if _not_found(exc):
            raise VerificationFailed(store, f"{what}: missing remotely ({target.url(key)})") from None
        raise target.error("downloading", target.url(key), exc) from None
    os.replace(partial, final)
    remember_digest(final, expect_sha256)  # a restore reading it next need not hash it again


class _HashingFile:
    """A private (0600) file that hashes what is written to it, without fsync (see `_download_verified`)."""

    def __init__(self, path: Path) -> None:
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _version_picker(target: S3Target, versions: Mapping[str, str] | None) -> Callable[[str], str | None]:
    """Which version of a key a restore reads: the recorded one; in a locked bucket without a record, the
    oldest; otherwise the latest (None)."""
    recorded = dict(versions or {})
    locked = lock_of(target) is not None

    def pick(key: str) -> str | None:
        if key in recorded:
            return recorded[key]
        return oldest_version(target, key) if locked else None

    return pick


def manifest_head(target: S3Target, store: str, partition_key: str, versions: Mapping[str, str] | None = None
                  ) -> dict[str, Any] | None:
    """The HEAD of the manifest version a restore reads (see `download_artifact`), None when absent."""
    key = target.key(store, partition_key, MANIFEST)
    return head_version(target, key, _version_picker(target, versions)(key))


def _get_version(target: S3Target, key: str, version_id: str | None) -> bytes | None:
    if not version_id:
        return get_bytes(target, key)
    try:
        return target.client.get_object(**_get_args(target, key, version_id))["Body"].read()
    except Exception as exc:
        if _not_found(exc):
            return None
        raise target.error("reading", f"{target.url(key)} version {version_id}", exc) from None


def _stream_raw(target: S3Target, key: str, version_id: str | None = None) -> Iterator[bytes]:
    """GET body in chunks; client errors propagate untranslated (for the retry loop)."""
    body = target.client.get_object(**_get_args(target, key, version_id))["Body"]
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


# --- listing and deleting ---------------------------------------------------------------


def _keys(target: S3Target, prefix: str) -> Iterator[str]:
    try:
        pages = target.client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []) or []:
                yield obj["Key"]
    except Exception as exc:
        raise target.error("listing", target.url(prefix), exc) from None


def list_offsite(store: str, target: S3Target) -> list[str]:
    """Partition keys of `store` that have a complete copy (a manifest.json), sorted."""
    folder = target.folder(store)
    found = []
    for key in _keys(target, folder):
        rest = key[len(folder):]
        parts = rest.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST:
            found.append(parts[0])
    return sorted(found)


def _delete_key(target: S3Target, key: str) -> None:
    try:
        target.client.delete_object(Bucket=target.bucket, Key=key)
    except Exception as exc:
        if not _not_found(exc):
            raise target.error("deleting", target.url(key), exc) from None


def delete_offsite(store: str, partition_key: str, target: S3Target) -> list[str]:
    """Delete one off-site copy: the manifest FIRST (so a half-deleted copy never looks complete),
    then every other object under the partition, then incomplete multipart uploads. Returns the keys."""
    folder = target.key(store, partition_key, "")
    manifest_key = folder + MANIFEST
    deleted = []
    if head(target, manifest_key) is not None:
        _delete_key(target, manifest_key)
        deleted.append(manifest_key)
    for key in list(_keys(target, folder)):
        _delete_key(target, key)
        deleted.append(key)
    abort_incomplete_uploads(target, folder, quiet=True)
    return deleted


@dataclass
class LockedDeletion:
    """What a deletion in a locked bucket did: the versions deleted, and until when the rest stay locked."""

    deleted: list[str] = field(default_factory=list)  # "<key>@<version id>"
    locked_until: datetime | None = None  # the latest retain-until among the versions that stay

    @property
    def complete(self) -> bool:
        return self.locked_until is None


def _delete_version(target: S3Target, key: str, version_id: str) -> bool:
    """Delete one version; False when the server refuses because it is still locked (its clock decides)."""
    try:
        target.client.delete_object(Bucket=target.bucket, Key=key, VersionId=version_id)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code == "AccessDenied":
            return False
        if not _not_found(exc):
            raise target.error("deleting", f"{target.url(key)} version {version_id}", exc) from None
    return True


def _delete_expired(target: S3Target, rows: list[Any], now: datetime, result: LockedDeletion,
                    stop_when_locked: bool = False) -> bool:
    """Delete each version whose lock expired (delete markers have none); True when one stays locked."""
    held = False
    for row in rows:
        until = None if row.delete_marker else retention(target, row.key, row.version_id).until
        if (until is not None and until > now) or not _delete_version(target, row.key, row.version_id):
            held = True
            until = until or now
            result.locked_until = max(result.locked_until or until, until)
            if stop_when_locked:
                return True
            continue
        result.deleted.append(f"{row.key}@{row.version_id}")
    return held


def delete_offsite_expired(store: str, partition_key: str, target: S3Target, now: datetime | None = None
                           ) -> LockedDeletion:
    """A locked (versioned) bucket's `delete_offsite`: every version of every object of the slot whose
    retention has ended, the manifest's versions FIRST; while any manifest version is still locked nothing
    else of the slot is touched (a copy that stays must stay complete)."""
    now = now or utcnow()
    folder = target.key(store, partition_key, "")
    manifest_key = folder + MANIFEST
    rows = object_versions(target, folder)
    result = LockedDeletion()
    if _delete_expired(target, [r for r in rows if r.key == manifest_key], now, result, stop_when_locked=True):
        return result
    _delete_expired(target, [r for r in rows if r.key != manifest_key], now, result)
    abort_incomplete_uploads(target, folder, quiet=True)
    return result



def delete_unreferenced_blobs(store: str, target: S3Target) -> list[str]:
    """Delete the shared blobs of `store` that no slot's repository file list names (complete copies and
    copies still being uploaded alike: the list is uploaded before any blob). A list that cannot be read
    stops this: nothing is deleted on a guess. Returns the deleted keys."""
    folder = target.folder(store)
    listed: set[str] = set()
    for key in _keys(target, folder):
        parts = key[len(folder):].split("/")
        if len(parts) == 2 and list_names([parts[1]]) and parts[0] != BLOB_FOLDER:
            raw = get_bytes(target, key)
            if raw is None:
                continue  # deleted meanwhile: its slot is gone
            try:
                listed |= {b.sha256 for b in parse_blob_list(raw).files}
            except (ValueError, KeyError, TypeError) as exc:
                raise OffsiteError(f"s3: {target.url(key)} cannot be read ({exc}); no shared blob deleted") from None
    deleted = []
    prefix = f"{folder}{BLOB_FOLDER}/"
    if lock_of(target) is not None:  # locked: only versions whose retention ended (the latest slot's)
        result = LockedDeletion()
        _delete_expired(target, [r for r in object_versions(target, prefix) if r.key[len(prefix):] not in listed],
                        utcnow(), result)
        return result.deleted
    for key in list(_keys(target, prefix)):
        if key[len(prefix):] not in listed:
            _delete_key(target, key)
            deleted.append(key)
    return deleted


# --- single objects (the WAL archive's segments, offsite/wal.py) -----------------------


def upload_object(target: S3Target, store: str, path: Path, key: str, size: int, sha256: str,
                  locking: dict[str, Any] | None = None) -> RemoteFile:
    """One local file to `key`: verified while streaming, retried, the server's checksum when it has one."""
    return _upload_file(target, store, path, key, size, sha256, _Counter(no_progress, size), locking)


def download_object(target: S3Target, store: str, key: str, version_id: str | None, final: Path, size: int,
                    sha256: str, what: str) -> None:
    """One object to `final`, renamed into place only when its size and sha256 are `size` and `sha256`."""
    _download_verified(target, store, key, version_id, final, size, sha256, what, lambda n: None)


def delete_object(target: S3Target, key: str, now: datetime | None = None) -> LockedDeletion:
    """Delete one key: in a locked bucket only the versions whose lock expired (`locked_until` says until
    when the rest stays), otherwise the key itself."""
    result = LockedDeletion()
    if lock_of(target) is None:
        _delete_key(target, key)
        result.deleted.append(key)
        return result
    _delete_expired(target, [r for r in object_versions(target, key) if r.key == key], now or utcnow(), result)
    return result
