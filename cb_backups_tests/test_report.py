"""The auditor report from real runs: every expected slot, judged by its checks; the weekly report asset."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from cb_backups.cli.app import main
from cb_backups.cli.runs import run_job
from cb_backups.config.retention import LOCAL, RetentionPolicy
from cb_backups.core.catalog import Catalog
from cb_backups.core.partitions import weekly_sunday_0100
from cb_backups.core.specs import STORES, spec_for
from cb_backups.report import history
from cb_backups.report.build import Report, SlotRow, StoreSummary, build_report, expected_slots, period, store_checks
from cb_backups.report.render import to_csv, to_html, to_json
from cb_backups.retention.apply import apply_local
from cb_backups.retention.policy import PrunePlan

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=180, cwd=ROOT)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def module_env(pg_server: object, valkey_server: object, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, str]]:
    """Like `cb_env`, once for the module: the runs below are shared by the report tests."""
    base = tmp_path_factory.mktemp("report")
    env = {"CB_BACKUP_DIR": str(base / "backups"), "CB_BACKUP_DIR_CREATE": "1",
           "DAGSTER_HOME": str(base / "dagster_home"), **pg_server.env(), **valkey_server.env()}  # type: ignore[attr-defined]
    (base / "dagster_home").mkdir()
    (base / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CB_WEBHOOK_URL", raising=False)
        yield env


@pytest.fixture(scope="module")
def history_env(module_env: dict[str, str]) -> dict[str, object]:
    """Real runs: three valkey slots (one corrupted and re-checked, one pruned by retention), one postgres slot."""
    cb_env = module_env
    instance = dg.DagsterInstance.get()
    valkey = spec_for("valkey").partitions.get_partition_keys()[-4:]
    bad, good, pruned, _missed = valkey[-1], valkey[-2], valkey[-3], valkey[-4]
    for key in (pruned, good, bad):
        assert run_job("valkey_backup_job", key, instance).success
    pg_key = spec_for("postgres").partitions.get_partition_keys()[-1]
    assert run_job("postgres_backup_job", pg_key, instance).success
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    flip_byte(catalog.require("valkey", bad).path("dump.rdb"))
    run_job("valkey_verify_job", bad, instance)
    plan = PrunePlan(LOCAL, RetentionPolicy(keep_days=3), keep=[], delete=[(pruned, "test: beyond keep_days=3")])
    assert [r.partition for r in apply_local(plan, catalog, "valkey")] == [pruned]
    return {"instance": instance, "bad": bad, "good": good, "pruned": pruned, "pg": pg_key, "catalog": catalog,
            "missed": _missed}


def test_history_reads_per_partition_check_runs_and_run_events(history_env: dict[str, object]) -> None:
    instance = history_env["instance"]
    assert isinstance(instance, dg.DagsterInstance)
    key = dg.AssetCheckKey(dg.AssetKey("valkey_backup"), "checksum")
    runs = history.check_history(instance, key)
    assert len(runs) == 4
    # the fallback (Dagster's paged storage API, small pages so it really pages) reads the same executions
    paged = history._check_history_paged(instance, key, None, page=3)
    assert paged == history.check_history(instance, key, details=True)
    assert [(r.partition, r.status, r.run_id) for r in paged] == [(r.partition, r.status, r.run_id) for r in runs]
    assert [round(r.timestamp, 3) for r in paged] == [round(r.timestamp, 3) for r in runs]
    by_partition: dict[str, list[str]] = {}
    for run in runs:
        by_partition.setdefault(run.partition or "", []).append(run.status)
    assert by_partition[str(history_env["bad"])][0] == "failed"  # newest first: the re-check failed
    assert by_partition[str(history_env["bad"])][-1] == "passed"
    assert by_partition[str(history_env["good"])] == ["passed"]
    assert [r.timestamp for r in runs] == sorted((r.timestamp for r in runs), reverse=True)
    # `since` stops at older executions (the re-check started after the backups' checks ended)
    assert history.check_history(instance, key, since=runs[1].timestamp + 0.001) == runs[:1]
    # `since` is the evaluation's time, not the row's (earlier, whole-second) creation time
    assert history.check_history(instance, key, since=runs[0].timestamp) == runs[:1]
    assert [(r.run_id, r.status) for r in history._check_history_paged(instance, key, runs[0].timestamp, page=3)
            ] == [(runs[0].run_id, runs[0].status)]

    # one run's evaluations and its failure message (what the notifications send)
    verify_run = runs[0].run_id
    evaluations = history.run_check_evaluations(instance, verify_run)
    assert {(e.check, e.status) for e in evaluations} == {("artifact_present", "passed"), ("integrity", "failed"),
                                                          ("checksum", "failed"), ("inventory_recorded", "passed")}
    assert {e.partition for e in evaluations} == {history_env["bad"]}
    message = history.run_failure_message(instance, verify_run)
    assert "valkey_backup_checks" in message and "integrity,checksum" in message


def test_version_guard_warns_once_on_another_dagster() -> None:
    assert history.version_guard() is True  # the pinned version is installed
    with pytest.warns(history.DagsterVersionWarning, match=r"dagster 9\.9\.9 is installed"):
        assert history.version_guard("9.9.9") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert history.version_guard("9.9.9") is False  # once per version


def test_the_report_reads_every_check_the_definitions_build_on_a_store() -> None:
    from cb_backups.definitions import defs

    built = defs.resolve_asset_graph().asset_check_keys
    for spec in STORES:
        related = {dg.AssetCheckKey(dg.AssetKey(a), n) for a, n in (r.split(":", 1) for r in spec.related_checks)}
        assert related <= built  # e.g. postgres_wal:rpo, the continuous archive's RPO
        on_store = {k for k in built if k.asset_key in (spec.asset_key, spec.offsite_key)} | related
        assert set(store_checks(spec)) == on_store


def test_report_has_a_row_for_every_expected_slot(history_env: dict[str, object], module_env: dict[str, str]
                                                  ) -> None:
    cb_env = module_env
    instance = history_env["instance"]
    assert isinstance(instance, dg.DagsterInstance)
    now = datetime.now(UTC)
    start, end = period((now - timedelta(days=2)).date(), now.date())
    report = build_report(instance, Path(cb_env["CB_BACKUP_DIR"]), start, end, ["valkey", "postgres"])
    rows = {(r.store, r.slot): r for r in report.rows}
    for store in ("valkey", "postgres"):
        expected = expected_slots(spec_for(store), start, end, now)
        assert len(expected) >= 8  # two days and more of six-hourly slots
        assert [r.slot for r in report.rows if r.store == store] == [k for k, _, _ in expected]

    bad, good, pruned = (rows[("valkey", str(history_env[k]))] for k in ("bad", "good", "pruned"))
    catalog = history_env["catalog"]
    assert isinstance(catalog, Catalog)
    manifest = catalog.require("valkey", good.slot).manifest
    def within_rpo(row: object) -> bool:  # captured no later than one RPO after the slot was due
        return datetime.fromisoformat(row.captured_at) <= datetime.fromisoformat(row.due) + timedelta(hours=6)

    assert good.status == "verified" and good.rpo_ok == within_rpo(good)
    assert good.captured_at == manifest.captured_at and good.bytes == manifest.total_bytes
    assert good.sha256 == {f.name: f.sha256 for f in manifest.files}
    assert {good.checks[c].status for c in ("artifact_present", "integrity", "checksum", "inventory_recorded")} \
        == {"passed"}
    assert good.retention == "kept"
    assert bad.status == "failed" and bad.checks["checksum"].status == "failed" and not bad.rpo_ok
    assert "sha256" in bad.checks["checksum"].description and "checksum" in bad.error
    assert pruned.status == "verified" and pruned.rpo_ok == within_rpo(pruned)  # judged by its checks, then pruned
    assert pruned.retention.startswith("deleted local") and "beyond keep_days=3" in pruned.retention
    assert pruned.sha256  # from the materialization's metadata: the event log keeps it
    others = [r for r in report.rows if r.store == "valkey" and r.slot not in (bad.slot, good.slot, pruned.slot)]
    assert others and {r.status for r in others} == {"missed"}

    summary = {s.store: s for s in report.stores}
    valkey = summary["valkey"]
    assert (valkey.verified, valkey.failed, valkey.missed) == (2, 1, valkey.slots - 3)
    assert valkey.rpo_compliant == within_rpo(good) + within_rpo(pruned)
    assert valkey.rpo_compliance == round(valkey.rpo_compliant / valkey.slots, 4)
    assert valkey.failed_check_evaluations == 2  # checksum and integrity of the corrupted slot
    assert valkey.pass_rates["checksum"] == (3, 4)
    assert valkey.longest_gap_hours is not None and valkey.longest_gap_hours > 6
    assert summary["postgres"].verified == 1 and summary["postgres"].rto_target_minutes == 60
    assert valkey.rto_target_minutes == 10

    # renderings
    text = to_csv(report)
    lines = list(csv.DictReader(io.StringIO(text)))
    assert len(lines) == len(report.rows)
    line = next(x for x in lines if x["slot"] == good.slot and x["store"] == "valkey")
    assert line["status"] == "verified" and line["checksum"] == "passed" and line["retention"] == "kept"
    data = json.loads(to_json(report))
    shas = {(a["store"], a["slot"], a["file"]): a["sha256"] for a in data["artifacts"]}
    for store, slot in (("valkey", good.slot), ("valkey", bad.slot), ("postgres", str(history_env["pg"]))):
        for f in catalog.require(store, slot).manifest.files:
            assert shas[(store, slot, f.name)] == f.sha256
    page = to_html(report)
    assert page.count("<svg") >= 3 and "RPO compliance" in page and good.slot in page


def test_cli_report_formats_and_no_secrets(history_env: dict[str, object], module_env: dict[str, str],
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cb_env = module_env
    instance = history_env["instance"]
    assert isinstance(instance, dg.DagsterInstance)
    secret = cb_env["CB_POSTGRES_PASSWORD"]
    # a check description that carries secrets (e.g. a client error echoing a DSN) must not reach the report
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("valkey_backup"), check_name="integrity", passed=False,
        partition=str(history_env["missed"]),
        description=f"connect failed: postgresql://codingbrain:{secret}@db:5432 and {cb_env['CB_VALKEY_PASSWORD']}"))
    today = datetime.now(UTC).date()
    args = ["report", "--from", (today - timedelta(days=1)).isoformat(), "--to", today.isoformat()]
    outputs = {}
    for fmt in ("html", "csv", "json"):
        out = tmp_path / f"r.{fmt}"
        if fmt == "html":  # the installed entry point once, in-process for the rest (fast)
            done = cli(*args, "--format", fmt, "--output", str(out))
            assert done.returncode == 0, done.stderr
            stdout = done.stdout
        else:
            assert main([*args, "--format", fmt, "--output", str(out)]) == 0
            stdout = capsys.readouterr().out
        assert hashlib.sha256(out.read_bytes()).hexdigest() in stdout.replace("\n", "")
        outputs[fmt] = out.read_text()
    for text in outputs.values():
        assert secret not in text and cb_env["CB_VALKEY_PASSWORD"] not in text
        assert "<redacted>" in text and "connect failed" in text
    page = outputs["html"]
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    # self-contained: no scripts, stylesheets, images or fonts from anywhere
    for needle in ("<script", "<link", "<img", "src=", "@import", "url("):
        assert needle not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    data = json.loads(outputs["json"])
    assert {s["store"] for s in data["stores"]} == {"postgres", "valkey", "neo4j", "qdrant", "opensearch"}
    row = next(r for r in data["rows"] if r["slot"] == history_env["missed"] and r["store"] == "valkey")
    assert row["status"] == "missed" and row["checks"]["integrity"]["status"] == "failed"
    # one store only, csv
    assert main([*args, "--store", "postgres", "--format", "csv", "--output", str(tmp_path / "pg.csv")]) == 0
    assert {r["store"] for r in csv.DictReader(io.StringIO((tmp_path / "pg.csv").read_text()))} == {"postgres"}


@pytest.mark.parametrize(("args", "message"), [
    (("--from", "2026-13-01", "--to", "2026-11-02"), "invalid --from: '2026-13-01' (allowed: a date YYYY-MM-DD)"),
    (("--from", "2026-11-05", "--to", "2026-11-02"), "invalid --to: '2026-11-02'"),
    (("--from", "2026-11-01", "--to", "2026-11-02", "--format", "pdf"), "allowed: html, csv, json"),
    (("--from", "2026-11-01", "--to", "2026-11-02", "--store", "mysql"), "invalid store: 'mysql'"),
])
def test_report_bad_input_is_one_clear_line(module_env: dict[str, str], args: tuple[str, ...], message: str,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *args, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_audit_report_asset_writes_beside_the_backups_and_to_s3(cb_env: dict[str, str], s3_env: dict[str, str],
                                                                  s3_server: object, s3_bucket: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", s3_server.endpoint_url)  # type: ignore[attr-defined]
    instance = dg.DagsterInstance.get()
    week = weekly_sunday_0100.get_last_partition_key()
    assert week is not None
    window = weekly_sunday_0100.time_window_for_partition_key(week)
    from cb_backups.definitions import defs

    result = defs.resolve_job_def("audit_report_job").execute_in_process(
        partition_key=week, instance=instance, raise_on_error=False)
    assert result.success
    meta = result.asset_materializations_for_node("audit_report")[0].metadata
    html_path, json_path = Path(meta["html"].value), Path(meta["json"].value)
    assert html_path.parent == Path(cb_env["CB_BACKUP_DIR"]) / "_reports" and html_path.name == f"audit_{week}.html"
    data = json.loads(json_path.read_text())
    assert data["start"] == window.start.astimezone(UTC).isoformat(timespec="seconds")
    expected = sum(len(expected_slots(spec_for(s), window.start, window.end, datetime.now(UTC)))
                   for s in ("postgres", "valkey", "neo4j", "qdrant", "opensearch"))
    assert len(data["rows"]) == expected == meta["slots"].value and expected > 50
    assert meta["sha256"].value[html_path.name] == hashlib.sha256(html_path.read_bytes()).hexdigest()
    # the S3 copies, with the sha256 in their metadata
    assert meta["s3_html"].value == f"s3://{s3_bucket}/cb-backups/_reports/{html_path.name}"
    from cb_backups.config.settings import load_settings
    from cb_backups.offsite.s3 import S3Target

    target = S3Target(load_settings().s3)
    head = target.client.head_object(Bucket=s3_bucket, Key=f"cb-backups/_reports/{json_path.name}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(json_path.read_bytes()).hexdigest()
    body = target.client.get_object(Bucket=s3_bucket, Key=f"cb-backups/_reports/{html_path.name}")["Body"].read()
    assert body == html_path.read_bytes()


def test_report_shows_stale_copies_failed_offsite_runs_and_offsite_rpo(offsite_env: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    instance = dg.DagsterInstance.get()
    keys = spec_for("valkey").partitions.get_partition_keys()
    stale_key, failed_key = keys[-3], keys[-4]
    for key in (stale_key, failed_key):
        assert run_job("valkey_backup_job", key, instance).success
    assert run_job("valkey_offsite_job", stale_key, instance).success
    now = datetime.now(UTC)
    start, end = period((now - timedelta(days=2)).date(), now.date())

    def rows() -> tuple[dict[str, SlotRow], StoreSummary]:
        report = build_report(instance, Path(offsite_env["CB_BACKUP_DIR"]), start, end, ["valkey"], now=now)
        return {r.slot: r for r in report.rows}, report.stores[0]

    by_slot, summary = rows()
    assert by_slot[stale_key].offsite_verification == "verified"
    assert summary.offsite_rpo_ok is True and summary.offsite_newest_verified == stale_key

    assert run_job("valkey_backup_job", stale_key, instance).success  # re-taken: S3 holds the older manifest
    monkeypatch.setenv("CB_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # S3 down for this copy
    assert not run_job("valkey_offsite_job", failed_key, instance).success
    by_slot, summary = rows()
    stale = by_slot[stale_key]
    assert stale.offsite_verification == "stale" and "stale" in stale.offsite_error
    failed = by_slot[failed_key]
    assert len(failed.offsite_failed_runs) == 1 and "127.0.0.1:9" in failed.offsite_error
    assert failed.failed_runs == []  # a backup run did not fail
    assert summary.offsite_failed_runs == 1 and summary.offsite_rpo_ok is False
    report = build_report(instance, Path(offsite_env["CB_BACKUP_DIR"]), start, end, ["valkey"], now=now)
    assert "stale" in to_html(report) and "failed off-site runs" in to_html(report)
    header = next(csv.reader(io.StringIO(to_csv(report))))
    assert {"offsite_verification", "offsite_failed_runs", "offsite_error"} <= set(header)


def test_unconfigured_stores_are_not_configured_not_missed(tmp_path: Path) -> None:
    """Issue 17: a store without connection settings is "not configured" in the report, never "missed" or 0%."""
    (tmp_path / "backups").mkdir()
    now = datetime.now(UTC)
    start, end = period((now - timedelta(days=2)).date(), (now - timedelta(days=1)).date())
    with dg.DagsterInstance.ephemeral() as instance:
        report = build_report(instance, tmp_path / "backups", start, end, ["postgres", "neo4j"], now=now,
                              configured=["postgres"])
    by = {s.store: s for s in report.stores}
    assert by["postgres"].configured and by["postgres"].missed == by["postgres"].slots > 0
    assert by["postgres"].rpo_compliance == 0.0  # configured and never backed up: that IS missed
    neo4j = by["neo4j"]
    assert not neo4j.configured and neo4j.slots > 0 and neo4j.missed == 0
    assert neo4j.rpo_compliance is None and neo4j.offsite_rpo_ok is None
    assert {r.status for r in report.rows if r.store == "neo4j"} == {"not configured"}
    page = to_html(report)
    assert "neo4j (not configured)" in page
    summary_row = page.split("neo4j (not configured)", 1)[1].split("</tr>", 1)[0]
    assert "0.0%" not in summary_row and "not configured" in summary_row


def test_unconfigured_stores_get_stopped_schedules_and_passing_freshness(tmp_path: Path) -> None:
    """Issue 17: with only PostgreSQL configured, the other stores' schedules start stopped and their freshness
    checks pass saying "not configured" (the hourly job no longer paints them red); PostgreSQL's stays live."""
    script = """
import json, dagster as dg
from cb_backups.definitions import defs
statuses = {s.name: s.default_status.value for s in defs.schedules}
with dg.DagsterInstance.ephemeral() as instance:
    result = defs.resolve_job_def("freshness_checks_job").execute_in_process(instance=instance, raise_on_error=False)
    checks = {e.asset_key.path[-1]: [e.passed, e.description, e.metadata.get("configured") is not None]
              for e in result.get_asset_check_evaluations()}
desc = defs.resolve_assets_def("neo4j_backup").descriptions_by_key[dg.AssetKey("neo4j_backup")]
print(json.dumps({"schedules": statuses, "checks": checks, "neo4j_description": desc}))
"""
    (tmp_path / "backups").mkdir(mode=0o700)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CB_", "AWS_"))}
    env = {**clean, "CB_POSTGRES_URL": "postgresql://cb@127.0.0.1:1/cb", "CB_BACKUP_DIR": str(tmp_path / "backups")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["schedules"]["postgres_backup_schedule"] == "RUNNING"
    for name in ("valkey", "neo4j", "qdrant", "opensearch"):
        assert found["schedules"][f"{name}_backup_schedule"] == "STOPPED"
        passed, description, flagged = found["checks"][f"{name}_backup"]
        assert passed and "not configured" in description and flagged, found["checks"]
    passed, description, _ = found["checks"]["postgres_backup"]
    assert not passed and "no verified postgres backup" in description  # a configured store still fails
    assert "NOT CONFIGURED" in found["neo4j_description"]


def test_report_reads_well_one_point_or_many_verdicts_and_print() -> None:
    """Issue 17 item 8: markers (a lone point is drawn and labelled), a round axis above the largest value,
    one verdict sentence per store at the top, tables scrolling inside their own box, print CSS."""
    base = datetime(2026, 11, 24, tzinfo=UTC)
    lone = SlotRow("valkey", "2026-11-30-00:00", base.isoformat(), "verified", True, base.isoformat(), 52145, 0.137,
                   {"dump.rdb": "ab" * 32})
    many = [SlotRow("postgres", f"2026-11-2{i}-00:00", (base + timedelta(days=i)).isoformat(), "verified", True,
                    (base + timedelta(days=i)).isoformat(), 40_000_000 + i, 12.0 + i, {"pgdump.dump": "cd" * 32})
            for i in range(5)]
    stores = [StoreSummary("postgres", "PostgreSQL", 6, 60, slots=5, verified=5, rpo_compliant=5, rpo_compliance=1.0),
              StoreSummary("valkey", "Valkey", 6, 30, slots=2, verified=1, missed=1, rpo_compliant=1,
                           rpo_compliance=0.5),
              StoreSummary("neo4j", "Neo4j", 24, 120, configured=False, slots=1)]
    report = Report("2026-11-24T00:00:00+00:00", "2026-12-01T00:00:00+00:00", "2026-12-01T06:00:00+00:00", stores,
                    [*many, lone], [])
    page = to_html(report)
    verdicts = page.split('<ul class="verdicts">', 1)[1].split("</ul>", 1)[0]
    assert page.index("verdicts") < page.index("<h2>Summary")
    assert "postgres: met: all 5 slots verified within the 6 h RPO (100.0%)" in verdicts
    assert "valkey: NOT met: 1 of 2 slots missed or failed" in verdicts and 'class="bad"' in verdicts
    assert "neo4j: not configured" in verdicts
    duration = page.split('aria-label="backup duration"', 1)[1].split("</svg>", 1)[0]
    assert duration.count("<circle") == 6 and ">0.137 s<" in duration  # the lone point: marker and its value
    assert ">20 s<" in duration  # 12..16 s: the axis tops at a round 20 s, not at the raw maximum
    assert "0.1 s" not in duration
    size = page.split('aria-label="backup size"', 1)[1].split("</svg>", 1)[0]
    assert ">50 MiB<" in size and 'viewBox="0 0 900 240" class="plot"' in page
    assert page.count('<div class="scroll"><table><thead>') == 1 + 2  # summary + one per store with rows
    assert "@media print" in page and "thead{display:table-header-group}" in page and "@page" in page
    assert "details::details-content" in page  # printing shows the closed slot tables too
    # a report with one backup in all: an hour either side of it, so the point sits in the middle
    alone = to_html(Report(report.start, report.end, report.generated_at, stores[1:2], [lone], []))
    plot = alone.split('aria-label="backup duration"', 1)[1].split("</svg>", 1)[0]
    assert "2026-11-23 23:00" in plot and "2026-11-24 01:00 UTC" in plot
    assert plot.count("<circle") == 1 and 'cx="480.0"' in plot and ">0.2 s<" in plot  # round top above 0.137
