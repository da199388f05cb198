"""OpenSearch: snapshot repository (runbook method) or the volume method.

Snapshot method: the documents stay in the snapshot repository (a folder mounted into the
cluster, or S3); the backup folder only gets `snapshot.json`, a small record of which snapshot
holds the data (repository, name, uuid, indices, state, shards, version). Therefore `verify`
needs the server: it asks the repository whether that snapshot still exists, finished with
state SUCCESS and no failed shards, and has the uuid recorded at backup time (a snapshot that
was deleted and re-created under the same name is a different backup).

The repository is registered idempotently and re-registered when it is missing or its settings
drifted (the runbook's troubleshooting case "Snapshot repository not registered").

Only user indices are snapshotted and counted (names starting with "." are system indices).

quiesce (in place, snapshot method): `index.blocks.write: true` on the indices the restore replaces,
from before the safety snapshot until the restore is done (writes answer 403 cluster_block_exception,
never acknowledged and then lost); the restore closes and overwrites them, and ignores that setting in
the snapshot (`ignore_index_settings`), so restored indices take writes. Removed on every exit path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from opensearchpy import OpenSearch
from opensearchpy import exceptions as os_errors

from cb_backups.config.redact import redact_url
from cb_backups.config.settings import OpenSearchSettings, VolumeSettings
from cb_backups.core.blobs import BlobList, HashCache, blob_problems, carried_root, read_blob_list, write_blob_list
from cb_backups.core.catalog import checksum_problems
from cb_backups.core.errors import (
    BackupFailed,
    CbBackupsError,
    ConfigError,
    RestoreFailed,
    RestoreRefused,
    StoreUnavailable,
)
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import (
    Artifact,
    BackupOutput,
    FileRecord,
    Health,
    Inventory,
    Progress,
    Target,
    Verification,
    no_progress,
)
from cb_backups.stores.base import (
    DRILL,
    Scratch,
    disk_space_item,
    dropped_afterwards,
    named_counts_problems,
    require_scratch,
    version_problems,
)
from cb_backups.stores.opensearch_files import (
    GENERATIONS_FILE,
    RepositoryFilesError,
    list_snapshot_files,
    unpack_generations,
    write_generations,
)
from cb_backups.stores.opensearch_s3 import (
    OBJECTS_FILE,
    BucketTree,
    ObjectList,
    bucket_target,
    object_problems,
    read_object_list,
    write_object_list,
)
from cb_backups.stores.volume import extract_tar, list_tar, service_stopped, tar_directory

STORE = "opensearch"
SNAPSHOT_FILE = "snapshot.json"
VOLUME_FILE = "opensearch_volume.tar.gz"
REPOSITORY_TYPES = ("fs", "s3")
METHODS = ("snapshot", "volume")
SNAPSHOT_TIMEOUT = 6 * 3600.0  # seconds a wait_for_completion request may take
HEALTH_TIMEOUT = 120  # seconds to wait for restored indices to become yellow
_SNAPSHOT_KEYS = ("repository", "snapshot", "uuid", "indices", "state", "shards")
_SECRET_WORDS = ("key", "secret", "password", "token", "credential")
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
DRILL_PREFIX = "drill_"
SCRATCH_PREFIX = "scratch_"  # a restore job's scratch copies (a drill's are DRILL_PREFIX, dropped afterwards)
T = TypeVar("T")
WRITE_BLOCK = "index.blocks.write"


def _public_url(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _describe(exc: Exception) -> str:
    """A one-line reason from an opensearch-py exception (type and reason of the server's error)."""
    if isinstance(exc, os_errors.TransportError) and isinstance(exc.info, dict):
        err = exc.info.get("error")
        if isinstance(err, dict):
            return f"{err.get('type', exc.error)}: {err.get('reason', '')}".strip()
        if err:
            return str(err)
    if isinstance(exc, os_errors.TransportError) and exc.status_code == "N/A":
        return re.sub(r"<[^>]*>: ", "", str(exc.error))  # drop "<urllib3...HTTPConnection object at 0x..>: "
    if isinstance(exc, os_errors.TransportError):
        return f"HTTP {exc.status_code} {exc.error}"
    return str(exc)


def _stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _redacted(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in settings.items()}


def _snapshot_name(into: Path) -> str:
    """`cb-<partition>-<8 hex>` from a staging folder `.staging-<key>-<hex8>` (or any folder name)."""
    base = into.name
    if base.startswith(".staging-"):
        base = base[len(".staging-"):].rsplit("-", 1)[0]
    slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "backup"
    return f"cb-{slug[:80]}-{uuid.uuid4().hex[:8]}"


def _ms_iso(ms: Any) -> str | None:
    if not isinstance(ms, int):
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


class OpenSearchStore:
    """The OpenSearch adapter. `settings.method` is "snapshot" (runbook default) or "volume"."""

    name = STORE
    restore_method = "close the indices, _restore from the snapshot repository (scratch: renamed copies)"
    consistency_markers = ("snapshot", "uuid", "repository")

    def __init__(self, settings: OpenSearchSettings, volume: VolumeSettings | None = None) -> None:
        if settings.method not in METHODS:
            raise ConfigError("opensearch.method", settings.method, ", ".join(METHODS))
        if settings.method == "snapshot" and settings.repository_type not in REPOSITORY_TYPES:
            raise ConfigError("opensearch.repository_type", settings.repository_type, ", ".join(REPOSITORY_TYPES))
        if settings.method == "volume" and (volume is None or not volume.data_dir):
            raise ConfigError("volumes.opensearch.data_dir", None if volume is None else volume.data_dir,
                              "the OpenSearch data folder (needed by method: volume)")
        host_path = settings.repository_host_path
        if host_path is not None and not Path(host_path).is_absolute():
            raise ConfigError("opensearch.repository_host_path", host_path,
                              "an absolute path: the fs repository folder as mounted on this host")
        self.settings = settings
        self.volume = volume
        self.url = _public_url(settings.url)
        self.hashes = HashCache()  # one per store object (one run): a blob shared by slots is hashed once
        self._client: OpenSearch | None = None
        self._replacing: list[str] | None = None  # what `stage` found the in-place restore will replace

    # --- plumbing -------------------------------------------------------------------
    @property
    def client(self) -> OpenSearch:
        if self._client is None:
            auth = (self.settings.user, self.settings.password or "") if self.settings.user else None
            self._client = OpenSearch(hosts=[self.settings.url], http_auth=auth, timeout=60, max_retries=1,
                                      retry_on_timeout=False)
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the client; unreachable servers and refused credentials become StoreUnavailable."""
        try:
            return fn(*args, **kwargs)
        except (os_errors.ConnectionError, os_errors.ConnectionTimeout) as exc:
            raise StoreUnavailable(STORE, f"cannot reach {self.url} ({what}): {_describe(exc)}") from None
        except (os_errors.AuthenticationException, os_errors.AuthorizationException) as exc:
            raise StoreUnavailable(STORE, f"{self.url} refused the credentials of user "
                                          f"{self.settings.user!r} ({what}): {_describe(exc)}") from None

    def _must(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like `_call`, and any error answer of the server becomes StoreUnavailable too."""
        try:
            return self._call(what, fn, *args, **kwargs)
        except os_errors.TransportError as exc:
            raise StoreUnavailable(STORE, f"{self.url} refused {what}: {_describe(exc)}") from None

    def server_version(self) -> str:
        info = self._must("GET /", self.client.info)
        return str(info.get("version", {}).get("number", "unknown"))

    def _index_states(self) -> dict[str, str]:
        rows = self._must("GET _cat/indices", self.client.cat.indices, format="json", h="index,status",
                          expand_wildcards="all")
        return {row["index"]: row["status"] for row in rows}

    def _counts(self, names: Iterator[str] | list[str]) -> dict[str, int]:
        counts = {}
        for index in names:
            try:
                counts[index] = int(self._call(f"_count {index}", self.client.count, index=index)["count"])
            except os_errors.TransportError as exc:
                raise StoreUnavailable(STORE, f"cannot count documents of index [{index}] at {self.url}: "
                                              f"{_describe(exc)}") from None
        return counts

    # --- protocol -------------------------------------------------------------------
    def health(self, backup_dir: Path) -> Health:
        items: dict[str, str] = {}
        try:
            status = self._call("cluster health", self.client.cluster.health)["status"]
            items["cluster health"] = "ok" if status in ("green", "yellow") else f"cluster status is {status}"
        except (StoreUnavailable, os_errors.TransportError) as exc:
            items["cluster health"] = str(exc) if isinstance(exc, StoreUnavailable) else _describe(exc)
        items["disk space"] = disk_space_item(backup_dir, None)
        if self.settings.method == "snapshot" and self.settings.repository_type == "fs":
            location = Path(str(self.settings.repository_settings.get("location", "")))
            if location.is_absolute() and location.is_dir():  # visible from here: check its free space too
                items["repository disk space"] = disk_space_item(location, None)
        if self.settings.method == "volume" and self.volume is not None:
            data_dir = Path(str(self.volume.data_dir))
            items["volume data_dir"] = "ok" if data_dir.is_dir() else f"{data_dir} is not a readable folder"
        return Health(STORE, items)

    def inventory(self) -> Inventory:
        """Documents per open user index (`_count`, exact; system indices starting with '.' skipped)."""
        states = self._index_states()
        names = sorted(i for i, s in states.items() if s == "open" and not i.startswith("."))
        return {"indices": self._counts(names)}

    # --- repository ----------------------------------------------------------------
    def _desired_repository(self) -> dict[str, Any]:
        return {"type": self.settings.repository_type, "settings": dict(self.settings.repository_settings)}

    def ensure_repository(self) -> str:
        """Register the repository when missing or different, then `_verify` it.

        Returns "registered", "re-registered" or "unchanged".
        """
        repo = self.settings.repository
        desired = self._desired_repository()
        current: dict[str, Any] | None
        try:
            current = self._call("GET _snapshot", self.client.snapshot.get_repository, repository=repo).get(repo)
        except os_errors.NotFoundError:
            current = None
        except os_errors.TransportError as exc:
            raise BackupFailed(STORE, f"cannot read snapshot repository [{repo}] at {self.url}: "
                                      f"{_describe(exc)}") from None
        outcome = "unchanged"
        if current is None or not self._same_repository(current, desired):
            outcome = "registered" if current is None else "re-registered"
            try:
                self._call("PUT _snapshot", self.client.snapshot.create_repository, repository=repo, body=desired)
            except os_errors.TransportError as exc:
                location = desired["settings"].get("location") or desired["settings"].get("bucket")
                raise BackupFailed(STORE, f"cannot register snapshot repository [{repo}] (type "
                                          f"{desired['type']}, location {location}) at {self.url}: {_describe(exc)}. "
                                          "For type fs the location must be listed in path.repo on every node "
                                          "and be writable by OpenSearch") from None
        try:
            self._call("POST _verify", self.client.snapshot.verify_repository, repository=repo)
        except os_errors.TransportError as exc:
            raise BackupFailed(STORE, f"snapshot repository [{repo}] at {self.url} did not verify: "
                                      f"{_describe(exc)}") from None
        return outcome

    @staticmethod
    def _same_repository(current: dict[str, Any], desired: dict[str, Any]) -> bool:
        if current.get("type") != desired["type"]:
            return False
        have = current.get("settings", {})
        return all(_stringify(have.get(k)) == _stringify(v) for k, v in desired["settings"].items())

    def repository_root(self) -> Path | None:
        """The fs repository folder as cb-backups reads it: `repository_host_path`, else `location` when it
        is an absolute path (the runbook mounts the same folder at the same path); None for s3/relative."""
        if self.settings.repository_type != "fs":
            return None
        if self.settings.repository_host_path:
            return Path(self.settings.repository_host_path)
        location = Path(str(self.settings.repository_settings.get("location", "")))
        return location if location.is_absolute() else None

    def _repository_files(self, into: Path, snap_uuid: str) -> tuple[list[FileRecord], dict[str, Any]]:
        """List (size, sha256) every repository file the snapshot needs; copy the generation files (which
        the next snapshot replaces) into the backup. Nothing when the repository is not readable here."""
        if self.settings.repository_type == "s3":
            return self._repository_objects(into, snap_uuid)
        root = self.repository_root()
        if root is None or not root.is_dir():
            why = ("the repository is of type s3" if self.settings.repository_type != "fs" else
                   f"the repository folder {root or self.settings.repository_settings.get('location')} is not "
                   "readable here (set opensearch.repository_host_path)")
            return [], {"repository_files": f"not listed: {why}"}
        try:
            needed = list_snapshot_files(root, snap_uuid)
            blobs = BlobList(str(root), [self.hashes.blob(root, path) for path in needed.blobs])
            generations = write_generations(into, root, needed.generations)
        except (OSError, RepositoryFilesError) as exc:
            raise BackupFailed(STORE, f"cannot list the repository files of snapshot {snap_uuid} in {root}: "
                                      f"{exc}") from None
        listed = write_blob_list(into, blobs)
        summary = {"repository_files": len(blobs.files), "repository_bytes": blobs.total_bytes,
                   "repository_generation": needed.generation, "repository_root": str(root)}
        return [listed, generations], summary

    def _repository_objects(self, into: Path, snap_uuid: str) -> tuple[list[FileRecord], dict[str, Any]]:
        """s3 repository: list (size only: S3 gives no sha256 of them) every object the snapshot needs."""
        repo = self.settings.repository_settings
        if not repo.get("bucket"):
            return [], {"repository_files": "not listed: the s3 repository settings name no bucket"}
        try:
            tree = BucketTree(bucket_target(dict(repo)))
            needed = list_snapshot_files(tree, snap_uuid)
        except (CbBackupsError, OSError, RepositoryFilesError) as exc:
            raise BackupFailed(STORE, f"cannot list the objects of snapshot {snap_uuid} in the s3 repository "
                                      f"s3://{repo.get('bucket')}/{repo.get('base_path', '')}: {exc}") from None
        paths = needed.blobs + needed.generations
        objects = ObjectList(str(repo["bucket"]), tree.base.rstrip("/"), tree.target.settings.endpoint_url,
                             {p: tree.sizes[p] for p in paths})
        summary = {"repository_files": len(paths), "repository_bytes": sum(objects.files.values()),
                   "repository_generation": needed.generation, "repository_storage": tree.url(),
                   "repository_checked": "existence and size (S3 keeps no sha256 of the snapshot's objects)"}
        return [write_object_list(into, objects)], summary

    # --- backup ---------------------------------------------------------------------
    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput:
        if self.settings.method == "volume":
            return self._volume_backup(into, progress)
        version = self.server_version()
        repo_state = self.ensure_repository()
        states = self._index_states()
        indices = sorted(i for i, s in states.items() if s == "open" and not i.startswith("."))
        if indices:
            self._must("refresh", self.client.indices.refresh, index=",".join(indices))
        counts = self._counts(indices)
        name = _snapshot_name(into)
        progress(f"snapshot {name} of {len(indices)} indices into [{self.settings.repository}]", 0, len(indices))
        body = {"indices": ",".join(indices) if indices else "*", "ignore_unavailable": False,
                "include_global_state": True}
        try:
            result = self._call("create snapshot", self.client.snapshot.create, repository=self.settings.repository,
                                snapshot=name, body=body, wait_for_completion=True,
                                request_timeout=SNAPSHOT_TIMEOUT)
        except os_errors.TransportError as exc:
            raise BackupFailed(STORE, f"snapshot {name} in [{self.settings.repository}] at {self.url}: "
                                      f"{_describe(exc)}") from None
        info = result.get("snapshot") or {}
        self._judge(name, info, indices)
        progress(f"snapshot {name} {info['state']}", len(indices), len(indices))
        record = {
            "repository": self.settings.repository,
            "repository_type": self.settings.repository_type,
            "repository_settings": _redacted(dict(self.settings.repository_settings)),
            "snapshot": name,
            "uuid": info.get("uuid"),
            "indices": sorted(info.get("indices", [])),
            "state": info.get("state"),
            "shards": info.get("shards"),
            "version": info.get("version", version),
            "include_global_state": info.get("include_global_state", True),
            "start_time": info.get("start_time"),
            "end_time": info.get("end_time"),
            "doc_counts": counts,
        }
        extra, summary = self._repository_files(into, str(info.get("uuid")))
        record.update(summary)
        with HashingWriter(into / SNAPSHOT_FILE) as out:
            out.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        return BackupOutput(
            files=[FileRecord(SNAPSHOT_FILE, out.bytes, out.sha256), *extra],
            method="snapshot",
            options={"repository": self.settings.repository, "repository_type": self.settings.repository_type,
                     "repository_registration": repo_state, "include_global_state": True, "indices": indices,
                     **summary},
            versions={"opensearch": str(info.get("version", version))},
            inventory={"indices": counts},
            markers={"snapshot": name, "uuid": info.get("uuid"), "repository": self.settings.repository},
            captured_at=_ms_iso(info.get("start_time_in_millis")),
        )

    def _judge(self, name: str, info: dict[str, Any], indices: list[str]) -> None:
        """A snapshot counts only when SUCCESS with no failed shard and every index in it."""
        shards = info.get("shards") or {}
        failures = info.get("failures") or []
        if info.get("state") != "SUCCESS" or shards.get("failed", 0) != 0 or failures:
            bad = ", ".join(f"{f.get('index')}[{f.get('shard_id')}]: {f.get('reason')}" for f in failures[:5])
            raise BackupFailed(STORE, f"snapshot {name} ended {info.get('state')} with "
                                      f"{shards.get('failed', '?')} of {shards.get('total', '?')} shards failed"
                                      f"{': ' + bad if bad else ''}")
        missing = sorted(set(indices) - set(info.get("indices", [])))
        if missing:
            raise BackupFailed(STORE, f"snapshot {name} does not contain indices {missing}")

    # --- verify ---------------------------------------------------------------------
    def _read_record(self, artifact: Artifact) -> tuple[dict[str, Any] | None, list[str]]:
        """snapshot.json, checked without the server: parses, has every field, matches the manifest."""
        path = artifact.path(SNAPSHOT_FILE)
        try:
            record = json.loads(path.read_text())
        except OSError as exc:
            return None, [f"{SNAPSHOT_FILE}: cannot read ({exc.strerror})"]
        except ValueError as exc:
            return None, [f"{SNAPSHOT_FILE}: not valid JSON ({exc})"]
        if not isinstance(record, dict):
            return None, [f"{SNAPSHOT_FILE}: not a JSON object"]
        problems = [f"{SNAPSHOT_FILE}: field {k!r} missing" for k in _SNAPSHOT_KEYS if k not in record]
        markers = artifact.manifest.markers
        for key in ("snapshot", "uuid", "repository"):
            if key in markers and key in record and markers[key] != record[key]:
                problems.append(f"{SNAPSHOT_FILE}: {key} {record[key]!r} differs from the manifest's {markers[key]!r}")
        return (None if problems else record), problems

    def verify(self, artifact: Artifact) -> Verification:
        """Integrity of snapshot.json (offline), then the snapshot itself in the repository (needs the server)."""
        if artifact.manifest.method == "volume":
            return self._volume_verify(artifact)
        record, problems = self._read_record(artifact)
        if record is None:
            return Verification(False, problems)
        problems += self._files_problems(artifact)
        if carried_root(artifact) is not None:  # a downloaded copy: its files are checked, no cluster needed yet
            return Verification(not problems, problems, {"snapshot": record["snapshot"], "carried": True})
        if record["repository"] == self.settings.repository:
            try:
                self.ensure_repository()  # self-healing: a fresh cluster has the files but no registration
            except BackupFailed as exc:
                return Verification(False, [str(exc)], {"snapshot": record["snapshot"]})
        name = record["snapshot"]
        try:
            found = self._call("GET snapshot", self.client.snapshot.get, repository=record["repository"],
                               snapshot=name)
        except os_errors.NotFoundError as exc:
            return Verification(False, [f"snapshot {name} not found in repository [{record['repository']}]: "
                                        f"{_describe(exc)}"], {"snapshot": name})
        except os_errors.TransportError as exc:
            return Verification(False, [f"cannot read snapshot {name}: {_describe(exc)}"], {"snapshot": name})
        infos = found.get("snapshots") or []
        if not infos:
            return Verification(False, [f"snapshot {name} not found in repository [{record['repository']}]"])
        info = infos[0]
        shards = info.get("shards") or {}
        if info.get("state") != "SUCCESS":
            problems.append(f"snapshot {name} state is {info.get('state')}, not SUCCESS")
        if shards.get("failed", 0) != 0:
            problems.append(f"snapshot {name} has {shards.get('failed')} failed shards")
        if info.get("uuid") != record["uuid"]:
            problems.append(f"snapshot {name} has uuid {info.get('uuid')}, the backup recorded {record['uuid']} "
                            "(it was deleted and taken again)")
        missing = sorted(set(record["indices"]) - set(info.get("indices", [])))
        if missing:
            problems.append(f"snapshot {name} lacks indices {missing}")
        details = {"snapshot": name, "uuid": info.get("uuid"), "state": info.get("state"), "shards": shards}
        return Verification(not problems, problems, details)

    def _files_problems(self, artifact: Artifact) -> list[str]:
        """Re-hash every repository file the manifest lists (at the repository, or in a downloaded copy)."""
        try:
            blobs = read_blob_list(artifact)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [f"repository file list: cannot read ({exc})"]
        if blobs is None:
            return self._objects_problems(artifact)
        root = carried_root(artifact) or self.repository_root() or Path(blobs.root)
        return blob_problems(blobs, root, self.hashes)

    def _objects_problems(self, artifact: Artifact) -> list[str]:
        """s3 repository: every listed object still in the bucket, of the listed size."""
        if not any(f.name == OBJECTS_FILE for f in artifact.manifest.files):
            return []
        try:
            objects = read_object_list(artifact.path(OBJECTS_FILE))
            settings = {**self.settings.repository_settings, "bucket": objects.bucket, "base_path": objects.base_path}
            if objects.endpoint:
                settings["endpoint"] = objects.endpoint
            return object_problems(objects, BucketTree(bucket_target(settings)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [f"{OBJECTS_FILE}: cannot read ({exc})"]
        except CbBackupsError as exc:
            return [f"cannot list the s3 repository: {exc}"]

    @contextmanager
    def _published(self, artifact: Artifact, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A downloaded copy's files put into a new folder inside the repository location (so inside the
        cluster's path.repo), registered read-only under a new name; unregistered and removed afterwards.
        Yields the record with that repository."""
        root, carried = self.repository_root(), carried_root(artifact)
        location = str(self.settings.repository_settings.get("location", ""))
        if root is None or carried is None or not location:
            raise RestoreRefused(STORE, "a restore from a downloaded copy needs an fs repository folder readable "
                                        "here (opensearch.repository_settings.location, or "
                                        "opensearch.repository_host_path)")
        blobs = read_blob_list(artifact)
        assert blobs is not None  # _files_problems passed
        folder = f"cb-restore-{uuid.uuid4().hex[:8]}"
        dest = root / folder
        name = f"{self.settings.repository}-restore-{folder[-8:]}"
        try:
            dest.mkdir(parents=True)
            for blob in blobs.files:
                # Linked (or copied across filesystems), not moved: `latest` pre-checks a candidate in a scratch
                # restore before the real one, and both publish the same download. Readable by the cluster's
                # own user, like the files OpenSearch writes into its repository.
                (dest / blob.path).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(carried / blob.path, dest / blob.path)
                except OSError:
                    shutil.copyfile(carried / blob.path, dest / blob.path)
                os.chmod(dest / blob.path, 0o644)
            unpack_generations(artifact.path(GENERATIONS_FILE), dest)
            body = {"type": "fs", "settings": {"location": f"{location.rstrip('/')}/{folder}", "readonly": True}}
            self._must(f"register read-only repository [{name}]", self.client.snapshot.create_repository,
                       repository=name, body=body)
            found = self._must(f"GET snapshot {record['snapshot']}", self.client.snapshot.get, repository=name,
                               snapshot=record["snapshot"])
            infos = found.get("snapshots") or [{}]
            if infos[0].get("uuid") != record["uuid"]:
                raise RestoreRefused(STORE, f"the downloaded repository holds snapshot {record['snapshot']} with "
                                            f"uuid {infos[0].get('uuid')}, the backup recorded {record['uuid']}")
            yield {**record, "repository": name}
        finally:
            with suppress(CbBackupsError, os_errors.OpenSearchException):
                self._call("unregister", self.client.snapshot.delete_repository, repository=name, ignore=404)
            shutil.rmtree(dest, ignore_errors=True)

    # --- restore --------------------------------------------------------------------
    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        if target.mode not in ("in_place", "scratch"):
            raise ConfigError("restore target mode", target.mode, "in_place, scratch")
        if artifact.manifest.method == "volume":
            return self._volume_restore(artifact, target, progress)
        problems = checksum_problems(artifact)
        record, record_problems = self._read_record(artifact)
        problems += record_problems
        if record is None or problems:
            raise RestoreRefused(STORE, "; ".join(problems))
        verification = self.verify(artifact)
        if not verification.ok:
            raise RestoreRefused(STORE, "; ".join(verification.problems))
        if carried_root(artifact) is None:
            return self._restore_record(record, target, progress)
        with self._published(artifact, record) as published:
            return self._restore_record(published, target, progress)

    def _restore_record(self, record: dict[str, Any], target: Target, progress: Progress) -> Inventory:
        indices = list(record["indices"])
        wanted = target.options.get("indices")
        if wanted:
            unknown = sorted(set(wanted) - set(indices))
            if unknown:
                raise ConfigError("indices to restore", unknown, f"indices in snapshot {record['snapshot']}: "
                                                                 f"{', '.join(indices)}")
            indices = [i for i in indices if i in wanted]
        if not indices:
            raise RestoreRefused(STORE, f"snapshot {record['snapshot']} holds no indices to restore")
        if target.mode == "scratch":
            names = self._scratch_names(indices, target)
            body: dict[str, Any] = {"indices": ",".join(indices), "ignore_unavailable": False,
                                    "include_global_state": False, "include_aliases": False,
                                    "rename_pattern": "(.+)", "rename_replacement": names["replacement"],
                                    "ignore_index_settings": [WRITE_BLOCK]}
            renamed = names["map"]
            self._restore(record, body, renamed, progress, reopen=[])
        else:
            states = self._index_states()
            to_close = [i for i in indices if states.get(i) == "open"]
            if to_close:
                progress(f"closing {len(to_close)} indices", 0, len(indices))
                self._must("close indices", self.client.indices.close, index=",".join(to_close))
            body = {"indices": ",".join(indices), "ignore_unavailable": False,
                    "include_global_state": bool(target.options.get("include_global_state", True)),
                    # a safety snapshot was taken under quiesce's write block: the restored index must not keep it
                    "ignore_index_settings": [WRITE_BLOCK]}
            renamed = {i: i for i in indices}
            self._restore(record, body, renamed, progress, reopen=to_close)
        counts = self._counts([renamed[i] for i in indices])
        return {"indices": {i: counts[renamed[i]] for i in indices}}

    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """Nothing is restored beside the live indices; note which ones the restore replaces, for `quiesce`."""
        self._replacing = None
        record, _ = self._read_record(artifact) if artifact.manifest.method != "volume" else (None, [])
        if record is not None:
            wanted = target.options.get("indices")
            self._replacing = [i for i in record["indices"] if not wanted or i in wanted]

    @contextmanager
    def quiesce(self, target: Target) -> Iterator[dict[str, Any] | None]:
        """`index.blocks.write: true` on the open indices the restore replaces (all open user indices when
        `stage` did not say which), removed again on exit; indices that were blocked already stay blocked."""
        if target.mode != "in_place" or self.settings.method == "volume":
            yield None  # the volume method stops the whole server for its restore
            return
        states = self._index_states()
        names = self._replacing if self._replacing is not None else [i for i in states if not i.startswith(".")]
        names = sorted(i for i in names if states.get(i) == "open")
        if names:
            current = self._must("GET _settings", self.client.indices.get_settings, index=",".join(names),
                                 name=WRITE_BLOCK, flat_settings=True)
            names = [i for i in names if str(current.get(i, {}).get("settings", {}).get(WRITE_BLOCK)) != "true"]
        if names:
            self._must("block writes", self.client.indices.put_settings, index=",".join(names),
                       body={WRITE_BLOCK: True})

        def unblock() -> None:  # the restored indices have no block; the old ones (after an error) lose theirs
            if names:
                self._must("unblock writes", self.client.indices.put_settings, index=",".join(names),
                           body={WRITE_BLOCK: None}, ignore_unavailable=True)

        try:
            yield {"blocked": names}
        except BaseException:
            with suppress(CbBackupsError):  # the restore's own error is the one to report
                unblock()
            raise
        unblock()

    swaps_in_place = False  # indices are closed and restored one by one

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """A restore killed with writes blocked: lift the blocks it set (the journal names them)."""
        names = [str(n) for n in (hold or {}).get("blocked") or []]
        if target.mode != "in_place" or not names:
            return []
        self._must("unblock writes", self.client.indices.put_settings, index=",".join(names),
                   body={WRITE_BLOCK: None}, ignore_unavailable=True)
        return [f"writes unblocked on {', '.join(names)}"]

    def replaced(self) -> list[str]:
        """The restore overwrites the indices: what they held is in the safety snapshot, nothing is kept aside."""
        return []

    def prune_replaced(self, keep_days: int) -> list[str]:
        return []

    def _scratch_names(self, indices: list[str], target: Target) -> dict[str, Any]:
        prefix = str(target.options.get("prefix", DRILL_PREFIX))
        if not prefix or not _INDEX_NAME.match(prefix + "x") or "$" in prefix or "\\" in prefix:
            raise ConfigError("scratch index prefix", prefix, "lowercase letters, digits, _ . + - (not empty)")
        renamed = {i: prefix + i for i in indices}
        existing = sorted(set(renamed.values()) & set(self._index_states()))
        if existing:
            raise RestoreRefused(STORE, f"scratch indices {existing} already exist; drop them first or use "
                                        "another prefix")
        return {"replacement": prefix + "$1", "map": renamed}

    def _restore(self, record: dict[str, Any], body: dict[str, Any], renamed: dict[str, str], progress: Progress,
                 reopen: list[str]) -> None:
        name = record["snapshot"]
        progress(f"restoring {len(renamed)} indices from {name}", 0, len(renamed))
        try:
            self._call("restore", self.client.snapshot.restore, repository=record["repository"], snapshot=name,
                       body=body, wait_for_completion=True, request_timeout=SNAPSHOT_TIMEOUT)
        except os_errors.TransportError as exc:
            if reopen:  # leave the cluster as we found it
                with suppress(os_errors.OpenSearchException):
                    self.client.indices.open(index=",".join(reopen))
            raise RestoreFailed(STORE, f"restore of snapshot {name} at {self.url}: {_describe(exc)}"
                                       + (f" (indices {reopen} were reopened)" if reopen else "")) from None
        targets = ",".join(renamed.values())
        health = self._must("cluster health", self.client.cluster.health, index=targets, wait_for_status="yellow",
                            timeout=f"{HEALTH_TIMEOUT}s", request_timeout=HEALTH_TIMEOUT + 10, ignore=408)
        if health.get("timed_out") or health.get("status") == "red":
            raise RestoreFailed(STORE, f"restored indices did not become yellow within {HEALTH_TIMEOUT}s "
                                       f"(status {health.get('status')})")
        progress(f"restored {len(renamed)} indices from {name}", len(renamed), len(renamed))

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        """OpenSearch reads snapshots of its own or the previous major version, never of a newer one."""
        backed_up = artifact.manifest.versions.get("opensearch")
        if not backed_up:  # the volume method records none
            return []

        def check() -> list[str]:
            have = self.server_version()
            src, dst = _version_tuple(backed_up), _version_tuple(have)
            if dst < src:
                return [f"the snapshot is from OpenSearch {backed_up}, the target runs {have} (older)"]
            if dst[0] > src[0] + 1:
                return [f"the snapshot is from OpenSearch {backed_up}; {have} reads snapshots of the previous "
                        "major version at most"]
            return []
        return version_problems(check)

    def describe_target(self, target: Target) -> str:
        if target.mode == "scratch":
            return f"indices {target.options.get('prefix', DRILL_PREFIX)}<name> at {redact_url(self.settings.url)}"
        return f"the indices at {redact_url(self.settings.url)}"

    def scratch_target(self, purpose: str) -> Target:
        return Target("scratch", {"prefix": DRILL_PREFIX if purpose == DRILL else SCRATCH_PREFIX})

    @contextmanager
    def scratch(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Iterator[Scratch]:
        """Renamed copies `<prefix><index>` on the same cluster, dropped before (leftovers) and after."""
        require_scratch(STORE, target)
        self.drop_scratch(artifact, target)  # leftovers of an interrupted drill
        with dropped_afterwards(lambda: self.drop_scratch(artifact, target)):
            names = list(self.restore(artifact, target, progress).get("indices", {}))
            prefix = str(target.options.get("prefix", DRILL_PREFIX))

            def counts() -> Inventory:
                found = self._counts([prefix + n for n in names])
                return {"indices": {n: found[prefix + n] for n in names}}

            yield Scratch(target, counts, f"indices {prefix}*")

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        return named_counts_problems(expected, actual, target, "indices", "indices")

    def before_delete(self, artifact: Artifact) -> None:
        """The documents live in the snapshot repository: delete the backup's snapshot there (already gone
        is fine). A volume backup keeps nothing outside its folder."""
        if artifact.manifest.method != "snapshot":
            return
        name = artifact.manifest.markers.get("snapshot")
        path = artifact.path(SNAPSHOT_FILE)
        if not name and path.is_file():
            name = json.loads(path.read_text()).get("snapshot")
        if name:
            self.delete_snapshot(str(name))

    # --- retention and drills -----------------------------------------------------------
    def delete_snapshot(self, name: str) -> bool:
        """Delete a snapshot through the API (never by removing files). False when it was already gone."""
        try:
            self._call("delete snapshot", self.client.snapshot.delete, repository=self.settings.repository,
                       snapshot=name, request_timeout=SNAPSHOT_TIMEOUT)
        except os_errors.NotFoundError:
            return False
        except os_errors.TransportError as exc:
            raise BackupFailed(STORE, f"cannot delete snapshot {name} from [{self.settings.repository}]: "
                                      f"{_describe(exc)}") from None
        return True

    def drop_scratch(self, artifact: Artifact, target: Target) -> list[str]:
        """Delete the indices a scratch restore of `artifact` created (prefix + recorded name)."""
        record, problems = self._read_record(artifact)
        if record is None:
            raise ConfigError("artifact", str(artifact.directory), "; ".join(problems))
        prefix = str(target.options.get("prefix", DRILL_PREFIX))
        existing = self._index_states()
        names = [prefix + i for i in record["indices"] if prefix + i in existing]
        if names:
            self._must("delete scratch indices", self.client.indices.delete, index=",".join(names))
        return names

    # --- volume method ---------------------------------------------------------------------
    @contextmanager
    def _stopped(self) -> Iterator[None]:
        assert self.volume is not None
        with service_stopped(STORE, self.volume.stop_command, self.volume.start_command):
            yield

    def _volume_backup(self, into: Path, progress: Progress) -> BackupOutput:
        assert self.volume is not None and self.volume.data_dir
        try:
            inventory = self.inventory()  # counted while the server still runs
        except StoreUnavailable:
            inventory = {}
        progress("stopping OpenSearch and archiving its data folder", 0, None)
        with self._stopped():
            record = tar_directory(STORE, Path(self.volume.data_dir), into, VOLUME_FILE)
        progress("archived the OpenSearch data folder", record.bytes, record.bytes)
        return BackupOutput(files=[record], method="volume", options={"data_dir": self.volume.data_dir},
                            versions={}, inventory=inventory, markers={})

    def _volume_verify(self, artifact: Artifact) -> Verification:
        try:
            members = list_tar(artifact.path(VOLUME_FILE))
        except Exception as exc:
            return Verification(False, [f"{VOLUME_FILE}: {exc}"])
        return Verification(True, [], {"members": len(members)})

    def _volume_restore(self, artifact: Artifact, target: Target, progress: Progress) -> Inventory:
        problems = checksum_problems(artifact) + self._volume_verify(artifact).problems
        if problems:
            raise RestoreRefused(STORE, "; ".join(problems))
        archive = artifact.path(VOLUME_FILE)
        if target.mode == "scratch":
            folder = target.options.get("data_dir")
            if not folder:
                raise ConfigError("scratch data_dir", folder, "an empty folder to extract the volume into")
            dest = Path(str(folder))
            if dest.exists() and any(dest.iterdir()):
                raise RestoreRefused(STORE, f"scratch folder {dest} is not empty")
            dest.mkdir(parents=True, exist_ok=True)
            extract_tar(STORE, archive, dest)
            return {"files": {"entries": len(list_tar(archive))}}
        assert self.volume is not None and self.volume.data_dir
        data_dir = Path(self.volume.data_dir)
        with self._stopped():
            aside = data_dir.with_name(f"{data_dir.name}.before-restore-{uuid.uuid4().hex[:8]}")
            if data_dir.exists():
                data_dir.rename(aside)
            data_dir.mkdir(parents=True)
            try:
                extract_tar(STORE, archive, data_dir)
            except RestoreRefused:
                data_dir.rename(data_dir.with_name(f"{data_dir.name}.failed-{uuid.uuid4().hex[:8]}"))
                if aside.exists():
                    aside.rename(data_dir)
                raise
        progress(f"volume restored; previous data kept at {aside}", 1, 1)
        return self.inventory()
