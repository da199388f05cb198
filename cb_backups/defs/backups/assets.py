"""Factory: one partitioned backup asset per store, built from the StoreSpec table."""
from datetime import timedelta

import dagster as dg

from cb_backups.core.catalog import MANIFEST, Catalog, parse_iso, utcnow
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Artifact
from cb_backups.core.partitions import parse_slot
from cb_backups.core.specs import StoreSpec
from cb_backups.defs.progress import dagster_progress
from cb_backups.defs.resources import BackupsResource
from cb_backups.stores.hooks import with_hooks

OWNER = "team:platform"  # every asset's owner in the UI (asset catalog filters, alerts routing)


def refuse_outside_retention(spec: StoreSpec, key: str) -> None:
    """A slot whose window ended longer ago than retention would be pruned at once: refuse it."""
    end = parse_slot(spec.partitions, key)
    age = utcnow() - end.astimezone(utcnow().tzinfo)
    if age > timedelta(days=spec.retention_days):
        raise dg.Failure(description=(
            f"{spec.name} slot {key} ended {age.days} days ago, beyond the {spec.retention_days}-day retention; "
            "a backup taken now would be pruned immediately. Pick a slot within retention."))


def artifact_metadata(artifact: Artifact) -> dict[str, dg.MetadataValue]:
    m = artifact.manifest
    meta: dict[str, dg.MetadataValue] = {
        "path": dg.MetadataValue.path(str(artifact.directory)),
        "bytes": dg.MetadataValue.int(m.total_bytes),
        "duration_seconds": dg.MetadataValue.float(m.duration_seconds),
        "captured_at": dg.MetadataValue.timestamp(parse_iso(m.captured_at)),
        "method": dg.MetadataValue.text(m.method),
        "sha256": dg.MetadataValue.json({f.name: f.sha256 for f in m.files}),
        "versions": dg.MetadataValue.json(m.versions),
    }
    # A second record of the manifest itself: someone able to rewrite a file and its
    # manifest together cannot rewrite Dagster's event log as well.
    from cb_backups.core.fileio import sha256_file

    meta["manifest_sha256"] = dg.MetadataValue.text(sha256_file(artifact.path(MANIFEST))[0])
    rows = []
    for section, counts in m.inventory.items():
        if section == "estimates":
            continue
        for name, count in counts.items():
            meta[f"count/{section}/{name}"] = dg.MetadataValue.int(count)  # one series per count in the UI
            rows.append(dg.TableRecord({"section": section, "name": name, "count": int(count)}))
    meta["inventory"] = dg.MetadataValue.table(rows, schema=INVENTORY_SCHEMA)
    return meta


INVENTORY_SCHEMA = dg.TableSchema(columns=[dg.TableColumn("section", "string"), dg.TableColumn("name", "string"),
                                           dg.TableColumn("count", "int")])


def superseded_lines(catalog: Catalog, artifact: Artifact) -> list[str]:
    """"replaced earlier backup of slot X, kept as ..." for each copy `artifact` superseded (none: the slot
    was empty, or its earlier backup had failed verification and was deleted)."""
    return [f"replaced earlier backup of {artifact.store} slot {artifact.partition_key} (captured "
            f"{c.artifact.manifest.captured_at}), kept as {catalog.store_dir(artifact.store) / c.label} until the "
            "new one has verified (and, with off-site on, been copied)" for c in catalog.superseded_by(artifact)]


def backup_asset(spec: StoreSpec, configured: bool = True) -> dg.AssetsDefinition:
    from cb_backups.config.settings import CONNECTIONS

    unconfigured = "" if configured else (f" NOT CONFIGURED when this code location loaded: set "
                                          f"{CONNECTIONS[spec.name].env}; its schedule starts stopped.")

    @dg.asset(
        name=f"{spec.name}_backup",
        partitions_def=spec.partitions,
        group_name="backups",
        kinds={spec.name, "backup"},
        owners=[OWNER],
        pool=f"store_{spec.name}",
        description=f"{spec.title} backup for one slot (RPO {spec.rpo}, retention {spec.retention_days} days)."
                    + unconfigured,
        metadata={"store": spec.name, "priority": spec.priority, "rpo_hours": spec.rpo / timedelta(hours=1),
                  "configured": configured},
        tags={"store": spec.name},
    )
    def _backup(context: dg.AssetExecutionContext, backups: BackupsResource) -> dg.MaterializeResult:
        key = context.partition_key
        refuse_outside_retention(spec, key)
        try:
            store = backups.store(spec.name)
            catalog = backups.catalog()
            catalog.sweep(spec.name)  # leftovers of killed runs; slots being written are locked
            health = store.health(catalog.root)
            if not health.ok:
                raise dg.Failure(description=f"{spec.name} pre-backup checklist failed: {'; '.join(health.problems)}")
            context.log.info(f"backing up {spec.name} slot {key} into {catalog.store_dir(spec.name)}")
            fenced = with_hooks(backups.settings(), [spec.name], lambda into: store.backup(
                into, dagster_progress(context)), context.log.info)  # pre_backup/post_backup quiesce hooks
            artifact = catalog.write(spec.name, key, fenced)
        except CbBackupsError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(f"{spec.name} slot {key}: {artifact.manifest.total_bytes} bytes in "
                         f"{artifact.manifest.duration_seconds}s")
        metadata = artifact_metadata(artifact)
        replaced = superseded_lines(catalog, artifact)
        for line in replaced:
            context.log.warning(line)
        if replaced:
            metadata["superseded"] = dg.MetadataValue.text("; ".join(replaced))
        return dg.MaterializeResult(metadata=metadata)

    return _backup

