"""The `tamper_evidence` check (defs/drills.py) in the nightly drill run, on a real Valkey and Dagster.

A dump rewritten together with its manifest and seal passes every local check; the check compares the
slot with the sha256 Dagster's event log recorded when the backup was written, and fails in the UI.
"""

from __future__ import annotations

import dagster as dg

from cb_backups.checks.slot import evaluate_slot
from cb_backups.cli.runs import run_job
from cb_backups.core.fileio import sha256_file
from cb_backups.core.specs import spec_for
from cb_backups.definitions import defs
from cb_backups.defs.drills import TAMPER_CHECK
from cb_backups.defs.resources import BackupsResource
from cb_backups_tests.test_faults_corruption import rewrite_consistently


def tamper_check(key: str) -> dg.AssetCheckEvaluation:
    """The check for one partition, launched as the nightly schedule launches it (in the drills job)."""
    job = defs.resolve_job_def("restore_drills_job")
    check = dg.AssetCheckKey(dg.AssetKey("valkey_backup"), TAMPER_CHECK)
    subset = job.get_subset(asset_check_selection={check}, asset_selection=set())
    result = subset.execute_in_process(instance=dg.DagsterInstance.get(), tags={"dagster/partition": key},
                                       raise_on_error=False)
    evaluations = list(result.get_asset_check_evaluations())
    assert len(evaluations) == 1
    return evaluations[0]


def test_a_consistent_rewrite_fails_the_tamper_check_in_the_drill_run(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = BackupsResource().catalog()
    partitions = spec_for("valkey").partitions
    victim_key, donor_key = partitions.get_partition_keys()[-2:]
    for key in (victim_key, donor_key):
        assert run_job("valkey_backup_job", key, instance).success
    clean = tamper_check(victim_key)
    assert clean.passed and clean.partition == victim_key, clean.description

    victim, donor = catalog.require("valkey", victim_key), catalog.require("valkey", donor_key)
    assert sha256_file(donor.path("dump.rdb")) != sha256_file(victim.path("dump.rdb"))
    rewrite_consistently(victim, donor.path("dump.rdb"))
    _, outcomes = evaluate_slot(BackupsResource().store("valkey"), catalog, victim_key)
    assert all(o.passed for o in outcomes)  # every local check is fooled
    caught = tamper_check(victim_key)
    assert not caught.passed and caught.severity == dg.AssetCheckSeverity.ERROR
    assert "dump.rdb on disk" in (caught.description or "") and "recorded" in (caught.description or "")
