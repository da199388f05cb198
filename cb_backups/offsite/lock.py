"""S3 Object Lock for off-site copies (`offsite.object_lock`): no Dagster here.

With a lock configured, every object of a slot (its files, shared repository blobs, the manifest) is
written with `ObjectLockMode` and a retain-until date (config/retention.py `ObjectLock.retain_until`),
so the backup credentials can neither delete nor overwrite it before then: a DeleteObject of a locked
version is AccessDenied, a PutObject or a plain DeleteObject only adds a newer version or a delete marker.
That is why the version id of every object is recorded at upload (`offsite/versions.py`) and read back
by verification and restores: a newer version under the same key is an overwrite, detected and ignored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cb_backups.config.retention import ObjectLock
from cb_backups.core.errors import CbBackupsError, ConfigError
from cb_backups.stores.s3client import S3Target, describe
from cb_backups.stores.s3client import not_found as _not_found

_checked: set[tuple[str | None, str]] = set()  # (endpoint, bucket) whose lock configuration was confirmed
_checked_lock = threading.Lock()


def lock_of(target: S3Target) -> ObjectLock | None:
    return target.settings.object_lock


def bucket_problems(target: S3Target) -> list[str]:
    """Why the bucket cannot hold locked copies (versioning and Object Lock both enabled), or []."""
    client, bucket, problems = target.client, target.bucket, []
    try:
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status")
    except Exception as exc:
        return [f"s3://{bucket}: cannot read its versioning ({describe(exc, target.settings.endpoint_url)})"]
    if versioning != "Enabled":
        problems.append(f"s3://{bucket}: versioning is {versioning or 'off'}, Object Lock needs it Enabled")
    try:
        config = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration") or {}
        enabled = config.get("ObjectLockEnabled") == "Enabled"
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code != "ObjectLockConfigurationNotFoundError":
            return [*problems, f"s3://{bucket}: cannot read its Object Lock configuration "
                               f"({describe(exc, target.settings.endpoint_url)})"]
        enabled = False
    if not enabled:
        problems.append(f"s3://{bucket}: Object Lock is not enabled (it can only be turned on when the bucket is "
                        "created: `aws s3api create-bucket --object-lock-enabled-for-bucket`)")
    return problems


def require_locking_bucket(target: S3Target) -> ObjectLock | None:
    """The configured lock, after confirming (once per bucket) that the bucket supports it; a bucket that
    does not is a configuration error (exit 2), never an unlocked copy."""
    lock = lock_of(target)
    if lock is None:
        return None
    where = (target.settings.endpoint_url, target.bucket)
    with _checked_lock:
        if where in _checked:
            return lock
    problems = bucket_problems(target)
    if problems:
        raise ConfigError("offsite.object_lock", f"{lock.mode} on bucket {target.bucket}",
                          "a bucket with versioning and Object Lock enabled: " + "; ".join(problems))
    with _checked_lock:
        _checked.add(where)
    return lock


def put_args(lock: ObjectLock | None, until: datetime | None) -> dict[str, Any]:
    """ExtraArgs for an upload written locked until `until`."""
    if lock is None or until is None:
        return {}
    return {"ObjectLockMode": lock.mode, "ObjectLockRetainUntilDate": until}


@dataclass(frozen=True)
class Retention:
    mode: str | None
    until: datetime | None

    def active(self, now: datetime) -> bool:
        return self.until is not None and self.until > now


def retention(target: S3Target, key: str, version_id: str | None) -> Retention:
    """GetObjectRetention of one version (none: Retention(None, None))."""
    args: dict[str, Any] = {"Bucket": target.bucket, "Key": key}
    if version_id:
        args["VersionId"] = version_id
    try:
        found = target.client.get_object_retention(**args).get("Retention") or {}
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError") or _not_found(exc):
            return Retention(None, None)
        raise target.error("reading the retention of", target.url(key), exc) from None
    until = found.get("RetainUntilDate")
    return Retention(found.get("Mode"), until.astimezone(UTC) if until else None)


def lock_problem(target: S3Target, name: str, key: str, version_id: str | None, lock: ObjectLock,
                 expected_until: datetime | None) -> str | None:
    """Whether the version is locked in the configured mode until at least `expected_until`."""
    found = retention(target, key, version_id)
    if found.mode != lock.mode or found.until is None:
        return f"{name}: not locked ({found.mode or 'no retention'}; {lock.mode} expected)"
    if expected_until is not None and found.until < expected_until.replace(microsecond=0):
        return f"{name}: locked only until {found.until.isoformat(timespec='seconds')}, expected " \
               f"{expected_until.isoformat(timespec='seconds')}"
    return None


def extend(target: S3Target, key: str, version_id: str | None, lock: ObjectLock, until: datetime) -> None:
    """Lock a shared object at least until `until` (a retention is only ever lengthened)."""
    found = retention(target, key, version_id)
    if found.until is not None and found.until >= until.replace(microsecond=0):
        return
    args: dict[str, Any] = {"Bucket": target.bucket, "Key": key,
                            "Retention": {"Mode": lock.mode, "RetainUntilDate": until}}
    if version_id:
        args["VersionId"] = version_id
    try:
        target.client.put_object_retention(**args)
    except Exception as exc:
        raise target.error("extending the lock of", target.url(key), exc) from None


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    latest: bool
    delete_marker: bool
    modified: datetime | None


def versions(target: S3Target, prefix: str) -> list[Version]:
    """Every version and delete marker under `prefix`, oldest first per key."""
    found: list[tuple[int, Version]] = []  # with the listing position: S3 lists each key's versions newest first
    try:
        for page in target.client.get_paginator("list_object_versions").paginate(Bucket=target.bucket,
                                                                                  Prefix=prefix):
            for marker, rows in ((False, page.get("Versions") or []), (True, page.get("DeleteMarkers") or [])):
                found += [(len(found) + i, Version(r["Key"], r["VersionId"], bool(r.get("IsLatest")), marker,
                                                   r.get("LastModified"))) for i, r in enumerate(rows)]
    except CbBackupsError:
        raise
    except Exception as exc:
        raise target.error("listing the versions under", target.url(prefix), exc) from None
    epoch = datetime.min.replace(tzinfo=UTC)
    # LastModified has whole seconds: an overwrite within the second of the upload ties with it, so ties go by
    # IsLatest, then by the listing order (later listed = older), never by chance
    ordered = sorted(found, key=lambda p: (p[1].key, p[1].modified or epoch, p[1].latest, -p[0]))
    return [v for _, v in ordered]


def latest_version(target: S3Target, key: str) -> str | None:
    """The version id a plain GET would read now (None: the key has no live version)."""
    for version in versions(target, key):
        if version.key == key and version.latest:
            return None if version.delete_marker else version.version_id
    return None


def oldest_version(target: S3Target, key: str) -> str | None:
    """The first version written under `key`: what a restore without a local record reads (a later one may be
    an overwrite; the first one, locked, cannot be removed)."""
    for version in versions(target, key):
        if version.key == key and not version.delete_marker:
            return version.version_id
    return None
