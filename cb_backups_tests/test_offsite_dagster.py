"""Off-site copies through Dagster, for real: Valkey backups, SeaweedFS S3, the automation condition."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli import app as cli
from cb_backups.cli.runs import run_job
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs
from cb_backups.defs.offsite import (
    ATTEMPT_TAG,
    BY_STORE,
    FORCE_TAG,
    FRESHNESS,
    MANIFEST_TAG,
    OFFSITE_CHECK,
    SOURCES,
    build,
    manifest_sha,
)
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite.state import STALE, VERIFIED, offsite_state
from cb_backups.report.build import offsite_seen
from cb_backups_tests.servers.s3 import SeaweedS3
from cb_backups_tests.test_notifications import Receiver

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


class Sensor:
    """offsite_automation_sensor evaluated against the instance, its cursor kept between ticks."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance, self.cursor = instance, None
        self.sensor = next(s for s in defs.sensors or [] if s.name == "offsite_automation_sensor")

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=defs)
        result = self.sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        self.cursor = result.cursor
        return [r for r in result.run_requests or [] if r.job_name == VALKEY.job_name]

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """Execute a requested run as the daemon would launch it (same partition and tags)."""
        job = defs.resolve_job_def(request.job_name or "")
        return job.execute_in_process(instance=self.instance, partition_key=request.partition_key,
                                      tags=request.tags, raise_on_error=False)


def test_backfilled_and_re_taken_slots_are_copied_and_a_failed_slot_is_not(offsite_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    sensor = Sensor(instance)
    assert sensor.tick() == []  # nothing backed up yet

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

    requests = sensor.tick()
    requested = {r.partition_key for r in requests}
    assert requested == set(good), f"requested {sorted(requested)}; expected {good} (not {bad})"
    assert {r.tags[ATTEMPT_TAG] for r in requests} == {"1"}

    # run what was requested, as the sensor's runs would
    for request in requests:
        key = request.partition_key or ""
        result = sensor.run(request)
        assert result.success
        assert check_results(result) == {OFFSITE_CHECK: True}
        meta = result.asset_materializations_for_node(VALKEY.name)[0].metadata
        manifest = catalog.require("valkey", key).manifest
        assert meta["manifest_sha256"].value == request.tags[MANIFEST_TAG]
        assert request.tags[MANIFEST_TAG] == manifest_sha(catalog.require("valkey", key))
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
    assert sensor.tick() == []
    assert run_job("valkey_backup_job", bad, instance).success  # a fresh backup of the slot passes its checks
    assert {r.partition_key for r in sensor.tick()} == {bad}

    # a slot backed up again right after its copy is copied again (the manifest differs), at once
    redone = good[0]
    old_sha = manifest_sha(catalog.require("valkey", redone))
    assert run_job("valkey_backup_job", redone, instance).success
    new_sha = manifest_sha(catalog.require("valkey", redone))
    assert new_sha != old_sha
    again = [r for r in sensor.tick() if r.partition_key == redone]
    assert len(again) == 1 and again[0].tags[MANIFEST_TAG] == new_sha
    # meanwhile the slot's off-site state is stale: the passing check was about the old manifest
    copies, checks = offsite_seen(instance, VALKEY.key, VALKEY.check_key, 0)
    assert offsite_state(new_sha, copies[redone], checks[redone]) == STALE
    assert sensor.run(again[0]).success
    copies, checks = offsite_seen(instance, VALKEY.key, VALKEY.check_key, 0)
    assert offsite_state(new_sha, copies[redone], checks[redone]) == VERIFIED
    assert offsite.remote_sha256(s3, s3.key("valkey", redone, "manifest.json")) == new_sha


def test_a_failed_copy_is_retried_with_backoff_and_notified(offsite_env: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    instance = dg.DagsterInstance.get()
    key = slots(1, skip_latest=2)[0]
    assert run_job("valkey_backup_job", key, instance).success
    receiver = Receiver()
    monkeypatch.setenv("CB_WEBHOOK_URL", receiver.url)
    try:
        # S3 "down": nothing listens there
        monkeypatch.setenv("CB_S3_ENDPOINT_URL", "http://127.0.0.1:9")
        sensor = Sensor(instance)
        first = sensor.tick()
        assert [r.tags[ATTEMPT_TAG] for r in first] == ["1"]
        failed = sensor.run(first[0])
        assert not failed.success
        assert sensor.tick() == []  # the next attempt waits offsite.retry_minutes[0] (5 min by default)

        # no wait, notify after two failures (config), so the test needs no clock
        config = tmp_path / "cb.yaml"
        config.write_text("offsite:\n  retry_minutes: [0]\n  notify_after: 2\n")
        monkeypatch.setenv("CB_CONFIG", str(config))
        second = sensor.tick()
        assert [r.tags[ATTEMPT_TAG] for r in second] == ["2"] and second[0].run_key != first[0].run_key
        assert not sensor.run(second[0]).success
        assert receiver.bodies == []
        third = sensor.tick()
        assert [r.tags[ATTEMPT_TAG] for r in third] == ["3"]
        assert len(receiver.bodies) == 1
        text = receiver.bodies[0]["text"]
        assert f"valkey slot {key} has no off-site copy" in text and "2 attempt(s) failed" in text
        assert receiver.url not in json.dumps(receiver.bodies)
        sensor.tick()
        assert len(receiver.bodies) == 1  # told once per manifest

        # S3 back: the next attempt lands and the failures stop counting
        monkeypatch.setenv("CB_S3_ENDPOINT_URL", offsite_env["CB_S3_ENDPOINT_URL"])
        assert sensor.run(third[0]).success
        assert sensor.tick() == []
        catalog = Catalog(Path(offsite_env["CB_BACKUP_DIR"]))
        assert offsite.verify_offsite(catalog.require("valkey", key), target()).ok

        # a failing offsite_complete (an object deleted in S3) is repaired by a forced re-copy
        s3 = target()
        s3.client.delete_object(Bucket=s3.bucket, Key=s3.key("valkey", key, "dump.rdb"))
        assert check_results(run_job(VALKEY.verify_job_name, key, instance)) == {OFFSITE_CHECK: False}
        repair = sensor.tick()
        assert len(repair) == 1 and repair[0].tags.get(FORCE_TAG) == "1"
        assert check_results(sensor.run(repair[0])) == {OFFSITE_CHECK: True}
        assert offsite.verify_offsite(catalog.require("valkey", key), s3, deep=True).ok
    finally:
        receiver.close()


def test_an_s3_outage_heals_within_a_tick_of_s3_coming_back(offsite_env: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    instance = dg.DagsterInstance.get()
    key = slots(1, skip_latest=3)[0]
    assert run_job("valkey_backup_job", key, instance).success
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # S3 "down": nothing listens there
    sensor = Sensor(instance)
    first = [r for r in sensor.tick() if r.partition_key == key]
    assert len(first) == 1 and not sensor.run(first[0]).success
    assert [r for r in sensor.tick() if r.partition_key == key] == []  # down, and the 5-minute backoff waits
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", offsite_env["CB_S3_ENDPOINT_URL"])
    healed = [r for r in sensor.tick() if r.partition_key == key]  # no clock moved: S3 was seen coming back
    assert [r.tags[ATTEMPT_TAG] for r in healed] == ["2"]
    assert sensor.run(healed[0]).success
    catalog = Catalog(Path(offsite_env["CB_BACKUP_DIR"]))
    assert offsite.verify_offsite(catalog.require("valkey", key), target()).ok
    assert [r for r in sensor.tick() if r.partition_key == key] == []


def test_offsite_freshness_counts_only_verified_current_copies(offsite_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    key = slots(1, skip_latest=1)[0]
    assert run_job("valkey_backup_job", key, instance).success

    def freshness() -> dg.AssetCheckEvaluation:
        result = defs.resolve_job_def("offsite_freshness_job").execute_in_process(instance=instance)
        return next(e for e in result.get_asset_check_evaluations()
                    if e.asset_key == VALKEY.key and e.check_name == FRESHNESS)

    assert not freshness().passed  # never copied
    assert run_job(VALKEY.job_name, key, instance).success
    fresh = freshness()
    assert fresh.passed and fresh.metadata["partition"].value == key
    assert run_job("valkey_backup_job", key, instance).success  # re-taken: the copy in S3 is now stale
    stale = freshness()
    assert not stale.passed and "no verified off-site copy" in (stale.description or "")


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
    monkeypatch.setenv("CB_S3_BUCKET", "cb-offsite")
    sensor = build(SOURCES).sensors[0]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.delenv("CB_S3_BUCKET")
    stopped = build(SOURCES).sensors[0]
    assert stopped.default_status == dg.DefaultSensorStatus.STOPPED
    assert "CB_S3_BUCKET was not set" in (stopped.description or "")


def test_rotating_deep_subset_finds_a_flipped_byte_and_records_coverage(offsite_env: dict[str, str],
                                                                       s3_server: SeaweedS3) -> None:
    from cb_backups.offsite.subset import SUBSET_CHECK

    instance = dg.DagsterInstance.get()
    keys = slots(2, skip_latest=1)
    for key in keys:
        assert run_job("valkey_backup_job", key, instance).success
        assert run_job(VALKEY.job_name, key, instance).success
    s3, client = target(), s3_server.client()
    key = s3.key("valkey", keys[0], "dump.rdb")
    head = client.head_object(Bucket=s3.bucket, Key=key)
    body = bytearray(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])

    job = defs.resolve_job_def("offsite_deep_subset_job")
    seen: list[dg.AssetCheckEvaluation] = []
    for _ in range(2):  # default fraction 0.05 of two objects: one a run, least recently read first
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        seen += [e for e in result.get_asset_check_evaluations()
                 if e.asset_key == VALKEY.key and e.check_name == SUBSET_CHECK]
    assert seen[0].metadata["objects_read"].value == 1  # not the whole history
    failed = [e for e in seen if not e.passed]
    assert failed and all(keys[0] in (e.description or "") and keys[1] not in (e.description or "") for e in failed)
    assert "1 failing" in str(seen[-1].metadata["coverage"].value)  # the second run re-read it and the rest
    assert seen[-1].metadata["never_read"].value == 1  # only the damaged one has never verified
    assert Catalog(Path(offsite_env["CB_BACKUP_DIR"])).offsite_coverage("valkey").is_file()
