"""Put a store back in service after the process holding it was killed (no Dagster here).

Two things can be left behind by a SIGKILL, an OOM kill or a reboot:
- an in-place restore killed inside its closed window (restore.journal): the live data moved aside or
  closed to writes, or half-written. `recover_restores` undoes what the journal says the restore held
  (`Recovers.recover`), and for a store whose restore is not one atomic switch (`swaps_in_place`) and
  was killed while writing, restores the safety backup the journal names, so the store is as it was
  before the restore began: nothing half-done is left in service.
- a backup that takes its store offline (Neo4j's offline dump) killed before it started the store
  again: `recover_store` is run for each dead run freed (defs/liveness) and starts it.
Both run before a CLI run of the store, from the daemon's dead_runs_sensor, and before every restore.
"""

from __future__ import annotations

from collections.abc import Iterable

from cb_backups.config.settings import Settings
from cb_backups.core import process
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Target
from cb_backups.restore import journal
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import SAFETY_PREFIX, plan_restore
from cb_backups.stores.base import recovered, swaps_in_place
from cb_backups.stores.registry import open_store


def recover_restores(settings: Settings, stores: Iterable[str] | None = None) -> list[str]:
    """Recover every in-place restore (of `stores`, default all) whose process is gone; one line each.

    A journal whose process still runs, or ran on another host, is left alone. A recovery that fails
    keeps its journal, so the next run tries again, and says why in its line.
    """
    wanted = set(stores) if stores is not None else None
    lines = []
    for path in settings.catalog().restore_journals():
        entry = journal.read(path)
        if entry is None:
            lines.append(f"{path} is not a restore journal cb-backups can read; look at it and remove it")
            continue
        if wanted is not None and entry.store not in wanted:
            continue
        why = process.gone(entry.process)
        if why is None:
            continue
        try:
            done = _recover(settings, entry)
        except CbBackupsError as exc:
            lines.append(f"{entry.store}: the in-place restore of {entry.backup} was killed ({why}) and could not "
                         f"be recovered yet (will retry): {exc}")
            continue
        path.unlink(missing_ok=True)
        lines.append(f"{entry.store}: recovered the in-place restore of {entry.backup} killed {entry.phase} "
                     f"({why}): " + ("; ".join(done) or "nothing was held"))
    return lines


def _recover(settings: Settings, entry: journal.Entry) -> list[str]:
    store = open_store(entry.store, settings)
    target = entry.as_target()
    done = recovered(store, target, entry.hold if entry.hold is not None else {})
    if entry.phase == journal.RESTORING and not swaps_in_place(store):
        if entry.safety is None:
            done.append("the restore may have left the data half-written and no safety backup was taken "
                        "(safety_backup=skip): restore a backup in place again")
            return done
        plan = plan_restore(settings, entry.store, f"{SAFETY_PREFIX}{entry.safety}", "local",
                            Target("in_place", {**target.options, "safety_backup": "skip"}))
        result = execute_restore(plan)
        verdict = "counts verified" if result.ok else "counts differ: " + "; ".join(result.problems)
        done.append(f"restored the safety backup {entry.safety} taken before it (the data as it was before "
                    f"the restore): {verdict}")
    return done


def recover_store(settings: Settings, store_name: str) -> list[str]:
    """After a dead run of `store_name` was freed: put the live store back in service if the run left it
    held (e.g. Neo4j stopped by an offline dump killed before it started Neo4j again)."""
    try:
        store = open_store(store_name, settings)
        return [f"{store_name}: {line}" for line in recovered(store, Target("in_place"), None)]
    except CbBackupsError as exc:
        return [f"{store_name}: could not check whether the dead run left it out of service: {exc}"]
