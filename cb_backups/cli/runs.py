"""The CLI's Dagster side: the instance its runs land in, running a job in process, and reading the result.

Runs go through Dagster (not around it) so that they are recorded like the schedules' and the UI shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_DAGSTER_HOME = ".dagster_home"
# The repository's dagster.yaml (concurrency limits); in a source checkout it is beside cb_backups/.
CHECKOUT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


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


def run_job(job_name: str, partition: str | None, instance: Any, run_config: dict[str, Any] | None = None) -> Any:
    """Execute a job of the code location in this process; the result, never an exception for a failed run."""
    from cb_backups.definitions import defs

    job = defs.resolve_job_def(job_name)
    # The CLI prints each failure as one line; Dagster's own log (with stack traces) on CB_LOG_LEVEL=ERROR/INFO.
    config = {"loggers": {"console": {"config": {"log_level": os.environ.get("CB_LOG_LEVEL", "CRITICAL")}}}}
    config.update(run_config or {})
    if job_name.endswith("_verify_job"):
        # A checks-only selection has no asset to validate the key against; pass it as the run's tag.
        return job.execute_in_process(tags={"dagster/partition": partition}, instance=instance,
                                      raise_on_error=False, run_config=config)
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False,
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
