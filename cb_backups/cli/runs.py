"""The CLI's Dagster side: the instance its runs land in, running a job in process, and reading the result.

Runs go through Dagster (not around it) so that they are recorded like the schedules' and the UI shows them.
Before a run starts, dead runs of its stores are failed and their slots freed (defs/liveness.py); a run of
the same job and slot in progress refuses this one; any other live run of the store is waited for, up to
CB_STORE_WAIT_SECONDS. Each run is tagged with this process (host, pid, start time) so that it in turn is
recognised as dead if this process is killed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from cb_backups.cli import shutdown
from cb_backups.core import process
from cb_backups.core.errors import CbBackupsError, ConfigError

DEFAULT_DAGSTER_HOME = ".dagster_home"
# The repository's dagster.yaml (concurrency limits); in a source checkout it is beside cb_backups/.
CHECKOUT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
WAIT_ENV, DEFAULT_WAIT_SECONDS, POLL_SECONDS = "CB_STORE_WAIT_SECONDS", 900, 2.0
# The tags the webserver gives the runs it launches (workspace.yaml's location_name; a Definitions object is
# repository `__repository__`): the UI's Overview timeline lists only runs that carry them.
LOCATION_TAGS = {".dagster/repository": "__repository__@cb_backups", "dagster/code_location": "cb_backups"}


class StoreBusy(CbBackupsError):
    """A live run holds the store (refused: same job and slot; or still busy when the wait ran out)."""


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or a local `.dagster_home` so CLI runs land in one instance the UI can show."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path(DEFAULT_DAGSTER_HOME).resolve())
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    if not config.exists():
        source = CHECKOUT_DAGSTER_YAML
        config.write_text(source.read_text() if source.exists() else "telemetry:\n  enabled: false\n")
    return home


def instance() -> Any:
    """The Dagster instance of $DAGSTER_HOME (made if missing)."""
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


def wait_seconds() -> float:
    raw = os.environ.get(WAIT_ENV, str(DEFAULT_WAIT_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 7 * 24 * 3600:
        raise ConfigError(WAIT_ENV, raw, "seconds to wait for another run of the store, 0 to 604800")
    return value


def say(line: str) -> None:
    """One line on stderr (plain: cli.output imports this module)."""
    print(line, file=sys.stderr, flush=True)


def claim_stores(job: Any, partition: str | None, instance: Any) -> None:
    """Free dead runs of the job's stores, refuse a duplicate of a live run, wait for other live runs."""
    from cb_backups.defs import liveness

    stores = liveness.stores_of(job.tags.get("store"))
    if not stores:
        return
    timeout = wait_seconds()
    said: list[str] = []

    def busy() -> None:
        for line in liveness.free_dead_runs(instance, stores):
            say(line)
        live = liveness.live_holders(instance, stores)
        same = [h for h in live if h.job_name == job.name and partition and h.partition == partition]
        if same:
            raise StoreBusy(f"{job.tags['store']} slot {partition}: {same[0].describe()} is already running it; "
                            f"refusing to run a second {job.name} of the same slot")
        if live:
            if not said:
                said.append(live[0].run_id)
                say(f"waiting for {live[0].describe()} to finish with {job.tags['store']} "
                                  f"(up to {timeout:.0f} s, {WAIT_ENV}) ...")
            raise TimeoutError(live[0].describe())

    try:
        # Another process's run holds the store; the instance has no notification, so poll it.
        for attempt in Retrying(retry=retry_if_exception_type(TimeoutError), wait=wait_fixed(POLL_SECONDS),
                                stop=stop_after_delay(timeout)):
            with attempt:
                busy()
    except RetryError as exc:
        holder = exc.last_attempt.exception()
        raise StoreBusy(f"{job.tags['store']} is still busy after {timeout:.0f} s: {holder} holds it; "
                        f"try again later or raise {WAIT_ENV}") from None


def execute(job: Any, instance: Any, *, partition: str | None = None, partition_as_tag: bool = False,
            run_config: dict[str, Any] | None = None) -> Any:
    """Execute `job` in this process once its stores are free; the result, never an exception for a failed run.

    SIGTERM/SIGINT stop it within seconds (shutdown.guard): the step is interrupted and its child processes
    killed, or else the children are killed and the run is marked failed from here.
    """

    claim_stores(job, partition, instance)
    tags = {**process.identity(), **LOCATION_TAGS}
    options: dict[str, Any] = {}
    if partition and partition_as_tag:
        tags["dagster/partition"] = partition
    elif partition:
        options["partition_key"] = partition
    with shutdown.guard(instance):
        return job.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config, tags=tags,
                                      **options)


def run_job(job_name: str, partition: str | None, instance: Any, run_config: dict[str, Any] | None = None) -> Any:
    """Execute a job of the code location in this process; the result, never an exception for a failed run."""
    from cb_backups.definitions import defs

    job = defs.resolve_job_def(job_name)
    # The CLI prints each failure as one line; Dagster's own log (with stack traces) on CB_LOG_LEVEL=ERROR/INFO.
    config = {"loggers": {"console": {"config": {"log_level": os.environ.get("CB_LOG_LEVEL", "CRITICAL")}}}}
    config.update(run_config or {})
    # A checks-only selection has no asset to validate the key against; its key goes in the run's tag.
    return execute(job, instance, partition=partition, partition_as_tag=job_name.endswith("_verify_job"),
                   run_config=config)


def evaluations(result: Any) -> list[Any]:
    """The asset check evaluations of a run."""
    return list(result.get_asset_check_evaluations())


def failure_messages(result: Any) -> list[str]:
    """One message per failed step: the op's own description when it gave one, else the error's."""
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            user = event.step_failure_data.user_failure_data
            messages.append(user.description if user and user.description else (error.message if error else "failed"))
    return [m.strip() for m in messages if m]
