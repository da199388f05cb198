"""Failure notifications: a Slack-compatible JSON POST to CB_WEBHOOK_URL for failed runs and failed checks.

* `run_failure_webhook_sensor` (a run failure sensor): names the job, the store tag,
  the partition and the error of every failed run in this code location.
  The message also lists the run's failed asset checks (a failed blocking check fails
  the run, so a corrupted backup arrives here).
* `check_failure_webhook_sensor` (a run status sensor on SUCCESS): the failed asset
  checks of runs that succeeded anyway (non-blocking checks: restore drills, off-site
  checks, warnings). Run status sensors keep Dagster's own cursor over every run, so no
  evaluation is dropped when several arrive between ticks (unlike `@asset_sensor`), and
  it works on run-sharded SQLite storage, where a raw storage-id cursor over
  ASSET_CHECK_EVALUATION events is refused.

Slots whose off-site copy failed several times in a row are reported by
`offsite_automation_sensor` (defs/offsite.py) through `offsite_missing_payload`.

Nothing is sent when no webhook is configured (the sensors skip, saying so). The
webhook URL is a secret: it never appears in messages or logs, and every text sent
passes through the one redactor (config/redact.py).
"""

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from cb_backups.config.redact import redactor
from cb_backups.config.settings import configured_secrets, load_settings
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.specs import STORES
from cb_backups.report import history

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


def _run_link(run_id: str) -> list[dict[str, Any]]:
    link = ui_link(f"/runs/{run_id}")
    if not link:
        return []
    return [{"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open the run in Dagster>"}]}]


def _clean(payload: dict[str, Any]) -> dict[str, Any]:
    redact = redactor(configured_secrets())
    return json.loads(redact(json.dumps(payload)))


def _check_lines(failures: Sequence[history.CheckRun]) -> list[str]:
    lines = []
    for f in failures[:MAX_LISTED]:
        store = _store_of(f.asset)
        part = f" partition {f.partition}" if f.partition else ""
        lines.append(f"• {f.asset} `{f.check}`{part} (store {store or '-'}): {f.description or 'failed'}")
    if len(failures) > MAX_LISTED:
        lines.append(f"… and {len(failures) - MAX_LISTED} more")
    return lines


def run_failure_payload(job: str, run_id: str, store: str | None, partition: str | None, error: str,
                        checks: Sequence[history.CheckRun] = ()) -> dict[str, Any]:
    where = ", ".join(p for p in (f"store {store}" if store else "", f"partition {partition}" if partition else "")
                      if p)
    text = f"cb-backups: run of {job} failed" + (f" ({where})" if where else "") + f": {error}"
    fields = [{"type": "mrkdwn", "text": f"*Job*\n{job}"},
              {"type": "mrkdwn", "text": f"*Store*\n{store or '-'}"},
              {"type": "mrkdwn", "text": f"*Partition*\n{partition or '-'}"},
              {"type": "mrkdwn", "text": f"*Run*\n{run_id}"}]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Backup run failed: {job}"[:150]}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Error*\n```{error[:2500]}```"}},
    ]
    if checks:
        lines = _check_lines(checks)
        text += "\nFailed checks:\n" + "\n".join(lines)
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": ("*Failed checks*\n" + "\n".join(lines))[:2900]}})
    blocks += _run_link(run_id)
    return _clean({"text": text, "blocks": blocks})


def check_failure_payload(failures: Sequence[history.CheckRun], job: str, run_id: str) -> dict[str, Any]:
    lines = _check_lines(failures)
    title = f"cb-backups: {len(failures)} asset check(s) failed in {job}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
    ]
    blocks += _run_link(run_id)
    return _clean({"text": f"{title} (run {run_id}):\n" + "\n".join(lines), "blocks": blocks})


def offsite_missing_payload(lines: Sequence[str]) -> dict[str, Any]:
    """Slots whose off-site copy failed `offsite.notify_after` times in a row (from offsite_automation_sensor)."""
    listed = [f"• {line}" for line in lines[:MAX_LISTED]]
    if len(lines) > MAX_LISTED:
        listed.append(f"… and {len(lines) - MAX_LISTED} more")
    title = f"cb-backups: {len(lines)} slot(s) without an off-site copy"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(listed)[:2900]}},
    ]
    return _clean({"text": f"{title}:\n" + "\n".join(listed), "blocks": blocks})


def failed_checks_of(instance: dg.DagsterInstance, run_id: str) -> list[history.CheckRun]:
    return [e for e in history.run_check_evaluations(instance, run_id) if e.status == "failed"]


def failure_message(context: dg.RunFailureSensorContext) -> str:
    """The failed steps' messages (a dg.Failure's description, else the error), from the sensor context's
    public step failure events; else the run's own failure message."""
    messages = []
    for event in context.get_step_failure_events():
        text = history.step_failure_text(event)
        if text:
            messages.append(f"{event.step_key}: {text}")
    fallback = (context.failure_event.message or "").strip() if context.failure_event is not None else ""
    return "; ".join(messages) or fallback or "run failed"


@dg.run_failure_sensor(
    name="run_failure_webhook_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POST a Slack-compatible message to CB_WEBHOOK_URL for every failed run (job, store, partition, "
                "error, failed checks). Skips when no webhook is configured.",
)
def run_failure_webhook_sensor(context: dg.RunFailureSensorContext):  # type: ignore[no-untyped-def]
    run = context.dagster_run
    url = webhook_url()
    if not url:
        return dg.SkipReason(f"run {run.run_id} failed; no webhook configured (set CB_WEBHOOK_URL)")
    error = failure_message(context)
    checks = failed_checks_of(context.instance, run.run_id)
    payload = run_failure_payload(run.job_name, run.run_id, run.tags.get("store"), run.tags.get("dagster/partition"),
                                  error, checks)
    post(url, payload)  # raises WebhookFailed: the tick fails and shows why
    context.log.info(f"notified the webhook of failed run {run.run_id} ({run.job_name})")
    return None


@dg.run_status_sensor(
    name="check_failure_webhook_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POST a Slack-compatible message to CB_WEBHOOK_URL listing the failed asset checks of every run "
                "that succeeded anyway (non-blocking checks: restore drills, off-site checks, warnings). Failed "
                "checks of failed runs are in the run failure message. Skips when no webhook is configured.",
)
def check_failure_webhook_sensor(context: dg.RunStatusSensorContext):  # type: ignore[no-untyped-def]
    run = context.dagster_run
    failed = failed_checks_of(context.instance, run.run_id)
    if not failed:
        return dg.SkipReason(f"run {run.run_id}: no failed checks")
    url = webhook_url()
    if not url:
        return dg.SkipReason(f"run {run.run_id}: {len(failed)} failed check(s); no webhook configured "
                             "(set CB_WEBHOOK_URL)")
    post(url, check_failure_payload(failed, run.job_name, run.run_id))
    context.log.info(f"notified the webhook of {len(failed)} failed check(s) in run {run.run_id}")
    return None


defs = dg.Definitions(sensors=[run_failure_webhook_sensor, check_failure_webhook_sensor])
