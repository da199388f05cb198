"""Qdrant test fixtures: the emulator (or a real server) and app-shaped seed data.

`CB_TEST_QDRANT_URL` (and `CB_TEST_QDRANT_API_KEY` when the server needs one) points the
tests at a real Qdrant 1.12 instead of the emulator. The tests create, change, restore and
drop only collections named `cbt<hex>_*` (plus `*__drill`-style scratch copies), but a
backup snapshots every collection on the server, so prefer a throwaway server.
"""

from __future__ import annotations

import math
import os
import random
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from cb_backups.config.settings import QdrantSettings
from cb_backups.demo.sample_data import load_qdrant
from cb_backups_tests.emulators.qdrant import QdrantEmulator

EMULATOR_API_KEY = "qd-T3st-k3y-5e1f0a"
# name -> (vector size, points): shaped like coding-brain's collections
APP_COLLECTIONS = {"memories": (384, 300), "code_embeddings": (256, 200)}


@pytest.fixture(scope="session")
def qdrant_emulator() -> Iterator[QdrantEmulator | None]:
    """The in-process emulator, or None when CB_TEST_QDRANT_URL names a real server."""
    if os.environ.get("CB_TEST_QDRANT_URL"):
        yield None
        return
    emulator = QdrantEmulator(api_key=EMULATOR_API_KEY)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def qdrant_url(qdrant_emulator: QdrantEmulator | None) -> str:
    if qdrant_emulator is None:
        return os.environ["CB_TEST_QDRANT_URL"].rstrip("/")
    return qdrant_emulator.url


@pytest.fixture(scope="session")
def qdrant_api_key(qdrant_emulator: QdrantEmulator | None) -> str | None:
    if qdrant_emulator is None:
        return os.environ.get("CB_TEST_QDRANT_API_KEY") or None
    return EMULATOR_API_KEY


@pytest.fixture(scope="session")
def qdrant_settings(qdrant_url: str, qdrant_api_key: str | None) -> QdrantSettings:
    return QdrantSettings(url=qdrant_url, api_key=qdrant_api_key)


def make_client(url: str, api_key: str | None) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # api key over plain http on loopback
        return QdrantClient(url=url, api_key=api_key, prefer_grpc=False, check_compatibility=False, timeout=60)


@pytest.fixture(scope="session")
def qdrant_client(qdrant_url: str, qdrant_api_key: str | None) -> Iterator[QdrantClient]:
    client = make_client(qdrant_url, qdrant_api_key)
    yield client
    client.close()


def unit_vector(rng: random.Random, size: int) -> list[float]:
    values = [rng.uniform(-1, 1) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def app_points(kind: str, size: int, count: int, seed: int, start: int = 0) -> list[qm.PointStruct]:
    rng = random.Random(seed)
    points = []
    for n in range(start, start + count):
        if kind == "memories":
            payload = {"content": f"memory {n}: the user prefers tabs over spaces", "user_id": f"u{n % 7}",
                       "app": ("cli", "ui", "mcp")[n % 3], "created_at": f"2026-11-{1 + n % 28:02d}T10:00:00Z"}
            point_id: int | str = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            payload = {"symbol": f"func_{n}", "repo": f"repo{n % 4}", "path": f"src/mod{n % 11}.py", "line": n + 1}
            point_id = n + 1
        points.append(qm.PointStruct(id=point_id, vector=unit_vector(rng, size), payload=payload))
    return points


def seed_collection(client: QdrantClient, name: str, kind: str, size: int, count: int, seed: int = 7) -> None:
    client.create_collection(name, vectors_config=qm.VectorParams(size=size, distance=qm.Distance.COSINE))
    points = app_points(kind, size, count, seed)
    for start in range(0, len(points), 100):
        client.upsert(name, points=points[start:start + 100], wait=True)


@dataclass
class SeededCollections:
    client: QdrantClient
    names: dict[str, str]  # app name -> collection name on the server
    counts: dict[str, int]  # collection name -> points

    def name(self, app_name: str) -> str:
        return self.names[app_name]


@pytest.fixture()
def qdrant_seeded(qdrant_client: QdrantClient) -> Iterator[SeededCollections]:
    """App-shaped collections with a unique prefix; dropped (with scratch copies) afterwards."""
    prefix = f"cbt{uuid.uuid4().hex[:8]}_"
    names = {app: prefix + app for app in APP_COLLECTIONS}
    for app, (size, count) in APP_COLLECTIONS.items():
        seed_collection(qdrant_client, names[app], app, size, count)
    seeded = SeededCollections(qdrant_client, names, {names[a]: c for a, (_, c) in APP_COLLECTIONS.items()})
    try:
        yield seeded
    finally:
        for collection in qdrant_client.get_collections().collections:
            if collection.name.startswith(prefix):
                qdrant_client.delete_collection(collection.name)


@dataclass
class HybridCollection:
    """The application's hybrid-search collection (sample_data.load_qdrant) and its alias."""

    client: QdrantClient
    collection: str
    alias: str
    count: int


@pytest.fixture()
def qdrant_hybrid(qdrant_client: QdrantClient) -> Iterator[HybridCollection]:
    """Named dense + sparse vectors, payload indexes, quantization, an alias; dropped afterwards."""
    prefix = f"cbt{uuid.uuid4().hex[:8]}_"
    count = load_qdrant(qdrant_client, prefix + "memories_v1", prefix + "memories", scale=60,
                        dense={"text": 32, "code": 16})
    try:
        yield HybridCollection(qdrant_client, prefix + "memories_v1", prefix + "memories", count)
    finally:
        for collection in qdrant_client.get_collections().collections:
            if collection.name.startswith(prefix):
                qdrant_client.delete_collection(collection.name)
