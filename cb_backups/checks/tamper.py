"""Tamper evidence from a second record: Dagster's event log (and the off-site copy).

The checksums in `manifest.json` (and the manifest's own seal) live beside the
data they protect, so someone who can rewrite a backup file can rewrite its
manifest and seal to match: every local check still passes. Each backup's
materialization in Dagster's event log keeps the sha256 of every file and of the
manifest as they were when the backup was written (`assets.artifact_metadata`),
and the off-site copy carries each file's sha256 in its S3 metadata. Rewriting
all of those as well needs write access to the Dagster instance's storage and
to the bucket too. `cross_check` compares the three records.

Not detected: a change made before the backup was recorded (the records agree
with what was written), and a rewrite of the backup, the event log database and
the off-site copy together.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import MANIFEST, Catalog
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.fileio import sha256_file
from cb_backups.core.model import Artifact
from cb_backups.offsite.s3 import SHA256_METADATA, S3Target, head, remote_sha256


def recorded_backup(instance: dg.DagsterInstance, store: str, key: str) -> dict[str, Any] | None:
    """`{"sha256": {file: hex}, "manifest_sha256": hex, "run_id": ...}` of the slot's latest materialization."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(f"{store}_backup"), asset_partitions=[key]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    meta = records[0].asset_materialization.metadata
    files = meta.get("sha256")
    manifest = meta.get("manifest_sha256")
    return {"sha256": dict(files.value) if files is not None else {},  # type: ignore[arg-type]
            "manifest_sha256": manifest.value if manifest is not None else None,
            "run_id": records[0].run_id}


def manifest_record_problems(instance: dg.DagsterInstance, artifact: Artifact) -> list[str]:
    """The manifest on disk against the `manifest_sha256` Dagster recorded for its slot when the backup was
    written; nothing when there is no such record (a backup written outside Dagster, or before it recorded
    one): then the seal is the only record of the manifest."""
    recorded = recorded_backup(instance, artifact.store, artifact.partition_key)
    then = recorded["manifest_sha256"] if recorded else None
    if not then:
        return []
    now = sha256_file(artifact.path(MANIFEST))[0] if artifact.path(MANIFEST).is_file() else "missing"
    if now == then:
        return []
    return [f"{MANIFEST} sha256 {now} differs from {then} recorded in Dagster's event log by backup run "
            f"{recorded['run_id'] if recorded else '?'}: the manifest changed after the backup was written"]


def _default_target() -> S3Target | None:
    settings = load_settings()
    if not settings.s3.enabled:
        return None
    return S3Target(settings.s3)


def cross_check(instance: dg.DagsterInstance, catalog: Catalog, store: str, key: str,
                target: S3Target | bool | None = True) -> list[str]:
    """What disagrees between the backup on disk, Dagster's record of it and its off-site copy (empty: all agree).

    `target`: an S3Target, False for no off-site comparison, or True (default) for the configured one, if any.
    """
    artifact = catalog.get(store, key)
    if artifact is None:
        return [f"{store} {key}: no complete backup in {catalog.store_dir(store)}"]
    recorded = recorded_backup(instance, store, key)
    if recorded is None:
        return [f"{store} {key}: Dagster's event log holds no materialization of this slot, so there is no second "
                "record to compare with (was it written outside cb-backups?)"]
    problems: list[str] = []
    manifest_now = sha256_file(artifact.path(MANIFEST))[0]
    if recorded["manifest_sha256"] and recorded["manifest_sha256"] != manifest_now:
        problems.append(f"{store} {key}: {MANIFEST} sha256 {manifest_now[:12]}… differs from the "
                        f"{recorded['manifest_sha256'][:12]}… recorded by run {recorded['run_id']}")
    listed = {f.name: f.sha256 for f in artifact.manifest.files}
    for name in sorted(set(listed) | set(recorded["sha256"])):
        then, manifest_says = recorded["sha256"].get(name), listed.get(name)
        if then is None or manifest_says is None:
            problems.append(f"{store} {key}: {name} is {'not ' if then is None else ''}in the event log's record "
                            f"and {'not ' if manifest_says is None else ''}in the manifest")
            continue
        if manifest_says != then:
            problems.append(f"{store} {key}: the manifest's sha256 for {name} ({manifest_says[:12]}…) differs from "
                            f"the {then[:12]}… recorded when the backup was written")
        path = artifact.path(name)
        actual = sha256_file(path)[0] if path.is_file() else "missing"
        if actual != then:
            problems.append(f"{store} {key}: {name} on disk (sha256 {actual[:12]}…) differs from the {then[:12]}… "
                            "recorded when the backup was written")
    if target is True:
        try:
            target = _default_target()
        except CbBackupsError as exc:
            return [*problems, f"{store} {key}: off-site copy not compared: {exc}"]
    if target:
        problems += _offsite_problems(target, store, key, recorded)
    return problems


def _offsite_problems(target: S3Target, store: str, key: str, recorded: dict[str, Any]) -> list[str]:
    problems = []
    try:
        remote_manifest = remote_sha256(target, target.key(store, key, MANIFEST))
        if remote_manifest is None:
            return []  # not copied off-site (yet): nothing to compare
        if recorded["manifest_sha256"] and remote_manifest != recorded["manifest_sha256"]:
            problems.append(f"{store} {key}: the off-site {MANIFEST} differs from the one recorded in the event log")
        for name, then in sorted(recorded["sha256"].items()):
            stored = head(target, target.key(store, key, name))
            remote = ((stored or {}).get("Metadata") or {}).get(SHA256_METADATA)
            if remote != then:
                problems.append(f"{store} {key}: off-site {name} sha256 metadata {str(remote)[:12]}… differs from "
                                f"the {then[:12]}… recorded in the event log")
    except CbBackupsError as exc:
        problems.append(f"{store} {key}: off-site copy could not be compared: {exc}")
    return problems
