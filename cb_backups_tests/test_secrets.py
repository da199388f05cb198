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
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from cb_backups.cli.runs import run_job
from cb_backups.core.errors import RestoreRefused
from cb_backups.core.specs import spec_for
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
