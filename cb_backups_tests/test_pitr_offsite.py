"""Point-in-time recovery from off-site copies, encrypted: a real PostgreSQL 16 (pgserver) streaming WAL into an
age-encrypted archive, copied to a real S3 (SeaweedFS) by the Dagster jobs, then recovered on a "machine" whose
local WAL archive and base backup were deleted.

One server, one receiver and one bucket for the module (the tests run in file order and build on each other).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cb_backups.config.settings import Settings, load_settings
from cb_backups.core.catalog import utcnow
from cb_backups.core.crypto import AGE_HEADER, generate
from cb_backups.core.errors import RestoreRefused
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import wal as offsite_wal
from cb_backups.restore.pitr import execute_pitr, plan_pitr
from cb_backups.stores.pitr import basebackup, recovery
from cb_backups.stores.pitr.archive import WalArchive, pitr_catalog
from cb_backups.stores.pitr.health import WAL_CHECKS, hour_outcomes
from cb_backups.stores.pitr.receiver import Receiver
from cb_backups.stores.pitr.server import Server
from cb_backups_tests.servers.s3 import SeaweedS3
from cb_backups_tests.test_pitr import PASSWORD, WAIT, _env, burst, receiving

from cb_backups.core.net import wait_until  # isort: skip


@dataclass
class World:
    pg: EmbeddedPostgres
    settings: Settings
    server: Server
    archive: WalArchive
    receiver: Receiver
    thread: threading.Thread
    target: offsite.S3Target
    s3: SeaweedS3
    bucket: str
    t_mid: str
    base_key: str

    def count(self, port: int) -> dict[int, int]:
        with self.server.connect("127.0.0.1", port) as conn:
            return dict(conn.execute("SELECT burst, count(*) FROM memories GROUP BY burst").fetchall())


def _switch(w: World) -> str:
    with w.pg.connect() as conn:
        name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    wait_until(lambda: w.archive.get(name) is not None, WAIT, f"segment {name} archived")
    return name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3) -> Iterator[World]:
    root = tmp_path_factory.mktemp("pitr-offsite")
    identity, public = generate()
    key_file = root / "identity.txt"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    bucket = f"cb-pitr-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    pg = EmbeddedPostgres(password=PASSWORD).start()
    saved = dict(os.environ)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "CB_CONFIG"):
        os.environ.pop(var, None)
    os.environ.update({**_env(pg, root / "backups"), **s3_server.env(), "CB_S3_BUCKET": bucket,
                       "CB_S3_ENDPOINT_URL": s3_server.endpoint_url, "CB_S3_PREFIX": "cb",
                       "AWS_CONFIG_FILE": str(root / "no-aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
                       "AWS_EC2_METADATA_DISABLED": "true", "CB_AGE_RECIPIENTS": public,
                       "CB_AGE_IDENTITY_FILE": str(key_file), "CB_WAL_SLOT": "cb_offsite_wal"})
    receiver = thread = None
    try:
        settings = load_settings()
        server, archive, receiver, thread = receiving(settings, pg)
        from cb_backups.defs.wal import BASE_PARTITIONS

        w = World(pg, settings, server, archive, receiver, thread, offsite.S3Target(settings.s3), s3_server, bucket,
                  "", str(BASE_PARTITIONS.get_last_partition_key()))
        _switch(w)  # a segment before the base backup: WAL retention may delete it
        catalog = pitr_catalog(settings.catalog())
        base = catalog.write(basebackup.BASE_STORE, w.base_key, lambda into: basebackup.take(server, into))
        with catalog.plaintext(base) as plain:
            catalog.record_verification(base, basebackup.verify(server, plain, catalog.root / "_pitr"))
        burst(pg, 1, 100)
        burst(pg, 2, 200)
        with pg.connect() as conn:
            w.t_mid = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
        burst(pg, 3, 300)
        _switch(w)
        yield w
    finally:
        if receiver is not None and thread is not None:
            receiver.stop.set()
            thread.join(60)
        os.environ.clear()
        os.environ.update(saved)
        pg.cleanup()


def test_segments_and_base_backup_are_encrypted_at_rest(world: World) -> None:
    segments = world.archive.segments()
    assert segments and all(s.encrypted and s.file_name.endswith(".zst.age") for s in segments)
    for segment in segments:
        head = world.archive.path(segment).read_bytes()[:len(AGE_HEADER)]
        assert head == AGE_HEADER  # not zstd, not WAL: ciphertext
        assert (world.archive.path(segment).stat().st_mode & 0o777) == 0o600
    base = world.settings.catalog().list(basebackup.BASE_STORE)[-1]
    assert base.manifest.encrypted and world.settings.catalog().verification_of(base).ok  # type: ignore[union-attr]


def test_hour_checks_decrypt_for_pg_waldump(world: World) -> None:
    start = world.archive.segments()[0].completed
    outcomes = hour_outcomes(world.server, world.archive, start, utcnow())
    assert {o.name: o.passed for o in outcomes} == dict.fromkeys(WAL_CHECKS, True), outcomes


def test_dagster_jobs_copy_wal_and_base_backup_offsite(world: World, tmp_path: Path) -> None:
    import dagster as dg

    from cb_backups.cli.runs import failure_messages, run_job
    from cb_backups.defs.wal import WAL_PARTITIONS

    hour = WAL_PARTITIONS.get_last_partition_key()  # the run copies every segment not off-site yet
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        wal = run_job("postgres_wal_offsite_job", hour, instance)
        base = run_job("postgres_base_backup_offsite_job", world.base_key, instance)
    assert wal.success, failure_messages(wal)
    assert base.success, failure_messages(base)
    verdicts = {e.check_name: (e.passed, e.description) for e in wal.get_asset_check_evaluations()}
    assert verdicts["segments_offsite"][0] and verdicts["offsite_freshness"][0], verdicts
    assert {e.check_name: e.passed for e in base.get_asset_check_evaluations()} == {"offsite_complete": True}
    # every recorded segment is off-site with the sha256 of the local (encrypted) file, and its record beside it
    for segment in world.archive.segments():
        digest, size = offsite.read_sha256(world.target, offsite_wal.key_of(world.target, segment.file_name))
        assert (digest, size) == (segment.sha256, segment.bytes)
        assert offsite.head(world.target, offsite_wal.key_of(world.target, segment.record_name)) is not None
    assert offsite.list_offsite(basebackup.BASE_STORE, world.target) == [world.base_key]


def test_object_lock_keeps_a_segment_retention_would_delete(world: World, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from cb_backups.core.catalog import Catalog
    from cb_backups.offsite.lock import retention

    bucket = f"cb-pitr-lock-{uuid.uuid4().hex[:8]}"
    world.s3.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    (tmp_path / "cb.yaml").write_text("offsite:\n  object_lock: {mode: GOVERNANCE, days_beyond_retention: 1}\n")
    monkeypatch.setenv("CB_CONFIG", str(tmp_path / "cb.yaml"))
    monkeypatch.setenv("CB_S3_BUCKET", bucket)
    locked = offsite.S3Target(load_settings().s3)
    archive = WalArchive(Catalog(tmp_path / "backups"))  # its own archive: the world's off-site state stays as is
    raw = world.archive.extract(world.archive.segments()[0], tmp_path)
    segment = archive.record(raw)
    copy = offsite_wal.copy_segment(archive, locked, segment)
    until = retention(locked, copy.key, copy.version_id).until
    assert until is not None and until > utcnow() + timedelta(days=7)  # as long as the postgres backups (7 d) + 1
    gone = offsite_wal.delete(archive, locked, [segment.name])
    assert gone.deleted == [] and segment.name in gone.locked  # kept, and said until when
    assert segment.name in offsite_wal.remote_names(locked)


def test_a_segment_changed_since_it_was_recorded_is_never_copied(world: World, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.errors import VerificationFailed

    archive = WalArchive(Catalog(tmp_path / "backups"))  # its own archive: the world's off-site state stays
    segment = archive.record(world.archive.extract(world.archive.segments()[0], tmp_path))
    stored = archive.path(segment)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 tells
    stored.write_bytes(bytes(data))
    monkeypatch.setenv("CB_S3_PREFIX", f"changed-{uuid.uuid4().hex[:8]}")  # not the world's keys
    target = offsite.S3Target(load_settings().s3)
    key = offsite_wal.key_of(target, segment.file_name)
    with pytest.raises(VerificationFailed):
        offsite_wal.copy_segment(archive, target, segment)
    assert offsite.head(target, key) is None and offsite_wal.state(archive, segment.name) is None


def _lose_local_copies(world: World) -> None:
    """The machine lost its WAL archive and base backups; only S3 has them."""
    world.receiver.stop.set()
    world.thread.join(60)
    shutil.rmtree(world.archive.root)
    shutil.rmtree(world.settings.catalog().store_dir(basebackup.BASE_STORE))


def test_a_flipped_byte_offsite_is_refused_before_anything_changes(world: World) -> None:
    _lose_local_copies(world)
    plan = plan_pitr(world.settings, to_time=world.t_mid, source="offsite")
    assert plan.base_offsite and plan.fetch
    victim = plan.fetch[0]
    client, key = world.s3.client(), offsite_wal.key_of(world.target, victim.file_name)
    good = client.get_object(Bucket=world.bucket, Key=key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    client.put_object(Bucket=world.bucket, Key=key, Body=bytes(bad))
    before = sorted(Path(plan.work_root).iterdir()) if Path(plan.work_root).is_dir() else []
    try:
        with pytest.raises(RestoreRefused, match=victim.name):
            execute_pitr(plan)
        assert not world.archive.path(victim).exists()  # the bad download was not kept
        assert (sorted(Path(plan.work_root).iterdir()) if Path(plan.work_root).is_dir() else []) == before
    finally:
        client.put_object(Bucket=world.bucket, Key=key, Body=good)


def test_pitr_from_offsite_finds_exactly_bursts_1_and_2(world: World) -> None:
    plan = plan_pitr(world.settings, to_time=world.t_mid, source="offsite")
    assert plan.base_offsite and plan.fetch
    result = execute_pitr(plan)
    try:
        port = int(result.connection.split(":")[2].split("/")[0])
        assert world.count(port) == {1: 100, 2: 200}
        assert all(world.archive.path(s).is_file() for s in plan.fetch)  # downloaded into the usual place
    finally:
        recovery.stop(world.server, Path(result.data_dir))
        shutil.rmtree(Path(result.data_dir).parent)


def test_cli_restore_to_time_from_offsite(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's command, `restore postgres --to-time T --from offsite`, with the local copies gone again."""
    from cb_backups.cli.app import main

    shutil.rmtree(world.archive.root, ignore_errors=True)
    shutil.rmtree(world.settings.catalog().store_dir(basebackup.BASE_STORE), ignore_errors=True)
    os.environ["DAGSTER_HOME"] = str(tmp_path)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    code = main(["restore", "postgres", "--to-time", world.t_mid, "--from", "offsite"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "point-in-time restore of postgres" in out and "counts {'memories': 300}" in out, out
    data = Path(out.split("stop it with: pg_ctl -D ")[1].split(" stop")[0])
    recovery.stop(world.server, data)
    shutil.rmtree(data.parent)


def test_wal_retention_deletes_offsite_segments_no_base_backup_needs(world: World) -> None:
    from cb_backups.config.retention import policies_from_config
    from cb_backups.retention.wal import offsite_bases, prune_pitr
    from cb_backups.stores.pitr.wal import parse_segment

    before = offsite_wal.remote_names(world.target)
    result = prune_pitr(world.settings.catalog(), policies_from_config(world.settings.raw).for_store("postgres"),
                        offsite=world.target)
    assert result.deleted_offsite and not result.locked_offsite
    assert result.offsite_bases is not None and result.offsite_bases.kept_keys == [world.base_key]
    assert result.deleted_offsite_bases == []  # the only (newest verified) off-site base backup stays
    after = offsite_wal.remote_names(world.target)
    assert after == before - set(result.deleted_offsite)
    # only segments older than the (off-site only) base backup's start went; its start segment and later stay
    start = offsite_bases(world.settings.catalog(), world.target)[0].start_segno
    assert all(parse_segment(n)[1] < start for n in result.deleted_offsite), (result.deleted_offsite, start)
    kept = sorted(parse_segment(n)[1] for n in after if len(n) == 24)
    assert kept[0] == start and kept == list(range(start, kept[-1] + 1))


def test_a_timeline_history_only_offsite_is_fetched_and_verified(offsite_env: dict[str, str], tmp_path: Path,
                                                                s3_server: SeaweedS3) -> None:
    """A base backup on timeline 2 whose local archive is gone needs 00000002.history: the plan lists it among
    the downloads, the fetch verifies it against its off-site record (a flipped byte is refused) and recovery's
    WAL folder gets it (recovery.prepare extracts every history file of the archive)."""
    from cb_backups.core.errors import VerificationFailed
    from cb_backups.restore.pitr import remote_histories

    settings = load_settings()
    target = offsite.S3Target(settings.s3)
    archive = WalArchive(settings.catalog())
    history = tmp_path / "00000002.history"
    history.write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    recorded = archive.record(history)
    assert recorded.kind == "history"
    offsite_wal.copy_segment(archive, target, recorded)
    shutil.rmtree(archive.root)  # the machine lost its archive
    assert remote_histories(archive, target, 1, [], strict=True) == []  # timeline 1 has no history file
    [wanted] = remote_histories(archive, target, 2, [], strict=True)
    assert wanted == recorded
    key = offsite_wal.key_of(target, recorded.file_name)
    client, bucket = s3_server.client(), settings.s3.bucket
    good = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(VerificationFailed, match=r"00000002\.history"):
        offsite_wal.fetch(archive, target, wanted)
    assert archive.histories() == []  # nothing half-fetched is recorded
    client.put_object(Bucket=bucket, Key=key, Body=good)
    offsite_wal.fetch(archive, target, wanted)
    assert [h.name for h in archive.histories()] == ["00000002.history"]
    assert remote_histories(archive, target, 2, [], strict=True) == []  # now local: not fetched again
    (tmp_path / "wal").mkdir()
    archive.extract(archive.histories()[0], tmp_path / "wal")
    assert (tmp_path / "wal" / "00000002.history").read_bytes() == history.read_bytes()
