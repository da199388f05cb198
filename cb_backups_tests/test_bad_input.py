"""Every failure through the real CLI is one line: bad input names the value and what is allowed (exit 2), a
failed run says why and gives its Dagster run id (exit 1); never a traceback or a Dagster stack trace.

One table, run in order, one `python -m cb_backups.cli` process per row. Rows without servers come first
(most stop before Dagster is imported); the few that need a real PostgreSQL share one prepared backup dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cb_backups.core.catalog import Catalog
from cb_backups.core.specs import spec_for
from cb_backups.demo.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Dsn-S3cret-in-url-41"
PG = "postgresql://codingbrain@127.0.0.1:1/codingbrain"  # configured, never reached
SIX_HOURLY = spec_for("postgres").partitions
LAST = SIX_HOURLY.get_last_partition_key() or "2026-11-24-00:00"
_last = datetime.strptime(LAST, SIX_HOURLY.fmt)
OPEN_SLOT = (_last + timedelta(hours=6)).strftime(SIX_HOURLY.fmt)  # its window has not ended yet
PREVIOUS = (_last - timedelta(hours=6)).strftime(SIX_HOURLY.fmt)
OUT_OF_RETENTION = (_last - timedelta(days=spec_for("postgres").retention_days + 1)).strftime(SIX_HOURLY.fmt)
ALL_SECTIONS_MISSING = "not configured, not backed up: valkey, neo4j, qdrant, opensearch"  # served: PostgreSQL only


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    code: int  # 2 bad input, 1 a run or check failed, 0 ok
    says: str  # in the one error line (for code 0: in stdout)
    env: dict[str, str] = field(default_factory=dict)
    yaml: str | None = None
    server: bool = False  # needs the real PostgreSQL and the prepared backups


def yaml_case(name: str, text: str, says: str, argv: list[str] | None = None) -> Case:
    return Case(name, argv or ["list"], 2, says, yaml=text)


CASES: list[Case] = [
    # --- arguments --------------------------------------------------------------------------------------
    Case("unknown store", ["backup", "mysql"], 2,
         "invalid store: 'mysql' (allowed: postgres, valkey, neo4j, qdrant, opensearch)"),
    Case("unknown subcommand", ["frobnicate"], 2, "invalid choice: 'frobnicate' (choose from"),
    Case("unknown option", ["backup", "postgres", "--partitoin", "x"], 2, "unrecognized arguments: --partitoin"),
    Case("store not configured", ["backup", "neo4j"], 2, "invalid neo4j connection: 'not configured' (allowed: set"),
    # --- partition keys (issue 12: DagsterUnknownPartitionError tracebacks) ----------------------------------
    Case("bad partition key", ["backup", "postgres", "--partition", "yesterday"], 2,
         "invalid partition key: 'yesterday' (allowed: format %Y-%m-%d-%H:%M"),
    Case("partition off the schedule", ["backup", "postgres", "--partition", "2026-11-24-05:00"], 2,
         "a slot start on the schedule 0 */6 * * *"),
    Case("daily key for a six-hourly store", ["verify", "valkey", "--partition", "2026-11-24"], 2,
         "invalid partition key: '2026-11-24'"),
    Case("slot still open", ["backup", "postgres", "--partition", OPEN_SLOT], 2,
         f"invalid partition key: '{OPEN_SLOT}' (allowed: a slot whose window has ended, from "),
    Case("slot in the future", ["backup", "postgres", "--partition", "2099-01-01-00:00"], 2,
         f"'2099-01-01-00:00' (allowed: a slot whose window has ended, from 2026-11-01-00:00 to {LAST})"),
    Case("slot before the partitions start", ["backup", "valkey", "--partition", "2026-10-01-00:00"], 2,
         "'2026-10-01-00:00' (allowed: a slot whose window has ended"),
    Case("full-width digits", ["backup", "postgres", "--partition", "２０２６-１２-０１-００:００"], 2,
         "'２０２６-１２-０１-００:００' (allowed: format %Y-%m-%d-%H:%M in ASCII digits"),
    Case("Arabic-Indic digits", ["backup", "postgres", "--partition", "٢٠٢٦-١٢-٠١-٠٠:٠٠"], 2,
         "(allowed: format %Y-%m-%d-%H:%M in ASCII digits"),
    Case("unpadded key", ["verify", "postgres", "--partition", "2026-11-2-00:00"], 2,
         "'2026-11-2-00:00' (allowed: format"),
    Case("slot beyond retention", ["backup", "postgres", "--partition", OUT_OF_RETENTION], 2,
         f"'{OUT_OF_RETENTION}' (allowed: a postgres slot that ended within its 7-day retention"),
    # --- environment ----------------------------------------------------------------------------------------
    Case("unknown timezone", ["backup", "postgres"], 2, "'Mars/Base' (allowed: an IANA zone name",
         env={"CB_TIMEZONE": "Mars/Base"}),
    Case("bad partitions start", ["list"], 2, "invalid CB_PARTITIONS_START: 'notadate' (allowed: a date YYYY-MM-DD)",
         env={"CB_PARTITIONS_START": "notadate"}),
    Case("unknown log level", ["list"], 2,
         "invalid CB_LOG_LEVEL: 'VERBOSE' (allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL)",
         env={"CB_LOG_LEVEL": "VERBOSE"}),
    Case("unknown compression", ["backup", "postgres"], 2,
         "invalid postgres.compression: 'lz5' (allowed: zstd:1..zstd:19", env={"CB_POSTGRES_COMPRESSION": "lz5"}),
    Case("S3 endpoint with a bad scheme", ["list"], 2,
         "invalid s3.endpoint_url: 'ftp://s3.local' (allowed: a URL like http://host:port",
         env={"CB_S3_BUCKET": "b", "CB_S3_ENDPOINT_URL": "ftp://s3.local"}),
    Case("S3 endpoint that is not a URL", ["list"], 2, "invalid s3.endpoint_url: 'http://[::1'",
         env={"CB_S3_BUCKET": "b", "CB_S3_ENDPOINT_URL": "http://[::1"}),
    Case("bad port in URL, password redacted", ["list"], 2,
         "invalid CB_POSTGRES_URL: 'postgresql://codingbrain:***@127.0.0.1:99999/codingbrain' (allowed: a port",
         env={"CB_POSTGRES_URL": f"postgresql://codingbrain:{SECRET}@127.0.0.1:99999/codingbrain"}),
    Case("port that is not a number", ["list"], 2,
         "invalid CB_VALKEY_URL: 'valkey://127.0.0.1:six' (allowed: a port from 1 to 65535)",
         env={"CB_VALKEY_URL": "valkey://127.0.0.1:six"}),
    Case("wrong URL scheme", ["list"], 2,
         "invalid CB_POSTGRES_URL: 'mysql://root:***@db:3306/x' (allowed: a URL like postgresql://host:port",
         env={"CB_POSTGRES_URL": f"mysql://root:{SECRET}@db:3306/x"}),
    Case("*_FILE pointing nowhere", ["list"], 2,
         "invalid CB_POSTGRES_PASSWORD_FILE: '/nonexistent/pw' (allowed: a readable file",
         env={"CB_POSTGRES_PASSWORD_FILE": "/nonexistent/pw"}),
    Case("CB_CONFIG missing", ["list"], 2, "invalid CB_CONFIG: '/nonexistent/cb.yaml' (allowed: a readable YAML file",
         env={"CB_CONFIG": "/nonexistent/cb.yaml"}),
    Case("backup dir is a file", ["backup", "postgres"], 2,
         "invalid backup_dir (CB_BACKUP_DIR): '/etc/hostname' (allowed: a folder (this is a file))",
         env={"CB_BACKUP_DIR": "/etc/hostname"}),
    Case("backup dir missing (an unmounted disk)", ["backup", "postgres"], 2,
         "invalid backup_dir (CB_BACKUP_DIR): '/nonexistent-mount/backups' (allowed: an existing folder",
         env={"CB_BACKUP_DIR": "/nonexistent-mount/backups"}),
    Case("backup dir create flag not a yes/no", ["list"], 2,
         "invalid CB_BACKUP_DIR_CREATE: 'perhaps' (allowed: 1, true, yes, 0, false, no)",
         env={"CB_BACKUP_DIR": "/nonexistent-mount/backups", "CB_BACKUP_DIR_CREATE": "perhaps"}),
    # --- the CB_CONFIG file ---------------------------------------------------------------------------------
    yaml_case("malformed YAML", "postgres: {host: [unclosed\n", "(allowed: valid YAML"),
    yaml_case("YAML that is not a mapping", "- postgres\n- valkey\n", "(allowed: a YAML mapping at the top level)"),
    yaml_case("unknown top-level key", "backup_dirr: /srv/backups\n", ": 'backup_dirr' (allowed: backup_dir,"),
    yaml_case("unknown key in a section (value not echoed)", f"postgres:\n  pasword: {SECRET}\n",
              "invalid setting in the 'postgres' section: 'pasword' (allowed: bin_dir, compression,"),
    yaml_case("not a number", "valkey:\n  bgsave_timeout: soon\n",
              "invalid valkey.bgsave_timeout: 'soon' (allowed: a number of seconds)"),
    yaml_case("count_tables not a list", "postgres: {count_tables: 5}\n",
              "invalid postgres.count_tables: 5 (allowed: a list of names"),
    yaml_case("backup_dir a number", "backup_dir: 5\n", "invalid backup_dir: 5 (allowed: a folder path)"),
    yaml_case("timezone a number", "timezone: 5\n", "invalid timezone: 5 (allowed: an IANA zone name"),
    yaml_case("negative timeout", "valkey: {bgsave_timeout: -5}\n",
              "invalid valkey.bgsave_timeout: -5 (allowed: a number of seconds from 0.1 to"),
    yaml_case("timeout not a number (NaN)", "valkey: {bgsave_timeout: .nan}\n", "invalid valkey.bgsave_timeout: nan"),
    yaml_case("port out of range", "valkey: {port: 70000}\n",
              "invalid valkey.port: 70000 (allowed: a whole number from 1 to 65535)"),
    yaml_case("port a boolean", "neo4j: {uri: 'bolt://127.0.0.1:1'}\npostgres: {port: true}\n",
              "invalid postgres.port: True (allowed: a whole number from 1 to 65535)"),
    yaml_case("S3 part size below S3's minimum", "s3: {multipart_chunk_mb: 1}\n",
              "invalid s3.multipart_chunk_mb: 1 (allowed: a whole number from 5 to 5120)"),
    yaml_case("a section that is not a mapping", "restore: 5\n",
              "invalid 'restore' section: 5 (allowed: a mapping of settings)"),
    yaml_case("a volume that is not a mapping", "volumes: {qdrant: 5}\n",
              "invalid 'qdrant' section: 5 (allowed: a mapping of settings)"),
    yaml_case("webhook URL not text", "webhook_url: [1]\n", "invalid webhook_url: [1] (allowed: text)"),
    yaml_case("backup_dir_create not a boolean", "backup_dir_create: maybe\n",
              "invalid backup_dir_create: 'maybe' (allowed: true or false)"),
    yaml_case("negative retention", "retention:\n  postgres: {keep_days: -1}\n",
              "invalid retention.postgres.keep_days: -1 (allowed: a whole number >= 1"),
    yaml_case("retention for an unknown store", "retention:\n  mysql: {keep_days: 3}\n",
              "invalid store in 'retention': 'mysql'"),
    yaml_case("compression level out of range, all stores", "postgres: {compression: 'zstd:99'}\n",
              "invalid postgres.compression: 'zstd:99' (allowed: zstd:1..zstd:19", argv=["backup"]),
    # --- restore ----------------------------------------------------------------------------------------------
    Case("--set with SQL in a database name", ["restore", "postgres", "--set", 'dbname=x";DROP DATABASE cb;--'], 2,
         """invalid --set dbname: 'x";DROP DATABASE cb;--' (allowed: letters, digits and _ . -"""),
    Case("--set an unknown key", ["restore", "postgres", "--set", "colour=blue"], 2,
         "invalid --set key: 'colour' (allowed: admin_command, collections,"),
    Case("--set without =", ["restore", "postgres", "--set", "dbname"], 2,
         "invalid --set: 'dbname' (allowed: KEY=VALUE)"),
    Case("--set a bad number", ["restore", "postgres", "--set", "jobs=many"], 2, "invalid override jobs: 'many'"),
    Case("--set jobs of 0", ["restore", "postgres", "--set", "jobs=0"], 2, "invalid override jobs: '0'"),
    Case("--set negative jobs", ["restore", "postgres", "--set", "jobs=-3"], 2, "invalid override jobs: '-3'"),
    Case("--set negative safety days", ["restore", "postgres", "--set", "safety_keep_days=-1"], 2,
         "invalid safety_keep_days: '-1' (allowed: a whole number of days >= 0)"),
    Case("scratch restore onto the live database", ["restore", "postgres", "--set", "dbname=codingbrain"], 2,
         "invalid scratch target: 'database codingbrain on 127.0.0.1:1' (allowed: one other than the live data"),
    Case("in-place restore without --yes and no terminal", ["restore", "postgres", "--target", "in-place"], 2,
         "refused: an in-place restore of postgres replaces live data; pass --yes"),
    Case("restore of a slot that was never backed up", ["restore", "valkey", "--backup", PREVIOUS], 2,
         f"invalid valkey backup: '{PREVIOUS}' (allowed: an existing backup; newest are: none)"),
    # --- report ----------------------------------------------------------------------------------------------
    Case("report with a bad date", ["report", "--from", "2026-13-01", "--to", "2026-11-30"], 2, "'2026-13-01'"),
    Case("report over all of time", ["report", "--from", "0001-01-01", "--to", "9999-12-31"], 2,
         "invalid --from: '0001-01-01' (allowed: a date from 1970-01-01 to 9998-12-31)"),
    Case("report to the last day datetime has", ["report", "--from", "2026-11-01", "--to", "9999-12-31"], 2,
         "invalid --to: '9999-12-31' (allowed: a date from 1970-01-01 to 9998-12-31)"),
    Case("report ending before it starts", ["report", "--from", "2026-11-30", "--to", "2026-11-01"], 2,
         "invalid --to: '2026-11-01' (allowed: a date on or after --from 2026-11-30)"),
    Case("report in an unknown format", ["report", "--from", "2026-11-01", "--to", "2026-11-30", "--format", "pdf"],
         2, "invalid --format: 'pdf' (allowed: html, csv, json)"),
    # --- the operator's console (issue 17) -----------------------------------------------------------------
    Case("status of an unknown store", ["status", "mysql"], 2,
         "invalid store: 'mysql' (allowed: postgres, valkey, neo4j, qdrant, opensearch)"),
    Case("list of an unknown store names full_system", ["list", "fulls"], 2,
         "invalid store: 'fulls' (allowed: postgres, valkey, neo4j, qdrant, opensearch, full_system)"),
    Case("full system slot that is not a Sunday", ["verify", "full", "--slot", "2026-11-24"], 2,
         "invalid partition key: '2026-11-24'"),
    Case("restore from an unknown source", ["restore", "postgres", "--source", "tape"], 2,
         "argument --source/--from: invalid choice: 'tape' (choose from"),
    Case("demo port out of range", ["demo", "--postgres-port", "70000"], 2,
         "invalid --postgres-port: '70000' (allowed: a TCP port 1 to 65535, or 0 for a free one)"),
    Case("demo port from the environment", ["demo"], 2,
         "invalid --valkey-port: 'x' (allowed: a TCP port", env={"CB_DEMO_VALKEY_PORT": "x"}),
    Case("report of an unknown store, positional", ["report", "mysql", "--from", "2026-11-01", "--to",
                                                     "2026-11-02"], 2, "invalid store: 'mysql'"),
    # --- with a real PostgreSQL: failed runs are exit 1, one line with the run id ---------------------------
    Case("backup with no store backs up the configured ones", ["backup", "--partition", LAST], 0,
         ALL_SECTIONS_MISSING, server=True),
    Case("safety stamp that does not exist lists safety stamps, not slots",
         ["restore", "postgres", "--backup", "safety:nonsense"], 2,
         "invalid postgres safety backup: 'safety:nonsense' (allowed: an existing one; newest are: none)",
         server=True),
    Case("restore refused: the backup fails verification", ["restore", "postgres", "--backup", PREVIOUS], 1,
         f"postgres: restore refused (target untouched): backup {PREVIOUS} failed verification:", server=True),
    Case("wrong password is a failed run, not bad input", ["backup", "postgres"], 1,
         "password authentication failed", env={"CB_POSTGRES_PASSWORD": SECRET}, server=True),
]


def test_the_table_covers_the_issue_and_more() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bad-input")
    for name in ("backups", "home"):
        (base / name).mkdir()
    (base / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return base


@pytest.fixture(scope="module")
def served(base: Path, pg_server: EmbeddedPostgres) -> dict[str, str]:
    """PostgreSQL configured, with a backup of PREVIOUS whose dump was then corrupted on disk."""
    backups = base / "served-backups"
    env = {**pg_server.env(), "CB_BACKUP_DIR": str(backups), "CB_BACKUP_DIR_CREATE": "1",
           "DAGSTER_HOME": str(base / "home")}
    done = cli(["backup", "postgres", "--partition", PREVIOUS], env)
    assert done.returncode == 0, done.stderr
    artifact = Catalog(backups).require("postgres", PREVIOUS)
    dump = max((artifact.directory / f.name for f in artifact.manifest.files), key=lambda p: p.stat().st_size)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    return env


def cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CB_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "cb_backups.cli", *argv], capture_output=True, text=True,
                          env={**clean, **env}, cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_failure_is_one_clear_line(case: Case, base: Path, request: pytest.FixtureRequest) -> None:
    env = {"CB_BACKUP_DIR": str(base / "backups"), "DAGSTER_HOME": str(base / "home"),
           "CB_POSTGRES_URL": PG, "CB_VALKEY_URL": "valkey://127.0.0.1:1"}
    if case.server:
        env = {**env, "CB_VALKEY_URL": "", **request.getfixturevalue("served")}
    if case.yaml is not None:
        path = base / (case.name.replace(" ", "_").replace("*", "x").replace("/", "_") + ".yaml")
        path.write_text(case.yaml)
        env["CB_CONFIG"] = str(path)
    # The variables override the YAML: leave out those of the settings a YAML row is about.
    for key, variable in (("backup_dir:", "CB_BACKUP_DIR"), ("postgres:", "CB_POSTGRES_URL"),
                          ("valkey:", "CB_VALKEY_URL")):
        if case.yaml is not None and key in case.yaml:
            env[variable] = ""
    done = cli(case.argv, {**env, **case.env})
    output = done.stdout + done.stderr
    assert done.returncode == case.code, output[-3000:]
    assert "Traceback" not in output and "Stack Trace" not in output, output[-3000:]
    assert SECRET not in output
    if case.code == 0:
        assert case.says in done.stdout and not done.stderr.strip(), output[-3000:]
        return
    # argparse puts its usage lines above its error; everything else is the one line
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, done.stderr
    assert case.says in lines[0], lines[0]
    if case.code == 1:
        assert "(Dagster run " in lines[0], lines[0]  # the stack trace is in that run's log, not here
