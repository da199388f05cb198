"""A stand-in for Neo4j 5's `neo4j-admin` over the emulated server's store files.

Implements the commands the product uses, with Neo4j 5's syntax and refusals:

    neo4j-admin --version
    neo4j-admin database dump <db> --to-path=<dir> [--overwrite-destination[=true|false]]
    neo4j-admin database load <db> --from-path=<dir or file> [--overwrite-destination[=true|false]]
    neo4j-admin database check <db> [--from-path=<dir> [--temp-path=<dir>]] [--verbose] [--report-path=<p>]

Run as `python -m cb_backups_tests.emulators.neo4j_admin --state DIR database ...`
(`--state` may also come from NEO4J_EMULATOR_STATE). dump and load (and check
without --from-path) refuse while the server runs — it holds the store lock — with
Neo4j's "The database is in use. Stop database '<db>' and try again." (exit 1).

Dump file: Neo4j 5's container layout (org.neo4j.dbms.archive: DumpFormatSelector,
DumpZstdFormatV1, DumpGzipFormatV1, StandardCompressionFormat, Dumper), holding the
emulator's own store files instead of Neo4j's record stores::

    b"DZV1" + zstd frame (content checksum on) of:
        b"zstd"                                  StandardCompressionFormat.ZSTD's inner marker
        >i 1, >q files, >q bytes                 Dumper.writeArchiveMetadata (version 1)
        POSIX tar: ./  ./emulator-dump.json  ./graph.ndjson
    or, with NEO4J_EMULATOR_DUMP_FORMAT=gzip (Neo4j's fallback when zstd is unavailable):
    b"DGV1" + gzip of the same tar (no metadata block, as in Neo4j)

    emulator-dump.json  {"format": 2, "neo4j_version": "5.26.4", "database": "neo4j", "created_at": "..."}
    graph.ndjson        {"t":"node","id":..,"labels":[..],"props":{..}}
                        {"t":"rel","id":..,"type":..,"start":..,"end":..,"props":{..}}
                        {"t":"end","nodes":N,"relationships":M}

The graph is read from / written to the stopped server's FalkorDB RDB through an
offline FalkorDB that has no network listener at all (unix socket only).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import struct
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard

from cb_backups_tests.emulators.neo4j import (
    BOLT_GRAPH_KEY,
    DEFAULT_VERSION,
    config_path,
    offline_falkordb,
    read_config,
    store_lock,
)

BATCH = 200
SYSTEM_DB = "system"


class AdminError(Exception):
    """A refusal: printed to stderr, exit code 1."""


# --- Cypher literals and FalkorDB's compact replies --------------------------------------


def literal(value: Any) -> str:
    """A Cypher literal for a property value (FalkorDB's CYPHER-parameter syntax)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AdminError(f"cannot load non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
                   .replace("\r", "\\r").replace("\t", "\\t"))
        return f"'{escaped}'"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{ident(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise AdminError(f"unsupported property value type {type(value).__name__}")


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def decode(cell: Any) -> Any:
    """Decode one value of a `--compact` GRAPH.QUERY reply: [type, value]."""
    kind, value = cell[0], cell[1]
    if kind == 1:
        return None
    if kind == 2:
        return value.decode() if isinstance(value, bytes) else value
    if kind == 3:
        return int(value)
    if kind == 4:
        return value in (b"true", "true", 1, True)
    if kind == 5:
        return float(value)
    if kind == 6:
        return [decode(v) for v in value]
    if kind == 10:
        return {(value[i].decode() if isinstance(value[i], bytes) else value[i]): decode(value[i + 1])
                for i in range(0, len(value), 2)}
    raise AdminError(f"unsupported FalkorDB value type {kind}")


def query(client: Any, graph: str, cypher: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
    prefix = "CYPHER " + " ".join(f"{k}={literal(v)}" for k, v in params.items()) + " " if params else ""
    reply = client.execute_command("GRAPH.QUERY", graph, prefix + cypher, "--compact")
    if len(reply) < 3:
        return []
    return [[decode(cell) for cell in row] for row in reply[1]]


def graphs(client: Any) -> list[str]:
    return [g.decode() if isinstance(g, bytes) else g for g in client.execute_command("GRAPH.LIST")]


# --- dump files ---------------------------------------------------------------------------

ZSTD_MAGIC = b"DZV1"
GZIP_MAGIC = b"DGV1"
ZSTD_INNER = b"zstd"
HEADER_ENTRY = "./emulator-dump.json"
GRAPH_ENTRY = "./graph.ndjson"


def write_dump(client: Any, database: str, out: IO[bytes], version: str, work: Path) -> tuple[int, int]:
    """Write the graph of `database` (stored under BOLT_GRAPH_KEY) as a Neo4j 5 dump into `out`.

    The tar needs every entry's size up front (and the zstd metadata the totals), so the records go
    to a temporary file in `work` first, as Neo4j's Dumper sizes the store files before writing.
    """
    header = json.dumps({"format": 2, "neo4j_version": version, "database": database,
                         "created_at": datetime.now(UTC).isoformat(timespec="seconds")}).encode() + b"\n"
    fd, records_tmp = tempfile.mkstemp(prefix=".graph-", dir=work)
    try:
        with os.fdopen(fd, "wb") as body:
            nodes, rels = _write_records(client, body)
        entries = [(HEADER_ENTRY, len(header)), (GRAPH_ENTRY, os.path.getsize(records_tmp))]
        gzip_format = os.environ.get("NEO4J_EMULATOR_DUMP_FORMAT") == "gzip"
        out.write(GZIP_MAGIC if gzip_format else ZSTD_MAGIC)
        if gzip_format:
            compressed: Any = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6)
        else:
            compressed = zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False)
            compressed.write(ZSTD_INNER + struct.pack(">iqq", 1, len(entries), sum(size for _, size in entries)))
        with compressed, tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            root = tarfile.TarInfo("./")
            root.type, root.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(root)
            tar.addfile(_entry(HEADER_ENTRY, len(header)), io.BytesIO(header))
            with open(records_tmp, "rb") as records:
                tar.addfile(_entry(GRAPH_ENTRY, entries[1][1]), records)
    finally:
        Path(records_tmp).unlink(missing_ok=True)
    return nodes, rels


def _entry(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info


def _write_records(client: Any, body: IO[bytes]) -> tuple[int, int]:
    nodes = rels = 0
    if BOLT_GRAPH_KEY in graphs(client):
        for node_id, labels, props in _paged(client, BOLT_GRAPH_KEY, "MATCH (n) WHERE id(n) > $after "
                                             "RETURN id(n), labels(n), properties(n) ORDER BY id(n) LIMIT 1000"):
            body.write(_record({"t": "node", "id": node_id, "labels": labels, "props": props}))
            nodes += 1
        for rel_id, rtype, start, end, props in _paged(
                client, BOLT_GRAPH_KEY, "MATCH (a)-[r]->(b) WHERE id(r) > $after "
                "RETURN id(r), type(r), id(a), id(b), properties(r) ORDER BY id(r) LIMIT 1000"):
            body.write(_record({"t": "rel", "id": rel_id, "type": rtype, "start": start, "end": end,
                                "props": props}))
            rels += 1
    body.write(_record({"t": "end", "nodes": nodes, "relationships": rels}))
    return nodes, rels


def _paged(client: Any, graph: str, cypher: str) -> Iterator[list[Any]]:
    after = -1
    while True:
        rows = query(client, graph, cypher, {"after": after})
        if not rows:
            return
        yield from rows
        after = rows[-1][0]


def _record(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


@contextmanager
def _tar_stream(fh: IO[bytes]) -> Iterator[tarfile.TarFile]:
    """The tar inside a dump, after checking the container header as Neo4j's DumpFormatSelector does."""
    magic = fh.read(4)
    if magic == GZIP_MAGIC:
        inner: Any = gzip.GzipFile(fileobj=fh, mode="rb")
    elif magic == ZSTD_MAGIC:
        inner = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True, closefd=False)
        if inner.read(4) != ZSTD_INNER:
            raise AdminError("Not in ZSTD format")
        version = struct.unpack(">iqq", _exactly(inner, 20))[0]
        if version != 1:
            raise AdminError(f"Cannot read archive meta-data. I don't recognise this archive version: {version}.")
    else:
        raise AdminError(f"Unsupported format backup format: {list(magic)}")
    with inner, tarfile.open(fileobj=inner, mode="r|") as tar:
        yield tar


def _exactly(stream: Any, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise AdminError("dump is truncated")
    return bytes(data)


def read_header(fh: IO[bytes]) -> dict[str, Any]:
    """The emulator's store header (the first entry of the tar)."""
    for header in _iter(fh):
        return header
    raise AdminError("dump is empty")


def _iter(fh: IO[bytes]) -> Iterator[dict[str, Any]]:
    try:
        with _tar_stream(fh) as tar:
            header: dict[str, Any] | None = None
            for member in tar:
                if member.name == HEADER_ENTRY:
                    payload = tar.extractfile(member)
                    header = json.loads(payload.read()) if payload else None
                    if not isinstance(header, dict) or header.get("format") != 2 or "neo4j_version" not in header:
                        raise AdminError("unsupported dump header")
                    yield header
                elif member.name == GRAPH_ENTRY:
                    if header is None:
                        raise AdminError("damaged dump: the graph comes before its header")
                    body = tar.extractfile(member)
                    for line in body or ():
                        yield json.loads(line)
            if header is None:
                raise AdminError("not a dump of this server (no emulator-dump.json in it)")
    except (OSError, EOFError, zlib.error, ValueError, tarfile.TarError, zstandard.ZstdError) as exc:
        raise AdminError(f"damaged dump: {exc}") from exc


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Header first, then every record; raises AdminError on any damage."""
    with open(path, "rb") as fh:
        yield from _iter(fh)


def check_dump(path: Path) -> tuple[dict[str, Any], int, int]:
    """Full structural check: records well-formed, relationships between dumped nodes, trailer counts."""
    records = iter_records(path)
    header = next(records)
    node_ids: set[int] = set()
    rel_ids: set[int] = set()
    pending: list[tuple[int, int, int]] = []
    end: dict[str, Any] | None = None
    for rec in records:
        if end is not None:
            raise AdminError("records after the end marker")
        kind = rec.get("t")
        if kind == "node":
            if not isinstance(rec.get("labels"), list) or not isinstance(rec.get("props"), dict):
                raise AdminError(f"malformed node record {rec.get('id')}")
            if rec["id"] in node_ids:
                raise AdminError(f"duplicate node id {rec['id']}")
            node_ids.add(rec["id"])
        elif kind == "rel":
            if not isinstance(rec.get("type"), str) or not isinstance(rec.get("props"), dict):
                raise AdminError(f"malformed relationship record {rec.get('id')}")
            rel_ids.add(rec["id"])
            pending.append((rec["id"], rec["start"], rec["end"]))
        elif kind == "end":
            end = rec
        else:
            raise AdminError(f"unknown record type {kind!r}")
    if end is None:
        raise AdminError("dump is truncated (no end marker)")
    for rel_id, start, stop in pending:
        if start not in node_ids or stop not in node_ids:
            raise AdminError(f"relationship {rel_id} points at a node that is not in the dump")
    if end.get("nodes") != len(node_ids) or end.get("relationships") != len(rel_ids):
        raise AdminError(f"counts differ: end marker says {end.get('nodes')} nodes / {end.get('relationships')} "
                         f"relationships, found {len(node_ids)} / {len(rel_ids)}")
    return header, len(node_ids), len(rel_ids)


def load_dump(client: Any, path: Path) -> tuple[int, int]:
    database = BOLT_GRAPH_KEY
    if database in graphs(client):
        client.execute_command("GRAPH.DELETE", database)
    records = iter_records(path)
    next(records)
    id_map: dict[int, int] = {}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    rels: dict[str, list[dict[str, Any]]] = {}
    nodes = count_rels = 0
    # nodes come before relationships in a dump
    for rec in records:
        if rec["t"] == "node":
            key = tuple(sorted(rec["labels"]))
            groups.setdefault(key, []).append({"i": rec["id"], "p": rec["props"]})
            if len(groups[key]) >= BATCH:
                nodes += _create_nodes(client, database, key, groups.pop(key), id_map)
        elif rec["t"] == "rel":
            for key in list(groups):
                nodes += _create_nodes(client, database, key, groups.pop(key), id_map)
            rels.setdefault(rec["type"], []).append({"s": id_map[rec["start"]], "e": id_map[rec["end"]],
                                                     "p": rec["props"]})
            if len(rels[rec["type"]]) >= BATCH:
                count_rels += _create_rels(client, database, rec["type"], rels.pop(rec["type"]))
    for key in list(groups):
        nodes += _create_nodes(client, database, key, groups.pop(key), id_map)
    for rtype in list(rels):
        count_rels += _create_rels(client, database, rtype, rels.pop(rtype))
    if database not in graphs(client):  # an empty database still exists after a load
        query(client, database, "CREATE (n:__cb_init__) DELETE n")
    return nodes, count_rels


def _create_nodes(client: Any, graph: str, labels: tuple[str, ...], rows: list[dict[str, Any]],
                  id_map: dict[int, int]) -> int:
    label_text = "".join(f":{ident(label)}" for label in labels)
    result = query(client, graph, f"UNWIND $rows AS row CREATE (n{label_text}) SET n = row.p RETURN row.i, id(n)",
                   {"rows": rows})
    for old, new in result:
        id_map[old] = new
    return len(result)


def _create_rels(client: Any, graph: str, rtype: str, rows: list[dict[str, Any]]) -> int:
    result = query(client, graph, "UNWIND $rows AS row MATCH (a) WHERE id(a) = row.s MATCH (b) WHERE id(b) = row.e "
                   f"CREATE (a)-[r:{ident(rtype)}]->(b) SET r = row.p RETURN count(r)", {"rows": rows})
    return int(result[0][0]) if result else 0


# --- commands -----------------------------------------------------------------------------


def in_use(database: str) -> AdminError:
    return AdminError(f"The database is in use. Stop database '{database}' and try again.")


def database_name(state: Path) -> str:
    return str(read_config(state).get("database", "neo4j")) if config_path(state).is_file() else "neo4j"


def require_database(state: Path, database: str) -> None:
    if database != database_name(state):
        raise AdminError(f"Database does not exist: {database} (this Neo4j Community server has one user "
                         f"database: {database_name(state)})")


def version_of(state: Path) -> str:
    return str(read_config(state).get("neo4j_version", DEFAULT_VERSION)) if config_path(state).is_file() \
        else DEFAULT_VERSION


def cmd_dump(state: Path, database: str, to_path: Path, overwrite: bool) -> str:
    if not to_path.is_dir():
        raise AdminError(f"Unable to dump database: the path {to_path} is not an existing directory")
    target = to_path / f"{database}.dump"
    if target.exists() and not overwrite:
        raise AdminError(f"Unable to dump database: file already exists: {target} (use --overwrite-destination)")
    with store_lock(state) as locked:
        if not locked:
            raise in_use(database)
        require_database(state, database)
        with offline_falkordb(state) as client:
            fd, tmp = tempfile.mkstemp(prefix=f".{database}.dump.", dir=to_path)
            try:
                with os.fdopen(fd, "wb") as out:
                    nodes, rels = write_dump(client, database, out, version_of(state), to_path)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return f"Dumped database '{database}' to {target}: {nodes} nodes, {rels} relationships"


def dump_file(database: str, from_path: Path) -> Path:
    path = from_path / f"{database}.dump" if from_path.is_dir() else from_path
    if not path.is_file():
        raise AdminError(f"No dump of database '{database}' found at {from_path}")
    return path


def cmd_load(state: Path, database: str, from_path: Path, overwrite: bool) -> str:
    path = dump_file(database, from_path)
    header, _, _ = check_dump(path)  # never touch the store with a damaged dump
    ours, theirs = version_of(state), str(header["neo4j_version"])
    if ours.split(".")[0] != theirs.split(".")[0]:
        raise AdminError(f"Dump was created by Neo4j {theirs}; this is Neo4j {ours}: a dump can only be loaded "
                         "into the same major version (migrate it first)")
    with store_lock(state) as locked:
        if not locked:
            raise in_use(database)
        require_database(state, database)
        with offline_falkordb(state) as client:
            if BOLT_GRAPH_KEY in graphs(client) and not overwrite:
                raise AdminError(f"Database with name [{database}] already exists. Use --overwrite-destination "
                                 "to replace it.")
            nodes, rels = load_dump(client, path)
            client.execute_command("SAVE")
    return f"Loaded database '{database}' from {path}: {nodes} nodes, {rels} relationships"


def cmd_check(state: Path, database: str, from_path: Path | None) -> str:
    if from_path is not None:
        header, nodes, rels = check_dump(dump_file(database, from_path))
        return (f"Database consistency check of the dump of '{database}' (Neo4j {header['neo4j_version']}) "
                f"completed: {nodes} nodes, {rels} relationships, no inconsistencies found")
    with store_lock(state) as locked:
        if not locked:
            raise in_use(database)
        require_database(state, database)
        with offline_falkordb(state) as client:
            if BOLT_GRAPH_KEY in graphs(client):
                query(client, BOLT_GRAPH_KEY, "MATCH (n) OPTIONAL MATCH (n)-[r]->() RETURN count(n), count(r)")
    return f"Database consistency check of '{database}' completed: no inconsistencies found"


def _bool_option(value: str | None) -> bool:
    if value is None or value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise AdminError(f"Invalid value for option '--overwrite-destination': '{value}' is not a boolean")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="neo4j-admin")
    top.add_argument("--state", type=Path, default=os.environ.get("NEO4J_EMULATOR_STATE"))
    top.add_argument("--version", "-V", action="store_true")
    groups = top.add_subparsers(dest="group")
    database = groups.add_parser("database").add_subparsers(dest="command", required=True)
    dump = database.add_parser("dump")
    dump.add_argument("database")
    dump.add_argument("--to-path", type=Path)
    dump.add_argument("--to-stdout", action="store_true")
    dump.add_argument("--overwrite-destination", nargs="?", const="true", default="false")
    dump.add_argument("--verbose", action="store_true")
    load = database.add_parser("load")
    load.add_argument("database")
    load.add_argument("--from-path", type=Path, required=True)
    load.add_argument("--overwrite-destination", nargs="?", const="true", default="false")
    load.add_argument("--verbose", action="store_true")
    check = database.add_parser("check")
    check.add_argument("database")
    check.add_argument("--from-path", type=Path)
    check.add_argument("--temp-path", type=Path)
    check.add_argument("--report-path", type=Path)
    check.add_argument("--verbose", action="store_true")
    check.add_argument("--force", action="store_true")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.version:
        print(f"neo4j-admin {version_of(args.state) if args.state else DEFAULT_VERSION}")
        return 0
    if args.group != "database":
        parser().print_usage(sys.stderr)
        return 2
    if args.state is None:
        print("neo4j-admin emulator: --state (or NEO4J_EMULATOR_STATE) is required", file=sys.stderr)
        return 2
    state = args.state.resolve()
    try:
        if args.database == SYSTEM_DB:
            raise AdminError("The system database is not handled by this emulator")
        if args.command == "dump":
            if args.to_stdout or args.to_path is None:
                raise AdminError("this emulator supports --to-path only")
            message = cmd_dump(state, args.database, args.to_path, _bool_option(args.overwrite_destination))
        elif args.command == "load":
            message = cmd_load(state, args.database, args.from_path, _bool_option(args.overwrite_destination))
        else:
            message = cmd_check(state, args.database, args.from_path)
    except AdminError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
