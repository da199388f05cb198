"""Two materializations of the same store and slot at once never clobber each other: the second is refused
by the catalog's slot lock and says which slot and which process hold it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from cb_backups.core.catalog import Catalog, SlotBusy, checksum_problems
from cb_backups.core.specs import STORE_NAMES, spec_for
from cb_backups.definitions import defs
from cb_backups.defs.liveness import stores_of, writer_tags
from cb_backups.defs.resources import BackupsResource

ROOT = Path(__file__).resolve().parent.parent


def test_second_backup_of_a_slot_is_refused_and_names_the_holder(cb_env: dict[str, str], tmp_path: Path) -> None:
    real = Path(cb_env["CB_PG_BIN_DIR"])
    slow = tmp_path / "slowbin"
    slow.mkdir()
    # A test-only pg_dump that waits (until released) before dumping, so the first run holds the slot.
    (slow / "pg_dump").write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}/pg_dump" --version\n'
                                  f'touch "{slow}/started"\n'
                                  f'for i in $(seq 600); do [ -e "{slow}/release" ] && break; sleep 0.1; done\n'
                                  f'exec "{real}/pg_dump" "$@"\n')
    (slow / "pg_dump").chmod(0o755)
    (slow / "pg_restore").symlink_to(real / "pg_restore")
    key = spec_for("postgres").partitions.get_partition_keys()[-1]
    argv = [sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres", "--partition", key]
    first = subprocess.Popen(argv, env={**os.environ, "CB_PG_BIN_DIR": str(slow)}, cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not (slow / "started").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=180,
                            env={**os.environ, "DAGSTER_HOME": str(tmp_path / "second_home")})
    (slow / "release").touch()
    out, err = first.communicate(timeout=180)

    assert first.returncode == 0, out + err
    assert second.returncode == 1
    message = second.stderr.replace("\n", " ")
    assert f"postgres slot {key} is being written by another process (pid {first.pid})" in message, message
    assert "refusing to run a second backup of the same slot" in message
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    artifact = catalog.require("postgres", key)  # the first run's backup, whole
    assert checksum_problems(artifact) == [] and BackupsResource().store("postgres").verify(artifact).ok
    assert not list(catalog.store_dir("postgres").glob(".staging-*"))


def test_same_slot_from_two_threads_one_wins_other_refused(cb_env: dict[str, str]) -> None:
    backups = BackupsResource()
    catalog, store = backups.catalog(), backups.store("valkey")
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    gate = threading.Event()
    results: dict[str, object] = {}

    def slow_backup(into: Path):  # type: ignore[no-untyped-def]
        gate.set()
        time.sleep(0.5)
        return store.backup(into)

    def run(name: str, fn):  # type: ignore[no-untyped-def]
        try:
            results[name] = catalog.write("valkey", key, fn)
        except SlotBusy as exc:
            results[name] = exc

    a = threading.Thread(target=run, args=("a", slow_backup))
    a.start()
    gate.wait(30)
    run("b", store.backup)
    a.join()
    assert isinstance(results["b"], SlotBusy) and f"valkey slot {key}" in str(results["b"])
    assert f"pid {os.getpid()}" in str(results["b"])
    assert catalog.get("valkey", key) == results["a"]
    assert checksum_problems(catalog.require("valkey", key)) == []


def test_dagster_limits_one_run_per_store() -> None:
    """Runs launched through the queue (schedules, UI) are limited by the `store` tag; the in-process CLI
    relies on the slot lock above."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "store", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_no_two_queued_runs_touch_one_store() -> None:
    """Every job that touches a store carries that store's writer tag (the full system's all five), and the
    run queue starts at most one run per writer tag: the daemon never launches a store's backup while the
    full system backup (or a restore, or a drill) of that store is in progress."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    limits = {(item["key"], item["limit"]) for item in config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert {(key, 1) for key in writer_tags(STORE_NAMES)} <= limits
    touching = [job for job in defs.resolve_all_job_defs() if job.name.endswith(("_backup_job", "_drills_job"))
                or job.name.startswith("restore_") or job.name == "full_system_restore"]
    assert len(touching) >= 12
    for job in touching:
        if job.name.endswith("_drills_job"):
            continue  # a drill's runs are requested per store, with that store's tags (defs/drills.py)
        stores = [s for s in stores_of(job.tags.get("store")) if s in STORE_NAMES]
        assert stores and writer_tags(stores).items() <= job.tags.items(), job.name
