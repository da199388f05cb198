"""The real `dagster-daemon` copies every backup of a slot off-site, a re-take seconds after the first copy too.

The daemon runs as a subprocess against the test instance (DAGSTER_HOME) and SeaweedFS, with
`offsite.sensor_interval_seconds: 5` so the test waits for ticks, not minutes. Backups are taken in
this process (the same instance); the daemon's sensor requests the copies and its run launcher runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli.runs import run_job
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.defs.offsite import BY_STORE, OFFSITE_CHECK, manifest_sha
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite.state import VERIFIED, offsite_state
from cb_backups.report.build import offsite_seen
from cb_backups_tests.daemon import dagster_daemon, wait_until

ROOT = Path(__file__).resolve().parent.parent
VALKEY = BY_STORE["valkey"]
TIMEOUT = 300.0  # generous: 2 busy cores, a code server and one run process per copy


@pytest.fixture
def daemon(offsite_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    config = tmp_path / "cb.yaml"
    config.write_text("offsite:\n  sensor_interval_seconds: 5\n")
    monkeypatch.setenv("CB_CONFIG", str(config))
    log = tmp_path / "daemon.log"
    with dagster_daemon(log):
        yield log


def wait_for(what: str, condition: Callable[[], bool], log: Path) -> None:
    wait_until(what, condition, log, TIMEOUT)


def copied(instance: dg.DagsterInstance, key: str, sha: str) -> bool:
    """The slot's newest copy holds manifest `sha` and its newest offsite_complete passed for it."""
    copies, checks = offsite_seen(instance, VALKEY.key, VALKEY.check_key, 0.0)
    return key in copies and copies[key].manifest_sha256 == sha and offsite_state(
        sha, copies[key], checks.get(key)) == VERIFIED


def test_daemon_copies_every_backup_of_a_slot(daemon: Path, offsite_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = Catalog(Path(offsite_env["CB_BACKUP_DIR"]))
    keys = spec_for("valkey").partitions.get_partition_keys()
    key = keys[-3]
    started = time.monotonic()

    assert run_job("valkey_backup_job", key, instance).success
    first = manifest_sha(catalog.require("valkey", key))
    wait_for(f"the first copy of {key}", lambda: copied(instance, key, first), daemon)
    first_copy = time.monotonic() - started

    # backed up again at once: within the same tick window as the copy that just landed
    assert run_job("valkey_backup_job", key, instance).success
    second = manifest_sha(catalog.require("valkey", key))
    assert second != first
    wait_for(f"the second copy of {key} (manifest {second[:12]}…)", lambda: copied(instance, key, second), daemon)

    target = offsite.S3Target(load_settings().s3)
    assert offsite.remote_sha256(target, target.key("valkey", key, "manifest.json")) == second
    assert offsite.verify_offsite(catalog.require("valkey", key), target, deep=True).ok

    def runs() -> list[dg.DagsterRun]:
        return list(instance.get_runs(dg.RunsFilter(job_name=VALKEY.job_name, tags={"dagster/partition": key})))

    # the run that made the second copy is marked finished a moment after its check result
    wait_for("both copy runs to finish", lambda: all(r.is_finished for r in runs()), daemon)
    assert [r.status for r in runs()] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert [r.tags.get("cb/manifest_sha256") for r in runs()] == [second, first]  # newest first
    evaluations = [e for r in runs() for e in instance.all_logs(
        r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    assert {e.asset_check_evaluation.check_name for e in evaluations if e.asset_check_evaluation} == {OFFSITE_CHECK}
    print(f"daemon: first copy after {first_copy:.0f}s, second after {time.monotonic() - started:.0f}s")
