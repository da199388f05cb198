"""Off-site copies in S3 as Dagster assets, their per-partition checks, and the automation that
copies every verified backup -- backfilled slots included.

One factory builds, for each backup asset, a `<store>_offsite` asset with the same partitions:
materializing a slot uploads that slot's backup (`offsite.upload_artifact`, manifest last) and
verifies the remote copy (`offsite.verify_offsite`). The `offsite_complete` check re-verifies a
slot on demand (`deep` re-reads and hashes every object).

When is a slot copied?  `copy_condition` (declarative automation, evaluated by the
`offsite_automation_sensor`, RUNNING by default) requests a slot of `<store>_offsite` when
  * the slot is within the store's retention window (older slots would be pruned anyway), and
  * the backup slot is materialized, not in progress, and its blocking checks passed, and
  * the copy was never made (and never failed), OR the backup slot was re-made since the copy
    was last requested/made, OR the last copy failed and the daily retry time passed.
Unlike `AutomationCondition.eager()` (latest partition only) this looks at every slot in the
window, so a backfill of old slots is copied too. A slot whose backup failed a blocking check
is not copied; it is copied once a later re-check passes.

Without S3 settings (`CB_S3_BUCKET`), materializing an off-site slot FAILS with a message saying
so: the runbook requires an off-site copy, and a pass or a skip would hide that none exists.
Failed copies are retried once a day (RETRY_CRON); stop `offsite_automation_sensor` in the UI
to run without off-site copies deliberately.
"""

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from cb_backups.checks.slot import OFFSITE_CHECK
from cb_backups.config.retention import DEFAULT_POLICIES
from cb_backups.config.settings import Settings, load_settings
from cb_backups.core.catalog import MANIFEST
from cb_backups.core.errors import CbBackupsError, VerificationFailed
from cb_backups.core.model import Artifact, Manifest
from cb_backups.core.partitions import TIMEZONE, weekly_sunday_0100
from cb_backups.core.specs import FULL_SYSTEM, STORES
from cb_backups.defs.full_system import full_system_backup
from cb_backups.defs.progress import dagster_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite import s3 as offsite

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

GROUP = "offsite"
RETRY_CRON = "0 5 * * *"  # failed copies are tried again daily, before retention runs (05:30)
DEEP_ENV = "CB_OFFSITE_DEEP_VERIFY"


@dataclass(frozen=True)
class OffsiteSource:
    """One backup asset that gets an off-site copy."""

    backup_key: dg.AssetKey  # the backup asset the copy depends on
    store: str  # catalog folder and S3 folder name
    partitions: dg.PartitionsDefinition
    name: str  # the off-site asset's name
    lookback: timedelta  # slots older than this (the retention window) are not copied automatically

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey(self.name)

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    @property
    def verify_job_name(self) -> str:
        return f"{self.name}_verify_job"

    @property
    def check_op_name(self) -> str:
        return f"{self.name}_checks"

    @property
    def check_key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.key, OFFSITE_CHECK)


def source(backup_key: dg.AssetKey, store: str, partitions: dg.PartitionsDefinition, name: str) -> OffsiteSource:
    days = DEFAULT_POLICIES[store].keep_days if store in DEFAULT_POLICIES else None
    return OffsiteSource(backup_key, store, partitions, name, timedelta(days=days or 7))


SOURCES: tuple[OffsiteSource, ...] = (
    *(source(spec.asset_key, spec.name, spec.partitions, spec.offsite_key.to_user_string()) for spec in STORES),
    source(full_system_backup.key, FULL_SYSTEM, weekly_sunday_0100, name="full_system_backup_offsite"),
)
BY_STORE = {s.store: s for s in SOURCES}


def copy_condition(lookback: timedelta) -> dg.AutomationCondition:
    """Copy a slot once its backup passed its blocking checks; every slot in the lookback window."""
    ac = dg.AutomationCondition
    never_copied = (ac.missing() & ~ac.execution_failed()).with_label("never copied")
    backup_redone = ac.any_deps_updated().since_last_handled().with_label("backup updated since last copy")
    retry = (ac.execution_failed() & ac.cron_tick_passed(RETRY_CRON, TIMEZONE).since_last_handled()
             ).with_label(f"last copy failed; daily retry ({RETRY_CRON})")
    return (
        ac.in_latest_time_window(lookback)
        & (never_copied | backup_redone | retry)
        & ac.all_deps_blocking_checks_passed()
        & ~ac.any_deps_missing()
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
    ).with_label(f"copy verified backups off-site (lookback {lookback})")


# --- helpers shared with the CLI and retention ---------------------------------------


def offsite_target(settings: Settings, what: str) -> offsite.S3Target:
    """The S3 target; a clear dg.Failure when off-site copies are not configured."""
    if not settings.s3.enabled:
        raise dg.Failure(description=(
            f"off-site copies are not configured, so {what} was NOT copied or verified off-site: set "
            "CB_S3_BUCKET (and CB_S3_ENDPOINT_URL for a non-AWS server, credentials from the standard AWS "
            "chain) or the 's3:' section of the CB_CONFIG file"))
    return offsite.S3Target(settings.s3)


def deep_default(settings: Settings) -> bool:
    """`offsite: {deep_verify: true}` in the CB_CONFIG file, or CB_OFFSITE_DEEP_VERIFY=1."""
    env = os.environ.get(DEEP_ENV)
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    section = settings.raw.get("offsite") or {}
    return bool(section.get("deep_verify", False)) if isinstance(section, dict) else False


def remote_artifact(target: offsite.S3Target, store: str, key: str, into: Path) -> Artifact | None:
    """The off-site copy's own manifest as an Artifact in `into` (for a slot pruned locally)."""
    raw = offsite.get_bytes(target, target.key(store, key, MANIFEST))
    if raw is None:
        return None
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        raise VerificationFailed(store, f"{target.url(target.key(store, key, MANIFEST))} is not a readable "
                                        "manifest") from None
    into.mkdir(parents=True, exist_ok=True)
    (into / MANIFEST).write_bytes(raw)
    return Artifact(into, manifest)


def copy_metadata(copy: offsite.OffsiteCopy, target: offsite.S3Target) -> dict[str, dg.MetadataValue]:
    return {
        "bucket": dg.MetadataValue.text(copy.bucket),
        "url": dg.MetadataValue.text(target.url(target.key(copy.store, copy.partition_key, ""))),
        "keys": dg.MetadataValue.json(copy.keys),
        "bytes": dg.MetadataValue.int(copy.bytes),
        "sha256": dg.MetadataValue.json(copy.sha256()),
        "seconds": dg.MetadataValue.float(float(copy.seconds)),
        "throughput_mib_s": dg.MetadataValue.float(float(copy.throughput_mib_s)),
        "already_there": dg.MetadataValue.bool(copy.skipped),
        "checksum_algorithm": dg.MetadataValue.text(copy.checksum_algorithm or "x-amz-meta-sha256 only"),
    }


# --- the asset --------------------------------------------------------------------------


def offsite_asset(src: OffsiteSource) -> dg.AssetsDefinition:
    @dg.asset(
        name=src.name,
        partitions_def=src.partitions,
        deps=[src.backup_key],
        group_name=GROUP,
        kinds={"s3"},
        pool="offsite",
        automation_condition=copy_condition(src.lookback),
        description=(f"Off-site (S3) copy of {src.backup_key.to_user_string()} for one slot: files first, "
                     "manifest.json last, then verified against the local manifest."),
        metadata={"store": src.store},
        tags={"store": src.store},
    )
    def _offsite(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
        key = context.partition_key
        what = f"{src.store} slot {key}"
        try:
            settings = backups.settings()
            target = offsite_target(settings, what)
            catalog = settings.catalog()
            artifact = catalog.get(src.store, key)
            if artifact is None:
                raise dg.Failure(description=f"no complete local {what} backup to copy (no manifest in "
                                             f"{catalog.slot_dir(src.store, key)})")
            record = catalog.verification_of(artifact)
            if record is not None and not record.ok:
                raise dg.Failure(description=f"the local {what} backup failed verification, not copying it: "
                                             + "; ".join(record.problems))
            context.log.info(f"copying {what} ({artifact.manifest.total_bytes} bytes) to {target!r}")
            copy = offsite.upload_artifact(artifact, target, dagster_progress(context))
            check = offsite.verify_offsite(artifact, target)
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
        if not check.ok:
            raise dg.Failure(description=f"{what}: the copy in S3 did not verify: " + "; ".join(check.problems))
        context.log.info(f"{what}: {copy.bytes} bytes in {copy.seconds}s ({copy.throughput_mib_s} MiB/s)"
                         + (" (identical copy already there)" if copy.skipped else ""))
        return dg.MaterializeResult(metadata=copy_metadata(copy, target))

    return _offsite


class OffsiteCheckConfig(dg.Config):
    deep: bool | None = None  # None: the setting (offsite.deep_verify / CB_OFFSITE_DEEP_VERIFY)


def evaluate_offsite(settings: Settings, store: str, key: str, deep: bool) -> tuple[bool, str, dict[str, Any]]:
    """(passed, description, metadata) for one slot's off-site copy. Compares with the local manifest,
    or with the copy's own manifest when the slot was pruned locally."""
    target = offsite_target(settings, f"{store} slot {key}")
    artifact = settings.catalog().get(store, key)
    against = "local manifest"
    with tempfile.TemporaryDirectory(prefix="cb-offsite-") as tmp:
        if artifact is None:
            against = "remote manifest (no local backup)"
            artifact = remote_artifact(target, store, key, Path(tmp))
            if artifact is None:
                where = target.url(target.key(store, key, MANIFEST))
                return False, f"no off-site copy of {store} slot {key} ({where} missing)", {"deep": deep}
        result = offsite.verify_offsite(artifact, target, deep=deep)
    meta: dict[str, Any] = {k: v for k, v in result.details.items() if isinstance(v, (int, float, str, bool))}
    meta["compared_with"] = against
    if result.ok:
        return True, (f"{meta.get('files_checked', 0)} file(s) present with the manifest's size and sha256"
                      + (f"; {meta.get('bytes_read', 0)} bytes re-read and hashed" if deep else "")), meta
    return False, "; ".join(result.problems), meta


def offsite_checks(src: OffsiteSource) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():
        # Per-partition check status is a preview in 1.13; it is what auditors need.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        spec = dg.AssetCheckSpec(OFFSITE_CHECK, asset=src.key, partitions_def=src.partitions,
                                 description="Every file of the slot is in S3 with the manifest's size and sha256 "
                                             "metadata, and the remote manifest equals the local one "
                                             "(deep: every object re-read and hashed).")

    @dg.multi_asset_check(specs=[spec], name=src.check_op_name, pool="offsite")
    def _check(context: dg.AssetCheckExecutionContext, config: OffsiteCheckConfig,
               backups: BackupsResource) -> Iterator[dg.AssetCheckResult]:
        key = context.partition_key
        try:
            settings = backups.settings()
            deep = deep_default(settings) if config.deep is None else config.deep
            passed, text, meta = evaluate_offsite(settings, src.store, key, deep)
        except (CbBackupsError, dg.Failure) as exc:
            passed, text, meta = False, getattr(exc, "description", None) or str(exc), {}
        if not passed:
            context.log.warning(f"{src.store} slot {key}: {OFFSITE_CHECK} failed: {text}")
        yield dg.AssetCheckResult(asset_key=src.key, check_name=OFFSITE_CHECK, passed=passed, description=text,
                                  metadata=meta, severity=dg.AssetCheckSeverity.ERROR)

    return _check


# --- jobs and the automation sensor -------------------------------------------------------


def offsite_job(src: OffsiteSource) -> "UnresolvedAssetJobDefinition":
    selection = dg.AssetSelection.assets(src.key).without_checks() | dg.AssetSelection.checks(src.check_key)
    return dg.define_asset_job(src.job_name, selection=selection, partitions_def=src.partitions,
                               tags={"store": src.store},
                               description=f"Copy one {src.store} slot to S3 now and verify it.")


def offsite_verify_job(src: OffsiteSource) -> "UnresolvedAssetJobDefinition":
    return dg.define_asset_job(src.verify_job_name, selection=dg.AssetSelection.checks(src.check_key),
                               partitions_def=src.partitions, tags={"store": src.store},
                               description=f"Verify one {src.store} slot's off-site copy again.")


def s3_configured_at_load() -> bool:
    """Whether the code location loads with an S3 target (bad settings count as 'no': runs say why)."""
    try:
        return load_settings().s3.enabled
    except CbBackupsError:
        return False


def build(sources: Sequence[OffsiteSource]) -> dg.Definitions:
    assets = [offsite_asset(s) for s in sources]
    enabled = s3_configured_at_load()
    # Without an S3 target every copy would fail; the sensor then starts stopped (and says so)
    # instead of piling up failed runs. The off-site assets still show as never copied.
    sensor = dg.AutomationConditionSensorDefinition(
        "offsite_automation_sensor",
        target=dg.AssetSelection.assets(*[s.key for s in sources]),
        default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description="Copies every backup slot off-site once its blocking checks passed (backfills too)."
        + ("" if enabled else " Stopped by default: CB_S3_BUCKET was not set when the code location loaded."),
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=[offsite_checks(s) for s in sources],
        jobs=[*(offsite_job(s) for s in sources), *(offsite_verify_job(s) for s in sources)],
        sensors=[sensor],
    )


defs = build(SOURCES)
