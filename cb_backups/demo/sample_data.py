"""Sample data shaped like coding-brain, for the demo, the tests and the benchmarks.

`scale` is roughly the number of memories; `postgres_rows_for_bytes` turns a
target size (e.g. 200 MB) into a scale for the benchmarks.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

VECTOR_DIM = 384
# one memory row: 384 float4 (~1.5 KiB as vector) + text + metadata
APPROX_BYTES_PER_MEMORY = 2600

POSTGRES_SCHEMA = f"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS users (
    id uuid PRIMARY KEY, email text UNIQUE NOT NULL, name text, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS apps (
    id uuid PRIMARY KEY, owner_id uuid REFERENCES users(id), name text NOT NULL, metadata jsonb,
    created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS memories (
    id uuid PRIMARY KEY, user_id uuid REFERENCES users(id), app_id uuid REFERENCES apps(id),
    content text NOT NULL, metadata jsonb, embedding vector({VECTOR_DIM}), created_at timestamptz DEFAULT now());
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops);
CREATE TABLE IF NOT EXISTS feedback (
    id bigserial PRIMARY KEY, memory_id uuid REFERENCES memories(id), rating int, comment text);
CREATE TABLE IF NOT EXISTS experiments (
    id bigserial PRIMARY KEY, name text, variant text, started_at timestamptz DEFAULT now(), params jsonb);
"""

_WORDS = (
    "function", "class", "module", "import", "graph", "vector", "search", "memory", "cache", "session",
    "token", "index", "query", "commit", "branch", "merge", "deploy", "backup", "restore", "verify",
    "schedule", "partition", "asset", "check", "sensor",
)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _vector(rng: random.Random) -> str:
    return "[" + ",".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(VECTOR_DIM)) + "]"


def postgres_rows_for_bytes(target_bytes: int) -> int:
    return max(10, target_bytes // APPROX_BYTES_PER_MEMORY)


def load_postgres(conn: Any, scale: int = 200, seed: int = 7, hnsw: bool = True) -> dict[str, int]:
    """Create the schema and insert `scale` memories (+ users, apps, feedback, experiments).

    `conn` is an autocommit psycopg connection. Uses COPY, so large scales stream.
    Returns the row counts inserted per table.
    """
    rng = random.Random(seed)
    schema = POSTGRES_SCHEMA if hnsw else "\n".join(
        line for line in POSTGRES_SCHEMA.splitlines() if "USING hnsw" not in line)
    conn.execute(schema)
    n_users = max(3, scale // 50)
    n_apps = max(2, scale // 100)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(n_users)]
    apps = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(n_apps)]
    with conn.cursor() as cur:
        with cur.copy("COPY users (id, email, name) FROM STDIN") as copy:
            for i, uid in enumerate(users):
                copy.write_row((uid, f"user{i}-{uid.hex[:6]}@example.com", f"User {i}"))
        with cur.copy("COPY apps (id, owner_id, name, metadata) FROM STDIN") as copy:
            for i, aid in enumerate(apps):
                copy.write_row((aid, users[i % n_users], f"app-{i}", '{"tier": "free"}'))
        memory_ids = []
        with cur.copy("COPY memories (id, user_id, app_id, content, metadata, embedding) FROM STDIN") as copy:
            for _ in range(scale):
                mid = uuid.UUID(int=rng.getrandbits(128))
                memory_ids.append(mid)
                copy.write_row((mid, rng.choice(users), rng.choice(apps), _text(rng, 30),
                                f'{{"source": "{rng.choice(_WORDS)}"}}', _vector(rng)))
        n_feedback = scale // 4
        with cur.copy("COPY feedback (memory_id, rating, comment) FROM STDIN") as copy:
            for _ in range(n_feedback):
                copy.write_row((rng.choice(memory_ids), rng.randint(1, 5), _text(rng, 5)))
        n_experiments = max(2, scale // 100)
        with cur.copy("COPY experiments (name, variant, params) FROM STDIN") as copy:
            for i in range(n_experiments):
                copy.write_row((f"exp-{i}", rng.choice("ab"), '{"k": 5}'))
    conn.execute("ANALYZE")
    return {"users": n_users, "apps": n_apps, "memories": scale, "feedback": n_feedback, "experiments": n_experiments}


def load_valkey(client_for_db: Any, scale: int = 200, seed: int = 7) -> dict[int, int]:
    """Sessions (hashes with TTL), caches (strings), rate limits, DPoP tokens (sets, sorted sets).

    `client_for_db(db)` returns a valkey client for logical database `db`. Returns keys per db.
    """
    rng = random.Random(seed)
    now = int(time.time())
    sessions = client_for_db(0).pipeline(transaction=False)
    for i in range(scale):
        key = f"session:{uuid.UUID(int=rng.getrandbits(128)).hex}"
        sessions.hset(key, mapping={"user": f"user{i % 17}", "app": f"app-{i % 5}", "issued": str(now)})
        sessions.expire(key, 3600 + rng.randint(0, 3600))
    for i in range(scale):
        sessions.set(f"cache:memory:{i}", _text(rng, 12).encode(), ex=7200 if i % 3 == 0 else None)
    sessions.execute()
    limits = client_for_db(1).pipeline(transaction=False)
    for i in range(max(5, scale // 4)):
        limits.set(f"ratelimit:user{i}", rng.randint(0, 100), ex=60)
    for i in range(max(5, scale // 4)):
        limits.sadd(f"dpop:jti:{i}", *[uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(3)])
        limits.expire(f"dpop:jti:{i}", 300)
    limits.zadd("dpop:replay", {uuid.UUID(int=rng.getrandbits(128)).hex: now + j for j in range(max(5, scale // 2))})
    limits.rpush("queue:reindex", *[f"repo-{j}" for j in range(10)])
    limits.execute()
    return {db: int(client_for_db(db).dbsize()) for db in (0, 1)}


# --- Qdrant: the application's hybrid-search collection ------------------------------------------------
# named dense vectors (text and code embeddings) plus a sparse (BM25-style) vector, payload indexes for
# the filters the application runs, and an alias the application queries through (so a collection can be
# rebuilt and switched without a deploy)
QDRANT_DENSE = {"text": 384, "code": 256}
QDRANT_SPARSE = "keywords"
QDRANT_INDEXES: dict[str, Any] = {
    "user_id": {"type": "keyword", "is_tenant": True},
    "app": "keyword",
    "created_at": "datetime",
    "content": {"type": "text", "tokenizer": "word", "lowercase": True},
}


def qdrant_points(count: int, seed: int = 7, start: int = 0, dense: dict[str, int] | None = None) -> list[Any]:
    """`count` memories as qdrant-client PointStructs with every named dense vector and the sparse one."""
    from qdrant_client import models as qm

    rng = random.Random(seed)
    dims = dense or QDRANT_DENSE
    points = []
    for n in range(start, start + count):
        indices = sorted(rng.sample(range(30_000), 12))
        vectors: dict[str, Any] = {name: [round(rng.uniform(-1, 1), 5) for _ in range(size)]
                                   for name, size in dims.items()}
        vectors[QDRANT_SPARSE] = qm.SparseVector(indices=indices, values=[round(rng.uniform(0.1, 3), 4)
                                                                          for _ in indices])
        payload = {"content": f"memory {n}: {_text(rng, 8)}", "user_id": f"u{n % 7}",
                   "app": ("cli", "ui", "mcp")[n % 3], "created_at": f"2026-11-{1 + n % 28:02d}T10:00:00Z"}
        points.append(qm.PointStruct(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), vector=vectors,
                                     payload=payload))
    return points


def load_qdrant(client: Any, collection: str = "memories_v1", alias: str | None = "memories", scale: int = 200,
                seed: int = 7, dense: dict[str, int] | None = None) -> int:
    """Create the application's collection (named dense + sparse vectors, payload indexes, scalar
    quantization), upsert `scale` memories in batches and point `alias` at it. Returns the points."""
    from qdrant_client import models as qm

    dims = dense or QDRANT_DENSE
    client.create_collection(
        collection,
        vectors_config={name: qm.VectorParams(size=size, distance=qm.Distance.COSINE) for name, size in dims.items()},
        sparse_vectors_config={QDRANT_SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
        hnsw_config=qm.HnswConfigDiff(m=32, ef_construct=200),
        quantization_config=qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(
            type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)))
    for field, schema in QDRANT_INDEXES.items():
        client.create_payload_index(collection, field, field_schema=schema, wait=True)
    points = qdrant_points(scale, seed, dense=dims)
    for begin in range(0, len(points), 100):
        client.upsert(collection, points=points[begin:begin + 100], wait=True)
    if alias:
        client.update_collection_aliases(change_aliases_operations=[qm.CreateAliasOperation(
            create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias))])
    return len(points)


def add_wide_tables(conn: Any, copies: int) -> dict[str, int]:
    """A wide database for the parallel-dump benchmark: `copies` more tables shaped like memories
    (`memories_wide_<i>`), each a server-side copy of memories with new ids. Returns rows per table."""
    rows: dict[str, int] = {}
    for i in range(1, copies + 1):
        table = f"memories_wide_{i}"
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (LIKE memories INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        rows[table] = conn.execute(f"INSERT INTO {table} SELECT gen_random_uuid(), user_id, app_id, content, "
                                   "metadata, embedding, created_at FROM memories").rowcount
    conn.execute("ANALYZE")
    return rows
