"""Client-side encryption (age): real PostgreSQL and Valkey, the Qdrant emulator, SeaweedFS, the `age` tool.

Each test checks real outcomes: the ciphertext on disk holds no plaintext canary, it opens with the
standard `age` binary, restores bring the rows/keys/points back, and a wrong key touches nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
from psycopg import sql

from cb_backups.checks.slot import evaluate_slot
from cb_backups.config.settings import load_settings
from cb_backups.core.catalog import Catalog, checksum_problems
from cb_backups.core.crypto import (
    PAYLOAD_CHUNK,
    DecryptError,
    StreamEncryptor,
    encrypt_stream,
    encrypting,
    fingerprint,
    generate,
)
from cb_backups.core.fileio import HashingWriter, is_disk_full, sha256_file
from cb_backups.core.model import Artifact, Target
from cb_backups.demo.embedded import EmbeddedPostgres, EmbeddedValkey
from cb_backups.offsite import s3 as offsite
from cb_backups.restore.drill import run_drill
from cb_backups.restore.execute import execute_restore
from cb_backups.restore.plan import plan_restore
from cb_backups.stores.registry import open_store
from cb_backups_tests.conftest import PG_PASSWORD
from cb_backups_tests.databases import databases, own_database
from cb_backups_tests.fixtures_qdrant import SeededCollections, app_points

ROOT = Path(__file__).resolve().parent.parent
CANARY = "CANARY-plaintext-4d1f9c"  # sample data that must never be readable in the backup folder
AGE = shutil.which("age")


def key_pair(folder: Path, name: str) -> tuple[Path, str]:
    """An identity file (age-keygen's format) and its public key."""
    identity, public = generate()
    path = folder / f"{name}.txt"
    path.write_text(f"# public key: {public}\n{identity}\n")
    path.chmod(0o600)
    return path, public


def encrypt_to(monkeypatch: pytest.MonkeyPatch, public: str, identities: list[Path] | None) -> None:
    monkeypatch.setenv("CB_AGE_RECIPIENTS", public)
    if identities:
        monkeypatch.setenv("CB_AGE_IDENTITY_FILE", ",".join(str(p) for p in identities))
    else:
        monkeypatch.delenv("CB_AGE_IDENTITY_FILE", raising=False)


def backup(store: str, key: str) -> Artifact:
    settings = load_settings()
    return settings.catalog().write(store, key, open_store(store, settings).backup)


def assert_no_plaintext(backup_dir: Path, *secrets: str) -> None:
    """No file under the backup folder holds the canary (or any given text): the dumps are ciphertext."""
    needles = [CANARY.encode(), *(s.encode() for s in secrets)]
    for path in backup_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()  # test backups are small
            assert not [n for n in needles if n in data], path


def assert_encrypted(artifact: Artifact, public: str) -> None:
    files = artifact.manifest.files
    assert files and all(f.name.endswith(".age") and f.encrypted for f in files)
    assert all(f.recipients == (fingerprint(public),) for f in files)
    for f in files:
        assert (artifact.path(f.name).stat().st_mode & 0o777) == 0o600
        assert artifact.path(f.name).read_bytes()[:22] == b"age-encryption.org/v1\n"
    assert checksum_problems(artifact) == []  # ciphertext sha256 + bytes, checked without a key
    text = (artifact.directory / "manifest.json").read_text()
    assert public not in text and "AGE-SECRET-KEY" not in text


def no_decrypted_leftovers(backup_dir: Path) -> None:
    assert not [p for p in backup_dir.iterdir() if p.name.startswith(".decrypted-")]


def memories(pg: EmbeddedPostgres, db: str) -> int:
    with pg.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM memories").fetchone()[0])  # type: ignore[index]


@pytest.fixture()
def pg_db(cb_env: dict[str, str], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    def canary(conn: object) -> None:
        conn.execute("INSERT INTO memories (id, user_id, app_id, content) SELECT gen_random_uuid(), user_id, "  # type: ignore[attr-defined]
                     "app_id, %s FROM memories LIMIT 1", (CANARY,))

    with own_database(pg_server, monkeypatch, "cbenc", 50, setup=canary) as db:
        yield db


def add_memories(pg: EmbeddedPostgres, db: str, n: int) -> None:
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO memories (id, user_id, app_id, content) SELECT gen_random_uuid(), user_id, app_id, "
                     "'after' FROM memories LIMIT %s", (n,))


# --- the age writer itself (crypto.StreamEncryptor: age's format over OpenSSL's ChaCha20-Poly1305) ----------

# Around age's 64 KiB STREAM chunk: empty, one byte, just under/at/over a chunk, several chunks.
SIZES = [0, 1, PAYLOAD_CHUNK - 1, PAYLOAD_CHUNK, PAYLOAD_CHUNK + 1, 3 * PAYLOAD_CHUNK, 3 * PAYLOAD_CHUNK + 5]


def encrypted(data: bytes, recipients: list[str], step: int) -> tuple[bytes, str, int]:
    out = io.BytesIO()
    encryptor = StreamEncryptor(out, recipients)
    reused = bytearray(step)  # one buffer refilled per write, as adapters do: nothing may keep a view of it
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        reused[:len(piece)] = piece
        encryptor.write(memoryview(reused)[:len(piece)])
    digest, size = encryptor.close()
    return out.getvalue(), digest, size


@pytest.mark.parametrize("size", SIZES)
def test_stream_encryptor_output_opens_with_pyrage_and_the_age_binary(size: int, tmp_path: Path) -> None:
    (first, first_public), (second, second_public) = generate(), generate()
    data = os.urandom(size)
    for step in (4096, PAYLOAD_CHUNK, 70_001):  # writes smaller than, equal to and larger than a chunk
        ciphertext, digest, length = encrypted(data, [first_public, second_public], step)
        check_opens(data, ciphertext, digest, length, [first, second], tmp_path)


def check_opens(data: bytes, ciphertext: bytes, digest: str, length: int, identities: list[str],
                tmp_path: Path) -> None:
    assert (digest, length) == (hashlib.sha256(ciphertext).hexdigest(), len(ciphertext))
    assert ciphertext.startswith(b"age-encryption.org/v1\n") and ciphertext.count(b"\n-> X25519 ") == 2
    for identity in identities:  # each recipient opens it
        assert pyrage.decrypt(ciphertext, [pyrage.x25519.Identity.from_str(identity)]) == data
    if AGE is not None:
        (tmp_path / "key.txt").write_text(identities[-1] + "\n")
        (tmp_path / "f.age").write_bytes(ciphertext)
        done = subprocess.run([AGE, "-d", "-i", str(tmp_path / "key.txt"), str(tmp_path / "f.age")],
                              capture_output=True, timeout=60)
        assert done.returncode == 0 and done.stdout == data, done.stderr


def test_stream_encryptor_output_is_authenticated_end_to_end() -> None:
    identity, public = generate()
    key = [pyrage.x25519.Identity.from_str(identity)]
    data = os.urandom(3 * PAYLOAD_CHUNK + 5)
    ciphertext, _, _ = encrypted(data, [public], 4096)
    sealed = PAYLOAD_CHUNK + 16  # one chunk and its Poly1305 tag
    with pytest.raises(DecryptError):  # cut inside the last chunk: its tag fails
        pyrage.decrypt(ciphertext[:-10], key)
    with pytest.raises(DecryptError):  # the last chunk (5 bytes + tag) dropped whole: none is marked last
        pyrage.decrypt(ciphertext[:-21], key)
    flipped = bytearray(ciphertext)
    flipped[-sealed] ^= 1  # one bit in the payload
    with pytest.raises(DecryptError):
        pyrage.decrypt(bytes(flipped), key)
    header = bytearray(ciphertext)
    header[ciphertext.index(b"\n--- ") + 6] ^= 1  # one bit of the header's MAC
    with pytest.raises(DecryptError):
        pyrage.decrypt(bytes(header), key)
    with pytest.raises(DecryptError):
        pyrage.decrypt(ciphertext, [pyrage.x25519.Identity.from_str(generate()[0])])
    # two encryptions of the same plaintext share nothing (fresh file key, nonce and ephemeral share)
    again, _, _ = encrypted(data, [public], 4096)
    assert again[:64] != ciphertext[:64] and again[-64:] != ciphertext[-64:]
    out = io.BytesIO()
    digest, size = encrypt_stream(io.BytesIO(data), out, [public])
    assert (digest, size) == (hashlib.sha256(out.getvalue()).hexdigest(), len(out.getvalue()))
    assert pyrage.decrypt(out.getvalue(), key) == data


class FullDisk(io.RawIOBase):
    """A file that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        size = len(memoryview(data))  # type: ignore[arg-type]
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return size


def test_stream_encryptor_raises_the_writers_disk_full_and_never_hangs(tmp_path: Path) -> None:
    _, public = generate()
    encryptor = StreamEncryptor(FullDisk(3 * PAYLOAD_CHUNK), [public])
    with pytest.raises(OSError) as raised:  # on a later write or at close: the writer thread's own error
        for _ in range(64):
            encryptor.write(bytes(PAYLOAD_CHUNK * 4))
        encryptor.close()
    assert is_disk_full(raised.value)
    encryptor.abort()  # after the failure: returns, the writer thread is gone
    # the same through HashingWriter in an encrypting staging folder: the error leaves the block, no hang
    with encrypting(tmp_path, [public]), pytest.raises(RuntimeError, match="adapter failed"), \
            HashingWriter(tmp_path / "dump.bin") as out:
        out.write(bytes(3 * PAYLOAD_CHUNK))
        raise RuntimeError("adapter failed")
    assert not [t for t in threading.enumerate() if t.name.startswith("cb-age-")]


# --- PostgreSQL (real server) ----------------------------------------------------------------------------------


@pytest.mark.skipif(AGE is None, reason="the age binary (Debian package age, installed by .ci/run)")
def test_postgres_encrypted_backup_restores_and_opens_with_age_zstd_pg_restore(
        pg_db: str, pg_server: EmbeddedPostgres, backup_dir: Path, cb_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    identity = tmp_path / "key.txt"
    made = subprocess.run([sys.executable, "-m", "cb_backups.cli.app", "keys", "generate", "--output", str(identity)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (identity.stat().st_mode & 0o777) == 0o600
    public = next(w for w in made.stdout.split() if w.startswith("age1"))
    assert "AGE-SECRET-KEY" not in made.stdout
    encrypt_to(monkeypatch, public, [identity])
    artifact = backup("postgres", "2026-11-24-06:00")
    assert_encrypted(artifact, public)
    assert_no_plaintext(backup_dir, public)

    # The manual path of README's "Encryption" section, with the standard tools only.
    dump = artifact.path("postgres.dump.zst.age")
    manual = f"{pg_db}_manual"
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(manual)))
    bin_dir = Path(cb_env["CB_PG_BIN_DIR"])
    pipeline = (f'age -d -i "{identity}" "{dump}" | zstd -d | "{bin_dir}/pg_restore" --no-owner -h 127.0.0.1 '
                f'-p {pg_server.port} -U {pg_server.user} -d {manual}')
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PGPASSWORD": PG_PASSWORD})
    assert done.returncode == 0, done.stderr
    assert memories(pg_server, manual) == 51
    with pg_server.connect(manual) as conn:
        assert conn.execute("SELECT count(*) FROM memories WHERE content = %s", (CANARY,)).fetchone() == (1,)

    # The slot checks: with the identity the store's own check runs on the plaintext ...
    _, outcomes = evaluate_slot(open_store("postgres", load_settings()), load_settings().catalog(),
                                artifact.partition_key)
    assert all(o.passed for o in outcomes), outcomes
    # ... without it the ciphertext and its age header are still checked, and a flipped byte fails.
    monkeypatch.delenv("CB_AGE_IDENTITY_FILE")
    _, outcomes = evaluate_slot(open_store("postgres", load_settings()), load_settings().catalog(),
                                artifact.partition_key)
    assert all(o.passed for o in outcomes), outcomes
    monkeypatch.setenv("CB_AGE_IDENTITY_FILE", str(identity))

    # In place: the restore decrypts first, takes an (encrypted) safety backup, restores, recounts.
    add_memories(pg_server, pg_db, 7)
    result = execute_restore(plan_restore(load_settings(), "postgres", "latest", target=Target("in_place")))
    assert result.ok and memories(pg_server, pg_db) == 51
    safety = load_settings().catalog().list("postgres", kind="safety")
    assert len(safety) == 1 and safety[0].manifest.inventory["tables"]["memories"] == 58
    assert_encrypted(safety[0], public)
    assert_no_plaintext(backup_dir, public)
    no_decrypted_leftovers(backup_dir)


def test_wrong_or_missing_identity_is_one_line_and_touches_nothing(
        pg_db: str, pg_server: EmbeddedPostgres, backup_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, public = key_pair(tmp_path, "right")
    wrong, wrong_public = key_pair(tmp_path, "wrong")
    encrypt_to(monkeypatch, public, [wrong])
    backup("postgres", "2026-11-24-06:00")
    add_memories(pg_server, pg_db, 3)
    argv = [sys.executable, "-m", "cb_backups.cli.app", "restore", "postgres", "--backup", "2026-11-24-06:00",
            "--target", "in-place", "--yes"]
    for env in ({"CB_AGE_IDENTITY_FILE": str(wrong)}, {"CB_AGE_IDENTITY_FILE": ""}):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        assert done.returncode == 1, (done.stdout, done.stderr)  # the restore ran in Dagster and was refused
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert fingerprint(public) in lines[0]
        assert ("CB_AGE_IDENTITY_FILE" in lines[0]) and (fingerprint(wrong_public) in lines[0]) == bool(
            env["CB_AGE_IDENTITY_FILE"])
    assert memories(pg_server, pg_db) == 54  # untouched
    assert not (backup_dir / "postgres" / "_safety").exists()
    assert not {d for d in databases(pg_server) if d.startswith(pg_db) and d != pg_db}
    no_decrypted_leftovers(backup_dir)
    # a drill says the same, as a failed drill
    drill = run_drill(load_settings(), "postgres", "2026-11-24-06:00")
    assert not drill.passed and fingerprint(public) in drill.description


def test_verify_deep_checks_the_plaintext_and_needs_an_identity(
        pg_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity, public = key_pair(tmp_path, "key")
    encrypt_to(monkeypatch, public, None)
    artifact = backup("postgres", "2026-11-24-06:00")
    argv = [sys.executable, "-m", "cb_backups.cli.app", "verify", "postgres", "--slot", artifact.partition_key,
            "--deep", "--json"]

    def verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=180,
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL)

    refused = verify({})
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, (refused.stdout, refused.stderr)
    assert "CB_AGE_IDENTITY_FILE" in lines[0] and artifact.partition_key in lines[0] and "Traceback" not in lines[0]
    deep = verify({"CB_AGE_IDENTITY_FILE": str(identity)})
    assert deep.returncode == 0, (deep.stdout, deep.stderr)
    assert json.loads(deep.stdout)["passed"]
    # it really decrypts: another key fails the check, naming the fingerprint the backup was encrypted to
    other, _ = key_pair(tmp_path, "other")
    wrong = verify({"CB_AGE_IDENTITY_FILE": str(other)})
    assert wrong.returncode == 1 and fingerprint(public) in wrong.stdout + wrong.stderr, (wrong.stdout, wrong.stderr)


def test_key_rotation_old_backups_restore_with_an_older_identity_among_several(
        pg_db: str, pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, old_public = key_pair(tmp_path, "old")
    new, new_public = key_pair(tmp_path, "new")
    encrypt_to(monkeypatch, old_public, [old])
    first = backup("postgres", "2026-11-24-00:00")
    add_memories(pg_server, pg_db, 4)
    encrypt_to(monkeypatch, new_public, [new])  # rotated: new backups go to the new key only
    second = backup("postgres", "2026-11-24-06:00")
    assert first.manifest.recipients == (fingerprint(old_public),)
    assert second.manifest.recipients == (fingerprint(new_public),)
    # only the new identity: the old backup is refused, naming its key
    refused = run_drill(load_settings(), "postgres", first.partition_key)
    assert not refused.passed and fingerprint(old_public) in refused.description
    both = tmp_path / "both.txt"
    both.write_text(new.read_text() + old.read_text())  # one file, several identities
    monkeypatch.setenv("CB_AGE_IDENTITY_FILE", str(both))
    for artifact, expected in ((first, 51), (second, 55)):
        drill = run_drill(load_settings(), "postgres", artifact.partition_key)
        assert drill.passed, drill.description
        assert drill.counts["tables"]["memories"] == expected


# --- Valkey (real server) ---------------------------------------------------------------------------------------


@pytest.fixture()
def own_valkey(cb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(password="enc-restore-pw").start()
    assert server.root is not None
    start = [*server.argv(), "--daemonize", "yes", "--pidfile", str(server.root / "valkey.pid")]
    for key, value in {**server.env(), "CB_VALKEY_START": " ".join(start)}.items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.client().shutdown(nosave=True)
        server.cleanup()


def test_valkey_encrypted_round_trip(own_valkey: EmbeddedValkey, backup_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    identity, public = key_pair(tmp_path, "key")
    encrypt_to(monkeypatch, public, [identity])
    client = own_valkey.client
    client(0).mset({f"session:{n}": f"{CANARY}-{n}" for n in range(30)})
    artifact = backup("valkey", "2026-11-24-06:00")
    assert_encrypted(artifact, public)
    assert_no_plaintext(backup_dir)
    client(0).delete(*[f"session:{n}" for n in range(10)])
    result = execute_restore(plan_restore(load_settings(), "valkey", "latest", target=Target("in_place")))
    assert result.ok and client(0).dbsize() == 30 and client(0).get("session:3") == f"{CANARY}-3".encode()
    no_decrypted_leftovers(backup_dir)


# --- Qdrant (emulator) ------------------------------------------------------------------------------------------


def test_qdrant_encrypted_round_trip(cb_env: dict[str, str], qdrant_seeded: SeededCollections, qdrant_url: str,
                                     qdrant_api_key: str | None, backup_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_QDRANT_URL", qdrant_url)
    if qdrant_api_key:
        monkeypatch.setenv("CB_QDRANT_API_KEY", qdrant_api_key)
    identity, public = key_pair(tmp_path, "key")
    encrypt_to(monkeypatch, public, [identity])
    client, collection = qdrant_seeded.client, qdrant_seeded.name("memories")
    artifact = backup("qdrant", "2026-11-24")
    assert_encrypted(artifact, public)
    client.upsert(collection, points=app_points("memories", 384, 25, seed=99, start=1000), wait=True)
    assert client.count(collection, exact=True).count == 325
    plan = plan_restore(load_settings(), "qdrant", "2026-11-24", target=Target("in_place", {"collections": collection}))
    result = execute_restore(plan)
    assert result.ok and client.count(collection, exact=True).count == 300
    no_decrypted_leftovers(backup_dir)


# --- full system backup ------------------------------------------------------------------------------------------


def test_full_system_checks_of_an_encrypted_backup_with_and_without_identity(
        pg_db: str, own_valkey: EmbeddedValkey, backup_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cb_backups.core.model import no_progress
    from cb_backups.full_system.backup import evaluate_full, write_full_backup

    identity, public = key_pair(tmp_path, "key")
    encrypt_to(monkeypatch, public, None)  # the backup host: public key only
    settings = load_settings()
    full = write_full_backup(settings.catalog(), "2026-11-22", ["postgres", "valkey"],
                             lambda n: open_store(n, settings), lambda n: no_progress)
    assert_encrypted(full, public)
    assert_no_plaintext(backup_dir)

    def outcomes() -> dict[str, tuple[bool, str]]:
        s = load_settings()
        _, found = evaluate_full(s.catalog(), "2026-11-22", lambda n: open_store(n, s))
        return {o.name: (o.passed, o.description) for o in found}

    keyless = outcomes()  # no identity: header and ciphertext checks only, and they pass
    assert all(passed for passed, _ in keyless.values()), keyless
    monkeypatch.setenv("CB_AGE_IDENTITY_FILE", str(identity))
    deep = outcomes()  # with the identity: each store's own check of the decrypted part
    assert all(passed for passed, _ in deep.values()), deep
    assert "2 store(s) verified: postgres, valkey" in deep["all_stores_verified"][1]
    no_decrypted_leftovers(backup_dir)
    # a ciphertext whose age header is cut off fails the keyless check too, naming the file
    rdb = next(f.name for f in full.manifest.files if f.name.startswith("valkey__"))
    full.path(rdb).write_bytes(b"not age at all")
    monkeypatch.delenv("CB_AGE_IDENTITY_FILE")
    broken = outcomes()
    assert not broken["all_stores_verified"][0] and rdb in broken["all_stores_verified"][1]
    assert not broken["checksum"][0]


# --- off-site (SeaweedFS) ----------------------------------------------------------------------------------------


def test_offsite_copy_is_the_same_ciphertext_and_restores(
        offsite_env: dict[str, str], pg_db: str, pg_server: EmbeddedPostgres, backup_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    identity, public = key_pair(tmp_path, "key")
    encrypt_to(monkeypatch, public, [identity])
    artifact = backup("postgres", "2026-11-24-06:00")
    target = offsite.S3Target(load_settings().s3)
    offsite.upload_artifact(artifact, target)
    fetched = offsite.download_artifact("postgres", artifact.partition_key, target, tmp_path / "copy")
    for record in artifact.manifest.files:
        assert sha256_file(fetched / record.name) == sha256_file(artifact.path(record.name))
    for record in artifact.manifest.files:  # S3 metadata: digests only, no key of any kind
        head = offsite.head(target, target.key("postgres", artifact.partition_key, record.name)) or {}
        text = json.dumps(head.get("Metadata") or {})
        assert public not in text and "AGE-SECRET-KEY" not in text
    loaded = Catalog(fetched.parent).load(fetched)
    assert loaded is not None and loaded.manifest.encrypted
    # the local copy is lost: the off-site ciphertext restores, decrypted with the identity
    shutil.rmtree(artifact.directory)
    add_memories(pg_server, pg_db, 2)
    plan = plan_restore(load_settings(), "postgres", artifact.partition_key, source="offsite",
                        target=Target("in_place"))
    result = execute_restore(plan)
    assert result.ok and memories(pg_server, pg_db) == 51
    no_decrypted_leftovers(backup_dir)
