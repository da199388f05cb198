"""PostgreSQL 16 (+pgvector): `pg_dump -Fc` streamed to disk, `pg_restore` back.

Better than the runbook's bash in three ways:
- the inventory is counted in the very snapshot pg_dump dumps (`--snapshot`), so
  the recorded counts are exactly what the backup holds;
- an in-place restore goes into a new database first and is swapped in by rename
  only after it restored and its counts matched; the live database is closed to
  connections first (`quiesce`) and then KEPT, renamed `<db>__replaced_<stamp>`,
  until the safety period is over: no acknowledged write is lost;
- passwords travel in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
import zstandard
from psycopg import sql

from cb_backups.config.settings import PostgresSettings, VolumeSettings
from cb_backups.core.catalog import seal_problems
from cb_backups.core.errors import BackupFailed, ConfigError, RestoreRefused, StoreUnavailable
from cb_backups.core.fileio import CHUNK, HashingWriter, file_identity, known_digest
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
from cb_backups.core.net import wait_until
from cb_backups.stores import pg_copy, pg_directory
from cb_backups.stores.base import (
    DRILL,
    Scratch,
    counts_problems,
    disk_space_item,
    dropped_afterwards,
    require_scratch,
    run_tool,
    version_problems,
)
from cb_backups.stores.pg_archive import DataOffsets, patch

DUMP_FILE = "postgres.dump"
ZSTD_FILE = "postgres.dump.zst"
_COMPRESSION = re.compile(r"^(gzip:[0-9]|zstd:([1-9]|1[0-9])|none)$")
ALLOWED_COMPRESSION = "zstd:1..zstd:19 (default zstd:2), gzip:0..gzip:9 (the runbook's -Z 6 is gzip:6) or none"


@dataclass(frozen=True)
class Compression:
    """How the dump is compressed: by pg_dump itself (gzip) or by a streaming zstd after it."""

    codec: str  # "gzip" | "zstd" | "none"
    level: int

    @property
    def pg_dump_level(self) -> int:
        return self.level if self.codec == "gzip" else 0

    @property
    def file_name(self) -> str:
        return ZSTD_FILE if self.codec == "zstd" else DUMP_FILE

    def zstd_params(self) -> zstandard.ZstdCompressionParameters:
        """Multi-threaded zstd. For the fast levels, matches of at least 7 bytes: a dump of
        embeddings is mostly random digits, where short matches cost more than the entropy coder
        saves (measured: level 2 becomes 2% smaller than `-Z 6` instead of 1% larger, and faster)."""
        extra = {"min_match": 7} if self.level <= 4 else {}
        return zstandard.ZstdCompressionParameters.from_level(self.level, threads=os.cpu_count() or 2, **extra)


def parse_compression(value: str) -> Compression:
    """'zstd:N' (pg_dump -Z 0 | multi-threaded zstd), 'gzip:N' (pg_dump -Z N), 'none'."""
    if not isinstance(value, str) or not _COMPRESSION.match(value):
        raise ConfigError("postgres.compression", value, ALLOWED_COMPRESSION)
    if value == "none":
        return Compression("none", 0)
    codec, level = value.split(":")
    return Compression(codec, int(level))


def dump_file(artifact: Artifact) -> Path:
    """The dump inside a backup, whichever compression wrote it."""
    for name in (ZSTD_FILE, DUMP_FILE):
        if any(f.name == name for f in artifact.manifest.files):
            return artifact.path(name)
    return artifact.path(DUMP_FILE)


class PostgresStore:
    name = "postgres"
    restore_method = ("pg_restore into a new database, swapped in by rename only after its counts matched; "
                      "the old database is kept as <db>__replaced_<stamp>")
    consistency_markers = ("wal_lsn", "snapshot")
    stage_verifies = True  # _restore_incoming: sha256 + TOC + versions, then counts, all before the target

    def __init__(self, settings: PostgresSettings, volume: VolumeSettings | None = None) -> None:
        self.settings = settings
        self.compression = parse_compression(settings.compression)
        self._source: str | None = None  # while quiesced: the live database's name aside (backups read it)
        self._staged: tuple[Path, str, Inventory] | None = None  # (backup folder, database, counts) of stage()

    # --- plumbing ------------------------------------------------------------
    def _tool(self, name: str) -> str:
        if self.settings.bin_dir:
            return str(Path(self.settings.bin_dir) / name)
        return name

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST=self.settings.host, PGPORT=str(self.settings.port), PGUSER=self.settings.user)
        # A pg_dump/pg_restore killed with its run (SIGKILL) leaves its server session behind, e.g. waiting on a
        # lock and then holding its own; the server checks every 5 s whether the client is gone and ends it.
        options = env.get("PGOPTIONS", "")
        if "client_connection_check_interval" not in options:
            env["PGOPTIONS"] = f"{options} -c client_connection_check_interval=5000".strip()
        if self.settings.password:
            env["PGPASSWORD"] = self.settings.password
        return env

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}/{self.settings.dbname}"

    def connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(host=self.settings.host, port=self.settings.port, user=self.settings.user,
                                   password=self.settings.password, dbname=dbname or self.settings.dbname,
                                   # a SQL_ASCII database would hand every text value over as bytes
                                   autocommit=True, connect_timeout=10, client_encoding="UTF8")
        except psycopg.Error as exc:
            raise StoreUnavailable(self.name, f"cannot connect to {self._where()}: {_first_line(exc)}") from None

    # --- protocol ------------------------------------------------------------
    def health(self, backup_dir: Path) -> Health:
        items: dict[str, str] = {}
        try:
            with self.connect() as conn:
                items["reachable"] = "ok"
                if self.settings.migrations_query:
                    rows = conn.execute(self.settings.migrations_query).fetchall()
                    items["no migration in progress"] = "ok" if not rows else f"migration running: {rows[0]}"
        except StoreUnavailable as exc:
            items["reachable"] = str(exc)
        except psycopg.Error as exc:
            items["no migration in progress"] = f"migrations query failed: {_first_line(exc)}"
        items["disk space"] = disk_space_item(backup_dir, _last_backup_bytes(backup_dir / self.name))
        return Health(self.name, items)

    def inventory(self) -> Inventory:
        with self.connect() as conn:
            return self._count(conn)

    def _count(self, conn: psycopg.Connection[Any]) -> Inventory:
        existing = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p') AND n.nspname = 'public'").fetchall()}
        exact = {}
        for table in self.settings.count_tables:
            if table in existing:
                exact[table] = int(conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0])  # type: ignore[index]
        estimates = {f"{s}.{t}": int(max(n, 0)) for s, t, n in conn.execute(
            "SELECT schemaname, relname, n_live_tup FROM pg_stat_user_tables").fetchall()}
        return {"tables": exact, "estimates": estimates}

    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput:
        source = self._source or self.settings.dbname
        try:
            conn = self.connect(source)
        except StoreUnavailable as exc:
            raise BackupFailed(self.name, str(exc).split(": ", 1)[1]) from None
        with conn:
            # Hold a repeatable-read snapshot open: pg_dump dumps exactly it, and we count in it.
            conn.autocommit = False
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            versions = {
                "server": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
                "pg_dump": run_tool(self.name, [self._tool("pg_dump"), "--version"]).strip(),
            }
            vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            if vector:
                versions["vector"] = vector[0]
            inventory = self._count(conn)
            jobs = self.settings.dump_jobs
            if jobs >= 2:
                records = self._directory_dump(snapshot, source, jobs, into, progress)
                options: dict[str, Any] = {"format": "directory", "dump_jobs": jobs}
            else:
                argv = [self._tool("pg_dump"), "-Fc", "-Z", str(self.compression.pg_dump_level),
                        f"--snapshot={snapshot}", "-d", source]
                records = [self._stream_dump(argv, into / self.compression.file_name, progress)]
                options = {"format": "custom"}
            conn.rollback()
        return BackupOutput(
            files=records, method="pg_dump", versions=versions, inventory=inventory,
            options={**options, "compression": self.settings.compression, "dbname": self.settings.dbname},
            markers={"wal_lsn": lsn, "snapshot": snapshot},
        )

    def _directory_dump(self, snapshot: str, source: str, jobs: int, into: Path,
                        progress: Progress) -> list[FileRecord]:
        """`pg_dump -Fd -j N` in the exported snapshot, then each file through zstd + HashingWriter."""
        folder = pg_directory.dump_folder(into)
        argv = [self._tool("pg_dump"), "-Fd", "-j", str(jobs), "-Z", str(self.compression.pg_dump_level),
                f"--snapshot={snapshot}", "-d", source, "-f", str(folder)]
        progress(f"pg_dump -Fd -j {jobs}", 0, None)
        try:
            done = subprocess.run(argv, capture_output=True, env=self._env(), check=False)
        except FileNotFoundError:
            raise BackupFailed(self.name, f"tool not found: {argv[0]} (set CB_PG_BIN_DIR)") from None
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            tail = done.stderr.decode(errors="replace").strip()[-400:]
            raise BackupFailed(self.name, f"pg_dump exited {done.returncode}: {tail}")
        compressor = None
        if self.compression.codec == "zstd":
            params = self.compression.zstd_params()
            compressor = lambda: zstandard.ZstdCompressor(compression_params=params)  # noqa: E731
        return pg_directory.collect(folder, into, compressor, progress)

    def _stream_dump(self, argv: list[str], path: Path, progress: Progress) -> FileRecord:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env())
        except FileNotFoundError:
            raise BackupFailed(self.name, f"tool not found: {argv[0]} (set CB_PG_BIN_DIR)") from None
        assert proc.stdout is not None and proc.stderr is not None
        last = time.monotonic()
        read = 0
        try:
            with HashingWriter(path) as out:
                sink = out if self.compression.codec != "zstd" else zstandard.ZstdCompressor(
                    compression_params=self.compression.zstd_params()).stream_writer(out, closefd=False)
                while block := proc.stdout.read1(CHUNK):  # what the pipe has now, not a full chunk
                    sink.write(block)
                    read += len(block)
                    if time.monotonic() - last > 2:
                        progress(f"pg_dump {read // (1024 * 1024)} MiB read, {out.bytes // (1024 * 1024)} MiB "
                                 "written", out.bytes, None)
                        last = time.monotonic()
                if sink is not out:
                    sink.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise BackupFailed(self.name, f"pg_dump exited {proc.returncode}: {stderr.strip()[-400:]}")
        progress(f"pg_dump done, {out.bytes} bytes", out.bytes, out.bytes)
        return FileRecord(path.name, out.bytes, out.sha256)

    def verify(self, artifact: Artifact) -> Verification:
        """Runbook: `pg_restore --list`; also demand a data entry for every counted table.

        A zstd dump is decompressed on the fly into pg_restore's stdin, which also proves
        every zstd frame decodes.
        """
        if pg_directory.is_directory(artifact):
            return self._verify_directory(artifact)
        path = dump_file(artifact)
        if not path.is_file():
            return Verification(False, [f"{path.name} missing"])
        try:
            code, toc, err = self._pg_restore_list(path)
        except zstandard.ZstdError as exc:
            return Verification(False, [f"{path.name}: zstd stream damaged: {exc}"])
        return _judge_toc(artifact, code, toc, err)

    def _verify_directory(self, artifact: Artifact) -> Verification:
        """A directory dump: `pg_restore --list` of its table of contents, and every zstd file decodes."""
        try:
            with pg_directory.toc_only(artifact) as folder:
                done = subprocess.run([self._tool("pg_restore"), "--list", "-Fd", str(folder)],
                                      capture_output=True, check=False)
        except pg_directory.Damaged as exc:
            return Verification(False, [str(exc)])
        verdict = _judge_toc(artifact, done.returncode, done.stdout.decode(errors="replace"),
                             done.stderr.decode(errors="replace"))
        problems = verdict.problems + pg_directory.decodes(artifact)
        return Verification(not problems, problems, verdict.details)

    def _pg_restore_list(self, path: Path) -> tuple[int, str, str]:
        argv = [self._tool("pg_restore"), "--list"]
        if not path.name.endswith(".zst"):
            done = subprocess.run([*argv, str(path)], capture_output=True, check=False)
            return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()))  # type: ignore[union-attr]
        errors: list[bytes] = []
        err_reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        err_reader.start()
        failure: Exception | None = None
        try:
            with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as stream:
                while block := stream.read(CHUNK):
                    proc.stdin.write(block)
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit code tells why
        except zstandard.ZstdError as exc:
            failure = exc
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
            reader.join()
            err_reader.join()
        if failure is not None:
            raise failure
        return code, b"".join(chunks).decode(errors="replace"), b"".join(errors).decode(errors="replace")

    @contextmanager
    def _verified_dump(self, artifact: Artifact) -> Iterator[Path]:
        """The dump as a seekable file (pg_restore --jobs needs one), proven intact in ONE read. Used for
        gzip and plain dumps (the file itself) and for a zstd dump whose framing `_verified_source` cannot
        stream; a zstd custom-format dump normally streams instead.

        One pass over the backup file: each block is hashed against the manifest, decompressed into a
        private temporary file beside the backup, and the plain dump's block headers are walked
        (`pg_archive.DataOffsets`) to learn where each table's data starts. Only after the whole file's
        size and sha256 matched the manifest are those offsets written into the copy's table of contents
        (what pg_dump does when it writes to a file: pg_restore --jobs then orders tables largest first
        and seeks straight to them), and `pg_restore --list` reads just that table of contents. Raises
        RestoreRefused before anything is restored.
        """
        if pg_directory.is_directory(artifact):
            with self._verified_directory(artifact) as folder:
                yield folder
            return
        path = dump_file(artifact)
        record = self._dump_record(artifact, path)
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=artifact.directory.parent) as tmp:
            plain = Path(tmp) / DUMP_FILE if path.name.endswith(".zst") else path
            size = 0
            offsets = DataOffsets()
            try:
                with open(path, "rb") as src, contextlib.ExitStack() as stack:
                    digest = stack.enter_context(_BackgroundHash())
                    sink = None
                    if plain != path:
                        dst = stack.enter_context(open(plain, "w+b"))
                        sink = stack.enter_context(zstandard.ZstdDecompressor().stream_writer(
                            _Walked(dst, offsets), closefd=False))
                    while block := src.read(CHUNK):
                        digest.update(block)
                        size += len(block)
                        if sink is not None:
                            sink.write(block)
                    sha256 = digest.hexdigest()
                    if sink is not None:
                        sink.flush()
                        dst.flush()
                        found = offsets.finish()
                        if size == record.bytes and sha256 == record.sha256 and found:
                            patch(dst.fileno(), found)  # only into the verified copy
            except zstandard.ZstdError as exc:
                raise RestoreRefused(self.name, f"{path.name}: zstd stream damaged: {exc}") from None
            if size != record.bytes or sha256 != record.sha256:
                raise RestoreRefused(self.name, f"{path.name}: size or sha256 differs from the manifest")
            done = subprocess.run([self._tool("pg_restore"), "--list", str(plain)], capture_output=True, check=False)
            verdict = _judge_toc(artifact, done.returncode, done.stdout.decode(errors="replace"),
                                 done.stderr.decode(errors="replace"))
            if not verdict.ok:
                raise RestoreRefused(self.name, "; ".join(verdict.problems))
            yield plain

    @contextmanager
    def _verified_source(self, artifact: Artifact) -> Iterator[_Source]:
        """The verified dump: for a zstd dump its table of contents alone and the dump still open, to stream
        it into pg_restore; else a seekable verified copy.

        A zstd custom-format dump is not decompressed to a file first: its sha256 and size are checked
        against the manifest in one read of the compressed file (about a third of the plain size), then
        only its head is decompressed, up to the end of the table of contents, which `pg_restore --list`
        must accept. Only then does anything reach the server; `_stream_restore` then decompresses the same
        open file straight into pg_restore and checks afterwards that its inode change time and size did not
        move (every write changes the ctime, and no one can set it), so a file changed since is caught
        without hashing it twice. A dump the head reader does not know takes `_verified_dump` instead.
        """
        path = dump_file(artifact)
        if not path.name.endswith(".zst") or pg_directory.is_directory(artifact):
            with self._verified_dump(artifact) as dump:
                yield _Source(dump)
            return
        record = self._dump_record(artifact, path)
        with open(path, "rb", buffering=0) as src, tempfile.TemporaryDirectory(
                prefix=".restore-", dir=artifact.directory.parent) as tmp:
            before = file_identity(src.fileno())
            sha256, size = known_digest(src.fileno()), os.fstat(src.fileno()).st_size  # a download just hashed
            if sha256 is None:
                digest, size = hashlib.sha256(), 0
                while block := src.read(CHUNK):
                    digest.update(block)
                    size += len(block)
                sha256 = digest.hexdigest()
            if size != record.bytes or sha256 != record.sha256 or file_identity(src.fileno()) != before:
                raise RestoreRefused(self.name, f"{path.name}: size or sha256 differs from the manifest")
            toc = Path(tmp) / "toc.dump"
            if not self._write_head(path, toc):
                with self._verified_dump(artifact) as dump:
                    yield _Source(dump)
                return
            done = subprocess.run([self._tool("pg_restore"), "--list", str(toc)], capture_output=True, check=False)
            verdict = _judge_toc(artifact, done.returncode, done.stdout.decode(errors="replace"),
                                 done.stderr.decode(errors="replace"))
            if not verdict.ok:
                raise RestoreRefused(self.name, "; ".join(verdict.problems))
            src.seek(0)
            yield _Source(path, toc, src, before, done.stdout.decode(errors="replace"))

    def _dump_record(self, artifact: Artifact, path: Path) -> FileRecord:
        """The dump's manifest record; RestoreRefused when the seal or the record is wrong or the file missing."""
        problems = seal_problems(artifact)
        try:
            record = artifact.file(path.name)
        except KeyError:
            problems.append(f"{path.name} is not in the manifest")
            record = None
        if problems or record is None or not path.is_file():
            raise RestoreRefused(self.name, "; ".join(problems) or f"{path.name} missing")
        return record

    def _write_head(self, path: Path, toc: Path) -> bool:
        """Decompress `path` only until its table of contents ended and write that head to `toc`; False when
        the framing is not one `DataOffsets` reads (then the whole file is decompressed instead)."""
        offsets, head = DataOffsets(), bytearray()
        try:
            with open(path, "rb") as src, zstandard.ZstdDecompressor().stream_reader(src) as stream:
                while offsets.toc_end < 0 and offsets.failed is None and (block := stream.read(256 * 1024)):
                    head += block
                    offsets.feed(block)
        except zstandard.ZstdError as exc:
            raise RestoreRefused(self.name, f"{path.name}: zstd stream damaged: {exc}") from None
        if offsets.toc_end < 0 or offsets.failed is not None:
            return False
        with open(os.open(toc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(head[:offsets.toc_end])
        return True

    def _stream_restore(self, artifact: Artifact, source: _Source, incoming: str, jobs: int) -> tuple[int, str]:
        """pg_restore from the dump decompressed into its stdin: one pass, so the decompression overlaps the
        restore. With `jobs` > 1 the schema comes from the table of contents alone, the table data streams
        through pg_restore as text into `jobs` connections at once (`pg_copy`: one large table loads on
        every core, not on one; sequence values come with it), then the post-data section (indexes,
        constraints, foreign-key checks) follows with `--jobs` from the table of contents; a dump with large objects
        streams schema and data through one pg_restore instead. With one job one pg_restore does it all.
        A file changed since it was verified (its ctime or size moved) fails with _CHANGED: only
        `incoming` saw it."""
        path, toc, src = source.dump, source.toc, source.src
        assert toc is not None and src is not None
        record = artifact.file(path.name)
        plan = pg_copy.data_listing(source.listing) if jobs > 1 else None
        if plan is not None:
            code, err = self._pg_restore_toc(["--section=pre-data"], incoming, toc)
            if code != 0:
                return code, err
            (toc.parent / "data.list").write_text("".join(f"{line}\n" for line in plan))
            argv = [self._tool("pg_restore"), "-L", str(toc.parent / "data.list"), "-f", "-"]
        else:
            sections = ["--section=pre-data", "--section=data"] if jobs > 1 else []
            argv = [self._tool("pg_restore"), *sections, "--exit-on-error", "-d", incoming]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env(),
                                stdout=subprocess.PIPE if plan is not None else subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stderr is not None
        errors: list[bytes] = []
        readers = [threading.Thread(target=lambda: errors.append(proc.stderr.read()))]  # type: ignore[union-attr]
        failed: list[str] = []
        if plan is not None:
            readers.append(threading.Thread(target=self._load_rows, args=(proc, incoming, jobs, failed)))
        for reader in readers:
            reader.start()
        size, damaged = 0, ""
        try:
            sink = zstandard.ZstdDecompressor().stream_writer(proc.stdin, closefd=False)
            try:
                while block := src.read(CHUNK):
                    size += len(block)
                    sink.write(block)
                sink.flush()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit code tells why
        except zstandard.ZstdError as exc:
            damaged = f"{path.name}: zstd stream damaged: {exc}"
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
            for reader in readers:
                reader.join()
        changed = damaged or f"{path.name} changed while it was restored: its sha256 differs now"
        if damaged or (size == record.bytes and file_identity(src.fileno()) != source.stamp):
            return _CHANGED, changed
        if failed:  # the server refused a row (pg_restore was stopped for it)
            return 1, failed[0]
        if code != 0:  # pg_restore stopped (then the file was not read to its end): its own reason
            return code, b"".join(errors).decode(errors="replace")
        if size != record.bytes:
            return _CHANGED, changed
        if jobs <= 1:
            return 0, ""
        return self._pg_restore_toc(["--section=post-data", "--jobs", str(jobs)], incoming, toc)

    def _pg_restore_toc(self, options: list[str], incoming: str, toc: Path) -> tuple[int, str]:
        """pg_restore of what needs no table data (schema, sequence values, indexes) from the TOC alone."""
        done = subprocess.run([self._tool("pg_restore"), *options, "--exit-on-error", "-d", incoming, str(toc)],
                              capture_output=True, env=self._env(), check=False)
        return done.returncode, done.stderr.decode(errors="replace")

    def _load_rows(self, proc: subprocess.Popen[bytes], incoming: str, jobs: int, failed: list[str]) -> None:
        """`pg_copy` reading pg_restore's data text; on a failure pg_restore is stopped (else it would block
        writing to a pipe no one reads, and with it the decompression feeding it)."""
        assert proc.stdout is not None
        try:
            pg_copy.ParallelCopy(lambda: self.connect(incoming), jobs).run(proc.stdout)
        except Exception as exc:  # CopyFailed, or anything else: never a load that looks complete
            failed.append(f"loading the table data: {exc}")
            proc.kill()
        finally:
            with contextlib.suppress(OSError):
                proc.stdout.read()  # nothing left unread in the pipe when pg_restore still writes

    @contextmanager
    def _verified_directory(self, artifact: Artifact) -> Iterator[Path]:
        """A directory dump, every file hashed and decompressed in one read, its TOC listed."""
        problems = seal_problems(artifact)
        if problems:
            raise RestoreRefused(self.name, "; ".join(problems))
        try:
            with pg_directory.verified_directory(artifact) as folder:
                done = subprocess.run([self._tool("pg_restore"), "--list", "-Fd", str(folder)],
                                      capture_output=True, check=False)
                verdict = _judge_toc(artifact, done.returncode, done.stdout.decode(errors="replace"),
                                     done.stderr.decode(errors="replace"))
                if not verdict.ok:
                    raise RestoreRefused(self.name, "; ".join(verdict.problems))
                yield folder
        except pg_directory.Damaged as exc:
            raise RestoreRefused(self.name, str(exc)) from None

    # --- restore ---------------------------------------------------------------
    def server_version_num(self, conn: psycopg.Connection[Any]) -> int:
        return int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]

    def check_compatible(self, artifact: Artifact) -> list[str]:
        """Target major version >= the backup's, and pgvector available when the backup uses it."""
        problems = []
        with self.connect("postgres") as conn:
            target_major = self.server_version_num(conn) // 10000
            source_major = int(str(artifact.manifest.versions.get("server", "0")).split(".")[0])
            if target_major < source_major:
                problems.append(f"backup is from PostgreSQL {source_major}, target runs {target_major}")
            if "vector" in artifact.manifest.versions and not conn.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
                problems.append("backup uses the vector extension, which the target server does not have")
        return problems

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        return version_problems(lambda: self.check_compatible(artifact))

    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        final = self._database(target)
        _check_dbname(final)
        incoming = f"{final[:50]}__incoming"
        staged, self._staged = self._staged, None
        if staged is not None and staged[:2] == (artifact.directory, final):
            restored = staged[2]  # stage() restored and counted it before the target was closed
        else:
            restored = self._restore_incoming(artifact, target, final, incoming, progress)
        progress(f"swapping {incoming} in as {final}", 0, None)
        with self.connect("postgres") as admin:
            if _exists(admin, final):
                if target.mode == "in_place":  # not quiesced: close it now and keep it aside
                    self._move_aside(admin, final)
                else:
                    self._drop(admin, final)  # a scratch database is throwaway
            self._terminate(admin, incoming)
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(incoming), sql.Identifier(final)))
        return restored

    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """pg_restore into `<db>__incoming` and check its counts while the live database still takes
        writes: it is closed (`quiesce`) only for the safety backup and the rename."""
        final = self._database(target)
        _check_dbname(final)
        counts = self._restore_incoming(artifact, target, final, f"{final[:50]}__incoming", progress)
        self._staged = (artifact.directory, final, counts)

    def _restore_incoming(self, artifact: Artifact, target: Target, final: str, incoming: str,
                          progress: Progress) -> Inventory:
        jobs = int(target.options.get("jobs") or self.settings.restore_jobs)
        progress("verifying the backup", 0, None)
        with self._verified_source(artifact) as source:  # refuses a changed or damaged backup: target untouched
            problems = self.check_compatible(artifact)
            if problems:
                raise RestoreRefused(self.name, "; ".join(problems))
            with self.connect("postgres") as admin:
                self._drop(admin, incoming)  # leftover of an interrupted restore
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(incoming)))
            progress(f"pg_restore into {incoming}", 0, None)
            if source.toc is not None:
                code, err = self._stream_restore(artifact, source, incoming, jobs)
            else:
                done = subprocess.run([self._tool("pg_restore"), "--jobs", str(jobs), "--exit-on-error", "-d",
                                       incoming, str(source.dump)], capture_output=True, env=self._env(),
                                      check=False)
                code, err = done.returncode, done.stderr.decode(errors="replace")
        if code != 0:
            with self.connect("postgres") as admin:
                self._drop(admin, incoming)
            if code == _CHANGED:
                raise RestoreRefused(self.name, f"{err} (target untouched)")
            raise BackupFailed(self.name, f"pg_restore failed (target untouched): {err.strip()[-400:]}")
        with self.connect(incoming) as conn:
            restored = self._count(conn)
        mismatch = counts_problems(artifact.manifest.inventory, restored, sections=("tables",))
        if mismatch:
            with self.connect("postgres") as admin:
                self._drop(admin, incoming)
            raise BackupFailed(self.name, "restored counts differ (target untouched): " + "; ".join(mismatch))
        return restored

    # --- writes during an in-place restore --------------------------------------
    @contextmanager
    def quiesce(self, target: Target) -> Iterator[dict[str, Any] | None]:
        """Close the live database to every connection, end its sessions, and rename it aside.

        From then on the application's connections are refused ("database ... does not exist"),
        so nothing it writes is acknowledged and lost; the safety backup reads the database aside,
        which holds every acknowledged write. The restore then renames its new database in and the
        old one stays as `<db>__replaced_<stamp>` (see `prune_replaced`). On error the old database
        is renamed back and accepts connections again; nothing is dropped.
        """
        final = self._database(target)
        _check_dbname(final)
        with self.connect("postgres") as admin:
            if target.mode == "in_place":
                self._recover(admin, final)
            if target.mode != "in_place" or not _exists(admin, final):
                yield None
                return
            aside = self._move_aside(admin, final)
        self._source = aside
        try:
            yield {"database": final, "aside": aside}
        except BaseException:
            with self.connect("postgres") as admin:
                if not _exists(admin, final):
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(aside), sql.Identifier(final)))
                    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(final)))
            raise
        finally:
            self._source = None

    def _move_aside(self, admin: psycopg.Connection[Any], final: str) -> str:
        """Refuse new connections to `final`, end its sessions, rename it `<final>__replaced_<stamp>` and
        let connections in again under that name (only cb-backups and an operator use it)."""
        aside = _aside_name(final)
        while _exists(admin, aside):  # two restores within one second: the stamp is per second
            time.sleep(0.2)
            aside = _aside_name(final)
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(final)))
        try:
            wait_until(lambda: self._terminate(admin, final) == 0, 60, f"the sessions of {final} to end")
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(final), sql.Identifier(aside)))
        except BaseException as exc:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(final)))
            if not isinstance(exc, (TimeoutError, psycopg.Error)):
                raise
            raise BackupFailed(self.name, f"could not close {final} for the restore (it is open again, "
                                          f"nothing changed): {_first_line(exc)}") from None
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(aside)))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(aside), sql.Literal(_aside_comment(final))))
        return aside

    def _recover(self, admin: psycopg.Connection[Any], final: str) -> str | None:
        """A restore killed between moving `final` aside and the swap left it missing: rename the newest
        database it moved aside back (it holds the live data as it was when writes stopped)."""
        if _exists(admin, final):
            return None
        marker = _aside_comment(final)
        rows = admin.execute("SELECT d.datname FROM pg_database d JOIN pg_shdescription c ON c.objoid = d.oid "
                             "WHERE c.description = %s ORDER BY d.datname DESC", (marker,)).fetchall()
        if rows:
            # a killed restore's own sessions (its pg_dump, waiting on a lock) may linger: end them first
            wait_until(lambda: self._terminate(admin, rows[0][0]) == 0, 60, f"the sessions of {rows[0][0]} to end")
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(rows[0][0]),
                                                                          sql.Identifier(final)))
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(final)))
            return str(rows[0][0])
        return None

    swaps_in_place = True  # the new database is renamed in: a killed swap leaves old or new whole

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """A restore killed inside `quiesce`: the live name missing (its data moved aside) is renamed back,
        and a live database left closed to connections (killed while closing it) is opened again."""
        if target.mode != "in_place" or hold is None:
            return []  # a killed backup leaves nothing held here
        final = str(hold.get("database") or self._database(target))
        _check_dbname(final)
        done = []
        with self.connect("postgres") as admin:
            back = self._recover(admin, final)
            if back:
                done.append(f"renamed {back} back to {final} (the live data as it was when writes stopped)")
            row = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (final,)).fetchone()
            if row is not None and not row[0]:
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(final)))
                done.append(f"{final} accepts connections again")
        return done

    def replaced(self) -> list[str]:
        """Every `<db>__replaced_<stamp>` database on the server, with what it was."""
        with self.connect("postgres") as admin:
            return [f"database {name} (the previous {original}, kept since {stamp})"
                    + ("" if present else f"; {original} itself is MISSING: rename this one back")
                    for name, original, stamp, present in self._kept(admin)]

    def prune_replaced(self, keep_days: int) -> list[str]:
        """Drop kept-aside databases older than `keep_days`; never one whose live database is missing."""
        cutoff = datetime.now(UTC) - timedelta(days=keep_days)
        dropped = []
        with self.connect("postgres") as admin:
            for name, _original, stamp, present in self._kept(admin):
                if present and datetime.strptime(stamp, STAMP).replace(tzinfo=UTC) <= cutoff:
                    self._drop(admin, name)
                    dropped.append(name)
        return dropped

    @staticmethod
    def _kept(admin: psycopg.Connection[Any]) -> list[tuple[str, str, str, bool]]:
        """(name, the database it replaced, its stamp, whether that database exists) per kept-aside one."""
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database ORDER BY datname").fetchall()]
        kept = []
        for name in names:
            match = _ASIDE.fullmatch(name)
            if match:
                original = match["original"]
                present = original in names if len(original) < _ASIDE_PREFIX else any(
                    n.startswith(original) and not _ASIDE.fullmatch(n) and not n.endswith("__incoming")
                    for n in names)
                kept.append((name, original, match["stamp"], present))
        return kept

    def _database(self, target: Target) -> str:
        """The database a restore to `target` ends up in."""
        return target.options.get("dbname") or (
            self.settings.dbname if target.mode == "in_place" else f"{self.settings.dbname}__scratch")

    def describe_target(self, target: Target) -> str:
        return f"database {self._database(target)} on {self.settings.host}:{self.settings.port}"

    def scratch_target(self, purpose: str) -> Target:
        # a drill's database name stays within PostgreSQL's 63 characters however long the live one is
        name = f"{self.settings.dbname[:50]}__drill" if purpose == DRILL else f"{self.settings.dbname}__scratch"
        return Target("scratch", {"dbname": name})

    @contextmanager
    def scratch(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Iterator[Scratch]:
        """A scratch database on the same server; a leftover of the same name is replaced by the restore."""
        require_scratch(self.name, target)
        dbname = self._database(target)
        if dbname == self.settings.dbname:  # it is dropped afterwards
            raise ConfigError("scratch database", dbname, "any name except the live database")
        with dropped_afterwards(lambda: self.drop_database(dbname)):
            self.restore(artifact, target, progress)
            yield Scratch(target, lambda: self._count_database(dbname), f"database {dbname}")

    def _count_database(self, dbname: str) -> Inventory:
        with self.connect(dbname) as conn:
            return self._count(conn)

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        return counts_problems(expected, actual, sections=("tables",))  # estimates drift; exact counts must not

    def before_delete(self, artifact: Artifact) -> None:
        """A dump keeps nothing outside its folder."""

    def drop_database(self, dbname: str) -> None:
        """Remove a scratch database (drills)."""
        _check_dbname(dbname)
        if dbname == self.settings.dbname:
            raise ConfigError("scratch database", dbname, "any name except the live database")
        with self.connect("postgres") as admin:
            self._drop(admin, dbname)

    @staticmethod
    def _terminate(admin: psycopg.Connection[Any], dbname: str) -> int:
        """End every other session of `dbname` (waiting up to 5 s each); returns how many there were.
        Runbook troubleshooting: "database is being accessed by other users"."""
        return len(admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall())

    def _drop(self, admin: psycopg.Connection[Any], dbname: str) -> None:
        self._terminate(admin, dbname)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))


class _BackgroundHash:
    """sha256 in a thread beside the decompression: both release the GIL, so on two cores the hash costs
    no wall time. At most 8 blocks wait (8 MiB); `hexdigest` waits for the last one."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="restore-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._blocks.get()) is not None:
            self._digest.update(block)

    def update(self, block: bytes) -> None:
        self._blocks.put(block)

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._blocks.put(None)
            self._thread.join()

    def __enter__(self) -> _BackgroundHash:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Walked:
    """The plain dump's file, telling `DataOffsets` every block written to it."""

    def __init__(self, fh: Any, offsets: DataOffsets) -> None:
        self.fh, self.offsets = fh, offsets

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.offsets.feed(data)
        return len(data)


def _judge_toc(artifact: Artifact, code: int, toc: str, err: str) -> Verification:
    """pg_restore --list succeeded and lists a data entry for every counted table."""
    if code != 0:
        lines = err.strip().splitlines()
        return Verification(False, [f"pg_restore --list failed: {lines[-1] if lines else code}"])
    data_tables = set(re.findall(r"TABLE DATA \S+ (\S+) ", toc))
    missing = [t for t in artifact.manifest.inventory.get("tables", {}) if t not in data_tables]
    problems = [f"no TABLE DATA entry for {t}" for t in missing]
    entries = sum(1 for line in toc.splitlines() if line and not line.startswith(";"))
    return Verification(not problems, problems, {"toc_entries": entries})


@dataclass(frozen=True)
class _Source:
    """A verified dump (`PostgresStore._verified_source`): streamed when `toc` is set, else restored as a file."""

    dump: Path
    toc: Path | None = None  # the plain dump's head up to the end of its table of contents
    src: BinaryIO | None = None  # the dump, open since it was hashed
    stamp: tuple[int, ...] | None = None  # `file_identity` of `src` when it was hashed
    listing: str = ""  # `pg_restore --list` of `toc`


_CHANGED = -1000  # _stream_restore: the dump's sha256 differed on the second read (not a pg_restore exit code)
STAMP = "%Y%m%dT%H%M%SZ"
_ASIDE_PREFIX = 36  # characters of the live name kept in `<db>__replaced_<stamp>` (63 at most)
_ASIDE = re.compile(r"(?P<original>[A-Za-z_][A-Za-z0-9_]*?)__replaced_(?P<stamp>\d{8}T\d{6}Z)")


def _aside_name(final: str) -> str:
    return f"{final[:_ASIDE_PREFIX]}__replaced_{datetime.now(UTC).strftime(STAMP)}"


def _aside_comment(final: str) -> str:
    return f"cb-backups: {final} before an in-place restore"


def _exists(admin: psycopg.Connection[Any], dbname: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def _check_dbname(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ConfigError("database name", name, "letters, digits and _, at most 63 characters")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _last_backup_bytes(store_dir: Path) -> int | None:
    if not store_dir.is_dir():
        return None
    sizes = [sum(p.stat().st_size for p in d.glob(f"{pattern}*")) for d in store_dir.iterdir()
             for pattern in ("postgres.dump", pg_directory.PREFIX)]
    return max(sizes) or None if sizes else None
