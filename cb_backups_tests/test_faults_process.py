"""Process death: a backup or an off-site copy killed with SIGKILL at ten points leaves nothing that
looks good without verifying, the next run of the same slot succeeds, and no other backup changes."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import MANIFEST, Catalog, checksum_problems
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import BackupOutput, FileRecord
from cb_backups.core.specs import spec_for
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite import s3 as offsite
from cb_backups.stores.base import Store
from cb_backups_tests.servers.s3 import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
SEED = 77
MiB = 1024 * 1024

# A child that runs the real library path (catalog.write + the real adapter) and pauses at one named point,
# so the parent's SIGKILL lands exactly there.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import cb_backups.core.catalog as catalog_mod
    from cb_backups.defs.resources import BackupsResource

    point, store_name, key, marker = sys.argv[1:5]

    def pause():
        Path(marker).touch()
        time.sleep(120)

    if point == "fsync":  # the artifact is written, its fsync has not returned
        real_fsync = os.fsync
        os.fsync = lambda fd: (pause(), real_fsync(fd))
    elif point == "before_manifest":  # artifact complete and fsynced, manifest not yet written
        real_write = catalog_mod.atomic_write_json
        catalog_mod.atomic_write_json = lambda *a: (pause(), real_write(*a))
    elif point.startswith("rename"):  # rename1: complete staging not yet moved in; rename2: old slot moved aside
        wanted, calls, real_rename = int(point[-1]), [0], os.rename

        def rename(src, dst):
            calls[0] += 1
            if calls[0] == wanted:
                pause()
            return real_rename(src, dst)
        os.rename = rename
    backups = BackupsResource()
    store = backups.store(store_name)
    backups.catalog().write(store_name, key, store.backup)
    print("completed")
""")

UPLOADER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cb_backups.offsite import s3 as offsite
    from cb_backups.core.catalog import Catalog
    from cb_backups.config.settings import S3Settings

    root, store, key, bucket, endpoint, marker, fraction = sys.argv[1:8]
    target = offsite.S3Target(S3Settings(bucket=bucket, endpoint_url=endpoint, prefix="kill",
                                         multipart_chunk_mb=5, concurrency=2))
    artifact = Catalog(Path(root)).require(store, key)

    def progress(message, done, total):
        if total and done >= total * float(fraction):
            Path(marker).touch()
            time.sleep(0.05)  # slow the copy down from here so the kill lands mid-upload

    offsite.upload_artifact(artifact, target, progress=progress)
    print("completed")
""")


def fake_backup(size: int) -> Callable[[Path], BackupOutput]:
    def backup(into: Path) -> BackupOutput:
        with HashingWriter(into / "blob.bin") as out:
            for i in range(size // MiB):
                out.write(hashlib.sha256(str(i).encode()).digest() * (MiB // 32))
        return BackupOutput([FileRecord("blob.bin", out.bytes, out.sha256)], "fake", {}, {"fake": "1"},
                            {"rows": {"blob": 1}})

    return backup


def file_hashes(root: Path, slots: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for store, key in slots:
        for path in sorted((root / store / key).iterdir()):
            if path.name != "verification.json":  # a check's record may be rewritten; the backup may not
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_nothing_looks_good_that_does_not_verify(catalog: Catalog, stores: dict[str, Store]) -> list[str]:
    """Every folder the catalog offers verifies; a manifest in a hidden (staging) folder is never offered."""
    leftovers = []
    for store_dir in sorted(p for p in catalog.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        listed = {a.directory for a in catalog.list(store_dir.name)}
        for manifest in store_dir.glob(f"*/{MANIFEST}"):
            folder = manifest.parent
            if folder.name.startswith("."):
                assert folder not in listed, f"{folder} is offered as a backup"
                leftovers.append(folder.name)
                continue
            assert folder in listed
        for artifact in catalog.list(store_dir.name):
            assert checksum_problems(artifact) == [], artifact.directory
            if store_dir.name in stores:
                verification = stores[store_dir.name].verify(artifact)
                assert verification.ok, (artifact.directory, verification.problems)
        leftovers += [p.name for p in store_dir.glob(".staging-*") if not (p / MANIFEST).exists()]
    return leftovers


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the child ended (exit {proc.returncode}) before the kill point: {out[-2000:]}")
        time.sleep(0.02)
    pytest.fail("kill point never reached")


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_ten_kills_lose_nothing_and_touch_nothing_else(cb_env: dict[str, str], tmp_path: Path, s3_server: SeaweedS3,
                                                       s3_bucket: str, s3_env: dict[str, str]) -> None:
    rng = random.Random(SEED)
    root = Path(cb_env["CB_BACKUP_DIR"])
    backups = BackupsResource()
    catalog = backups.catalog()
    stores: dict[str, Store] = {name: backups.store(name) for name in ("postgres", "valkey")}
    pg_keys = spec_for("postgres").partitions.get_partition_keys()[-4:]
    vk_keys = spec_for("valkey").partitions.get_partition_keys()[-2:]
    pg_slot, vk_slot = pg_keys[-1], vk_keys[-1]  # the slots being killed
    # Other slots that must come out byte-identical (one of them is re-backed-up and killed mid-swap).
    others = [("postgres", k) for k in pg_keys[:3]] + [("valkey", vk_keys[0]), ("qdrant", "2026-11-20")]
    for store, key in others[:-1]:
        catalog.write(store, key, stores[store].backup)
    catalog.write("qdrant", "2026-11-20", fake_backup(12 * MiB))  # for the upload kills: multipart
    before = file_hashes(root, others)

    child = tmp_path / "child.py"
    child.write_text(CHILD)
    uploader = tmp_path / "uploader.py"
    uploader.write_text(UPLOADER)
    real = Path(cb_env["CB_PG_BIN_DIR"])
    slow = tmp_path / "slowbin"
    slow.mkdir()
    (slow / "pg_dump").write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}/pg_dump" --version\n'
                                  f'"{real}/pg_dump" "$@" | (head -c 40000; touch "{slow}/midway"; sleep 120)\n')
    (slow / "pg_dump").chmod(0o755)
    (slow / "pg_restore").symlink_to(real / "pg_restore")
    staging = lambda store: lambda: bool(list((root / store).glob(".staging-*")))  # noqa: E731
    log: list[str] = []

    # 1. CLI, PostgreSQL, during the dump (a test-only slow pg_dump holds the pipe open)
    proc = spawn([sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres", "--partition", pg_slot],
                 {"CB_PG_BIN_DIR": str(slow)})
    wait_for(lambda: (slow / "midway").exists(), proc)
    time.sleep(rng.uniform(0, 0.3))
    kill(proc)
    log.append("cli postgres during dump")
    # 2-3. CLI, PostgreSQL and Valkey, at a random delay after the staging folder appeared
    for store, key in (("postgres", pg_slot), ("valkey", vk_slot)):
        proc = spawn([sys.executable, "-m", "cb_backups.cli.app", "backup", store, "--partition", key])
        wait_for(staging(store), proc)
        time.sleep(rng.uniform(0, 0.4))
        kill(proc)
        log.append(f"cli {store} random point")
        log.append(f"  leftovers: {assert_nothing_looks_good_that_does_not_verify(catalog, stores)}")
    # 4-8. the library path, at exact points
    for point, store, key in (("fsync", "postgres", pg_slot), ("fsync", "valkey", vk_slot),
                              ("before_manifest", "postgres", pg_slot), ("rename1", "valkey", vk_slot),
                              ("rename2", "postgres", pg_keys[1])):
        marker = tmp_path / f"marker-{point}-{store}"
        proc = spawn([sys.executable, str(child), point, store, key, str(marker)])
        wait_for(marker.exists, proc)
        time.sleep(rng.uniform(0, 0.05))
        kill(proc)
        log.append(f"child {store} {point}")
        log.append(f"  leftovers: {assert_nothing_looks_good_that_does_not_verify(catalog, stores)}")
        if point == "rename2":  # the slot's previous backup was moved aside: it must come back, not be lost
            assert catalog.get(store, key) is None
            assert list((root / store).glob(f".replaced-{key}-*"))
            catalog.sweep(store)
            assert catalog.get(store, key) is not None
    # 9-10. off-site copy killed mid-upload at two random fractions
    target = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="kill",
                                         multipart_chunk_mb=5, concurrency=2), connect_timeout=2, read_timeout=10)
    fake = catalog.require("qdrant", "2026-11-20")
    client = s3_server.client()
    for n in range(2):
        marker = tmp_path / f"marker-upload-{n}"
        proc = spawn([sys.executable, str(uploader), str(root), "qdrant", "2026-11-20", s3_bucket,
                      s3_server.endpoint_url, str(marker), f"{rng.uniform(0.1, 0.8):.2f}"])
        wait_for(marker.exists, proc)
        kill(proc)
        log.append(f"upload killed at {n}")
        assert offsite.list_offsite("qdrant", target) == []  # no manifest: the copy never looks complete
        for obj in client.list_objects_v2(Bucket=s3_bucket, Prefix="kill/").get("Contents", []):
            record = fake.file(obj["Key"].rsplit("/", 1)[1])  # any object under a final key is whole
            head = client.head_object(Bucket=s3_bucket, Key=obj["Key"])
            assert head["ContentLength"] == record.bytes and head["Metadata"]["sha256"] == record.sha256

    # The next runs of the same slots succeed and clear what the kills left.
    for store, key in (("postgres", pg_slot), ("valkey", vk_slot)):
        done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "backup", store, "--partition", key],
                              capture_output=True, text=True, cwd=ROOT, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert catalog.get(store, key) is not None
        catalog.sweep(store)
    copy = offsite.upload_artifact(fake, target)
    assert copy.bytes == 12 * MiB and offsite.verify_offsite(fake, target, deep=True).ok
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") in (None, [])
    assert assert_nothing_looks_good_that_does_not_verify(catalog, stores) == []
    for store in ("postgres", "valkey", "qdrant"):
        assert not list((root / store).glob(".staging-*")) and not list((root / store).glob(".replaced-*"))
    # Nothing else was touched: every other slot's files are byte-identical.
    assert file_hashes(root, others) == before
    print("\n".join(log))
