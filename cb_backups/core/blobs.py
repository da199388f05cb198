"""Files a backup needs that live OUTSIDE its folder (an OpenSearch snapshot repository's blobs).

A store whose data stays in a shared repository writes `repository_files.json` into the backup
folder: the repository root as cb-backups reads it, and every file the backup needs with its size and
sha256. That list is itself a manifest file (sized and hashed), so the sealed manifest pins it.
The off-site copy, the off-site check, the download and off-site retention read it without knowing
which store wrote it. A downloaded copy carries the files in `<backup folder>/repository/`.

A folder holding other stores' parts under prefixed names (a full system backup's
`opensearch__repository_files.json`) has one list per part: every manifest file whose name ends in
`repository_files.json` is a list, and its downloaded files go to the folder named by the same prefix
(`opensearch__repository/`), so one store's view of that folder finds them at `repository/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from cb_backups.core.fileio import HashingWriter, sha256_file
from cb_backups.core.model import Artifact, FileRecord

BLOBS_FILE = "repository_files.json"
CARRIED_DIR = "repository"  # in a downloaded copy: the listed files, at their repository paths


@dataclass(frozen=True)
class Blob:
    path: str  # relative to the repository root, "/"-separated
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BlobList:
    root: str  # the repository folder as cb-backups reads it at backup time
    files: list[Blob]

    @property
    def total_bytes(self) -> int:
        return sum(b.bytes for b in self.files)


def safe_path(path: str) -> bool:
    """Relative, no `..`, no empty parts: a listed path can never leave the folder it is put into."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) \
        and "\\" not in path


def write_blob_list(into: Path, blobs: BlobList) -> FileRecord:
    with HashingWriter(into / BLOBS_FILE) as out:
        out.write((json.dumps(asdict(blobs), indent=1, sort_keys=True) + "\n").encode())
    return FileRecord(BLOBS_FILE, out.bytes, out.sha256)


def parse_blob_list(raw: bytes) -> BlobList:
    """Raises ValueError on anything but a well-formed list of safe paths."""
    data = json.loads(raw)
    files = [Blob(str(f["path"]), int(f["bytes"]), str(f["sha256"])) for f in data["files"]]
    bad = [f.path for f in files if not safe_path(f.path)]
    if bad:
        raise ValueError(f"unsafe repository path {bad[0]!r}")
    return BlobList(str(data["root"]), files)


def read_blob_list(artifact: Artifact) -> BlobList | None:
    """The artifact's list, None when it keeps nothing outside its folder. Raises ValueError/OSError."""
    if not any(f.name == BLOBS_FILE for f in artifact.manifest.files):
        return None
    return parse_blob_list(artifact.path(BLOBS_FILE).read_bytes())


def list_names(names: Iterable[str]) -> list[str]:
    """The file names among `names` that are repository file lists (`repository_files.json`, or prefixed)."""
    return [n for n in names if n.endswith(BLOBS_FILE)]


def carried_dir(list_name: str) -> str:
    """Where a downloaded copy keeps the files of list `list_name`: `repository`, `opensearch__repository`."""
    return list_name[: -len(BLOBS_FILE)] + CARRIED_DIR


def read_blob_lists(artifact: Artifact) -> list[tuple[str, BlobList]]:
    """Every list in the artifact with its file name (none for a backup that keeps nothing outside its
    folder). Raises ValueError/OSError."""
    return [(name, parse_blob_list(artifact.path(name).read_bytes()))
            for name in list_names(f.name for f in artifact.manifest.files)]


def list_root(artifact: Artifact, list_name: str, blobs: BlobList) -> Path:
    """Where the files of one list are read: the downloaded copy's folder, else the repository."""
    folder = artifact.path(carried_dir(list_name))
    return folder if folder.is_dir() else Path(blobs.root)


def carried_root(artifact: Artifact) -> Path | None:
    """Where a downloaded copy keeps the listed files, None for a backup that never left this host."""
    folder = artifact.path(CARRIED_DIR)
    return folder if folder.is_dir() else None


class HashCache:
    """sha256 of files, each hashed once while this object lives (one verify run).

    Keyed on the file's identity and change stamps (device, inode, size, mtime_ns, ctime_ns), never on
    the name alone: any write to the file changes its ctime, so a changed blob is always hashed again.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int, int], str] = {}
        self.hashed = 0  # files actually read, for tests and details

    def sha256(self, path: Path) -> tuple[str, int]:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)[0]
            self.hashed += 1
        return self._known[key], st.st_size

    def blob(self, root: Path, path: str) -> Blob:
        digest, size = self.sha256(root / path)
        return Blob(path, size, digest)


def blob_problems(blobs: BlobList, root: Path, cache: HashCache) -> list[str]:
    """Every listed file present under `root` with its size and sha256; each problem names the file."""
    problems = []
    for blob in blobs.files:
        path = root / blob.path
        try:
            digest, size = cache.sha256(path)
        except FileNotFoundError:
            problems.append(f"repository file {blob.path}: missing from {root}")
            continue
        except OSError as exc:
            problems.append(f"repository file {blob.path}: cannot read ({exc.strerror})")
            continue
        if size != blob.bytes:
            problems.append(f"repository file {blob.path}: {size} bytes, the manifest says {blob.bytes}")
        elif digest != blob.sha256:
            problems.append(f"repository file {blob.path}: sha256 {digest[:12]}… differs from the manifest's "
                            f"{blob.sha256[:12]}…")
    return problems
