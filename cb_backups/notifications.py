"""Failure notifications: a Slack-compatible JSON POST to CB_WEBHOOK_URL for failed runs and failed checks.

* `run_failure_webhook_sensor` (a run failure sensor): names the job, the store tag,
  the partition and the error of every failed run in this code location.
* `check_failure_webhook_sensor`: every failed asset check evaluation (a backup slot
  check, an off-site check, a restore drill, freshness), read from the event log with a
  storage-id cursor, so none is dropped when several arrive between ticks; one message
  per tick lists them all. The first tick looks back `CHECK_LOOKBACK_SECONDS`.

Nothing is sent when no webhook is configured (the sensors skip, saying so). The
webhook URL is a secret: it never appears in messages or logs, and every text sent
passes through the report's redactor.
"""

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from cb_backups import history
from cb_backups.errors import CbBackupsError
from cb_backups.report import redactor
from cb_backups.settings import load_settings
from cb_backups.specs import STORES

CHECK_LOOKBACK_SECONDS = 24 * 3600
MAX_LISTED = 15  # failures listed in one message; the rest are counted
TIMEOUT = 10.0


class WebhookFailed(CbBackupsError):
    """The webhook did not accept the message (the URL is never shown: it carries a token)."""


def webhook_url() -> str | None:
    return load_settings().webhook_url or None


def ui_link(path: str) -> str | None:
    base = os.environ.get("CB_UI_URL", "").rstrip("/")
    return f"{base}{path}" if base else None


def post(url: str, payload: dict[str, Any], timeout: float = TIMEOUT) -> int:
    """POST `payload` as JSON; returns the HTTP status, raises WebhookFailed (host only) otherwise."""
    host = urlsplit(url).hostname or "?"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookFailed(f"webhook at {host} refused the message: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookFailed(f"webhook at {host} unreachable: {reason}") from None


def _store_of(asset: str) -> str:
    return next((s.name for s in STORES if asset.startswith(f"{s.name}_")), "")


def _clean(payload: dict[str, Any]) -> dict[str, Any]:
    redact = redactor()
    return json.loads(redact(json.dumps(payload)))


def run_failure_payload(job: str, run_id: str, store: str | None, partition: str | None, error: str
                        ) -> dict[str, Any]:
    where = ", ".join(p for p in (f"store {store}" if store else "", f"partition {partition}" if partition else "")
                      if p)
    text = f"cb-backups: run of {job} failed" + (f" ({where})" if where else "") + f": {error}"
    fields = [{"type": "mrkdwn", "text": f"*Job*\n{job}"},
              {"type": "mrkdwn", "text": f"*Store*\n{store or '-'}"},
              {"type": "mrkdwn", "text": f"*Partition*\n{partition or '-'}"},
              {"type": "mrkdwn", "text": f"*Run*\n{run_id}"}]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Backup run failed: {job}"}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*\n```{error[:2500]}```"}},
    ]
    link = ui_link(f"/runs/{run_id}")
    if link:
        blocks.append({"type": "context",
                       "elements": [{"type": "mrkdwn", "text": f"<{link}|Open the run in Dagster>"}]})
    return _clean({"text": text, "blocks": blocks})


def check_failure_payload(failures: Sequence[history.CheckRun]) -> dict[str, Any]:
    lines = []
    for f in failures[:MAX_LISTED]:
        store = _store_of(f.asset)
        part = f" partition {f.partition}" if f.partition else ""
        lines.append(f"• {f.asset} `{f.check}`{part} (store {store or '-'}, run {f.run_id[:8]}): "
                     f"{f.description or 'failed'}")
    more = len(failures) - MAX_LISTED
    if more > 0:
        lines.append(f"… and {more} more")
    title = f"cb-backups: {len(failures)} asset check(s) failed"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
    ]
    link = ui_link("/asset-groups")
    if link:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open Dagster>"}]})
    return _clean({"text": title + ":\n" + "\n".join(lines), "blocks": blocks})


def run_error_text(context: dg.RunFailureSensorContext) -> str:
    messages = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data is None:
            continue
        user = data.user_failure_data
        text = user.description if user is not None and user.description else (
            data.error.message if data.error is not None else "")
        if text.strip():
            messages.append(f"{event.step_key}: {text.strip()}")
    if not messages:
        messages.append((context.failure_event.message or "run failed").strip())
    return "; ".join(messages)


@dg.run_failure_sensor(
    name="run_failure_webhook_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POST a Slack-compatible message to CB_WEBHOOK_URL for every failed run (job, store, partition, "
                "error). Skips when no webhook is configured.",
)
def run_failure_webhook_sensor(context: dg.RunFailureSensorContext):  # type: ignore[no-untyped-def]
    url = webhook_url()
    run = context.dagster_run
    if not url:
        return dg.SkipReason(f"run {run.run_id} failed; no webhook configured (set CB_WEBHOOK_URL)")
    payload = run_failure_payload(run.job_name, run.run_id, run.tags.get("store"), run.tags.get("dagster/partition"),
                                  run_error_text(context))
    post(url, payload)
    context.log.info(f"notified the webhook of failed run {run.run_id} ({run.job_name})")
    return None


@dg.sensor(
    name="check_failure_webhook_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POST a Slack-compatible message to CB_WEBHOOK_URL listing failed asset checks since the last tick "
                "(storage-id cursor). Skips when no webhook is configured.",
)
def check_failure_webhook_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    cursor = int(context.cursor) if context.cursor else None
    since = None if cursor else time.time() - CHECK_LOOKBACK_SECONDS
    failed: list[history.CheckRun] = []
    for _ in range(20):  # at most 20 pages per tick; the cursor continues next tick
        evaluations, new_cursor = history.check_evaluations_after(context.instance, cursor, limit=500, since=since)
        failed += [e for e in evaluations if e.status == "failed"]
        cursor = new_cursor
        if len(evaluations) < 500:
            break
    url = webhook_url()
    if not url:
        if cursor is not None:
            context.update_cursor(str(cursor))
        return dg.SkipReason(f"{len(failed)} failed check(s); no webhook configured (set CB_WEBHOOK_URL)")
    if failed:
        post(url, check_failure_payload(failed))  # raises: the cursor stays, the next tick retries
    if cursor is not None:
        context.update_cursor(str(cursor))
    return dg.SkipReason(f"notified the webhook of {len(failed)} failed check(s)" if failed else "no failed checks")


defs = dg.Definitions(sensors=[run_failure_webhook_sensor, check_failure_webhook_sensor])
