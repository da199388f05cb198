"""Neo4j 5.26 Community: the runbook's offline dump, checked and loaded with neo4j-admin.

Community Edition has no online backup, so a backup is: count nodes per label and
relationships per type over Bolt (while online), stop the server
(`stop_command`), `neo4j-admin database dump <db> --to-path=<dir>`, and ALWAYS
start it again (`start_command`), then wait until Bolt answers. The dump is
copied into the backup folder through the hashing writer.

`admin_command` is the neo4j-admin prefix: `neo4j-admin` on the host, or e.g.
`docker compose run --rm neo4j neo4j-admin`. When neo4j-admin does not run on
this host's filesystem, `dump_dir` is a folder it writes to that cb-backups can
read; it must have the same path on both sides (mount it at the same path in
the container). Without `dump_dir` the dump is written straight into the backup folder.

verify: the dump is judged by its format, not its size (an empty database's dump is
small and valid): the container header Neo4j 5 writes (`DZV1` = zstd, `DGV1` = gzip;
see `dump_format_problems`), streamed to its end so a truncated or damaged archive
fails, and `neo4j-admin database check --from-path` on a copy of the dump where
the tool has that command (the details say plainly when it is missing).
restore: verify, compare the manifest's Neo4j version with the target server's
(refuse on a difference), stop, `database load --overwrite-destination=true`,
start, wait for Bolt, count.
quiesce (in place): the server stays stopped from before the safety dump until the load is done (one stop
window), so a write attempted meanwhile is refused (Bolt is down), never acknowledged and then lost.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import neo4j
import zstandard
from neo4j import GraphDatabase
from neo4j.exceptions import DriverError, Neo4jError

from cb_backups.config.redact import redact_url
from cb_backups.config.settings import Neo4jSettings, Settings, VolumeSettings
from cb_backups.core.catalog import checksum_problems
from cb_backups.core.errors import (
    BackupFailed,
    CbBackupsError,
    ConfigError,
    RestoreFailed,
    RestoreRefused,
    StoreUnavailable,
)
from cb_backups.core.fileio import CHUNK, HashingWriter, private_dir, sha256_file
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
from cb_backups.stores import neo4j_export
from cb_backups.stores.base import (
    Scratch,
    counts_problems,
    disk_space_item,
    dropped_afterwards,
    require_scratch,
    run_tool,
    version_problems,
)
from cb_backups.stores.volume import service_stopped

DUMP_FILE = "neo4j.dump"
METHODS = ("dump", "export")
EXPORT_METHOD = "online export over Bolt (read committed, no downtime)"
ADMIN_TIMEOUT = 6 * 3600.0
BOLT_WAIT_SECONDS = 120.0
LABELS_QUERY = "MATCH (n) UNWIND labels(n) AS label RETURN label, count(*) AS c"
RELATIONSHIPS_QUERY = "MATCH ()-[r]->() RETURN type(r) AS type, count(*) AS c"
COMPONENTS_QUERY = "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition"
# one batch per transaction: emptying a large scratch graph must not need one huge transaction
EMPTY_BATCH_QUERY = "MATCH (n) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c"
_VERSION = re.compile(r"\b(\d+\.\d+\.\d+)\b")
_UNKNOWN_COMMAND = re.compile(r"unknown (sub)?command|unmatched argument|unknown option|did you mean", re.IGNORECASE)
_OVERRIDABLE = ("uri", "database", "admin_command", "stop_command", "start_command", "dump_dir")


def scratch_server_options(settings: Settings | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A separate scratch Neo4j server for scratch restores and drills: the `drills: {neo4j: {uri,
    admin_command, stop_command, start_command, dump_dir}}` section of the config file, overridden by
    CB_NEO4J_SCRATCH_URI (+ _ADMIN/_STOP/_START/_DUMP_DIR)."""
    env = dict(os.environ if env is None else env)
    raw = settings.raw if settings is not None else {}
    options = dict((raw.get("drills") or {}).get("neo4j") or {})
    for key, var in (("uri", "CB_NEO4J_SCRATCH_URI"), ("admin_command", "CB_NEO4J_SCRATCH_ADMIN"),
                     ("stop_command", "CB_NEO4J_SCRATCH_STOP"), ("start_command", "CB_NEO4J_SCRATCH_START"),
                     ("dump_dir", "CB_NEO4J_SCRATCH_DUMP_DIR")):
        if env.get(var):
            options[key] = env[var]
    return options


def _command(value: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@dataclass(frozen=True)
class _Stopped:
    """What `quiesce` counted over Bolt before it stopped the server (the data cannot change while stopped)."""
    inventory: Inventory
    version: tuple[str | None, str]


class Neo4jStore:
    name = "neo4j"
    consistency_markers = ("offline", "online_export")

    def __init__(self, settings: Neo4jSettings, volume: VolumeSettings | None = None,
                 scratch_server: Mapping[str, Any] | None = None) -> None:
        if settings.method not in METHODS:
            raise ConfigError("neo4j method", settings.method, ", ".join(METHODS))
        self.settings = settings
        self.restore_method = ("empty the graph, recreate the schema, load the export over Bolt in batches"
                               if settings.method == "export" else
                               "stop, neo4j-admin database load --overwrite-destination, start")
        self.volume = volume  # unused: the dump is the method the runbook gives Neo4j
        # Community has one user database per server: a scratch restore needs a server of its own
        self.scratch_server = dict(scratch_server_options() if scratch_server is None else scratch_server)
        self._stopped: _Stopped | None = None  # set while `quiesce` holds the server stopped

    # --- Bolt ----------------------------------------------------------------------------
    def _auth(self) -> tuple[str, str] | None:
        if self.settings.password:
            return (self.settings.user, self.settings.password)
        return None

    def _query(self, cypher: str) -> list[neo4j.Record]:
        """Run one query (auto-commit); any driver failure becomes StoreUnavailable naming the server."""
        uri = self.settings.uri
        try:
            with GraphDatabase.driver(uri, auth=self._auth(), connection_timeout=5.0,
                                      connection_acquisition_timeout=15.0) as driver, \
                    driver.session(database=self.settings.database) as session:
                return list(session.run(cypher))
        except (Neo4jError, DriverError, OSError, ValueError) as exc:
            raise StoreUnavailable(self.name, f"Bolt at {redact_url(uri)} (database '{self.settings.database}') "
                                              f"did not answer: {type(exc).__name__}: {_short(exc)}") from None

    def bolt_problem(self) -> str | None:
        """None when Bolt answers `RETURN 1`, else what is wrong."""
        try:
            self._query("RETURN 1 AS ok")
        except StoreUnavailable as exc:
            return str(exc)
        return None

    def wait_for_bolt(self, timeout: float = BOLT_WAIT_SECONDS) -> str | None:
        """Poll until Bolt answers; returns the last problem when it never did."""
        deadline = time.monotonic() + timeout
        problem = self.bolt_problem()
        while problem is not None and time.monotonic() < deadline:
            time.sleep(0.5)
            problem = self.bolt_problem()
        return problem

    # --- Store protocol ---------------------------------------------------------------------
    def health(self, backup_dir: Path) -> Health:
        items: dict[str, str] = {}
        items["bolt"] = self.bolt_problem() or "ok"
        items["disk_space"] = disk_space_item(backup_dir, None)
        admin = self.settings.admin_command
        items["neo4j_admin"] = "ok" if admin and shutil.which(admin[0]) else \
            f"admin_command {admin[0] if admin else '(empty)'!r} not found on PATH"
        if self.settings.method == "export":
            items["offline_dump"] = "ok"  # not used: the export reads the running server over Bolt
        elif not (self.settings.stop_command and self.settings.start_command):
            items["offline_dump"] = ("stop_command and start_command are not both set: Community Edition's "
                                     "`neo4j-admin database dump` refuses a running database")
        else:
            items["offline_dump"] = "ok"
        return Health(self.name, items)

    def inventory(self) -> Inventory:
        labels = {str(r["label"]): int(r["c"]) for r in self._query(LABELS_QUERY)}
        relationships = {str(r["type"]): int(r["c"]) for r in self._query(RELATIONSHIPS_QUERY)}
        return {"labels": dict(sorted(labels.items())), "relationships": dict(sorted(relationships.items()))}

    def server_version(self) -> tuple[str | None, str]:
        """(version, where it came from): `dbms.components()` over Bolt, else `neo4j-admin --version`."""
        if self._stopped is not None:
            return self._stopped.version
        try:
            for record in self._query(COMPONENTS_QUERY):
                if record["name"] == "Neo4j Kernel" and record["versions"]:
                    return str(record["versions"][0]), "dbms.components()"
        except StoreUnavailable:
            pass  # stopped, or a Bolt server without the procedure
        try:
            done = subprocess.run([*self.settings.admin_command, "--version"], capture_output=True, timeout=300,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None, "unknown"
        match = _VERSION.search(done.stdout.decode(errors="replace")) if done.returncode == 0 else None
        return (match.group(1), "neo4j-admin --version") if match else (None, "unknown")

    def backup(self, into: Path, progress: Progress = no_progress) -> BackupOutput:
        if self.settings.method == "export":
            return self._export(into, progress)
        db = self.settings.database
        progress("counting nodes and relationships", 0, None)
        # online, before the stop (also proves Bolt works); inside `quiesce`, what it counted before its stop
        inventory = self._stopped.inventory if self._stopped is not None else self.inventory()
        version, source = self.server_version()
        if version is None:
            raise BackupFailed(self.name, "cannot tell the Neo4j version (neither `CALL dbms.components()` nor "
                                          "`neo4j-admin --version` answered); a dump without it cannot be restored "
                                          "safely")
        with self._work_dir("dump", local=into) as work:
            produced = work / f"{db}.dump"
            produced.unlink(missing_ok=True)  # a leftover of a killed run would make the dump refuse
            progress("stopping Neo4j for the offline dump", 0, None)
            captured_at = self._offline(
                [*self.settings.admin_command, "database", "dump", db, f"--to-path={work}"], "dump", reopen=False)
            if not produced.is_file():
                raise BackupFailed(self.name, f"neo4j-admin reported success but wrote no {produced}")
            record = self._take_dump(produced, into, progress)
        return BackupOutput(
            files=[record],
            method="neo4j-admin database dump (offline)",
            options={"database": db, "admin_tool": Path(self.settings.admin_command[0]).name,
                     "version_source": source},
            versions={"neo4j": version},
            inventory=inventory,
            markers={"offline": True},
            captured_at=captured_at,
        )

    def verify(self, artifact: Artifact) -> Verification:
        if artifact.manifest.method == EXPORT_METHOD:
            return self._verify_export(artifact)
        problems: list[str] = []
        details: dict[str, Any] = {}
        path = artifact.path(DUMP_FILE)
        if not path.is_file():
            return Verification(False, [f"{DUMP_FILE} is missing from {artifact.directory}"])
        details["bytes"] = path.stat().st_size
        fmt, format_problems = dump_format_problems(path)
        details["format"] = fmt
        problems += [f"{DUMP_FILE}: {p}" for p in format_problems]
        if not artifact.manifest.versions.get("neo4j"):
            problems.append("the manifest records no Neo4j version (restore would not know what it may load into)")
        check_ok, check_detail = self._check_dump(path)
        details["check"] = check_detail
        if check_ok is False:
            problems.append(f"neo4j-admin database check: {check_detail}")
        return Verification(not problems, problems, details)

    def restore(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Inventory:
        store = self._for_target(target)
        changed = checksum_problems(artifact)  # a file or the manifest changed since the backup: refuse
        if changed:
            raise RestoreRefused(self.name, "the backup did not verify: " + "; ".join(changed))
        verification = self.verify(artifact)
        if not verification.ok:
            raise RestoreRefused(self.name, "the backup did not verify: " + "; ".join(verification.problems))
        if artifact.manifest.method == EXPORT_METHOD:
            return store._load_export(artifact, progress)
        wanted = artifact.manifest.versions.get("neo4j")
        have, source = store.server_version()
        if have is None:
            raise RestoreRefused(self.name, f"cannot tell the target's Neo4j version (Bolt at "
                                            f"{redact_url(store.settings.uri)} and `neo4j-admin --version` gave none)")
        if wanted != have:
            raise RestoreRefused(self.name, f"the backup was taken from Neo4j {wanted}, the target runs {have} "
                                            f"(from {source}); load it into a {wanted} server")
        db = store.settings.database
        with store._work_dir("restore") as work:
            staged = work / f"{db}.dump"
            progress("staging the dump for neo4j-admin", 0, artifact.file(DUMP_FILE).bytes)
            store._stage(artifact.path(DUMP_FILE), staged)
            progress("stopping Neo4j for the load", 0, None)
            try:
                store._offline([*store.settings.admin_command, "database", "load", db, f"--from-path={work}",
                                "--overwrite-destination=true"], "load")
            except BackupFailed as exc:
                raise RestoreFailed(self.name, str(exc).split(": ", 2)[-1]) from None
        return store.inventory()

    def stage(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> None:
        """Nothing to prepare beside the live data: the load needs the server stopped anyway."""

    @contextmanager
    def quiesce(self, target: Target) -> Iterator[dict[str, Any] | None]:
        """Stop the server until the load is done: one stop window spans the safety dump and the load.

        Without it the safety dump starts Neo4j again and the load stops it once more: writes committed in
        between would be in neither the safety backup nor the restored data. While stopped, Bolt refuses
        every connection, so no write is acknowledged. The load's `restore` starts it again; on an error
        before that, the exit starts the old data again.
        """
        if target.mode != "in_place" or self._for_target(target) is not self or not self.settings.stop_command \
                or self.settings.method == "export":
            yield None  # another server, no way to stop it, or the export (which needs Bolt up): nothing to hold
            return
        counted = _Stopped(self.inventory(), self.server_version())
        run_tool(self.name, self.settings.stop_command, timeout=600)
        self._stopped = counted
        try:
            yield {"stopped": True}
        finally:
            if self._stopped is not None:  # the load did not run or failed: the old data takes writes again
                self._stopped = None
                self._start_again()

    swaps_in_place = False  # the load overwrites the database in place

    def recover(self, target: Target, hold: dict[str, Any] | None) -> list[str]:
        """A restore killed while Neo4j was stopped (or a killed offline dump, hold None): start it again.
        Only when Bolt does not answer and a start command is set; a running server is left alone."""
        if target.mode != "in_place" or self._for_target(target) is not self or not self.settings.start_command:
            return []
        if self.bolt_problem() is None:
            return []
        self._start_again()
        return ["started Neo4j again"]

    def replaced(self) -> list[str]:
        """The load overwrites the database: what it held is in the safety backup, nothing is kept aside."""
        return []

    def prune_replaced(self, keep_days: int) -> list[str]:
        return []

    def compatibility(self, artifact: Artifact, target: Target) -> list[str]:
        """Neo4j loads a dump only into the exact version it came from; an export loads over Cypher."""
        if artifact.manifest.method == EXPORT_METHOD:
            problem = self._for_target(target).bolt_problem()
            return [problem] if problem else []

        def check() -> list[str]:
            wanted = artifact.manifest.versions.get("neo4j")
            have, source = self._for_target(target).server_version()
            if have is None:
                return ["cannot tell the target's Neo4j version"]
            return [] if wanted == have else [f"the backup is from Neo4j {wanted}, the target runs {have} "
                                              f"({source}); Neo4j needs the exact same version"]
        return version_problems(check)

    def describe_target(self, target: Target) -> str:
        if target.mode == "scratch" and "uri" not in target.options:
            return "no scratch Neo4j server is configured (CB_NEO4J_SCRATCH_URI)"
        database = target.options.get("database", self.settings.database)
        return f"database {database} at {redact_url(str(target.options.get('uri', self.settings.uri)))}"

    def scratch_target(self, purpose: str) -> Target | None:
        return Target("scratch", dict(self.scratch_server)) if self.scratch_server.get("uri") else None

    @contextmanager
    def scratch(self, artifact: Artifact, target: Target, progress: Progress = no_progress) -> Iterator[Scratch]:
        """Load into the scratch server (--overwrite-destination replaces any leftover). Community Edition
        cannot drop its one database, so "dropped" means emptied afterwards."""
        require_scratch(self.name, target)
        server = self._for_target(target)  # refuses the live server as a scratch target
        with dropped_afterwards(server._empty_database):
            self.restore(artifact, target, progress)
            yield Scratch(target, server.inventory, f"scratch Neo4j at {redact_url(server.settings.uri)}")

    def _empty_database(self) -> None:
        """Delete every node and relationship, batch by batch (the scratch server's only)."""
        while int(self._query(EMPTY_BATCH_QUERY)[0]["c"]):
            pass

    def compare_counts(self, expected: Inventory, actual: Inventory, target: Target) -> list[str]:
        return counts_problems(expected, actual, sections=("labels", "relationships"))

    def before_delete(self, artifact: Artifact) -> None:
        """A dump keeps nothing outside its folder."""

    # --- the online export (neo4j_export.py holds the format) ----------------------------------------
    def _export(self, into: Path, progress: Progress) -> BackupOutput:
        before = self.inventory()  # also proves Bolt works
        version, source = self.server_version()
        captured_at = datetime.now(UTC).isoformat(timespec="seconds")
        progress("exporting the graph over Bolt", 0, None)
        with neo4j_export.bolt(self.settings) as db:
            done = neo4j_export.export_graph(db, into, progress)
        after = self.inventory()
        held = done.digest.inventory()
        if not before == after == held:
            # no snapshot isolation in Community: counts that moved mean the file may not be one state
            moved = counts_problems(before, after, ("labels", "relationships")) or \
                counts_problems(before, held, ("labels", "relationships"))
            raise BackupFailed(self.name, f"the graph changed during the export ({'; '.join(moved)}); stop the "
                                          "writers around it (pre_backup/post_backup hooks) or use method: dump")
        return BackupOutput(
            files=[done.record],
            method=EXPORT_METHOD,
            options={"database": self.settings.database, "digest": done.digest.hexdigest(),
                     "schema_source": done.schema_source, "schema_statements": done.schema,
                     "schema_notes": done.notes, "version_source": source},
            versions={"neo4j": version or "unknown"},
            inventory=held,
            markers={"online_export": "read committed: each record as committed when the scan read it"},
            captured_at=captured_at,
        )

    def _verify_export(self, artifact: Artifact) -> Verification:
        path = artifact.path(neo4j_export.EXPORT_FILE)
        if not path.is_file():
            return Verification(False, [f"{neo4j_export.EXPORT_FILE} is missing from {artifact.directory}"])
        digest, problems = neo4j_export.check_file(path)
        wanted = artifact.manifest.options.get("digest")
        if not problems and digest.hexdigest() != wanted:
            problems.append(f"the export's digest {digest.hexdigest()[:16]}... is not the manifest's "
                            f"{str(wanted)[:16]}...")
        if not problems:
            problems += counts_problems(artifact.manifest.inventory, digest.inventory(),
                                        sections=("labels", "relationships"))
        return Verification(not problems, problems, {"digest": digest.hexdigest(), "nodes": digest.nodes,
                                                     "relationships": digest.relationships})

    def _load_export(self, artifact: Artifact, progress: Progress) -> Inventory:
        """Empty this server's graph and schema, load the export, and prove it: digest and counts."""
        wanted = artifact.manifest.options.get("digest")
        with neo4j_export.bolt(self.settings, RestoreFailed) as db:
            progress("emptying the target graph", 0, None)
            neo4j_export.empty_graph(db, progress)
            neo4j_export.restore_graph(db, artifact.path(neo4j_export.EXPORT_FILE), progress)
            progress("recomputing the digest of the restored graph", 0, None)
            live = neo4j_export.live_digest(db, progress)
            if live.hexdigest() != wanted:
                raise RestoreFailed(self.name, f"the restored graph's digest {live.hexdigest()[:16]}... differs from "
                                               f"the backup's {str(wanted)[:16]}... ({live.nodes} nodes, "
                                               f"{live.relationships} relationships)")
            if artifact.manifest.options.get("schema_source") == "SHOW CONSTRAINTS / SHOW INDEXES":
                _, schema, _ = neo4j_export.schema_statements(db)
                if len(schema) != artifact.manifest.options.get("schema_statements"):
                    raise RestoreFailed(self.name, f"{len(schema)} indexes/constraints after the restore, the "
                                                   f"backup has {artifact.manifest.options.get('schema_statements')}")
        return self.inventory()

    # --- helpers -----------------------------------------------------------------------------------
    def _for_target(self, target: Target) -> Neo4jStore:
        if target.mode not in ("in_place", "scratch"):
            raise ConfigError("neo4j restore mode", target.mode, "in_place, scratch")
        unknown = sorted(set(target.options) - set(_OVERRIDABLE))
        if unknown:
            raise ConfigError("neo4j restore option", unknown[0], ", ".join(_OVERRIDABLE))
        if target.mode == "scratch" and target.options.get("uri", self.settings.uri) == self.settings.uri:
            raise RestoreRefused(self.name, "Neo4j Community has one user database per server, so a scratch "
                                            "restore needs a separate scratch server: pass its 'uri' (and its "
                                            "admin_command, stop_command, start_command) in the target options")
        overrides = {k: _command(v) if k.endswith("_command") else v for k, v in target.options.items()}
        if not overrides:
            return self
        return Neo4jStore(replace(self.settings, **overrides), self.volume, self.scratch_server)

    def _offline(self, admin_argv: Sequence[str], what: str, reopen: bool = True) -> str:
        """stop; run neo4j-admin; ALWAYS start again; wait for Bolt. Returns when the data was frozen.

        Inside `quiesce` the server is already stopped: run neo4j-admin only, and start it again only when
        `reopen` (after the load), so the safety dump does not open a window for writes.
        """
        captured_at = datetime.now(UTC).isoformat(timespec="seconds")
        if self._stopped is not None:
            self._admin(admin_argv, what)  # on failure still stopped: quiesce's exit starts it again
            if reopen:
                self._stopped = None
                self._start_again()
            return captured_at
        failure: BaseException | None = None
        try:
            with service_stopped(self.name, self.settings.stop_command, self.settings.start_command):
                captured_at = datetime.now(UTC).isoformat(timespec="seconds")
                self._admin(admin_argv, what)
        except BaseException as exc:
            failure = exc
        problem = self.wait_for_bolt() if self.settings.start_command or failure is None else None
        if failure is not None:
            if problem is not None and isinstance(failure, CbBackupsError):
                raise BackupFailed(self.name, f"{str(failure).split(': ', 2)[-1]}; and Neo4j does not answer "
                                              f"Bolt again: {problem}") from failure
            raise failure
        if problem is not None:
            raise BackupFailed(self.name, f"neo4j-admin {what} finished but Neo4j did not answer Bolt within "
                                          f"{BOLT_WAIT_SECONDS:.0f}s after the start: {problem}")
        return captured_at

    def _start_again(self) -> None:
        if self.settings.start_command:
            run_tool(self.name, self.settings.start_command, timeout=600)
        problem = self.wait_for_bolt()
        if problem is not None:
            raise BackupFailed(self.name, f"Neo4j did not answer Bolt within {BOLT_WAIT_SECONDS:.0f}s after the "
                                          f"start: {problem}")

    def _admin(self, argv: Sequence[str], what: str) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, timeout=ADMIN_TIMEOUT, check=False)
        except FileNotFoundError:
            raise BackupFailed(self.name, f"neo4j-admin not found: {argv[0]!r} (set neo4j admin_command)") from None
        except subprocess.TimeoutExpired:
            raise BackupFailed(self.name, f"neo4j-admin database {what} timed out after {ADMIN_TIMEOUT:.0f}s") \
                from None
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-5:])
            raise BackupFailed(self.name, f"neo4j-admin database {what} {self.settings.database} exited "
                                          f"{done.returncode}: {tail or 'no output'}")
        return done.stdout.decode(errors="replace")

    @contextmanager
    def _work_dir(self, purpose: str, local: Path | None = None) -> Iterator[Path]:
        """A folder neo4j-admin can read and write: under dump_dir when set, else `local` or a temp folder."""
        if self.settings.dump_dir:
            base = Path(self.settings.dump_dir)
            try:
                private_dir(base)
                work = Path(tempfile.mkdtemp(prefix=f".cb-{purpose}-", dir=base))
                os.chmod(work, 0o777)  # neo4j-admin may run as another user (the image's neo4j user)
            except OSError as exc:
                raise BackupFailed(self.name, f"neo4j dump_dir {base} is not usable: {exc.strerror}") from None
        elif local is not None:
            yield local
            return
        else:
            work = Path(tempfile.mkdtemp(prefix=f"cb-neo4j-{purpose}-"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _take_dump(self, produced: Path, into: Path, progress: Progress) -> FileRecord:
        target = into / DUMP_FILE
        if produced.parent == into:  # neo4j-admin wrote straight into the backup folder
            if produced != target:
                os.replace(produced, target)
            os.chmod(target, 0o600)
            digest, size = sha256_file(target)
            return FileRecord(DUMP_FILE, size, digest)
        total = produced.stat().st_size
        with HashingWriter(target) as out, open(produced, "rb") as src:
            while block := src.read(CHUNK):
                out.write(block)
                progress("copying the dump", out.bytes, total)
        produced.unlink(missing_ok=True)
        return FileRecord(DUMP_FILE, out.bytes, out.sha256)

    def _stage(self, source: Path, staged: Path) -> None:
        """Make the dump visible to neo4j-admin as <db>.dump: a symlink locally, a copy in dump_dir."""
        if self.settings.dump_dir:
            with HashingWriter(staged) as out, open(source, "rb") as src:
                out.copy_from(src)
            os.chmod(staged, 0o644)
        else:
            staged.symlink_to(source.resolve())

    def _check_dump(self, dump: Path) -> tuple[bool | None, str]:
        """(True, detail) passed; (False, detail) found problems; (None, detail) could not run."""
        db = self.settings.database
        try:
            with self._work_dir("check") as work:
                self._stage(dump, work / f"{db}.dump")
                temp = work / "extract"
                temp.mkdir()
                os.chmod(temp, 0o777)
                argv = [*self.settings.admin_command, "database", "check", db, f"--from-path={work}",
                        f"--temp-path={temp}"]
                try:
                    done = subprocess.run(argv, capture_output=True, timeout=ADMIN_TIMEOUT, check=False)
                except FileNotFoundError:
                    return None, f"not run: neo4j-admin {self.settings.admin_command[0]!r} is not installed here"
                except subprocess.TimeoutExpired:
                    return False, f"timed out after {ADMIN_TIMEOUT:.0f}s"
        except (OSError, BackupFailed) as exc:
            return None, f"not run: {_short(exc)}"
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        tail = " | ".join(output.splitlines()[-5:]) or "no output"
        if done.returncode == 0:
            return True, f"passed: {tail}"
        if _UNKNOWN_COMMAND.search(output):
            return None, f"not available in this neo4j-admin: {tail}"
        return False, f"exited {done.returncode}: {tail}"


# --- the dump container (org.neo4j.dbms.archive: DumpFormatSelector, Dumper, StandardCompressionFormat) ------
DZV1, DGV1 = b"DZV1", b"DGV1"  # Neo4j 5: 'D' + zstd/gzip + format version 1
ZSTD_FRAME, GZIP_STREAM = b"\x28\xb5\x2f\xfd", b"\x1f\x8b"  # pre-5 dumps: a bare zstd or gzip stream
ZSTD_INNER = b"zstd"  # StandardCompressionFormat.ZSTD writes it first inside the compressed stream
_METADATA = struct.Struct(">iqq")  # Dumper.writeArchiveMetadata: version 1, file count, byte count


def dump_format_problems(path: Path) -> tuple[str, list[str]]:
    """(format name, problems) of a Neo4j dump, read as a stream to its very end.

    zstd dumps carry a file and byte count and a content checksum: both are checked, so a
    truncated, cut or altered dump fails; gzip dumps carry a CRC checked at their end.
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic == DZV1:
            fmt, compressed = "DZV1 (zstd)", True
        elif magic == DGV1:
            fmt, compressed = "DGV1 (gzip)", False
        elif magic.startswith(ZSTD_FRAME) or magic.startswith(GZIP_STREAM):
            fmt, compressed = "legacy (before Neo4j 5)", magic.startswith(ZSTD_FRAME)
            fh.seek(0)
        else:
            return "unknown", [f"not a Neo4j dump: it starts with {magic!r}, a Neo4j 5 dump starts with "
                               f"{DZV1!r} (zstd) or {DGV1!r} (gzip)"]
        try:
            if compressed:
                stream: Any = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True,
                                                                         closefd=False)
                inner = stream.read(len(ZSTD_INNER) + _METADATA.size)
                if inner[:4] != ZSTD_INNER or len(inner) < len(ZSTD_INNER) + _METADATA.size:
                    return fmt, ["the zstd stream does not start with Neo4j's 'zstd' marker and metadata"]
                version, files, size = _METADATA.unpack(inner[4:])
                if version != 1:
                    return fmt, [f"archive metadata version {version}; Neo4j 5 writes version 1"]
            else:
                stream, files, size = gzip.GzipFile(fileobj=fh, mode="rb"), None, None
            with stream:
                found_files, found_bytes = _walk_tar(stream)
                while stream.read(CHUNK):  # to the end: the zstd checksum / gzip CRC is checked there
                    pass
        except (OSError, EOFError, ValueError, tarfile.TarError, zstandard.ZstdError) as exc:
            return fmt, [f"the archive is damaged or truncated: {_short(exc)}"]
    if files is not None and (files, size) != (found_files, found_bytes):
        return fmt, [f"the dump's metadata announces {files} files / {size} bytes, the archive holds "
                     f"{found_files} / {found_bytes}"]
    return fmt, []


def _walk_tar(stream: Any) -> tuple[int, int]:
    """Files and bytes in the tar, every byte read (tarfile raises on a cut entry)."""
    files = size = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                files += 1
                size += member.size
                body = tar.extractfile(member)
                while body is not None and body.read(CHUNK):
                    pass
    return files, size
