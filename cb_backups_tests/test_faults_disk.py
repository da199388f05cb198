"""Disk full: the backup folder on a 2 MiB tmpfs. A clean error, the partial backup removed, nothing else deleted."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cb_backups.core.errors import BackupFailed
from cb_backups.core.specs import spec_for
from cb_backups.defs.resources import BackupsResource

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"cannot mount a 2 MiB tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))
    return filler


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "verification.json"}


def test_disk_full_mid_backup_is_a_clean_error_and_deletes_nothing(cb_env: dict[str, str], small_disk: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_BACKUP_DIR", str(small_disk / "backups"))
    backups = BackupsResource()
    catalog = backups.catalog()
    keys = spec_for("postgres").partitions.get_partition_keys()[-2:]
    # Another backup already on the disk (the Valkey RDB is ~50 KB).
    valkey = backups.store("valkey")
    other = catalog.write("valkey", keys[0], valkey.backup)
    before = hashes(other.directory)

    filler = fill(small_disk, leave=40 * 1024)  # less than the PostgreSQL dump needs
    postgres = backups.store("postgres")
    with pytest.raises(BackupFailed) as caught:
        catalog.write("postgres", keys[1], postgres.backup)
    message = str(caught.value)
    assert message.startswith("postgres: backup failed: cannot write ") and "No space left on device" in message
    assert "the partial backup was removed" in message and "\n" not in message
    assert catalog.get("postgres", keys[1]) is None
    leftovers = [p.name for p in small_disk.rglob("*") if p.name.startswith((".staging-", ".replaced-"))
                 or ".tmp-" in p.name]
    assert leftovers == []
    assert hashes(other.directory) == before and catalog.list("valkey") == [other]

    # Through the CLI (Dagster run): exit 1, one line naming the store, no traceback, still nothing left over.
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres", "--partition", keys[1]],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"postgres {keys[1]}: postgres"), done.stderr
    assert "free" in lines[0] and "Traceback" not in done.stderr
    assert not list(small_disk.rglob(".staging-*")) and hashes(other.directory) == before

    # Space again: the same slot backs up fine.
    filler.unlink()
    artifact = catalog.write("postgres", keys[1], postgres.backup)
    assert postgres.verify(artifact).ok and hashes(other.directory) == before


# --- disk full anywhere: one line naming the full filesystem and what was kept (issue 12, item 7) ----------


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=180, env={**os.environ, **(env or {})})


def one_line(done: subprocess.CompletedProcess[str], disk: Path) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Stack Trace" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "disk full" in lines[0] and f"mounted at {disk}" in lines[0], lines[0]
    return lines[0]


def test_verification_record_that_does_not_fit_is_one_line(cb_env: dict[str, str], small_disk: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_BACKUP_DIR", str(small_disk / "backups"))
    catalog = BackupsResource().catalog()
    valkey = BackupsResource().store("valkey")
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    artifact = catalog.write("valkey", key, valkey.backup)
    kept = hashes(artifact.directory)

    # Only the verification record does not fit (through a backup run, the pre-backup checklist's 2x-space
    # demand stops it earlier; the check step is the same one `verify` runs).
    filler = fill(small_disk, leave=0)
    line = one_line(cli("verify", "valkey", "--partition", key), small_disk)
    assert line.startswith(f"error: valkey {key}: disk full: cannot record the verification of valkey"), line
    assert "(it passed)" in line and "kept unchanged" in line
    assert hashes(artifact.directory) == kept and not (artifact.directory / "verification.json").exists()
    assert not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]
    filler.unlink()
    assert cli("verify", "valkey", "--partition", key).returncode == 0  # room again: recorded
    assert catalog.verification_of(artifact).ok  # type: ignore[union-attr]


def test_dagster_home_on_a_full_disk_is_one_line(cb_env: dict[str, str], small_disk: Path) -> None:
    home = small_disk / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    keys = spec_for("valkey").partitions.get_partition_keys()[-2:]
    assert cli("backup", "valkey", "--partition", keys[0], env={"DAGSTER_HOME": str(home)}).returncode == 0
    fill(small_disk, leave=0)
    line = one_line(cli("backup", "valkey", "--partition", keys[1], env={"DAGSTER_HOME": str(home)}), small_disk)
    assert "backups already complete in the catalog are kept" in line
    assert BackupsResource().catalog().get("valkey", keys[0]) is not None


def test_temp_dir_full_is_one_line(cb_env: dict[str, str], small_disk: Path) -> None:
    catalog = BackupsResource().catalog()
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    artifact = catalog.write("valkey", key, BackupsResource().store("valkey").backup)
    kept = hashes(artifact.directory)
    tmp = small_disk / "tmp"
    tmp.mkdir()
    fill(small_disk, leave=16 * 1024)  # quite full: Python silently skips a temp dir where not even 4 bytes fit
    # `latest` restores into a scratch server under the temp dir first (the counts pre-check)
    line = one_line(cli("restore", "valkey", "--target", "scratch", env={"TMPDIR": str(tmp)}), small_disk)
    assert "nothing was restored" in line, line
    assert hashes(artifact.directory) == kept
