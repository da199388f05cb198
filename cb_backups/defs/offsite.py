"""Off-site copies in S3 as Dagster assets, their per-partition checks, and the automation that
copies every verified backup -- backfilled slots included.

One factory builds, for each backup asset, a `<store>_offsite` asset with the same partitions:
materializing a slot uploads that slot's backup (`offsite.upload_artifact`, manifest last) and
verifies the remote copy (`offsite.verify_offsite`). The `offsite_complete` check re-verifies a
slot on demand (`deep` re-reads and hashes every object).

When is a slot copied?  `offsite_automation_sensor` (RUNNING by default, every
`offsite.sensor_interval_seconds`, 30 s) looks at every local backup slot within the store's
retention window whose blocking checks passed (the catalog's verification record) and compares
the slot's manifest sha256 on disk with the one the newest off-site copy recorded
(`manifest_sha256` in the `<store>_offsite` materialization). A slot is copied when they differ
(never copied, or backed up again since -- however close in time), or when the newest
`offsite_complete` result failed (then every object is re-sent). A failed attempt is retried after
`offsite.retry_minutes` (5, 15, then every 60 min); each run carries the attempt number
(`cb/offsite_attempt`) and the manifest it copies (`cb/manifest_sha256`). After
`offsite.notify_after` (3) consecutive failures the webhook is told the slot has no off-site copy
and since when. The decision itself is `cb_backups.offsite.state.decide_copy` (pure).

`offsite_freshness` (per store, hourly) fails when the newest VERIFIED off-site copy -- its
verified manifest equal to the local one, never a stale one -- is older than the store's RPO plus
`offsite.rpo_lag_hours` (1 h).

Without S3 settings (`CB_S3_BUCKET`), materializing an off-site slot FAILS with a message saying
so: the runbook requires an off-site copy, and a pass or a skip would hide that none exists.
Stop `offsite_automation_sensor` in the UI to run without off-site copies deliberately.
"""

import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from cb_backups.checks.slot import OFFSITE_CHECK
from cb_backups.config.retention import DEFAULT_POLICIES, OffsitePolicy, offsite_from_config
from cb_backups.config.settings import Settings, load_settings
from cb_backups.core.catalog import MANIFEST, Catalog, parse_iso
from cb_backups.core.errors import CbBackupsError, VerificationFailed
from cb_backups.core.fileio import sha256_file
from cb_backups.core.model import Artifact, Manifest
from cb_backups.core.partitions import TIMEZONE, weekly_sunday_0100
from cb_backups.core.specs import FULL_SYSTEM, STORES, StoreSpec
from cb_backups.defs.backups.assets import OWNER
from cb_backups.defs.full_system import full_system_backup
from cb_backups.defs.notifications import offsite_missing_payload, post, webhook_url
from cb_backups.defs.progress import dagster_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.defs.wal import BASE_KEY, BASE_PARTITIONS
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import subset as offsite_subset
from cb_backups.offsite import versions as offsite_versions
from cb_backups.offsite.state import OFFSITE_FRESHNESS_CHECK as FRESHNESS
from cb_backups.offsite.state import VERIFIED, Attempt, decide_copy, offsite_state
from cb_backups.report import history
from cb_backups.report.build import offsite_seen
from cb_backups.stores.pitr.basebackup import BASE_STORE

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

GROUP = "offsite"
DEEP_ENV = "CB_OFFSITE_DEEP_VERIFY"
FRESHNESS_CRON = "20 * * * *"  # hourly, after the backup freshness checks (:15)
SUBSET_CRON = "40 4 * * *"  # daily, after the night's backups and copies (offsite_subset.RUN_INTERVAL)
MANIFEST_TAG = "cb/manifest_sha256"  # the manifest a copy run copies
ATTEMPT_TAG = "cb/offsite_attempt"  # 1 for the first try of a manifest, 2 for the first retry...
FORCE_TAG = "cb/offsite_force"  # re-send every object (the remote copy failed its check)
IN_PROGRESS = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


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
    source(BASE_KEY, BASE_STORE, BASE_PARTITIONS, name=f"{BASE_STORE}_offsite"),  # point-in-time recovery
)
BY_STORE = {s.store: s for s in SOURCES}


# --- helpers shared with the CLI and retention ---------------------------------------


def offsite_target(settings: Settings, what: str) -> offsite.S3Target:
    """The S3 target; a clear dg.Failure when off-site copies are not configured."""
    if not settings.s3.enabled:
        raise dg.Failure(description=(
            f"off-site copies are not configured, so {what} was NOT copied or verified off-site: set "
            "CB_S3_BUCKET (and CB_S3_ENDPOINT_URL for a non-AWS server, credentials from the standard AWS "
            "chain) or the 's3:' section of the CB_CONFIG file"))
    return offsite.S3Target(settings.s3)


def offsite_policy(settings: Settings) -> OffsitePolicy:
    """The `offsite:` section of the CB_CONFIG file (retries, notification, RPO lag)."""
    return offsite_from_config(settings.raw)


def deep_default(settings: Settings) -> bool:
    """`offsite: {deep_verify: true}` in the CB_CONFIG file, or CB_OFFSITE_DEEP_VERIFY=1."""
    env = os.environ.get(DEEP_ENV)
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    return offsite_policy(settings).deep_verify


def manifest_sha(artifact: Artifact) -> str:
    return sha256_file(artifact.path(MANIFEST))[0]


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


def copy_metadata(copy: offsite.OffsiteCopy, target: offsite.S3Target, manifest_sha256: str
                  ) -> dict[str, dg.MetadataValue]:
    return {
        "manifest_sha256": dg.MetadataValue.text(manifest_sha256),  # what the sensor compares with the slot's
        "bucket": dg.MetadataValue.text(copy.bucket),
        "url": dg.MetadataValue.url(target.url(target.key(copy.store, copy.partition_key, ""))),
        "keys": dg.MetadataValue.json(copy.keys),
        "bytes": dg.MetadataValue.int(copy.bytes),
        "sha256": dg.MetadataValue.json(copy.sha256()),
        "seconds": dg.MetadataValue.float(float(copy.seconds)),
        "throughput_mib_s": dg.MetadataValue.float(float(copy.throughput_mib_s)),
        "already_there": dg.MetadataValue.bool(copy.skipped),
        "checksum_algorithm": dg.MetadataValue.text(copy.checksum_algorithm or "x-amz-meta-sha256 only"),
        **({"versions": dg.MetadataValue.json(copy.versions)} if copy.versions else {}),
        **({"locked_until": dg.MetadataValue.text(copy.locked_until)} if copy.locked_until else {}),
    }


# --- the asset --------------------------------------------------------------------------


def offsite_asset(src: OffsiteSource) -> dg.AssetsDefinition:
    @dg.asset(
        name=src.name,
        partitions_def=src.partitions,
        deps=[src.backup_key],
        group_name=GROUP,
        kinds={"s3", src.store},
        owners=[OWNER],
        pool="offsite",
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
            force = context.run.tags.get(FORCE_TAG) == "1"
            attempt = context.run.tags.get(ATTEMPT_TAG)
            context.log.info(f"copying {what} ({artifact.manifest.total_bytes} bytes) to {target!r}"
                             + (f", attempt {attempt}" if attempt else "")
                             + (", every object re-sent" if force else ""))
            sha = manifest_sha(artifact)
            copy = offsite.upload_artifact(artifact, target, dagster_progress(context), force=force)
            offsite_versions.save(catalog, src.store, key, copy.versions)  # what verification/restores read
            check = offsite.verify_offsite(artifact, target, versions=copy.versions or None)
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
        if not check.ok:
            raise dg.Failure(description=f"{what}: the copy in S3 did not verify: " + "; ".join(check.problems))
        context.log.info(f"{what}: {copy.bytes} bytes in {copy.seconds}s ({copy.throughput_mib_s} MiB/s)"
                         + (" (identical copy already there)" if copy.skipped else ""))
        metadata = copy_metadata(copy, target, sha)
        if attempt:
            metadata["attempt"] = dg.MetadataValue.int(int(attempt))
        return dg.MaterializeResult(metadata=metadata)

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
        result = offsite.verify_offsite(artifact, target, deep=deep,
                                        versions=offsite_versions.load(settings.catalog(), store, key))
        verified = manifest_sha(artifact)
    meta: dict[str, Any] = {k: v for k, v in result.details.items() if isinstance(v, (int, float, str, bool))}
    meta["compared_with"] = against
    if result.ok:  # a pass is about THIS manifest: once the slot is backed up again it is stale
        meta["manifest_sha256"] = verified
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


def policy_at_load() -> OffsitePolicy:
    try:
        return offsite_policy(load_settings())
    except CbBackupsError:
        return OffsitePolicy()  # bad settings: every run says why; the sensor keeps its default pace


def window_start(src: OffsiteSource, now: float) -> float:
    return now - src.lookback.total_seconds()


def slot_runs(instance: dg.DagsterInstance, src: OffsiteSource, since: float) -> dict[str, list[dg.RunRecord]]:
    """The copy job's runs per slot created since `since`, newest first (one query per store)."""
    records = instance.get_run_records(dg.RunsFilter(job_name=src.job_name,
                                                     created_after=datetime.fromtimestamp(since, UTC)))
    found: dict[str, list[dg.RunRecord]] = {}
    for record in records:
        part = record.dagster_run.tags.get("dagster/partition")
        if part:
            found.setdefault(part, []).append(record)
    return found


def attempts_of(records: list[dg.RunRecord], sha: str, failed_checks: set[str]) -> list[Attempt]:
    """Finished runs that copied manifest `sha`, newest first."""
    done = []
    for record in records:
        run = record.dagster_run
        if run.tags.get(MANIFEST_TAG) != sha or run.status in IN_PROGRESS:
            continue
        at = record.end_time or record.create_timestamp.timestamp()
        failed = run.status != dg.DagsterRunStatus.SUCCESS or run.run_id in failed_checks
        done.append(Attempt(failed, at, run.run_id))
    return done


def copy_requests(instance: dg.DagsterInstance, settings: Settings, src: OffsiteSource, policy: OffsitePolicy,
                  now: float, notified: dict[str, str], s3_back_at: float | None = None
                  ) -> tuple[list[dg.RunRequest], list[str]]:
    """(runs to request, notifications to send) for one store; updates `notified` (slot -> manifest told)."""
    since = window_start(src, now)
    catalog = settings.catalog()
    local = [a for a in catalog.list(src.store)
             if src.partitions.time_window_for_partition_key(a.partition_key).start.timestamp() >= since]
    if not local:
        return [], []
    copies, checks = offsite_seen(instance, src.key, src.check_key, since, details=False)
    failed_checks = {run.run_id for run in history.check_history(instance, src.check_key, since)
                     if run.status == "failed"}
    runs = slot_runs(instance, src, since)
    requests: list[dg.RunRequest] = []
    messages: list[str] = []
    for artifact in local:
        key = artifact.partition_key
        record = catalog.verification_of(artifact)
        if record is None or not record.ok:
            continue  # not verified yet (or failed its checks): never copied
        of_slot = runs.get(key, [])
        if any(r.dagster_run.status in IN_PROGRESS for r in of_slot):
            continue
        sha = manifest_sha(artifact)
        decision = decide_copy(sha, copies.get(key), checks.get(key), attempts_of(of_slot, sha, failed_checks),
                               policy.retry_wait_seconds, now, s3_back_at)
        name = f"{src.store}/{key}"
        if decision.failures >= policy.notify_after and notified.get(name) != sha:
            notified[name] = sha
            since_backup = now - parse_iso(artifact.manifest.finished_at).timestamp()
            messages.append(f"{src.store} slot {key} has no off-site copy of its current backup (manifest "
                            f"{sha[:12]}…) for {since_backup / 3600:.1f} h: {decision.failures} attempt(s) failed; "
                            f"{decision.reason}")
        elif not decision.failures:
            notified.pop(name, None)
        if not decision.copy:
            continue
        tagged = sum(1 for r in of_slot if r.dagster_run.tags.get(MANIFEST_TAG) == sha)
        tags = {MANIFEST_TAG: sha, ATTEMPT_TAG: str(decision.attempt), "store": src.store}
        if decision.force:
            tags[FORCE_TAG] = "1"
        requests.append(dg.RunRequest(run_key=f"{key}:{sha[:16]}:{tagged + 1}", partition_key=key,
                                      job_name=src.job_name, tags=tags))
    return requests, messages


def copy_sensor(sources: Sequence[OffsiteSource], jobs: Sequence["UnresolvedAssetJobDefinition"]
                ) -> dg.SensorDefinition:
    enabled = s3_configured_at_load()
    interval = policy_at_load().sensor_interval_seconds

    @dg.sensor(
        name="offsite_automation_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=interval,
        # Without an S3 target every copy would fail; the sensor then starts stopped (and says so)
        # instead of piling up failed runs. The off-site assets still show as never copied.
        default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
        description="Copies every verified backup slot off-site whose manifest S3 does not hold yet (new, "
                    "backfilled or backed up again), retries failures with backoff and notifies after repeated "
                    "failures." + ("" if enabled else
                                   " Stopped by default: CB_S3_BUCKET was not set when the code location loaded."),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        try:
            settings = load_settings()
            policy = offsite_policy(settings)
        except CbBackupsError as exc:
            return dg.SkipReason(f"settings are invalid, nothing copied: {exc}")
        if not settings.s3.enabled:
            return dg.SkipReason("off-site copies are not configured (set CB_S3_BUCKET)")
        now = time.time()
        cursor = json.loads(context.cursor) if context.cursor else {}
        notified: dict[str, str] = cursor.get("notified", {})
        # One quick probe a tick: when S3 comes back after being seen down, failed copies retry at once
        # instead of at their next backoff step.
        down_since: float | None = cursor.get("s3_down_since")
        s3_back_at: float | None = cursor.get("s3_back_at")
        # one attempt, short timeouts: a black-holed endpoint must not stall the tick
        probe = offsite.S3Target(settings.s3, max_attempts=1, connect_timeout=5.0, read_timeout=10.0)
        problem = offsite.unreachable(probe)
        if problem is not None:
            down_since = down_since or now
            context.log.warning(f"S3 is unreachable, copies wait: {problem}")
        elif down_since is not None:
            down_since, s3_back_at = None, now
            context.log.info("S3 is reachable again: retrying failed copies now")
        requests: list[dg.RunRequest] = []
        messages: list[str] = []
        for src in sources:
            found, told = copy_requests(context.instance, settings, src, policy, now, notified,
                                        s3_back_at if problem is None else None)
            requests += found
            messages += told
        url = webhook_url()
        if messages and url:
            post(url, offsite_missing_payload(messages))  # raises WebhookFailed: the tick fails, the cursor stays
            context.log.info(f"notified the webhook of {len(messages)} slot(s) without an off-site copy")
        state = {"notified": notified, "s3_down_since": down_since, "s3_back_at": s3_back_at}
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(state, sort_keys=True))

    return _sensor


# --- off-site RPO --------------------------------------------------------------------------


def newest_verified_copy(instance: dg.DagsterInstance, catalog: Catalog, src: OffsiteSource, now: float
                         ) -> tuple[str, float] | None:
    """(slot, captured_at) of the newest slot whose off-site state is verified (never a stale copy)."""
    copies, checks = offsite_seen(instance, src.key, src.check_key, window_start(src, now), details=True)
    for artifact in reversed(catalog.list(src.store)):  # newest first
        key = artifact.partition_key
        if offsite_state(manifest_sha(artifact), copies.get(key), checks.get(key)) == VERIFIED:
            return key, parse_iso(artifact.manifest.captured_at).timestamp()
    return None


def freshness_check(spec: StoreSpec, src: OffsiteSource) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=src.key, name=FRESHNESS,
                    description=f"The newest VERIFIED off-site copy of {spec.name} (its manifest equal to the local "
                                f"one) is younger than the RPO ({spec.rpo}) plus offsite.rpo_lag_hours.")
    def _freshness(context: dg.AssetCheckExecutionContext, backups: BackupsResource) -> dg.AssetCheckResult:
        settings = backups.settings()
        limit = spec.rpo.total_seconds() + offsite_policy(settings).rpo_lag_hours * 3600
        now = time.time()
        newest = newest_verified_copy(context.instance, settings.catalog(), src, now)
        meta: dict[str, Any] = {"limit_hours": round(limit / 3600, 2)}
        if newest is None:
            return dg.AssetCheckResult(passed=False, metadata=meta,
                                       description=f"no verified off-site copy of {spec.name} within the last "
                                                   f"{src.lookback.days} days")
        key, captured = newest
        hours = round((now - captured) / 3600, 2)
        meta.update(age_hours=hours, partition=key)
        return dg.AssetCheckResult(passed=now - captured <= limit, metadata=meta,
                                   description=f"newest verified off-site copy ({key}) is {hours} h old; limit is "
                                               f"{limit / 3600:g} h (RPO + lag)")

    return _freshness


def run_subset(settings: Settings, store: str) -> tuple[offsite_subset.SubsetRun, dict[str, Any]]:
    """This run's rotating deep verification of `store`'s off-site copies: the local slots, and the slots
    only S3 still holds (checked against their own manifests); (run, coverage summary)."""
    target = offsite_target(settings, f"the {store} off-site copies")
    catalog = settings.catalog()
    policy = offsite_policy(settings).verify_subset
    local = catalog.list(store)
    with tempfile.TemporaryDirectory(prefix="cb-subset-") as tmp:
        remote_only = [a for key in sorted(set(offsite.list_offsite(store, target)) - {a.partition_key for a in local})
                       if (a := remote_artifact(target, store, key, Path(tmp) / key)) is not None]
        run = offsite_subset.verify_subset(
            store, [*local, *remote_only], target, catalog, policy,
            versions=lambda a: offsite_versions.load(catalog, store, a.partition_key))
    return run, offsite_subset.coverage(catalog, store, policy)


def subset_check(src: OffsiteSource) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=src.key, name=offsite_subset.SUBSET_CHECK,
                    description=f"Re-reads and hashes this run's rotating subset of {src.store}'s off-site objects "
                                "(offsite.verify_subset: a fraction a run, every object once per period).")
    def _subset(context: dg.AssetCheckExecutionContext, backups: BackupsResource) -> dg.AssetCheckResult:
        try:
            run, summary = run_subset(backups.settings(), src.store)
        except (CbBackupsError, dg.Failure) as exc:
            return dg.AssetCheckResult(passed=False, description=getattr(exc, "description", None) or str(exc))
        meta: dict[str, Any] = {k: v for k, v in summary.items() if isinstance(v, int | float)}
        meta.update(objects_read=run.objects_read, bytes_read=run.bytes_read, objects=run.objects, bytes=run.bytes,
                    coverage=offsite_subset.describe(summary))
        if not run.ok:
            context.log.warning(f"{src.store}: {offsite_subset.SUBSET_CHECK} failed: " + "; ".join(run.problems))
        return dg.AssetCheckResult(passed=run.ok, metadata=meta, severity=dg.AssetCheckSeverity.ERROR,
                                   description="; ".join(run.problems) if run.problems else
                                   f"{run.objects_read} of {run.objects} object(s) re-read ({run.bytes_read} bytes); "
                                   f"coverage {offsite_subset.describe(summary)}")

    return _subset


def freshness_job(sources: Sequence[OffsiteSource]) -> "UnresolvedAssetJobDefinition":
    return dg.define_asset_job("offsite_freshness_job",
                               selection=dg.AssetSelection.checks(*[dg.AssetCheckKey(s.key, FRESHNESS)
                                                                    for s in sources]),
                               description="Is every store's newest verified off-site copy within RPO + lag?")


def build(sources: Sequence[OffsiteSource]) -> dg.Definitions:
    jobs = [offsite_job(s) for s in sources]
    by_store = {s.store: s for s in sources}
    rpo = [(spec, by_store[spec.name]) for spec in STORES if spec.name in by_store]
    fresh_job = freshness_job([src for _, src in rpo])
    deep_job = dg.define_asset_job("offsite_deep_subset_job", selection=dg.AssetSelection.checks(
        *[dg.AssetCheckKey(s.key, offsite_subset.SUBSET_CHECK) for s in sources]),
        description="Re-read this run's rotating subset of every store's off-site objects.")
    return dg.Definitions(
        assets=[offsite_asset(s) for s in sources],
        asset_checks=[*(offsite_checks(s) for s in sources), *(freshness_check(spec, src) for spec, src in rpo),
                      *(subset_check(s) for s in sources)],
        jobs=[*jobs, *(offsite_verify_job(s) for s in sources), fresh_job, deep_job],
        schedules=[dg.ScheduleDefinition(name="offsite_freshness_schedule", job=fresh_job,
                                         cron_schedule=FRESHNESS_CRON, execution_timezone=TIMEZONE,
                                         default_status=dg.DefaultScheduleStatus.RUNNING),
                   dg.ScheduleDefinition(name="offsite_deep_subset_schedule", job=deep_job,
                                         cron_schedule=SUBSET_CRON, execution_timezone=TIMEZONE,
                                         default_status=dg.DefaultScheduleStatus.RUNNING
                                         if s3_configured_at_load() else dg.DefaultScheduleStatus.STOPPED)],
        sensors=[copy_sensor(sources, jobs)],
    )


defs = build(SOURCES)
