"""An OpenSearch 2.13 emulator: osmem-server for the data APIs, plus a snapshot/restore layer.

osmem-server (pip `osmem-server`) is an in-memory OpenSearch-compatible server: index, `_bulk`,
`_count`, `_cat/indices`, scroll, `_close`/`_open`, `_cluster/health`, but no snapshot APIs.
This module runs a small HTTP proxy in front of it that forwards every request to osmem and
itself implements the snapshot API the product uses (shapes from the official OpenSearch spec,
`namespaces/snapshot.yaml`):

    PUT|POST|GET|DELETE /_snapshot/{repo}           register (fs, s3), get, delete a repository
    POST /_snapshot/{repo}/_verify                    verify a repository (location writable)
    PUT|POST /_snapshot/{repo}/{snap}                 create a snapshot (reads documents back via scroll)
    GET /_snapshot/{repo}/{snap|_all|*}               snapshot info
    DELETE /_snapshot/{repo}/{snap}                   delete a snapshot (its files go too)
    POST /_snapshot/{repo}/{snap}/_restore            recreate indices and bulk-load their documents

Snapshots live on disk in the repository location (type fs) or under the emulator's data folder
(type s3: `<data>/s3/<bucket>/<base_path>`), laid out as OpenSearch 2.x's BlobStoreRepository lays
them out (index-N, index.latest, snap-/meta-<uuid>.dat, indices/<id>/<shard>/__<blob>, see
`Repository`), with the documents' bytes in the data blobs, incremental (unchanged segments are shared
by snapshots) and checksummed (a restore refuses a changed blob), so they survive a restart of the
emulator, and removing or changing their files really loses them. Like the real server it refuses: fs locations outside
`path.repo`, a second snapshot with the same name, restoring over an open index, restoring
indices that are not in the snapshot, a missing repository or snapshot.

Fault injection for tests: `POST /_emulator/faults {"snapshot_shard_failures": ["index"]}` makes
the next snapshots record failed shards for those indices (state PARTIAL), as a real node
failure would; `{"restore_failures": ["index"]}` makes restores of those indices fail on the node.
Each POST replaces both lists.

Standalone: ``python -m cb_backups_tests.emulators.opensearch --port 19200 --path-repo /tmp/repo``.
In Python: ``emu = OpenSearchEmulator.start(path_repo=[tmp]); ...; emu.stop()``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import struct
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from osmem_server import OsmemServer

VERSION = {
    "distribution": "opensearch",
    "number": "2.13.0",
    "build_type": "tar",
    "build_hash": "emulator",
    "build_date": "2024-03-27T21:25:48.455390829Z",
    "build_snapshot": False,
    "lucene_version": "9.10.0",
    "minimum_wire_compatibility_version": "7.10.0",
    "minimum_index_compatibility_version": "7.0.0",
}
VERSION_ID = 136347827  # 2.13.0 as OpenSearch encodes it
NODE_ID = "emu-node-0001"
NODE_NAME = "osmem-node"
BULK_BATCH = 500
SEGMENT_DOCS = 50  # documents per emulated segment blob
CODEC_MAGIC = 0x3FD76C17  # Lucene CodecUtil header
FOOTER_MAGIC = ~CODEC_MAGIC & 0xFFFFFFFF
DEFLATE_HEADER = b"DFL\x00"
SCROLL_SIZE = 500
# index settings osmem (and a real cluster) assign itself; not carried into a restored index
_GENERATED_SETTINGS = {"creation_date", "uuid", "version", "provided_name", "replication", "history", "resize"}
_INVALID_NAME_CHARS = set('\\/*?"<>| ,#')
_HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "date", "server", "content-length",
                "x-elastic-product"}


class ApiError(Exception):
    """An error answered with OpenSearch's error body shape."""

    def __init__(self, status: int, kind: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason, self.extra = status, kind, reason, extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.kind, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _stringify(value: Any) -> Any:
    """Repository settings come back as strings from a real cluster."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    return str(value)


def _truthy(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("true", "1", "")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _without(settings: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """`settings` (nested as GET _settings answers, or flat dotted keys) without the setting at `path`."""
    out = {k: v for k, v in settings.items() if k != ".".join(path)}
    head, rest = path[0], path[1:]
    if rest and isinstance(out.get(head), dict):
        out[head] = _without(out[head], rest)
        if not out[head]:
            del out[head]
    elif not rest:
        out.pop(head, None)
    return out


def _java_replacement(replacement: str) -> str:
    """Java's `$1` group references as Python's `\\g<1>`."""
    return re.sub(r"\$(\d+)", r"\\g<\1>", replacement.replace("\\", "\\\\"))


def _blob_uuid() -> str:
    """A url-safe base64 UUID, as OpenSearch names blobs (`UUIDs.randomBase64UUID`)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _dat_bytes(payload: Any, codec: str, compress: bool) -> bytes:
    """A metadata blob framed as OpenSearch's ChecksumBlobStoreFormat: Lucene codec header, the body
    (`DFL\\0` + raw deflate when the repository compresses), Lucene footer with the CRC32. The real
    body is SMILE; the emulator writes JSON (the adapter only hashes these files and scans them for blob
    names, which both encodings keep verbatim)."""
    name = codec.encode()
    header = struct.pack(">I", CODEC_MAGIC) + bytes([len(name)]) + name + struct.pack(">I", 1)
    body = json.dumps(payload, sort_keys=True).encode()
    if compress:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = DEFLATE_HEADER + packer.compress(body) + packer.flush()
    crc = zlib.crc32(header + body)
    return header + body + struct.pack(">IIQ", FOOTER_MAGIC, 0, crc)


def _read_dat(path: Path) -> Any:
    data = path.read_bytes()
    if len(data) < 25 or struct.unpack(">I", data[:4])[0] != CODEC_MAGIC:
        raise ValueError(f"{path.name}: no codec header")
    body = data[4 + 1 + data[4] + 4:-16]
    if zlib.crc32(data[:-16]) != struct.unpack(">IIQ", data[-16:])[2]:
        raise ValueError(f"{path.name}: checksum failed (corrupted)")
    if body.startswith(DEFLATE_HEADER):
        body = zlib.decompressobj(-15).decompress(body[len(DEFLATE_HEADER):])
    return json.loads(body)


@dataclass
class Repository:
    """A BlobStoreRepository laid out as OpenSearch 2.x does (see `org.opensearch.repositories.blobstore`
    package docs)::

        index-N                RepositoryData (JSON), N = generation; only the newest is kept
        index.latest           N as a big-endian 64-bit long
        snap-<uuid>.dat        SnapshotInfo              meta-<uuid>.dat   global metadata
        indices/<index id>/meta-<blob id>.dat             IndexMetadata, shared by snapshots with equal metadata
        indices/<index id>/<shard>/__<blob id>            data blobs (segments: the documents, ndjson),
                                                          shared by every snapshot whose shard holds them
        indices/<index id>/<shard>/snap-<uuid>.dat        the shard's files in that snapshot
        indices/<index id>/<shard>/index-<generation>     every snapshot of the shard and its files

    A shard's documents are grouped by sorted `_id` into segments of SEGMENT_DOCS; a segment whose
    bytes a previous snapshot of the shard already stored is referenced, not written again (as Lucene
    segments are): the snapshots are incremental.
    """

    name: str
    type: str
    settings: dict[str, Any]
    root: Path
    uuid: str = field(default_factory=_blob_uuid)

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "uuid": self.uuid, "settings": _stringify(self.settings)}

    @property
    def compress(self) -> bool:
        return _truthy(self.settings.get("compress"))

    @property
    def readonly(self) -> bool:
        return _truthy(self.settings.get("readonly")) or _truthy(self.settings.get("read_only"))

    # --- RepositoryData ---------------------------------------------------------------
    def generation(self) -> int:
        """The highest N of the index-N blobs (listing, as a writable repository does); else index.latest."""
        found = [int(p.name[6:]) for p in self.root.glob("index-*") if p.name[6:].isdigit()] \
            if self.root.is_dir() else []
        if found:
            return max(found)
        latest = self.root / "index.latest"
        return struct.unpack(">q", latest.read_bytes())[0] if latest.is_file() else -1

    def data(self) -> dict[str, Any]:
        gen = self.generation()
        if gen < 0:
            return {"min_version": "7.9.0", "uuid": self.uuid, "cluster_id": "emulator-cluster", "snapshots": [],
                    "indices": {}, "index_metadata_identifiers": {}}
        return json.loads((self.root / f"index-{gen}").read_text())

    def write_data(self, data: dict[str, Any]) -> None:
        old = self.generation()
        new = old + 1
        _write_atomic(self.root / f"index-{new}", json.dumps(data, sort_keys=True).encode())
        _write_atomic(self.root / "index.latest", struct.pack(">q", new))
        if old >= 0:
            (self.root / f"index-{old}").unlink(missing_ok=True)

    # --- reading snapshots ----------------------------------------------------------------
    def snapshots(self) -> list[dict[str, Any]]:
        found = []
        for entry in self.data()["snapshots"]:
            try:
                found.append({"info": _read_dat(self.root / f"snap-{entry['uuid']}.dat"), "entry": entry})
            except (OSError, ValueError):
                continue  # a snapshot whose SnapshotInfo blob is gone is not listed
        return sorted(found, key=lambda s: s["info"]["start_time_in_millis"])

    def snapshot(self, name: str) -> dict[str, Any] | None:
        for snap in self.snapshots():
            if snap["info"]["snapshot"] == name:
                return snap
        return None

    def index_meta(self, data: dict[str, Any], entry: dict[str, Any], index: str) -> dict[str, Any]:
        index_id = data["indices"][index]["id"]
        blob = data["index_metadata_identifiers"][entry["index_metadata_lookup"][index_id]]
        return {"id": index_id, **_read_dat(self.root / "indices" / index_id / f"meta-{blob}.dat")}

    def shard_dir(self, index_id: str, shard: int) -> Path:
        return self.root / "indices" / index_id / str(shard)


def _mirror_to_s3(repo: Repository) -> None:
    """An s3 repository whose settings name an `endpoint` is also written into that bucket (new and changed
    files put, removed ones deleted; AWS credentials from the environment), so tests can check a real bucket."""
    endpoint = repo.settings.get("endpoint")
    if repo.type != "s3" or not endpoint:
        return
    import boto3

    client = boto3.client("s3", endpoint_url=str(endpoint), region_name=str(repo.settings.get("region", "us-east-1")))
    bucket, base = str(repo.settings["bucket"]), str(repo.settings.get("base_path", "")).strip("/")
    prefix = f"{base}/" if base else ""
    remote = {o["Key"]: o["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                                Prefix=prefix)
              for o in page.get("Contents", []) or []}
    local = {prefix + p.relative_to(repo.root).as_posix(): p for p in repo.root.rglob("*") if p.is_file()}
    for key, path in local.items():
        if key not in remote or path.name.startswith("index"):  # index-N / index.latest change in place
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    for key in set(remote) - set(local):
        client.delete_object(Bucket=bucket, Key=key)


class Osmem:
    """Plain JSON calls to the osmem-server behind the proxy."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def raw(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, ndjson: bytes | None = None) -> tuple[int, Any]:
        if ndjson is not None:
            data, ctype = ndjson, "application/x-ndjson"
        else:
            data, ctype = (None if body is None else json.dumps(body).encode()), "application/json"
        status, _, payload = self.raw(method, path, data, {"Content-Type": ctype})
        return status, (json.loads(payload) if payload else {})

    def ok(self, method: str, path: str, body: Any = None, ndjson: bytes | None = None) -> Any:
        status, payload = self.call(method, path, body, ndjson)
        if status >= 300:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            if isinstance(err, dict):
                raise ApiError(status, err.get("type", "exception"), err.get("reason", str(payload)))
            raise ApiError(status, "exception", str(err))
        return payload

    def index_states(self) -> dict[str, str]:
        rows = self.ok("GET", "/_cat/indices?format=json&expand_wildcards=all&h=index,status")
        return {row["index"]: row["status"] for row in rows}


class SnapshotService:
    """The snapshot/restore layer: state is the repositories (in memory) and their folders."""

    def __init__(self, osmem: Osmem, data_dir: Path, path_repo: list[Path]) -> None:
        self.osmem = osmem
        self.data_dir = data_dir
        self.path_repo = [p.resolve() for p in path_repo]
        self.repos: dict[str, Repository] = {}
        self.lock = threading.Lock()  # repository registry
        self.running = threading.Lock()  # one snapshot or restore at a time
        self.fail_shards: set[str] = set()
        self.fail_restores: set[str] = set()

    # --- repositories -------------------------------------------------------------
    def _repo(self, name: str) -> Repository:
        repo = self.repos.get(name)
        if repo is None:
            raise ApiError(404, "repository_missing_exception", f"[{name}] missing")
        return repo

    def _location(self, name: str, kind: str, settings: dict[str, Any]) -> Path:
        if kind == "fs":
            location = settings.get("location")
            if not location:
                raise ApiError(500, "repository_exception", f"[{name}] missing location")
            path = Path(str(location))
            if not path.is_absolute():
                if not self.path_repo:
                    raise ApiError(500, "repository_exception", f"[{name}] location [{location}] doesn't match any "
                                   "of the locations specified by path.repo because this setting is empty")
                path = self.path_repo[0] / path
            path = Path(os.path.normpath(path))
            if not any(path == root or root in path.parents for root in self.path_repo):
                suffix = " because this setting is empty" if not self.path_repo else ""
                raise ApiError(500, "repository_exception", f"[{name}] location [{location}] doesn't match any "
                               f"of the locations specified by path.repo{suffix}")
            return path
        if kind == "s3":
            bucket = settings.get("bucket")
            if not bucket:
                raise ApiError(500, "repository_exception", f"[{name}] No bucket defined for s3 repository")
            return self.data_dir / "s3" / str(bucket) / str(settings.get("base_path", "")).strip("/")
        raise ApiError(500, "repository_exception", f"[{name}] repository type [{kind}] does not exist")

    def put_repository(self, name: str, body: dict[str, Any], verify: bool) -> dict[str, Any]:
        if not name or name.startswith("_") or name != name.lower() or _INVALID_NAME_CHARS & set(name):
            raise ApiError(400, "invalid_repository_name_exception",
                           f"[{name}] Invalid repository name [{name}], must be lowercase and must not contain "
                           "whitespace, ',', '#', '\\', '/', '*', '?', '\"', '<', '>', '|' or start with '_'")
        kind = body.get("type")
        if not kind:
            raise ApiError(400, "action_request_validation_exception",
                           "Validation Failed: 1: type is missing;")
        settings = dict(body.get("settings") or {})
        root = self._location(name, str(kind), settings)
        readonly = _truthy(settings.get("readonly")) or _truthy(settings.get("read_only"))
        if not readonly:
            root.mkdir(parents=True, exist_ok=True)
        if verify:
            self._verify_location(name, root, readonly)
        with self.lock:
            old = self.repos.get(name)
            repo = Repository(name, str(kind), settings, root)
            if old is not None and old.root == root:
                repo.uuid = old.uuid
            self.repos[name] = repo
        return {"acknowledged": True}

    def _verify_location(self, name: str, root: Path, readonly: bool = False) -> None:
        if readonly:  # a read-only repository is only read: OpenSearch skips the write probe
            if not root.is_dir():
                raise ApiError(500, "repository_verification_exception", f"[{name}] location [{root}] is not "
                               "a readable folder")
            return
        probe = root / f"tests-{uuid.uuid4().hex[:12]}"
        try:
            probe.mkdir(parents=True)
            (probe / "master.dat").write_bytes(b"verify")
            shutil.rmtree(probe)
        except OSError as exc:
            raise ApiError(500, "repository_verification_exception",
                           f"[{name}] store location [{root}] is not accessible on the node "
                           f"[{{{NODE_NAME}}}{{{NODE_ID}}}]: {exc.strerror}") from None

    def get_repositories(self, names: str | None) -> dict[str, Any]:
        if names in (None, "", "_all", "*"):
            return {n: r.describe() for n, r in sorted(self.repos.items())}
        out: dict[str, Any] = {}
        for pattern in _as_list(names):
            if any(c in pattern for c in "*?"):
                out.update({n: r.describe() for n, r in self.repos.items() if fnmatch.fnmatchcase(n, pattern)})
            else:
                out[pattern] = self._repo(pattern).describe()
        return out

    def delete_repository(self, name: str) -> dict[str, Any]:
        with self.lock:
            self._repo(name)
            del self.repos[name]
        return {"acknowledged": True}

    def verify_repository(self, name: str) -> dict[str, Any]:
        repo = self._repo(name)
        self._verify_location(name, repo.root, repo.readonly)
        return {"nodes": {NODE_ID: {"name": NODE_NAME}}}

    # --- snapshots ----------------------------------------------------------------
    def get_snapshots(self, repo_name: str, names: str, ignore_unavailable: bool) -> dict[str, Any]:
        repo = self._repo(repo_name)
        every = repo.snapshots()
        if names == "_current":
            return {"snapshots": []}
        chosen: list[dict[str, Any]] = []
        for pattern in _as_list(names):
            if pattern in ("_all", "*") or any(c in pattern for c in "*?"):
                chosen += [s for s in every if fnmatch.fnmatchcase(s["info"]["snapshot"], pattern)
                           or pattern == "_all"]
                continue
            snap = repo.snapshot(pattern)
            if snap is None:
                if ignore_unavailable:
                    continue
                raise ApiError(404, "snapshot_missing_exception", f"[{repo_name}:{pattern}] is missing")
            chosen.append(snap)
        seen: set[str] = set()
        infos = []
        for snap in chosen:
            if snap["info"]["uuid"] not in seen:
                seen.add(snap["info"]["uuid"])
                infos.append(snap["info"])
        return {"snapshots": infos}

    def _validate_snapshot_name(self, repo: str, name: str) -> None:
        problem = None
        if not name:
            problem = "cannot be empty"
        elif name != name.lower():
            problem = "must be lowercase"
        elif _INVALID_NAME_CHARS & set(name):
            problem = "must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?]"
        elif name.startswith("_"):
            problem = "must not start with '_'"
        if problem:
            raise ApiError(400, "invalid_snapshot_name_exception",
                           f"[{repo}:{name}] Invalid snapshot name [{name}], {problem}")

    def _resolve_indices(self, expression: Any, states: dict[str, str], ignore_unavailable: bool,
                         what: str = "index") -> list[str]:
        patterns = _as_list(expression) or ["_all"]
        chosen: list[str] = []
        for pattern in patterns:
            if pattern.startswith("-") and len(pattern) > 1:
                chosen = [i for i in chosen if not fnmatch.fnmatchcase(i, pattern[1:])]
                continue
            if pattern in ("_all", "*") or any(c in pattern for c in "*?"):
                glob = "*" if pattern == "_all" else pattern
                chosen += [i for i, st in sorted(states.items())
                           if fnmatch.fnmatchcase(i, glob) and st == "open"
                           and (not i.startswith(".") or glob.startswith("."))]
                continue
            if pattern not in states:
                if ignore_unavailable:
                    continue
                raise ApiError(404, "index_not_found_exception", f"no such index [{pattern}]",
                               index=pattern, **{"resource.type": "index_or_alias", "resource.id": pattern,
                                                 "index_uuid": "_na_"})
            if states[pattern] != "open" and what == "index":
                if ignore_unavailable:
                    continue
                raise ApiError(400, "index_closed_exception", "closed", index=pattern)
            chosen.append(pattern)
        return list(dict.fromkeys(chosen))

    def create_snapshot(self, repo_name: str, name: str, body: dict[str, Any], wait: bool) -> dict[str, Any]:
        repo = self._repo(repo_name)
        self._validate_snapshot_name(repo_name, name)
        if not self.running.acquire(blocking=False):
            raise ApiError(503, "concurrent_snapshot_execution_exception",
                           f"[{repo_name}:{name}] cannot snapshot while another snapshot or restore is running")
        try:
            if repo.snapshot(name) is not None:
                raise ApiError(400, "invalid_snapshot_name_exception", f"[{repo_name}:{name}] Invalid snapshot "
                               f"name [{name}], snapshot with the same name already exists")
            if repo.readonly:
                raise ApiError(500, "repository_exception", f"[{repo_name}] cannot create snapshot in a readonly "
                               "repository")
            states = self.osmem.index_states()
            indices = self._resolve_indices(body.get("indices"), states, _truthy(body.get("ignore_unavailable")))
            info = self._capture(repo, name, indices, body)
            _mirror_to_s3(repo)
        finally:
            self.running.release()
        return {"snapshot": info} if wait else {"accepted": True}

    def _capture(self, repo: Repository, name: str, indices: list[str], body: dict[str, Any]) -> dict[str, Any]:
        """Write the snapshot the way BlobStoreRepository does: shard data, shard snap-/index- blobs, then
        index metadata, global metadata, SnapshotInfo, and last a new index-N (until then it does not exist)."""
        start = _now_ms()
        snap_uuid = _blob_uuid()
        data = repo.data()
        total = failed = 0
        failures = []
        lookup: dict[str, str] = {}
        for index in indices:
            described = self.osmem.ok("GET", f"/{index}")[index]
            shards = int(described["settings"]["index"].get("number_of_shards", 1))
            total += shards
            if index in self.fail_shards:
                failed += shards
                failures += [{"index": index, "index_uuid": index, "shard_id": s, "node_id": NODE_ID,
                              "status": "INTERNAL_SERVER_ERROR",
                              "reason": "IndexShardSnapshotFailedException[injected failure]"}
                             for s in range(shards)]
                continue
            entry = data["indices"].setdefault(index, {"id": _blob_uuid(), "snapshots": [], "shard_generations": []})
            index_id = entry["id"]
            per_shard: list[list[str]] = [[] for _ in range(shards)]
            for line in self._dump(index):
                doc_id = json.loads(line)["_id"]
                per_shard[zlib.crc32(doc_id.encode()) % shards].append(line)
            gens = list(entry["shard_generations"]) + [None] * max(0, shards - len(entry["shard_generations"]))
            for shard, lines in enumerate(per_shard):
                gens[shard] = self._snapshot_shard(repo, index_id, shard, gens[shard], name, snap_uuid, lines, start)
            entry["shard_generations"] = gens[:shards]
            entry["snapshots"].append(snap_uuid)
            settings = {k: v for k, v in described["settings"]["index"].items() if k not in _GENERATED_SETTINGS}
            meta = {"settings": settings, "mappings": described.get("mappings", {}),
                    "aliases": described.get("aliases", {}), "shards": shards}
            digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
            identifier = f"{described['settings']['index'].get('uuid', index)}-_na_-{digest}"
            blob = data["index_metadata_identifiers"].get(identifier)
            if blob is None:
                blob = data["index_metadata_identifiers"][identifier] = _blob_uuid()
                _write_atomic(repo.root / "indices" / index_id / f"meta-{blob}.dat",
                              _dat_bytes(meta, "index-metadata", repo.compress))
            lookup[index_id] = identifier
        end = max(_now_ms(), start + 1)
        info = {
            "snapshot": name, "uuid": snap_uuid, "version_id": VERSION_ID, "version": VERSION["number"],
            "indices": indices, "data_streams": [],
            "include_global_state": _truthy(body.get("include_global_state"), default=True),
            "metadata": body.get("metadata") or None,
            "state": "PARTIAL" if failed else "SUCCESS",
            "start_time": _iso_ms(start), "start_time_in_millis": start,
            "end_time": _iso_ms(end), "end_time_in_millis": end, "duration_in_millis": end - start,
            "failures": failures, "shards": {"total": total, "failed": failed, "successful": total - failed},
        }
        if info["metadata"] is None:
            del info["metadata"]
        _write_atomic(repo.root / f"meta-{snap_uuid}.dat", _dat_bytes({"meta-data": {}}, "metadata", repo.compress))
        _write_atomic(repo.root / f"snap-{snap_uuid}.dat", _dat_bytes(info, "snapshot", repo.compress))
        data["snapshots"].append({"name": name, "uuid": snap_uuid, "state": 3 if failed else 1,
                                  "index_metadata_lookup": lookup, "version": VERSION["number"],
                                  "start_time_millis": start, "end_time_millis": end})
        repo.write_data(data)
        return info

    def _snapshot_shard(self, repo: Repository, index_id: str, shard: int, old_gen: str | None, name: str,
                        snap_uuid: str, lines: list[str], start: int) -> str:
        """Write the shard's new segments (reusing the blobs of identical ones), its snap-<uuid>.dat and a new
        index-<generation>; returns the new generation."""
        folder = repo.shard_dir(index_id, shard)
        folder.mkdir(parents=True, exist_ok=True)
        previous = _read_dat(folder / f"index-{old_gen}") if old_gen else {"snapshots": {}, "files": []}
        known = {f["checksum"]: f for f in previous["files"]}
        lines.sort(key=lambda line: json.loads(line)["_id"])
        files = []
        for n in range(0, len(lines), SEGMENT_DOCS):
            payload = ("\n".join(lines[n:n + SEGMENT_DOCS]) + "\n").encode()
            checksum = hashlib.sha256(payload).hexdigest()
            record = known.get(checksum)
            if record is None:
                record = {"name": f"__{_blob_uuid()}", "physical_name": f"_{len(known) + len(files)}.cfs",
                          "length": len(payload), "checksum": checksum, "part_size": 1 << 40,
                          "docs": payload.count(b"\n")}
                _write_atomic(folder / record["name"], payload)
            files.append(record)
        shard_snap = {"name": name, "index_version": 1, "start_time": start, "time": max(_now_ms() - start, 1),
                      "number_of_files": len(files), "total_size": sum(f["length"] for f in files),
                      "files": files}
        return self._write_shard_gen(repo, folder, previous, name, snap_uuid, shard_snap, old_gen)

    def _write_shard_gen(self, repo: Repository, folder: Path, previous: dict[str, Any], name: str,
                         snap_uuid: str, shard_snap: dict[str, Any] | None, old_gen: str | None) -> str:
        snapshots = dict(previous["snapshots"])
        if shard_snap is not None:
            _write_atomic(folder / f"snap-{snap_uuid}.dat", _dat_bytes(shard_snap, "snapshot", repo.compress))
            snapshots[name] = {"files": [f["name"] for f in shard_snap["files"]], "uuid": snap_uuid}
        else:
            snapshots.pop(name, None)
        every = {f["name"]: f for f in previous["files"]}
        if shard_snap is not None:
            every.update({f["name"]: f for f in shard_snap["files"]})
        wanted = {n for s in snapshots.values() for n in s["files"]}
        new_gen = _blob_uuid()
        _write_atomic(folder / f"index-{new_gen}", _dat_bytes(
            {"snapshots": snapshots, "files": [every[n] for n in sorted(wanted)]}, "snapshots", repo.compress))
        if old_gen:
            (folder / f"index-{old_gen}").unlink(missing_ok=True)
        for blob in set(every) - wanted:  # blobs no remaining snapshot of the shard references
            (folder / blob).unlink(missing_ok=True)
        return new_gen

    def _dump(self, index: str) -> list[str]:
        """Every document read back with a scroll, one ndjson line each."""
        lines = []
        page = self.osmem.ok("POST", f"/{index}/_search?scroll=1m", {"size": SCROLL_SIZE, "sort": ["_doc"]})
        scroll_id = page.get("_scroll_id")
        try:
            while page["hits"]["hits"]:
                for hit in page["hits"]["hits"]:
                    doc = {"_id": hit["_id"], "_source": hit.get("_source", {})}
                    if hit.get("_routing") is not None:
                        doc["_routing"] = hit["_routing"]
                    lines.append(json.dumps(doc, sort_keys=True))
                page = self.osmem.ok("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": scroll_id})
                scroll_id = page.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self.osmem.call("DELETE", "/_search/scroll", {"scroll_id": scroll_id})
        return lines

    def delete_snapshot(self, repo_name: str, names: str) -> dict[str, Any]:
        repo = self._repo(repo_name)
        if repo.readonly:
            raise ApiError(500, "repository_exception", f"[{repo_name}] cannot delete snapshot from a readonly "
                           "repository")
        for name in _as_list(names):
            snap = repo.snapshot(name)
            if snap is None:
                raise ApiError(404, "snapshot_missing_exception", f"[{repo_name}:{name}] is missing")
            snap_uuid = snap["info"]["uuid"]
            data = repo.data()
            data["snapshots"] = [s for s in data["snapshots"] if s["uuid"] != snap_uuid]
            for index, entry in list(data["indices"].items()):
                if snap_uuid not in entry["snapshots"]:
                    continue
                entry["snapshots"].remove(snap_uuid)
                if not entry["snapshots"]:
                    shutil.rmtree(repo.root / "indices" / entry["id"], ignore_errors=True)
                    del data["indices"][index]
                    continue
                for shard, gen in enumerate(entry["shard_generations"]):
                    folder = repo.shard_dir(entry["id"], shard)
                    previous = _read_dat(folder / f"index-{gen}")
                    (folder / f"snap-{snap_uuid}.dat").unlink(missing_ok=True)
                    entry["shard_generations"][shard] = self._write_shard_gen(repo, folder, previous, name, snap_uuid,
                                                                                None, gen)
            used = {i for s in data["snapshots"] for i in s["index_metadata_lookup"].values()}
            for identifier, blob in list(data["index_metadata_identifiers"].items()):
                if identifier not in used:
                    del data["index_metadata_identifiers"][identifier]
                    for meta in (repo.root / "indices").glob(f"*/meta-{blob}.dat"):
                        meta.unlink(missing_ok=True)
            repo.write_data(data)
            (repo.root / f"snap-{snap_uuid}.dat").unlink(missing_ok=True)
            (repo.root / f"meta-{snap_uuid}.dat").unlink(missing_ok=True)
        return {"acknowledged": True}

    # --- restore --------------------------------------------------------------------
    def restore(self, repo_name: str, name: str, body: dict[str, Any], wait: bool) -> dict[str, Any]:
        repo = self._repo(repo_name)
        snap = repo.snapshot(name)
        if snap is None:
            raise ApiError(404, "snapshot_missing_exception", f"[{repo_name}:{name}] is missing")
        info = snap["info"]
        label = f"[{repo_name}:{name}/{info['uuid']}]"
        if info["state"] not in ("SUCCESS", "PARTIAL"):
            raise ApiError(500, "snapshot_restore_exception", f"{label} unsupported snapshot state "
                           f"[{info['state']}]")
        in_snapshot = {i: "open" for i in info["indices"]}
        indices = self._resolve_indices(body.get("indices"), in_snapshot, _truthy(body.get("ignore_unavailable")),
                                        what="snapshot")
        failed = {f["index"] for f in info.get("failures", [])}
        for index in indices:
            if index in failed and not _truthy(body.get("partial")):
                raise ApiError(500, "snapshot_restore_exception", f"{label} index [{index}] wasn't fully "
                               "snapshotted - cannot restore")
        targets = self._rename(indices, body, label)
        if not self.running.acquire(blocking=False):
            raise ApiError(503, "concurrent_snapshot_execution_exception",
                           f"{label} cannot restore while another snapshot or restore is running")
        try:
            states = self.osmem.index_states()
            for index, target in targets.items():
                if states.get(target) == "open":
                    raise ApiError(500, "snapshot_restore_exception", f"{label} cannot restore index [{target}] "
                                   "because an open index with same name already exists in the cluster. Either "
                                   "close or delete the existing index or restore the index under a different "
                                   "name by providing a rename pattern and replacement name")
                if target in states:
                    current = self.osmem.ok("GET", f"/{target}/_settings?expand_wildcards=all")[target]
                    have = int(current["settings"]["index"].get("number_of_shards", 1))
                    want = repo.index_meta(repo.data(), snap["entry"], index)["shards"]
                    if have != want:
                        raise ApiError(500, "snapshot_restore_exception", f"{label} cannot restore index "
                                       f"[{target}] with [{have}] shards from a snapshot of index [{index}] "
                                       f"with [{want}] shards")
            shards = 0
            for index, target in targets.items():
                shards += self._load(repo, snap, index, target, states, body)
        finally:
            self.running.release()
        result = {"snapshot": name, "indices": list(targets.values()),
                  "shards": {"total": shards, "failed": 0, "successful": shards}}
        return {"snapshot": result} if wait else {"accepted": True}

    def _rename(self, indices: list[str], body: dict[str, Any], label: str) -> dict[str, str]:
        pattern, replacement = body.get("rename_pattern"), body.get("rename_replacement")
        targets: dict[str, str] = {}
        for index in indices:
            target = index
            if pattern is not None and replacement is not None:
                try:
                    target = re.sub(str(pattern), _java_replacement(str(replacement)), index)
                except (re.error, IndexError) as exc:
                    raise ApiError(400, "illegal_argument_exception", f"bad rename pattern: {exc}") from None
            if target != target.lower() or _INVALID_NAME_CHARS & set(target) or target.startswith(("_", "-", "+")):
                raise ApiError(400, "invalid_index_name_exception", f"Invalid index name [{target}], must be "
                               "lowercase", index=target)
            if target in targets.values():
                raise ApiError(500, "snapshot_restore_exception", f"{label} indices [{index}] and another index "
                               f"are renamed into the same index [{target}]")
            targets[index] = target
        return targets

    def _load(self, repo: Repository, snap: dict[str, Any], index: str, target: str, states: dict[str, str],
              body: dict[str, Any]) -> int:
        label = f"[{repo.name}:{snap['info']['snapshot']}]"
        if index in self.fail_restores:
            raise ApiError(500, "snapshot_restore_exception", f"{label} index [{index}] restore failed on the "
                           "node (injected failure)")
        try:
            meta = repo.index_meta(repo.data(), snap["entry"], index)
        except (OSError, ValueError, KeyError) as exc:
            raise ApiError(500, "snapshot_restore_exception", f"{label} index [{index}] metadata is missing or "
                           f"corrupted in the repository: {exc}") from None
        segments: list[Path] = []
        for shard in range(int(meta["shards"])):  # read every shard's file list before touching the target
            folder = repo.shard_dir(meta["id"], shard)
            try:
                files = _read_dat(folder / f"snap-{snap['info']['uuid']}.dat")["files"]
            except (OSError, ValueError) as exc:
                raise ApiError(500, "snapshot_restore_exception", f"{label} index [{index}] shard [{shard}] "
                               f"snapshot file is missing or corrupted: {exc}") from None
            for record in files:
                blob = folder / record["name"]
                if not blob.is_file() or hashlib.sha256(blob.read_bytes()).hexdigest() != record["checksum"]:
                    raise ApiError(500, "snapshot_restore_exception", f"{label} index [{index}] shard [{shard}] "
                                   f"file {record['name']} is missing or fails its checksum (corrupted)")
                segments.append(blob)
        if target in states:
            self.osmem.ok("DELETE", f"/{target}")
        settings = dict(meta["settings"])
        for name in _as_list(body.get("ignore_index_settings")):  # spec: settings not taken from the snapshot
            settings = _without(settings, name.removeprefix("index.").split("."))
        settings.update({k.removeprefix("index."): v for k, v in (body.get("index_settings") or {}).items()})
        create: dict[str, Any] = {"settings": {"index": settings}, "mappings": meta["mappings"]}
        if _truthy(body.get("include_aliases"), default=True) and meta.get("aliases") and target == index:
            create["aliases"] = meta["aliases"]
        self.osmem.ok("PUT", f"/{target}", create)
        batch: list[str] = []
        for segment in segments:
            with open(segment, encoding="utf-8") as docs:
                for line in docs:
                    doc = json.loads(line)
                    action: dict[str, Any] = {"_index": target, "_id": doc["_id"]}
                    if "_routing" in doc:
                        action["routing"] = doc["_routing"]
                    batch += [json.dumps({"index": action}), json.dumps(doc["_source"])]
                    if len(batch) >= 2 * BULK_BATCH:
                        self._bulk(batch)
                        batch = []
        if batch:
            self._bulk(batch)
        self.osmem.ok("POST", f"/{target}/_refresh")
        return int(meta["shards"])

    def _bulk(self, lines: list[str]) -> None:
        result = self.osmem.ok("POST", "/_bulk", ndjson=("\n".join(lines) + "\n").encode())
        if result.get("errors"):
            bad = next(i for i in result["items"] if i["index"].get("error"))
            raise ApiError(500, "snapshot_restore_exception", f"restore failed: {bad['index']['error']}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None,
              raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        sent_type = False
        for key, value in headers or []:
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
                sent_type = sent_type or key.lower() == "content-type"
        if not sent_type:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        body = self._body()
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = [unquote(s) for s in parts.path.split("/") if s]
        try:
            if segments and segments[0] == "_snapshot":
                status, payload = self._snapshot(segments[1:], query, body)
                self._send(status, payload)
            elif segments and segments[0] == "_emulator":
                self._send(200, self._emulator(segments[1:], body))
            elif not segments and self.command in ("GET", "HEAD"):
                self._send(200, {"name": NODE_NAME, "cluster_name": "opensearch-emulator",
                                 "cluster_uuid": "emulator-cluster", "version": VERSION,
                                 "tagline": "The OpenSearch Project: https://opensearch.org/"})
            else:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS | {"host"}}
                status, resp_headers, data = self.server.service.osmem.raw(self.command, self.path, body or None,
                                                                           headers)
                self._send(status, None, resp_headers, raw=data)
        except ApiError as exc:
            self._send(exc.status, exc.body())
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, ApiError(400, "parse_exception", f"request could not be handled: {exc}").body())

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _snapshot(self, seg: list[str], query: dict[str, str], raw: bytes) -> tuple[int, Any]:
        svc = self.server.service
        body = json.loads(raw) if raw.strip() else {}
        wait = _truthy(query.get("wait_for_completion"))
        method = self.command
        if not seg or seg[0] == "_all":
            if method == "GET":
                return 200, svc.get_repositories(None)
        elif len(seg) == 1:
            if method in ("PUT", "POST"):
                return 200, svc.put_repository(seg[0], body, _truthy(query.get("verify"), default=True))
            if method == "GET":
                return 200, svc.get_repositories(seg[0])
            if method == "DELETE":
                return 200, svc.delete_repository(seg[0])
        elif len(seg) == 2 and seg[1] == "_verify" and method == "POST":
            return 200, svc.verify_repository(seg[0])
        elif len(seg) == 2:
            if method in ("PUT", "POST"):
                return 200, svc.create_snapshot(seg[0], seg[1], body, wait)
            if method == "GET":
                return 200, svc.get_snapshots(seg[0], seg[1], _truthy(query.get("ignore_unavailable")))
            if method == "DELETE":
                return 200, svc.delete_snapshot(seg[0], seg[1])
        elif len(seg) == 3 and seg[2] == "_restore" and method == "POST":
            return 200, svc.restore(seg[0], seg[1], body, wait)
        raise ApiError(405, "exception", f"Incorrect HTTP method for uri [{self.path}] and method [{method}]")

    def _emulator(self, seg: list[str], raw: bytes) -> Any:
        svc = self.server.service
        if seg == ["faults"] and self.command == "POST":
            body = json.loads(raw) if raw.strip() else {}
            svc.fail_shards = set(body.get("snapshot_shard_failures") or [])
            svc.fail_restores = set(body.get("restore_failures") or [])
            return {"acknowledged": True, "snapshot_shard_failures": sorted(svc.fail_shards),
                    "restore_failures": sorted(svc.fail_restores)}
        raise ApiError(404, "resource_not_found_exception", f"no emulator endpoint {self.path}")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: SnapshotService) -> None:
        self.service = service
        super().__init__(address, _Handler)


@dataclass
class OpenSearchEmulator:
    """A running emulator: proxy thread in this process, osmem-server as a child process."""

    url: str
    port: int
    osmem: OsmemServer
    server: _ProxyServer
    thread: threading.Thread
    data_dir: Path
    path_repo: list[Path]
    own_data_dir: bool

    @property
    def pid(self) -> int:
        """The osmem-server child process (the proxy runs in this process)."""
        return self.osmem.pid

    @classmethod
    def start(cls, port: int = 0, path_repo: list[Path] | None = None, data_dir: Path | None = None,
              host: str = "127.0.0.1") -> OpenSearchEmulator:
        own = data_dir is None
        data = Path(tempfile.mkdtemp(prefix="os-emulator-")) if data_dir is None else Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        roots = [Path(p) for p in (path_repo if path_repo is not None else [data / "repo"])]
        for root in roots:
            root.mkdir(parents=True, exist_ok=True)
        osmem = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
        backend = urlsplit(osmem.url)
        service = SnapshotService(Osmem(backend.hostname or "127.0.0.1", backend.port or 80), data, roots)
        try:
            server = _ProxyServer((host, port), service)
        except OSError:
            osmem.close()
            raise
        thread = threading.Thread(target=server.serve_forever, name="opensearch-emulator", daemon=True)
        thread.start()
        bound = server.server_address[1]
        return cls(f"http://{host}:{bound}", bound, osmem, server, thread, data, roots, own)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        if self.osmem.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.osmem.pid, signal.SIGTERM)
            self.osmem.close(grace=2)
        if self.own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> OpenSearchEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenSearch 2.13 emulator (osmem-server + snapshot API)")
    parser.add_argument("--port", type=int, default=19200)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--path-repo", action="append", default=None,
                        help="allowed fs repository roots, like path.repo (repeatable; default <data>/repo)")
    parser.add_argument("--data-dir", default=None, help="where s3-type repositories are kept (default: temp)")
    args = parser.parse_args(argv)
    emulator = OpenSearchEmulator.start(args.port, [Path(p) for p in args.path_repo] if args.path_repo else None,
                                        Path(args.data_dir) if args.data_dir else None, host=args.host)
    print(json.dumps({"url": emulator.url, "osmem_pid": emulator.pid,
                      "path_repo": [str(p) for p in emulator.path_repo]}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
