"""Off-site copies of the WAL archive (no Dagster): every recorded segment's stored file and its record.

Layout: ``<prefix>/postgres_wal/segments/<name>.zst`` (``.zst.age`` when encrypted) and, uploaded after it,
``<prefix>/postgres_wal/segments/<name>.json`` (the record: sha256 of the stored and of the WAL file). As
on disk, the record is the completeness marker: uploaded last, deleted first.

Each object goes through `s3.upload_object` (hashed while streaming, retried with tenacity, the server's
checksum where it has one, Object Lock when configured: locked as long as the postgres backups plus the
lock's margin), then its size and x-amz-meta-sha256 are read back. Only then is the copy recorded on the
backup disk, ``<backup_dir>/postgres_wal/offsite/<name>.json`` (keys, version ids, when verified), so each
segment is copied once and its off-site state is known without asking S3.

`fetch` brings a segment back into the local archive (stored file verified against the off-site record
while streaming, the record written last), for a point-in-time restore whose local WAL is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cb_backups.core.catalog import iso, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError, VerificationFailed
from cb_backups.core.fileio import atomic_write_json, private_dir, sha256_file
from cb_backups.core.model import Outcome
from cb_backups.offsite import s3
from cb_backups.offsite.lock import oldest_version, put_args, require_locking_bucket
from cb_backups.stores.pitr.archive import WAL_STORE, Segment, WalArchive
from cb_backups.stores.pitr.server import STORE
from cb_backups.stores.pitr.wal import HISTORY, SEGMENT
from cb_backups.stores.s3client import not_found, object_sizes

FOLDER = "segments"


@dataclass(frozen=True)
class OffsiteSegment:
    """A segment's verified off-site copy, as recorded on the backup disk."""

    name: str
    key: str
    bytes: int
    sha256: str
    record_key: str
    verified_at: str
    version_id: str | None = None
    record_version_id: str | None = None
    locked_until: str | None = None


@dataclass
class WalCopy:
    copied: list[str] = field(default_factory=list)
    already: int = 0
    problems: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass
class WalDeletion:
    deleted: list[str] = field(default_factory=list)  # segment names whose record and file are gone off-site
    locked: dict[str, str] = field(default_factory=dict)  # name -> locked until (kept, said so)


def key_of(target: s3.S3Target, file_name: str) -> str:
    return target.key(WAL_STORE, FOLDER, file_name)


# --- the local record of off-site state ----------------------------------------------------------


def state(archive: WalArchive, name: str) -> OffsiteSegment | None:
    try:
        return OffsiteSegment(**json.loads((archive.offsite_dir / f"{name}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save(archive: WalArchive, copy: OffsiteSegment) -> None:
    private_dir(archive.offsite_dir)
    atomic_write_json(archive.offsite_dir / f"{copy.name}.json", asdict(copy))


def forget(archive: WalArchive, name: str) -> None:
    (archive.offsite_dir / f"{name}.json").unlink(missing_ok=True)


def is_offsite(archive: WalArchive, segment: Segment) -> bool:
    """Copied and verified: the recorded copy is of this very stored file."""
    copy = state(archive, segment.name)
    return copy is not None and (copy.sha256, copy.bytes) == (segment.sha256, segment.bytes)


def pending(archive: WalArchive, before: datetime | None = None) -> list[Segment]:
    """Recorded segments (and history files) not verified off-site yet, completed before `before`."""
    found = [*archive.histories(), *archive.segments()]
    return [s for s in found if not is_offsite(archive, s) and (before is None or s.completed < before)]


def newest_verified(archive: WalArchive) -> Segment | None:
    """The newest segment whose off-site copy is verified (the off-site RPO of the WAL)."""
    for segment in reversed(archive.segments()):
        if is_offsite(archive, segment):
            return segment
    return None


# --- copying and verifying -----------------------------------------------------------------------


def copy_segment(archive: WalArchive, target: s3.S3Target, segment: Segment, now: datetime | None = None
                 ) -> OffsiteSegment:
    """Upload the stored file, then its record; read both back; record the verified copy locally."""
    now = now or utcnow()
    # Size only here: the upload hashes the file in its one read and refuses (LocalFileMismatch) to complete
    # an object whose sha256 is not the record's, so a file changed since it was recorded is never copied.
    problems = archive.missing(segment)
    if problems:
        raise VerificationFailed(WAL_STORE, "; ".join(problems))
    lock = require_locking_bucket(target)
    until = lock.retain_until(STORE, segment.completed, now) if lock else None
    locking = put_args(lock, until)
    data_key, record_key = key_of(target, segment.file_name), key_of(target, segment.record_name)
    sent = s3.upload_object(target, WAL_STORE, archive.path(segment), data_key, segment.bytes, segment.sha256,
                            locking)
    record_sha, record_bytes = sha256_file(archive.record_path(segment))
    record = s3.upload_object(target, WAL_STORE, archive.record_path(segment), record_key, record_bytes, record_sha,
                              locking)
    copy = OffsiteSegment(segment.name, data_key, segment.bytes, segment.sha256, record_key, iso(utcnow()),
                          sent.version_id, record.version_id, until.isoformat(timespec="seconds") if until else None)
    problems = remote_problems(target, copy)
    if problems:
        raise VerificationFailed(WAL_STORE, "; ".join(problems))
    _save(archive, copy)
    return copy


def copy_pending(archive: WalArchive, target: s3.S3Target, before: datetime | None = None) -> WalCopy:
    """Copy every segment not verified off-site yet (oldest first); one failing segment does not stop the rest."""
    result = WalCopy()
    todo = pending(archive, before)
    result.already = len([*archive.histories(), *archive.segments()]) - len(todo)
    for segment in todo:
        try:
            copy_segment(archive, target, segment)
        except CbBackupsError as exc:
            result.problems.append(f"{segment.name}: {exc}")
            continue
        result.copied.append(segment.name)
        result.bytes += segment.bytes
    return result


def remote_problems(target: s3.S3Target, copy: OffsiteSegment, deep: bool = False) -> list[str]:
    """The off-site objects of one segment: present, the recorded size and sha256 (`deep` re-reads the data)."""
    problems = []
    stored = s3.head_version(target, copy.key, copy.version_id)
    if stored is None:
        return [f"{copy.name}: {target.url(copy.key)} is missing"]
    remote_sha = (stored.get("Metadata") or {}).get(s3.SHA256_METADATA)
    if stored.get("ContentLength") != copy.bytes or remote_sha != copy.sha256:
        problems.append(f"{copy.name}: {target.url(copy.key)} is {stored.get('ContentLength')} bytes, sha256 "
                        f"{(remote_sha or 'none')[:12]}…; recorded {copy.bytes} bytes, {copy.sha256[:12]}…")
    elif deep:
        digest, size = s3.read_sha256(target, copy.key, copy.version_id)
        if (digest, size) != (copy.sha256, copy.bytes):
            problems.append(f"{copy.name}: {target.url(copy.key)} reads as sha256 {digest[:12]}… ({size} bytes); "
                            f"recorded {copy.sha256[:12]}… ({copy.bytes} bytes)")
    if s3.head(target, copy.record_key) is None:
        problems.append(f"{copy.name}: its record {target.url(copy.record_key)} is missing")
    return problems


def verify_segments(archive: WalArchive, target: s3.S3Target | None, segments: Iterable[Segment],
                    deep: bool = False) -> list[str]:
    """Why any of `segments` is not off-site and verified (the per-hour check); [] when every one is."""
    problems = []
    for segment in segments:
        copy = state(archive, segment.name)
        if copy is None or (copy.sha256, copy.bytes) != (segment.sha256, segment.bytes):
            problems.append(f"{segment.name}: not copied off-site yet" if copy is None else
                            f"{segment.name}: the off-site copy is of another file (sha256 {copy.sha256[:12]}…)")
            continue
        if target is not None:
            problems += remote_problems(target, copy, deep)
    return problems


# --- reading back (point-in-time restore from off-site) ------------------------------------------------


def remote_names(target: s3.S3Target) -> set[str]:
    """Names of the WAL files (segments and history files) with a record off-site."""
    prefix = key_of(target, "")
    names = set()
    for key, _ in object_sizes(target, prefix):
        name = key[len(prefix):]
        if name.endswith(".json") and (SEGMENT.match(name[:-5]) or HISTORY.match(name[:-5])):
            names.add(name[:-5])
    return names


def _pick(archive: WalArchive, target: s3.S3Target, key: str, recorded: str | None) -> str | None:
    """The version to read: the one recorded at upload; in a locked bucket without a record, the oldest."""
    if recorded:
        return recorded
    return oldest_version(target, key) if target.settings.object_lock is not None else None


def remote_record(archive: WalArchive, target: s3.S3Target, name: str) -> Segment:
    """The off-site record of `name` (small; read when planning a restore, nothing written)."""
    copy = state(archive, name)
    key = key_of(target, f"{name}.json")
    version = _pick(archive, target, key, copy.record_version_id if copy else None)
    raw = s3.get_bytes(target, key) if version is None else _get(target, key, version)
    if raw is None:
        raise VerificationFailed(WAL_STORE, f"WAL segment {name}: no off-site record at {target.url(key)}")
    try:
        segment = Segment(**json.loads(raw))
    except (ValueError, TypeError):
        raise VerificationFailed(WAL_STORE, f"WAL segment {name}: {target.url(key)} is not a readable record") from None
    if segment.name != name:
        raise VerificationFailed(WAL_STORE, f"WAL segment {name}: {target.url(key)} describes {segment.name}")
    return segment


def _get(target: s3.S3Target, key: str, version_id: str) -> bytes | None:
    try:
        return target.client.get_object(Bucket=target.bucket, Key=key, VersionId=version_id)["Body"].read()
    except Exception as exc:
        if not_found(exc):
            return None
        raise target.error("reading", f"{target.url(key)} version {version_id}", exc) from None


def fetch(archive: WalArchive, target: s3.S3Target, segment: Segment) -> Segment:
    """Download `segment` (its off-site record) into the local archive: the stored file verified against the
    record's size and sha256 while streaming, renamed into place, then the record; VerificationFailed, naming
    the segment, on any mismatch (nothing is left behind)."""
    archive.prepare()
    copy = state(archive, segment.name)
    key = key_of(target, segment.file_name)
    version = _pick(archive, target, key, copy.version_id if copy else None)
    try:
        s3.download_object(target, WAL_STORE, key, version, archive.path(segment), segment.bytes, segment.sha256,
                           f"WAL segment {segment.name}")
    except VerificationFailed as exc:
        raise VerificationFailed(WAL_STORE, f"WAL segment {segment.name} from off-site: {exc}") from None
    archive.write_record(segment)
    if copy is None:
        _save(archive, OffsiteSegment(segment.name, key, segment.bytes, segment.sha256,
                                      key_of(target, segment.record_name), iso(utcnow()), version))
    return segment


# --- retention ---------------------------------------------------------------------------------------------


def delete(archive: WalArchive, target: s3.S3Target, names: Iterable[str], now: datetime | None = None
           ) -> WalDeletion:
    """Delete WAL files off-site: the record first (a segment without one does not exist), then the stored file
    (plain or encrypted). A locked object stays, and is said so; the local off-site state goes with both."""
    result = WalDeletion()
    for name in names:
        record = s3.delete_object(target, key_of(target, f"{name}.json"), now)
        if not record.complete:
            result.locked[name] = _until(record.locked_until)
            continue
        held = [d.locked_until for d in (s3.delete_object(target, key_of(target, f"{name}{suffix}"), now)
                                         for suffix in (".zst", ".zst.age")) if not d.complete]
        if held:
            result.locked[name] = _until(max((u for u in held if u), default=None))
            continue
        forget(archive, name)
        result.deleted.append(name)
    return result


def _until(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "unknown"


def age_seconds(segment: Segment, now: datetime | None = None) -> float:
    return ((now or utcnow()) - parse_iso(segment.completed_at)).total_seconds()


# --- checks --------------------------------------------------------------------------------------------------


def freshness(archive: WalArchive, limit_seconds: float, now: datetime | None = None) -> Outcome:
    """The newest segment verified off-site and its age (the off-site RPO of the WAL)."""
    newest = newest_verified(archive)
    meta: dict[str, Any] = {"limit_seconds": limit_seconds}
    if newest is None:
        return Outcome("offsite_freshness", False, "no WAL segment is verified off-site yet", meta)
    age = age_seconds(newest, now)
    meta.update(newest=newest.name, age_seconds=round(age, 1))
    return Outcome("offsite_freshness", age <= limit_seconds,
                   f"newest WAL segment verified off-site: {newest.name}, completed {age / 60:.1f} min ago "
                   f"(limit {limit_seconds / 60:g} min)", meta)


def outcomes(archive: WalArchive, target: s3.S3Target, start: datetime, end: datetime, limit_seconds: float,
             deep: bool = False) -> list[Outcome]:
    """The hour's checks: every segment completed in [start, end) verified off-site; the newest's age."""
    mine = [s for s in archive.segments() if start <= s.completed < end]
    problems = verify_segments(archive, target, mine, deep)
    meta: dict[str, Any] = {"segments": len(mine)}
    present = Outcome("segments_offsite", not problems,
                      "; ".join(problems[:10]) if problems else
                      (f"{len(mine)} segment(s) off-site, size and sha256 equal to their records" if mine else
                       "no segment completed in this hour (an idle server)"), meta)
    return [present, freshness(archive, limit_seconds)]


__all__ = ["FOLDER", "OffsiteSegment", "WalCopy", "WalDeletion", "copy_pending", "copy_segment", "delete", "fetch",
           "newest_verified", "pending", "remote_names", "remote_record", "verify_segments"]
