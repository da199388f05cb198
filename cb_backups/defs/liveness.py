"""Dead runs: recognise a run whose process is gone, mark it failed, and free what it held.

A run that is SIGKILLed (OOM, container kill, reboot) stays STARTED in Dagster and keeps its pool
slot (`store_<name>`) and its `store` tag claim, so every later run of that store would wait for
ever. CLI runs record where they run in their tags (host, boot id, pid and the pid's start time);
runs the daemon launched as local processes are found by the pid of their RUN_START event. A run
on this host whose pid is gone, or now belongs to a process started later, is dead. Runs on other
hosts (the Docker run launcher) are left to Dagster's run monitoring.

`store_pools` lets one op hold several stores' pools (the full system backup and restore), so no two
runs touch one store at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from cb_backups.config.settings import load_settings
from cb_backups.core import process
from cb_backups.core.errors import CbBackupsError, ConfigError
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES
from cb_backups.restore.recovery import recover_restores, recover_store
from cb_backups.stores.hooks import owed_post_backups

HOST_TAG, BOOT_TAG, PID_TAG, START_TAG = process.HOST, process.BOOT, process.PID, process.START
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
SENSOR_ENV, DEFAULT_SENSOR_SECONDS = "CB_DEAD_RUNS_SENSOR_SECONDS", 60


def sensor_seconds() -> int:
    """How often the daemon's dead_runs_sensor looks (CB_DEAD_RUNS_SENSOR_SECONDS; tests use a few seconds)."""
    raw = os.environ.get(SENSOR_ENV, str(DEFAULT_SENSOR_SECONDS))
    if not raw.strip().isascii() or not raw.strip().isdigit() or not 1 <= int(raw) <= 86400:
        raise ConfigError(SENSOR_ENV, raw, "a whole number of seconds, 1 to 86400")
    return int(raw)


def pool_name(store: str) -> str:
    """The pool every op that reads or writes `store` takes (`full_system` for the full system's own ops)."""
    return store if store == FULL_SYSTEM else f"store_{store}"


WRITER_TAG_PREFIX = "cb/writes-"  # + store; dagster.yaml limits each to one run in progress


def writer_tags(stores: Iterable[str]) -> dict[str, str]:
    """Run tags that let the run queue (dagster.yaml's tag_concurrency_limits) start no two runs that touch
    one store: a store's own jobs carry its tag, the full system's carry all five. Without them the daemon
    launches a store's backup during the full system backup and the run waits inside its op for the pool."""
    return {f"{WRITER_TAG_PREFIX}{s}": "1" for s in stores}


def stores_of(store_tag: str | None) -> list[str]:
    """The stores a run with this `store` tag touches: the full system touches all of them."""
    if not store_tag:
        return []
    return [*STORE_NAMES, FULL_SYSTEM] if store_tag == FULL_SYSTEM else [store_tag]


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event else None


def dead_reason(instance: dg.DagsterInstance, record: dg.RunRecord) -> str | None:
    """Why this in-progress run is dead ("pid N gone"), or None when it is alive or cannot be judged here."""
    tags = record.dagster_run.tags
    if PID_TAG in tags:
        return process.gone(dict(tags))
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return None  # e.g. DockerRunLauncher: the daemon's run monitoring checks the container
    pid = _worker_pid(instance, record.dagster_run.run_id)
    if pid is None:
        return None  # not started yet: run monitoring's start timeout covers it
    started = process.start_epoch(pid) if Path("/proc").is_dir() else None
    if started is None and not process.pid_exists(pid):
        return f"pid {pid} gone"
    if started is not None and record.start_time and started > record.start_time + 1:
        return f"pid {pid} gone; the number now belongs to another process"
    return None


@dataclass(frozen=True)
class Holder:
    """A run that holds (or may hold) one of the stores."""

    run_id: str
    job_name: str
    partition: str | None
    pid: str
    status: str
    dead: str | None  # why it is dead, None if alive
    finished: bool = False

    def describe(self) -> str:
        slot = f" slot {self.partition}" if self.partition else ""
        return f"run {self.run_id} ({self.job_name}{slot}, pid {self.pid or '?'})"


def holders(instance: dg.DagsterInstance, stores: Iterable[str]) -> list[Holder]:
    """Runs in progress on any of `stores` (by the `store` tag), and runs holding their pools' slots."""
    stores = list(stores)
    if not stores:
        return []
    tags = sorted({*stores, FULL_SYSTEM})  # a full system run touches every store
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(
        filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={"store": tags}))}
    slot_runs: set[str] = set()
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        pools = [pool_name(s) for s in stores]
        for info in storage.get_concurrency_infos(pools).values():
            slot_runs |= {slot.run_id for slot in info.claimed_slots}
            slot_runs |= {step.run_id for step in info.pending_steps if step.assigned_timestamp}
    missing = sorted(slot_runs - set(records))
    if missing:
        records.update({r.dagster_run.run_id: r for r in instance.get_run_records(
            filters=dg.RunsFilter(run_ids=missing))})
    found = []
    for run_id in sorted(set(records) | slot_runs):
        record = records.get(run_id)
        if record is None:  # the run was deleted and left its slot behind
            found.append(Holder(run_id, "?", None, "", "deleted", None, finished=True))
            continue
        run = record.dagster_run
        finished = run.status not in IN_PROGRESS
        pid = run.tags.get(PID_TAG) or str(_worker_pid(instance, run_id) or "")
        found.append(Holder(run_id, run.job_name, run.tags.get("dagster/partition"), pid, run.status.value,
                            None if finished else dead_reason(instance, record), finished))
    return found


def free_dead_runs(instance: dg.DagsterInstance, stores: Iterable[str]) -> list[str]:
    """Mark dead runs of `stores` failed and free their slots and tag claims, then put back in service what
    they left held (restore.recovery: a killed in-place restore, Neo4j stopped by a killed dump); one line
    per thing done."""
    stores = list(stores)
    lines, dead = _free(instance, stores)
    try:
        settings = load_settings()
    except CbBackupsError as exc:  # bad settings are reported by the run itself
        return [*lines, f"could not check what dead runs left held: {exc}"] if dead else lines
    configured = set(settings.configured_stores())
    for store in sorted(dead & configured):
        lines += recover_store(settings, store)
    lines += owed_post_backups(settings, lambda _line: None, stores)
    return lines + recover_restores(settings, [s for s in stores if s in configured])


def _free(instance: dg.DagsterInstance, stores: list[str]) -> tuple[list[str], set[str]]:
    """(one line per run freed, the stores of the dead ones)."""
    lines: list[str] = []
    dead: set[str] = set()
    for holder in holders(instance, stores):
        if holder.dead:
            record = instance.get_run_record_by_id(holder.run_id)
            if record is not None:
                dead |= set(stores_of(record.dagster_run.tags.get("store")))
            if record is not None and record.dagster_run.status in IN_PROGRESS:
                # Failing the run frees its `store` tag claim (the run queue counts runs in progress).
                instance.report_run_failed(record.dagster_run, f"the run's process died ({holder.dead}); "
                                                                "marked failed by cb-backups")
            instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
            lines.append(f"freed the slot of dead run {holder.run_id} ({holder.dead})")
        elif holder.finished:
            instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
            lines.append(f"freed the slot of finished run {holder.run_id} ({holder.status})")
    return lines, dead


def live_holders(instance: dg.DagsterInstance, stores: Iterable[str], *, exclude: str | None = None) -> list[Holder]:
    return [h for h in holders(instance, stores) if not h.dead and not h.finished and h.run_id != exclude]


@contextmanager
def store_pools(context: dg.OpExecutionContext | dg.AssetExecutionContext, stores: Iterable[str], *,
                timeout: float = 3600, poll: float = 2.0) -> Iterator[None]:
    """Hold the pools of `stores` (as the per-store ops do) for the duration: one writer per store.

    Claimed in sorted order so that two holders of several pools cannot deadlock.
    """
    instance, run_id = context.instance, context.run_id
    storage = instance.event_log_storage
    config = storage.get_pool_config()
    claimed: list[str] = []
    try:
        for pool in sorted(pool_name(s) for s in stores):
            if not storage.supports_global_concurrency_limits or not _limited(storage, pool, config):
                continue
            step = f"{context.op_handle}[{pool}]"
            deadline, said = time.monotonic() + timeout, False
            while not storage.claim_concurrency_slot(pool, run_id, step).is_claimed:
                for line in free_dead_runs(instance, [pool.removeprefix("store_")]):
                    context.log.warning(line)
                live = live_holders(instance, [pool.removeprefix("store_")], exclude=run_id)
                holder = live[0].describe() if live else "another run"
                if time.monotonic() > deadline:
                    raise dg.Failure(description=f"{pool} is still held by {holder} after {timeout:.0f} s")
                if not said:
                    context.log.info(f"waiting for {holder} to release {pool}")
                    said = True
                time.sleep(poll)  # another process holds the slot; Dagster has no wait-for-slot call
            claimed.append(step)
        yield
    finally:
        for step in claimed:
            storage.free_concurrency_slot_for_step(run_id, step)


def _limited(storage: Any, pool: str, config: Any) -> bool:
    """Whether `pool` has a limit (its own, or the instance's default applied to it now)."""
    limits = {p.name for p in storage.get_pool_limits()}
    if pool not in limits and config.default_pool_limit is not None:
        storage.initialize_concurrency_limit_to_default(pool)
        return True
    return pool in limits


@dg.sensor(name="dead_runs_sensor", minimum_interval_seconds=sensor_seconds(),
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Marks runs whose process died (SIGKILL, OOM, reboot) failed and frees their store pools "
                       "and `store` tag claims, so queued runs of that store start.")
def dead_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    lines = free_dead_runs(context.instance, [*STORE_NAMES, FULL_SYSTEM])
    for line in lines:
        context.log.warning(line)
    return dg.SkipReason("; ".join(lines) or "no dead run")
