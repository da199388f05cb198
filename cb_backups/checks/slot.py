"""The runbook's post-backup verification, as named outcomes (no Dagster here).

Each outcome becomes one asset check in Dagster and one line in `cb-backups verify`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cb_backups.core.catalog import Catalog, checksum_problems, parse_iso, utcnow
from cb_backups.core.crypto import age_header_problems
from cb_backups.core.fileio import as_disk_full
from cb_backups.core.model import Artifact, Outcome, Verification
from cb_backups.stores.base import Store

# name -> what it proves (shown as the check's description)
SLOT_CHECKS = {
    "artifact_present": "The backup's files and manifest exist and are not empty.",
    "integrity": "The store's own integrity check passes (pg_restore --list, valkey-check-rdb, ...).",
    "checksum": "Every file's sha256 and size equal the manifest's; the manifest equals its seal, names this "
                "folder's store and slot, and equals the sha256 Dagster recorded when the backup was written.",
    "inventory_recorded": "The manifest records the store's counts at backup time.",
}
FRESHNESS_CHECK = "freshness"
# The other checks of a backup slot, built in defs/ and named here, below both defs/ and the report:
DRILL_CHECK = "restore_drill"  # on <store>_backup: the backup restored into a scratch target (defs/drills.py)
OFFSITE_CHECK = "offsite_complete"  # on <store>_offsite: the S3 copy against the manifest (defs/offsite.py)


# A second record of the backup (Dagster's event log, checks.tamper): its problems with an artifact.
SecondRecord = Callable[[Artifact], list[str]]


def evaluate_slot(store: Store, catalog: Catalog, key: str,
                  second_record: SecondRecord | None = None) -> tuple[Artifact | None, list[Outcome]]:
    """Run every slot check; records the overall verification beside the backup.

    `second_record`: compares the manifest with what was recorded elsewhere when the backup was written
    (the defs pass the event log's record); its problems fail the checksum check.
    """
    artifact = catalog.get(store.name, key)
    if artifact is None:
        missing = f"no complete {store.name} backup for slot {key} (no manifest)"
        return None, [Outcome(name, False, missing) for name in SLOT_CHECKS]
    outcomes = []
    empty = [f.name for f in artifact.manifest.files if f.bytes == 0 or not artifact.path(f.name).is_file()]
    outcomes.append(Outcome("artifact_present", not empty and bool(artifact.manifest.files),
                            f"missing or empty: {', '.join(empty)}" if empty else
                            f"{len(artifact.manifest.files)} file(s), {artifact.manifest.total_bytes} bytes",
                            {"bytes": artifact.manifest.total_bytes, "path": str(artifact.directory)}))
    try:
        integrity = _integrity(store, catalog, artifact)
    except Exception as exc:
        # A full temp dir says nothing about the backup: the run fails, naming it, and records nothing.
        full = as_disk_full(exc, f"cannot check the integrity of {store.name} {key}",
                            "the backup is unchanged and its verification record was not touched")
        if full is not None:
            raise full from None
        integrity = Verification(False, [f"{type(exc).__name__}: {exc}"])
    outcomes.append(Outcome("integrity", integrity.ok, "; ".join(integrity.problems) or "integrity check passed",
                            {k: v for k, v in integrity.details.items() if isinstance(v, (int, float, str))}))
    sums = catalog.binding_problems(artifact) + checksum_problems(artifact)
    if second_record is not None:
        sums += second_record(artifact)
    outcomes.append(Outcome("checksum", not sums, "; ".join(sums) or "all sha256 match the manifest",
                            {f.name: f.sha256 for f in artifact.manifest.files}))
    inventory = artifact.manifest.inventory
    recorded = bool(inventory) and all(isinstance(v, dict) for v in inventory.values())
    total = sum(sum(v.values()) for v in inventory.values() if isinstance(v, dict)) if recorded else 0
    outcomes.append(Outcome("inventory_recorded", recorded,
                            f"{len(inventory)} section(s) recorded" if recorded else "no inventory in manifest",
                            {"sections": ", ".join(sorted(inventory)), "total": total}))
    ok = all(o.passed for o in outcomes)
    catalog.record_verification(artifact, Verification(ok, [f"{o.name}: {o.description}" for o in outcomes
                                                            if not o.passed]))
    return artifact, outcomes


def _integrity(store: Store, catalog: Catalog, artifact: Artifact) -> Verification:
    """The store's own check; of an encrypted backup's plaintext when an identity is configured (the backup
    host usually has none: then each file's age header is checked, its bytes by the checksum check)."""
    if not artifact.manifest.encrypted:
        return store.verify(artifact)
    if catalog.encryption.identity_files:
        with catalog.plaintext(artifact) as plain:
            return store.verify(plain)
    problems = [p for f in artifact.manifest.files if f.encrypted
                for p in age_header_problems(artifact.path(f.name), len(f.recipients))]
    return Verification(not problems, problems, {"encrypted": "age, plaintext not checked (no CB_AGE_IDENTITY_FILE)"})


def evaluate_freshness(catalog: Catalog, store: str, rpo: timedelta, now: datetime | None = None) -> Outcome:
    """Runbook: 'Backup file modified within expected timeframe' -- the newest verified backup within the RPO."""
    now = now or utcnow()
    newest = catalog.latest_verified(store)
    if newest is None:
        return Outcome(FRESHNESS_CHECK, False, f"no verified {store} backup exists",
                       {"rpo_hours": rpo / timedelta(hours=1)})
    age = now - parse_iso(newest.manifest.captured_at)
    hours = round(age / timedelta(hours=1), 2)
    passed = age <= rpo
    return Outcome(FRESHNESS_CHECK, passed,
                   f"newest verified backup ({newest.partition_key}) is {hours} h old; RPO is "
                   f"{rpo / timedelta(hours=1):g} h",
                   {"age_hours": hours, "rpo_hours": rpo / timedelta(hours=1), "partition": newest.partition_key})
