"""The Dagster UI for real: `dagster-webserver` on loopback over an instance with real backup runs.

GraphQL (POST /graphql) must show the five backup assets, their per-partition check
statuses, the off-site assets and the restore jobs (when those modules exist), and a
headless Chromium must render the asset page naming the asset and its checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from cb_backups.checks.slot import FRESHNESS_CHECK, SLOT_CHECKS
from cb_backups.cli.runs import run_job
from cb_backups.core.catalog import Catalog
from cb_backups.core.net import free_port
from cb_backups.core.specs import STORES, spec_for

ROOT = Path(__file__).resolve().parent.parent


# --- a webserver on loopback (also used by test_deploy.py) ----------------------------------


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}})
                                     .encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"GraphQL HTTP {exc.code}: {exc.read()[:2000]!r}") from None
    assert "errors" not in body, body["errors"]
    return body["data"]


LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class Server:
    """A Dagster process (webserver or daemon) in its own process group, stopped by PID."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_webserver(env: dict[str, str], log: Path, workspace: Path = ROOT / "workspace.yaml",
                    timeout: float = 120) -> tuple[Server, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
                     "-w", str(workspace)], env, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"dagster-webserver exited:\n{server.tail()}")
        try:
            entries = graphql(url, LOCATION_QUERY, timeout=5)["workspaceOrError"]["locationEntries"]
            loaded = [e for e in entries if e["locationOrLoadError"]]
            if entries and len(loaded) == len(entries):
                errors = [e for e in loaded if e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, errors
                return server, url
        except (OSError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"dagster-webserver not ready after {timeout}s:\n{server.tail()}")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui(pg_server: Any, valkey_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Real backups (PostgreSQL, Valkey; one Valkey slot corrupted and re-checked), then one webserver."""
    base = tmp_path_factory.mktemp("ui")
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"CB_BACKUP_DIR": str(base / "backups"), "CB_BACKUP_DIR_CREATE": "1", "DAGSTER_HOME": str(home),
           **pg_server.env(), **valkey_server.env()}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        instance = dg.DagsterInstance.get()
        pg_key = spec_for("postgres").partitions.get_last_partition_key()
        bad, good = spec_for("valkey").partitions.get_partition_keys()[-2:]
        assert run_job("postgres_backup_job", pg_key, instance).success
        for key in (bad, good):
            assert run_job("valkey_backup_job", key, instance).success
        path = Catalog(base / "backups").require("valkey", bad).path("dump.rdb")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        assert not run_job("valkey_verify_job", bad, instance).success
        server, url = start_webserver({**os.environ}, base / "webserver.log")
        try:
            yield {"url": url, "pg": pg_key, "bad": bad, "good": good}
        finally:
            server.stop()


# --- GraphQL ----------------------------------------------------------------------------------

ASSETS_QUERY = """{ assetNodes { assetKey { path } groupName isPartitioned jobNames } }"""
CHECKS_QUERY = """query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) { __typename ... on AssetNode {
    assetChecksOrError { __typename ... on AssetChecks { checks { name blocking
      partitionStatuses { __typename ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } }
    } } } } } }"""
EXECUTIONS_QUERY = """query ($path: [String!]!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, partition: $partition, limit: 10) {
    status partition evaluation { success description } } }"""
JOBS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name jobs { name } } } } }"""


def statuses_by_partition(check: dict[str, Any], keys: list[str]) -> dict[str, str]:
    """Expand the check's status ranges for the given keys (ranges run from startKey to endKey)."""
    found: dict[str, str] = {}
    ranges = (check["partitionStatuses"] or {}).get("ranges", [])
    for key in keys:
        for r in ranges:
            if r["startKey"] <= key <= r["endKey"]:
                found[key] = r["status"]
    return found


def test_graphql_shows_assets_checks_and_partition_statuses(ui: dict[str, Any]) -> None:
    from cb_backups.definitions import defs

    url = ui["url"]
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(url, ASSETS_QUERY)["assetNodes"]}
    for spec in STORES:  # mandatory: the five backup assets, partitioned, in the backups group
        node = nodes[f"{spec.name}_backup"]
        assert node["groupName"] == "backups" and node["isPartitioned"]
        assert f"{spec.name}_backup_job" in node["jobNames"]
    defined = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    offsite = sorted(k for k in defined if k.endswith("_offsite"))
    for name in offsite:  # what exists at test time
        assert nodes[name]["isPartitioned"]
    assert ("audit_report" in nodes) == ("audit_report" in defined)

    for spec in STORES:  # every backup asset's checks, with per-partition statuses
        data = graphql(url, CHECKS_QUERY, {"path": [f"{spec.name}_backup"]})["assetNodeOrError"]
        checks = {c["name"]: c for c in data["assetChecksOrError"]["checks"]}
        assert set(SLOT_CHECKS) | {FRESHNESS_CHECK} <= set(checks)
        assert all(checks[name]["blocking"] for name in SLOT_CHECKS)
        assert checks["checksum"]["partitionStatuses"]["__typename"] == "AssetCheckTimePartitionStatuses"
        if spec.name == "postgres":
            assert statuses_by_partition(checks["checksum"], [ui["pg"]]) == {ui["pg"]: "SUCCEEDED"}
        if spec.name == "valkey":
            for name in SLOT_CHECKS:
                got = statuses_by_partition(checks[name], [ui["bad"], ui["good"]])
                bad = "FAILED" if name in ("checksum", "integrity") else "SUCCEEDED"
                assert got == {ui["bad"]: bad, ui["good"]: "SUCCEEDED"}, (name, got)
        if spec.name in ("neo4j", "qdrant", "opensearch"):  # no runs: no statuses
            assert not checks["checksum"]["partitionStatuses"]["ranges"]

    runs = graphql(url, EXECUTIONS_QUERY, {"path": ["valkey_backup"], "check": "checksum", "partition": ui["bad"]})
    executions = runs["assetCheckExecutions"]
    assert [e["status"] for e in executions] == ["FAILED", "SUCCEEDED"]  # newest first: the re-check
    assert "sha256" in executions[0]["evaluation"]["description"]

    repos = graphql(url, JOBS_QUERY)["repositoriesOrError"]["nodes"]
    jobs = {j["name"] for repo in repos for j in repo["jobs"]}
    for spec in STORES:
        assert {f"{spec.name}_backup_job", f"{spec.name}_verify_job"} <= jobs
    restore_jobs = {j.name for j in defs.jobs if "restore" in j.name}
    assert restore_jobs <= jobs  # the restore jobs, when the restore module exists


# --- a real browser ---------------------------------------------------------------------------


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_chromium_renders_the_asset_page(ui: dict[str, Any], tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the GraphQL test covers the API")
    page = f"{ui['url']}/assets/valkey_backup?view=checks"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", page],
        capture_output=True, text=True, timeout=90)
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "valkey_backup" in dom, dom[:2000]
    for name in SLOT_CHECKS:  # the checks tab lists the asset's checks
        assert name in dom, name
