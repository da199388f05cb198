"""The operator's console (issue 17): `status`, `--json` on every command that prints results, one vocabulary
(`--slot`, `full_system`, `--source`, positional stores) with the old names still working, and nothing cut at
80 columns. Real PostgreSQL, real S3 (SeaweedFS), real Dagster; each command a real `cb-backups` process.

One backup of one slot is made once for the module; the commands then read, verify, copy and restore it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cb_backups.core.catalog import VERIFICATION, Catalog
from cb_backups.core.specs import spec_for
from cb_backups.demo.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
KEY = spec_for("postgres").partitions.get_last_partition_key() or "2026-11-24-00:00"


def cli(argv: list[str], env: dict[str, str], columns: int = 200) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CB_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "cb_backups.cli", *argv], capture_output=True, text=True,
                          env={**clean, "COLUMNS": str(columns), **env}, cwd=ROOT, timeout=300,
                          stdin=subprocess.DEVNULL)


def parsed(argv: list[str], env: dict[str, str], code: int = 0) -> Any:
    done = cli([*argv, "--json"], env)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)  # stdout is the one JSON document, nothing else


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pg_server: EmbeddedPostgres, s3_server: Any) -> dict[str, str]:
    base = tmp_path_factory.mktemp("console")
    (base / "home").mkdir()
    (base / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bucket = "cb-console-test"
    s3_server.client().create_bucket(Bucket=bucket)
    env = {**pg_server.env(), **s3_server.env(), "CB_BACKUP_DIR": str(base / "backups"), "CB_BACKUP_DIR_CREATE": "1",
           "DAGSTER_HOME": str(base / "home"), "CB_S3_BUCKET": bucket, "CB_S3_ENDPOINT_URL": s3_server.endpoint_url,
           "CB_S3_PREFIX": "cb", "AWS_CONFIG_FILE": str(base / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(base / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    done = cli(["backup", "postgres", "--slot", KEY], env)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def test_status_shows_configured_stores_and_fails_outside_the_rpo(env: dict[str, str], tmp_path: Path) -> None:
    doc = parsed(["status"], env)
    by = {s["store"]: s for s in doc["stores"]}
    assert set(by) == {"postgres", "valkey", "neo4j", "qdrant", "opensearch"}
    pg = by["postgres"]
    assert pg["configured"] and pg["within_rpo"] and pg["state"] == "ok" and pg["newest_verified"] == KEY
    assert pg["age_hours"] is not None and pg["age_hours"] <= pg["rpo_hours"] == 6
    assert pg["next_slot"] and pg["next_slot"] > KEY
    for name in ("valkey", "neo4j", "qdrant", "opensearch"):  # never configured: not failing the exit code
        assert by[name]["configured"] is False and by[name]["state"] == "not configured"
    assert doc["ok"] is True
    assert pg["last_verified"] and pg["verification_stale"] is False
    # A backup whose last check is two days old is flagged (it is still the newest verified one).
    record = Catalog(Path(env["CB_BACKUP_DIR"])).require("postgres", KEY).path(VERIFICATION)
    original = record.read_text()
    record.write_text(json.dumps({**json.loads(original), "checked_at": "2020-01-01T00:00:00+00:00"}))
    try:
        stale = {s["store"]: s for s in parsed(["status"], env)["stores"]}["postgres"]
        assert stale["verification_stale"] is True and stale["last_verified"] == "2020-01-01T00:00:00+00:00"
        assert "checked over a day ago" in cli(["status", "postgres"], env).stdout
    finally:
        record.write_text(original)
    # The same PostgreSQL with an empty catalog: no verified backup, exit 1 (a cron job or probe sees it).
    empty = {**env, "CB_BACKUP_DIR": str(tmp_path / "empty")}
    doc = parsed(["status", "postgres"], empty, code=1)
    assert doc["stores"][0]["state"] == "no verified backup" and doc["stores"][0]["within_rpo"] is False
    assert cli(["status", "postgres"], empty).returncode == 1


def test_list_verify_doctor_json(env: dict[str, str]) -> None:
    artifact = Catalog(Path(env["CB_BACKUP_DIR"])).require("postgres", KEY)
    listed = parsed(["list", "postgres"], env)["backups"]
    assert [(b["store"], b["slot"], b["verified"]) for b in listed] == [("postgres", KEY, "yes")]
    assert listed[0]["bytes"] == artifact.manifest.total_bytes and listed[0]["path"] == str(artifact.directory)
    assert parsed(["list", "full"], env)["backups"] == []  # the weekly backup's name (and its old alias) is taken
    verified = parsed(["verify", "postgres", "--partition", KEY], env)  # the old flag still works
    assert verified["passed"] and [s["slot"] for s in verified["slots"]] == [KEY]
    checks = verified["slots"][0]["checks"]
    assert len(checks) == 4 and all(c["passed"] for c in checks), checks
    doctor = parsed(["doctor"], env)
    assert doctor["ok"] and doctor["items"] and {i["store"] for i in doctor["items"]} == {"postgres"}


def test_prune_offsite_restore_json(env: dict[str, str], pg_server: EmbeddedPostgres) -> None:
    plan = parsed(["prune", "postgres", "--dry-run"], env)
    assert plan["dry_run"] and plan["success"]
    kept = [k["partition"] for p in plan["plans"] if p["store"] == "postgres" for k in p["local"]["keep"]]
    assert KEY in kept  # the newest verified backup is never planned for deletion

    copied = parsed(["offsite", "postgres", "--slot", KEY], env)
    assert copied["passed"] and copied["copy"]["url"].startswith("s3://") and copied["copy"]["bytes"] > 0
    again = parsed(["offsite-verify", "postgres", "--slot", KEY], env)
    assert again["passed"] and all(c["passed"] for c in again["checks"]) and again["checks"]

    # from the off-site copy, through the old flags (`--from`, `--backup`), into a scratch database
    done = parsed(["restore", "postgres", "--from", "offsite", "--backup", KEY, "--set", "dbname=console_scratch"],
                  env)
    assert done["success"] and done["source"] == "offsite" and done["plan"] and not done["errors"]
    result = done["results"][0]
    assert result["store"] == "postgres" and result["restored_partition"] == KEY and result["counts_match"] is True
    with pg_server.connect("console_scratch") as conn:  # the bytes are really there
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] > 0


def test_nothing_is_cut_at_80_columns(env: dict[str, str]) -> None:
    size = f"{Catalog(Path(env['CB_BACKUP_DIR'])).require('postgres', KEY).manifest.total_bytes:,}"
    commands = [["status"], ["list"], ["verify", "postgres", "--slot", KEY], ["doctor"],
                ["restore", "postgres", "--source", "local", "--slot", KEY, "--set", "dbname=console_80"],
                ["report", "postgres", "--from", KEY[:10], "--to", KEY[:10], "--output",
                 str(Path(env["DAGSTER_HOME"]) / "r.html")]]
    for argv in commands:
        done = cli(argv, env, columns=80)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), "\n".join(lines)
        assert "…" not in done.stdout, done.stdout  # rich's ellipsis: a cell was cut
        if argv[0] != "doctor":
            assert any(KEY[:10] in line for line in lines), done.stdout
        if argv[0] in ("list", "verify", "restore", "status"):
            assert any(KEY in line for line in lines), done.stdout  # the whole slot key on one line
        if argv[0] == "list":
            assert any(size in line for line in lines), done.stdout


def test_demo_then_status_is_all_green(tmp_path: Path) -> None:
    """The issue's "done when": the demo on the ports asked for, its next steps printed, its runs in the UI's
    Overview (the code-location tags), then `status` shows only what was configured, all green."""
    import dagster as dg

    from cb_backups.core.net import free_port

    pg_port, vk_port = free_port(), free_port()
    root = tmp_path / "demo"
    done = cli(["demo", "--dir", str(root), "--postgres-port", str(pg_port)], {"CB_DEMO_VALKEY_PORT": str(vk_port)},
               columns=80)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"127.0.0.1:{pg_port}/" in out and f"127.0.0.1:{vk_port}" in out
    for step in ("cb-backups status", "cb-backups list", "cb-backups verify postgres",
                 "cb-backups restore postgres --target scratch", "dg dev", f". {root / 'demo.env'}"):
        assert step in out, out
    assert "run the demo with --keep" in out and "add --keep" not in out
    env = dict(line.split("=", 1) for line in (root / "demo.env").read_text().splitlines())
    env = {k: v.strip("'") for k, v in env.items()}
    doc = parsed(["status"], env)
    by = {s["store"]: s for s in doc["stores"]}
    assert by["postgres"]["state"] == by["valkey"]["state"] == "ok" and doc["ok"]
    assert {n for n, s in by.items() if not s["configured"]} == {"neo4j", "qdrant", "opensearch"}
    table = cli(["status"], env)
    assert table.returncode == 0, table.stderr
    shown = [line.split()[1] for line in table.stdout.splitlines() if line.startswith("│ ") and
             line.split()[1] in by]
    assert shown == ["postgres", "valkey"], table.stdout  # only what the demo configured, in the table ...
    assert "not configured: neo4j, qdrant, opensearch" in table.stdout  # ... and the rest in one line
    os.environ["DAGSTER_HOME"], previous = env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/code_location": "cb_backups"}))
            assert {r.job_name for r in runs} >= {"postgres_backup_job", "valkey_backup_job"}
            assert all(r.tags.get(".dagster/repository") == "__repository__@cb_backups" for r in runs)
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = previous
