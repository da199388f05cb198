"""Secrets never leak: not in the Dagster event log, CLI output, manifests, check records, reports or S3 metadata.
Backup files are private (0600 files, 0700 folders) and archives are extracted safely."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from cb_backups.cli.runs import run_job
from cb_backups.config.settings import load_settings
from cb_backups.core.crypto import generate
from cb_backups.core.errors import RestoreRefused
from cb_backups.core.model import Target
from cb_backups.core.net import wait_until
from cb_backups.core.specs import spec_for
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups.restore.drill import run_drill
from cb_backups.stores.registry import open_store
from cb_backups.stores.volume import extract_tar
from cb_backups_tests.conftest import PG_PASSWORD, VALKEY_PASSWORD
from cb_backups_tests.servers.s3 import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
WRONG = "Wr0ng-dsn-Passw0rd-5e"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, **(env or {})})


def leaks(secrets: list[str], where: str, data: bytes | str) -> list[str]:
    blob = data.encode(errors="replace") if isinstance(data, str) else data
    return [f"{where} contains secret #{i}" for i, s in enumerate(secrets) if s.encode() in blob]


def test_no_secret_anywhere_after_backup_check_offsite_and_report(
        cb_env: dict[str, str], s3_server: SeaweedS3, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = [PG_PASSWORD, VALKEY_PASSWORD, s3_env["AWS_SECRET_ACCESS_KEY"]]
    # PostgreSQL encrypted (age): neither the identity nor the recipients file's public key may show up
    # anywhere; the run's checks read the identity (the plaintext is verified with it).
    identity, public = generate()
    (tmp_path / "identity.txt").write_text(f"{identity}\n")
    (tmp_path / "recipients.txt").write_text(f"# backup key\n{public}\n")
    (tmp_path / "cb.yaml").write_text(f"encryption:\n  enabled: false\n  stores: {{postgres: true}}\n"
                                      f"  recipients_file: {tmp_path / 'recipients.txt'}\n")
    monkeypatch.setenv("CB_CONFIG", str(tmp_path / "cb.yaml"))
    monkeypatch.setenv("CB_AGE_IDENTITY_FILE", str(tmp_path / "identity.txt"))
    secrets += [identity, public, identity.split("-")[-1]]
    monkeypatch.setenv("CB_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    instance = dg.DagsterInstance.get()
    pg_key = spec_for("postgres").partitions.get_partition_keys()[-1]
    vk_key = spec_for("valkey").partitions.get_partition_keys()[-1]
    outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    outputs.append(("backup postgres", cli("backup", "postgres", "--partition", pg_key)))
    assert run_job("valkey_backup_job", vk_key, instance).success
    assert run_job("valkey_verify_job", vk_key, instance).success
    outputs.append(("offsite postgres", cli("offsite", "postgres", "--partition", pg_key)))
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    day = pg_key[:10]
    outputs.append(("report", cli("report", "--from", day, "--to", day, "--format", "json",
                                  "--output", str(report_dir / "r.json"))))
    for name, done in outputs:
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-2000:])
    assert all(f.encrypted for f in load_settings().catalog().require("postgres", pg_key).manifest.files)
    # A wrong password embedded in the DSN: a failed run whose message shows no password.
    wrong = cli("backup", "postgres", "--partition", pg_key,
                env={"CB_POSTGRES_URL": cb_env["CB_POSTGRES_URL"].replace("codingbrain@", f"codingbrain:{WRONG}@"),
                     "CB_POSTGRES_PASSWORD": ""})
    assert wrong.returncode == 1 and "password authentication failed" in wrong.stderr
    outputs.append(("wrong DSN password", wrong))
    secrets.append(WRONG)

    found: list[str] = []
    for name, done in outputs:
        found += leaks(secrets, f"CLI {name} output", done.stdout + done.stderr)
    backup_dir = Path(cb_env["CB_BACKUP_DIR"])
    files = [p for p in backup_dir.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.name == "verification.json" for p in files)
    for path in files:  # manifests, verification.json, dumps, retention logs, lock files
        found += leaks(secrets, str(path), path.read_bytes())
    for path in report_dir.rglob("*"):
        found += leaks(secrets, str(path), path.read_bytes())
    # Dagster: every event record of every run (as JSON), run records, and the raw instance files.
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) >= 4
    for run in runs:
        found += leaks(secrets, f"run {run.run_id}", serialize_value(run))
        for record in instance.all_logs(run.run_id):
            found += leaks(secrets, f"event in run {run.run_id}", serialize_value(record))
    for path in Path(os.environ["DAGSTER_HOME"]).rglob("*"):
        if path.is_file():
            found += leaks(secrets, str(path), path.read_bytes())
    # S3: object metadata, headers and the manifest copies.
    client = s3_server.client()
    objects = client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert objects
    for obj in objects:
        head = client.head_object(Bucket=s3_bucket, Key=obj["Key"])
        found += leaks(secrets, f"s3 {obj['Key']} headers", json.dumps(head, default=str))
        if obj["Key"].endswith(".json"):
            found += leaks(secrets, f"s3 {obj['Key']}", client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"]
                           .read())
    assert found == []

    # Private: every file 0600, every folder 0700.
    loose = [f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in [backup_dir, *backup_dir.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert loose == []


def malicious_tar(path: Path, member: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        payload = b"owned\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("member", ["../escaped.txt", "data/../../escaped.txt", "/tmp/cb-absolute-escape.txt"])
def test_archives_with_escaping_members_are_refused(tmp_path: Path, member: str) -> None:
    archive = malicious_tar(tmp_path / "evil.tar.gz", member)
    target = tmp_path / "a" / "target"
    target.mkdir(parents=True)
    with pytest.raises(RestoreRefused, match="cannot be extracted safely"):
        extract_tar("qdrant", archive, target)
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/cb-absolute-escape.txt").exists()


# --- no secret on a command line ---------------------------------------------------------------------------


class CmdlineSampler:
    """Reads /proc/*/cmdline of every process every few ms, in a thread, while the block runs.

    `leaks` names (never shows) each process whose command line held a secret; `seen` keeps every
    other command line, so a test can prove the processes it cares about were really sampled.
    """

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s.encode() for s in secrets]
        self.leaks: set[str] = set()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmdline-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    raw = (entry / "cmdline").read_bytes()
                except OSError:
                    continue  # the process ended meanwhile
                hit = [i for i, s in enumerate(self.secrets) if s in raw]
                argv0 = raw.split(b"\0", 1)[0].decode(errors="replace")
                if hit:
                    self.leaks.add(f"pid {entry.name} ({Path(argv0).name}) has secret #{hit[0]} in its argv")
                elif raw:
                    self.seen.add(raw.replace(b"\0", b" ").decode(errors="replace"))

    def saw(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in list(self.seen))

    def __enter__(self) -> CmdlineSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_no_secret_on_any_command_line_while_commands_start_processes(
        cb_env: dict[str, str], pg_server: EmbeddedPostgres, tmp_path: Path) -> None:
    """pg_dump, pg_restore, valkey-cli --rdb, the scratch valkey-server (restore and drill): sampled while running."""
    secrets = [PG_PASSWORD, VALKEY_PASSWORD]
    pg_key = spec_for("postgres").partitions.get_partition_keys()[-1]
    vk_key = spec_for("valkey").partitions.get_partition_keys()[-1]
    canary = f"canary-{uuid.uuid4().hex}"
    with CmdlineSampler([*secrets, canary]) as sampler:
        # the sampler catches a secret in argv: a process that carries one (a canary, not a real secret)
        control = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", canary])
        try:
            wait_until(lambda: bool(sampler.leaks), 60, "the sampler to see the canary")
        finally:
            control.kill()
            control.wait()
        sampler.leaks.clear()

        # pg_dump, held inside the dump by a lock on a table the backup does not count (deterministic)
        with pg_server.connect() as blocker:
            blocker.autocommit = False
            blocker.execute("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")
            backup = subprocess.Popen([sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres",
                                       "--partition", pg_key], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            try:
                wait_until(lambda: sampler.saw("pg_dump", "--snapshot") or bool(sampler.leaks), 120, "pg_dump to run")
            finally:
                blocker.rollback()
            out, err = backup.communicate(timeout=300)
        assert backup.returncode == 0, (out[-2000:], err[-2000:])
        done = [("restore postgres (pg_restore)", cli("restore", "postgres", "--backup", pg_key)),
                # valkey-cli --rdb: the backup over the wire (no data folder)
                ("backup valkey over the wire", cli("backup", "valkey", "--partition", vk_key,
                                                    env={"CB_VALKEY_DATA_DIR": ""})),
                ("restore valkey (scratch valkey-server)", cli("restore", "valkey", "--backup", vk_key))]
        for name, result in done:
            assert result.returncode == 0, (name, result.stdout[-2000:], result.stderr[-2000:])
        settings = load_settings()
        assert run_drill(settings, "valkey", vk_key).passed
        # the scratch server that used to get --requirepass: valkey-server retitles itself once started, so
        # its argv is held where it is visible -- a wrapper that waits for a file, then execs the real one
        wrapper = tmp_path / "gated-bin"
        wrapper.mkdir()
        release = tmp_path / "release"
        real = Path(cb_env["CB_VALKEY_BIN_DIR"]) / "valkey-server"
        (wrapper / "valkey-server").write_text(f'#!/bin/sh\nwhile [ ! -e "{release}" ]; do sleep 0.02; done\n'
                                               f'exec "{real}" "$@"\n')
        (wrapper / "valkey-server").chmod(0o755)
        store = open_store("valkey", load_settings({**os.environ, "CB_VALKEY_BIN_DIR": str(wrapper)}))
        artifact = settings.catalog().require("valkey", vk_key)
        counted: list[object] = []

        def scratch_restore() -> None:
            with store.scratch(artifact, Target("scratch")) as scratch:
                counted.append(scratch.counts())

        thread = threading.Thread(target=scratch_restore)
        thread.start()
        try:
            wait_until(lambda: sampler.saw(str(wrapper / "valkey-server"), "--port") or bool(sampler.leaks), 60,
                       "the scratch valkey-server")
        finally:
            release.touch()
            thread.join(120)
        assert counted == [artifact.manifest.inventory]
    assert sampler.leaks == set()
    assert sampler.saw("pg_dump", "--snapshot") and sampler.saw(str(wrapper / "valkey-server"), ".conf", "--port")
