"""The `postgres_wal:` settings: bad values are one clear line naming the value and what is allowed (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cb_backups.cli.app import main
from cb_backups.config.pitr import PitrSettings, pitr_from_config
from cb_backups.core.errors import ConfigError


@pytest.mark.parametrize(("section", "env", "message"), [
    ({"slot": "Bad-Slot"}, {}, "invalid postgres_wal.slot: 'Bad-Slot' (allowed: 1-63 lower-case"),
    ({}, {"CB_WAL_RPO_SECONDS": "soon"}, "invalid postgres_wal.rpo_seconds: 'soon' (allowed: a number)"),
    ({"max_retained_mb": 0}, {}, "invalid postgres_wal.max_retained_mb: 0 (allowed: a whole number from 16"),
    ({"colour": 1}, {}, "invalid setting in the 'postgres_wal' section: 'colour'"),
])
def test_bad_settings_name_the_value(section: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        pitr_from_config({"postgres_wal": section}, env)
    assert str(info.value).startswith(message)


def test_environment_over_the_file() -> None:
    got = pitr_from_config({"postgres_wal": {"rpo_seconds": 30, "stop_command": "systemctl stop postgresql"}},
                           {"CB_WAL_RPO_SECONDS": "15"})
    assert got == PitrSettings(rpo_seconds=15.0, stop_command=("systemctl", "stop", "postgresql"))


def test_cli_refuses_a_bad_section_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cb.yaml"
    config.write_text("postgres_wal:\n  slot: 'no spaces allowed'\n")
    monkeypatch.setenv("CB_CONFIG", str(config))
    monkeypatch.setenv("CB_BACKUP_DIR", str(tmp_path))
    assert main(["wal-receive", "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'no spaces allowed'" in err
