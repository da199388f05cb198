"""Corruption: random bit flips in artifacts and manifests are all detected, refused and skipped;
a consistent rewrite of a file and its manifest is caught from Dagster's event log (cb_backups.tamper)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.checks.slot import evaluate_slot
from cb_backups.checks.tamper import cross_check
from cb_backups.cli.runs import run_job
from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import MANIFEST, MANIFEST_SEAL, checksum_problems
from cb_backups.core.errors import RestoreRefused
from cb_backups.core.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from cb_backups.core.model import Artifact, Target, Verification
from cb_backups.core.specs import spec_for
from cb_backups.defs.resources import BackupsResource
from cb_backups.offsite import s3 as offsite
from cb_backups.stores.base import Store
from cb_backups_tests.servers.s3 import SeaweedS3

SEED = 20261124
FLIPS = 20


def slots(store: str, n: int) -> list[str]:
    return spec_for(store).partitions.get_partition_keys()[-n:]


def full_check(store: Store) -> object:
    def verify(artifact: Artifact) -> Verification:
        problems = checksum_problems(artifact)
        if problems:
            return Verification(False, problems)
        return store.verify(artifact)

    return verify


def flip_bit(path: Path, rng: random.Random) -> tuple[int, int]:
    data = bytearray(path.read_bytes())
    offset, bit = rng.randrange(len(data)), rng.randrange(8)
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))
    return offset, bit


def test_twenty_bit_flips_are_all_detected_refused_and_skipped(cb_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    backups = BackupsResource()
    catalog = backups.catalog()
    newest: dict[str, Artifact] = {}
    older: dict[str, str] = {}
    for name in ("postgres", "valkey"):
        old_key, new_key = slots(name, 2)
        for key in (old_key, new_key):
            assert run_job(f"{name}_backup_job", key, instance).success
        newest[name] = catalog.require(name, new_key)
        older[name] = old_key
    stores = {name: backups.store(name) for name in newest}
    targets = {"postgres": Target("scratch", {"dbname": "cb_fault_scratch"}), "valkey": Target("scratch")}

    rng = random.Random(SEED)
    seen: list[str] = []
    for _ in range(FLIPS):
        name = rng.choice(sorted(newest))
        artifact, store = newest[name], stores[name]
        victims = [artifact.path(f.name) for f in artifact.manifest.files] + [artifact.path(MANIFEST)]
        path = rng.choice(victims)
        original = path.read_bytes()
        offset, bit = flip_bit(path, rng)
        where = f"{name} {path.name} byte {offset} bit {bit}"
        seen.append(where)
        try:
            # 1. the post-backup checks fail for that slot
            _, outcomes = evaluate_slot(store, catalog, artifact.partition_key)
            assert not all(o.passed for o in outcomes), f"undetected: {where}"
            # 2. a restore of it is refused before the target is touched
            with pytest.raises(RestoreRefused):
                store.restore(artifact, targets[name])
            # 3. latest-verified falls back to the older good backup
            chosen = catalog.latest_verified(name, verify=full_check(store))  # type: ignore[arg-type]
            assert chosen is not None and chosen.partition_key == older[name], where
        finally:
            path.write_bytes(original)
    assert any(MANIFEST in s for s in seen) and any(MANIFEST not in s for s in seen)
    for name, artifact in newest.items():  # put back, everything verifies again
        _, outcomes = evaluate_slot(stores[name], catalog, artifact.partition_key)
        assert all(o.passed for o in outcomes)
        assert catalog.latest_verified(name, verify=full_check(stores[name])).partition_key == artifact.partition_key  # type: ignore[arg-type, union-attr]
    with pytest.raises(Exception):  # noqa: B017 - the scratch database was never created
        stores["postgres"].connect("cb_fault_scratch").close()  # type: ignore[attr-defined]


def rewrite_consistently(victim: Artifact, replacement: Path) -> None:
    """What an attacker with write access to the backup folder does: swap a file for another valid one and
    rewrite the manifest and its seal to match, so every local checksum agrees."""
    name = replacement.name
    shutil.copyfile(replacement, victim.path(name))
    digest, size = sha256_file(victim.path(name))
    data = json.loads(victim.path(MANIFEST).read_text())
    for record in data["files"]:
        if record["name"] == name:
            record.update(sha256=digest, bytes=size)
    atomic_write_json(victim.path(MANIFEST), data)
    seal = sha256_file(victim.path(MANIFEST))[0]
    atomic_write_bytes(victim.path(MANIFEST_SEAL), f"{seal}  {MANIFEST}\n".encode())


def test_consistent_rewrite_of_file_and_manifest_is_caught_from_the_event_log(
        cb_env: dict[str, str], s3_server: SeaweedS3, s3_bucket: str, s3_env: dict[str, str]) -> None:
    instance = dg.DagsterInstance.get()
    backups = BackupsResource()
    catalog = backups.catalog()
    store = backups.store("valkey")
    victim_key, donor_key = slots("valkey", 2)
    for key in (victim_key, donor_key):
        assert run_job("valkey_backup_job", key, instance).success
    target = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="tamper"),
                              connect_timeout=2, read_timeout=10)
    victim = catalog.require("valkey", victim_key)
    offsite.upload_artifact(victim, target)
    assert cross_check(instance, catalog, "valkey", victim_key, target) == []
    assert cross_check(instance, catalog, "valkey", donor_key, target) == []  # never copied: nothing to compare

    donor = catalog.require("valkey", donor_key)
    assert sha256_file(donor.path("dump.rdb")) != sha256_file(victim.path("dump.rdb"))
    rewrite_consistently(victim, donor.path("dump.rdb"))
    victim = catalog.require("valkey", victim_key)

    # Checksums alone are defeated: every local check of the slot passes.
    _, outcomes = evaluate_slot(store, catalog, victim_key)
    assert all(o.passed for o in outcomes), [o for o in outcomes if not o.passed]
    # The second record is not.
    problems = cross_check(instance, catalog, "valkey", victim_key, target)
    assert any(MANIFEST in p and "recorded by run" in p for p in problems), problems
    assert any("manifest's sha256 for dump.rdb" in p for p in problems), problems
    assert any("dump.rdb on disk" in p for p in problems), problems
    assert not any("off-site" in p for p in problems)  # the off-site copy still agrees with the event log
    # The off-site copy is an independent check too: rewrite it as well and it disagrees with the event log.
    offsite.upload_artifact(victim, target, force=True)
    problems = cross_check(instance, catalog, "valkey", victim_key, target)
    assert any("off-site manifest.json differs" in p for p in problems), problems
    assert any("off-site dump.rdb sha256 metadata" in p for p in problems), problems
    # A slot written outside Dagster has no second record, and says so.
    assert "no materialization" in cross_check(instance, catalog, "valkey", "2026-11-02-00:00", False)[0] or \
        "no complete backup" in cross_check(instance, catalog, "valkey", "2026-11-02-00:00", False)[0]
