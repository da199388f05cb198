"""Bad input through the real CLI: one clear line naming the value and what is allowed, exit code 2, no traceback.
A run that fails (wrong password) is exit code 1, not bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Dsn-S3cret-in-url-41"
PG = "postgresql://codingbrain@127.0.0.1:1/codingbrain"

# (id, argv, env, config file text or None, text the one error line must contain)
CASES: list[tuple[str, list[str], dict[str, str], str | None, str]] = [
    ("unknown store", ["backup", "mysql"], {}, None,
     "invalid store: 'mysql' (allowed: postgres, valkey, neo4j, qdrant, opensearch)"),
    ("bad partition key", ["backup", "postgres", "--partition", "yesterday"], {}, None,
     "invalid partition key: 'yesterday' (allowed: format %Y-%m-%d-%H:%M"),
    ("partition off the schedule", ["backup", "postgres", "--partition", "2026-11-24-05:00"], {}, None,
     "a slot start on the schedule 0 */6 * * *"),
    ("daily key for a six-hourly store", ["verify", "valkey", "--partition", "2026-11-24"], {}, None,
     "invalid partition key: '2026-11-24'"),
    ("unknown timezone", ["backup", "postgres"], {"CB_TIMEZONE": "Mars/Base"}, None,
     "'Mars/Base' (allowed: an IANA zone name"),
    ("bad partitions start", ["list"], {"CB_PARTITIONS_START": "notadate"}, None,
     "invalid CB_PARTITIONS_START: 'notadate' (allowed: a date YYYY-MM-DD)"),
    ("negative retention", ["list"], {}, "retention:\n  postgres: {keep_days: -1}\n",
     "invalid retention.postgres.keep_days: -1 (allowed: a whole number >= 1"),
    ("retention for an unknown store", ["list"], {}, "retention:\n  mysql: {keep_days: 3}\n",
     "invalid store in 'retention': 'mysql'"),
    ("unknown compression", ["backup", "postgres"], {"CB_POSTGRES_COMPRESSION": "lz5"}, None,
     "invalid postgres.compression: 'lz5' (allowed: zstd:1..zstd:19"),
    ("S3 endpoint with a bad scheme", ["list"], {"CB_S3_BUCKET": "b", "CB_S3_ENDPOINT_URL": "ftp://s3.local"}, None,
     "invalid s3.endpoint_url: 'ftp://s3.local' (allowed: a URL like http://host:port"),
    ("S3 endpoint that is not a URL", ["list"], {"CB_S3_BUCKET": "b", "CB_S3_ENDPOINT_URL": "http://[::1"}, None,
     "invalid s3.endpoint_url: 'http://[::1'"),
    ("bad port in URL, password redacted", ["list"],
     {"CB_POSTGRES_URL": f"postgresql://codingbrain:{SECRET}@127.0.0.1:99999/codingbrain"}, None,
     "invalid CB_POSTGRES_URL: 'postgresql://codingbrain:***@127.0.0.1:99999/codingbrain' (allowed: a port from 1"),
    ("port that is not a number", ["list"], {"CB_VALKEY_URL": "valkey://127.0.0.1:six"}, None,
     "invalid CB_VALKEY_URL: 'valkey://127.0.0.1:six' (allowed: a port from 1 to 65535)"),
    ("wrong URL scheme", ["list"], {"CB_POSTGRES_URL": f"mysql://root:{SECRET}@db:3306/x"}, None,
     "invalid CB_POSTGRES_URL: 'mysql://root:***@db:3306/x' (allowed: a URL like postgresql://host:port"),
    ("*_FILE pointing nowhere", ["list"], {"CB_POSTGRES_PASSWORD_FILE": "/nonexistent/pw"}, None,
     "invalid CB_POSTGRES_PASSWORD_FILE: '/nonexistent/pw' (allowed: a readable file"),
    ("CB_CONFIG missing", ["list"], {"CB_CONFIG": "/nonexistent/cb.yaml"}, None,
     "invalid CB_CONFIG: '/nonexistent/cb.yaml' (allowed: a readable YAML file"),
    ("malformed YAML", ["list"], {}, "postgres: {host: [unclosed\n", "(allowed: valid YAML"),
    ("YAML that is not a mapping", ["list"], {}, "- postgres\n- valkey\n",
     "(allowed: a YAML mapping at the top level)"),
    ("unknown top-level key", ["list"], {}, "backup_dirr: /srv/backups\n", ": 'backup_dirr' (allowed: backup_dir,"),
    ("unknown key in a section (value not echoed)", ["list"], {}, f"postgres:\n  pasword: {SECRET}\n",
     "invalid setting in the 'postgres' section: 'pasword' (allowed: bin_dir, compression,"),
    ("not a number", ["list"], {}, "valkey:\n  bgsave_timeout: soon\n",
     "invalid valkey.bgsave_timeout: 'soon' (allowed: a number of seconds)"),
    ("backup dir is a file", ["backup", "postgres"], {"CB_BACKUP_DIR": "/etc/hostname"}, None,
     "invalid backup_dir (CB_BACKUP_DIR): '/etc/hostname' (allowed: a folder (this is a file))"),
    ("store not configured", ["backup", "neo4j"], {}, None,
     "invalid neo4j connection: 'not configured' (allowed: set CB_NEO4J_"),
    ("unknown subcommand", ["frobnicate"], {}, None, "invalid choice: 'frobnicate' (choose from"),
    ("unknown option", ["backup", "postgres", "--partitoin", "x"], {}, None, "unrecognized arguments: --partitoin"),
    ("report with a bad date", ["report", "--from", "2026-13-01", "--to", "2026-11-30"], {}, None, "'2026-13-01'"),
    ("report in an unknown format", ["report", "--from", "2026-11-01", "--to", "2026-11-30", "--format", "pdf"],
     {}, None, "invalid --format: 'pdf' (allowed: html, csv, json)"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Run every case at once (each CLI start imports Dagster; in parallel the table takes seconds, not minutes)."""
    base = tmp_path_factory.mktemp("bad-input")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CB_", "AWS_"))}
    clean.update(CB_BACKUP_DIR=str(base / "backups"), CB_POSTGRES_URL=PG, CB_VALKEY_URL="valkey://127.0.0.1:1")

    def run(case: tuple[str, list[str], dict[str, str], str | None, str]) -> subprocess.CompletedProcess[str]:
        name, argv, env, config, _ = case
        home = base / f"home-{CASES.index(case)}"  # one Dagster instance per process (no schema-creation race)
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        full = {**clean, "DAGSTER_HOME": str(home), **env}
        if config is not None:
            path = base / (name.replace(" ", "_").replace("*", "x") + ".yaml")
            path.write_text(config)
            full["CB_CONFIG"] = str(path)
        return subprocess.run([sys.executable, "-m", "cb_backups.cli.app", *argv], capture_output=True, text=True,
                              env=full, cwd=ROOT, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield dict(zip([c[0] for c in CASES], pool.map(run, CASES), strict=True))


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_code_2(
        outcomes: dict[str, subprocess.CompletedProcess[str]],
        case: tuple[str, list[str], dict[str, str], str | None, str]) -> None:
    name, _, _, _, expected = case
    done = outcomes[name]
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Stack Trace" not in output
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr  # argparse adds its usage lines above; the error is one line
    assert expected in errors[0], errors[0]
    assert SECRET not in output


def test_wrong_password_is_a_failed_run_not_bad_input(cb_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "backup", "postgres"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={**os.environ, "CB_POSTGRES_PASSWORD": SECRET})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Stack Trace" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("postgres ") and "password authentication failed" in lines[0]
    assert SECRET not in done.stdout + done.stderr
