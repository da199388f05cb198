"""Nothing good is replaced silently (issue 17 item 6), with the real Valkey and SeaweedFS S3.

A second backup of a slot keeps the first as a superseded copy: listed, named in the CLI, the run log
and the asset metadata; retention keeps it until the replacement verified and was verified off-site,
then deletes it (and logs the deletion).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli import app as cli
from cb_backups.config.settings import load_settings
from cb_backups.core.fileio import sha256_file
from cb_backups.defs import progress
from cb_backups.defs.retention import run_retention
from cb_backups.offsite import s3 as offsite
from cb_backups.retention.apply import read_deletions
from cb_backups.stores.registry import open_store
from cb_backups_tests.servers.s3 import SeaweedS3


def superseded_plan(store: str = "valkey") -> dict[str, str]:
    """copy id -> "keep: reason" / "delete: reason", from a real (dry-run) retention plan."""
    [outcome] = run_retention(load_settings(), [store], dry_run=True)
    assert outcome.local is not None and not outcome.errors, outcome.errors
    return {c: f"{a}: {r}" for a, items in (("keep", outcome.local.superseded_keep),
                                            ("delete", outcome.local.superseded_delete)) for _, c, r in items}


def test_a_second_backup_keeps_the_first_until_its_replacement_is_safe(
        cb_env: dict[str, str], s3_env: dict[str, str], s3_server: SeaweedS3, s3_bucket: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CB_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    settings = load_settings()
    catalog = settings.catalog()

    assert cli.main(["backup", "valkey"]) == 0  # through Dagster: backup + its checks (verification)
    first = catalog.list("valkey")[-1]
    key, first_sha = first.partition_key, sha256_file(first.path("manifest.json"))[0]
    first_bytes = {f.name: first.path(f.name).read_bytes() for f in first.manifest.files}
    capsys.readouterr()

    assert cli.main(["backup", "valkey", "--slot", key]) == 0
    out = capsys.readouterr().out
    [copy] = catalog.superseded("valkey", key)
    assert f"replaced earlier backup of valkey slot {key}" in " ".join(out.split())
    assert copy.label in out.replace("\n", "")
    # the first backup survives byte for byte, with its manifest and verification record
    assert sha256_file(copy.artifact.path("manifest.json"))[0] == first_sha
    assert {f.name: copy.artifact.path(f.name).read_bytes() for f in copy.artifact.manifest.files} == first_bytes
    record = catalog.verification_of(copy.artifact)
    assert record is not None and record.ok
    second = catalog.require("valkey", key)
    assert copy.replaced_by == sha256_file(second.path("manifest.json"))[0] != first_sha

    # the run log and the asset metadata say so; captured_at is a timestamp, the inventory a table
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("valkey_backup"))
    assert event is not None and event.asset_materialization is not None
    meta = event.asset_materialization.metadata
    assert f"kept as {catalog.store_dir('valkey') / copy.label}" in str(meta["superseded"].value)
    assert isinstance(meta["captured_at"], dg.TimestampMetadataValue)
    assert isinstance(meta["inventory"], dg.TableMetadataValue) and meta["inventory"].records
    logged = [e.user_message for e in instance.all_logs(event.run_id)]
    assert any(f"replaced earlier backup of valkey slot {key}" in m and copy.label in m for m in logged)

    # `list` shows it, JSON too
    assert cli.main(["list", "valkey", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["backups"]
    kept = [e for e in listed if e["superseded"]]
    assert [(e["slot"], e["superseded"]["copy"], e["verified"]) for e in kept] == [(key, copy.name, "yes")]
    assert [e["slot"] for e in listed if not e["superseded"]] == [key]

    # a third backup written but not verified yet: both earlier ones are kept, whatever else
    store = open_store("valkey", settings)
    third = catalog.write("valkey", key, lambda into: store.backup(into))
    copies = catalog.superseded("valkey", key)
    assert copies[0].name == copy.name and len(copies) == 2
    assert superseded_plan() == {c.name: "keep: its replacement has not verified yet" for c in copies}
    [outcome] = run_retention(settings, ["valkey"])
    assert len(catalog.superseded("valkey", key)) == 2 and not outcome.deleted

    # verified locally, but not off-site yet: still kept
    catalog.record_verification(third, store.verify(third))
    assert superseded_plan() == {c.name: "keep: its replacement is not yet verified off-site" for c in copies}
    run_retention(settings, ["valkey"])
    assert len(catalog.superseded("valkey", key)) == 2

    # copied and verified off-site: now retention deletes both copies, and logs it; the slot is intact
    # (through the CLI and Dagster: the copy's byte progress reaches the terminal's listener and the run log)
    seen: list[tuple[str, int, int | None]] = []
    progress.LISTENERS.append(lambda message, done, total: seen.append((message, done, total)))
    try:
        assert cli.main(["offsite", "valkey", "--slot", key]) == 0
    finally:
        progress.LISTENERS.clear()
    _, done, total = seen[-1]  # the files, then the manifest: every byte sent, counted against one total
    assert done == total and total is not None and total > third.manifest.total_bytes, seen
    copied = instance.get_latest_materialization_event(dg.AssetKey("valkey_offsite"))
    assert copied is not None and copied.asset_materialization is not None
    assert isinstance(copied.asset_materialization.metadata["url"], dg.UrlMetadataValue)
    lines = [e.user_message for e in instance.all_logs(copied.run_id)]
    assert any("(100%)" in m and m.endswith("]") for m in lines), lines
    target = offsite.S3Target(settings.s3)
    assert offsite.verify_offsite(third, target).ok
    assert set(superseded_plan().values()) == {"delete: superseded: its replacement verified and was copied "
                                               "off-site"}
    [outcome] = run_retention(settings, ["valkey"])
    assert not outcome.errors, outcome.errors
    assert catalog.superseded("valkey", key) == []
    assert not any(p.exists() for p in (c.artifact.directory for c in copies))
    deleted = [r for r in read_deletions(catalog.root, "valkey") if "superseded copy" in r.reason]
    assert sorted(r.reason.split(":")[0] for r in deleted) == sorted(f"superseded copy {c.name}" for c in copies)
    assert all(r.partition == key for r in deleted)
    assert catalog.require("valkey", key).manifest == third.manifest and store.verify(third).ok
    assert [a.partition_key for a in catalog.list("valkey")] == [key]


def test_sweep_finishes_a_killed_delete_of_a_superseded_copy(tmp_path: Path) -> None:
    """A retention run killed after hiding a superseded copy (`.deleting-*`, apply._remove_backup_dir) leaves it
    inside `_superseded/<slot>/`; the catalog's sweep removes it, and leaves the kept copy and the slot alone."""
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.fileio import HashingWriter
    from cb_backups.core.model import BackupOutput, FileRecord, Verification

    catalog = Catalog(tmp_path / "backups")

    def write(body: bytes) -> None:
        def into(folder: Path) -> BackupOutput:
            with HashingWriter(folder / "dump.bin") as out:
                out.write(body)
            return BackupOutput([FileRecord("dump.bin", out.bytes, out.sha256)], "test", {}, {}, {})

        catalog.record_verification(catalog.write("valkey", "2026-11-24-06:00", into), Verification(True))

    for body in (b"first", b"second", b"third"):
        write(body)
    first, second = catalog.superseded("valkey", "2026-11-24-06:00")
    hidden = first.artifact.directory.with_name(f".deleting-{first.name}-0badc0de")
    os.rename(first.artifact.directory, hidden)  # what a killed delete leaves: renamed, not yet removed
    top = catalog.store_dir("valkey") / ".deleting-2026-11-23-06:00-0badc0de"  # and one beside the slots
    top.mkdir()
    (top / "dump.bin").write_bytes(b"half deleted")
    removed = catalog.sweep("valkey")
    assert set(removed) == {hidden, top} and not hidden.exists() and not top.exists()
    assert [c.name for c in catalog.superseded("valkey", "2026-11-24-06:00")] == [second.name]
    assert second.artifact.path("dump.bin").read_bytes() == b"second"
    assert catalog.require("valkey", "2026-11-24-06:00").path("dump.bin").read_bytes() == b"third"
    with catalog.slot_lock("valkey", "2026-11-24-06:00"):  # a slot being written is left for the next sweep
        hidden.mkdir()
        assert catalog.sweep("valkey") == [] and hidden.is_dir()
    assert catalog.sweep("valkey") == [hidden]
