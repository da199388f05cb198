"""Off-site copies through Dagster, for real: Valkey backups, SeaweedFS S3, the automation condition."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli import app as cli
from cb_backups.cli.runs import run_job
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs
from cb_backups.defs.offsite import BY_STORE, OFFSITE_CHECK, SOURCES, build
from cb_backups.offsite import s3 as offsite
from cb_backups_tests.servers.s3 import SeaweedS3

# cb_env (conftest.py) and s3_server/s3_bucket/s3_env/offsite_env (fixtures_s3.py) are loaded by conftest.py

VALKEY = BY_STORE["valkey"]


def slots(n: int, skip_latest: int = 0) -> list[str]:
    keys = spec_for("valkey").partitions.get_partition_keys()
    return keys[len(keys) - n - skip_latest: len(keys) - skip_latest]


def target() -> offsite.S3Target:
    return offsite.S3Target(load_settings().s3)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def stored_verdicts(instance: dg.DagsterInstance) -> dict[str, bool]:
    """Per-partition off-site check status as Dagster stored it (latest per partition)."""
    records = instance.event_log_storage.get_asset_check_execution_history(VALKEY.check_key, limit=50)
    verdicts: dict[str, bool] = {}
    for record in reversed(records):  # oldest first, so the latest wins
        evaluation = record.event.asset_check_evaluation if record.event else None
        if evaluation is not None and evaluation.partition is not None:
            verdicts[evaluation.partition] = evaluation.passed
    return verdicts


def test_backfilled_slots_are_copied_and_a_failed_slot_is_not(offsite_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    selection = dg.AssetSelection.assets(VALKEY.key)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert first.get_num_requested(VALKEY.key) == 0  # nothing backed up yet

    # a backfill of three old slots (within retention), plus one whose blocking check fails
    *good, bad = slots(4, skip_latest=3)
    for key in [*good, bad]:
        assert run_job("valkey_backup_job", key, instance).success
    catalog = Catalog(Path(offsite_env["CB_BACKUP_DIR"]))
    dump = catalog.require("valkey", bad).path("dump.rdb")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    assert not all(check_results(run_job("valkey_verify_job", bad, instance)).values())

    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                   cursor=first.cursor)
    requested = evaluation.get_requested_partitions(VALKEY.key)
    assert requested == set(good), f"requested {sorted(requested)}; expected {good} (not {bad})"

    # run what was requested, as the sensor's runs would
    for key in sorted(requested):
        result = run_job(VALKEY.job_name, key, instance)
        assert result.success
        assert check_results(result) == {OFFSITE_CHECK: True}
        meta = result.asset_materializations_for_node(VALKEY.name)[0].metadata
        manifest = catalog.require("valkey", key).manifest
        assert meta["bytes"].value == manifest.total_bytes > 0
        assert meta["sha256"].value == {f.name: f.sha256 for f in manifest.files}
        assert meta["bucket"].value == offsite_env["CB_S3_BUCKET"]
        assert f"cb/valkey/{key}/manifest.json" in meta["keys"].value
        assert isinstance(meta["throughput_mib_s"].value, float) and meta["seconds"].value >= 0

    s3 = target()
    assert offsite.list_offsite("valkey", s3) == sorted(good)
    for key in good:
        assert offsite.verify_offsite(catalog.require("valkey", key), s3, deep=True).ok
    assert stored_verdicts(instance) == dict.fromkeys(good, True)

    # handled: the next tick requests nothing; the bad slot is copied once a re-check passes
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=evaluation.cursor)
    assert again.get_num_requested(VALKEY.key) == 0
    assert run_job("valkey_backup_job", bad, instance).success  # a fresh backup of the slot passes its checks
    fixed = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=again.cursor)
    assert fixed.get_requested_partitions(VALKEY.key) == {bad}


def test_corrupt_remote_object_fails_the_check_for_that_slot_only(offsite_env: dict[str, str],
                                                                  s3_server: SeaweedS3,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    instance = dg.DagsterInstance.get()
    bad, good = slots(2, skip_latest=1)
    for key in (bad, good):
        assert run_job("valkey_backup_job", key, instance).success
    # the CLI copies through the Dagster job (check results recorded)
    assert cli.main(["offsite", "valkey", "--partition", bad]) == 0
    assert cli.main(["offsite", "valkey", "--partition", good, "--deep"]) == 0
    assert "offsite_complete" in capsys.readouterr().out

    # flip one byte in S3, keeping size and sha256 metadata: only a deep re-read can see it
    s3 = target()
    client = s3_server.client()
    key = s3.key("valkey", bad, "dump.rdb")
    head = client.head_object(Bucket=s3.bucket, Key=key)
    body = bytearray(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])

    assert cli.main(["offsite-verify", "valkey", "--partition", good, "--deep"]) == 0
    assert cli.main(["offsite-verify", "valkey", "--partition", bad, "--deep"]) == 1
    out = capsys.readouterr().out
    assert "differs from the manifest" in out.replace("\n", " ")
    verdicts = stored_verdicts(instance)
    assert verdicts[bad] is False and verdicts[good] is True
    # the shallow check trusts size + sha256 metadata (no bytes read); the deep setting re-reads
    assert check_results(run_job(VALKEY.verify_job_name, bad, instance)) == {OFFSITE_CHECK: True}
    monkeypatch.setenv("CB_OFFSITE_DEEP_VERIFY", "1")
    assert check_results(run_job(VALKEY.verify_job_name, bad, instance)) == {OFFSITE_CHECK: False}
    monkeypatch.delenv("CB_OFFSITE_DEEP_VERIFY")

    # a truncated object is caught without reading it (size differs)
    client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(body[:100]), Metadata=head["Metadata"])
    result = run_job(VALKEY.verify_job_name, bad, instance)
    assert check_results(result) == {OFFSITE_CHECK: False}
    # the asset itself repairs the copy: a new upload, verified
    assert cli.main(["offsite", "valkey", "--partition", bad]) == 0
    assert offsite.verify_offsite(Catalog(Path(offsite_env["CB_BACKUP_DIR"])).require("valkey", bad), s3,
                                  deep=True).ok


def test_without_s3_settings_the_copy_fails_and_says_why(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CB_S3_BUCKET", raising=False)
    key = slots(1, skip_latest=2)[0]
    assert cli.main(["offsite", "valkey", "--partition", key]) == 1
    err = capsys.readouterr().err
    assert "off-site copies are not configured" in err and "CB_S3_BUCKET" in err
    assert cli.main(["offsite", "mysql"]) == 2
    assert cli.main(["offsite-verify", "valkey", "--partition", "yesterday"]) == 2


def test_definitions_wire_every_store_and_the_sensor_runs_when_s3_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for store in ("postgres", "valkey", "neo4j", "qdrant", "opensearch"):
        assert f"{store}_offsite" in keys
        node = defs.resolve_assets_def(f"{store}_offsite")
        assert node.partitions_def == spec_for(store).partitions
        assert node.group_names_by_key[node.key] == "offsite"
        assert dg.AssetKey(f"{store}_backup") in node.asset_deps[node.key]
        assert node.automation_conditions_by_key[node.key] is not None
    monkeypatch.setenv("CB_S3_BUCKET", "cb-offsite")
    sensor = build(SOURCES).sensors[0]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.delenv("CB_S3_BUCKET")
    stopped = build(SOURCES).sensors[0]
    assert stopped.default_status == dg.DefaultSensorStatus.STOPPED
    assert "CB_S3_BUCKET was not set" in (stopped.description or "")
