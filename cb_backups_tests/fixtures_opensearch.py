"""OpenSearch test fixtures: the emulator (or a real server) and app-shaped seed data.

`CB_TEST_OPENSEARCH_URL` points the tests at a real OpenSearch 2.x instead of the emulator; then
`CB_TEST_OPENSEARCH_REPO` must name a folder inside that server's `path.repo` (as the server sees
it; default /mnt/backups). The tests create and delete only the indices named below plus
`drill_*` copies, and repositories named `cbtest*`, but a backup covers every user index, so use
a throwaway cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opensearchpy import OpenSearch, helpers

from cb_backups.config.settings import OpenSearchSettings

APP_INDICES = {
    "memories": {
        "settings": {"number_of_shards": 2, "number_of_replicas": 0},
        "mappings": {"properties": {"content": {"type": "text"}, "user_id": {"type": "keyword"},
                                    "app": {"type": "keyword"}, "created_at": {"type": "date"},
                                    "importance": {"type": "float"}}},
    },
    "code_symbols": {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"symbol": {"type": "keyword"}, "kind": {"type": "keyword"},
                                    "repo": {"type": "keyword"}, "path": {"type": "keyword"},
                                    "line": {"type": "integer"}, "signature": {"type": "text"}}},
    },
}
SEED_COUNTS = {"memories": 300, "code_symbols": 200}
DRILL_PREFIXES = ("drill_", "spec_")


def _docs(index: str, count: int) -> Iterator[dict]:
    for n in range(count):
        if index == "memories":
            source = {"content": f"memory {n}: the user prefers tabs over spaces", "user_id": f"u{n % 7}",
                      "app": ("cli", "ui", "mcp")[n % 3], "created_at": f"2026-11-{1 + n % 28:02d}T10:00:00Z",
                      "importance": (n % 10) / 10}
        else:
            source = {"symbol": f"func_{n}", "kind": ("function", "class", "method")[n % 3],
                      "repo": f"repo{n % 4}", "path": f"src/mod{n % 11}.py", "line": n + 1,
                      "signature": f"def func_{n}(a, b) -> int"}
        yield {"_index": index, "_id": f"{index}-{n}", "_source": source}


def wipe_app_indices(client: OpenSearch) -> None:
    names = list(APP_INDICES) + [p + i for p in DRILL_PREFIXES for i in APP_INDICES] + ["extra_index"]
    client.indices.delete(index=",".join(names), ignore_unavailable=True)


def seed_app_indices(client: OpenSearch) -> dict[str, int]:
    wipe_app_indices(client)
    for index, body in APP_INDICES.items():
        client.indices.create(index=index, body=body)
        helpers.bulk(client, _docs(index, SEED_COUNTS[index]), refresh=True)
    return dict(SEED_COUNTS)


@pytest.fixture(scope="session")
def opensearch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """{"url", "repo_root", "emulator"}: the emulator, unless CB_TEST_OPENSEARCH_URL is set."""
    url = os.environ.get("CB_TEST_OPENSEARCH_URL")
    if url:
        yield {"url": url, "repo_root": os.environ.get("CB_TEST_OPENSEARCH_REPO", "/mnt/backups"), "emulator": None}
        return
    from cb_backups_tests.emulators.opensearch import OpenSearchEmulator

    root = tmp_path_factory.mktemp("opensearch-path-repo")
    emulator = OpenSearchEmulator.start(path_repo=[root], data_dir=tmp_path_factory.mktemp("opensearch-data"))
    try:
        yield {"url": emulator.url, "repo_root": str(root), "emulator": emulator}
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def opensearch_url(opensearch_server: dict) -> str:
    return str(opensearch_server["url"])


@pytest.fixture(scope="session")
def opensearch_client(opensearch_url: str) -> Iterator[OpenSearch]:
    client = OpenSearch(hosts=[opensearch_url], timeout=60)
    yield client
    client.close()


@pytest.fixture
def opensearch_settings(opensearch_server: dict, opensearch_client: OpenSearch) -> Iterator[OpenSearchSettings]:
    """Settings with a repository of its own for this test (name and folder); unregistered afterwards."""
    tag = uuid.uuid4().hex[:8]
    location = str(Path(opensearch_server["repo_root"]) / f"cbtest-{tag}")
    settings = OpenSearchSettings(url=opensearch_server["url"], repository=f"cbtest{tag}", repository_type="fs",
                                  repository_settings={"location": location, "compress": True})
    yield settings
    listed = opensearch_client.snapshot.get(repository=settings.repository, snapshot="_all", ignore=404)
    for snap in listed.get("snapshots", []):
        opensearch_client.snapshot.delete(repository=settings.repository, snapshot=snap["snapshot"], ignore=404)
    opensearch_client.snapshot.delete_repository(repository=settings.repository, ignore=404)


@pytest.fixture
def seeded_opensearch(opensearch_client: OpenSearch) -> Iterator[dict[str, int]]:
    """Indices shaped like the app's ("memories", "code_symbols") with a few hundred documents."""
    counts = seed_app_indices(opensearch_client)
    yield counts
    wipe_app_indices(opensearch_client)
