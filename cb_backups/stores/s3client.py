"""The S3 client every S3 user shares: the target (bucket, prefix, endpoint, retries), error translation,
HEAD/GET of small objects and listings with sizes. No Dagster here.

It sits in the stores layer so that a store whose data lives in S3 (an OpenSearch `s3` snapshot
repository) checks its objects with the same client, credentials chain and redaction as the off-site
copies (cb_backups.offsite.s3, which builds on this module). Credentials come from the standard AWS chain
(environment, profile, instance role) and never appear in messages: every client error becomes an
`OffsiteError` with the secret redacted, raised `from None`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as bex
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from cb_backups.config.redact import redact
from cb_backups.config.settings import S3Settings
from cb_backups.core.errors import CbBackupsError, ConfigError

BLOB_FOLDER = "_blobs"  # under <prefix>/<store>/: never a partition key (those never start with "_")
STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "SNOW", "EXPRESS_ONEZONE")
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
CHECKSUM_ALGORITHMS = ("SHA256", "SHA1", "CRC32", "CRC32C", "CRC64NVME")
MIN_PART_MB = 5  # S3's minimum multipart part size
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500", "502", "504"}


class OffsiteError(CbBackupsError):
    """An S3 operation failed; the message names the object and the cause, never a credential."""


_LOADER: botocore.loaders.Loader | None = None
_LOADER_LOCK = threading.Lock()


def _session() -> boto3.session.Session:
    """A new session (credentials resolved afresh from the AWS chain) sharing one parsed copy of botocore's
    service models: a fresh session parses them again, 45 ms of every restore's or copy's S3 set-up."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core)


class S3Target:
    """Where off-site copies go, built from `S3Settings`; credentials from the standard AWS chain.

    `max_attempts` is botocore's per-request budget (retry mode "standard" or
    "adaptive"); `file_attempts` is how many times a whole file is re-sent after
    connection errors, waiting up to `retry_wait_max` seconds between attempts.
    """

    def __init__(self, settings: S3Settings, session: boto3.session.Session | None = None, *,
                 retry_mode: str = "standard", max_attempts: int = 5, file_attempts: int = 4,
                 retry_wait_max: float = 30.0, connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 checksum_algorithm: str | None = "SHA256") -> None:
        if not settings.bucket:
            raise ConfigError("s3.bucket", settings.bucket, "a bucket name (set CB_S3_BUCKET)")
        if retry_mode not in ("standard", "adaptive"):
            raise ConfigError("s3 retry mode", retry_mode, "standard, adaptive")
        _at_least("s3.concurrency", settings.concurrency, 1)
        _at_least("s3.multipart_chunk_mb", settings.multipart_chunk_mb, MIN_PART_MB)
        _at_least("s3 max_attempts", max_attempts, 1)
        _at_least("s3 file_attempts", file_attempts, 1)
        if settings.storage_class is not None and settings.storage_class not in STORAGE_CLASSES:
            raise ConfigError("s3.storage_class", settings.storage_class, ", ".join(STORAGE_CLASSES))
        if settings.sse is not None and settings.sse not in SSE_MODES:
            raise ConfigError("s3.sse", settings.sse, ", ".join(SSE_MODES))
        if checksum_algorithm is not None and checksum_algorithm not in CHECKSUM_ALGORITHMS:
            raise ConfigError("s3 checksum algorithm", checksum_algorithm, ", ".join(CHECKSUM_ALGORITHMS))
        self.checksum_algorithm = checksum_algorithm
        self.settings = settings
        self.bucket: str = settings.bucket
        self.prefix = settings.prefix.strip("/")
        self.file_attempts = file_attempts
        self.retry_wait_max = retry_wait_max
        self._session = session or _session()
        self._config = Config(
            region_name=settings.region,
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, settings.concurrency * 2),
            s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
            # Checksums are requested explicitly (SHA256) below; no implicit CRC32 on every request.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = None
        self._lock = threading.Lock()
        # learned on the first upload; no additional checksum at all when checksum_algorithm is None
        self.checksums_supported: bool | None = None if checksum_algorithm else False

    def __repr__(self) -> str:
        return f"S3Target(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.settings.endpoint_url!r})"

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._session.client("s3", endpoint_url=self.settings.endpoint_url,
                                                    region_name=self.settings.region, config=self._config)
            return self._client

    @property
    def transfer_config(self) -> TransferConfig:
        chunk = self.settings.multipart_chunk_mb * 1024 * 1024
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=self.settings.concurrency, use_threads=True,
                                preferred_transfer_client="classic")
        # Parts of a non-seekable stream are buffered in memory: bound that to a few per worker.
        config.max_in_memory_upload_chunks = self.settings.concurrency * 2
        return config

    def folder(self, store: str) -> str:
        return "/".join(p for p in (self.prefix, store) if p) + "/"

    def key(self, store: str, partition_key: str, name: str) -> str:
        """`<prefix>/<store>/<partition_key>/<file>`."""
        return f"{self.folder(store)}{partition_key}/{name}"

    def blob_key(self, store: str, sha256: str) -> str:
        """`<prefix>/<store>/_blobs/<sha256>`: one object per content, shared by the slots listing it."""
        return f"{self.folder(store)}{BLOB_FOLDER}/{sha256}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def credentials(self) -> list[str]:
        """The session's AWS credentials (secret key, token, access key), for the redactor; none when unknown."""
        try:
            creds = self._session.get_credentials()
        except Exception:
            creds = None
        if creds is None:
            return []
        frozen = creds.get_frozen_credentials()
        return [v for v in (frozen.secret_key, frozen.token, frozen.access_key) if v]

    def error(self, action: str, where: str, exc: BaseException) -> OffsiteError:
        # belt and braces: botocore's messages should not carry credentials anyway
        message = f"s3: {action} {where} failed: {describe(exc, self.settings.endpoint_url)}"
        return OffsiteError(redact(message, self.credentials()))


def _at_least(what: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(what, value, f"a whole number >= {minimum}")


def describe(exc: BaseException, endpoint: str | None = None) -> str:
    """A one-line cause for a boto3/botocore failure (no stack, no request dump)."""
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code', 'error')} (HTTP {status}): {err.get('Message', '').strip() or 'no message'}"
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "or run with an instance/task role")
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError):
        return f"cannot connect to {endpoint or 'the S3 endpoint'} ({type(exc).__name__})"
    if isinstance(exc, bex.BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """Connection problems and 5xx/throttling answers: worth re-sending a whole file."""
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError | ConnectionError):
        return True
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return err.get("Code") in _TRANSIENT_CODES or status >= 500
    return False


def not_found(exc: BaseException) -> bool:
    if not isinstance(exc, bex.ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":  # a missing bucket is a configuration error, not a missing object
        return False
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


def head(target: S3Target, key: str) -> dict[str, Any] | None:
    """The object's HEAD response (size, metadata, checksum), None when absent."""
    try:
        return target.client.head_object(Bucket=target.bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as exc:
        if not_found(exc):
            return None
        raise target.error("reading", target.url(key), exc) from None


def remote_sha256(target: S3Target, key: str) -> str | None:
    """sha256 of a small object, by reading it (None when absent)."""
    body = get_bytes(target, key)
    return None if body is None else hashlib.sha256(body).hexdigest()


def get_bytes(target: S3Target, key: str) -> bytes | None:
    """A small object's whole body (a manifest), None when absent."""
    try:
        return target.client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    except Exception as exc:
        if not_found(exc):
            return None
        raise target.error("reading", target.url(key), exc) from None


def object_sizes(target: S3Target, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, paginated."""
    try:
        pages = target.client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []) or []:
                yield obj["Key"], int(obj["Size"])
    except Exception as exc:
        raise target.error("listing", target.url(prefix), exc) from None
