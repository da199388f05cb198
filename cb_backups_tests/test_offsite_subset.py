"""Off-site deep verification in rotating subsets, against a REAL S3 server (SeaweedFS)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cb_backups.config.retention import VerifySubset, offsite_from_config
from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import ConfigError
from cb_backups.core.model import Artifact
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import subset
from cb_backups_tests.servers.s3 import SeaweedS3
from cb_backups_tests.test_offsite import fake_backup

KiB = 1024
START = datetime(2026, 1, 1, 6, tzinfo=UTC)


def test_plan_reads_every_object_within_the_period_for_a_year() -> None:
    """A year of daily 100-byte-unit backups kept 365 days: each daily run reads about the fraction, and no
    object goes unread longer than the period."""
    policy = VerifySubset(fraction=0.02, period_days=30)
    entries: dict[str, subset.Entry] = {}
    last_read: dict[str, datetime] = {}
    worst = timedelta(0)
    read_per_day = []
    for day in range(365):
        now = START + timedelta(days=day)
        entries[f"slot-{day}"] = subset.Entry(100, "x", f"slot {day}", now.isoformat())
        last_read.setdefault(f"slot-{day}", now)
        chosen = subset.plan(entries, policy, now)
        read_per_day.append(sum(entries[i].bytes for i in chosen))
        for ident, entry in entries.items():
            worst = max(worst, now - last_read[ident])
            if ident in chosen:
                entry.read_at = now.isoformat()
                last_read[ident] = now
    assert worst <= timedelta(days=30)
    total = 100 * 365
    # at the end: about total/period a day (every object once a month), far below re-reading everything
    assert max(read_per_day[-30:]) <= 0.1 * total
    # and still the whole history within the last period (the newest month counts from its upload)
    assert sum(read_per_day[-30:]) >= 100 * (365 - 30)


def test_plan_rereads_failing_objects_every_run_without_stalling_the_rotation() -> None:
    now = START
    entries = {"a": subset.Entry(10, "x", "a", now.isoformat(), read_at=now.isoformat(), failed_at=now.isoformat()),
               "b": subset.Entry(10, "x", "b", now.isoformat(), read_at=now.isoformat()),
               "c": subset.Entry(10, "x", "c", now.isoformat(), read_at=(now + timedelta(hours=1)).isoformat())}
    # the failing one, then the least recently read of the rest up to the fraction (not counting "a")
    assert subset.plan(entries, VerifySubset(fraction=0.01, period_days=30), now + timedelta(days=1)) == ["a", "b"]


@pytest.mark.parametrize("value, allowed", [
    ({"fraction": 0}, "above 0"), ({"fraction": 1.5}, "above 0"), ({"period_days": 0}, ">= 1"),
    ({"period": 30}, "fraction, period_days"), ("10%", "a mapping"),
])
def test_bad_verify_subset_setting_is_one_clear_error(value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        offsite_from_config({"offsite": {"verify_subset": value}})
    assert allowed in str(err.value)
    assert offsite_from_config({"offsite": {"verify_subset": {"fraction": 0.1}}}).verify_subset == \
        VerifySubset(0.1, 30)


def test_a_flipped_byte_off_site_is_found_within_one_period(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str,
                                                            s3_env: dict[str, str]) -> None:
    catalog = Catalog(tmp_path / "backups")
    target = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="subset",
                                         multipart_chunk_mb=5), connect_timeout=2, read_timeout=20)
    slots: list[Artifact] = []
    for day in range(12):
        artifact = catalog.write("qdrant", f"2026-01-{day + 1:02d}", fake_backup({"a.snapshot": 64 * KiB}, seed=day))
        offsite.upload_artifact(artifact, target)
        slots.append(artifact)
    policy = VerifySubset(fraction=0.1, period_days=5)

    # Damage one object the way bit rot would: same key, size and sha256 metadata, one byte flipped.
    victim = slots[7]
    key = target.key("qdrant", victim.partition_key, "a.snapshot")
    data = bytearray(victim.path("a.snapshot").read_bytes())
    data[1000] ^= 0x01
    target.client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data),
                             Metadata={"sha256": victim.manifest.files[0].sha256})
    assert offsite.verify_offsite(victim, target).ok  # a shallow check cannot see it: only a re-read can

    found_on = None
    total_read = 0
    for day in range(policy.period_days):
        run = subset.verify_subset("qdrant", slots, target, catalog, policy, now=START + timedelta(days=day))
        assert run.objects == 12 and 0 < run.objects_read < 12
        total_read += run.bytes_read
        if run.problems:
            found_on = day
            assert len(run.problems) == 1 and victim.partition_key in run.problems[0]
            break
    assert found_on is not None and found_on < policy.period_days
    assert total_read < 12 * 64 * KiB * (found_on + 1)  # never the whole history every day

    record = catalog.offsite_coverage("qdrant")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    summary = subset.coverage(catalog, "qdrant", policy, now=START + timedelta(days=found_on))
    assert summary["failing"] == 1 and summary["objects"] == 12
    assert subset.describe(summary).endswith("1 failing")

    # the next run reads the failing object again; once re-sent it verifies and the failure clears
    offsite.upload_artifact(victim, target, force=True)
    healed = subset.verify_subset("qdrant", slots, target, catalog, policy,
                                  now=START + timedelta(days=found_on + 1))
    assert healed.ok, healed.problems
    summary = subset.coverage(catalog, "qdrant", policy, now=START + timedelta(days=found_on + 1))
    assert summary["failing"] == 0

    # a full period of runs later every object was re-read within the period
    for day in range(found_on + 2, found_on + 2 + policy.period_days):
        assert subset.verify_subset("qdrant", slots, target, catalog, policy, now=START + timedelta(days=day)).ok
    summary = subset.coverage(catalog, "qdrant", policy, now=START + timedelta(days=day))
    assert summary["read_within_period"] == 1.0 and summary["never_read"] == 0
    assert subset.describe(summary) == "100% in 5 d"
