"""A Qdrant 1.12 REST emulator for tests: real HTTP, real state, real snapshot archives.

Implements the endpoints cb-backups and its tests use (collections with unnamed, named dense and
sparse vectors, HNSW/quantization config and payload indexes; points upsert/retrieve/delete/count/
scroll; collection snapshots: create, list, download, delete, multipart upload, recover from a
location; full-storage snapshots `/snapshots`; the aliases API; `POST|GET /locks`), with Qdrant's
response envelopes (`{"result": ..., "status": "ok", "time": ...}`) and error
bodies (`{"status": {"error": "..."}, "time": ...}`). Collection names resolve aliases for reads and
point operations, as Qdrant's do; deleting a collection deletes its aliases.

Full-storage snapshots are tars of `config.json` (`collections_mapping`: collection -> inner
snapshot file, `collections_aliases`: alias -> collection) plus one collection snapshot per
collection. As in Qdrant they are recovered only at start-up:
`--storage-snapshot FILE [--force-snapshot]` (without `--force-snapshot` an existing collection
of the same name stops the start).

Snapshots are uncompressed tar archives (as Qdrant's are) holding the
collection's config and points as JSON; their sha256 is reported as the
snapshot's `checksum` and stored beside it in `<name>.checksum`, as Qdrant does.
Recovering a snapshot replaces the collection's points with the archived ones.

`POST /locks {"write": true}` forbids point writes and collection creation through the API (403,
the lock's error message) until `{"write": false}`, as Qdrant 1.12 does; it answers the previous
options. Like Qdrant's, snapshot recovery is not a checked write (it runs under the lock), and the
lock is not persistent (a restart clears it).

Run standalone::

    python -m cb_backups_tests.emulators.qdrant --port 16333 [--api-key K] [--storage DIR]

or in-process: ``url = QdrantEmulator().start()`` ... ``emulator.stop()``.

With `storage` every change is written through to `<storage>/collections/`
(atomically) and loaded again at start, so the volume backup method can stop,
tar and restart it like a real server.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = "1.12.5"
COMMIT = "27260abd2c9c1c0e5ab4e8e2e3b1ae1d8e5b9a53"
TITLE = "qdrant - vector search engine"
PEER_ID = 3766212330831337
DISTANCES = ("Cosine", "Euclid", "Dot", "Manhattan")
OPEN_EXACT = ("/", "/healthz")  # Qdrant's api-key whitelist
OPEN_PREFIX = ("/readyz", "/livez")
HEALTH_BODIES = {"healthz": "healthz check passed", "livez": "healthz check passed", "readyz": "all shards are ready"}
CHUNK = 64 * 1024
FORMAT = "cb-qdrant-emulator-snapshot"
_NAME_RE = re.compile(r"^[^/\\\x00*<>:|?\"]{1,255}$")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found_collection(name: str) -> ApiError:
    return ApiError(404, f"Not found: Collection `{name}` doesn't exist!")


# --- collection state --------------------------------------------------------------


def point_key(raw: Any) -> int | str:
    """Qdrant ids: unsigned integers or UUIDs (normalised to the hyphenated lowercase form)."""
    if isinstance(raw, bool):
        raise ApiError(400, f"Format error in JSON body: invalid point id {raw!r}")
    if isinstance(raw, int) and raw >= 0:
        return raw
    if isinstance(raw, str):
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            pass
    raise ApiError(400, f"Format error in JSON body: value {raw!r} is not a valid point ID, "
                        "valid values are either an unsigned integer or a UUID")


def sort_key(key: int | str) -> tuple[int, int | str]:
    return (0, key) if isinstance(key, int) else (1, key)


def default_config(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": params,
        "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000,
                        "max_indexing_threads": 0, "on_disk": False},
        "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                             "default_segment_number": 0, "max_segment_size": None, "memmap_threshold": None,
                             "indexing_threshold": 20000, "flush_interval_sec": 5,
                             "max_optimization_threads": None},
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
        "quantization_config": None,
    }


def check_vector_params(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or "size" not in value or "distance" not in value:
        raise ApiError(400, f"Format error in JSON body: {where}: missing field `size` or `distance`")
    size, distance = value["size"], value["distance"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ApiError(422, f"Validation error in JSON body: [{where}.size: value {size} invalid, must be 1 or larger]")
    if distance not in DISTANCES:
        raise ApiError(400, f"Format error in JSON body: {where}.distance: unknown variant `{distance}`, "
                            f"expected one of {', '.join(f'`{d}`' for d in DISTANCES)}")
    return {k: v for k, v in value.items() if v is not None}


PAYLOAD_TYPES = ("keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid")


def check_sparse_params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Format error in JSON body: {where}: expected a map")
    modifier = value.get("modifier")
    if modifier is not None and modifier not in ("none", "idf"):
        raise ApiError(400, f"Format error in JSON body: {where}.modifier: unknown variant `{modifier}`, "
                            "expected `none` or `idf`")
    return {k: v for k, v in value.items() if v is not None}


def parse_sparse_config(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "Format error in JSON body: sparse_vectors: expected a map")
    return {name: check_sparse_params(v, f"sparse_vectors.{name}") for name, v in raw.items()}


def parse_field_schema(raw: Any) -> dict[str, Any]:
    """`field_schema` as a type name or params -> {"data_type", "params"?} (PayloadIndexInfo without points)."""
    if isinstance(raw, str) and raw in PAYLOAD_TYPES:
        return {"data_type": raw}
    if isinstance(raw, dict) and raw.get("type") in PAYLOAD_TYPES:
        return {"data_type": raw["type"], "params": dict(raw)}
    if raw is None:
        raise ApiError(400, "Bad request: field_schema is required to create a payload index")
    raise ApiError(400, f"Format error in JSON body: field_schema: unknown variant {json.dumps(raw)[:60]}, "
                        f"expected one of {', '.join(f'`{t}`' for t in PAYLOAD_TYPES)}")


def parse_vectors_config(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, dict) and "size" in raw:
        return check_vector_params(raw, "vectors")
    if isinstance(raw, dict):
        return {name: check_vector_params(v, f"vectors.{name}") for name, v in raw.items()}
    raise ApiError(400, "Format error in JSON body: vectors: expected a map")


def canonical_vectors(raw: Any) -> dict[str, Any]:
    """A stored point's vectors as {name: value}; the unnamed dense vector is named ""."""
    if raw is None:
        return {}
    return dict(raw) if isinstance(raw, dict) else {"": raw}


def output_vectors(vectors: dict[str, Any]) -> Any:
    """Qdrant's VectorStruct: a plain list for a point with only the unnamed vector, else a map."""
    if set(vectors) == {""}:
        return vectors[""]
    return dict(vectors)


class Collection:
    def __init__(self, config: dict[str, Any], payload_schema: dict[str, Any] | None = None) -> None:
        self.config = config
        self.points: dict[int | str, dict[str, Any]] = {}
        self.payload_schema: dict[str, dict[str, Any]] = dict(payload_schema or {})  # field -> data_type, params

    @property
    def vectors(self) -> dict[str, Any]:
        return self.config["params"].get("vectors") or {}

    @property
    def sparse(self) -> dict[str, Any]:
        return self.config["params"].get("sparse_vectors") or {}

    def check_vector(self, vector: Any) -> dict[str, Any]:
        """Validate a point's vectors against the config; returns them as {name: value}."""
        spec = self.vectors
        dense = {"": spec} if "size" in spec else spec
        given = canonical_vectors(vector)
        if not isinstance(vector, dict) and "" not in dense:
            if not dense:
                raise ApiError(400, "Wrong input: Not existing vector name error: ")
            raise ApiError(400, "Wrong input: Collection has named vectors; give a vector per name")
        checked: dict[str, Any] = {}
        for name, value in given.items():
            if name in dense:
                self._check_dims(value, dense[name]["size"], name)
                checked[name] = value
            elif name in self.sparse:
                checked[name] = self._check_sparse(value, name)
            else:
                raise ApiError(400, f"Wrong input: Not existing vector name error: {name}")
        return checked

    @staticmethod
    def _check_sparse(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("indices"), list) \
                or not isinstance(value.get("values"), list):
            raise ApiError(400, f"Format error in JSON body: sparse vector {name!r} must have `indices` and `values`")
        indices, values = value["indices"], value["values"]
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in indices) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ApiError(400, f"Format error in JSON body: sparse vector {name!r}: indices must be unsigned "
                                "integers and values numbers")
        if len(indices) != len(values):
            raise ApiError(422, f"Validation error in JSON body: [{name}: values and indices must be the same "
                                "length]")
        if len(set(indices)) != len(indices):
            raise ApiError(422, f"Validation error in JSON body: [{name}: indices must be unique]")
        pairs = sorted(zip(indices, values, strict=True))  # Qdrant keeps sparse vectors sorted by index
        return {"indices": [i for i, _ in pairs], "values": [v for _, v in pairs]}

    @staticmethod
    def _check_dims(vector: Any, size: int, name: str) -> None:
        if not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector):
            raise ApiError(400, f"Format error in JSON body: vector {name!r} must be a list of numbers")
        if len(vector) != size:
            raise ApiError(400, f"Wrong input: Vector dimension error: expected dim: {size}, got {len(vector)}")

    def info(self) -> dict[str, Any]:
        n = len(self.points)
        schema = {field: {**index, "points": sum(1 for p in self.points.values()
                                                 if payload_value(p["payload"], field) not in (None, []))}
                  for field, index in sorted(self.payload_schema.items())}
        return {
            "status": "green",
            "optimizer_status": "ok",
            "vectors_count": sum(len(p["vector"]) for p in self.points.values()),
            "indexed_vectors_count": 0,
            "points_count": n,
            "segments_count": 2,
            "config": self.config,
            "payload_schema": schema,
        }


# --- filters -------------------------------------------------------------------------


def payload_value(payload: dict[str, Any], key: str) -> Any:
    value: Any = payload
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def condition_matches(cond: dict[str, Any], key: int | str, point: dict[str, Any]) -> bool:
    if any(k in cond for k in ("must", "should", "must_not")):
        return filter_matches(cond, key, point)
    if "has_id" in cond:
        return key in {point_key(i) for i in cond["has_id"]}
    if "is_empty" in cond:
        value = payload_value(point["payload"], cond["is_empty"]["key"])
        return value is None or value == []
    field = cond.get("key")
    if not isinstance(field, str):
        raise ApiError(400, f"Bad request: unsupported filter condition {json.dumps(cond)[:80]}")
    value = payload_value(point["payload"], field)
    values = value if isinstance(value, list) else [value]
    if "match" in cond:
        match = cond["match"]
        if "value" in match:
            return match["value"] in values
        if "any" in match:
            return any(v in values for v in match["any"])
        if "except" in match:
            return not any(v in values for v in match["except"])
        raise ApiError(400, "Bad request: unsupported match condition")
    if "range" in cond:
        bounds = cond["range"]
        ops: dict[str, Callable[[float, float], bool]] = {
            "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return any(all(ops[op](v, b) for op, b in bounds.items() if b is not None and op in ops) for v in numbers)
    raise ApiError(400, f"Bad request: unsupported filter condition {json.dumps(cond)[:80]}")


def filter_matches(flt: dict[str, Any] | None, key: int | str, point: dict[str, Any]) -> bool:
    if not flt:
        return True

    def listed(name: str) -> list[dict[str, Any]]:
        value = flt.get(name) or []
        return value if isinstance(value, list) else [value]

    if not all(condition_matches(c, key, point) for c in listed("must")):
        return False
    should = listed("should")
    if should and not any(condition_matches(c, key, point) for c in should):
        return False
    return not any(condition_matches(c, key, point) for c in listed("must_not"))


def select_payload(payload: dict[str, Any], selector: Any) -> dict[str, Any] | None:
    if selector is None or selector is True:
        return payload
    if selector is False:
        return None
    if isinstance(selector, list):
        return {k: v for k, v in payload.items() if k in selector}
    if isinstance(selector, dict) and "include" in selector:
        return {k: v for k, v in payload.items() if k in selector["include"]}
    if isinstance(selector, dict) and "exclude" in selector:
        return {k: v for k, v in payload.items() if k not in selector["exclude"]}
    return payload


def select_vector(vectors: dict[str, Any], selector: Any) -> Any:
    if not selector:
        return None
    if isinstance(selector, list):
        return {k: v for k, v in vectors.items() if k in selector}
    return output_vectors(vectors)


def vector_selector(body: dict[str, Any]) -> Any:
    """`with_vector`, or its documented alias `with_vectors`."""
    return body.get("with_vector", body.get("with_vectors", False))


def record(key: int | str, point: dict[str, Any], with_payload: Any, with_vector: Any) -> dict[str, Any]:
    return {"id": key, "payload": select_payload(point["payload"], with_payload),
            "vector": select_vector(point["vector"], with_vector), "shard_key": None, "order_value": None}


# --- multipart ------------------------------------------------------------------------


def parse_multipart(chunks: Iterator[bytes], boundary: bytes,
                    sink: Callable[[str, str | None], Callable[[bytes], Any] | None]) -> None:
    """Stream a multipart/form-data body; `sink(field, filename)` returns a writer or None."""
    buf = bytearray()

    def fill() -> bool:
        try:
            buf.extend(next(chunks))
            return True
        except StopIteration:
            return False

    marker = b"--" + boundary
    while (start := buf.find(marker)) < 0:
        if not fill():
            raise ApiError(400, "Format error: multipart body has no boundary")
    del buf[: start + len(marker)]
    separator = b"\r\n" + marker
    while True:
        while len(buf) < 2:
            if not fill():
                raise ApiError(400, "Format error: truncated multipart body")
        if buf[:2] == b"--":
            break
        if buf[:2] != b"\r\n":
            raise ApiError(400, "Format error: malformed multipart boundary")
        del buf[:2]
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > 16384 or not fill():
                raise ApiError(400, "Format error: malformed multipart part headers")
        headers = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        disposition = next((line for line in headers.split("\r\n")
                            if line.lower().startswith("content-disposition:")), "")
        name_match = re.search(r'\bname="([^"]*)"', disposition)
        file_match = re.search(r'\bfilename="([^"]*)"', disposition)
        write = sink(name_match.group(1) if name_match else "", file_match.group(1) if file_match else None)
        while True:
            found = buf.find(separator)
            if found >= 0:
                if write:
                    write(bytes(buf[:found]))
                del buf[: found + len(separator)]
                break
            keep = len(separator) - 1
            if len(buf) > keep:
                if write:
                    write(bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
            if not fill():
                raise ApiError(400, "Format error: truncated multipart body")
    for _ in chunks:  # drain the epilogue
        pass


# --- the server state ---------------------------------------------------------------------


class QdrantState:
    """All collections and snapshots; one lock keeps every operation atomic."""

    def __init__(self, snapshots_dir: Path, storage_dir: Path | None = None,
                 storage_snapshot: Path | None = None, force_snapshot: bool = False) -> None:
        self.lock = threading.RLock()
        self.collections: dict[str, Collection] = {}
        self.aliases: dict[str, str] = {}  # alias -> collection
        self.snapshots_dir = snapshots_dir
        self.storage_dir = storage_dir
        self.operation_id = 0
        # test faults: "misreport_checksum" (describe a checksum that is not the file's),
        # "corrupt_download" (serve a snapshot with one byte flipped),
        # "forget_payload_indexes" (a recovered collection loses its payload indexes)
        self.faults: set[str] = set()
        self.locks: dict[str, Any] = {"write": False, "error_message": None}  # POST /locks; not persisted
        snapshots_dir.mkdir(parents=True, exist_ok=True)
        if storage_dir is not None:
            self._load()
        if storage_snapshot is not None:
            self.recover_storage(Path(storage_snapshot), force_snapshot)

    # persistence (only with a storage dir) -----------------------------------
    def _collection_dir(self, name: str) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir / "collections" / name

    def _load(self) -> None:
        assert self.storage_dir is not None
        aliases = self.storage_dir / "aliases.json"
        if aliases.is_file():
            self.aliases = dict(json.loads(aliases.read_text()))
        base = self.storage_dir / "collections"
        if not base.is_dir():
            return
        for folder in sorted(base.iterdir()):
            state_file = folder / "state.json"
            if not state_file.is_file():
                continue
            data = json.loads(state_file.read_text())
            self.collections[folder.name] = collection_from(data["config"], data["points"],
                                                            data.get("payload_schema"))

    def persist(self, name: str) -> None:
        if self.storage_dir is None:
            return
        folder = self._collection_dir(name)
        coll = self.collections.get(name)
        if coll is None:
            shutil.rmtree(folder, ignore_errors=True)
            self.persist_aliases()
            return
        folder.mkdir(parents=True, exist_ok=True)
        data = {"config": coll.config, "payload_schema": coll.payload_schema, "points": sorted_points(coll)}
        tmp = folder / ".state.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / "state.json")

    def persist_aliases(self) -> None:
        if self.storage_dir is None:
            return
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.storage_dir / ".aliases.json.tmp"
        tmp.write_text(json.dumps(self.aliases))
        os.replace(tmp, self.storage_dir / "aliases.json")

    # helpers --------------------------------------------------------------------
    def get(self, name: str) -> Collection:
        """A collection by name or alias."""
        coll = self.collections.get(name) or self.collections.get(self.aliases.get(name, ""))
        if coll is None:
            raise not_found_collection(name)
        return coll

    def drop(self, name: str) -> bool:
        """Delete a collection (by its own name) and every alias of it."""
        existed = self.collections.pop(name, None) is not None
        if existed:
            self.aliases = {a: c for a, c in self.aliases.items() if c != name}
        self.persist(name)
        return existed

    # aliases -----------------------------------------------------------------------
    def list_aliases(self, collection: str | None = None) -> list[dict[str, str]]:
        with self.lock:
            if collection is not None and collection not in self.collections:
                raise not_found_collection(collection)
            return [{"alias_name": a, "collection_name": c} for a, c in sorted(self.aliases.items())
                    if collection is None or c == collection]

    def change_aliases(self, actions: Any) -> None:
        """Apply every action or none (Qdrant's alias changes are atomic)."""
        if not isinstance(actions, list):
            raise ApiError(400, "Format error in JSON body: missing field `actions`")
        with self.lock:
            aliases = dict(self.aliases)
            for action in actions:
                kind = next(iter(action), None) if isinstance(action, dict) and len(action) == 1 else None
                args = action.get(kind) if kind else None
                if not isinstance(args, dict):
                    raise ApiError(400, "Format error in JSON body: actions: data did not match any variant of "
                                        "untagged enum AliasOperations")
                if kind == "create_alias":
                    alias, target = _text_arg(args, "alias_name"), _text_arg(args, "collection_name")
                    if target not in self.collections:
                        raise not_found_collection(target)
                    if alias in self.collections:
                        raise ApiError(409, f"Wrong input: Collection `{alias}` already exists!")
                    aliases[alias] = target
                elif kind == "delete_alias":
                    alias = _text_arg(args, "alias_name")
                    if aliases.pop(alias, None) is None:
                        raise ApiError(404, f"Not found: Alias {alias} does not exists!")
                elif kind == "rename_alias":
                    old, new = _text_arg(args, "old_alias_name"), _text_arg(args, "new_alias_name")
                    if old not in aliases:
                        raise ApiError(404, f"Not found: Alias {old} does not exists!")
                    aliases[new] = aliases.pop(old)
                else:
                    raise ApiError(400, "Format error in JSON body: actions: data did not match any variant of "
                                        "untagged enum AliasOperations")
            self.aliases = aliases
            self.persist_aliases()

    def next_operation(self) -> int:
        self.operation_id += 1
        return self.operation_id

    def collection_snapshots(self, name: str) -> Path:
        return self.snapshots_dir / name

    # snapshots -----------------------------------------------------------------------
    def create_snapshot(self, name: str) -> dict[str, Any]:
        with self.lock:
            coll = self.get(name)
            name = next(n for n, c in self.collections.items() if c is coll)  # an alias snapshots its collection
            frozen = _frozen(coll)
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        snap_name = f"{name}-{PEER_ID}-{now.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
        folder = self.collection_snapshots(name)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{snap_name}.{uuid.uuid4().hex[:8]}.tmp"
        write_collection_archive(tmp, name, *frozen, now)
        self._publish(tmp, folder / snap_name)
        return self.describe(name, snap_name)

    def create_full_snapshot(self) -> dict[str, Any]:
        """Every collection and the aliases, copied under one lock: one consistent moment."""
        with self.lock:
            frozen = {name: _frozen(coll) for name, coll in self.collections.items()}
            aliases = dict(self.aliases)
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        snap_name = f"full-snapshot-{now.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
        tmp = self.snapshots_dir / f".{snap_name}.{uuid.uuid4().hex[:8]}.tmp"
        with tempfile.TemporaryDirectory(dir=self.snapshots_dir, prefix=".full-") as work:
            mapping: dict[str, str] = {}
            for index, (name, parts) in enumerate(sorted(frozen.items())):
                inner = f"{name}-{PEER_ID}-{now.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
                mapping[name] = inner
                write_collection_archive(Path(work) / f"{index}.snapshot", name, *parts, now)
            config = {"collections_mapping": mapping, "collections_aliases": aliases}
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, "config.json", json.dumps(config, indent=2).encode())
                for index, name in enumerate(sorted(frozen)):
                    tar.add(Path(work) / f"{index}.snapshot", arcname=mapping[name])
        self._publish(tmp, self.snapshots_dir / snap_name)
        return self.describe_path(self.snapshots_dir / snap_name)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        digest = _sha256_path(tmp)
        os.replace(tmp, final)
        final.with_name(f"{final.name}.checksum").write_text(digest)

    def describe(self, collection: str, snap_name: str) -> dict[str, Any]:
        return self.describe_path(self.collection_snapshots(collection) / snap_name)

    def describe_path(self, path: Path) -> dict[str, Any]:
        snap_name = path.name
        stat = path.stat()
        checksum_file = path.with_name(f"{snap_name}.checksum")
        checksum = checksum_file.read_text().strip() if checksum_file.is_file() else _sha256_path(path)
        if "misreport_checksum" in self.faults:
            checksum = hashlib.sha256(checksum.encode()).hexdigest()
        created = datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None, microsecond=0)
        return {"name": snap_name, "creation_time": created.isoformat(), "size": stat.st_size, "checksum": checksum}

    def list_snapshots(self, collection: str | None) -> list[dict[str, Any]]:
        """A collection's snapshots, or (None) the full-storage ones."""
        if collection is not None:
            self.get(collection)
        folder = self.snapshots_dir if collection is None else self.collection_snapshots(collection)
        if not folder.is_dir():
            return []
        return [self.describe_path(p) for p in sorted(folder.iterdir())
                if p.suffix == ".snapshot" and not p.name.startswith(".") and p.is_file()]

    def snapshot_path(self, collection: str | None, snap_name: str) -> Path:
        if collection is not None:
            self.get(collection)
        folder = self.snapshots_dir if collection is None else self.collection_snapshots(collection)
        path = folder / snap_name
        if "/" in snap_name or snap_name.startswith(".") or not path.is_file():
            raise ApiError(404, f"Not found: Snapshot {snap_name} not found")
        return path

    def delete_snapshot(self, collection: str | None, snap_name: str) -> None:
        path = self.snapshot_path(collection, snap_name)
        path.unlink()
        path.with_name(f"{snap_name}.checksum").unlink(missing_ok=True)

    def recover(self, collection: str, archive: Path) -> None:
        """Replace (or create) `collection` from a snapshot archive; its aliases stay (they are not in it)."""
        coll = collection_from(*read_snapshot(archive))
        if "forget_payload_indexes" in self.faults:
            coll.payload_schema = {}
        with self.lock:
            self.collections[collection] = coll
            self.persist(collection)

    def recover_storage(self, archive: Path, force: bool) -> None:
        """Qdrant's `--storage-snapshot`: every collection of a full snapshot, and its aliases."""
        recovered: dict[str, Collection] = {}
        try:
            with tarfile.open(archive, "r:") as tar, tempfile.TemporaryDirectory() as work:
                config = json.load(_member(tar, "config.json"))
                for name, inner in config["collections_mapping"].items():
                    path = Path(work) / "inner.snapshot"
                    with open(path, "wb") as out:
                        shutil.copyfileobj(_member(tar, inner), out, CHUNK)
                    recovered[name] = collection_from(*read_snapshot(path))
                aliases = dict(config.get("collections_aliases") or {})
        except (tarfile.TarError, KeyError, ValueError, OSError, ApiError) as exc:
            raise SystemExit(f"qdrant emulator: storage snapshot {archive} is not readable: {exc}") from None
        with self.lock:
            existing = sorted(set(recovered) & set(self.collections))
            if existing and not force:
                raise SystemExit(f"qdrant emulator: collection {existing[0]} already exists; "
                                 "use --force-snapshot to overwrite it")
            for name, coll in recovered.items():
                self.collections[name] = coll
                self.persist(name)
            self.aliases = {**{a: c for a, c in self.aliases.items() if c not in recovered}, **aliases}
            self.persist_aliases()


def sorted_points(coll: Collection) -> list[dict[str, Any]]:
    return [{"id": k, **p} for k, p in sorted(coll.points.items(), key=lambda i: sort_key(i[0]))]


def _frozen(coll: Collection) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A deep copy of what a snapshot holds (taken under the state lock)."""
    config, schema = json.loads(json.dumps(coll.config)), json.loads(json.dumps(coll.payload_schema))
    return config, [json.loads(json.dumps(p)) for p in sorted_points(coll)], schema


def collection_from(config: dict[str, Any], points: list[dict[str, Any]],
                    payload_schema: dict[str, Any] | None) -> Collection:
    coll = Collection(config, payload_schema)
    for item in points:
        coll.points[point_key(item["id"])] = {"vector": canonical_vectors(item.get("vector")),
                                              "payload": item.get("payload") or {}}
    return coll


def write_collection_archive(path: Path, name: str, config: dict[str, Any], points: list[dict[str, Any]],
                             payload_schema: dict[str, Any], now: datetime) -> None:
    with tempfile.TemporaryFile(dir=path.parent) as body:
        for item in points:
            body.write(json.dumps(item, separators=(",", ":")).encode() + b"\n")
        points_size = body.tell()
        body.seek(0)
        meta = {"format": FORMAT, "format_version": 1, "collection": name, "points": len(points),
                "created": now.isoformat(), "qdrant_version": VERSION}
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "snapshot.json", json.dumps(meta, indent=2).encode())
            _add_bytes(tar, "config.json", json.dumps(config, indent=2).encode())
            _add_bytes(tar, "payload_index.json", json.dumps(payload_schema, indent=2).encode())
            info = tarfile.TarInfo("points.jsonl")
            info.size, info.mtime, info.mode = points_size, int(time.time()), 0o644
            tar.addfile(info, body)


def _text_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Format error in JSON body: missing field `{key}`")
    return value


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_snapshot(archive: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Read and validate an emulator snapshot; ApiError 400 when it is not one."""
    try:
        with tarfile.open(archive, "r:") as tar:
            names = tar.getnames()
            if not {"snapshot.json", "config.json", "points.jsonl"} <= set(names):
                raise ApiError(400, f"Wrong input: Snapshot is not a valid collection snapshot (members: {names[:5]})")
            meta = json.load(_member(tar, "snapshot.json"))
            if meta.get("format") != FORMAT:
                raise ApiError(400, "Wrong input: Snapshot format is not supported")
            config = json.load(_member(tar, "config.json"))
            schema = json.load(_member(tar, "payload_index.json")) if "payload_index.json" in names else {}
            points = [json.loads(line) for line in _member(tar, "points.jsonl") if line.strip()]
    except (tarfile.TarError, ValueError, OSError) as exc:
        raise ApiError(400, f"Wrong input: Snapshot is not a valid archive: {exc}") from None
    if len(points) != meta.get("points"):
        raise ApiError(400, "Wrong input: Snapshot is damaged: point count differs from its metadata")
    return config, points, schema


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    handle = tar.extractfile(name)
    if handle is None:
        raise ApiError(400, f"Wrong input: snapshot member {name} is not a file")
    return handle  # type: ignore[return-value]


# --- HTTP ---------------------------------------------------------------------------------------


def _envelope(result: Any, started: float) -> dict[str, Any]:
    return {"result": result, "status": "ok", "time": round(time.perf_counter() - started, 6)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qdrant-emulator"
    sys_version = ""
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # plumbing ------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self.started = time.perf_counter()
        self.body_read = False
        parts = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rstrip("/") or "/"
        try:
            if not self._authorized(path):
                return
            route = self._route(method, [unquote(p) for p in path.split("/")[1:] if p] if path != "/" else [])
            if route is None:
                self._drain()
                self._send_raw(404, b"", "text/plain")
                return
            route()
        except ApiError as exc:
            self._drain()
            self._send_json(exc.status, {"status": {"error": exc.message},
                                         "time": round(time.perf_counter() - self.started, 6)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            self._drain()
            self._send_json(500, {"status": {"error": f"Service internal error: {exc}"},
                                  "time": round(time.perf_counter() - self.started, 6)})

    def _authorized(self, path: str) -> bool:
        key = self.server.api_key
        if not key or path in OPEN_EXACT or path.startswith(OPEN_PREFIX):
            return True
        given = self.headers.get("api-key")
        auth = self.headers.get("authorization", "")
        if given is None and auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        if given == key:
            return True
        message = ("Must provide an API key or an Authorization bearer token" if given is None
                   else "Invalid API key or JWT")
        self.close_connection = True
        self._send_raw(401, message.encode(), "text/plain; charset=utf-8", close=True)
        return False

    def _route(self, method: str, seg: list[str]) -> Callable[[], None] | None:
        n = len(seg)
        if n == 0 and method == "GET":
            return lambda: self._send_json(200, {"title": TITLE, "version": VERSION, "commit": COMMIT})
        if n == 1 and seg[0] in HEALTH_BODIES and method == "GET":
            return lambda: self._send_raw(200, HEALTH_BODIES[seg[0]].encode(), "text/plain; charset=utf-8")
        if seg == ["locks"] and method in ("GET", "POST"):
            return self._get_locks if method == "GET" else self._set_locks
        if seg == ["cluster"] and method == "GET":  # a single node: distributed mode is off
            return lambda: self._ok({"status": "disabled"})
        if seg == ["aliases"] and method == "GET":
            return lambda: self._ok({"aliases": self.state.list_aliases()})
        if seg and seg[0] == "snapshots":
            return self._full_snapshot_route(method, seg[1:])
        if not seg or seg[0] != "collections":
            return None
        if n == 1 and method == "GET":
            return self._list_collections
        if seg == ["collections", "aliases"] and method == "POST":
            return self._change_aliases
        if n < 2:
            return None
        name = seg[1]
        rest = tuple(seg[2:])
        table: dict[tuple[str, tuple[str, ...]], Callable[[str], None]] = {
            ("GET", ()): self._get_collection,
            ("PUT", ()): self._create_collection,
            ("DELETE", ()): self._delete_collection,
            ("GET", ("exists",)): self._exists,
            ("PUT", ("points",)): self._upsert,
            ("POST", ("points",)): self._retrieve,
            ("POST", ("points", "delete")): self._delete_points,
            ("POST", ("points", "count")): self._count,
            ("POST", ("points", "scroll")): self._scroll,
            ("GET", ("snapshots",)): self._list_snapshots,
            ("POST", ("snapshots",)): self._create_snapshot,
            ("POST", ("snapshots", "upload")): self._upload_snapshot,
            ("PUT", ("snapshots", "recover")): self._recover_snapshot,
            ("GET", ("aliases",)): lambda c: self._ok({"aliases": self.state.list_aliases(c)}),
            ("PUT", ("index",)): self._create_index,
        }
        handler = table.get((method, rest))
        if handler is not None:
            return lambda: handler(name)
        if len(rest) == 2 and rest[0] == "snapshots" and method in ("GET", "DELETE"):
            if method == "GET":
                return lambda: self._download_snapshot(name, rest[1])
            return lambda: self._delete_snapshot(name, rest[1])
        if len(rest) == 2 and rest[0] == "points" and method == "GET":
            return lambda: self._get_point(name, rest[1])
        if len(rest) == 2 and rest[0] == "index" and method == "DELETE":
            return lambda: self._delete_index(name, rest[1])
        return None

    def _full_snapshot_route(self, method: str, rest: list[str]) -> Callable[[], None] | None:
        if not rest and method == "GET":
            return lambda: self._ok(self.state.list_snapshots(None))
        if not rest and method == "POST":
            return self._create_full_snapshot
        if len(rest) == 1 and method == "GET":
            return lambda: self._download_snapshot(None, rest[0])
        if len(rest) == 1 and method == "DELETE":
            return lambda: self._delete_snapshot(None, rest[0])
        return None

    def _body_chunks(self) -> Iterator[bytes]:
        self.body_read = True
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self.rfile.readline(1024).strip().split(b";")[0]
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    block = self.rfile.read(min(CHUNK, remaining))
                    if not block:
                        raise ApiError(400, "Format error: truncated chunked body")
                    remaining -= len(block)
                    yield block
                self.rfile.readline(8)
        remaining = int(self.headers.get("content-length") or 0)
        while remaining > 0:
            block = self.rfile.read(min(CHUNK, remaining))
            if not block:
                raise ApiError(400, "Format error: truncated body")
            remaining -= len(block)
            yield block

    def _drain(self) -> None:
        if not self.body_read:
            try:
                for _ in self._body_chunks():
                    pass
            except (ApiError, ValueError, OSError):
                self.close_connection = True

    def _json_body(self, required: bool = False) -> dict[str, Any]:
        raw = b"".join(self._body_chunks())
        if not raw.strip():
            if required:
                raise ApiError(400, "Json deserialize error: EOF while parsing a value at line 1 column 0")
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Format error in JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Format error in JSON body: expected a JSON object")
        return body

    def _send_raw(self, status: int, data: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        if close:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _ok(self, result: Any) -> None:
        self._drain()
        self._send_json(200, _envelope(result, self.started))

    def _accepted(self) -> None:
        self._send_json(202, {"status": "accepted", "time": round(time.perf_counter() - self.started, 6)})

    @property
    def state(self) -> QdrantState:
        return self.server.state

    def _flag(self, name: str, default: bool) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        if value not in ("true", "false"):
            raise ApiError(400, f"Query deserialize error: {name}: provided string was not `true` or `false`")
        return value == "true"

    # locks --------------------------------------------------------------------------
    def _get_locks(self) -> None:
        with self.state.lock:
            self._ok(dict(self.state.locks))

    def _set_locks(self) -> None:
        body = self._json_body(required=True)
        if not isinstance(body.get("write"), bool):
            raise ApiError(400, "Json deserialize error: missing field `write`")
        message = body.get("error_message")
        with self.state.lock:
            previous = dict(self.state.locks)
            self.state.locks = {"write": body["write"], "error_message": message if isinstance(message, str) else None}
        self._ok(previous)

    def _check_write_lock(self) -> None:
        """Qdrant's `check_write_lock`: a write while locked is refused with the lock's message."""
        with self.state.lock:
            if self.state.locks["write"]:
                raise ApiError(403, self.state.locks["error_message"] or "Write operations are forbidden")

    # collections ------------------------------------------------------------------
    def _list_collections(self) -> None:
        with self.state.lock:
            names = list(self.state.collections)
        self._ok({"collections": [{"name": n} for n in names]})

    def _get_collection(self, name: str) -> None:
        with self.state.lock:
            info = json.loads(json.dumps(self.state.get(name).info()))
        self._ok(info)

    def _exists(self, name: str) -> None:
        self._ok({"exists": name in self.state.collections})

    def _create_collection(self, name: str) -> None:
        body = self._json_body(required=True)
        self._check_write_lock()
        if not _NAME_RE.match(name):
            raise ApiError(422, f"Validation error in path parameters: [name: collection name {name!r} "
                                "contains forbidden characters]")
        vectors = parse_vectors_config(body.get("vectors"))
        params = {"vectors": vectors, "shard_number": body.get("shard_number") or 1,
                  "replication_factor": body.get("replication_factor") or 1,
                  "write_consistency_factor": body.get("write_consistency_factor") or 1,
                  "on_disk_payload": True if body.get("on_disk_payload") is None else body["on_disk_payload"]}
        if body.get("sparse_vectors"):
            params["sparse_vectors"] = parse_sparse_config(body["sparse_vectors"])
        config = default_config(params)
        for section in ("hnsw_config", "optimizers_config", "wal_config"):
            given = body.get(section)
            if given is not None and not isinstance(given, dict):
                raise ApiError(400, f"Format error in JSON body: {section}: expected a map")
            key = "optimizer_config" if section == "optimizers_config" else section
            config[key].update({k: v for k, v in (given or {}).items() if v is not None})
        if body.get("quantization_config") is not None:
            config["quantization_config"] = body["quantization_config"]
        with self.state.lock:
            if name in self.state.collections or name in self.state.aliases:
                raise ApiError(409, f"Wrong input: Collection `{name}` already exists!")
            self.state.collections[name] = Collection(config)
            self.state.persist(name)
        self._ok(True)

    def _delete_collection(self, name: str) -> None:
        with self.state.lock:
            existed = self.state.drop(name)
        self._ok(existed)

    def _change_aliases(self) -> None:
        body = self._json_body(required=True)
        self.state.change_aliases(body.get("actions"))
        self._ok(True)

    # payload indexes -------------------------------------------------------------------
    def _create_index(self, name: str) -> None:
        body = self._json_body(required=True)
        wait = self._flag("wait", False)
        field = body.get("field_name")
        if not isinstance(field, str) or not field:
            raise ApiError(400, "Format error in JSON body: missing field `field_name`")
        index = parse_field_schema(body.get("field_schema"))
        with self.state.lock:
            self._check_write_lock()  # a payload index change is a collection update, as in Qdrant
            coll = self.state.get(name)
            coll.payload_schema[field] = index
            op = self.state.next_operation()
            self.state.persist(self._own_name(coll))
        self._ok({"operation_id": op, "status": "completed" if wait else "acknowledged"})

    def _delete_index(self, name: str, field: str) -> None:
        wait = self._flag("wait", False)
        with self.state.lock:
            self._check_write_lock()
            coll = self.state.get(name)
            coll.payload_schema.pop(field, None)
            op = self.state.next_operation()
            self.state.persist(self._own_name(coll))
        self._ok({"operation_id": op, "status": "completed" if wait else "acknowledged"})

    def _own_name(self, coll: Collection) -> str:
        return next(n for n, c in self.state.collections.items() if c is coll)

    # points ----------------------------------------------------------------------------
    def _upsert(self, name: str) -> None:
        body = self._json_body(required=True)
        wait = self._flag("wait", False)
        with self.state.lock:
            self._check_write_lock()  # under the state lock: checked and applied at once
            coll = self.state.get(name)
            incoming: list[tuple[int | str, Any, dict[str, Any]]] = []
            if "points" in body:
                if not isinstance(body["points"], list):
                    raise ApiError(400, "Format error in JSON body: points: expected a sequence")
                for item in body["points"]:
                    incoming.append((point_key(item.get("id")), item.get("vector"), item.get("payload") or {}))
            elif "batch" in body:
                batch = body["batch"]
                ids, vectors = batch.get("ids") or [], batch.get("vectors")
                payloads = batch.get("payloads") or [None] * len(ids)
                if isinstance(vectors, dict):
                    vectors = [{k: v[i] for k, v in vectors.items()} for i in range(len(ids))]
                if vectors is None or len(vectors) != len(ids) or len(payloads) != len(ids):
                    raise ApiError(400, "Wrong input: batch ids, vectors and payloads differ in length")
                incoming = [(point_key(i), v, p or {}) for i, v, p in zip(ids, vectors, payloads, strict=True)]
            else:
                raise ApiError(400, "Format error in JSON body: data did not match any variant of "
                                    "untagged enum PointInsertOperations")
            checked = [(k, coll.check_vector(v), p) for k, v, p in incoming]
            for key, vector, payload in checked:
                coll.points[key] = {"vector": vector, "payload": payload}
            op = self.state.next_operation()
            self.state.persist(self._own_name(coll))
        self._ok({"operation_id": op, "status": "completed" if wait else "acknowledged"})

    def _delete_points(self, name: str) -> None:
        body = self._json_body(required=True)
        wait = self._flag("wait", False)
        with self.state.lock:
            self._check_write_lock()  # under the state lock: checked and applied at once
            coll = self.state.get(name)
            if "points" in body:
                for raw in body["points"]:
                    coll.points.pop(point_key(raw), None)
            elif "filter" in body:
                for key in [k for k, p in coll.points.items() if filter_matches(body["filter"], k, p)]:
                    del coll.points[key]
            else:
                raise ApiError(400, "Format error in JSON body: expected `points` or `filter`")
            op = self.state.next_operation()
            self.state.persist(self._own_name(coll))
        self._ok({"operation_id": op, "status": "completed" if wait else "acknowledged"})

    def _retrieve(self, name: str) -> None:
        body = self._json_body(required=True)
        with self.state.lock:
            coll = self.state.get(name)
            found = []
            for raw in body.get("ids") or []:
                key = point_key(raw)
                if key in coll.points:
                    found.append(record(key, coll.points[key], body.get("with_payload", True),
                                        vector_selector(body)))
        self._ok(found)

    def _get_point(self, name: str, raw_id: str) -> None:
        key = point_key(int(raw_id) if raw_id.isdigit() else raw_id)
        with self.state.lock:
            coll = self.state.get(name)
            if key not in coll.points:
                raise ApiError(404, f"Not found: No point with id {raw_id} found")
            found = record(key, coll.points[key], True, True)
        self._ok(found)

    def _count(self, name: str) -> None:
        body = self._json_body()
        with self.state.lock:
            coll = self.state.get(name)
            count = sum(1 for k, p in coll.points.items() if filter_matches(body.get("filter"), k, p))
        self._ok({"count": count})

    def _scroll(self, name: str) -> None:
        body = self._json_body()
        limit = body.get("limit") or 10
        if not isinstance(limit, int) or limit < 1:
            raise ApiError(422, f"Validation error in JSON body: [limit: value {limit} invalid, must be 1 or larger]")
        offset = body.get("offset")
        start = sort_key(point_key(offset)) if offset is not None else None
        with self.state.lock:
            coll = self.state.get(name)
            keys = sorted((k for k, p in coll.points.items() if filter_matches(body.get("filter"), k, p)),
                          key=sort_key)
            if start is not None:
                keys = [k for k in keys if sort_key(k) >= start]
            page = keys[:limit]
            points = [record(k, coll.points[k], body.get("with_payload", True), vector_selector(body))
                      for k in page]
            next_offset = keys[limit] if len(keys) > limit else None
        self._ok({"points": points, "next_page_offset": next_offset})

    # snapshots -------------------------------------------------------------------------------
    def _list_snapshots(self, name: str) -> None:
        self._ok(self.state.list_snapshots(name))

    def _create_snapshot(self, name: str) -> None:
        self._drain()
        wait = self._flag("wait", True)
        description = self.state.create_snapshot(name)
        if not wait:
            self._accepted()
            return
        self._ok(description)

    def _create_full_snapshot(self) -> None:
        self._drain()
        wait = self._flag("wait", True)
        description = self.state.create_full_snapshot()
        if not wait:
            self._accepted()
            return
        self._ok(description)

    def _download_snapshot(self, name: str | None, snap_name: str) -> None:
        self._drain()
        path = self.state.snapshot_path(name, snap_name)
        size = path.stat().st_size
        corrupt = "corrupt_download" in self.state.faults
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-disposition", f'attachment; filename="{snap_name}"')
        self.send_header("content-length", str(size))
        self.end_headers()
        with open(path, "rb") as fh:
            first = True
            while block := fh.read(CHUNK):
                if corrupt and first and len(block) > 600:
                    block = block[:600] + bytes([block[600] ^ 0xFF]) + block[601:]
                first = False
                self.wfile.write(block)

    def _delete_snapshot(self, name: str | None, snap_name: str) -> None:
        self._drain()
        wait = self._flag("wait", True)
        self.state.delete_snapshot(name, snap_name)
        if not wait:
            self._accepted()
            return
        self._ok(True)

    def _priority(self, value: Any) -> None:
        if value is not None and value not in ("no_sync", "snapshot", "replica"):
            raise ApiError(400, f"Query deserialize error: unknown variant `{value}`, "
                                "expected one of `no_sync`, `snapshot`, `replica`")

    def _upload_snapshot(self, name: str) -> None:
        self._priority(self.query.get("priority"))
        wait = self._flag("wait", True)
        expected = self.query.get("checksum")
        content_type = self.headers.get("content-type", "")
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        if not content_type.startswith("multipart/form-data") or not match:
            raise ApiError(400, "Content type error: expected multipart/form-data with a boundary")
        folder = self.state.snapshots_dir / ".uploads"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{uuid.uuid4().hex}.snapshot"
        digest = hashlib.sha256()
        got_file = False
        try:
            with open(tmp, "wb") as out:
                def sink(field: str, filename: str | None) -> Callable[[bytes], Any] | None:
                    nonlocal got_file
                    if field != "snapshot":
                        return None
                    got_file = True

                    def write(data: bytes) -> None:
                        digest.update(data)
                        out.write(data)
                    return write
                parse_multipart(self._body_chunks(), match.group(1).encode(), sink)
            if not got_file:
                raise ApiError(400, "Bad request: Multipart form has no `snapshot` file field")
            actual = digest.hexdigest()
            if expected is not None and expected.lower() != actual:
                raise ApiError(400, f"Checksum mismatch: expected {expected}, actual {actual}")
            self.state.recover(name, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        if not wait:
            self._accepted()
            return
        self._ok(True)

    def _recover_snapshot(self, name: str) -> None:
        body = self._json_body(required=True)
        wait = self._flag("wait", True)
        location = body.get("location")
        if not isinstance(location, str):
            raise ApiError(400, "Format error in JSON body: missing field `location`")
        self._priority(body.get("priority"))
        parts = urlsplit(location)
        fetched: Path | None = None
        try:
            if parts.scheme == "file":
                path = Path(unquote(parts.path)).resolve()
                if not path.is_relative_to(self.state.snapshots_dir.resolve()):
                    raise ApiError(400, f"Bad request: Snapshot file \"{path}\" must be inside the snapshots "
                                        "directory")
                if not path.is_file():
                    raise ApiError(404, f"Not found: Snapshot file {path} does not exist")
                archive = path
            elif parts.scheme in ("http", "https"):
                fetched = self.state.snapshots_dir / ".uploads" / f"{uuid.uuid4().hex}.snapshot"
                fetched.parent.mkdir(parents=True, exist_ok=True)
                request = urllib.request.Request(location)
                if body.get("api_key"):
                    request.add_header("api-key", body["api_key"])
                try:
                    with urllib.request.urlopen(request, timeout=60) as resp, open(fetched, "wb") as out:
                        shutil.copyfileobj(resp, out, CHUNK)
                except OSError as exc:
                    raise ApiError(500, f"Service internal error: Failed to download snapshot: {exc}") from None
                archive = fetched
            else:
                raise ApiError(400, f"Bad request: Unsupported snapshot location scheme: {parts.scheme}")
            if body.get("checksum"):
                actual = _sha256_path(archive)
                if body["checksum"].lower() != actual:
                    raise ApiError(400, f"Checksum mismatch: expected {body['checksum']}, actual {actual}")
            self.state.recover(name, archive)
        finally:
            if fetched is not None:
                fetched.unlink(missing_ok=True)
        if not wait:
            self._accepted()
            return
        self._ok(True)


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: QdrantState, api_key: str | None, verbose: bool) -> None:
        super().__init__(address, Handler)
        self.state = state
        self.api_key = api_key
        self.verbose = verbose


class QdrantEmulator:
    """Start/stop the emulator in-process on a free loopback port."""

    def __init__(self, api_key: str | None = None, storage_dir: Path | None = None,
                 snapshots_dir: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False, storage_snapshot: Path | None = None, force_snapshot: bool = False) -> None:
        self._tmp = None
        if snapshots_dir is None:
            if storage_dir is not None:
                snapshots_dir = Path(storage_dir) / "snapshots"
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="qdrant-emulator-")
                snapshots_dir = Path(self._tmp.name) / "snapshots"
        self.state = QdrantState(Path(snapshots_dir), Path(storage_dir) if storage_dir else None,
                                 storage_snapshot, force_snapshot)
        self.api_key = api_key
        self.host, self.port, self.verbose = host, port, verbose
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def faults(self) -> set[str]:
        return self.state.faults

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> str:
        self._server = EmulatorHTTPServer((self.host, self.port), self.state, self.api_key, self.verbose)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="qdrant-emulator",
                                        daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> QdrantEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Qdrant 1.12 REST emulator (tests only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=16333)
    parser.add_argument("--api-key", default=os.environ.get("QDRANT__SERVICE__API_KEY"))
    parser.add_argument("--storage", type=Path, help="persist collections here (write-through)")
    parser.add_argument("--snapshots", type=Path, help="snapshot folder (default: <storage>/snapshots or a temp dir)")
    parser.add_argument("--storage-snapshot", type=Path, help="recover this full-storage snapshot at start-up")
    parser.add_argument("--force-snapshot", action="store_true", help="let the recovery overwrite collections")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    emulator = QdrantEmulator(api_key=args.api_key, storage_dir=args.storage, snapshots_dir=args.snapshots,
                              host=args.host, port=args.port, verbose=args.verbose,
                              storage_snapshot=args.storage_snapshot, force_snapshot=args.force_snapshot)
    url = emulator.start()
    print(f"qdrant emulator {VERSION} listening on {url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.1):
        pass
    emulator.stop()


if __name__ == "__main__":
    main()
