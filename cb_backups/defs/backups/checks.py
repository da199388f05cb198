"""Factory: per-partition post-backup checks, and the freshness check, per store."""

import warnings
from datetime import timedelta

import dagster as dg

from cb_backups.checks.slot import FRESHNESS_CHECK, SLOT_CHECKS, evaluate_freshness, evaluate_slot
from cb_backups.checks.tamper import manifest_record_problems
from cb_backups.config.settings import CONNECTIONS
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.specs import StoreSpec
from cb_backups.defs.resources import BackupsResource


def slot_checks(spec: StoreSpec) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():
        # Per-partition check status is a preview in 1.13; it is what auditors need.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=spec.asset_key, description=text, blocking=True,
                                   partitions_def=spec.partitions)
                 for name, text in SLOT_CHECKS.items()]

    @dg.multi_asset_check(specs=specs, name=f"{spec.name}_backup_checks", pool=f"store_{spec.name}")
    def _checks(context: dg.AssetCheckExecutionContext, backups: BackupsResource):  # type: ignore[no-untyped-def]
        key = context.partition_key
        try:
            store = backups.store(spec.name)
        except CbBackupsError as exc:
            for name in SLOT_CHECKS:
                yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=name, passed=False,
                                          description=str(exc))
            return
        try:  # the event log's record of the manifest is the second record; a full disk is one line
            _, outcomes = evaluate_slot(store, backups.catalog(), key,
                                        lambda artifact: manifest_record_problems(context.instance, artifact))
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
        for outcome in outcomes:
            if not outcome.passed:
                context.log.warning(f"{spec.name} slot {key}: {outcome.name} failed: {outcome.description}")
            yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=outcome.name, passed=outcome.passed,
                                      description=outcome.description, metadata=outcome.metadata,
                                      severity=dg.AssetCheckSeverity.ERROR)

    return _checks


def freshness_check(spec: StoreSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.asset_key, name=FRESHNESS_CHECK,
                    description=f"The newest verified {spec.name} backup is younger than the RPO ({spec.rpo}).")
    def _freshness(context: dg.AssetCheckExecutionContext, backups: BackupsResource) -> dg.AssetCheckResult:
        settings = backups.settings()
        if spec.name not in settings.configured_stores():
            # Nothing is backed up, so nothing can be stale: passed, and the metadata says why.
            return dg.AssetCheckResult(passed=True, description=f"{spec.name} is not configured (set "
                                       f"{CONNECTIONS[spec.name].env}): no backups expected",
                                       metadata={"configured": False, "rpo_hours": spec.rpo / timedelta(hours=1)})
        catalog = settings.catalog()
        newest = catalog.list(spec.name)[-1:]
        if newest and catalog.verification_of(newest[0]) is None:
            # Just written and not yet checked (a UI materialization runs this beside the slot checks, in no
            # set order): check it now rather than call the store stale because of the order.
            try:
                evaluate_slot(backups.store(spec.name), catalog, newest[0].partition_key,
                              lambda artifact: manifest_record_problems(context.instance, artifact))
            except CbBackupsError as exc:
                context.log.warning(f"{spec.name}: could not check the newest backup: {exc}")
        outcome = evaluate_freshness(catalog, spec.name, spec.rpo)
        return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description,
                                   metadata=outcome.metadata)

    return _freshness

