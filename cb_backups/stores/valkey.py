"""Valkey 8: BGSAVE, wait for LASTSAVE to advance, fetch the RDB (and AOF).

The RDB is copied from the data folder when cb-backups can read it, otherwise
fetched over the wire with `valkey-cli --rdb -` (a replica-style full sync),
streamed through the hashing writer either way. Passwords go to valkey-cli in
REDISCLI_AUTH and to a scratch valkey-server in a 0600 config file, never on a
command line. An in-place restore pauses writes (`CLIENT PAUSE ... WRITE`) before
its safety backup, so no acknowledged write is lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import valkey

from cb_backups.config.settings import ValkeySettings, VolumeSettings
from cb_backups.core.catalog import checksum_problems
from cb_backups.core.errors import BackupFailed, ConfigError, RestoreRefused, StoreUnavailable
from cb_backups.core.fileio import CHUNK, HashingWriter
from cb_backups.core.model import (
    Artifact,
    BackupOutput,
    FileRecord,
    Health,
    Inventory,
    Progress,
    Target,
    Verification,
    no_progress,
)
from cb_backups.core.net import free_port, wait_until
from cb_backups.stores.base import Scratch, disk_space_item, require_scratch, run_tool, version_problems

RDB_FILE = "dump.rdb"
AOF_FILE = "appendonly.tar.gz"
# the newest RDB format each Valkey major can load
MAX_RDB_VERSION = {7: 11, 8: 11, 9: 80}
PAUSE_MS = 30_000  # one CLIENT PAUSE; renewed every third of it, so a run that dies unpauses within 30 s
ASIDE_STAMP = "%Y%m%dT%H%M%S"  # of `<appenddirname>.before-restore-<stamp>` (local time)


RDB_HEAD = 9  # bytes of "VALKEY" or "REDIS" plus the format version's digits


def rdb_header(path: Path) -> tuple[str, int]:
    """('REDIS'|'VALKEY', version) from an RDB file's first bytes; ValueError when it is not one."""
    with open(path, "rb") as fh:
        return parse_rdb_header(fh.read(RDB_HEAD))


def parse_rdb_header(head: bytes) -> tuple[str, int]:
    """The header of an RDB's first bytes (taken as they are written: the file may be age ciphertext)."""
    for magic in ("REDIS", "VALKEY"):
        if head.startswith(magic.encode()):
            digits = head[len(magic):].decode(errors="replace")
            if digits.isdigit():
                return magic, int(digits)
    raise ValueError(f"not an RDB file (starts with {head[:9]!r})")


def rdb_version(artifact: Artifact) -> int:
    """The RDB format a server must load for this backup: the file's header, or the manifest's record
    when that is newer (refusing on either is the safe side)."""
    _, header = rdb_header(artifact.path(RDB_FILE))
    recorded = str(artifact.manifest.versions.get("rdb", ""))
    return max(header, int(recorded)) if recorded.isdigit() else header


@dataclass(frozen=True)
class ValkeyScratch(Scratch):
    """A throwaway valkey-server loaded from the backup's RDB."""

    port: int
    client: Callable[[], valkey.Valkey]  # a client of the scratch server


class ValkeyStore:
    name = "valkey"
    restore_method = "stop, place the RDB, start; scratch: a throwaway valkey-server loads the RDB"
    consistency_markers = ("lastsave",)

    def __init__(self, settings: ValkeySettings, volume: VolumeSettings | None = None) -> None:
        self.settings = settings

    # --- plumbing ------------------------------------------------------------
    def _tool(self, name: str) -> str:
        return str(Path(self.settings.bin_dir) / name) if self.settings.bin_dir else name

    def client(self, db: int = 0, port: int | None = None) -> valkey.Valkey:
        return valkey.Valkey(host=self.settings.host if port is None else "127.0.0.1",
                             port=port or self.settings.port, password=self.settings.password, db=db,
                             socket_timeout=30, socket_connect_timeout=10)

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except valkey.exceptions.AuthenticationError:
            raise StoreUnavailable(self.name, f"authentication to {self._where()} failed "
                                   "(check CB_VALKEY_PASSWORD)") from None
        except valkey.exceptions.ConnectionError as exc:
            raise StoreUnavailable(self.name, f"cannot connect to {self._where()}: {exc}") from None
        except valkey.exceptions.ResponseError as exc:
            raise BackupFailed(self.name, f"server answered an error: {exc}") from None

    # --- protocol ------------------------------------------------------------
    def health(self, backup_dir: Path) -> Health:
        items: dict[str, str] = {}
        try:
            persistence = self._call(self.client().info, "persistence")
            items["reachable"] = "ok"
            items["no save in progress"] = "ok" if not persistence.get("rdb_bgsave_in_progress") else \
                "a BGSAVE is already running"
        except StoreUnavailable as exc:
            items["reachable"] = str(exc)
        sizes = [p.stat().st_size for p in (backup_dir / self.name).glob(f"*/{RDB_FILE}")]
        items["disk space"] = disk_space_item(backup_dir, max(sizes) if sizes else None)
        return Health(self.name, items)

    def inventory(self) -> Inventory:
        return self._inventory(self.client())

    def _inventory(self, client: valkey.Valkey) -> Inventory:
        keyspace = self._call(client.info, "keyspace")
        keys = {name: int(v["keys"]) for name, v in keyspace.items() if name.startswith("db")}
        expires = {name: int(v.get("expires", 0)) for name, v in keyspace.items() if name.startswith("db")}
        keys.setdefault("db0", int(self._call(client.dbsize)))
        return {"databases": keys, "expires": expires}

    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput:
        client = self.client()
        server = self._call(client.info, "server")
        inventory = self._inventory(client)
        files: list[FileRecord]
        data_dir = Path(self.settings.data_dir) if self.settings.data_dir else None
        if data_dir is not None and data_dir.is_dir():
            lastsave = self._bgsave(client, progress)
            dbfilename = self._call(client.config_get, "dbfilename").get("dbfilename", RDB_FILE)
            rdb, head = self._copy(data_dir / dbfilename, into / RDB_FILE)
            files = [rdb]
            method = "bgsave+copy"
            aof = self._call(client.config_get, "appendonly").get("appendonly") == "yes"
            if aof:
                aof_dir = data_dir / self._call(client.config_get, "appenddirname").get("appenddirname", "")
                if aof_dir.is_dir():
                    files.append(_tar_folder(aof_dir, into / AOF_FILE))
        else:
            lastsave = int(self._call(client.lastsave).timestamp())
            rdb, head = self._fetch_over_wire(into / RDB_FILE, progress)
            files = [rdb]
            method = "rdb-sync"
        return BackupOutput(
            files=files, method=method, inventory=inventory,
            versions={"valkey": str(server.get("valkey_version") or server.get("redis_version")),
                      "rdb": str(parse_rdb_header(head)[1])},
            options={"aof_included": any(f.name == AOF_FILE for f in files)},
            markers={"lastsave": lastsave},
            captured_at=datetime.fromtimestamp(lastsave, UTC).isoformat(timespec="seconds")
            if method == "bgsave+copy" else None,
        )

    def _bgsave(self, client: valkey.Valkey, progress: Progress) -> int:
        """BGSAVE (SCHEDULE when an AOF rewrite runs) and wait until LASTSAVE advances."""
        before = int(self._call(client.lastsave).timestamp())
        # LASTSAVE has one-second resolution: make sure a new save is distinguishable.
        while int(time.time()) <= before:
            time.sleep(0.05)
        persistence = self._call(client.info, "persistence")
        if persistence.get("aof_rewrite_in_progress"):
            self._call(client.execute_command, "BGSAVE", "SCHEDULE")
        elif not persistence.get("rdb_bgsave_in_progress"):
            self._call(client.bgsave)
        deadline = time.monotonic() + self.settings.bgsave_timeout
        while time.monotonic() < deadline:
            now = int(self._call(client.lastsave).timestamp())
            persistence = self._call(client.info, "persistence")
            if now > before and not persistence.get("rdb_bgsave_in_progress"):
                if persistence.get("rdb_last_bgsave_status") != "ok":
                    raise BackupFailed(self.name, "BGSAVE failed on the server (rdb_last_bgsave_status="
                                       f"{persistence.get('rdb_last_bgsave_status')})")
                return now
            progress("waiting for BGSAVE", 0, None)
            time.sleep(0.1)
        raise BackupFailed(self.name, f"LASTSAVE did not advance within {self.settings.bgsave_timeout}s")

    def _copy(self, source: Path, dest: Path) -> tuple[FileRecord, bytes]:
        """The copied RDB's record and its first bytes (its header)."""
        try:
            src = open(source, "rb")  # noqa: SIM115 - the server renames a new RDB in; our handle stays valid
        except OSError as exc:
            raise BackupFailed(self.name, f"cannot read {source}: {exc.strerror}") from None
        with src, HashingWriter(dest) as out:
            head = src.read(RDB_HEAD)
            out.write(head)
            out.copy_from(src)
        return FileRecord(dest.name, out.bytes, out.sha256), head

    def _fetch_over_wire(self, dest: Path, progress: Progress) -> tuple[FileRecord, bytes]:
        """The fetched RDB's record and its first bytes (its header)."""
        env = dict(os.environ)
        if self.settings.password:
            env["REDISCLI_AUTH"] = self.settings.password
        argv = [self._tool("valkey-cli"), "-h", self.settings.host, "-p", str(self.settings.port), "--rdb", "-"]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except FileNotFoundError:
            raise BackupFailed(self.name, f"tool not found: {argv[0]} (set CB_VALKEY_BIN_DIR)") from None
        assert proc.stdout is not None and proc.stderr is not None
        head = b""
        with HashingWriter(dest) as out:
            while block := proc.stdout.read1(CHUNK):  # what the pipe has now, not a full chunk
                if len(head) < RDB_HEAD:
                    head += block[:RDB_HEAD - len(head)]
                out.write(block)
        if proc.wait() != 0:
            raise BackupFailed(self.name, f"valkey-cli --rdb failed: {proc.stderr.read().decode()[-300:]}")
        progress("RDB fetched", out.bytes, out.bytes)
        return FileRecord(dest.name, out.bytes, out.sha256), head

    def verify(self, artifact: Artifact) -> Verification:
        """RDB magic and version, then `valkey-check-rdb` (valkey-server under that name)."""
        path = artifact.path(RDB_FILE)
        if not path.is_file():
            return Verification(False, [f"{RDB_FILE} missing"])
        try:
            magic, version = rdb_header(path)
        except ValueError as exc:
            return Verification(False, [str(exc)])
        problems = []
        details: dict[str, Any] = {"magic": magic, "rdb_version": version}
        checker = self._check_rdb_tool()
        if checker is None:
            details["check_rdb"] = "valkey-check-rdb not available; header checked only"
        else:
            done = subprocess.run([checker, str(path)], capture_output=True, check=False)
            out = done.stdout.decode(errors="replace")
            if done.returncode != 0 or "RDB looks OK" not in out:
                last = [line for line in out.splitlines() if line.strip()][-1:] or [str(done.returncode)]
                problems.append(f"valkey-check-rdb failed: {last[0]}")
        if artifact.manifest.options.get("aof_included"):
            try:
                with tarfile.open(artifact.path(AOF_FILE), "r:gz") as tar:
                    tar.getnames()
            except (OSError, tarfile.TarError) as exc:
                problems.append(f"{AOF_FILE} unreadable: {exc}")
        return Verification(not problems, problems, details)

    def _check_rdb_tool(self) -> str | None:
        explicit = shutil.which(self._tool("valkey-check-rdb"))
        if explicit:
            return explicit
        server = shutil.which(self._tool("valkey-server"))
        if not server:
            return None
        # valkey-server acts as valkey-check-rdb when started under that name.
        link_dir = Path(tempfile.gettempdir()) / f"cb-checkrdb-{os.getuid()}"
        link_dir.mkdir(mode=0o700, exist_ok=True)
        link = link_dir / "valkey-check-rdb"
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                link.symlink_to(server)
        return str(link)

    # --- restore ---------------------------------------------------------------
    def check_compatible(self, artifact: Artifact, client: valkey.Valkey) -> list[str]:
        version = str(self._call(client.info, "server").get("valkey_version") or "0")
        major = int(version.split(".")[0] or 0)
        needed = rdb_version(artifact)
        if needed > MAX_RDB_VERSION.get(major, 0):
            return [f"RDB version {needed} cannot be loaded by Valkey {version} "
                    f"(loads up to {MAX_RDB_VERSION.get(major, 0)})"]
        return []

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        if target.mode == "in_place":
            return version_problems(lambda: self.check_compatible(artifact, self.client()))
        return self._scratch_server_problems(artifact)

    def _scratch_server_problems(self, artifact: Artifact) -> list[str]:
        """A scratch restore is loaded by the valkey-server next to the configured tools."""
        server = self._tool("valkey-server")
        try:
            out = subprocess.run([server, "--version"], capture_output=True, timeout=30, check=False).stdout.decode()
        except (OSError, subprocess.TimeoutExpired):
            return [f"{server} not found (set CB_VALKEY_BIN_DIR)"]
        version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "0")
        major = int(version.split(".")[0] or 0)
        rdb = rdb_version(artifact)
        if rdb > MAX_RDB_VERSION.get(major, 0):
            return [f"RDB version {rdb} cannot be loaded by Valkey {version}"]
        return []

    def describe_target(self, target: Target) -> str:
        if target.mode == "scratch":
            return "a throwaway valkey-server on a free loopback port (loaded, counted, stopped)"
        return f"the server at {self.settings.host}:{self.settings.port} (data folder {self.settings.data_dir})"

    def scratch_target(self, purpose: str) -> Target:
        return Target("scratch")  # always a throwaway server of its own

    @contextlib.contextmanager
    def scratch(self, artifact: Artifact, target: Target,
                progress: Progress = no_progress) -> Iterator[ValkeyScratch]:
        """The throwaway server lives in a temporary folder: nothing is left over, before or after."""
        require_scratch(self.name, target)
        with self.scratch_server(artifact) as port:
            yield ValkeyScratch(target, lambda: self._inventory(self.client(port=port)),
                                f"scratch valkey-server (port {port})", port, lambda: self.client(port=port))

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        return keys_problems(expected, actual)

    def before_delete(self, artifact: Artifact) -> None:
        """An RDB keeps nothing outside its folder."""

    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        changed = checksum_problems(artifact)  # a file or the manifest changed since the backup: refuse
        if changed:
            raise RestoreRefused(self.name, "; ".join(changed))
        verification = self.verify(artifact)
        if not verification.ok:
            raise RestoreRefused(self.name, "; ".join(verification.problems))
        if target.mode == "scratch":
            with self.scratch_server(artifact) as port:
                return self._inventory(self.client(port=port))
        return self._restore_in_place(artifact, progress)

    @contextlib.contextmanager
    def scratch_server(self, artifact: Artifact) -> Iterator[int]:
        """A throwaway valkey-server loaded from the artifact's RDB; yields its port."""
        with tempfile.TemporaryDirectory(prefix="cb-valkey-scratch-") as tmp:
            shutil.copyfile(artifact.path(RDB_FILE), Path(tmp) / RDB_FILE)
            port = free_port()
            # the password goes in a config file only we can read (the folder is 0700), never in argv
            config = Path(tmp) / "scratch.conf"
            with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                if self.settings.password:
                    fh.write(f"requirepass {_config_string(self.settings.password)}\n")
            argv = [self._tool("valkey-server"), str(config), "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", tmp, "--dbfilename", RDB_FILE, "--save", "", "--appendonly", "no", "--databases", "16"]
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except FileNotFoundError:
                raise RestoreRefused(self.name, f"{argv[0]} not found (set CB_VALKEY_BIN_DIR)") from None
            try:
                wait_until(lambda: self._loaded(port, proc), 120, "scratch valkey")
                yield port
            finally:
                proc.terminate()
                proc.wait(10)

    # --- writes during an in-place restore --------------------------------------
    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """Nothing to prepare: the RDB is placed while the server is stopped."""

    @contextlib.contextmanager
    def quiesce(self, target: Target) -> Iterator[dict[str, Any] | None]:
        """`CLIENT PAUSE <ms> WRITE` until the block ends, renewed while it lasts.

        Clients' write commands are held, not executed; the restore then stops the server, which
        closes their connections: the write fails for the client and was never acknowledged. Reads,
        BGSAVE (the safety backup) and SHUTDOWN still run. On exit the server (the restarted one, or
        the old one after an error) is unpaused.
        """
        if target.mode != "in_place":
            yield None
            return
        client = self.client()
        self._call(client.execute_command, "CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        done = threading.Event()

        def renew() -> None:
            while not done.wait(PAUSE_MS / 3000):
                try:
                    client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
                except valkey.exceptions.ValkeyError:
                    return  # the restore stopped the server: nothing left to pause

        renewer = threading.Thread(target=renew, name="valkey-pause", daemon=True)
        renewer.start()
        try:
            yield {"paused_ms": PAUSE_MS}
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(valkey.exceptions.ValkeyError):
                self.client().execute_command("CLIENT", "UNPAUSE")

    swaps_in_place = False  # the server is stopped and its files replaced: a killed restore may leave either

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """A restore killed while the server was stopped: start it again (its pause, if any, is lifted too;
        a pause also ends by itself within PAUSE_MS)."""
        if target.mode != "in_place" or hold is None:
            return []
        done = []
        try:
            self.client().ping()
        except valkey.exceptions.ValkeyError:
            if not self.settings.start_command:
                raise StoreUnavailable(self.name, "valkey does not answer and no start_command is set to start "
                                                  "it again (CB_VALKEY_START)") from None
            run_tool(self.name, self.settings.start_command, timeout=120)
            wait_until(lambda: self.client().info("persistence").get("loading") == 0, 300, "valkey to start")
            done.append("started valkey again")
        if "paused_ms" in hold:
            with contextlib.suppress(valkey.exceptions.ValkeyError):
                self.client().execute_command("CLIENT", "UNPAUSE")
                done.append("writes accepted again (CLIENT UNPAUSE)")
        return done

    def _asides(self) -> list[Path]:
        data_dir = Path(self.settings.data_dir) if self.settings.data_dir else None
        return sorted(data_dir.glob("*.before-restore-*")) if data_dir is not None and data_dir.is_dir() else []

    def replaced(self) -> list[str]:
        """The AOF folders in-place restores moved aside (the data itself is in the safety backup)."""
        return [f"{path} (the AOF from before a restore)" for path in self._asides()]

    def prune_replaced(self, keep_days: int) -> list[str]:
        cutoff = datetime.now() - timedelta(days=keep_days)
        dropped = []
        for path in self._asides():
            try:
                stamp = datetime.strptime(path.name.rsplit(".before-restore-", 1)[1], ASIDE_STAMP)
            except ValueError:
                continue  # not named by us: leave it
            if stamp <= cutoff:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                dropped.append(str(path))
        return dropped

    def _loaded(self, port: int, proc: subprocess.Popen[bytes] | None = None) -> bool:
        if proc is not None and proc.poll() is not None:
            raise RestoreRefused(self.name, f"valkey-server could not load the RDB (exit {proc.returncode})")
        return self.client(port=port).info("persistence").get("loading") == 0

    def _restore_in_place(self, artifact: Artifact, progress: Progress) -> Inventory:
        if not self.settings.data_dir or not self.settings.start_command:
            raise ConfigError("valkey in-place restore settings", "data_dir/start_command missing",
                              "set CB_VALKEY_DATA_DIR and CB_VALKEY_START (the command that starts the server)")
        data_dir = Path(self.settings.data_dir)
        client = self.client()
        problems = self.check_compatible(artifact, client)
        if problems:
            raise RestoreRefused(self.name, "; ".join(problems))
        config = {k: self._call(client.config_get, k).get(k, "") for k in
                  ("dbfilename", "appendonly", "appenddirname", "appendfilename")}
        dbfilename = config["dbfilename"] or RDB_FILE
        staged = data_dir / f".{dbfilename}.incoming"
        shutil.copyfile(artifact.path(RDB_FILE), staged)  # stage beside the target before stopping
        progress("stopping valkey", 0, None)
        if self.settings.stop_command:
            run_tool(self.name, self.settings.stop_command, timeout=120)
        else:
            with contextlib.suppress(valkey.exceptions.ConnectionError):
                client.shutdown(nosave=True)
        stamp = time.strftime(ASIDE_STAMP)
        aof_dir = data_dir / (config["appenddirname"] or "appendonlydir")
        # An existing AOF would be loaded instead of the RDB: move it aside (kept, not deleted).
        if aof_dir.exists():
            os.rename(aof_dir, aof_dir.with_name(f"{aof_dir.name}.before-restore-{stamp}"))
        if config["appendonly"] == "yes":
            # With AOF on, Valkey loads only the AOF: make the backup the AOF's base (an RDB preamble).
            aof_dir.mkdir(mode=0o700)
            base = f"{config['appendfilename'] or 'appendonly.aof'}.1.base.rdb"
            shutil.copyfile(staged, aof_dir / base)
            (aof_dir / f"{config['appendfilename'] or 'appendonly.aof'}.manifest").write_text(
                f"file {base} seq 1 type b\n")
        os.replace(staged, data_dir / dbfilename)
        progress("starting valkey", 0, None)
        run_tool(self.name, self.settings.start_command, timeout=120)
        wait_until(lambda: self.client().info("persistence").get("loading") == 0, 300, "valkey after restore")
        restored = self._inventory(self.client())
        problems = keys_problems(artifact.manifest.inventory, restored)
        if problems:
            raise BackupFailed(self.name, "restored key counts differ: " + "; ".join(problems))
        return restored


def keys_problems(expected: Inventory, actual: Inventory) -> list[str]:
    """Key counts per database; keys with a TTL may have expired since the backup."""
    problems = []
    for db, keys in expected.get("databases", {}).items():
        volatile = expected.get("expires", {}).get(db, 0)
        got = actual.get("databases", {}).get(db, 0)
        if not keys - volatile <= got <= keys:
            problems.append(f"{db}: expected {keys} keys ({volatile} with TTL), found {got}")
    return problems


def _config_string(value: str) -> str:
    """`value` as a valkey.conf string: every byte hex-escaped, so quotes, spaces or # need no thought."""
    return '"' + "".join(f"\\x{b:02x}" for b in value.encode()) + '"'


def _tar_folder(folder: Path, dest: Path) -> FileRecord:
    with HashingWriter(dest) as out, tarfile.open(fileobj=out, mode="w|gz") as tar:  # type: ignore[call-overload]
        tar.add(folder, arcname=folder.name)
    return FileRecord(dest.name, out.bytes, out.sha256)
