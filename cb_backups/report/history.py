"""The ONE module that touches Dagster APIs that are not public, pinned to dagster 1.13.27.

Dagster has no public API (in 1.13) for an asset check's execution history or
for one run's events. The report and the failure notifications need both, so
they go through this module only:

* `check_history`: every execution of one asset check, newest first, paged in
  bulk (`event_log_storage.get_asset_check_execution_history`).
* `run_check_evaluations` / `run_failure_message`: one run's asset check
  evaluations and failed steps' messages (`instance.all_logs`, not public).

On any other Dagster version these warn once (`DagsterVersionWarning`) and
still try; `cb_backups_tests/test_report.py` exercises each against a real
instance, so an upgrade shows here first.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

PINNED_DAGSTER = "1.13.27"
_warned: set[str] = set()


class DagsterVersionWarning(UserWarning):
    """cb_backups.history was written against another Dagster version."""


def version_guard(version: str | None = None) -> bool:
    """True on the pinned version; otherwise warn (once per version) and return False."""
    found = version if version is not None else dg.__version__
    if found == PINNED_DAGSTER:
        return True
    if found not in _warned:
        _warned.add(found)
        warnings.warn(
            f"cb_backups.history uses non-public Dagster APIs checked on dagster {PINNED_DAGSTER}, but dagster "
            f"{found} is installed: asset check history in reports and check-failure notifications may be wrong. "
            f"Pin dagster=={PINNED_DAGSTER} or re-run cb_backups_tests/test_report.py.",
            DagsterVersionWarning, stacklevel=3)
    return False


def plain(value: Any) -> Any:
    """A MetadataValue (or raw value) as plain JSON-able data."""
    if isinstance(value, dg.TableMetadataValue):  # e.g. a backup's inventory: its rows as plain dicts
        return [plain(dict(r.data)) for r in value.records]
    if isinstance(value, dg.TableRecord):
        return plain(dict(value.data))
    raw = getattr(value, "value", value)
    if isinstance(raw, (str, int, float, bool)) or raw is None:
        return raw
    if isinstance(raw, Mapping):
        return {str(k): plain(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [plain(v) for v in raw]
    return str(raw)


def plain_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: plain(v) for k, v in (metadata or {}).items()}


@dataclass(frozen=True)
class CheckRun:
    """One execution of one asset check (for one partition, when the check is partitioned)."""

    asset: str  # asset key as a "/"-joined string
    check: str
    partition: str | None
    status: str  # "passed" | "failed" | "planned"
    timestamp: float
    run_id: str
    description: str = ""
    severity: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return {"passed": True, "failed": False}.get(self.status)


def _from_evaluation(ev: Any, timestamp: float, run_id: str, partition: str | None = None) -> CheckRun:
    return CheckRun(
        asset=ev.asset_key.to_user_string(), check=ev.check_name,
        partition=ev.partition if ev.partition is not None else partition,
        status="passed" if ev.passed else "failed", timestamp=timestamp, run_id=run_id,
        description=ev.description or "", severity=getattr(ev.severity, "value", str(ev.severity)),
        metadata=plain_metadata(ev.metadata))


def _from_record(record: Any) -> CheckRun:
    event = record.event
    evaluation = event.asset_check_evaluation if event is not None else None
    timestamp = event.timestamp if event is not None else record.create_timestamp
    if evaluation is not None:
        return _from_evaluation(evaluation, timestamp, record.run_id, record.partition)
    return CheckRun(asset=record.key.asset_key.to_user_string(), check=record.key.name, partition=record.partition,
                    status="planned", timestamp=timestamp, run_id=record.run_id)


def check_history(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, since: float | None = None,
                  page: int = 2000, details: bool = False) -> list[CheckRun]:
    """Every execution of `check_key` evaluated at or after `since` (epoch seconds), newest first.

    Reads the asset check executions table in one query and deserializes the stored
    evaluation event (slow: Dagster's serdes) only where it is needed: failed
    executions, and every execution when `details` (their metadata, e.g. a drill's
    RTO). Passed executions then carry no description or metadata. Falls back to
    the paged storage API when the table cannot be read directly.
    """
    version_guard()
    try:
        return _check_history_sql(instance, check_key, since, details)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        if type(exc).__name__ not in _fallback_logged:
            _fallback_logged.add(type(exc).__name__)
            warnings.warn(f"cb_backups.report.history: direct read of asset check history unavailable ({exc}); "
                          "using the slower paged API", DagsterVersionWarning, stacklevel=2)
    return _check_history_paged(instance, check_key, since, page)


_fallback_logged: set[str] = set()


def _check_history_paged(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, since: float | None,
                         page: int) -> list[CheckRun]:
    storage = instance.event_log_storage
    found: list[CheckRun] = []
    cursor: int | None = None
    while True:
        records = storage.get_asset_check_execution_history(check_key, limit=page, cursor=cursor)
        if not records:
            break
        for record in records:
            run = _from_record(record)
            # no early stop: ids follow creation, not evaluation, so an older row may hold a newer evaluation
            if since is None or run.timestamp >= (since if run.status != "planned" else int(since)):
                found.append(run)
        if len(records) < page:
            break
        cursor = records[-1].id
    return found


def _check_history_sql(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, since: float | None,
                       details: bool) -> list[CheckRun]:
    from datetime import UTC, datetime

    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as table
    from dagster._core.storage.sqlalchemy_compat import db_fetch_mappings, db_select

    storage: Any = instance.event_log_storage
    if not hasattr(storage, "index_connection"):
        raise NotImplementedError(f"{type(storage).__name__} has no SQL index")
    query = db_select([table.c.id, table.c.run_id, table.c.execution_status, table.c.evaluation_event,
                       table.c.evaluation_event_timestamp, table.c.create_timestamp, table.c.partition]).where(
        (table.c.asset_key == check_key.asset_key.to_string()) & (table.c.check_name == check_key.name))
    if since is not None:
        # `since` is compared with each execution's own timestamp (its evaluation's, else its creation's), the
        # one `CheckRun.timestamp` carries. SQLite keeps `create_timestamp` to the whole second only, so a
        # filter on it alone drops or keeps executions of the same second by chance.
        moment = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)
        query = query.where((table.c.evaluation_event_timestamp >= moment) | (
            table.c.evaluation_event_timestamp.is_(None) & (table.c.create_timestamp >= moment.replace(microsecond=0))))
    query = query.order_by(table.c.id.desc())
    with storage.index_connection() as conn:
        rows = db_fetch_mappings(conn, query)
    asset = check_key.asset_key.to_user_string()
    found: list[CheckRun] = []
    for row in rows:
        status = row["execution_status"]
        if status == "FAILED" or details or status not in ("SUCCEEDED", "FAILED"):
            found.append(_from_record(AssetCheckExecutionRecord.from_db_row(row, key=check_key)))
            continue
        moment = row["evaluation_event_timestamp"] or row["create_timestamp"]
        found.append(CheckRun(asset=asset, check=check_key.name, partition=row["partition"], status="passed",
                              timestamp=moment.replace(tzinfo=UTC).timestamp(), run_id=row["run_id"]))
    return found


def run_check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[CheckRun]:
    """Every asset check evaluation recorded by one run, in order."""
    version_guard()
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [_from_evaluation(e.asset_check_evaluation, e.timestamp, e.run_id)
            for e in entries if e.asset_check_evaluation is not None]


def step_failure_text(event: Any) -> str:
    """A step failure event's message: a dg.Failure's description, else the error's message."""
    data = event.step_failure_data
    user = data.user_failure_data
    text = user.description if user is not None and user.description else (
        data.error.message if data.error is not None else "")
    return text.strip()


def run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The failed steps' messages of a run (a dg.Failure's description, else the error), or the run's failure."""
    version_guard()
    messages: list[str] = []
    fallback = ""
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE,
                                                    dg.DagsterEventType.RUN_FAILURE}):
        event = entry.dagster_event
        if event is None:
            continue
        if event.is_step_failure and event.step_failure_data is not None:
            text = step_failure_text(event)
            if text:
                messages.append(f"{event.step_key}: {text}")
        elif event.message:
            fallback = event.message.strip()
    return "; ".join(messages) or fallback or "run failed"
