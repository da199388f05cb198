"""Quiesce hooks (stores/hooks.py) around real backups: real Valkey and PostgreSQL, the real CLI and Dagster.

Each hook appends a line to a log file, so the order of hooks and backups is what the file says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cb_backups.cli.runs import instance, run_job
from cb_backups.core.catalog import Catalog
from cb_backups.core.partitions import weekly_sunday_0100
from cb_backups.core.specs import FULL_SYSTEM, spec_for
from cb_backups.demo.embedded import EmbeddedPostgres
from cb_backups_tests.databases import own_database

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cb_backups.cli.app"]


def hook(log: Path, word: str) -> list[str]:
    return ["sh", "-c", f"echo {word} >> {log}"]


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hooks: dict) -> Path:
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"hooks": hooks}))
    monkeypatch.setenv("CB_CONFIG", str(config))
    return config


def cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env=dict(os.environ), cwd=ROOT, text=True, capture_output=True, timeout=300)


def test_hooks_fence_a_backup_and_are_recorded_in_its_manifest(cb_env: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hooks.log"
    configure(tmp_path, monkeypatch, {"valkey": {"pre_backup": hook(log, "stop-writers"),
                                                 "post_backup": hook(log, "start-writers")}})
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    done = cli(["backup", "valkey", "--partition", key])
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["stop-writers", "start-writers"]
    artifact = Catalog(Path(cb_env["CB_BACKUP_DIR"])).get("valkey", key)
    assert artifact is not None
    record = artifact.manifest.options["hooks"]["valkey"]
    assert record["pre_backup"]["exit"] == 0 and record["post_backup"]["exit"] == 0
    assert artifact.manifest.options["hooks"]["fence_seconds"] > 0
    assert not list((Path(cb_env["CB_BACKUP_DIR"]) / "_hooks").glob("*.json"))  # nothing owed


def test_post_backup_runs_after_a_failed_backup(cb_env: dict[str, str], tmp_path: Path, pg_server: EmbeddedPostgres,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre_backup hook drops the database (the store failing mid-backup): pg_dump fails, post_backup runs."""
    log = tmp_path / "hooks.log"
    with own_database(pg_server, monkeypatch, "cbh", 5) as db:
        monkeypatch.setenv("HOOK_DSN", f"postgresql://{pg_server.user}:{pg_server.password}@127.0.0.1:"
                                       f"{pg_server.port}/postgres")
        drop = ("import os, psycopg; c = psycopg.connect(os.environ['HOOK_DSN'], autocommit=True); "
                f"c.execute('DROP DATABASE \"{db}\" WITH (FORCE)'); open('{log}', 'a').write('stop-writers\\n')")
        configure(tmp_path, monkeypatch, {"postgres": {"pre_backup": [sys.executable, "-c", drop],
                                                       "post_backup": hook(log, "start-writers")}})
        key = spec_for("postgres").partitions.get_partition_keys()[-1]
        done = cli(["backup", "postgres", "--partition", key])
    assert done.returncode == 1, done.stderr
    assert log.read_text().split() == ["stop-writers", "start-writers"]  # the writers are started again
    assert Catalog(Path(cb_env["CB_BACKUP_DIR"])).get("postgres", key) is None


def test_a_failing_pre_backup_fails_the_backup_and_still_runs_post_backup(cb_env: dict[str, str], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hooks.log"
    configure(tmp_path, monkeypatch, {"valkey": {"pre_backup": ["sh", "-c", "echo cannot stop >&2; exit 3"],
                                                 "post_backup": hook(log, "start-writers")}})
    key = spec_for("valkey").partitions.get_partition_keys()[-1]
    done = cli(["backup", "valkey", "--partition", key])
    assert done.returncode == 1
    assert "pre_backup hook (sh) exited 3: cannot stop" in done.stderr, done.stderr
    assert log.read_text().split() == ["start-writers"]
    assert Catalog(Path(cb_env["CB_BACKUP_DIR"])).get("valkey", key) is None  # no backup without the fence


@pytest.mark.parametrize("bad", [{"valkey": {"pre_backup": 5}}, {"valkey": {"pre": ["x"]}}, {"nosuch": {}},
                                 {"timeout_seconds": 0}, {"valkey": {"post_backup": "sh -c 'unbalanced"}}])
def test_bad_hook_settings_are_one_line(cb_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        bad: dict) -> None:
    configure(tmp_path, monkeypatch, bad)
    done = cli(["list"])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "hooks" in done.stderr, done.stderr


def test_full_system_backup_runs_every_pre_backup_first_and_every_post_backup_last(
        cb_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hooks.log"
    configure(tmp_path, monkeypatch, {
        FULL_SYSTEM: {"pre_backup": hook(log, "pre-app"), "post_backup": hook(log, "post-app")},
        "postgres": {"pre_backup": hook(log, "pre-postgres"), "post_backup": hook(log, "post-postgres")},
        "valkey": {"pre_backup": hook(log, "pre-valkey"), "post_backup": hook(log, "post-valkey")}})
    key = weekly_sunday_0100.get_partition_keys()[-1]
    with instance() as dagster:
        result = run_job("full_system_backup_job", key, dagster)
    assert result.success
    assert log.read_text().split() == ["pre-app", "pre-postgres", "pre-valkey",
                                       "post-valkey", "post-postgres", "post-app"]
    artifact = Catalog(Path(cb_env["CB_BACKUP_DIR"])).get(FULL_SYSTEM, key)
    assert artifact is not None
    hooks = artifact.manifest.options["hooks"]
    assert set(hooks) == {FULL_SYSTEM, "postgres", "valkey", "fence_seconds"}
    # the fence spans the stores' backups: all of them ran inside it
    assert hooks["fence_seconds"] >= artifact.manifest.markers["timing"]["wall_seconds"]
