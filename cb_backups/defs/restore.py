"""Restore jobs: one per store (one factory) and the full system restore, launchable from the UI.

Each run records what it restored as an AssetObservation on `<store>_backup` (restored
partition, counts, measured RTO against the runbook's, safety backup path), so the
restore history sits next to the backups in the UI. Runs carry the `store` tag (one run
per store at a time) and the ops use the store's pool.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Progress, Target
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES, STORES, StoreSpec, spec_for
from cb_backups.defs.liveness import free_dead_runs, store_pools, writer_tags
from cb_backups.defs.progress import dagster_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.defs.wal import point_in_time_restore
from cb_backups.restore.execute import RestoreResult, execute_full_restore, execute_restore
from cb_backups.restore.plan import LATEST, plan_full_restore, plan_restore

TARGETS = {"scratch": "scratch", "in_place": "in_place", "in-place": "in_place"}

# Extra progress sinks for in-process runs (the CLI's progress display); empty in the daemon.
PROGRESS_LISTENERS: list[Progress] = []


class RestoreConfig(dg.Config):
    """Launchpad config. An in-place restore needs `confirm` set to the store's name."""

    backup: str = LATEST  # a partition key, "latest-verified" or "safety:<stamp>"
    source: str = "local"  # "local" | "offsite"
    target: str = "scratch"  # "scratch" | "in_place"
    overrides: dict[str, str] = {}  # noqa: RUF012 (pydantic copies it)  e.g. dbname, suffix, prefix, collections, indices, uri, safety_backup
    confirm: str = ""  # must equal the store name (full_system for the full restore) for in_place
    to_time: str = ""  # postgres point-in-time: an ISO time with a zone, or "latest" (defs/wal.py)
    to_lsn: str = ""  # postgres point-in-time: an LSN such as 0/3000148


def _target(config: RestoreConfig, expected_confirm: str) -> Target:
    mode = TARGETS.get(config.target)
    if mode is None:
        raise dg.Failure(description=f"invalid target: {config.target!r} (allowed: scratch, in_place)")
    if mode == "in_place" and config.confirm != expected_confirm:
        raise dg.Failure(description=(
            f"refused: an in-place restore replaces the live data; set confirm to {expected_confirm!r} "
            f"(got {config.confirm!r}). Nothing was changed."))
    return Target(mode, dict(config.overrides))


def result_metadata(result: RestoreResult) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "restored_partition": result.partition_key,
        "backup_kind": result.kind,
        "requested": result.requested,
        "source": result.source,
        "target": result.mode,
        "rto_seconds": round(result.rto_seconds, 3),
        "rto_target_seconds": result.rto_target_seconds,
        "within_rto": result.within_rto,
        "counts_match": result.ok,
        "safety_backup": dg.MetadataValue.path(result.safety_backup) if result.safety_backup else "none",
        "artifact": dg.MetadataValue.path(result.artifact_path),
    }
    if result.skipped:
        meta["skipped_failed_backups"] = dg.MetadataValue.json(result.skipped)
    if result.problems:
        meta["count_problems"] = dg.MetadataValue.json(result.problems)
    for section, names in result.counts.items():
        if section in ("estimates", "expires"):
            continue
        for name, count in names.items():
            meta[f"count/{section}/{name}"] = count
    return meta


def _observation(spec: StoreSpec, result: RestoreResult) -> dg.AssetObservation:
    partition = result.partition_key if result.kind == "backup" else None  # safety stamps, full system keys: no slot
    return dg.AssetObservation(asset_key=spec.asset_key, partition=partition,
                               description=f"restore: {result.summary()}", metadata=result_metadata(result),
                               tags={"cb/event": "restore"})


def restore_job(spec: StoreSpec) -> dg.JobDefinition:
    @dg.op(name=f"restore_{spec.name}_op", pool=f"store_{spec.name}", tags={"store": spec.name},
           description=f"Restore {spec.title}: verify first, safety backup before in-place, counts after.")
    def _restore(context: dg.OpExecutionContext, config: RestoreConfig,
                 backups: BackupsResource) -> Iterator[dg.AssetObservation | dg.Output[dict[str, Any]]]:
        target = _target(config, spec.name)
        for line in free_dead_runs(context.instance, [spec.name]):  # e.g. an earlier restore killed midway
            context.log.warning(line)
        if config.to_time or config.to_lsn:  # point-in-time recovery: base backup + WAL (defs/wal.py)
            yield from point_in_time_restore(context, spec.name, config.to_time, config.to_lsn, target.mode, backups,
                                             PROGRESS_LISTENERS, config.source)
            return
        try:
            plan = plan_restore(backups.settings(), spec.name, config.backup, config.source, target)
            for line in plan.describe():
                context.log.info(line)
            result = execute_restore(plan, dagster_progress(context, listeners=PROGRESS_LISTENERS))
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
        for note in result.notes:
            context.log.warning(note) if result.skipped else context.log.info(note)
        yield _observation(spec, result)
        if not result.ok:
            raise dg.Failure(description=result.summary(), metadata=result_metadata(result))
        yield dg.Output(result.to_json(), metadata=result_metadata(result))

    @dg.job(name=f"restore_{spec.name}", tags={"store": spec.name, **writer_tags([spec.name])},
            description=f"Restore {spec.title} from a backup (scratch or in place; in place takes a safety "
                        f"backup first). RTO target {spec.rto}.")
    def _job() -> None:
        _restore()

    return _job


@dg.op(name="full_system_restore_op", tags={"store": FULL_SYSTEM}, pool=FULL_SYSTEM,
       description="Restore every configured store (runbook order) after verifying all their backups.")
def _full_restore(context: dg.OpExecutionContext, config: RestoreConfig,
                  backups: BackupsResource) -> Iterator[dg.AssetObservation | dg.Output[dict[str, Any]]]:
    target = _target(config, FULL_SYSTEM)
    for line in free_dead_runs(context.instance, STORE_NAMES):
        context.log.warning(line)
    try:
        full = plan_full_restore(backups.settings(), config.backup, config.source, target)
        for line in full.describe():
            context.log.info(line)
        with store_pools(context, STORE_NAMES):  # the per-store jobs' pools: one writer per store
            outcome = execute_full_restore(full, dagster_progress(context, listeners=PROGRESS_LISTENERS))
    except CbBackupsError as exc:
        raise dg.Failure(description=str(exc)) from None
    for result in outcome.results:
        yield _observation(spec_for(result.store), result)
    summary = {r.store: r.to_json() for r in outcome.results}
    meta: dict[str, Any] = {"rto_seconds": round(outcome.rto_seconds, 3), "stores": dg.MetadataValue.json(
        {r.store: {"partition": r.partition_key, "ok": r.ok, "rto_seconds": round(r.rto_seconds, 3),
                   "within_rto": r.within_rto, "safety_backup": r.safety_backup} for r in outcome.results})}
    if outcome.failed:
        meta["failed"] = dg.MetadataValue.json(outcome.failed)
    if not outcome.ok:
        problems = [f"{k}: {v}" for k, v in outcome.failed.items()] + [r.summary() for r in outcome.results
                                                                      if not r.ok]
        raise dg.Failure(description="full system restore incomplete: " + " | ".join(problems), metadata=meta)
    yield dg.Output(summary, metadata=meta)


@dg.job(name="full_system_restore", tags={"store": FULL_SYSTEM, **writer_tags(STORE_NAMES)},
        description="Full system recovery (runbook scenario 2): every store from its latest verified backup or "
                    "from one full system backup.")
def full_system_restore() -> None:
    _full_restore()


restore_jobs = {spec.name: restore_job(spec) for spec in STORES}

defs = dg.Definitions(jobs=[*restore_jobs.values(), full_system_restore])
