"""The backup catalog: where backups live on disk and when they count as complete.

Layout::

    <root>/<store>/<partition_key>/        one complete backup
        <artifact files>                   0600
        manifest.json                      written last; its presence means complete
        manifest.json.sha256               the manifest's seal: its sha256 (`sha256sum -c` format), written
                                           with it by every version; a changed manifest, or a missing seal,
                                           fails the checks
        verification.json                  the latest verification result (sidecar), with the size and
                                           mtime of every file when it was checked
    <root>/<store>/_safety/<stamp>/        safety backups taken before a restore
    <root>/<store>/_superseded/<key>/<stamp>/  an earlier backup of slot <key>, kept when a new backup of
                                           the slot replaced it (with superseded.json: when, and by which
                                           manifest); retention deletes it once the replacement verified
                                           (and, with off-site on, was copied and verified there)
    <root>/<store>/.staging-*/             a backup being written (never "looks good")
    <root>/.restore-<store>-*/<key>/       an off-site copy downloaded for a restore (removed afterwards)
    <root>/.decrypted-<store>-*/<key>/     an encrypted backup decrypted for a restore or check (0700,
                                           removed afterwards)
    <root>/_retention/deletions.jsonl      every deletion made by retention (for the auditor report)
    <root>/_reports/                       the auditor reports

Names starting with "." or "_" are never stores or backups: `list` and `stores` skip them.

A backup is written into a staging folder, every file fsynced, the manifest
written last, and then the folder is renamed into place, so a killed backup
leaves only a `.staging-*` folder that nothing reads and `sweep` removes.
No Dagster here.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cb_backups.core import crypto
from cb_backups.core.errors import BackupFailed, CbBackupsError, ConfigError
from cb_backups.core.fileio import (
    DiskFull,
    HashingWriter,
    atomic_write_bytes,
    atomic_write_json,
    free_bytes,
    fsync_dir,
    mount_point,
    private_dir,
    sha256_file,
)
from cb_backups.core.model import Artifact, BackupOutput, FileRecord, Manifest, Verification

MANIFEST = "manifest.json"
MANIFEST_SEAL = "manifest.json.sha256"
VERIFICATION = "verification.json"
SAFETY = "_safety"
SUPERSEDED = "_superseded"
SUPERSEDED_RECORD = "superseded.json"  # inside a superseded copy: when, and by which manifest, it was replaced
RETENTION_LOG = ("_retention", "deletions.jsonl")
REPORTS = "_reports"
HOOKS = "_hooks"  # stores/hooks.py: post_backup hooks owed by a running (or killed) backup
RESTORES = "_restores"  # restore.recovery's journals of in-place restores in progress
DOWNLOAD_PREFIX = ".restore-"
DECRYPT_PREFIX = ".decrypted-"  # an encrypted backup's plaintext, for the one restore/check that needs it
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


class SlotBusy(CbBackupsError):
    """Another process holds the lock for this store and slot."""


@dataclass(frozen=True)
class VerificationRecord:
    checked_at: str
    ok: bool
    problems: list[str]
    # name -> [bytes, mtime_ns] of every file (and the manifest and seal) when it was checked; empty in
    # records written before it existed
    files: dict[str, list[int]] = field(default_factory=dict)

    def changed_since(self, artifact: Artifact) -> list[str]:
        """Files whose size or mtime differ from when this record was made (a cheap test, not a re-hash)."""
        if not self.files:
            return ["no file fingerprint in the record"]
        now = fingerprint(artifact)
        return sorted(name for name in set(self.files) | set(now) if self.files.get(name) != now.get(name))


@dataclass(frozen=True)
class SupersededCopy:
    """An earlier backup of a slot, kept aside when a newer backup of the slot replaced it."""

    artifact: Artifact
    superseded_at: str
    replaced_by: str  # sha256 of the manifest of the backup that replaced it

    @property
    def name(self) -> str:
        """The copy's id within its slot (its folder name: a UTC stamp)."""
        return self.artifact.directory.name

    @property
    def label(self) -> str:
        """Where it is, relative to the store's folder: what the CLI and the run log print."""
        return f"{SUPERSEDED}/{self.artifact.partition_key}/{self.name}"


class Staging:
    """A folder being filled by one backup; becomes an Artifact on `commit`."""

    def __init__(self, catalog: Catalog, store: str, key: str, kind: str, started: datetime) -> None:
        self.catalog, self.store, self.key, self.kind, self.started = catalog, store, key, kind, started
        self.path = private_dir(catalog.store_dir(store) / f".staging-{key}-{uuid.uuid4().hex[:8]}")
        self.marked: crypto.Marked | None = None  # set while the backup writes, when it is encrypted

    def commit(self, output: BackupOutput) -> Artifact:
        if self.marked is not None:
            output.files = [self._sealed(record) for record in output.files]
            self.marked.active = False
        finished = utcnow()
        names = sorted(f.name for f in output.files)
        on_disk = sorted(p.name for p in self.path.iterdir())
        if names != on_disk:
            raise CbBackupsError(f"{self.store}: adapter reported files {names} but wrote {on_disk}")
        manifest = Manifest(
            store=self.store,
            partition_key=self.key,
            kind=self.kind,
            captured_at=output.captured_at or iso(self.started),
            finished_at=iso(finished),
            duration_seconds=round((finished - self.started).total_seconds(), 3),
            files=sorted(output.files, key=lambda f: f.name),
            method=output.method,
            options=output.options,
            versions=output.versions,
            inventory=output.inventory,
            markers=output.markers,
        )
        atomic_write_json(self.path / MANIFEST, manifest.to_json())
        write_seal(self.path)
        final = self.catalog.slot_dir(self.store, self.key, self.kind)
        private_dir(final.parent)
        replaced = None
        if final.exists():
            # Swap the old backup of this slot aside first; it is deleted only after
            # the new one is in place.
            replaced = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, replaced)
        os.rename(self.path, final)
        fsync_dir(final.parent)
        if replaced is not None:
            # Nothing good is replaced silently: the earlier backup is kept as a superseded copy.
            self.catalog.keep_superseded(self.store, self.key, replaced, sha256_file(final / MANIFEST)[0])
        return Artifact(final, manifest)

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _sealed(self, record: FileRecord) -> FileRecord:
        """`record`'s file as `<name>.age`: encrypted while written (HashingWriter), or now, in one streaming
        pass, for a file a tool wrote itself (neo4j-admin's dump); either way no plaintext stays behind."""
        assert self.marked is not None
        path = self.path / record.name
        if not path.is_file():
            return record  # the name check below reports it
        st = path.stat()
        sealed = self.marked.sealed.get((st.st_dev, st.st_ino))
        final = path.with_name(path.name + crypto.AGE_SUFFIX)
        if sealed is None:
            with open(path, "rb") as src, HashingWriter(final) as out:
                out.copy_from(src)  # `final` is under the marked folder: encrypted on its way
            st = final.stat()
            sealed = self.marked.sealed[(st.st_dev, st.st_ino)]
            path.unlink()
        else:
            os.rename(path, final)
        if (sealed.plaintext_sha256, sealed.plaintext_bytes) != (record.sha256, record.bytes):
            raise CbBackupsError(f"{self.store}: {record.name}: the adapter reported sha256 {record.sha256[:12]}… "
                                 f"({record.bytes} bytes) but {sealed.plaintext_sha256[:12]}… "
                                 f"({sealed.plaintext_bytes} bytes) was encrypted")
        return FileRecord(final.name, sealed.bytes, sealed.sha256, sealed.plaintext_sha256, sealed.plaintext_bytes,
                          sealed.recipients)


class Catalog:
    def __init__(self, root: Path, encryption: crypto.Encryption | None = None) -> None:
        self.root = Path(root)
        self.encryption = encryption or crypto.Encryption()

    # --- layout ------------------------------------------------------------
    def store_dir(self, store: str) -> Path:
        _check_name("store name", store)
        return self.root / store

    def slot_dir(self, store: str, key: str, kind: str = "backup") -> Path:
        _check_name("partition key", key)
        if kind == "safety":
            return self.safety_dir(store) / key
        return self.store_dir(store) / key

    def safety_dir(self, store: str) -> Path:
        """Where the safety backups taken before an in-place restore of `store` go."""
        return self.store_dir(store) / SAFETY

    def superseded_dir(self, store: str, key: str) -> Path:
        """Where the earlier backups of slot `key`, replaced by newer ones, are kept."""
        _check_name("partition key", key)
        return self.store_dir(store) / SUPERSEDED / key

    @property
    def deletions_log(self) -> Path:
        """The append-only log of every deletion retention made."""
        return self.root.joinpath(*RETENTION_LOG)

    def offsite_versions(self, store: str, key: str) -> Path:
        """The S3 version ids of a slot's off-site objects as uploaded (cb_backups.offsite.versions)."""
        _check_name("partition key", key)
        return self.root / "_offsite" / self.store_dir(store).name / f"{key}.json"

    def offsite_coverage(self, store: str) -> Path:
        """When each off-site object of `store` was last re-read and hashed (cb_backups.offsite.subset)."""
        return self.root / "_offsite" / "_coverage" / f"{self.store_dir(store).name}.json"

    def restore_journal(self, store: str) -> Path:
        """Where an in-place restore of `store` notes what it holds (writes stopped, data moved aside) while it
        runs, so a later process can put the store back in service if it was killed (restore.recovery)."""
        _check_name("store name", store)
        return self.root / RESTORES / f"{store}.json"

    def hook_marker(self, name: str) -> Path:
        """Where a backup notes that its post_backup hook is still owed (stores/hooks.py)."""
        _check_name("store name", name)
        return self.root / HOOKS / f"{name}.json"

    def restore_journals(self) -> list[Path]:
        folder = self.root / RESTORES
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    @property
    def reports_dir(self) -> Path:
        return self.root / REPORTS

    @contextmanager
    def download_dir(self, store: str, key: str) -> Iterator[Path]:
        """A private folder on the backup disk, hidden from the catalog, to download `store` `key` into
        (the yielded path does not exist yet); removed with everything in it afterwards."""
        _check_name("partition key", key)
        self.root.mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix=f"{DOWNLOAD_PREFIX}{store}-", dir=self.root))
        try:
            yield parent / key
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    @contextmanager
    def plaintext(self, artifact: Artifact) -> Iterator[Artifact]:
        """`artifact` itself, or for an encrypted one its decrypted copy: every `.age` file decrypted and
        authenticated into a private (0700) folder on the backup disk, its plaintext sha256 checked against
        the manifest, under the names it had before encryption (removed afterwards). Nothing else is read
        or touched before this succeeded; a missing or wrong identity is one IdentityMismatch line."""
        m = artifact.manifest
        if not m.encrypted:
            yield artifact
            return
        what = f"{m.store} {m.kind} {m.partition_key}"
        identities = self.encryption.identities()
        mine = {crypto.fingerprint(crypto.public_key(i)) for i in identities}
        if not mine & set(m.recipients):
            raise crypto.IdentityMismatch(crypto.mismatch_message(what, m.recipients, identities,
                                                                  self.encryption.identity_files))
        private_dir(self.root)
        parent = Path(tempfile.mkdtemp(prefix=f"{DECRYPT_PREFIX}{m.store}-", dir=self.root))
        try:
            folder = private_dir(parent / m.partition_key)
            files = []
            for record in m.files:
                if not record.encrypted:
                    (folder / record.name).symlink_to(artifact.path(record.name).resolve())
                    files.append(record)
                    continue
                name = record.name.removesuffix(crypto.AGE_SUFFIX)
                with open(artifact.path(record.name), "rb") as src, HashingWriter(folder / name) as out:
                    try:
                        crypto.decrypt_into(src, out, identities)
                    except crypto.DecryptError as exc:
                        raise CbBackupsError(f"{what}: {record.name} does not decrypt: {exc} (changed or "
                                             "truncated ciphertext fails age's authentication)") from None
                if (out.sha256, out.bytes) != (record.plaintext_sha256, record.plaintext_bytes):
                    raise CbBackupsError(f"{what}: {record.name} decrypts to sha256 {out.sha256[:12]}… "
                                         f"({out.bytes} bytes), the manifest says {str(record.plaintext_sha256)[:12]}… "
                                         f"({record.plaintext_bytes} bytes)")
                files.append(FileRecord(name, out.bytes, out.sha256))
            view = Manifest(**{**m.__dict__, "files": files})
            yield Artifact(folder, view)
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    # --- writing -----------------------------------------------------------
    @contextmanager
    def slot_lock(self, store: str, key: str) -> Iterator[None]:
        """One writer per store and slot; a second one is refused, not queued."""
        lock_dir = private_dir(self.store_dir(store))
        lock_path = lock_dir / f".lock-{key}"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise SlotBusy(f"{store} slot {key} is being written by another process (pid {holder}); "
                               "refusing to run a second backup of the same slot") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def staging(self, store: str, key: str, kind: str = "backup") -> Iterator[Staging]:
        """Yield a staging folder; removed again unless committed."""
        private_dir(self.root)
        staging = Staging(self, store, key, kind, utcnow())
        recipients = self.encryption.recipients_for(store)
        try:
            if recipients:
                with crypto.encrypting(staging.path, recipients) as staging.marked:
                    yield staging
            else:
                yield staging
        finally:
            if staging.path.exists():
                staging.abandon()

    def write(self, store: str, key: str, backup: Callable[[Path], BackupOutput], kind: str = "backup") -> Artifact:
        """Run `backup(staging_dir)` under the slot lock and commit the result."""
        with self.slot_lock(store, key), self.staging(store, key, kind) as staging:
            try:
                return staging.commit(backup(staging.path))
            except (OSError, DiskFull) as exc:
                # Disk full, quota, permissions: a clear error; the staging folder is removed on the way out.
                where = (exc.path if isinstance(exc, DiskFull) else exc.filename) or staging.path
                why = "No space left on device" if isinstance(exc, DiskFull) else (exc.strerror or str(exc))
                raise BackupFailed(store, f"cannot write {where}: {why} ({free_bytes(self.root):,} bytes free "
                                          f"in {self.root}, on the filesystem mounted at "
                                          f"{mount_point(self.root)}); the partial backup was removed, other "
                                          "backups are untouched") from None

    def keep_superseded(self, store: str, key: str, replaced: Path, replaced_by: str) -> SupersededCopy | None:
        """Move `replaced` (the slot's previous folder, swapped aside) to the slot's superseded copies. Only a
        folder that is no backup (no readable manifest) or one whose verification FAILED is deleted instead:
        it was never good, so keeping it protects nothing."""
        old = self.load(replaced)
        record = self.verification_of(old) if old is not None else None
        if old is None or (record is not None and not record.ok):
            shutil.rmtree(replaced, ignore_errors=True)
            return None
        stamp = utcnow().strftime("%Y%m%dT%H%M%S.%fZ")
        atomic_write_json(replaced / SUPERSEDED_RECORD, {"superseded_at": iso(utcnow()), "replaced_by": replaced_by,
                                                         "partition_key": key})
        folder = private_dir(private_dir(self.store_dir(store) / SUPERSEDED) / key)
        os.rename(replaced, folder / stamp)
        fsync_dir(folder)
        fsync_dir(replaced.parent)
        return self._superseded_copy(folder / stamp)

    def superseded(self, store: str, key: str | None = None) -> list[SupersededCopy]:
        """The superseded copies of slot `key` (default: of every slot), oldest first."""
        base = self.store_dir(store) / SUPERSEDED
        folders = [base / key] if key is not None else (sorted(base.iterdir()) if base.is_dir() else [])
        found = []
        for folder in folders:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for child in sorted(folder.iterdir()):
                copy = self._superseded_copy(child) if child.is_dir() and not child.name.startswith(".") else None
                if copy is not None:
                    found.append(copy)
        return sorted(found, key=lambda c: (c.artifact.partition_key, c.superseded_at, c.name))

    def superseded_by(self, artifact: Artifact) -> list[SupersededCopy]:
        """The copies `artifact` replaced when it was written (none: the slot was empty, or held nothing good)."""
        sha = sha256_file(artifact.path(MANIFEST))[0]
        return [c for c in self.superseded(artifact.store, artifact.partition_key) if c.replaced_by == sha]

    def _superseded_copy(self, directory: Path) -> SupersededCopy | None:
        artifact = self.load(directory)
        if artifact is None:
            return None
        try:
            data = json.loads((directory / SUPERSEDED_RECORD).read_text())
            return SupersededCopy(artifact, str(data["superseded_at"]), str(data["replaced_by"]))
        except (OSError, ValueError, TypeError, KeyError):
            return SupersededCopy(artifact, "", "")

    def sweep(self, store: str, older_than_seconds: float = 0) -> list[Path]:
        """Remove staging/replaced leftovers of killed runs (skipping any slot being written)."""
        removed: list[Path] = []
        base = self.store_dir(store)
        if not base.exists():
            return removed
        now = time.time()
        for child in sorted(base.iterdir()):
            if not (child.name.startswith(".staging-") or child.name.startswith(".replaced-")):
                continue
            if now - child.stat().st_mtime < older_than_seconds:
                continue
            key = _key_from_leftover(child.name)
            try:
                with self.slot_lock(store, key):
                    slot = self.slot_dir(store, key)
                    if child.name.startswith(".replaced-") and not slot.exists() and self.load(child):
                        # Killed between moving the old backup aside and moving the new one in:
                        # put the old one back rather than lose the slot's only complete backup.
                        os.rename(child, slot)
                        fsync_dir(base)
                        continue
                    if child.name.startswith(".replaced-") and self.load(slot) is not None:
                        # Killed after the new backup moved in: keep the old one as the commit would have.
                        self.keep_superseded(store, key, child, sha256_file(slot / MANIFEST)[0])
                        continue
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child)
            except SlotBusy:
                continue
        removed += self._sweep_deleting(store, older_than_seconds, now)
        return removed

    def _sweep_deleting(self, store: str, older_than_seconds: float, now: float) -> list[Path]:
        """Finish deletes a killed retention run left behind: `.deleting-*` folders beside the slots and inside
        each slot's superseded copies (already hidden from every listing; the rename was the delete)."""
        removed: list[Path] = []
        base = self.store_dir(store)
        found = [(c, _key_from_leftover(c.name)) for c in base.iterdir() if c.name.startswith(".deleting-")]
        superseded = base / SUPERSEDED
        if superseded.is_dir():
            found += [(c, slot.name) for slot in sorted(superseded.iterdir()) if slot.is_dir()
                      for c in slot.iterdir() if c.name.startswith(".deleting-")]
        for child, key in sorted(found):
            if now - child.stat().st_mtime < older_than_seconds:
                continue
            try:
                with self.slot_lock(store, key):
                    shutil.rmtree(child, ignore_errors=True)
            except (SlotBusy, ConfigError):  # being written, or not a name this catalog made: left alone
                continue
            removed.append(child)
        return removed

    # --- reading -----------------------------------------------------------
    def load(self, directory: Path) -> Artifact | None:
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = Manifest.from_json(json.loads(manifest_path.read_text()))
        except (ValueError, TypeError, KeyError):
            return None  # an unreadable manifest never counts as a backup
        return Artifact(directory, manifest)

    def get(self, store: str, key: str, kind: str = "backup") -> Artifact | None:
        return self.load(self.slot_dir(store, key, kind))

    def require(self, store: str, key: str, kind: str = "backup") -> Artifact:
        artifact = self.get(store, key, kind)
        if artifact is None:
            known = ", ".join(a.partition_key for a in self.list(store)[-5:]) or "none"
            raise ConfigError(f"{store} backup", key, f"an existing backup; newest are: {known}")
        return artifact

    def list(self, store: str, kind: str = "backup") -> list[Artifact]:
        """Complete backups, oldest first."""
        base = self.safety_dir(store) if kind == "safety" else self.store_dir(store)
        if not base.is_dir():
            return []
        found = []
        for child in sorted(base.iterdir()):
            if child.name.startswith((".", "_")) or not child.is_dir():
                continue
            artifact = self.load(child)
            if artifact is not None:
                found.append(artifact)
        return sorted(found, key=lambda a: (a.partition_key, a.manifest.captured_at))

    def binding_problems(self, artifact: Artifact) -> list[str]:
        """The manifest must describe the folder it is in: a backup renamed or swapped into another slot's
        folder would otherwise be restored as that slot."""
        m = artifact.manifest
        try:
            expected = self.slot_dir(m.store, m.partition_key, m.kind)
        except ConfigError as exc:
            return [f"{MANIFEST} in {artifact.directory} names an impossible slot: {exc}"]
        if os.path.abspath(artifact.directory) == os.path.abspath(expected):
            return []
        return [f"store/slot mismatch: {artifact.directory} holds the manifest of {m.store} {m.kind} "
                f"{m.partition_key} (which belongs in {expected}): the folder was renamed, moved or swapped, "
                "so it is not the backup its folder name says"]

    def stores(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    # --- verification ------------------------------------------------------
    def record_verification(self, artifact: Artifact, verification: Verification) -> VerificationRecord:
        record = VerificationRecord(iso(utcnow()), verification.ok, list(verification.problems),
                                    fingerprint(artifact))
        try:
            atomic_write_json(artifact.directory / VERIFICATION, record.__dict__)
        except DiskFull as exc:
            raise DiskFull(exc.path, f"cannot record the verification of {artifact.store} {artifact.partition_key} "
                                     f"(it {'passed' if verification.ok else 'FAILED'})",
                           f"the backup in {artifact.directory} is kept unchanged, its previous "
                           f"{VERIFICATION} (if any) too") from None
        return record

    def verification_of(self, artifact: Artifact) -> VerificationRecord | None:
        path = artifact.directory / VERIFICATION
        try:
            data = json.loads(path.read_text())
            data["files"] = {k: [int(v[0]), int(v[1])] for k, v in (data.get("files") or {}).items()}
            return VerificationRecord(**data)
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            return None

    def latest_verified(self, store: str, verify: Callable[[Artifact], Verification] | None = None,
                        on_skip: Callable[[Artifact, list[str]], None] | None = None) -> Artifact | None:
        """Newest backup that verified. With `verify`, re-verify now and fall back past failures."""
        for artifact in reversed(self.list(store)):
            if verify is not None:
                result = verify(artifact)
                self.record_verification(artifact, result)
                if result.ok:
                    return artifact
                if on_skip:
                    on_skip(artifact, result.problems)
                continue
            record = self.verification_of(artifact)
            if record is not None and record.ok:
                return artifact
            if on_skip:
                on_skip(artifact, ["never verified" if record is None else "; ".join(record.problems)])
        return None


def fingerprint(artifact: Artifact) -> dict[str, list[int]]:
    """[bytes, mtime_ns] of the manifest, its seal and every file the manifest lists (missing: absent)."""
    found = {}
    for name in (MANIFEST, MANIFEST_SEAL, *(f.name for f in artifact.manifest.files)):
        try:
            st = artifact.path(name).stat()
        except OSError:
            continue
        found[name] = [st.st_size, st.st_mtime_ns]
    return found


def write_seal(directory: Path) -> None:
    """Seal `directory`'s manifest.json: its sha256 beside it, in `sha256sum -c` format."""
    seal = sha256_file(directory / MANIFEST)[0]
    atomic_write_bytes(directory / MANIFEST_SEAL, f"{seal}  {MANIFEST}\n".encode())


def checksum_problems(artifact: Artifact) -> list[str]:
    """Every file present, of the recorded size, with the recorded sha256; the manifest equal to its seal."""
    problems = seal_problems(artifact)
    for record in artifact.manifest.files:
        path = artifact.path(record.name)
        if not path.is_file():
            problems.append(f"{record.name}: missing")
            continue
        digest, size = sha256_file(path)
        if size != record.bytes:
            problems.append(f"{record.name}: {size} bytes, manifest says {record.bytes}")
        elif digest != record.sha256:
            problems.append(f"{record.name}: sha256 {digest[:12]}… differs from manifest {record.sha256[:12]}…")
    return problems


def seal_problems(artifact: Artifact) -> list[str]:
    """The manifest's sha256 against `manifest.json.sha256`.

    Every backup, safety backup and full system backup is sealed when its manifest is written (the seal
    came with the catalog, before any release), and a downloaded off-site copy is sealed by the download,
    so a missing seal is a failure, never "nothing to compare": deleting the seal is how a manifest edit
    would otherwise pass. The one artifact without a manifest file of its own is a full system backup's
    per-store view (its manifest is derived from the full backup's sealed one, checked there).
    """
    seal = artifact.path(MANIFEST_SEAL)
    if not artifact.path(MANIFEST).exists() and not seal.exists():
        return []  # an in-memory view (full_system.store_view); the full backup's own seal is checked
    if not seal.is_file():
        return [f"{MANIFEST_SEAL} (the manifest's seal) is missing: the manifest cannot be checked, so this "
                f"backup is not trusted (every backup is written with its seal; a deleted seal is how an edited "
                f"manifest would pass)"]
    try:
        recorded = seal.read_text(errors="replace").split()[0]
    except (OSError, IndexError):
        recorded = ""
    actual = sha256_file(artifact.path(MANIFEST))[0] if artifact.path(MANIFEST).is_file() else "missing"
    if recorded != actual:
        return [f"{MANIFEST}: sha256 {actual[:12]}… differs from its seal {MANIFEST_SEAL} ({recorded[:12]}…): "
                "the manifest changed after the backup was written"]
    return []


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise ConfigError(what, value, "letters, digits and _ . : + - (no slashes)")


def _key_from_leftover(name: str) -> str:
    # ".staging-<key>-<hex8>" / ".replaced-<key>-<hex8>" / ".deleting-<key>-<hex8>"
    body = name.split("-", 1)[1]
    return body.rsplit("-", 1)[0]
