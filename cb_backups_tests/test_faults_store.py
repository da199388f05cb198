"""A store or S3 going away, slowing down or answering 5xx: a clear failure naming the store, the slot's
checks failed, nothing pruned because of it; S3 copies retry with backoff and never leave a truncated object.

The faults are real network faults: small proxies in this file sit between cb-backups and the real servers
(PostgreSQL, Valkey, SeaweedFS) and cut, delay, truncate or answer 503.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import dagster as dg
import pytest

from cb_backups.cli.runs import failure_messages, run_job
from cb_backups.config.retention import DEFAULT_POLICIES
from cb_backups.config.settings import S3Settings
from cb_backups.core.catalog import MANIFEST, Catalog, utcnow
from cb_backups.core.fileio import HashingWriter
from cb_backups.core.model import Artifact, BackupOutput, FileRecord
from cb_backups.core.specs import spec_for
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.offsite import s3 as offsite
from cb_backups.retention.apply import local_backups
from cb_backups.retention.policy import plan
from cb_backups_tests.servers.s3 import SeaweedS3

MiB = 1024 * 1024


# --- a TCP proxy that can take the "server" away mid-conversation ------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream; `cut_after`: once one connection has received that many bytes
    from the server, every connection is cut and the port closed (the server is gone)."""

    def __init__(self, upstream: tuple[str, int], cut_after: int | None = None,
                 delay: float = 0.0) -> None:
        self.upstream, self.cut_after, self.delay = upstream, cut_after, delay
        self.listener = socket.create_server(("127.0.0.1", 0))  # port 0: no race with another worker
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.connections = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                server = socket.create_connection(self.upstream)
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, number), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, number: int | None) -> None:
        received = 0
        try:
            while block := src.recv(16384):
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(block)
                received += len(block)
                if number is not None and self.cut_after is not None and received >= self.cut_after:
                    self.stop()
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.cut.set()
        self.listener.close()
        with self._lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# --- an HTTP proxy for S3 that answers 503, stalls, truncates or slows down -----------------------------------


class S3FaultProxy:
    """Forwards HTTP to the S3 server; `fault(method, path, number_of_this_put)` picks what happens to a request:
    "forward", "slow" (answer after `slow_seconds`), "stall" (forward, then never answer), "503", "truncate"
    (send the server only half the body, then hang up)."""

    def __init__(self, upstream: str, fault: Callable[[str, str, int], str], slow_seconds: float = 0.3,
                 stall_seconds: float = 2.5) -> None:
        parts = urlsplit(upstream)
        self.host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.fault, self.slow_seconds, self.stall_seconds = fault, slow_seconds, stall_seconds
        self.puts: list[tuple[float, str, str]] = []  # (time, path, what happened)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                """The request body as sent, chunked framing (aws-chunked trailers) included."""
                if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                raw = bytearray()
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers, then an empty line
                            line = self.rfile.readline()
                            raw += line
                            if line in (b"\r\n", b"\n", b""):
                                return bytes(raw)
                    raw += self.rfile.read(size + 2)

            def _any(self) -> None:
                body = self._body()
                what = "forward"
                if self.command == "PUT":
                    with proxy._lock:
                        what = proxy.fault(self.command, self.path, len(proxy.puts) + 1)
                        proxy.puts.append((time.monotonic(), self.path, what))
                if what == "503":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                               b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if what == "truncate":
                    with socket.create_connection((proxy.host, proxy.upstream_port)) as raw:
                        head = f"{self.command} {self.path} HTTP/1.1\r\n" + "".join(
                            f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() != "expect") + "\r\n"
                        raw.sendall(head.encode() + body[: len(body) // 2])
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                conn = http.client.HTTPConnection(proxy.host, proxy.upstream_port, timeout=30)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() != "expect":
                        conn.putheader(key, value)
                conn.endheaders()
                if body:
                    conn.send(body)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                if what == "stall":  # the server has the object; the answer never comes
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if what == "slow":
                    time.sleep(proxy.slow_seconds)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- stores going away -------------------------------------------------------------------------------------


def recent(store: str, n: int) -> list[str]:
    return spec_for(store).partitions.get_partition_keys()[-n:]


def failed_run(store: str, key: str, instance: dg.DagsterInstance) -> str:
    result = run_job(f"{store}_backup_job", key, instance)
    assert not result.success
    messages = failure_messages(result)
    assert messages
    return " | ".join(messages)


def checks_of(store: str, key: str, instance: dg.DagsterInstance) -> dict[str, bool]:
    result = run_job(f"{store}_verify_job", key, instance)
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def nothing_pruned_because_of_it(catalog: Catalog, store: str, previous: list[str]) -> None:
    """Even if the store stayed down for 30 days, the plan keeps the newest verified backup (and deletes
    nothing that is not simply old)."""
    backups = local_backups(catalog, store)
    assert sorted(b.partition_key for b in backups) == sorted(previous)  # the failed slot is not a backup
    today = plan(backups, DEFAULT_POLICIES[store], utcnow(), offsite_enabled=False)
    assert today.deleted_keys == [] and sorted(today.kept_keys) == sorted(previous)
    later = plan(backups, DEFAULT_POLICIES[store], utcnow() + timedelta(days=30), offsite_enabled=False)
    newest = max(previous)
    assert newest in later.kept_keys and "newest verified" in dict(later.keep)[newest]


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[TcpProxy]]:
    proxies: list[TcpProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.stop()


def test_postgres_down_before_and_during_backup(cb_env: dict[str, str], pg_server: EmbeddedPostgres,
                                                monkeypatch: pytest.MonkeyPatch, proxied: list[TcpProxy]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    *previous, down_before, down_during = recent("postgres", 4)
    for key in previous:
        assert run_job("postgres_backup_job", key, instance).success

    upstream = urlsplit(pg_server.url)
    # Down before: nothing listens where the store should be.
    gone = TcpProxy((upstream.hostname or "127.0.0.1", upstream.port or 5432))
    gone.stop()
    monkeypatch.setenv("CB_POSTGRES_URL", pg_server.url.replace(f":{upstream.port}", f":{gone.port}"))
    message = failed_run("postgres", down_before, instance)
    assert message.startswith("postgres") and f"127.0.0.1:{gone.port}" in message and "unavailable" in message

    # Down during: the server vanishes while pg_dump streams (the only connection that receives this much).
    proxy = TcpProxy((upstream.hostname or "127.0.0.1", upstream.port or 5432), cut_after=20_000)
    proxied.append(proxy)
    monkeypatch.setenv("CB_POSTGRES_URL", pg_server.url.replace(f":{upstream.port}", f":{proxy.port}"))
    message = failed_run("postgres", down_during, instance)
    assert proxy.cut.is_set()
    assert message.startswith("postgres: backup failed: pg_dump exited"), message
    assert "Traceback" not in message and pg_server.password not in message

    for key in (down_before, down_during):
        assert catalog.get("postgres", key) is None
        checks = checks_of("postgres", key, instance)
        assert checks and not any(checks.values())
    store_dir = catalog.store_dir("postgres")
    assert not list(store_dir.glob(".staging-*"))
    monkeypatch.setenv("CB_POSTGRES_URL", pg_server.url)
    nothing_pruned_because_of_it(catalog, "postgres", previous)


def test_valkey_down_before_and_during_backup(cb_env: dict[str, str], valkey_server: EmbeddedValkey,
                                              monkeypatch: pytest.MonkeyPatch, proxied: list[TcpProxy]) -> None:
    instance = dg.DagsterInstance.get()
    catalog = Catalog(Path(cb_env["CB_BACKUP_DIR"]))
    *previous, down_before, down_during = recent("valkey", 3)
    for key in previous:
        assert run_job("valkey_backup_job", key, instance).success
    upstream = urlsplit(valkey_server.url)
    target = (upstream.hostname or "127.0.0.1", upstream.port or 6379)

    gone = TcpProxy(target)
    gone.stop()
    monkeypatch.setenv("CB_VALKEY_URL", valkey_server.url.replace(f":{upstream.port}", f":{gone.port}"))
    message = failed_run("valkey", down_before, instance)
    assert "valkey" in message and f"127.0.0.1:{gone.port}" in message

    # Over the wire (no data folder): cut during the RDB transfer (the only connection receiving this much).
    monkeypatch.delenv("CB_VALKEY_DATA_DIR")
    proxy = TcpProxy(target, cut_after=6000)
    proxied.append(proxy)
    monkeypatch.setenv("CB_VALKEY_URL", valkey_server.url.replace(f":{upstream.port}", f":{proxy.port}"))
    message = failed_run("valkey", down_during, instance)
    assert proxy.cut.is_set()
    assert message.startswith("valkey: backup failed") or message.startswith("valkey: server unavailable"), message
    assert valkey_server.password not in message  # type: ignore[operator]

    for key in (down_before, down_during):
        assert catalog.get("valkey", key) is None
        checks = checks_of("valkey", key, instance)
        assert checks and not any(checks.values())
    assert not list(catalog.store_dir("valkey").glob(".staging-*"))
    nothing_pruned_because_of_it(catalog, "valkey", previous)


# --- S3: slow, 5xx, truncated requests ---------------------------------------------------------------------


def small_artifact(root: Path) -> Artifact:
    def backup(into: Path) -> BackupOutput:
        with HashingWriter(into / "data.bin") as out:
            out.write(bytes(range(256)) * 4096)  # 1 MiB: one PUT
        return BackupOutput([FileRecord("data.bin", out.bytes, out.sha256)], "fake", {}, {}, {"rows": {"t": 1}})

    return Catalog(root).write("postgres", "2026-11-24-00:00", backup)


def make_target(proxy: S3FaultProxy, bucket: str, **options: object) -> offsite.S3Target:
    settings = S3Settings(bucket=bucket, endpoint_url=proxy.endpoint_url, prefix="faults")
    defaults: dict[str, object] = {"max_attempts": 1, "file_attempts": 3, "retry_wait_max": 4, "connect_timeout": 1,
                                   "read_timeout": 1}
    return offsite.S3Target(settings, **{**defaults, **options})  # type: ignore[arg-type]


def assert_whole_or_absent(s3_server: SeaweedS3, bucket: str, target: offsite.S3Target, artifact: Artifact) -> None:
    client = s3_server.client()
    for record in artifact.manifest.files:
        key = target.key(artifact.store, artifact.partition_key, record.name)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError:
            continue
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert head["ContentLength"] == record.bytes == len(body)
        assert head["Metadata"]["sha256"] == record.sha256


@pytest.mark.parametrize("faults", [["503", "503"], ["stall"], ["truncate", "503"]])
def test_s3_faults_are_retried_with_backoff_then_succeed(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str,
                                                         s3_env: dict[str, str], faults: list[str]) -> None:
    artifact = small_artifact(tmp_path / "backups")
    proxy = S3FaultProxy(s3_server.endpoint_url, lambda _m, _p, n: faults[n - 1] if n <= len(faults) else "forward")
    try:
        target = make_target(proxy, s3_bucket)
        copy = offsite.upload_artifact(artifact, target)
    finally:
        proxy.close()
    # botocore retries a failed request once (its budget), then the whole file is re-sent after a backoff.
    assert [what for _, _, what in proxy.puts] == [*faults, "forward", "forward"]  # file re-sent, then manifest
    starts = [t for t, _, _ in proxy.puts]
    assert all(b > a for a, b in itertools.pairwise(starts))
    if len(faults) > 1:  # two failed attempts exhaust botocore's budget: tenacity waits >= 0.5 s before the next
        assert starts[len(faults)] - starts[0] >= 0.5, starts
    assert copy.bytes == artifact.manifest.total_bytes
    direct = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="faults"))
    assert offsite.verify_offsite(artifact, direct, deep=True).ok
    assert_whole_or_absent(s3_server, s3_bucket, direct, artifact)


def test_s3_slow_responses_only_slow_the_copy_down(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str,
                                                   s3_env: dict[str, str]) -> None:
    artifact = small_artifact(tmp_path / "backups")
    proxy = S3FaultProxy(s3_server.endpoint_url, lambda *_: "slow", slow_seconds=0.4)
    try:
        started = time.monotonic()
        copy = offsite.upload_artifact(artifact, make_target(proxy, s3_bucket, read_timeout=5))
        seconds = time.monotonic() - started
    finally:
        proxy.close()
    assert [what for _, _, what in proxy.puts] == ["slow", "slow"] and seconds >= 0.8
    assert copy.bytes == artifact.manifest.total_bytes
    direct = offsite.S3Target(S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, prefix="faults"))
    assert offsite.verify_offsite(artifact, direct, deep=True).ok


def test_s3_that_keeps_failing_is_a_clean_failure_with_nothing_under_a_final_key(
        tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, s3_env: dict[str, str]) -> None:
    artifact = small_artifact(tmp_path / "backups")
    proxy = S3FaultProxy(s3_server.endpoint_url, lambda *_: "503")
    try:
        target = make_target(proxy, s3_bucket)
        with pytest.raises(offsite.OffsiteError) as caught:
            offsite.upload_artifact(artifact, target)
    finally:
        proxy.close()
    starts = [t for t, _, _ in proxy.puts]
    assert len(starts) == 3 * 2, proxy.puts  # file_attempts x botocore's two tries per request
    assert starts[-1] - starts[0] >= 0.5 + 1.0  # tenacity's exponential backoff between whole-file attempts
    message = str(caught.value)
    assert f"s3://{s3_bucket}/faults/postgres/2026-11-24-00:00/data.bin" in message
    assert "ServiceUnavailable (HTTP 503)" in message and "\n" not in message
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in message
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=s3_bucket, Prefix="faults/").get("KeyCount", 0) == 0
    assert MANIFEST not in str(client.list_objects_v2(Bucket=s3_bucket))
