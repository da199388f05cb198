"""Reaching the PostgreSQL server for PITR: connections, its own tools (password in PGPASSWORD), run-as.

PostgreSQL refuses to run as root, so when cb-backups runs as root the server tools that touch a data
directory (pg_ctl, postgres) run through `runuser -u <run_as>` and the folders they use are given to it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cb_backups.config.pitr import PitrSettings
from cb_backups.config.settings import PostgresSettings
from cb_backups.core.errors import CbBackupsError, StoreUnavailable

STORE = "postgres"
DEFAULT_RUN_AS = "postgres"


class PitrError(CbBackupsError):
    """Point-in-time recovery cannot proceed; the message says why and what to change."""


@dataclass(frozen=True)
class Server:
    pg: PostgresSettings
    pitr: PitrSettings

    def tool(self, name: str) -> str:
        return str(Path(self.pg.bin_dir) / name) if self.pg.bin_dir else name

    def env(self, host: str | None = None, port: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST=host or self.pg.host, PGPORT=str(port or self.pg.port), PGUSER=self.pg.user,
                   PGDATABASE=self.pg.dbname)
        if self.pg.password:
            env["PGPASSWORD"] = self.pg.password  # never on a command line
        return env

    def connect(self, host: str | None = None, port: int | None = None, dbname: str | None = None,
                timeout: int = 10) -> psycopg.Connection[Any]:
        host, port = host or self.pg.host, port or self.pg.port
        try:
            return psycopg.connect(host=host, port=port, user=self.pg.user, password=self.pg.password,
                                   dbname=dbname or self.pg.dbname, autocommit=True, connect_timeout=timeout)
        except psycopg.Error as exc:
            raise StoreUnavailable(STORE, f"cannot connect to {host}:{port}: {first_line(exc)}") from None

    # --- running the server's tools as its owner -----------------------------------
    @property
    def run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        return self.pitr.run_as or DEFAULT_RUN_AS

    def as_owner(self, argv: list[str]) -> list[str]:
        user = self.run_as
        return ["runuser", "-u", user, "--", *argv] if user else argv

    def give(self, *paths: Path) -> None:
        """Hand folders (and what is in them) to the server's system user, when running as root."""
        user = self.run_as
        if user is None:
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise PitrError(f"the system user {user!r} (postgres_wal.run_as) does not exist") from None
        for path in paths:
            for root, dirs, files in os.walk(path):
                os.chown(root, entry.pw_uid, entry.pw_gid)
                for name in dirs + files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def pg_ctl(self, data_dir: Path, action: str, log: Path | None = None, options: str = "",
               timeout: int = 600) -> subprocess.CompletedProcess[str]:
        argv = [self.tool("pg_ctl"), "-D", str(data_dir), "-w", "-t", str(timeout)]
        if action == "stop":
            argv += ["-m", "fast"]
        if log is not None:
            argv += ["-l", str(log)]
        if options:
            argv += ["-o", options]
        argv.append(action)
        return subprocess.run(self.as_owner(argv), capture_output=True, text=True, timeout=timeout + 30,
                              env=self.env())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quote(value: str) -> str:
    """A value for postgresql.conf: single quotes, doubled inside."""
    return "'" + value.replace("'", "''") + "'"


def shell_words(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
