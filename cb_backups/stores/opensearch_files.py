"""Which files of an OpenSearch fs snapshot repository one snapshot needs (read from the files themselves).

The layout is BlobStoreRepository's (OpenSearch `org.opensearch.repositories.blobstore` package docs):
the newest `index-N` (RepositoryData, JSON) names the snapshot, its indices' repository ids, their
shard generations and metadata blob ids. A snapshot then needs:

    snap-<uuid>.dat, meta-<uuid>.dat                       (root: SnapshotInfo, global metadata)
    indices/<id>/meta-<blob>.dat                           (each index's metadata)
    indices/<id>/<shard>/snap-<uuid>.dat                   (the shard's file list in this snapshot)
    indices/<id>/<shard>/__<blob>[.partN]                  (every data blob that list names)

These never change once written and are shared by later snapshots. The GENERATION files -- `index-N`,
`index.latest`, `indices/<id>/<shard>/index-<gen>` -- are replaced by the next snapshot or deletion, so
the backup keeps its own copy of them (GENERATIONS_FILE), which is what a restore from off-site needs.

The shard's snap-<uuid>.dat is SMILE (JSON in the emulator) inside a Lucene codec header, deflated when
the repository compresses. Blob names (`__` + a base64 UUID) are kept verbatim in both encodings, so they
are read by scanning the inflated body, without a SMILE decoder.
"""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import FileRecord

GENERATIONS_FILE = "repository_generations.tar.gz"
_DEFLATE = b"DFL\x00"  # OpenSearch's DeflateCompressor header
_BLOB_NAME = re.compile(rb"(?<![A-Za-z0-9_-])__[A-Za-z0-9_-]+")


class RepositoryFilesError(Exception):
    """The repository's files do not describe the snapshot (missing or unreadable)."""


class Tree(Protocol):
    """A repository's files, on disk or in a bucket: names in a folder, reading a (small) file."""

    def names(self, folder: str) -> list[str]: ...

    def read(self, path: str) -> bytes: ...


class FsTree:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self, folder: str) -> list[str]:
        where = self.root / folder if folder else self.root
        return [p.name for p in where.iterdir() if p.is_file()] if where.is_dir() else []

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


@dataclass(frozen=True)
class SnapshotFiles:
    generation: int
    generations: list[str]  # replaced by later snapshots: copied into the backup
    blobs: list[str]  # immutable: listed with size and sha256


def _inflated(data: bytes) -> bytes:
    at = data.find(_DEFLATE, 0, 128)  # after the codec header, when compressed
    if at < 0:
        return data
    return zlib.decompressobj(-15).decompress(data[at + len(_DEFLATE):])  # the footer is left unused


def latest_generation(tree: Tree) -> int:
    """N of the newest index-N (listing, as OpenSearch does), else index.latest; -1 for an empty repository."""
    top = tree.names("")
    found = [int(n[6:]) for n in top if n.startswith("index-") and n[6:].isdigit()]
    if found:
        return max(found)
    return int.from_bytes(tree.read("index.latest")[:8], "big", signed=True) if "index.latest" in top else -1


def repository_data(tree: Tree, generation: int) -> dict[str, Any]:
    try:
        return json.loads(_inflated(tree.read(f"index-{generation}")))
    except (OSError, ValueError) as exc:
        raise RepositoryFilesError(f"index-{generation} cannot be read: {exc}") from None


def referenced_blobs(tree: Tree, shard_snapshot: str) -> list[str]:
    """The data blob names a shard's snap-<uuid>.dat lists."""
    try:
        body = _inflated(tree.read(shard_snapshot))
    except (OSError, zlib.error) as exc:
        raise RepositoryFilesError(f"{shard_snapshot} cannot be read: {exc}") from None
    return sorted({m.decode() for m in _BLOB_NAME.findall(body)})


def list_snapshot_files(root: Path | Tree, snap_uuid: str) -> SnapshotFiles:
    tree = FsTree(root) if isinstance(root, Path) else root
    listed: dict[str, set[str]] = {}

    def is_file(path: str) -> bool:
        folder, _, name = path.rpartition("/")
        if folder not in listed:
            listed[folder] = set(tree.names(folder))
        return name in listed[folder]

    generation = latest_generation(tree)
    if generation < 0:
        raise RepositoryFilesError("the repository has no index-N file")
    data = repository_data(tree, generation)
    entry = next((s for s in data.get("snapshots", []) if s.get("uuid") == snap_uuid), None)
    if entry is None:
        raise RepositoryFilesError(f"index-{generation} does not list snapshot {snap_uuid}")
    generations = [f"index-{generation}"] + (["index.latest"] if is_file("index.latest") else [])
    blobs = [f"snap-{snap_uuid}.dat"] + ([f"meta-{snap_uuid}.dat"] if is_file(f"meta-{snap_uuid}.dat") else [])
    lookup = entry.get("index_metadata_lookup") or {}
    identifiers = data.get("index_metadata_identifiers") or {}
    for index in data.get("indices", {}).values():
        if snap_uuid not in index.get("snapshots", []):
            continue
        folder = f"indices/{index['id']}"
        meta_blob = identifiers.get(lookup.get(index["id"], ""), snap_uuid)  # older repositories: meta-<uuid>
        blobs.append(f"{folder}/meta-{meta_blob}.dat")
        for shard, gen in enumerate(index.get("shard_generations", [])):
            shard_dir = f"{folder}/{shard}"
            if gen and is_file(f"{shard_dir}/index-{gen}"):
                generations.append(f"{shard_dir}/index-{gen}")
            snap = f"{shard_dir}/snap-{snap_uuid}.dat"
            blobs.append(snap)
            for name in referenced_blobs(tree, snap):
                if is_file(f"{shard_dir}/{name}"):
                    blobs.append(f"{shard_dir}/{name}")
                    continue
                is_file(f"{shard_dir}/x")  # lists the folder
                parts = sorted((n for n in listed[shard_dir] if n.startswith(f"{name}.part")
                                and n.rsplit("part", 1)[1].isdigit()), key=lambda n: int(n.rsplit("part", 1)[1]))
                if not parts:
                    raise RepositoryFilesError(f"{snap} names blob {name}, which is not in {shard_dir}")
                blobs += [f"{shard_dir}/{n}" for n in parts]
    missing = [b for b in blobs if not is_file(b)]
    if missing:
        raise RepositoryFilesError(f"{missing[0]} is missing")
    return SnapshotFiles(generation, generations, blobs)


def write_generations(into: Path, root: Path, paths: list[str]) -> FileRecord:
    """The generation files, as they are now, in a tar.gz in the backup folder."""
    with HashingWriter(into / GENERATIONS_FILE) as out, tarfile.open(fileobj=out, mode="w|gz") as tar:  # type: ignore[arg-type]
        for path in paths:
            tar.add(root / path, arcname=path, recursive=False)
    return FileRecord(GENERATIONS_FILE, out.bytes, out.sha256)


def generations_in(archive: Path) -> list[str]:
    with tarfile.open(archive, mode="r:gz") as tar:
        return tar.getnames()


def unpack_generations(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
