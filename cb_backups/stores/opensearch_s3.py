"""An OpenSearch `s3` snapshot repository as cb-backups reads it: the bucket's objects under `base_path`.

The cluster writes the snapshot into the bucket itself, so nothing is copied into the backup folder; the
backup lists every object the snapshot needs (same selection as for fs, see opensearch_files) with its
size, and the check lists the bucket again. S3 offers no sha256 of these objects (OpenSearch does not set
one), so the check proves presence and size, not content. The client is the project's (stores.s3client):
endpoint and region from the repository settings when given, credentials from the standard AWS chain --
the same environment the off-site copies use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cb_backups.config.settings import S3Settings
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import FileRecord
from cb_backups.stores.s3client import S3Target, get_bytes, object_sizes

OBJECTS_FILE = "repository_objects.json"


def bucket_target(repository_settings: dict[str, Any]) -> S3Target:
    endpoint = repository_settings.get("endpoint")
    if endpoint and "://" not in str(endpoint):
        endpoint = f"{repository_settings.get('protocol', 'https')}://{endpoint}"
    base = str(repository_settings.get("base_path", "")).strip("/")
    settings = S3Settings(bucket=str(repository_settings.get("bucket") or "") or None, prefix=base,
                          endpoint_url=str(endpoint) if endpoint else None,
                          region=str(repository_settings.get("region", "us-east-1")))
    return S3Target(settings, connect_timeout=10, read_timeout=60)


class BucketTree:
    """The repository's objects, listed once (a `Tree` for opensearch_files)."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self.base = f"{target.prefix}/" if target.prefix else ""
        self.sizes = {key[len(self.base):]: size for key, size in object_sizes(target, self.base)}
        self._folders: dict[str, list[str]] = {}
        for path in self.sizes:
            folder, _, name = path.rpartition("/")
            self._folders.setdefault(folder, []).append(name)

    def names(self, folder: str) -> list[str]:
        return self._folders.get(folder, [])

    def read(self, path: str) -> bytes:
        body = get_bytes(self.target, self.base + path)
        if body is None:
            raise FileNotFoundError(f"{self.target.url(self.base + path)} is missing")
        return body

    def url(self, path: str = "") -> str:
        return self.target.url(self.base + path)


@dataclass(frozen=True)
class ObjectList:
    bucket: str
    base_path: str
    endpoint: str | None
    files: dict[str, int]  # path under base_path -> bytes


def write_object_list(into: Path, objects: ObjectList) -> FileRecord:
    with HashingWriter(into / OBJECTS_FILE) as out:
        out.write((json.dumps(objects.__dict__, indent=1, sort_keys=True) + "\n").encode())
    return FileRecord(OBJECTS_FILE, out.bytes, out.sha256)


def read_object_list(path: Path) -> ObjectList:
    data = json.loads(path.read_bytes())
    return ObjectList(str(data["bucket"]), str(data["base_path"]), data.get("endpoint"),
                      {str(k): int(v) for k, v in data["files"].items()})


def object_problems(objects: ObjectList, tree: BucketTree) -> list[str]:
    """Every listed object present in the bucket with its size; each problem names the object."""
    problems = []
    for path, size in sorted(objects.files.items()):
        found = tree.sizes.get(path)
        if found is None:
            problems.append(f"repository object {tree.url(path)}: missing")
        elif found != size:
            problems.append(f"repository object {tree.url(path)}: {found} bytes, the manifest says {size}")
    return problems
