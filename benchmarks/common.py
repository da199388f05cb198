"""Shared pieces: figures, paired timing, the machine, the servers and data sets."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
SIZES = {"200MB": 200 * MiB, "1GB": 1024 * MiB, "2GB": 2048 * MiB}
QUICK_BYTES = 12 * MiB


def parse_size(text: str) -> int:
    from cb_backups.core.errors import ConfigError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?)\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError("--size", text, "a size like 200MB, 1GB or 2GB")
    unit = match.group(2).upper()[0]
    return int(float(match.group(1)) * {"K": 1024, "M": MiB, "G": 1024 * MiB}[unit])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --- figures ---------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the results: a ratio, its target and how it was measured."""

    key: str
    title: str
    ratio: float | None  # None: not measured (see note)
    op: str  # "<=" | ">="
    target: float
    a_label: str = ""
    b_label: str = ""
    a_seconds: float | None = None  # medians
    b_seconds: float | None = None
    pairs: int = 0
    unit: str = "x"
    code_path: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    condition_ok: bool | None = None  # a second condition of the target (e.g. "at equal or smaller size")

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "N/A"
        ok = self.ratio <= self.target if self.op == "<=" else self.ratio >= self.target
        return "PASS" if ok and self.condition_ok is not False else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "ratio": self.ratio, "target": f"{self.op} {self.target}",
                "verdict": self.verdict, "a": self.a_label, "b": self.b_label, "a_seconds": self.a_seconds,
                "b_seconds": self.b_seconds, "pairs": self.pairs, "unit": self.unit, "code_path": self.code_path,
                "note": self.note, "details": self.details}


def unavailable(key: str, title: str, op: str, target: float, why: str) -> Figure:
    return Figure(key, title, None, op, target, note=why)


@dataclass
class Paired:
    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b, strict=True) if y > 0]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios A/B."""
        return statistics.median(self.ratios)

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def paired(run_a: Callable[[], Any], run_b: Callable[[], Any], repeat: int,
           between: Callable[[], None] | None = None) -> Paired:
    """`repeat` pairs; A first in even pairs, B first in odd ones (cancels warm-up and drift)."""
    a: list[float] = []
    b: list[float] = []
    for i in range(repeat):
        order = ((run_a, a), (run_b, b)) if i % 2 == 0 else ((run_b, b), (run_a, a))
        for fn, sink in order:
            seconds, _ = timed(fn)
            sink.append(seconds)
            if between is not None:
                between()
    return Paired(a, b)


# --- the machine -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"nproc": os.cpu_count() or 1, "memory": human_bytes(mem), "memory_bytes": mem, "cpu": cpu,
            "python": platform.python_version(), "load_at_start": [round(x, 2) for x in load],
            "kernel": platform.release()}


def proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (rchar: bytes through read(); read_bytes: from the device)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/io").read_text().splitlines():
            name, _, value = line.partition(":")
            out[name.strip()] = int(value)
    return out


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-400:]
        raise RuntimeError(f"{Path(argv[0]).name} exited {done.returncode}: {tail}")
    return done


# --- the servers and data sets -------------------------------------------------------------------


class Bench:
    """Servers (started lazily, stopped by PID at the end) and scratch space for one benchmark run."""

    def __init__(self, size_bytes: int, quick: bool, repeat: int, log: Callable[[str], None]) -> None:
        self.size_bytes, self.quick, self.repeat, self.log = size_bytes, quick, repeat, log
        self.root = Path(tempfile.mkdtemp(prefix="cb-bench-"))
        self._stack = contextlib.ExitStack()
        self._pg: Any = None
        self._s3: Any = None
        self._valkey: Any = None
        self.pg_rows: dict[str, int] = {}
        self.cache: dict[str, Any] = {}  # what several figures share (e.g. the five stores of fullsys)

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scratch(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    # --- PostgreSQL ---------------------------------------------------------------------
    @property
    def pg(self) -> Any:
        if self._pg is None:
            from cb_backups.demo.embedded import EmbeddedPostgres
            from cb_backups.demo.sample_data import load_postgres, postgres_rows_for_bytes

            server = EmbeddedPostgres(password="cb-bench-secret", root=self.root / "pg")
            self._stack.callback(server.stop)
            server.start()
            scale = postgres_rows_for_bytes(self.size_bytes)
            self.log(f"loading PostgreSQL sample data: {scale:,} memories (~{human_bytes(self.size_bytes)}) ...")
            seconds, rows = timed(lambda: self._load(server, load_postgres, scale))
            with server.connect() as conn:
                db_bytes = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
            self.pg_rows = rows
            self.pg_db_bytes = db_bytes
            self.log(f"  loaded in {seconds:.1f}s; database is {human_bytes(db_bytes)}")
            self._pg = server
        return self._pg

    @staticmethod
    def _load(server: Any, load: Callable[..., dict[str, int]], scale: int) -> dict[str, int]:
        # No HNSW index: building it dominates load and restore time and says nothing about backups.
        with server.connect() as conn:
            return load(conn, scale=scale, hnsw=False)

    def pg_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.pg.port), PGUSER=self.pg.user, PGPASSWORD=self.pg.password)
        env.update(extra)
        return env

    def pg_tool(self, name: str) -> str:
        return str(self.pg.bin_dir / name)

    def pg_settings(self, compression: str | None = None, dbname: str | None = None) -> Any:
        from cb_backups.config.settings import PostgresSettings

        return PostgresSettings(host="127.0.0.1", port=self.pg.port, user=self.pg.user, password=self.pg.password,
                                dbname=dbname or self.pg.dbname, bin_dir=str(self.pg.bin_dir),
                                **({"compression": compression} if compression else {}))

    # --- S3 (SeaweedFS) -------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        if self._s3 is None:
            from cb_backups_tests.servers.s3 import SeaweedS3

            server = SeaweedS3(base_dir=self.root / "s3")
            self._stack.callback(server.stop)
            seconds = server.start()
            self.log(f"SeaweedFS S3 up in {seconds:.1f}s at {server.endpoint_url}")
            self._s3 = server
        return self._s3

    def s3_bucket(self, name: str) -> str:
        with contextlib.suppress(Exception):
            self.s3.client().create_bucket(Bucket=name)
        return name

    @contextlib.contextmanager
    def aws_env(self) -> Iterator[None]:
        """The standard AWS credential chain pointed at the SeaweedFS server (restored afterwards)."""
        values = {**self.s3.env(), "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
                  "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials")}
        with patched_env(values):
            yield

    # --- Valkey ------------------------------------------------------------------------
    @property
    def valkey(self) -> Any:
        if self._valkey is None:
            from cb_backups.demo.embedded import EmbeddedValkey

            server = EmbeddedValkey(password="cb-bench-valkey", root=self.root / "valkey")
            self._stack.callback(server.stop)
            server.start()
            self._valkey = server
        return self._valkey

    def on_exit(self, fn: Callable[[], Any]) -> None:
        self._stack.callback(fn)


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
