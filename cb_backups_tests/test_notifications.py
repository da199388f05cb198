"""Failure notifications for real: failed runs and failed checks POSTed to a local HTTP receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from cb_backups.cli.runs import run_job
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs
from cb_backups.defs.notifications import WebhookFailed, check_failure_webhook_sensor, run_failure_webhook_sensor

TOKEN_PATH = "/services/T000/B000/s3cr3t-t0k3n"


class Receiver:
    """A Slack-like webhook on 127.0.0.1: records every JSON body; answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{TOKEN_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv("CB_WEBHOOK_URL", r.url)
    monkeypatch.setenv("CB_UI_URL", "http://127.0.0.1:3000")
    try:
        yield r
    finally:
        r.close()


def failure_context(result: Any, instance: dg.DagsterInstance) -> dg.RunFailureSensorContext:
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_webhook_sensor", dagster_event=result.get_run_failure_event(),
        dagster_instance=instance, dagster_run=result.dagster_run,
    ).for_run_failure()


def success_context(result: Any, instance: dg.DagsterInstance) -> dg.RunStatusSensorContext:
    event = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
    return dg.build_run_status_sensor_context(
        sensor_name="check_failure_webhook_sensor", dagster_event=event, dagster_instance=instance,
        dagster_run=result.dagster_run)


def test_failed_backup_run_posts_job_store_partition_and_error(receiver: Receiver, cb_env: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_POSTGRES_URL", "postgresql://codingbrain@127.0.0.1:1/codingbrain")
    instance = dg.DagsterInstance.get()
    key = spec_for("postgres").partitions.get_last_partition_key()
    result = run_job("postgres_backup_job", key, instance)
    assert not result.success
    run_failure_webhook_sensor(failure_context(result, instance))
    assert len(receiver.bodies) == 1 and receiver.paths == [TOKEN_PATH]
    body = receiver.bodies[0]
    assert set(body) == {"text", "blocks"}
    text = body["text"]
    assert "postgres_backup_job" in text and "store postgres" in text and f"partition {key}" in text
    assert "127.0.0.1:1" in text  # the error names the unreachable server
    fields = " ".join(f["text"] for f in body["blocks"][1]["fields"])
    assert "postgres_backup_job" in fields and key in fields and result.run_id in fields
    assert body["blocks"][-1]["elements"][0]["text"].startswith(f"<http://127.0.0.1:3000/runs/{result.run_id}|")
    assert cb_env["CB_POSTGRES_PASSWORD"] not in json.dumps(body)

    # a refusing webhook fails the tick (Dagster shows the error); the URL's token is never shown
    receiver.status = 500
    with pytest.raises(WebhookFailed) as info:
        run_failure_webhook_sensor(failure_context(result, instance))
    assert "HTTP 500" in str(info.value) and "127.0.0.1" in str(info.value)
    assert "s3cr3t-t0k3n" not in str(info.value)

    # no webhook configured: nothing is sent, the sensor says why
    monkeypatch.delenv("CB_WEBHOOK_URL")
    sent = len(receiver.bodies)
    skipped = run_failure_webhook_sensor(failure_context(result, instance))
    assert isinstance(skipped, dg.SkipReason) and "no webhook configured" in (skipped.skip_message or "")
    assert len(receiver.bodies) == sent


def test_corrupted_backup_names_the_failed_checks(receiver: Receiver, cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    key = spec_for("valkey").partitions.get_last_partition_key()
    assert run_job("valkey_backup_job", key, instance).success
    path = Catalog(Path(cb_env["CB_BACKUP_DIR"])).require("valkey", key).path("dump.rdb")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_job("valkey_verify_job", key, instance)
    assert not result.success  # blocking checks failed
    run_failure_webhook_sensor(failure_context(result, instance))
    text = receiver.bodies[-1]["text"]
    assert "valkey_verify_job" in text and "store valkey" in text and f"partition {key}" in text
    assert f"valkey_backup `checksum` partition {key}" in text and "sha256" in text
    assert f"valkey_backup `integrity` partition {key}" in text
    assert "artifact_present" not in text  # only the failed checks


def test_failed_check_in_a_successful_run_is_posted(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_DRILL_SEVERITY", "WARN")
    instance = dg.DagsterInstance.get()
    key = spec_for("valkey").partitions.get_last_partition_key()
    assert key is not None
    job = defs.resolve_job_def("restore_drills_job").get_subset(
        asset_check_selection={dg.AssetCheckKey(dg.AssetKey("valkey_backup"), "restore_drill")})
    result = job.execute_in_process(instance=instance, tags={"dagster/partition": key, "store": "valkey"},
                                    raise_on_error=False)
    assert result.success  # a non-blocking check failed: no backup to drill
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    check_failure_webhook_sensor(success_context(result, instance))
    assert len(receiver.bodies) == 1
    text = receiver.bodies[0]["text"]
    assert "1 asset check(s) failed in restore_drills_job" in text and result.run_id in text
    assert f"valkey_backup `restore_drill` partition {key} (store valkey)" in text

    # a successful run without failed checks sends nothing
    good = run_job("valkey_backup_job", key, instance)
    assert good.success
    skipped = check_failure_webhook_sensor(success_context(good, instance))
    assert isinstance(skipped, dg.SkipReason) and "no failed checks" in (skipped.skip_message or "")
    assert len(receiver.bodies) == 1


def test_sensors_are_running_by_default() -> None:
    sensors = {s.name: s for s in defs.sensors}
    for name in ("run_failure_webhook_sensor", "check_failure_webhook_sensor"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
