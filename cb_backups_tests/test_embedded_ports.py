"""The embedded PostgreSQL and Valkey survive a taken port (the race between two pytest-xdist workers).

free_port() closes its socket before the server binds; here the test itself takes the chosen port in
between, so the race happens every time: an automatic port moves, an explicit one fails with one clear line.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cb_backups.core.net import PortInUse
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey


@contextmanager
def occupied(port: int) -> Iterator[None]:
    """Listen on 127.0.0.1:port (what another worker's server does after winning the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        yield


def test_postgres_auto_port_moves_when_taken() -> None:
    pg = EmbeddedPostgres(password="ports-pw")
    taken = pg.port
    try:
        with occupied(taken):
            pg.start()
        assert pg.port != taken
        assert f":{pg.port}/" in pg.url
        with pg.connect() as conn:
            assert conn.execute("SELECT current_setting('port')::int").fetchone() == (pg.port,)
    finally:
        pg.cleanup()


def test_postgres_explicit_port_taken_fails_clearly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        taken = int(sock.getsockname()[1])
        pg = EmbeddedPostgres(password="ports-pw", port=taken)
        try:
            with pytest.raises(PortInUse, match=rf"PostgreSQL cannot listen on 127\.0\.0\.1:{taken}: .*already in use"):
                pg.start()
            assert pg.port == taken
        finally:
            pg.cleanup()


def test_valkey_auto_port_moves_when_taken() -> None:
    vk = EmbeddedValkey(password="ports-pw")
    taken = vk.port
    try:
        with occupied(taken):
            vk.start()
        assert vk.port != taken
        client = vk.client()
        assert client.ping() is True
        assert int(client.config_get("port")["port"]) == vk.port
    finally:
        vk.cleanup()


def test_valkey_explicit_port_taken_fails_clearly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        taken = int(sock.getsockname()[1])
        vk = EmbeddedValkey(password="ports-pw", port=taken)
        try:
            with pytest.raises(PortInUse, match=rf"Valkey cannot listen on 127\.0\.0\.1:{taken}: .*already in use"):
                vk.start()
            assert vk.port == taken and vk.proc is None
        finally:
            vk.cleanup()


def test_neo4j_emulator_auto_port_moves_when_taken(tmp_path: Path) -> None:
    import neo4j

    from cb_backups_tests.emulators.neo4j import init_state, read_config, start_neo4j

    taken = int(init_state(tmp_path)["bolt_port"])
    with occupied(taken):
        emulator = start_neo4j(tmp_path)
    try:
        moved = int(read_config(tmp_path)["bolt_port"])
        assert moved != taken and emulator.uri == f"bolt://127.0.0.1:{moved}"
        with neo4j.GraphDatabase.driver(emulator.uri, auth=None) as driver:
            assert driver.execute_query("RETURN 1 AS one").records[0]["one"] == 1
        emulator.stop()
        emulator.start()  # a restart keeps the moved port
        assert int(read_config(tmp_path)["bolt_port"]) == moved
    finally:
        emulator.stop()
