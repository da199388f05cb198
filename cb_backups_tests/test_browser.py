"""The main user path in a real browser (issue 17 item 11): headless Chromium, driven over the DevTools
protocol, opens the Dagster UI of a real webserver, materializes one partition of `postgres_backup` from
the asset's page (Materialize… -> Latest -> Launch 1 run) against the real PostgreSQL, and sees that
partition's post-backup checks turn green. Every wait is on a condition, with generous deadlines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from cb_backups.checks.slot import SLOT_CHECKS
from cb_backups.core.catalog import Catalog
from cb_backups.stores.registry import open_store
from cb_backups_tests.browser import Browser
from cb_backups_tests.test_ui import (
    CHECKS_QUERY,
    EXECUTIONS_QUERY,
    chromium,
    graphql,
    start_webserver,
    statuses_by_partition,
)

# Runs launched from the UI start at once (no daemon needed to dequeue them).
DAGSTER_YAML = """telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

BUTTONS = "Array.from(document.querySelectorAll({scope!r} + ' button'))"


def click_button(browser: Browser, text: str, scope: str = "", timeout: float = 60) -> None:
    """Click the button labelled `text` once it is there and enabled (the UI draws dialogs in steps)."""
    browser.wait_for(f"(() => {{ const b = {BUTTONS.format(scope=scope)}.find(x => x.innerText.trim() === "
                     f"{text!r} && !x.disabled); if (b) b.click(); return !!b; }})()", timeout,
                     f"an enabled button {text!r}")


@pytest.fixture()
def ui_browser(pg_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {"CB_BACKUP_DIR": str(tmp_path / "backups"), "CB_BACKUP_DIR_CREATE": "1", "DAGSTER_HOME": str(home),
           **pg_server.env()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server, url = start_webserver({**os.environ}, tmp_path / "webserver.log")
    try:
        browser = Browser(binary, tmp_path / "profile")
        try:
            yield {"url": url, "browser": browser, "backups": tmp_path / "backups", "log": server.log}
        finally:
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(600)  # a webserver, a browser and three runs' subprocesses on two busy cores
def test_materialize_a_partition_from_the_asset_page_and_see_its_checks_turn_green(
        ui_browser: dict[str, Any], tmp_path: Path) -> None:
    url, browser = ui_browser["url"], ui_browser["browser"]
    browser.navigate(f"{url}/assets/postgres_backup")
    # the page is loaded once its partitioned Materialize… button is enabled and the status panel is drawn
    browser.wait_for("Array.from(document.querySelectorAll('button')).some(x => x.innerText.trim() === "
                     "'Materialize…' && !x.disabled) && document.body.innerText.includes('Latest check results')",
                     180, "the postgres_backup asset page")
    browser.js("(Array.from(document.querySelectorAll('button')).find(x => x.innerText.trim() === 'Skip') "
               "|| {click() {}}).click()")  # the UI's first-visit community prompt, when it shows
    click_button(browser, "Materialize…")
    dialog = "[role=dialog]"
    browser.wait_for("Array.from(document.querySelectorAll('[role=dialog]')).some(d => "
                     "d.innerText.includes('Launch runs to materialize postgres_backup'))", 60, "the launch dialog")
    click_button(browser, "Latest", dialog)  # one partition: the newest slot
    browser.wait_for(f"{BUTTONS.format(scope=dialog)}.some(x => x.innerText.trim() === 'Launch 1 run')", 60,
                     "'Launch 1 run' for one partition")
    click_button(browser, "Launch 1 run", dialog)

    instance = dg.DagsterInstance.get()
    run = browser.until(lambda: next(iter(instance.get_runs(limit=1)), None), 120, "the launched run")
    key = run.tags["dagster/partition"]
    browser.navigate(f"{url}/assets/postgres_backup?view=checks")
    rows = " && ".join(
        f"(() => {{ const r = Array.from(document.querySelectorAll('[class*=checkRow]')).find(x => "
        f"x.querySelector({json.dumps(f'[title={name!r}]')})); return r && r.innerText.includes('Succeeded') && "
        f"!!r.querySelector('[aria-label=check_circle]') && "
        f"r.querySelector('[aria-label=check_circle]').style.cssText.includes('accent-green'); }})()"
        for name in SLOT_CHECKS)
    try:
        browser.wait_for(rows, 200, f"every post-backup check of postgres_backup {key} to turn green")
    finally:
        browser.screenshot(tmp_path / "checks.png")
    # each check's own page names the partition it passed for
    for name in SLOT_CHECKS:
        browser.navigate(f"{url}/assets/postgres_backup?view=checks&checkDetail={name}")
        browser.wait_for(f"document.body.innerText.includes('Partition\\n{key}') && "
                         "document.body.innerText.includes('Passed')", 120, f"{name} passed for {key}")

    # the real outcome behind the green: the run succeeded, a backup of that slot exists and verifies,
    # and the API's per-partition statuses agree
    # (the UI's Materialize also runs the asset's other checks, the restore drill among them: let it end)
    finished = browser.until(lambda: (r := instance.get_run_by_id(run.run_id)) is not None and r.is_finished and r,
                             200, "the run to finish")
    assert finished.status == dg.DagsterRunStatus.SUCCESS, ui_browser["log"].read_text()[-2000:]
    artifact = Catalog(ui_browser["backups"]).require("postgres", key)
    assert artifact.manifest.total_bytes > 0
    from cb_backups.config.settings import load_settings

    assert open_store("postgres", load_settings()).verify(artifact).ok
    checks = {c["name"]: c for c in graphql(url, CHECKS_QUERY, {"path": ["postgres_backup"]})["assetNodeOrError"]
              ["assetChecksOrError"]["checks"]}
    assert {n: statuses_by_partition(checks[n], [key]) for n in SLOT_CHECKS} == {
        n: {key: "SUCCEEDED"} for n in SLOT_CHECKS}, json.dumps(checks)[:2000]

    # the checks-only job from the launchpad: its partition picker sets the run's dagster/partition tag, which
    # is what the checks read (the same mutation the launchpad sends)
    launched = graphql(url, LAUNCH, {"params": {
        "selector": {"jobName": "postgres_verify_job", "repositoryName": "__repository__",
                     "repositoryLocationName": "cb_backups"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]}}})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    verify_id = launched["run"]["runId"]
    checked = browser.until(lambda: (r := instance.get_run_by_id(verify_id)) is not None and r.is_finished and r,
                            200, "the verify run to finish")
    assert checked.status == dg.DagsterRunStatus.SUCCESS and checked.tags["dagster/partition"] == key
    runs = graphql(url, EXECUTIONS_QUERY, {"path": ["postgres_backup"], "check": "checksum", "partition": key})
    assert [e["status"] for e in runs["assetCheckExecutions"]] == ["SUCCEEDED", "SUCCEEDED"]


LAUNCH = """mutation ($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }"""
