"""Valkey round trips against a real Valkey 8 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from cb_backups.config.settings import ValkeySettings, load_settings
from cb_backups.core.catalog import Catalog
from cb_backups.core.errors import RestoreRefused, StoreUnavailable
from cb_backups.core.model import Target
from cb_backups.demo.embedded import EmbeddedValkey
from cb_backups.stores.registry import open_store
from cb_backups.stores.valkey import ValkeyStore

KEY = "2026-11-24-06:00"


def snapshot(client_for_db, dbs=(0, 1)) -> dict[tuple[int, bytes], tuple[str, object, int]]:  # type: ignore[no-untyped-def]
    """Every key: (type, value, ttl seconds)."""
    out = {}
    for db in dbs:
        client = client_for_db(db)
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            value = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                     "zset": lambda k, c=client: c.zrange(k, 0, -1, withscores=True),
                     "list": lambda k, c=client: c.lrange(k, 0, -1)}[kind](key)
            out[(db, key)] = (kind, value, client.ttl(key))
    return out


@pytest.fixture()
def store(cb_env: dict[str, str]) -> ValkeyStore:
    return open_store("valkey", load_settings())  # type: ignore[return-value]


def test_round_trip_every_key_type_value_and_ttl(store: ValkeyStore, backup_dir: Path, valkey_server) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(valkey_server.client)
    artifact = Catalog(backup_dir).write("valkey", KEY, store.backup)
    assert artifact.manifest.method == "bgsave+copy"
    assert store.verify(artifact).ok
    assert artifact.manifest.inventory["databases"]["db0"] == valkey_server.client(0).dbsize()
    with store.scratch_server(artifact) as port:
        restored = snapshot(lambda db: store.client(db=db, port=port))
    assert set(restored) == set(before)
    for key, (kind, value, ttl) in before.items():
        r_kind, r_value, r_ttl = restored[key]
        assert (r_kind, r_value) == (kind, value), key
        if ttl < 0:
            assert r_ttl == ttl
        else:
            assert abs(r_ttl - ttl) <= 5, key


def test_over_the_wire_when_the_data_dir_is_not_readable(valkey_server, backup_dir: Path) -> None:  # type: ignore[no-untyped-def]
    settings = ValkeySettings(host="127.0.0.1", port=valkey_server.port, password=valkey_server.password,
                              bin_dir=str(valkey_server.bin_dir))
    store = ValkeyStore(settings)
    artifact = Catalog(backup_dir).write("valkey", KEY, store.backup)
    assert artifact.manifest.method == "rdb-sync"
    assert store.verify(artifact).ok
    restored = store.restore(artifact, Target("scratch"))
    assert restored["databases"]["db0"] == artifact.manifest.inventory["databases"]["db0"]


def test_in_place_restore_places_the_rdb_and_restarts(tmp_path: Path) -> None:
    server = EmbeddedValkey(password="inplace-pw", appendonly=True).start()
    try:
        server.client(0).set("kept", "from-backup")
        argv = [*server.argv(), "--daemonize", "yes", "--pidfile", str(server.root / "valkey.pid")]
        settings = ValkeySettings(host="127.0.0.1", port=server.port, password="inplace-pw",
                                  data_dir=str(server.data_dir), bin_dir=str(server.bin_dir),
                                  start_command=tuple(argv))
        store = ValkeyStore(settings)
        artifact = Catalog(tmp_path / "b").write("valkey", KEY, store.backup)
        assert artifact.manifest.options["aof_included"]
        server.client(0).set("added", "after-backup")
        server.client(0).delete("kept")
        restored = store.restore(artifact, Target("in_place"))
        client = store.client()
        assert client.get("kept") == b"from-backup" and client.get("added") is None
        assert restored["databases"]["db0"] == 1
        client.shutdown(nosave=True)
    finally:
        server.cleanup()


def test_damaged_rdb_is_refused(store: ValkeyStore, backup_dir: Path) -> None:
    artifact = Catalog(backup_dir).write("valkey", KEY, store.backup)
    path = artifact.path("dump.rdb")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = store.verify(artifact)
    assert not result.ok and "valkey-check-rdb" in result.problems[0]
    with pytest.raises(RestoreRefused):
        store.restore(artifact, Target("scratch"))


def test_unreachable_server_is_a_clear_error(backup_dir: Path) -> None:
    store = open_store("valkey", load_settings({"CB_VALKEY_URL": "valkey://127.0.0.1:1",
                                                "CB_VALKEY_PASSWORD": "hidden-pw"}))
    with pytest.raises(StoreUnavailable) as info:
        Catalog(backup_dir).write("valkey", KEY, store.backup)
    assert "127.0.0.1:1" in str(info.value) and "hidden-pw" not in str(info.value)
