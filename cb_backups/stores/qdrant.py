"""Qdrant adapter: per-collection snapshots over REST (or the runbook's volume tar).

Snapshot method (default), improving on the runbook's `docker cp`:

1. list the collections; count each one exactly (the inventory);
2. `POST /collections/{c}/snapshots?wait=true` (Qdrant reports name, size, sha256);
3. download `GET /collections/{c}/snapshots/{name}` streamed into `<c>.snapshot`
   through HashingWriter, and compare its sha256 with the checksum Qdrant reported;
4. delete the server-side snapshot (it would otherwise fill the server's disk).

Restore uploads each snapshot to `POST /collections/{name}/snapshots/upload`
with `priority=snapshot` and the recorded checksum, so Qdrant itself refuses a
damaged upload; a scratch restore writes to `<collection><suffix>` instead.

A collection snapshot holds the collection's config, points, vectors (dense, named, sparse) and
payload indexes, but not its aliases, through which the application queries. So the manifest also
records every alias and each collection's config (`options.collections`: vectors, sparse vectors,
HNSW, quantization, payload index schema); a restore recreates the aliases of the restored
collections in one atomic `POST /collections/aliases` (a scratch copy gets `<alias><suffix>` ->
`<collection><suffix>`), then checks config, payload indexes and aliases against the manifest
(RestoreFailed when they differ; the points are counted by the caller).

Full-storage method (`method: full_snapshot`, single-node servers): `POST /snapshots` (every
collection and the aliases at one moment), downloaded streamed and checked against Qdrant's
checksum, then deleted on the server. Qdrant recovers a storage snapshot only at start-up
(`qdrant --storage-snapshot FILE --force-snapshot`), so an in-place restore runs
`volumes.qdrant.stop_command`, then `volumes.qdrant.start_command` with `{snapshot}` replaced by
the verified file's path, waits for the server, and checks counts, config and aliases. A scratch
restore (drills) uploads the collection snapshots inside the archive as `<collection><suffix>`.

Volume method (`method: volume`): stop the service, tar its data folder, start it
again (cb_backups/stores/volume.py). No Dagster here.

quiesce (in place, snapshot method): `POST /locks {"write": true}` from before the safety snapshots
until the uploads are done. The lock is node-wide: point writes (and collection creation) to every
collection answer 403, never acknowledged and then lost; snapshot recovery still runs under it.
Unlocked on every exit path, unless it was locked before the restore.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import tempfile
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from cb_backups.config.redact import redact_url
from cb_backups.config.settings import QdrantSettings, VolumeSettings
from cb_backups.core.catalog import checksum_problems
from cb_backups.core.errors import (
    BackupFailed,
    CbBackupsError,
    ConfigError,
    RestoreFailed,
    RestoreRefused,
    StoreUnavailable,
)
from cb_backups.core.fileio import CHUNK, HashingWriter
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
from cb_backups.stores.volume import extract_tar, service_stopped, tar_directory

METHODS = ("snapshot", "full_snapshot", "volume")
FULL_FILE = "qdrant-full.snapshot"
SNAPSHOT_PLACEHOLDER = "{snapshot}"  # in volumes.qdrant.start_command: the storage snapshot to recover
CONFIG_SECTIONS = ("vectors", "sparse_vectors", "hnsw_config", "quantization_config", "payload_schema")
SNAPSHOT_EXT = ".snapshot"
LOCK_MESSAGE = "cb-backups is restoring this server in place; writes are refused until it ends"
VOLUME_FILE = "qdrant-volume.tar.gz"
DEFAULT_SUFFIX = "__drill"
SCRATCH_SUFFIX = "__scratch"  # a restore job's scratch copies (a drill's are DEFAULT_SUFFIX, dropped afterwards)
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
QUICK_TIMEOUT = 30  # seconds: listing, counting, version
SLOW_TIMEOUT = 3600  # seconds: creating, downloading, uploading snapshots


def snapshot_file_name(collection: str) -> str:
    """The artifact file for a collection: no path separators, reversible."""
    return quote(collection, safe="") + SNAPSHOT_EXT


def major_minor(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.lstrip("v").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


class _HashingReader:
    """Read-only file wrapper that hashes what is read (for one-pass tar listing + sha256)."""

    def __init__(self, raw: IO[bytes]) -> None:
        import hashlib

        self._raw = raw
        self._hash = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def scan_archive(path: Path) -> tuple[str, int, int]:
    """One pass over a snapshot: (sha256, bytes, member count). Raises tarfile.TarError/OSError.

    Qdrant snapshots are tar archives (plain or compressed), so this works for real
    snapshots and the emulator's alike without knowing their inner layout.
    """
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        members = 0
        with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
            for _ in tar:
                members += 1
        reader.drain()
    return reader.sha256, reader.bytes, members


def config_differences(expected: Any, actual: Any, where: str) -> list[str]:
    """What `actual` lacks or holds differently from `expected`; keys only `actual` has are ignored
    (a newer server may add settings with defaults)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems: list[str] = []
        for key in sorted(expected):
            problems += config_differences(expected[key], actual.get(key), f"{where}.{key}")
        return problems
    if expected != actual:
        return [f"{where} is {json.dumps(actual)[:120]}, the backup had {json.dumps(expected)[:120]}"]
    return []


class QdrantStore:
    name = "qdrant"
    consistency_markers = ("snapshots", "full_snapshot", "aliases")

    def __init__(self, settings: QdrantSettings, volume: VolumeSettings | None = None) -> None:
        if settings.method not in METHODS:
            raise ConfigError("qdrant method", settings.method, ", ".join(METHODS))
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("qdrant url", redact_url(settings.url), "a URL like http://host:6333")
        self.settings = settings
        self.volume = volume or VolumeSettings()
        self.url = settings.url.rstrip("/")
        self.where = redact_url(self.url)
        self._clients: dict[int, QdrantClient] = {}

    @property
    def restore_method(self) -> str:
        if self.settings.method == "full_snapshot":
            return ("stop, start with the storage snapshot recovery (volumes.qdrant.start_command), check "
                    "config and aliases; scratch: upload its collection snapshots")
        return "upload each collection snapshot (priority snapshot), recreate the aliases, check config"

    # --- plumbing ---------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"api-key": self.settings.api_key} if self.settings.api_key else {}

    def _client(self, timeout: int = QUICK_TIMEOUT) -> QdrantClient:
        if timeout not in self._clients:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Api key is used with an insecure connection"
                self._clients[timeout] = QdrantClient(url=self.url, api_key=self.settings.api_key, timeout=timeout,
                                                      prefer_grpc=False, check_compatibility=False)
        return self._clients[timeout]

    def _http(self, timeout: float = QUICK_TIMEOUT) -> httpx.Client:
        return httpx.Client(headers=self._headers(), timeout=httpx.Timeout(timeout, connect=min(timeout, 30)))

    def _safe(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key else text

    def _http_detail(self, status: int | None, content: bytes) -> str:
        try:
            body = json.loads(content)
            detail = body["status"]["error"]
        except (ValueError, KeyError, TypeError):
            detail = content.decode(errors="replace").strip()[:200] or "(empty body)"
        if status == 401:
            detail += " (the API key was refused or is missing: set CB_QDRANT_API_KEY)"
        elif status == 403:
            detail += " (the API key is read-only or lacks access)"
        return self._safe(f"HTTP {status}: {detail}")

    @contextmanager
    def _api(self, action: str, error: type[CbBackupsError] = StoreUnavailable) -> Iterator[None]:
        """Turn client/transport exceptions into one-line errors naming the store and URL."""
        try:
            yield
        except UnexpectedResponse as exc:
            raise error(self.name, f"{action} at {self.where}: {self._http_detail(exc.status_code, exc.content)}") \
                from None
        except ResponseHandlingException as exc:
            reason = self._safe(str(exc.source) or type(exc.source).__name__)
            raise StoreUnavailable(self.name, f"{action}: cannot reach {self.where} ({reason})") from None
        except httpx.HTTPError as exc:
            reason = self._safe(str(exc) or type(exc).__name__)
            raise StoreUnavailable(self.name, f"{action}: cannot reach {self.where} ({reason})") from None
        except ValueError as exc:  # pydantic: the answer does not look like Qdrant's
            reason = self._safe(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise StoreUnavailable(self.name, f"{action}: {self.where} gave an unexpected answer ({reason})") \
                from None

    def _check(self, response: httpx.Response, action: str, error: type[CbBackupsError] = StoreUnavailable) -> None:
        if response.status_code >= 300:
            response.read()
            raise error(self.name, f"{action} at {self.where}: "
                                   f"{self._http_detail(response.status_code, response.content)}")

    # --- facts from the server ------------------------------------------------------------
    def server_version(self) -> str:
        with self._api("reading the server version"), self._http() as http:
            response = http.get(f"{self.url}/")
            self._check(response, "reading the server version")
        try:
            return str(response.json()["version"])
        except (ValueError, KeyError, TypeError):
            raise StoreUnavailable(self.name, f"{self.where} did not answer like Qdrant (GET / has no version)") \
                from None

    def collections(self) -> list[str]:
        with self._api("listing collections"):
            return sorted(c.name for c in self._client().get_collections().collections)

    def count(self, collection: str) -> int:
        with self._api(f"counting points of collection {collection!r}"):
            return int(self._client().count(collection, exact=True).count)

    def inventory(self) -> Inventory:
        return {"collections": {c: self.count(c) for c in self.collections()}}

    def health(self, backup_dir: Path) -> Health:
        items: dict[str, str] = {}
        try:
            version = self.server_version()
            items["server reachable"] = "ok"
            mm = major_minor(version)
            items["server version"] = "ok" if mm and mm[0] == 1 else f"unexpected Qdrant version {version}"
            self.collections()  # proves the API key works
            items["api access"] = "ok"
        except StoreUnavailable as exc:
            items.setdefault("server reachable", str(exc))
            if items["server reachable"] == "ok":
                items["api access"] = str(exc)
        if self.settings.method == "volume":
            data_dir = self.volume.data_dir
            items["data_dir"] = "ok" if data_dir and Path(data_dir).is_dir() else \
                f"volume.data_dir {data_dir!r} is not an existing folder"
        items["disk space"] = disk_space_item(backup_dir, _last_backup_bytes(backup_dir))
        return Health(self.name, items)

    # --- backup ------------------------------------------------------------------------------
    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput:
        if self.settings.method == "volume":
            return self._backup_volume(into, progress)
        if self.settings.method == "full_snapshot":
            return self._backup_full(into, progress)
        version = self.server_version()
        names = self.collections()
        files: list[FileRecord] = []
        counts: dict[str, int] = {}
        snapshots: dict[str, str] = {}
        checksums: dict[str, str] = {}
        file_names: dict[str, str] = {}
        configs: dict[str, Any] = {}
        drift: dict[str, list[int]] = {}
        aliases = self.aliases(BackupFailed)
        for index, collection in enumerate(names):
            progress(f"qdrant: snapshot of {collection}", index, len(names))
            counts[collection] = self.count(collection)
            configs[collection] = self.collection_config(collection, BackupFailed)
            record, snapshot, checksum = self._snapshot(collection, into / snapshot_file_name(collection), progress)
            after = self.count(collection)
            if after != counts[collection]:
                drift[collection] = [counts[collection], after]
            files.append(record)
            snapshots[collection], checksums[collection], file_names[collection] = snapshot, checksum, record.name
        progress("qdrant: snapshots downloaded", len(names), len(names))
        markers: dict[str, Any] = {"snapshots": snapshots, "checksums": checksums, "files": file_names,
                                   "aliases": aliases}
        if drift:
            markers["count_drift"] = drift  # points changed while the snapshot was taken: [before, after]
        return BackupOutput(files=files, method="snapshot", options=self._options(configs),
                            versions={"qdrant": version}, inventory={"collections": counts}, markers=markers)

    def _backup_full(self, into: Path, progress: Progress) -> BackupOutput:
        version = self.server_version()
        self._require_single_node()
        names = self.collections()
        counts = {c: self.count(c) for c in names}
        configs = {c: self.collection_config(c, BackupFailed) for c in names}
        aliases = self.aliases(BackupFailed)
        progress("qdrant: full-storage snapshot", 0, None)
        record, snapshot, checksum = self._snapshot(None, into / FULL_FILE, progress)
        after = self.inventory()["collections"]
        markers: dict[str, Any] = {"full_snapshot": snapshot, "checksum": checksum, "file": record.name,
                                   "collections": names, "aliases": aliases}
        drift = {c: [n, after.get(c, 0)] for c, n in counts.items() if after.get(c, 0) != n}
        if drift:
            markers["count_drift"] = drift  # points changed while the snapshot was taken: [before, after]
        return BackupOutput(files=[record], method="full_snapshot", options=self._options(configs),
                            versions={"qdrant": version}, inventory={"collections": counts}, markers=markers)

    def _options(self, configs: dict[str, Any]) -> dict[str, Any]:
        vectors = {c: config.get("vectors") for c, config in configs.items()}  # kept for older readers
        return {"vectors": vectors, "collections": configs, "url": self.where}

    def _require_single_node(self) -> None:
        """Qdrant's storage snapshot covers one node only: refuse a cluster rather than back up a part."""
        with self._api("reading the cluster status", BackupFailed), self._http() as http:
            response = http.get(f"{self.url}/cluster")
            if response.status_code == 404:
                return  # a server without the cluster API is a single node
            self._check(response, "reading the cluster status", BackupFailed)
        status = (response.json().get("result") or {}).get("status")
        if status != "disabled":
            raise ConfigError("qdrant method for a cluster", "full_snapshot",
                              "snapshot (a full-storage snapshot holds one node's shards only)")

    def collection_config(self, collection: str, error: type[CbBackupsError] = StoreUnavailable) -> dict[str, Any]:
        """What a restore must bring back besides the points: vectors, HNSW, quantization, payload indexes."""
        action = f"reading collection {collection!r}"
        with self._api(action, error), self._http() as http:
            response = http.get(f"{self.url}/collections/{quote(collection, safe='')}")
            self._check(response, action, error)
        try:
            info = response.json()["result"]
            config = info["config"]
            params = config["params"]
        except (ValueError, KeyError, TypeError):
            raise error(self.name, f"{self.where} did not describe collection {collection!r} like Qdrant") from None
        schema = {field: {k: v for k, v in index.items() if k in ("data_type", "params") and v is not None}
                  for field, index in sorted((info.get("payload_schema") or {}).items())}
        return {"vectors": params.get("vectors"), "sparse_vectors": params.get("sparse_vectors") or {},
                "hnsw_config": config.get("hnsw_config"), "quantization_config": config.get("quantization_config"),
                "payload_schema": schema}

    def aliases(self, error: type[CbBackupsError] = StoreUnavailable) -> dict[str, str]:
        """Every alias on the server: alias -> collection."""
        with self._api("listing aliases", error), self._http() as http:
            response = http.get(f"{self.url}/aliases")
            self._check(response, "listing aliases", error)
        try:
            return {a["alias_name"]: a["collection_name"] for a in response.json()["result"]["aliases"]}
        except (ValueError, KeyError, TypeError):
            raise error(self.name, f"{self.where} did not answer GET /aliases like Qdrant") from None

    def _snapshot(self, collection: str | None, path: Path, progress: Progress) -> tuple[FileRecord, str, str]:
        """Create a snapshot of `collection` (None: the full storage), download it to `path`, check it against
        Qdrant's checksum and size, delete it on the server (also when anything failed)."""
        what = f"collection {collection!r}" if collection is not None else "the full storage"
        client = self._client(SLOW_TIMEOUT)
        with self._api(f"creating a snapshot of {what}", BackupFailed):
            description = client.create_snapshot(collection, wait=True) if collection is not None \
                else client.create_full_snapshot(wait=True)
        if description is None:
            raise BackupFailed(self.name, f"{what}: Qdrant did not describe the new snapshot")
        snapshot = description.name
        try:
            checksum = description.checksum or self._listed_checksum(collection, snapshot)
            if not checksum:
                raise BackupFailed(self.name, f"{what}: Qdrant reported no checksum for snapshot "
                                              f"{snapshot} (Qdrant >= 1.9 reports one); cannot verify the download")
            record = self._download(collection, snapshot, path, progress)
            if record.sha256 != checksum:
                raise BackupFailed(self.name, f"{what}: downloaded snapshot {snapshot} has sha256 "
                                              f"{record.sha256}, but Qdrant reported {checksum}")
            if description.size and record.bytes != description.size:
                raise BackupFailed(self.name, f"{what}: downloaded {record.bytes} bytes of snapshot "
                                              f"{snapshot}, Qdrant reported {description.size}")
        except BaseException:
            self._delete_snapshot_quietly(collection, snapshot)
            raise
        self._delete_snapshot(collection, snapshot)
        return record, snapshot, checksum

    def _listed_checksum(self, collection: str | None, snapshot: str) -> str | None:
        with self._api("listing snapshots", BackupFailed):
            client = self._client()
            listed = client.list_snapshots(collection) if collection is not None else client.list_full_snapshots()
            for item in listed:
                if item.name == snapshot:
                    return item.checksum
        return None

    def _download(self, collection: str | None, snapshot: str, path: Path, progress: Progress) -> FileRecord:
        base = f"{self.url}/collections/{quote(collection, safe='')}" if collection is not None else self.url
        url = f"{base}/snapshots/{quote(snapshot, safe='')}"
        label = collection if collection is not None else "the full storage"
        action = f"downloading snapshot {snapshot} of {label!r}"
        with self._api(action, BackupFailed), self._http(SLOW_TIMEOUT) as http, http.stream("GET", url) as response:
            self._check(response, action, BackupFailed)
            total = int(response.headers.get("content-length") or 0) or None
            with HashingWriter(path) as out:
                for block in response.iter_bytes(CHUNK):
                    out.write(block)
                    progress(f"qdrant: downloading {label}", out.bytes, total)
        return FileRecord(path.name, out.bytes, out.sha256)

    def _delete_snapshot(self, collection: str | None, snapshot: str) -> None:
        with self._api(f"deleting server-side snapshot {snapshot}", BackupFailed):
            client = self._client(SLOW_TIMEOUT)
            if collection is not None:
                client.delete_snapshot(collection, snapshot, wait=True)
            else:
                client.delete_full_snapshot(snapshot, wait=True)

    def _delete_snapshot_quietly(self, collection: str | None, snapshot: str) -> None:
        # the original failure matters more; a leftover snapshot stays visible in Qdrant
        with contextlib.suppress(CbBackupsError):
            self._delete_snapshot(collection, snapshot)

    def _backup_volume(self, into: Path, progress: Progress) -> BackupOutput:
        data_dir = self._data_dir()
        version = self.server_version()
        inventory = self.inventory()  # counted before stopping: what the archive must bring back
        progress("qdrant: stopping the service for the volume tar", 0, None)
        with service_stopped(self.name, self.volume.stop_command, self.volume.start_command):
            try:
                record = tar_directory(self.name, data_dir, into, VOLUME_FILE)
            except (OSError, tarfile.TarError) as exc:
                raise BackupFailed(self.name, f"tar of {data_dir} failed: {exc}") from exc
        progress("qdrant: volume archived, service started", record.bytes, record.bytes)
        return BackupOutput(files=[record], method="volume", options={"data_dir": str(data_dir)},
                            versions={"qdrant": version}, inventory=inventory, markers={"archive": record.name})

    def _data_dir(self) -> Path:
        if not self.volume.data_dir:
            raise ConfigError("qdrant volume.data_dir", None, "the Qdrant storage folder (volumes.qdrant.data_dir)")
        path = Path(self.volume.data_dir)
        if not path.is_dir():
            raise ConfigError("qdrant volume.data_dir", str(path), "an existing folder readable by cb-backups")
        return path

    # --- verify ---------------------------------------------------------------------------------
    def verify(self, artifact: Artifact) -> Verification:
        if artifact.manifest.method == "volume":
            return self._verify_volume(artifact)
        if artifact.manifest.method == "full_snapshot":
            return self._verify_full(artifact)
        markers = artifact.manifest.markers
        snapshots, checksums, files = (markers.get(k) for k in ("snapshots", "checksums", "files"))
        if not all(isinstance(m, dict) for m in (snapshots, checksums, files)):
            return Verification(False, ["manifest markers lack snapshots/checksums/files per collection"])
        assert isinstance(snapshots, dict) and isinstance(checksums, dict) and isinstance(files, dict)
        problems: list[str] = []
        details: dict[str, Any] = {}
        recorded = {f.name: f for f in artifact.manifest.files}
        for collection in sorted(snapshots):
            name = files.get(collection)
            if not name or name not in recorded:
                problems.append(f"collection {collection}: no snapshot file in the manifest")
                continue
            path = artifact.path(name)
            if not path.is_file():
                problems.append(f"collection {collection}: snapshot file {name} is missing")
                continue
            try:
                digest, size, members = scan_archive(path)
            except ARCHIVE_ERRORS as exc:
                problems.append(f"collection {collection}: {name} is not a readable snapshot archive ({exc})")
                continue
            if members == 0:
                problems.append(f"collection {collection}: {name} is an empty archive")
            if digest != checksums.get(collection):
                problems.append(f"collection {collection}: {name} sha256 {digest[:12]}… differs from the checksum "
                                f"Qdrant reported ({str(checksums.get(collection))[:12]}…)")
            elif digest != recorded[name].sha256 or size != recorded[name].bytes:
                problems.append(f"collection {collection}: {name} differs from the manifest's size/sha256")
            details[collection] = {"file": name, "bytes": size, "members": members}
        for name in sorted(set(recorded) - set(files.values())):
            problems.append(f"{name}: in the manifest but not mapped to a collection")
        return Verification(not problems, problems, {"collections": details})

    def _verify_full(self, artifact: Artifact) -> Verification:
        markers = artifact.manifest.markers
        name, checksum = markers.get("file"), markers.get("checksum")
        recorded = {f.name: f for f in artifact.manifest.files}
        if not isinstance(name, str) or name not in recorded or not isinstance(checksum, str):
            return Verification(False, ["manifest markers lack the full snapshot's file and checksum"])
        path = artifact.path(name)
        if not path.is_file():
            return Verification(False, [f"full snapshot file {name} is missing"])
        try:
            digest, size, members = scan_archive(path)
        except ARCHIVE_ERRORS as exc:
            return Verification(False, [f"{name} is not a readable snapshot archive ({exc})"])
        problems: list[str] = []
        if digest != checksum:
            problems.append(f"{name} sha256 {digest[:12]}… differs from the checksum Qdrant reported "
                            f"({checksum[:12]}…)")
        elif digest != recorded[name].sha256 or size != recorded[name].bytes:
            problems.append(f"{name} differs from the manifest's size/sha256")
        if members == 0:
            problems.append(f"{name} is an empty archive")
        mapping = _full_snapshot_mapping(path) if not problems else None
        if mapping is not None:
            problems += [f"collection {c}: not in the full snapshot's config.json"
                         for c in markers.get("collections") or [] if c not in mapping]
        return Verification(not problems, problems, {"file": name, "bytes": size, "members": members})

    def _verify_volume(self, artifact: Artifact) -> Verification:
        problems: list[str] = []
        details: dict[str, Any] = {}
        for record in artifact.manifest.files:
            path = artifact.path(record.name)
            if not path.is_file():
                problems.append(f"{record.name}: missing")
                continue
            try:
                digest, size, members = scan_archive(path)
            except ARCHIVE_ERRORS as exc:
                problems.append(f"{record.name}: not a readable tar.gz ({exc})")
                continue
            if digest != record.sha256 or size != record.bytes:
                problems.append(f"{record.name}: size/sha256 differ from the manifest")
            details[record.name] = {"bytes": size, "members": members}
        if not artifact.manifest.files:
            problems.append("the manifest lists no archive")
        return Verification(not problems, problems, details)

    # --- restore --------------------------------------------------------------------------------
    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        if target.mode not in ("scratch", "in_place"):
            raise ConfigError("qdrant restore mode", target.mode, "scratch, in_place")
        if artifact.manifest.method == "volume":
            return self._restore_volume(artifact, target, progress)
        plan = self._restore_plan(artifact, target)
        changed = checksum_problems(artifact)  # a file or the manifest changed since the backup: refuse
        if changed:
            raise RestoreRefused(self.name, "; ".join(changed))
        check = self.verify(artifact)
        if not check.ok:
            raise RestoreRefused(self.name, "; ".join(check.problems))
        try:
            server = self.server_version()
        except StoreUnavailable as exc:
            raise RestoreRefused(self.name, str(exc)) from None
        self._check_versions(artifact.manifest.versions.get("qdrant"), server)
        markers = artifact.manifest.markers
        if artifact.manifest.method == "full_snapshot":
            if target.mode == "in_place":
                self._recover_storage(artifact, target, progress)
            else:
                self._upload_from_full(artifact, plan, progress)
        else:
            for index, (collection, destination) in enumerate(plan.items()):
                progress(f"qdrant: uploading {collection} -> {destination}", index, len(plan))
                self._upload(artifact.path(markers["files"][collection]), destination,
                             markers["checksums"][collection])
            progress("qdrant: snapshots uploaded", len(plan), len(plan))
        self._restore_aliases(artifact, plan, target)
        problems = self._restored_problems(artifact, plan, target)
        if problems:
            raise RestoreFailed(self.name, "the restored collections differ from the backup: " + "; ".join(problems))
        return self._count_plan(plan)

    # --- aliases and config after a restore ------------------------------------------------------
    def _wanted_aliases(self, artifact: Artifact, plan: dict[str, str], target: Target) -> dict[str, str]:
        """The backup's aliases of the restored collections, under the target's names."""
        suffix = "" if target.mode == "in_place" else target.options.get("suffix", DEFAULT_SUFFIX)
        recorded = artifact.manifest.markers.get("aliases") or {}
        return {f"{alias}{suffix}": plan[collection] for alias, collection in sorted(recorded.items())
                if collection in plan}

    def _restore_aliases(self, artifact: Artifact, plan: dict[str, str], target: Target) -> None:
        """One `POST /collections/aliases`: Qdrant applies its actions atomically, so the application never
        sees an alias missing or half moved. Aliases the backup did not have are left as they are."""
        wanted = self._wanted_aliases(artifact, plan, target)
        current = self.aliases(RestoreFailed)
        actions: list[dict[str, Any]] = []
        for alias, collection in wanted.items():
            if current.get(alias) == collection:
                continue
            if alias in current:
                actions.append({"delete_alias": {"alias_name": alias}})
            actions.append({"create_alias": {"collection_name": collection, "alias_name": alias}})
        if not actions:
            return
        action = f"recreating aliases {', '.join(sorted(wanted))}"
        with self._api(action, RestoreFailed), self._http() as http:
            response = http.post(f"{self.url}/collections/aliases", json={"actions": actions})
            self._check(response, action, RestoreFailed)

    def _restored_problems(self, artifact: Artifact, plan: dict[str, str], target: Target) -> list[str]:
        """Config, payload indexes and aliases of the restored collections against the manifest."""
        problems: list[str] = []
        configs = artifact.manifest.options.get("collections") or {}
        for collection, destination in plan.items():
            expected = configs.get(collection)
            if not isinstance(expected, dict):
                continue  # a backup from before configs were recorded
            actual = self.collection_config(destination, RestoreFailed)
            have = actual.get("payload_schema") or {}
            problems += [f"{destination}: payload index {field!r} missing"
                         for field in sorted(set(expected.get("payload_schema") or {}) - set(have))]
            for section in CONFIG_SECTIONS:
                wanted = expected.get(section)
                if section == "payload_schema" and isinstance(wanted, dict):
                    wanted = {k: v for k, v in wanted.items() if k in have}  # a missing one is reported above
                if section in expected:
                    problems += config_differences(wanted, actual.get(section), f"{destination}.{section}")
        current = self.aliases(RestoreFailed)
        for alias, collection in self._wanted_aliases(artifact, plan, target).items():
            if current.get(alias) != collection:
                problems.append(f"alias {alias} points to {current.get(alias)!r}, expected {collection!r}")
        return problems

    # --- full-storage snapshots --------------------------------------------------------------------
    def _recovery_command(self, snapshot: Path) -> tuple[str, ...]:
        start = tuple(self.volume.start_command)
        if not self.volume.stop_command or not any(SNAPSHOT_PLACEHOLDER in part for part in start):
            raise ConfigError("qdrant volumes.qdrant stop_command/start_command for a full_snapshot restore",
                              " ".join(start) or None,
                              "a stop command, and a start command that recovers {snapshot}, e.g. "
                              "qdrant --storage-snapshot {snapshot} --force-snapshot")
        return tuple(part.replace(SNAPSHOT_PLACEHOLDER, str(snapshot)) for part in start)

    def _recover_storage(self, artifact: Artifact, target: Target, progress: Progress) -> None:
        """Qdrant's storage snapshot recovery: stop, start with the verified file, wait until it answers."""
        path = artifact.path(artifact.manifest.markers["file"])
        start = self._recovery_command(path.resolve())
        progress("qdrant: restarting with the storage snapshot recovery", 0, None)
        try:
            with service_stopped(self.name, self.volume.stop_command, start):
                pass
            self.wait_ready(float(target.options.get("ready_timeout", 120)))
        except (BackupFailed, StoreUnavailable) as exc:
            raise RestoreFailed(self.name, f"storage snapshot recovery: {exc}") from None
        progress("qdrant: storage snapshot recovered", 1, 1)

    def _upload_from_full(self, artifact: Artifact, plan: dict[str, str], progress: Progress) -> None:
        """Scratch copies from a full snapshot: each collection snapshot inside it, uploaded under its new name."""
        path = artifact.path(artifact.manifest.markers["file"])
        mapping = _full_snapshot_mapping(path)
        if mapping is None:
            raise RestoreRefused(self.name, f"{path.name} has no config.json mapping collections to their "
                                            "snapshots; restore it in place")
        with tempfile.TemporaryDirectory(prefix="cb-qdrant-") as work, tarfile.open(path, "r:*") as tar:
            for index, (collection, destination) in enumerate(plan.items()):
                progress(f"qdrant: uploading {collection} -> {destination}", index, len(plan))
                inner = tar.extractfile(mapping[collection])
                if inner is None:
                    raise RestoreRefused(self.name, f"{path.name}: {mapping[collection]} is not a file")
                part = Path(work) / "collection.snapshot"
                with HashingWriter(part) as out:
                    shutil.copyfileobj(inner, out, CHUNK)
                self._upload(part, destination, out.sha256)
                part.unlink()
        progress("qdrant: snapshots uploaded", len(plan), len(plan))

    def _count_plan(self, plan: dict[str, str]) -> Inventory:
        """The restored collections counted now, under the backup's names."""
        return {"collections": {collection: self.count(destination) for collection, destination in plan.items()}}

    def _restore_plan(self, artifact: Artifact, target: Target) -> dict[str, str]:
        """Backup collection -> target collection."""
        markers = artifact.manifest.markers
        full = artifact.manifest.method == "full_snapshot"
        known = sorted(markers.get("collections") or []) if full else sorted((markers.get("snapshots") or {}).keys())
        wanted = target.options.get("collections") or known
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise ConfigError("qdrant collection to restore", unknown[0], ", ".join(known) or "none in this backup")
        if target.mode == "in_place":
            if full and sorted(wanted) != known:
                raise ConfigError("qdrant collections of an in-place full_snapshot restore", sorted(wanted),
                                  "all of them (the storage recovery restores every collection); "
                                  "or restore to scratch")
            return {c: c for c in wanted}
        suffix = target.options.get("suffix", DEFAULT_SUFFIX)
        if not isinstance(suffix, str) or not suffix:
            raise ConfigError("qdrant scratch suffix", suffix, "a non-empty text such as '__drill'")
        return {c: f"{c}{suffix}" for c in wanted}

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        """Qdrant loads snapshots of its own or an older minor version."""
        def check() -> list[str]:
            have = self.server_version()
            backed_up = artifact.manifest.versions.get("qdrant", "")
            source, dest = major_minor(backed_up), major_minor(have)
            if source and dest and dest < source:
                return [f"the backup is from Qdrant {backed_up}, the target runs {have}, which cannot load newer "
                        "snapshots"]
            return []
        problems = version_problems(check)
        if artifact.manifest.method == "full_snapshot" and target.mode == "in_place":
            try:
                self._recovery_command(Path(SNAPSHOT_PLACEHOLDER))
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """Nothing to prepare: the snapshots are uploaded into the live collections."""

    @contextmanager
    def quiesce(self, target: Target) -> Iterator[dict[str, Any] | None]:
        """The write lock of Qdrant's `POST /locks` until the block ends (see the module docstring)."""
        if target.mode != "in_place" or self.settings.method == "volume":
            yield None  # the volume method stops the whole service for its restore
            return
        previous = self._set_write_lock(True, LOCK_MESSAGE)
        if previous.get("write"):  # someone locked it before us: it stays as they left it
            yield None
            return
        try:
            yield {"write_lock": LOCK_MESSAGE}
        except BaseException:
            with contextlib.suppress(CbBackupsError):  # the restore's own error is the one to report
                self._set_write_lock(False)
            raise
        self._set_write_lock(False)

    swaps_in_place = False  # snapshots are uploaded collection by collection

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """A restore killed with writes locked: lift the lock if it is still ours (its message says so)."""
        if target.mode != "in_place" or hold is None:
            return []
        with self._api("reading the write lock"), self._http() as http:
            response = http.get(f"{self.url}/locks")
            self._check(response, "reading the write lock")
        try:
            current = dict(response.json()["result"] or {})
        except (ValueError, KeyError, TypeError):
            raise StoreUnavailable(self.name, f"{self.where} did not answer GET /locks like Qdrant") from None
        if current.get("write") and current.get("error_message") == LOCK_MESSAGE:
            self._set_write_lock(False)
            return ["writes unlocked (POST /locks)"]
        return []

    def _set_write_lock(self, write: bool, message: str | None = None) -> dict[str, Any]:
        """`POST /locks`; returns the previous lock options."""
        action = "locking writes" if write else "unlocking writes"
        with self._api(action), self._http() as http:
            response = http.post(f"{self.url}/locks", json={"write": write, "error_message": message})
            self._check(response, action)
        try:
            return dict(response.json()["result"] or {})
        except (ValueError, KeyError, TypeError):
            raise StoreUnavailable(self.name, f"{self.where} did not answer POST /locks like Qdrant") from None

    def replaced(self) -> list[str]:
        """The uploads replace the collections: what they held is in the safety backup, nothing is kept aside."""
        return []

    def prune_replaced(self, keep_days: int) -> list[str]:
        return []

    def describe_target(self, target: Target) -> str:
        if target.mode == "scratch":
            suffix = target.options.get("suffix", DEFAULT_SUFFIX)
            return f"collections <name>{suffix} and aliases <alias>{suffix} at {self.where}"
        if self.settings.method == "full_snapshot":
            return f"the whole storage (every collection and alias) of {self.where}, restarted"
        return f"the collections and their aliases at {self.where}"

    def scratch_target(self, purpose: str) -> Target:
        return Target("scratch", {"suffix": DEFAULT_SUFFIX if purpose == DRILL else SCRATCH_SUFFIX})

    @contextmanager
    def scratch(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Iterator[Scratch]:
        """Copies `<collection><suffix>` on the same server, dropped before (leftovers) and after."""
        require_scratch(self.name, target)
        plan = self._restore_plan(artifact, target)
        copies = list(plan.values())
        self.drop_collections(copies)  # leftovers of an interrupted drill
        with dropped_afterwards(lambda: self.drop_collections(copies)):
            self.restore(artifact, target, progress)
            suffix = target.options.get("suffix", DEFAULT_SUFFIX)
            yield Scratch(target, lambda: self._count_plan(plan), f"collections *{suffix}")

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        return named_counts_problems(expected, actual, target, "collections", "collections")

    def before_delete(self, artifact: Artifact) -> None:
        """Nothing to release: the server-side snapshots were deleted once downloaded."""

    def _check_versions(self, backed_up: str | None, server: str) -> None:
        source, dest = major_minor(backed_up or ""), major_minor(server)
        if source and dest and dest < source:
            raise RestoreRefused(self.name, f"the backup was taken on Qdrant {backed_up}; the server at {self.where} "
                                            f"runs {server}, which cannot load newer snapshots")

    def _upload(self, path: Path, collection: str, checksum: str) -> None:
        url = f"{self.url}/collections/{quote(collection, safe='')}/snapshots/upload"
        params = {"priority": "snapshot", "wait": "true", "checksum": checksum}
        action = f"uploading {path.name} into collection {collection!r}"
        with self._api(action), self._http(SLOW_TIMEOUT) as http, open(path, "rb") as fh:
            # httpx streams a file object part in 64 KiB blocks (Content-Length from fstat)
            response = http.post(url, params=params, files={"snapshot": (path.name, fh, "application/octet-stream")})
            self._check(response, action)

    def drop_collections(self, names: list[str]) -> list[str]:
        """Delete scratch collections (after a drill); returns those that existed."""
        dropped = []
        for name in names:
            if not name:
                raise ConfigError("qdrant collection to drop", name, "a collection name")
            with self._api(f"dropping collection {name!r}"):
                if self._client().delete_collection(name):
                    dropped.append(name)
        return dropped

    # --- volume restore ----------------------------------------------------------------------------
    def _restore_volume(self, artifact: Artifact, target: Target, progress: Progress) -> Inventory:
        check = self._verify_volume(artifact)
        if not check.ok:
            raise RestoreRefused(self.name, "; ".join(check.problems))
        archive = artifact.path(artifact.manifest.markers.get("archive") or artifact.manifest.files[0].name)
        if target.mode == "scratch":
            dest = target.options.get("data_dir")
            if not dest:
                raise ConfigError("qdrant scratch data_dir", dest, "an empty or new folder for the extracted volume")
            dest_path = Path(dest)
            if dest_path.exists() and any(dest_path.iterdir()):
                raise RestoreRefused(self.name, f"scratch folder {dest_path} is not empty")
            dest_path.mkdir(parents=True, exist_ok=True)
            extract_tar(self.name, archive, dest_path)
            return {"volume": {"entries": sum(1 for _ in dest_path.rglob("*"))}}
        if not self.volume.data_dir:
            raise ConfigError("qdrant volume.data_dir", None, "the Qdrant storage folder (volumes.qdrant.data_dir)")
        data_dir = Path(self.volume.data_dir)
        # Extract beside the data folder first: a bad archive never touches the target,
        # and the service is stopped only for the swap.
        staging = data_dir.parent / f".{data_dir.name}.restore-{uuid.uuid4().hex[:8]}"
        progress("qdrant: extracting the volume archive", 0, None)
        try:
            extract_tar(self.name, archive, staging)
            with service_stopped(self.name, self.volume.stop_command, self.volume.start_command):
                _replace_contents(data_dir, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.wait_ready(float(target.options.get("ready_timeout", 60)))
        progress("qdrant: volume restored, service started", 1, 1)
        return self.inventory()

    def wait_ready(self, timeout: float = 60) -> str:
        """Poll GET / until Qdrant answers; returns its version."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.server_version()
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(self.name, f"{self.where} did not answer within {timeout:.0f}s "
                                                      "after the start command") from None
                time.sleep(0.2)


def _full_snapshot_mapping(path: Path) -> dict[str, str] | None:
    """collection -> inner snapshot file, from a full snapshot's config.json (None when it has none)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            member = tar.extractfile("config.json")
            if member is None:
                return None
            mapping = json.load(member).get("collections_mapping")
    except (KeyError, ValueError, AttributeError, *ARCHIVE_ERRORS):
        return None
    return {str(k): str(v) for k, v in mapping.items()} if isinstance(mapping, dict) else None


def _replace_contents(data_dir: Path, source: Path) -> None:
    """Make `data_dir` hold exactly `source`'s entries (keeps the folder itself: it may be a mount)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for child in list(data_dir.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in list(source.iterdir()):
        shutil.move(str(child), str(data_dir / child.name))


def _last_backup_bytes(backup_dir: Path) -> int | None:
    """Size of the newest Qdrant backup under `backup_dir` (catalog root or the store's folder)."""
    newest: tuple[float, int] | None = None
    for base in (backup_dir / "qdrant", backup_dir):
        if not base.is_dir():
            continue
        for manifest in base.glob("*/manifest.json"):
            try:
                data = json.loads(manifest.read_text())
                if data.get("store") != "qdrant":
                    continue
                size = sum(int(f["bytes"]) for f in data["files"])
                mtime = manifest.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if newest is None or mtime > newest[0]:
                newest = (mtime, size)
    return newest[1] if newest else None
