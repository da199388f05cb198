"""The production deployment: deploy/dagster.yaml validates, and the webserver + daemon run on dagster-postgres."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cb_backups.core.specs import STORE_NAMES
from cb_backups.defs.liveness import writer_tags
from cb_backups_tests.test_ui import Server, graphql, start_webserver

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
IMAGES = {"pgvector/pgvector:pg16", "neo4j:5.26.4-community", "qdrant/qdrant:v1.12.5",
          "opensearchproject/opensearch:2.13.0", "valkey/valkey:8.0.2-alpine"}


@pytest.fixture(scope="module")
def dagster_db(pg_server: Any) -> dict[str, str]:
    """A `dagster` database on the test PostgreSQL server, and the DAGSTER_PG_* variables for it."""
    with pg_server.connect(dbname="postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS dagster WITH (FORCE)")
        conn.execute("CREATE DATABASE dagster")
    return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_server.port), "DAGSTER_PG_USER": pg_server.user,
            "DAGSTER_PG_PASSWORD": pg_server.password, "DAGSTER_PG_DB": "dagster",
            "CB_DOCKER_NETWORK": "codingbrain_default"}


def production_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def test_production_config_validates_and_builds_the_instance(dagster_db: dict[str, str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_docker import DockerRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    for key, value in dagster_db.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))  # Dagster validates the file against its schema
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_launcher, DockerRunLauncher)
        assert instance.run_launcher.networks == ["codingbrain_default"]
        assert "/backups:/backups" in instance.run_launcher.container_kwargs["volumes"]
        assert "CB_POSTGRES_PASSWORD" in instance.run_launcher.env_vars  # passed through, never written
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 300
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert queue.tag_concurrency_limits == [
            {"key": "store", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            *({"key": key, "limit": 1} for key in writer_tags(STORE_NAMES))]
        # the storage really is the test server's `dagster` database
        assert instance.get_runs() == []
    finally:
        instance.dispose()
    # the same concurrency as the repository's local dagster.yaml
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert production_config()["concurrency"] == local["concurrency"]
    # no secret in the file: connection details are env-driven
    text = (DEPLOY / "dagster.yaml").read_text()
    assert dagster_db["DAGSTER_PG_PASSWORD"] not in text
    postgres_db = production_config()["storage"]["postgres"]["postgres_db"]
    assert postgres_db["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert postgres_db["scheme"] == "postgresql+psycopg2"  # see the comment in deploy/dagster.yaml

    # validation is real: a misspelled setting is refused by Dagster
    broken = production_config()
    broken["run_monitoring"]["start_timeout"] = 5
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(dg.DagsterInvalidConfigError, match="start_timeout"):
        dg.DagsterInstance.from_config(str(tmp_path))


def test_compose_file_runs_the_runbook_images_and_dagster() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {s.get("image") for s in services.values()} >= IMAGES
    assert "path.repo" in services["opensearch"]["environment"]
    assert any(v.endswith(":/mnt/backups") or ":/mnt/backups " in v for v in services["opensearch"]["volumes"])
    assert services["dagster-webserver"]["command"][0] == "dagster-webserver"
    assert services["dagster-daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["cb-backups-code"]["command"][:3] == ["dagster", "code-server", "start"]
    assert services["dagster-daemon"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert grpc["host"] == "cb-backups-code" and str(grpc["port"]) in services["cb-backups-code"]["command"]
    assert (DEPLOY / "Dockerfile").is_file()



def test_least_privilege_no_docker_socket_non_root_secrets_as_files() -> None:
    from cb_backups.config.settings import load_settings

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "cb-backups:latest" or "build" in s}
    assert set(ours) >= {"cb-backups-code", "dagster-webserver", "dagster-daemon"}
    for name, service in services.items():  # only the proxy holds the socket, read-only
        sockets = [v for v in service.get("volumes") or [] if "docker.sock" in str(v)]
        assert not sockets or (name == "docker-proxy" and all(str(v).endswith(":ro") for v in sockets)), name
    proxy = services["docker-proxy"]["environment"]
    assert all(str(proxy[k]) == "0" for k in ("EXEC", "IMAGES", "VOLUMES", "BUILD"))
    for name, service in ours.items():
        assert service.get("user") == "10001:10001", name
    launcher = production_config()["run_launcher"]["config"]
    assert not [v for v in launcher["container_kwargs"]["volumes"] if "docker.sock" in v]  # run containers
    assert launcher["container_kwargs"]["user"] == "10001:10001"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "docker.io" not in dockerfile
    # secrets are files: every *_FILE variable the compose file sets is passed to run containers too
    env = compose["x-cb-env"]
    files = {k for k in env if k.endswith("_FILE")}
    assert files >= {"CB_POSTGRES_PASSWORD_FILE", "CB_NEO4J_PASSWORD_FILE", "AWS_SHARED_CREDENTIALS_FILE"}
    assert files <= set(launcher["env_vars"])
    assert not [k for k, v in env.items() if "PASSWORD" in k and not k.endswith("_FILE") and k != "DAGSTER_PG_PASSWORD"]
    assert "CB_NEO4J_STOP" not in env and "CB_NEO4J_ADMIN" not in env  # no job stops a container
    config = yaml.safe_load((DEPLOY / "cb-backups.yaml").read_text())
    assert config["neo4j"]["method"] == "export"
    settings = load_settings({"CB_CONFIG": str(DEPLOY / "cb-backups.yaml"), "CB_BACKUP_DIR": "/tmp",
                              "CB_S3_BUCKET": "b", "CB_NEO4J_URI": "bolt://neo4j:7687",
                              "CB_AGE_RECIPIENTS": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"})
    assert settings.s3.object_lock is not None and settings.s3.object_lock.mode == "COMPLIANCE"


def test_iam_policies_writer_cannot_delete_and_retention_cannot_write() -> None:
    def actions(policy: dict[str, Any], effect: str) -> set[str]:
        found: set[str] = set()
        for statement in policy["Statement"]:
            if statement["Effect"] == effect:
                listed = statement["Action"]
                found |= {listed} if isinstance(listed, str) else set(listed)
        return found

    writer = json.loads((DEPLOY / "iam-policy.json").read_text())
    allowed = actions(writer, "Allow")
    assert "s3:PutObject" in allowed and "s3:GetObjectVersion" in allowed
    assert not {a for a in allowed if "Delete" in a or a.endswith("*")}  # no s3:DeleteObject(Version), no s3:*
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= actions(writer, "Deny")
    retention = json.loads((DEPLOY / "iam-retention-policy.json").read_text())
    assert "s3:DeleteObjectVersion" in actions(retention, "Allow")
    assert {"s3:PutObject", "s3:PutObjectRetention", "s3:BypassGovernanceRetention"} <= actions(retention, "Deny")
    assert not {a for a in actions(retention, "Allow") if a.endswith("*")}


@pytest.mark.timeout(420)
def test_wheel_holds_cb_backups_only_and_loads_its_definitions(tmp_path: Path) -> None:
    """Built from what the Dockerfile copies, plus test and benchmark packages to leave out; installed
    without pyproject.toml beside it, the package still loads the whole code location."""
    packaged = tomllib.loads((ROOT / "cb_backups" / "dg.toml").read_text())["project"]
    checkout = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert {k: checkout[k] for k in packaged} == packaged  # the two dg configs say the same
    src = tmp_path / "src"
    shutil.copytree(ROOT / "cb_backups", src / "cb_backups", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("cb_backups_tests", "benchmarks"):
        (src / package).mkdir()
        (src / package / "__init__.py").write_text("")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=400)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("cb_backups-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        assert "cb_backups/dg.toml" in archive.namelist()  # definitions.py reads it at load time
    assert tops == {"cb_backups", wheel.name.split("-py3")[0] + ".dist-info"}
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    probe = ("import cb_backups, cb_backups.definitions as d; print(cb_backups.__file__); "
             "print(sorted(j.name for j in d.defs.jobs))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=home, env={**os.environ, "PYTHONPATH": str(site), "DAGSTER_HOME": str(home)})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    where, jobs = loaded.stdout.splitlines()[-2:]
    assert where.startswith(str(site))  # the installed copy, not the checkout
    from cb_backups.definitions import defs

    assert jobs == str(sorted(j.name for j in defs.jobs))

DAEMON_QUERY = """{ instance { runLauncher { name } runQueuingSupported
  daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""


@pytest.fixture(scope="module")
def running(dagster_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`dagster-daemon run` and `dagster-webserver` on the production config, storage on the test server.

    The DockerRunLauncher cannot run without a Docker engine (none here), so this
    instance uses Dagster's default run launcher; everything else is deploy/dagster.yaml.
    """
    home = tmp_path_factory.mktemp("deploy_home")
    config = production_config()
    del config["run_launcher"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, **dagster_db, "DAGSTER_HOME": str(home), "CB_BACKUP_DIR": str(home / "backups"),
           "CB_BACKUP_DIR_CREATE": "1"}
    env.pop("CB_WEBHOOK_URL", None)
    daemon = Server([sys.executable, "-m", "dagster._daemon", "run", "-w", str(ROOT / "workspace.yaml")], env,
                    home / "daemon.log")
    try:
        web, url = start_webserver(env, home / "webserver.log")
    except BaseException:
        daemon.stop()
        raise
    try:
        yield {"url": url, "daemon": daemon}
    finally:
        web.stop()
        daemon.stop()


def test_webserver_and_daemon_run_on_dagster_postgres(running: dict[str, Any], pg_server: Any) -> None:
    url, daemon = running["url"], running["daemon"]
    deadline = time.monotonic() + 90
    healthy: dict[str, bool] = {}
    while time.monotonic() < deadline:
        assert daemon.alive(), daemon.tail()
        instance = graphql(url, DAEMON_QUERY)["instance"]
        statuses = instance["daemonHealth"]["allDaemonStatuses"]
        healthy = {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}
        if healthy and all(healthy.values()):
            break
        time.sleep(1)
    assert healthy and all(healthy.values()), (healthy, daemon.tail())
    for required in ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"):
        assert healthy.get(required) is True, (required, healthy)
    assert instance["runLauncher"]["name"] == "DefaultRunLauncher" and instance["runQueuingSupported"]
    # the daemon's heartbeats and the schedules' state live in the `dagster` database on the test server
    with pg_server.connect(dbname="dagster") as conn:
        beats = {row[0] for row in conn.execute("SELECT daemon_type FROM daemon_heartbeats")}
        assert {"SCHEDULER", "SENSOR"} <= beats
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"runs", "event_logs", "jobs", "job_ticks", "asset_check_executions"} <= tables
    # and the UI serves the code location: the backup jobs are there
    repos = graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }")
    jobs = {j["name"] for r in repos["repositoriesOrError"]["nodes"] for j in r["jobs"]}
    assert {"postgres_backup_job", "valkey_backup_job", "audit_report_job"} <= jobs
