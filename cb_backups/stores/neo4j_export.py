"""Neo4j online export (`neo4j: {method: export}`): the graph over Bolt into one zstd'd JSON-lines file.

No downtime: every node and every relationship is read by one streaming query each (the driver
pulls `FETCH` records at a time, so memory stays flat whatever the graph's size) and written
through the HashingWriter into `neo4j-export.jsonl.zst`::

    {"t": "header", "format": 1, "database": "neo4j", "id_kind": "elementId" | "id"}
    {"t": "schema", "kind": "constraint" | "index", "statement": "CREATE ..."}     (SHOW ... createStatement)
    {"t": "node", "id": "<source id>", "labels": [...], "props": {...}}
    {"t": "rel", "type": "T", "start": "<id>", "end": "<id>", "sh": "<start node hash>", "eh": "...",
     "props": {...}}
    {"t": "end", "nodes": N, "relationships": M, "digest": "<hex>"}

Values keep their Neo4j type: JSON for booleans, integers, finite floats, strings and lists; tagged
objects for the rest ({"$date": iso}, {"$datetime": iso, "zone": name}, {"$localdatetime": iso},
{"$time": iso}, {"$localtime": iso}, {"$duration": [months, days, seconds, nanoseconds]},
{"$point": [srid, x, y(, z)]}, {"$bytes": base64}, {"$float": "nan" | "inf" | "-inf"}).

The content digest is order independent: the sum (mod 2**256) of the sha256 of every node's labels
and properties and of every relationship's type, endpoint nodes' hashes and properties. It is
computed while exporting, recomputed from the file by verify and from the live graph after a
restore, so a restore proves it brought back exactly what was exported.

Consistency: Neo4j Community has no snapshot isolation for a long read. Each record is as committed
when the scan reached it (read committed); the node scan and the relationship scan are two
transactions. The export fails when the counts per label/type differ before and after it; a change
that keeps the counts (a property update) is included or not depending on timing. A point-in-time
copy needs the writers stopped around it (pre_backup/post_backup hooks) or the offline dump.

Restore (into an emptied database): schema first (constraints, then indexes), then nodes in batches,
each tagged with a temporary label and its source id, then relationships in batches, endpoints found
through an index on that temporary id (the id mapping lives in the server, not in this process),
then the temporary label, property and index are removed batch by batch.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import neo4j
import neo4j.spatial
import neo4j.time
import zstandard
from neo4j import GraphDatabase
from neo4j.exceptions import DriverError, Neo4jError

from cb_backups.config.redact import redact_url
from cb_backups.config.settings import Neo4jSettings
from cb_backups.core.errors import BackupFailed, RestoreFailed, StoreUnavailable
from cb_backups.core.fileio import CHUNK, HashingWriter
from cb_backups.core.model import FileRecord, Inventory, Progress, no_progress

EXPORT_FILE = "neo4j-export.jsonl.zst"
FORMAT = 1
FETCH = 1000  # records the driver pulls per round trip
BATCH = 500  # rows per write transaction on restore, at most...
BATCH_BYTES = 1024 * 1024  # ...and about this much JSON (CB_NEO4J_BATCH_BYTES): one huge row goes alone
TMP_LABEL = "__CbRestore"
TMP_ID = "__cb_id"
TMP_INDEX = "cb_restore_id"
_MOD = 2 ** 256

NODES_QUERY = "MATCH (n) RETURN {id} AS id, labels(n) AS labels, properties(n) AS props"
RELS_QUERY = ("MATCH (a)-[r]->(b) RETURN {start} AS start, {end} AS end, type(r) AS type, properties(r) AS props, "
              "labels(a) AS al, properties(a) AS ap, labels(b) AS bl, properties(b) AS bp")


# --- values ------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A driver value as JSON that keeps its Neo4j type (see the module doc)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"$map": {str(k): encode(v) for k, v in value.items()}}
    if isinstance(value, neo4j.time.DateTime):
        if value.tzinfo is None:
            return {"$localdatetime": value.iso_format()}
        zone = getattr(value.tzinfo, "zone", None) or getattr(value.tzinfo, "key", None)
        return {"$datetime": value.iso_format(), **({"zone": str(zone)} if zone else {})}
    if isinstance(value, neo4j.time.Date):
        return {"$date": value.iso_format()}
    if isinstance(value, neo4j.time.Time):
        return {"$localtime" if value.tzinfo is None else "$time": value.iso_format()}
    if isinstance(value, neo4j.time.Duration):
        return {"$duration": [value.months, value.days, value.seconds, value.nanoseconds]}
    if isinstance(value, neo4j.spatial.Point):
        return {"$point": [value.srid, *[float(c) for c in value]]}
    raise BackupFailed("neo4j", f"cannot export a property of type {type(value).__name__}")


_POINTS = {7203: neo4j.spatial.CartesianPoint, 9157: neo4j.spatial.CartesianPoint,
           4326: neo4j.spatial.WGS84Point, 4979: neo4j.spatial.WGS84Point}


def decode(value: Any) -> Any:
    """The driver value (a query parameter) for what `encode` wrote."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, body), *rest = value.items()
    if tag == "$float":
        return float(body)
    if tag == "$bytes":
        return bytearray(base64.b64decode(body))
    if tag == "$map":
        return {k: decode(v) for k, v in body.items()}
    if tag in ("$datetime", "$localdatetime"):
        parsed = neo4j.time.DateTime.from_iso_format(body)
        zone = dict(rest).get("zone")
        if zone:
            from zoneinfo import ZoneInfo

            parsed = parsed.astimezone(ZoneInfo(zone))
        return parsed
    if tag == "$date":
        return neo4j.time.Date.from_iso_format(body)
    if tag in ("$time", "$localtime"):
        return neo4j.time.Time.from_iso_format(body)
    if tag == "$duration":
        months, days, seconds, nanoseconds = body
        return neo4j.time.Duration(months=months, days=days, seconds=seconds, nanoseconds=nanoseconds)
    if tag == "$point":
        srid, *coords = body
        return _POINTS[srid](coords)
    raise RestoreFailed("neo4j", f"unknown value tag {tag!r} in the export")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def node_hash(labels: list[str], props: dict[str, Any]) -> str:
    """sha256 of a node's content (labels as a set, encoded properties); its id plays no part."""
    return hashlib.sha256(_canonical(["n", sorted(labels), props])).hexdigest()


def rel_hash(rtype: str, start: str, end: str, props: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(["r", rtype, start, end, props])).hexdigest()


@dataclass
class Digest:
    """Order-independent content digest plus the counts per label and type, fed one record at a time."""
    nodes: int = 0
    relationships: int = 0
    node_sum: int = 0
    rel_sum: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)

    def node(self, labels: list[str], props: dict[str, Any]) -> str:
        digest = node_hash(labels, props)
        self.nodes += 1
        self.node_sum = (self.node_sum + int(digest, 16)) % _MOD
        for label in labels:
            self.labels[label] = self.labels.get(label, 0) + 1
        return digest

    def rel(self, rtype: str, start: str, end: str, props: dict[str, Any]) -> None:
        self.relationships += 1
        self.rel_sum = (self.rel_sum + int(rel_hash(rtype, start, end, props), 16)) % _MOD
        self.types[rtype] = self.types.get(rtype, 0) + 1

    def hexdigest(self) -> str:
        text = f"{self.nodes}:{self.relationships}:{self.node_sum:064x}:{self.rel_sum:064x}"
        return hashlib.sha256(text.encode()).hexdigest()

    def inventory(self) -> Inventory:
        return {"labels": dict(sorted(self.labels.items())), "relationships": dict(sorted(self.types.items()))}


# --- Bolt ----------------------------------------------------------------------------------


class Bolt:
    """One driver for the export or the restore; every failure becomes a one-line store error."""

    def __init__(self, settings: Neo4jSettings, failure: type[Exception] = BackupFailed) -> None:
        self.settings, self.failure = settings, failure
        auth = (settings.user, settings.password) if settings.password else None
        self.driver = GraphDatabase.driver(settings.uri, auth=auth, connection_timeout=5.0,
                                           connection_acquisition_timeout=30.0)

    def close(self) -> None:
        self.driver.close()

    def _error(self, exc: BaseException, doing: str) -> Exception:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        where = f"Bolt at {redact_url(self.settings.uri)} (database '{self.settings.database}')"
        if isinstance(exc, (DriverError, OSError)) and not isinstance(exc, Neo4jError):
            return StoreUnavailable("neo4j", f"{where} did not answer while {doing}: {text}")
        return self.failure("neo4j", f"{doing}: {type(exc).__name__}: {text}")

    def stream(self, cypher: str, doing: str) -> Iterator[neo4j.Record]:
        """Records of one auto-commit query, pulled FETCH at a time."""
        try:
            with self.driver.session(database=self.settings.database, fetch_size=FETCH) as session:
                yield from session.run(cypher)
        except (Neo4jError, DriverError, OSError, ValueError) as exc:
            raise self._error(exc, doing) from None

    def run(self, cypher: str, doing: str, **params: Any) -> list[neo4j.Record]:
        """One auto-commit query (FalkorDB's Bolt front end drops writes in explicit transactions)."""
        return list(self.stream_params(cypher, doing, params))

    def stream_params(self, cypher: str, doing: str, params: dict[str, Any]) -> Iterator[neo4j.Record]:
        try:
            with self.driver.session(database=self.settings.database, fetch_size=FETCH) as session:
                yield from session.run(cypher, params)
        except (Neo4jError, DriverError, OSError, ValueError) as exc:
            raise self._error(exc, doing) from None

    def supported(self, cypher: str) -> list[neo4j.Record] | None:
        """The records, or None when the server refuses the query (an older or different Cypher)."""
        try:
            with self.driver.session(database=self.settings.database) as session:
                return list(session.run(cypher))
        except Neo4jError:
            return None
        except (DriverError, OSError) as exc:
            raise self._error(exc, "reading the schema") from None


@contextmanager
def bolt(settings: Neo4jSettings, failure: type[Exception] = BackupFailed) -> Iterator[Bolt]:
    connection = Bolt(settings, failure)
    try:
        yield connection
    finally:
        connection.close()


def id_expression(db: Bolt) -> str:
    """elementId() on Neo4j 5; id() where the server has no elementId (older or other Cypher servers)."""
    return "elementId({})" if db.supported("MATCH (n) RETURN elementId(n) LIMIT 1") is not None \
        else "toString(id({}))"


def schema_statements(db: Bolt) -> tuple[str, list[dict[str, str]], list[str]]:
    """(source, [{kind, statement}], notes): constraints first, then the indexes they do not own."""
    constraints = db.supported("SHOW CONSTRAINTS YIELD name, createStatement")
    indexes = db.supported("SHOW INDEXES YIELD name, type, owningConstraint, createStatement")
    if indexes is not None:
        out = [{"kind": "constraint", "statement": str(r["createStatement"])} for r in constraints or []]
        notes = [] if constraints is not None else ["SHOW CONSTRAINTS is not supported: constraints not exported"]
        for r in indexes:
            if r["type"] == "LOOKUP":
                notes.append(f"LOOKUP index {r['name']} not exported (every Neo4j 5 database has them)")
            elif r["owningConstraint"] is None:
                out.append({"kind": "index", "statement": str(r["createStatement"])})
        return "SHOW CONSTRAINTS / SHOW INDEXES", out, notes
    legacy = db.supported("CALL db.indexes() YIELD label, properties, types, entitytype "
                          "RETURN label, properties, types, entitytype")
    if legacy is None:
        return "none", [], ["the server answers neither SHOW INDEXES nor db.indexes(): no schema exported"]
    out, notes = [], []
    for r in legacy:
        for prop in r["properties"]:
            kinds = (r["types"] or {}).get(prop) or []
            if "RANGE" not in kinds:
                notes.append(f"{'/'.join(kinds) or 'unknown'} index on {r['label']}.{prop} not exported")
                continue
            target = f"(n:{ident(r['label'])})" if r["entitytype"] == "NODE" else f"()-[n:{ident(r['label'])}]-()"
            out.append({"kind": "index", "statement": f"CREATE INDEX FOR {target} ON (n.{ident(prop)})"})
    return "db.indexes()", sorted(out, key=lambda s: s["statement"]), notes


def ident(name: str) -> str:
    return "`" + str(name).replace("`", "``") + "`"


def live_digest(db: Bolt, progress: Progress = no_progress) -> Digest:
    """The digest of the graph as it is now (what a restore must reproduce)."""
    digest = Digest()
    for record in db.stream(NODES_QUERY.format(id="null"), "reading the nodes"):
        digest.node(list(record["labels"]), {k: encode(v) for k, v in record["props"].items()})
    progress("digest of the restored graph: nodes read", digest.nodes, None)
    for record in db.stream(RELS_QUERY.format(start="null", end="null"), "reading the relationships"):
        start = node_hash(list(record["al"]), {k: encode(v) for k, v in record["ap"].items()})
        end = node_hash(list(record["bl"]), {k: encode(v) for k, v in record["bp"].items()})
        digest.rel(str(record["type"]), start, end, {k: encode(v) for k, v in record["props"].items()})
    return digest


# --- the artifact ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    record: FileRecord
    digest: Digest
    schema_source: str
    schema: int
    notes: list[str]


def export_graph(db: Bolt, into: Path, progress: Progress = no_progress) -> Exported:
    """Stream the whole graph into `into/EXPORT_FILE` (hashed while written; the catalog fsyncs/commits)."""
    ids = id_expression(db)
    source, schema, notes = schema_statements(db)
    digest = Digest()
    with HashingWriter(into / EXPORT_FILE) as raw, \
            zstandard.ZstdCompressor(level=6, write_checksum=True).stream_writer(raw, closefd=False) as zst, \
            io.BufferedWriter(_Sink(zst), CHUNK) as out:
        line = _writer(out)
        line({"t": "header", "format": FORMAT, "database": db.settings.database,
              "id_kind": "elementId" if ids.startswith("elementId") else "id"})
        for statement in schema:
            line({"t": "schema", **statement})
        for record in db.stream(NODES_QUERY.format(id=ids.format("n")), "exporting the nodes"):
            labels, props = list(record["labels"]), {k: encode(v) for k, v in record["props"].items()}
            digest.node(labels, props)
            line({"t": "node", "id": record["id"], "labels": labels, "props": props})
            if digest.nodes % 10000 == 0:
                progress("exporting nodes", digest.nodes, None)
        for record in db.stream(RELS_QUERY.format(start=ids.format("a"), end=ids.format("b")),
                                "exporting the relationships"):
            props = {k: encode(v) for k, v in record["props"].items()}
            start = node_hash(list(record["al"]), {k: encode(v) for k, v in record["ap"].items()})
            end = node_hash(list(record["bl"]), {k: encode(v) for k, v in record["bp"].items()})
            digest.rel(str(record["type"]), start, end, props)
            line({"t": "rel", "type": record["type"], "start": record["start"], "end": record["end"],
                  "sh": start, "eh": end, "props": props})
            if digest.relationships % 10000 == 0:
                progress("exporting relationships", digest.relationships, None)
        line({"t": "end", "nodes": digest.nodes, "relationships": digest.relationships,
              "digest": digest.hexdigest()})
    return Exported(FileRecord(EXPORT_FILE, raw.bytes, raw.sha256), digest, source, len(schema), notes)


class _Sink(io.RawIOBase):
    """Lets io.BufferedWriter batch small lines into large zstd writes."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.target.write(bytes(data))
        return len(data)


def _writer(out: IO[bytes]) -> Callable[[dict[str, Any]], None]:
    def line(obj: dict[str, Any]) -> None:
        out.write(_canonical(obj) + b"\n")
    return line


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of an export file, streamed (zstd checks its content checksum at the end)."""
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True) as zst, \
            io.TextIOWrapper(io.BufferedReader(zst, CHUNK), encoding="utf-8") as text:
        for line in text:
            yield json.loads(line)


def check_file(path: Path) -> tuple[Digest, list[str]]:
    """(digest recomputed from the records, problems): the whole file, streamed."""
    digest, problems = Digest(), []
    end: dict[str, Any] = {}
    header_seen = False
    try:
        for rec in read_records(path):
            kind = rec.get("t")
            if end:
                problems.append("records after the end record")
                break
            if kind == "header":
                header_seen = rec.get("format") == FORMAT
            elif kind == "node":
                digest.node(rec["labels"], rec["props"])
            elif kind == "rel":
                digest.rel(rec["type"], rec["sh"], rec["eh"], rec["props"])
            elif kind == "end":
                end = rec
            elif kind != "schema":
                problems.append(f"unknown record type {kind!r}")
                break
    except (OSError, ValueError, KeyError, TypeError, zstandard.ZstdError) as exc:
        problems.append(f"the export is damaged: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if not header_seen and not problems:
        problems.append(f"no format {FORMAT} header record")
    if not end and not problems:
        problems.append("the export is truncated (no end record)")
    elif end and end.get("digest") != digest.hexdigest():
        problems.append("the records do not add up to the digest in the end record")
    return digest, problems


# --- restore ---------------------------------------------------------------------------------


def empty_graph(db: Bolt, progress: Progress = no_progress) -> None:
    """Delete every node and relationship batch by batch, then every constraint and index."""
    while int(db.run("MATCH (n) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c", "emptying the graph")
              [0]["c"]):
        progress("emptying the target graph", 0, None)
    for record in db.supported("SHOW CONSTRAINTS YIELD name") or []:
        db.run(f"DROP CONSTRAINT {ident(record['name'])}", "dropping a constraint")
    named = db.supported("SHOW INDEXES YIELD name, type, owningConstraint")
    if named is not None:
        for record in named:
            if record["type"] != "LOOKUP" and record["owningConstraint"] is None:
                db.run(f"DROP INDEX {ident(record['name'])}", "dropping an index")
        return
    for record in db.supported("CALL db.indexes() YIELD label, properties, entitytype "
                               "RETURN label, properties, entitytype") or []:
        for prop in record["properties"]:
            target = f"(n:{ident(record['label'])})" if record["entitytype"] == "NODE" \
                else f"()-[n:{ident(record['label'])}]-()"
            db.run(f"DROP INDEX FOR {target} ON (n.{ident(prop)})", "dropping an index")


def restore_graph(db: Bolt, path: Path, progress: Progress = no_progress) -> Digest:
    """Load the export into the (emptied) graph; returns the digest of what was loaded from the file."""
    for rec in read_records(path):
        if rec["t"] == "schema":
            db.run(rec["statement"], f"recreating the schema ({rec['statement'][:80]})")
        elif rec["t"] == "node":
            break
    _first_that_works(db, [f"CREATE INDEX {TMP_INDEX} IF NOT EXISTS FOR (n:{TMP_LABEL}) ON (n.{TMP_ID})",
                           f"CREATE INDEX FOR (n:{TMP_LABEL}) ON (n.{TMP_ID})"], "indexing the restore ids")
    loaded = Digest()
    limit = int(os.environ.get("CB_NEO4J_BATCH_BYTES") or BATCH_BYTES)
    nodes: dict[tuple[str, ...], _Batch] = {}
    rels: dict[str, _Batch] = {}
    for rec in read_records(path):
        if rec["t"] == "node":
            labels = tuple(sorted(rec["labels"]))
            loaded.node(rec["labels"], rec["props"])
            row = {"i": rec["id"], "p": {k: decode(v) for k, v in rec["props"].items()}}
            if nodes.setdefault(labels, _Batch()).add(row, rec, limit):
                _create_nodes(db, labels, nodes.pop(labels).rows)
        elif rec["t"] == "rel":
            for labels in list(nodes):  # every node is in before the first relationship
                _create_nodes(db, labels, nodes.pop(labels).rows)
            loaded.rel(rec["type"], rec["sh"], rec["eh"], rec["props"])
            row = {"s": rec["start"], "e": rec["end"], "p": {k: decode(v) for k, v in rec["props"].items()}}
            if rels.setdefault(rec["type"], _Batch()).add(row, rec, limit):
                _create_rels(db, rec["type"], rels.pop(rec["type"]).rows)
            if loaded.relationships % 10000 == 0:
                progress("restoring relationships", loaded.relationships, None)
    for labels in list(nodes):
        _create_nodes(db, labels, nodes.pop(labels).rows)
    for rtype in list(rels):
        _create_rels(db, rtype, rels.pop(rtype).rows)
    progress("removing the restore ids", loaded.nodes, loaded.nodes)
    while int(db.run(f"MATCH (n:{TMP_LABEL}) WITH n LIMIT 10000 REMOVE n:{TMP_LABEL}, n.{TMP_ID} "
                     "RETURN count(*) AS c", "removing the restore ids")[0]["c"]):
        pass
    _first_that_works(db, [f"DROP INDEX {TMP_INDEX} IF EXISTS",
                           f"DROP INDEX FOR (n:{TMP_LABEL}) ON (n.{TMP_ID})"], "dropping the restore id index")
    return loaded


@dataclass
class _Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0

    def add(self, row: dict[str, Any], record: dict[str, Any], limit: int) -> bool:
        """Add a row; True when the batch is full (by rows or by the JSON size of its records)."""
        self.rows.append(row)
        self.size += len(_canonical(record))
        return len(self.rows) >= BATCH or self.size >= limit


def _first_that_works(db: Bolt, statements: list[str], doing: str) -> None:
    """Neo4j 5 syntax first, then the older form other Cypher servers know."""
    for statement in statements:
        if db.supported(statement) is not None:
            return
    raise RestoreFailed("neo4j", f"{doing}: the server accepted none of: {' | '.join(statements)}")


def _create_nodes(db: Bolt, labels: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    text = "".join(f":{ident(label)}" for label in labels)
    done = db.run(f"UNWIND $rows AS row CREATE (n{text}:{TMP_LABEL}) SET n = row.p, n.{TMP_ID} = row.i "
                  "RETURN count(n) AS c", "restoring nodes", rows=rows)
    if int(done[0]["c"]) != len(rows):
        raise RestoreFailed("neo4j", f"created {done[0]['c']} of {len(rows)} nodes labelled {list(labels)}")


def _create_rels(db: Bolt, rtype: str, rows: list[dict[str, Any]]) -> None:
    done = db.run(f"UNWIND $rows AS row MATCH (a:{TMP_LABEL} {{{TMP_ID}: row.s}}) "
                  f"MATCH (b:{TMP_LABEL} {{{TMP_ID}: row.e}}) CREATE (a)-[r:{ident(rtype)}]->(b) SET r = row.p "
                  "RETURN count(r) AS c", "restoring relationships", rows=rows)
    if int(done[0]["c"]) != len(rows):
        raise RestoreFailed("neo4j", f"created {done[0]['c']} of {len(rows)} {rtype} relationships: an endpoint "
                                     "is not in the export (the graph changed while it was exported)")
