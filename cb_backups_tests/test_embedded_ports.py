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
def occupied(port: int = 0) -> Iterator[int]:
    """Listen on 127.0.0.1:port, 0 for any (what another worker's server does after winning the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@contextmanager
def started_off_a_taken_port(embedded: EmbeddedPostgres | EmbeddedValkey) -> Iterator[None]:
    """Start `embedded` while its automatic port is taken; it must come up elsewhere."""
    taken = embedded.port
    try:
        with occupied(taken):
            embedded.start()
        assert embedded.port != taken
        yield
    finally:
        embedded.cleanup()


def test_postgres_auto_port_moves_when_taken() -> None:
    pg = EmbeddedPostgres(password="ports-pw")
    with started_off_a_taken_port(pg), pg.connect() as conn:
        assert f":{pg.port}/" in pg.url
        assert conn.execute("SELECT current_setting('port')::int").fetchone() == (pg.port,)


@pytest.mark.parametrize(("server", "name"), [(EmbeddedPostgres, "PostgreSQL"), (EmbeddedValkey, "Valkey")])
def test_an_explicit_port_taken_fails_clearly(server: type[EmbeddedPostgres | EmbeddedValkey], name: str) -> None:
    with occupied() as taken:
        embedded = server(password="ports-pw", port=taken)
        try:
            with pytest.raises(PortInUse, match=rf"{name} cannot listen on 127\.0\.0\.1:{taken}: .*already in use"):
                embedded.start()
            assert embedded.port == taken
        finally:
            embedded.cleanup()


def test_valkey_auto_port_moves_when_taken() -> None:
    vk = EmbeddedValkey(password="ports-pw")
    with started_off_a_taken_port(vk):
        client = vk.client()
        assert client.ping() is True
        assert int(client.config_get("port")["port"]) == vk.port


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
