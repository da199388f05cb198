"""The Dagster layer for real: partitioned materializations, per-partition checks, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli.runs import run_job
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs

ROOT = Path(__file__).resolve().parent.parent


def recent_slots(store: str, n: int) -> list[str]:
    keys = spec_for(store).partitions.get_partition_keys()
    return keys[-n:]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)


def test_materialize_partition_with_all_checks_passing(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    key = recent_slots("postgres", 1)[0]
    result = run_job("postgres_backup_job", key, instance)
    assert result.success
    evaluations = list(result.get_asset_check_evaluations())
    assert {e.check_name for e in evaluations} == {"artifact_present", "integrity", "checksum", "inventory_recorded"}
    assert all(e.passed for e in evaluations)
    materialization = result.asset_materializations_for_node("postgres_backup")[0]
    assert materialization.partition == key
    meta = materialization.metadata
    assert meta["bytes"].value > 10_000 and meta["count/tables/memories"].value == 300
    assert meta["duration_seconds"].value > 0
    # the event log keeps the sha256 as a second record
    manifest = Catalog(Path(cb_env["CB_BACKUP_DIR"])).require("postgres", key).manifest
    assert meta["sha256"].value == {"postgres.dump.zst": manifest.files[0].sha256}


def test_dagster_cli_materializes_a_partition_with_its_checks(cb_env: dict[str, str]) -> None:
    key = recent_slots("valkey", 1)[0]
    done = subprocess.run(["dagster", "asset", "materialize", "-m", "cb_backups.definitions",
                           "--select", "valkey_backup", "--partition", key], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    artifact = Catalog(Path(cb_env["CB_BACKUP_DIR"])).require("valkey", key)
    record = Catalog(Path(cb_env["CB_BACKUP_DIR"])).verification_of(artifact)
    assert record is not None and record.ok  # the slot checks ran in the same run


def test_flipped_byte_fails_only_that_partition(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    bad, good = recent_slots("valkey", 2)
    for key in (bad, good):
        assert run_job("valkey_backup_job", key, instance).success
    artifact = Catalog(Path(cb_env["CB_BACKUP_DIR"])).require("valkey", bad)
    path = artifact.path("dump.rdb")
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    verdicts = {}
    for key in (bad, good):
        result = run_job("valkey_verify_job", key, instance)
        verdicts[key] = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert verdicts[bad]["checksum"] is False and verdicts[bad]["integrity"] is False
    assert verdicts[bad]["artifact_present"] is True
    assert all(verdicts[good].values())
    # per-partition status is what Dagster stored, not just what the run returned
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("valkey_backup"), "checksum"), limit=10)
    by_partition = {r.event.asset_check_evaluation.partition: r.event.asset_check_evaluation.passed  # type: ignore[union-attr]
                    for r in reversed(records) if r.event and r.event.asset_check_evaluation}
    assert by_partition[bad] is False and by_partition[good] is True
    assert cli("verify", "valkey", "--partition", bad).returncode == 1


def test_killed_backup_leaves_nothing_that_looks_good(cb_env: dict[str, str], tmp_path: Path) -> None:
    real = Path(cb_env["CB_PG_BIN_DIR"])
    slow = tmp_path / "slowbin"
    slow.mkdir()
    (slow / "pg_dump").write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}/pg_dump" --version\n'
                                  f'"{real}/pg_dump" "$@" | head -c 50000\ntouch "{slow}/midway"\nsleep 60\n')
    (slow / "pg_dump").chmod(0o755)
    (slow / "pg_restore").symlink_to(real / "pg_restore")
    key = recent_slots("postgres", 1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres", "--partition", key],
                            env={**os.environ, "CB_PG_BIN_DIR": str(slow)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store_dir = Path(cb_env["CB_BACKUP_DIR"]) / "postgres"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # pg_dump has written part of its output and still holds the pipe open
        if (slow / "midway").exists() and list(store_dir.glob(".staging-*/postgres.dump*")):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the backup never started writing")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    assert catalog.get("postgres", key) is None and not (store_dir / key).exists()
    assert catalog.list("postgres") == []
    assert not list(store_dir.glob("**/manifest.json"))
    # the next run of the same slot succeeds and sweeps the leftovers
    done = cli("backup", "postgres", "--partition", key)
    assert done.returncode == 0, done.stderr
    assert catalog.get("postgres", key) is not None
    assert catalog.sweep("postgres") == [] and not list(store_dir.glob(".staging-*"))


@pytest.mark.parametrize(("args", "code", "message"), [
    (("backup", "mysql"), 2, "invalid store: 'mysql' (allowed: postgres, valkey, neo4j, qdrant, opensearch)"),
    (("backup", "postgres", "--partition", "yesterday"), 2, "invalid partition key: 'yesterday'"),
    (("backup", "postgres", "--partition", "2026-11-24-05:00"), 2, "a slot start on the schedule 0 */6 * * *"),
    (("verify", "neo4j", "--partition", "2026-11-24-06:00"), 2, "format %Y-%m-%d"),
])
def test_bad_input_is_a_clear_one_line_error(cb_env: dict[str, str], args: tuple[str, ...], code: int,
                                             message: str) -> None:
    done = cli(*args)
    assert done.returncode == code
    assert message in done.stderr.replace("\n", " ")
    assert "Traceback" not in done.stderr + done.stdout


def test_unreachable_server_fails_the_run_and_names_the_store(cb_env: dict[str, str]) -> None:
    done = cli("backup", "postgres", env={"CB_POSTGRES_URL": "postgresql://codingbrain@127.0.0.1:1/codingbrain"})
    assert done.returncode == 1
    assert "postgres" in done.stderr and "127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr
    assert cb_env["CB_POSTGRES_PASSWORD"] not in done.stderr + done.stdout


def test_slot_older_than_retention_is_refused(cb_env: dict[str, str]) -> None:
    old = spec_for("valkey").partitions.get_partition_keys()[0]
    done = cli("backup", "valkey", "--partition", old)
    assert done.returncode == 2  # bad input, refused before a run starts
    assert "a valkey slot that ended within its 3-day retention" in done.stderr


# Everything the code location defines, pinned: loading the defs/ folder must find each object exactly once.
ASSET_KEYS = {
    "audit_report", "full_system_backup", "full_system_backup_offsite", "neo4j_backup", "neo4j_offsite",
    "opensearch_backup", "opensearch_offsite", "postgres_backup", "postgres_offsite", "qdrant_backup",
    "qdrant_offsite", "valkey_backup", "valkey_offsite",
    "postgres_wal", "postgres_base_backup",  # point-in-time recovery (defs/wal.py)
    "postgres_wal_offsite", "postgres_base_backup_offsite",  # their off-site copies (defs/wal.py, defs/offsite.py)
}
CHECK_KEYS = {
    "full_system_backup:all_stores_present", "full_system_backup:all_stores_verified",
    "full_system_backup:checksum", "full_system_backup_offsite:offsite_complete", "neo4j_backup:artifact_present",
    "neo4j_backup:checksum", "neo4j_backup:freshness", "neo4j_backup:integrity", "neo4j_backup:inventory_recorded",
    "neo4j_backup:restore_drill", "neo4j_offsite:offsite_complete", "opensearch_backup:artifact_present",
    "opensearch_backup:checksum", "opensearch_backup:freshness", "opensearch_backup:integrity",
    "opensearch_backup:inventory_recorded", "opensearch_backup:restore_drill",
    "opensearch_offsite:offsite_complete", "postgres_backup:artifact_present", "postgres_backup:checksum",
    "postgres_backup:freshness", "postgres_backup:integrity", "postgres_backup:inventory_recorded",
    "postgres_backup:restore_drill", "postgres_offsite:offsite_complete", "qdrant_backup:artifact_present",
    "qdrant_backup:checksum", "qdrant_backup:freshness", "qdrant_backup:integrity",
    "qdrant_backup:inventory_recorded", "qdrant_backup:restore_drill", "qdrant_offsite:offsite_complete",
    "valkey_backup:artifact_present", "valkey_backup:checksum", "valkey_backup:freshness",
    "valkey_backup:integrity", "valkey_backup:inventory_recorded", "valkey_backup:restore_drill",
    "postgres_backup:tamper_evidence", "valkey_backup:tamper_evidence", "neo4j_backup:tamper_evidence",
    "qdrant_backup:tamper_evidence", "opensearch_backup:tamper_evidence",  # defs/drills.py
    "valkey_offsite:offsite_complete", "neo4j_offsite:offsite_freshness", "opensearch_offsite:offsite_freshness",
    "postgres_offsite:offsite_freshness", "qdrant_offsite:offsite_freshness", "valkey_offsite:offsite_freshness",
    *(f"{name}:offsite_deep_subset" for name in ("postgres_offsite", "valkey_offsite", "neo4j_offsite",
                                                  "qdrant_offsite", "opensearch_offsite",
                                                  "full_system_backup_offsite")),
    "postgres_wal:segments_present", "postgres_wal:sha256", "postgres_wal:continuity", "postgres_wal:waldump",
    "postgres_wal:rpo", "postgres_wal:slot_retained_wal", "postgres_base_backup:verifybackup",
    "postgres_base_backup:wal_continuous",
    "postgres_wal_offsite:segments_offsite", "postgres_wal_offsite:offsite_freshness",
    "postgres_base_backup_offsite:offsite_complete", "postgres_base_backup_offsite:offsite_deep_subset",
}
JOB_NAMES = {
    "audit_report_job", "freshness_checks_job", "full_system_backup_job", "full_system_backup_offsite_job",
    "full_system_backup_offsite_verify_job", "full_system_restore", "full_system_verify_job", "neo4j_backup_job",
    "neo4j_offsite_job", "neo4j_offsite_verify_job", "neo4j_verify_job", "opensearch_backup_job",
    "opensearch_offsite_job", "opensearch_offsite_verify_job", "opensearch_verify_job", "postgres_backup_job",
    "postgres_offsite_job", "postgres_offsite_verify_job", "postgres_verify_job", "qdrant_backup_job",
    "qdrant_offsite_job", "qdrant_offsite_verify_job", "qdrant_verify_job", "restore_drills_job", "restore_neo4j",
    "restore_opensearch", "restore_postgres", "restore_qdrant", "restore_valkey", "retention_job",
    "valkey_backup_job", "valkey_offsite_job", "valkey_offsite_verify_job", "valkey_verify_job",
    "offsite_freshness_job", "offsite_deep_subset_job",
    "postgres_wal_job", "postgres_base_backup_job", "postgres_wal_rpo_job", "postgres_wal_retention_job",
    "postgres_wal_offsite_job", "postgres_base_backup_offsite_job", "postgres_base_backup_offsite_verify_job",
}
SCHEDULE_NAMES = {
    "audit_report_schedule", "freshness_checks_schedule", "full_system_backup_schedule", "neo4j_backup_schedule",
    "opensearch_backup_schedule", "postgres_backup_schedule", "qdrant_backup_schedule", "restore_drills_schedule",
    "retention_schedule", "valkey_backup_schedule", "offsite_freshness_schedule", "offsite_deep_subset_schedule",
    "postgres_wal_schedule", "postgres_base_backup_schedule", "postgres_wal_rpo_schedule",
    "postgres_wal_retention_schedule", "postgres_wal_offsite_schedule",
}
SENSOR_NAMES = {
    "check_failure_webhook_sensor", "dead_runs_sensor", "offsite_automation_sensor", "run_failure_webhook_sensor",
}


def test_definitions_hold_every_object_exactly_once() -> None:
    assets = [key.to_user_string() for a in defs.assets or [] for key in a.keys]
    checks = [key.to_user_string() for c in defs.asset_checks or [] for key in c.check_keys]
    jobs = [j.name for j in defs.jobs or []]
    schedules = [s.name for s in defs.schedules or []]
    sensors = [s.name for s in defs.sensors or []]
    for found, expected in ((assets, ASSET_KEYS), (checks, CHECK_KEYS), (jobs, JOB_NAMES),
                            (schedules, SCHEDULE_NAMES), (sensors, SENSOR_NAMES)):
        assert len(found) == len(set(found)), sorted(n for n in found if found.count(n) > 1)
        assert set(found) == expected
    assert set(defs.resources or {}) == {"backups"}
    repo = defs.get_repository_def()  # the merged whole resolves (jobs' selections, checks' assets)
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == JOB_NAMES
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == ASSET_KEYS


def test_schedules_follow_the_runbook_crontab() -> None:
    crons = {s.name: s.cron_schedule for s in defs.schedules}
    assert crons["postgres_backup_schedule"] == "0 */6 * * *"
    assert crons["valkey_backup_schedule"] == "0 */6 * * *"
    assert crons["neo4j_backup_schedule"] == "0 2 * * *"
    assert crons["qdrant_backup_schedule"] == "0 3 * * *"
    assert crons["opensearch_backup_schedule"] == "0 4 * * *"


def test_definitions_validate_with_the_dagster_cli() -> None:
    done = subprocess.run(["dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dg_check_defs_passes_in_the_repository_root(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    done = subprocess.run(["dg", "check", "defs"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "DAGSTER_HOME": str(tmp_path)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert "All definitions loaded successfully." in done.stdout + done.stderr


def test_every_asset_has_its_owner_and_kinds_and_idiomatic_metadata_types() -> None:
    """Issue 17 item 10: owners and kinds on every asset (full system included), so the UI can filter by them."""
    from cb_backups.defs.backups.assets import OWNER

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert OWNER in node.owners, key
        assert {t for t in node.tags if t.startswith("dagster/kind/")}, key
    assert {t.removeprefix("dagster/kind/") for t in graph.get(dg.AssetKey("full_system_backup")).tags
            if t.startswith("dagster/kind/")} >= {"backup", "postgres", "valkey"}


def test_progress_lines_carry_amount_rate_and_time_left() -> None:
    from cb_backups.defs.progress import Meter, rate_text

    assert rate_text(12 * 2**20, 48 * 2**20, 4.0) == "12.0 MiB of 48.0 MiB (25%), 3.0 MiB/s, 12s left"
    assert rate_text(3, 5, 2.0) == "3 of 5 (60%), 1.5/s, 1s left"  # items, not bytes
    assert rate_text(2**20, None, 0.0) == "1.0 MiB"
    meter = Meter()
    assert meter.text(0, 100 * 2**20).startswith("0 B of 100.0 MiB (0%)")


def test_freshness_run_before_the_slot_checks_checks_the_new_backup_itself(cb_env: dict[str, str]) -> None:
    """The UI's Materialize runs the asset with ALL its checks in one run, the unpartitioned freshness check
    beside the slot checks in no set order. Here freshness runs right after the backup with no slot check
    at all (the worst order): it checks the just-written backup itself instead of calling the store stale
    (it was red after every UI materialization)."""
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    asset = dg.AssetKey("valkey_backup")
    job = dg.define_asset_job("backup_then_freshness", selection=dg.AssetSelection.assets(asset).without_checks()
                              | dg.AssetSelection.checks(dg.AssetCheckKey(asset, "freshness")),
                              partitions_def=spec_for("valkey").partitions)
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("backup_then_freshness")
    result = resolved.execute_in_process(instance=dg.DagsterInstance.get(), partition_key=key, raise_on_error=False)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"freshness": True}, evaluations
    record = Catalog(Path(cb_env["CB_BACKUP_DIR"])).verification_of(
        Catalog(Path(cb_env["CB_BACKUP_DIR"])).require("valkey", key))
    assert record is not None and record.ok  # it really was checked
