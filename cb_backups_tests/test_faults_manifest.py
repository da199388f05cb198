"""Manifests bind to their slot and cannot be edited silently (issue 12, item 3), on the real servers:
a deleted seal, two slot folders swapped, a manifest that differs from Dagster's record of it, and a
newest manifest whose counts were edited (seal re-made) that `latest` must fall back past."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.checks.slot import evaluate_slot
from cb_backups.cli.runs import evaluations, run_job
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import MANIFEST, MANIFEST_SEAL, VERIFICATION, write_seal
from cb_backups.core.errors import RestoreRefused
from cb_backups.core.fileio import atomic_write_json, sha256_file
from cb_backups.core.model import Target
from cb_backups.core.specs import spec_for
from cb_backups.defs.resources import BackupsResource
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups_tests.databases import own_database

ROOT = Path(__file__).resolve().parent.parent


def slots(store: str, n: int) -> list[str]:
    return spec_for(store).partitions.get_partition_keys()[-n:]


def checksum_of(result: object) -> dg.AssetCheckEvaluation:
    found = [e for e in evaluations(result) if e.check_name == "checksum"]
    assert len(found) == 1, evaluations(result)
    return found[0]


def edit_manifest(directory: Path, reseal: bool) -> None:
    """What someone with write access does: change the recorded counts (and, knowing the format, the seal)."""
    data = json.loads((directory / MANIFEST).read_text())
    for section in data["inventory"].values():
        for name in section:
            section[name] += 7
    atomic_write_json(directory / MANIFEST, data)
    if reseal:
        write_seal(directory)


def test_deleted_seal_then_edited_manifest_fails_verify(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    backups = BackupsResource()
    catalog = backups.catalog()
    (key,) = slots("valkey", 1)
    assert run_job("valkey_backup_job", key, instance).success
    artifact = catalog.require("valkey", key)
    assert evaluate_slot(backups.store("valkey"), catalog, key)[1][2].passed

    artifact.path(MANIFEST_SEAL).unlink()
    edit_manifest(artifact.directory, reseal=False)
    # The seal alone (no event log): a missing seal fails, naming it.
    _, outcomes = evaluate_slot(backups.store("valkey"), catalog, key)
    checksum = next(o for o in outcomes if o.name == "checksum")
    assert not checksum.passed and f"{MANIFEST_SEAL} (the manifest's seal) is missing" in checksum.description
    # Through Dagster (what `cb-backups verify` runs): failed, naming the seal and the event log's sha256.
    result = run_job("valkey_verify_job", key, instance)
    check = checksum_of(result)
    assert not check.passed and MANIFEST_SEAL in (check.description or "")
    assert catalog.verification_of(catalog.require("valkey", key)).ok is False  # type: ignore[union-attr]


def test_swapped_slot_folders_fail_verify_and_restore_is_refused(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = BackupsResource().catalog()
    a, b = slots("valkey", 2)
    for key in (a, b):
        assert run_job("valkey_backup_job", key, instance).success
    folder_a, folder_b = catalog.slot_dir("valkey", a), catalog.slot_dir("valkey", b)
    aside = folder_a.with_name(".swap")
    os.rename(folder_a, aside)
    os.rename(folder_b, folder_a)
    os.rename(aside, folder_b)

    check = checksum_of(run_job("valkey_verify_job", a, instance))
    assert not check.passed and "store/slot mismatch" in (check.description or "")
    assert f"valkey backup {b}" in (check.description or "")  # names what the folder really holds
    with pytest.raises(RestoreRefused) as refused:
        execute_restore(plan_restore(load_settings(), "valkey", a, target=Target("scratch")))
    assert "store/slot mismatch" in str(refused.value) and str(folder_a) in str(refused.value)
    # `list` says so without a check run.
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "list", "valkey"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0 and "store/slot mismatch" in done.stdout, done.stdout + done.stderr


def test_manifest_differing_from_the_event_log_fails_naming_both_sha256(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    backups = BackupsResource()
    catalog = backups.catalog()
    (key,) = slots("valkey", 1)
    assert run_job("valkey_backup_job", key, instance).success
    artifact = catalog.require("valkey", key)
    then = sha256_file(artifact.path(MANIFEST))[0]
    edit_manifest(artifact.directory, reseal=True)
    now = sha256_file(artifact.path(MANIFEST))[0]
    # Seal re-made: every local check passes ...
    assert all(o.passed for o in evaluate_slot(backups.store("valkey"), catalog, key)[1])
    # ... the event log's record does not.
    check = checksum_of(run_job("valkey_verify_job", key, instance))
    assert not check.passed
    assert now in (check.description or "") and then in (check.description or ""), check.description


@pytest.fixture()
def pg_db(cb_env: dict[str, str], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with own_database(pg_server, monkeypatch, "cbm", 20) as db:
        yield db


def test_latest_falls_back_past_a_manifest_with_edited_counts(pg_db: str, pg_server: EmbeddedPostgres) -> None:
    instance = dg.DagsterInstance.get()
    catalog = BackupsResource().catalog()
    older, newest = slots("postgres", 2)
    assert run_job("postgres_backup_job", older, instance).success
    with pg_server.connect(pg_db) as conn:
        conn.execute("DELETE FROM memories WHERE ctid IN (SELECT ctid FROM memories LIMIT 3)")
    assert run_job("postgres_backup_job", newest, instance).success
    edit_manifest(catalog.slot_dir("postgres", newest), reseal=True)  # an attacker who knows the format

    # The event log catches it at verify time ...
    assert not checksum_of(run_job("postgres_verify_job", newest, instance)).passed
    # ... and `latest` (checked only against the seal, which agrees) falls back on the counts, naming it.
    messages: list[str] = []
    scratch = f"{pg_db}__restored"
    result = execute_restore(plan_restore(load_settings(), "postgres", "latest",
                                          target=Target("scratch", {"dbname": scratch})),
                             lambda message, done, total: messages.append(message))
    assert result.ok and result.partition_key == older, result.summary()
    assert len(result.skipped) == 1 and result.skipped[0].startswith(f"{newest}: ")
    assert "scratch" in result.skipped[0] and "counts differ" in result.skipped[0], result.skipped
    assert any(f"fell back to {older}" in n for n in result.notes)
    expected = catalog.require("postgres", older).manifest.inventory["tables"]["memories"]
    with pg_server.connect(scratch) as conn:
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == expected  # type: ignore[index]
    with pg_server.connect("postgres") as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert not any(n.endswith("__drill") for n in names)  # the pre-check's scratch database is gone
    record = json.loads((catalog.slot_dir("postgres", newest) / VERIFICATION).read_text())
    assert record["ok"] is False and "counts differ" in record["problems"][0]


def listing(*extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "list", "valkey", *extra], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = [line for line in done.stdout.splitlines() if " valkey " in line or line.startswith("│ valkey")]
    return row


def listing_json() -> str:
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "list", "valkey", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_list_shows_when_each_backup_was_last_verified(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = BackupsResource().catalog()
    (key,) = slots("valkey", 1)
    assert run_job("valkey_backup_job", key, instance).success
    artifact = catalog.require("valkey", key)
    record = catalog.verification_of(artifact)
    assert record is not None and record.ok
    row = listing()
    assert " yes " in row and " min ago" in row and "older than a day" not in row, row
    assert record.checked_at in listing_json()  # the exact time, for scripts and auditors

    # A byte changed since the check (same size): no longer "yes" (cheap test: size and mtime) ...
    rdb = artifact.path("dump.rdb")
    original = rdb.read_bytes()
    rdb.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    row = listing()
    assert " yes " not in row and "changed since" in row and "dump.rdb" in row, row
    # ... and --deep re-hashes: the file differs from the manifest.
    assert "CHANGED" in listing("--deep") and "sha256" in listing("--deep")
    # Put back (content and mtime), with a record from two days ago: verified, but flagged as old.
    stat = rdb.stat()
    rdb.write_bytes(original)
    os.utime(rdb, ns=(stat.st_atime_ns, record.files["dump.rdb"][1]))
    data = json.loads(artifact.path(VERIFICATION).read_text())
    data["checked_at"] = "2020-01-01T00:00:00+00:00"
    artifact.path(VERIFICATION).write_text(json.dumps(data))
    row = listing()
    assert " yes " in row and " d ago" in row and "older than a day" in row, row
    assert "2020-01-01T00:00:00+00:00" in listing_json()
