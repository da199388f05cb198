"""Client-side encryption in the age format (pyrage), streamed: no Dagster, no store knowledge.

- `Encryption` says which stores encrypt to which X25519 recipients (public keys only: the backup
  host never needs a key that can decrypt) and where the identities for restores are.
- `encrypting(staging_dir, recipients)` marks a staging folder: every `HashingWriter` opened under
  it encrypts as it writes (core.fileio), so dump -> compress -> encrypt -> hash -> write stays one
  pass. Files are remembered by inode, so an adapter (or the full system
  backup) may rename them.
- `StreamEncryptor` writes age's format itself over OpenSSL's ChaCha20-Poly1305 (cryptography);
  pyrage parses keys and decrypts (and the tests open the output with pyrage and the `age` binary).
- `decrypt_into` authenticates while it streams: age's STREAM chunks each carry a Poly1305 tag, so
  a changed byte or a truncated file is an error, never wrong plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyrage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyrage import x25519

from cb_backups.core.errors import CbBackupsError, ConfigError

AGE_SUFFIX = ".age"
AGE_HEADER = b"age-encryption.org/v1\n"
IDENTITY_PREFIX = "AGE-SECRET-KEY-"
RECIPIENT_PREFIX = "age1"


class IdentityMismatch(CbBackupsError):
    """No identity given can decrypt the backup (exit 2: the operator must name the right key)."""

    exit_code = 2


def parse_recipients(text: str, what: str) -> tuple[str, ...]:
    """age X25519 public keys separated by commas, spaces or lines; `#` starts a comment."""
    keys: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for word in line.replace(",", " ").split():
            try:
                x25519.Recipient.from_str(word)
            except Exception:
                # a public key is not a secret, so it is named; anything else is shortened
                shown = word if word.startswith(RECIPIENT_PREFIX) else word[:6] + "…"
                raise ConfigError(what, shown, "age X25519 public keys (age1..., as `cb-backups keys generate` "
                                               "or age-keygen prints them)") from None
            if word not in keys:
                keys.append(word)
    return tuple(keys)


def read_identities(path: Path, what: str) -> list[x25519.Identity]:
    """Every `AGE-SECRET-KEY-1...` line of an identity file (age-keygen's format; several for rotated keys)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(what, str(path), f"a readable age identity file ({exc.strerror})") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(x25519.Identity.from_str(line))
        except Exception:
            # never echo the line: it may be a secret key with a typo
            raise ConfigError(what, f"{path} line {number}", "AGE-SECRET-KEY-1... lines and # comments") from None
    if not found:
        raise ConfigError(what, str(path), "a file holding at least one AGE-SECRET-KEY-1... identity")
    return found


def public_key(identity: x25519.Identity) -> str:
    return str(identity.to_public())


def fingerprint(recipient: str) -> str:
    """What manifests and messages name a recipient by: 16 hex digits of its sha256 (not the key itself)."""
    return hashlib.sha256(recipient.encode()).hexdigest()[:16]


def generate() -> tuple[str, str]:
    """(identity, its public key) of a new X25519 key pair."""
    identity = x25519.Identity.generate()
    return str(identity), public_key(identity)


@dataclass(frozen=True)
class Encryption:
    """Which stores encrypt, to whom, and where restores find identities."""

    default: bool = False
    stores: Mapping[str, bool] = field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    identity_files: tuple[Path, ...] = ()

    def recipients_for(self, store: str) -> tuple[str, ...]:
        """The recipients a new backup of `store` is encrypted to; () when it is not encrypted."""
        return self.recipients if self.stores.get(store, self.default) else ()

    def identities(self) -> list[x25519.Identity]:
        found: list[x25519.Identity] = []
        for path in self.identity_files:
            found += read_identities(path, "CB_AGE_IDENTITY_FILE")
        return found


# --- encrypting while writing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """One file encrypted while it was written: the plaintext's digest and the ciphertext's."""

    plaintext_sha256: str
    plaintext_bytes: int
    sha256: str
    bytes: int
    recipients: tuple[str, ...]  # fingerprints


@dataclass
class Marked:
    """A staging folder whose files are encrypted; `sealed` maps (st_dev, st_ino) to what was written."""

    directory: Path
    recipients: tuple[str, ...]
    sealed: dict[tuple[int, int], Sealed] = field(default_factory=dict)
    active: bool = True  # False once the backup's files are sealed: the manifest and its seal stay plaintext


_lock = threading.Lock()
_marked: dict[Path, Marked] = {}  # global, not a contextvar: the full system backup writes from a thread pool


@contextmanager
def encrypting(directory: Path, recipients: Sequence[str]) -> Iterator[Marked]:
    """While the block runs, every HashingWriter opened under `directory` encrypts to `recipients`."""
    marked = Marked(Path(directory).resolve(), tuple(recipients))
    with _lock:
        _marked[marked.directory] = marked
    try:
        yield marked
    finally:
        with _lock:
            _marked.pop(marked.directory, None)


def marked_for(path: Path) -> Marked | None:
    """The marked staging folder holding `path`, if any."""
    resolved = Path(path).resolve()
    with _lock:
        for directory, marked in _marked.items():
            if marked.active and resolved.is_relative_to(directory):
                return marked
    return None


class _Digest:
    """The ciphertext, hashed and counted on its way into the file."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.bytes = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.hash.update(view)
        written = 0
        while written < len(view):
            written += self.out.write(view[written:]) or 0  # a raw file may write less than asked
        self.bytes += written
        return written

    def flush(self) -> None:
        self.out.flush()


# age's format (age-encryption.org/v1), written here rather than by pyrage: pyrage's ChaCha20-Poly1305 runs at
# ~350 MB/s and pulls its input through Python in 8 KiB reads; OpenSSL's (cryptography) runs at 1.5-4 GB/s on
# whole 64 KiB chunks of the caller's buffer. pyrage still parses keys and does every decryption, and the
# tests open what this writes with both pyrage and the `age` binary.
PAYLOAD_CHUNK = 64 * 1024  # age's STREAM chunk: each carries its own Poly1305 tag
_FILE_KEY_BYTES, _NONCE_BYTES = 16, 16
_X25519_INFO = b"age-encryption.org/v1/X25519"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BATCHES_IN_FLIGHT = 4  # sealed batches (one per write, up to ~1 MiB) queued for the hashing writer thread


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= gen if (top >> i) & 1 else 0
    return chk


def _recipient_bytes(recipient: str) -> bytes:
    """The 32-byte X25519 public key of an `age1...` recipient (bech32, BIP 173)."""
    try:
        x25519.Recipient.from_str(recipient)  # the same validation as parse_recipients
    except Exception:
        raise ConfigError("age recipient", recipient[:12], "an age X25519 public key (age1...)") from None
    text = recipient.lower()
    hrp, _, data = text.rpartition("1")
    values = [_BECH32.index(c) for c in data]
    if hrp != "age" or _bech32_polymod([ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values) != 1:
        raise ConfigError("age recipient", recipient[:12], "an age X25519 public key (age1...)")
    acc = bits = 0
    key = bytearray()
    for value in values[:-6]:  # the last six are the checksum
        acc, bits = (acc << 5) | value, bits + 5
        if bits >= 8:
            bits -= 8
            key.append((acc >> bits) & 0xFF)
    if len(key) != 32:
        raise ConfigError("age recipient", recipient[:12], "an age X25519 public key (age1...)")
    return bytes(key)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")  # age: standard alphabet, no padding


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _x25519_stanza(file_key: bytes, recipient: bytes) -> bytes:
    """One `-> X25519` stanza: the file key wrapped to `recipient` through a fresh ephemeral key."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    if not any(shared):
        raise CbBackupsError("age encryption failed: a recipient key is a low-order point")
    wrap = ChaCha20Poly1305(_hkdf(shared, share + recipient, _X25519_INFO))
    body = wrap.encrypt(bytes(12), file_key, None)  # 32 bytes: one 43-character line
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"


def _header(file_key: bytes, recipients: Sequence[bytes]) -> bytes:
    """age's header: version line, one stanza per recipient, and its HMAC under a key from the file key."""
    head = AGE_HEADER + b"".join(_x25519_stanza(file_key, r) for r in recipients) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + b" " + _b64(mac) + b"\n"


class _Writer:
    """Hashes and writes sealed chunks on a thread of its own, so the ciphertext's sha256 and the write overlap
    the next chunks' encryption (hashlib and file writes release the GIL). A bounded queue: memory stays flat."""

    def __init__(self, sink: _Digest) -> None:
        self.sink = sink
        self.batches: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=_BATCHES_IN_FLIGHT)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cb-age-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.batches.get()) is not None:
            if self.error is None:  # after a failure keep draining, so a writer never blocks on a full queue
                try:
                    for chunk in batch:
                        self.sink.write(chunk)
                except BaseException as exc:  # raised in the writing thread on its next write or close
                    self.error = exc

    def put(self, batch: list[bytes]) -> None:
        if self.error is not None:
            raise self.error
        self.batches.put(batch)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.batches.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


class StreamEncryptor:
    """Push-style age encryption into `out`: `write` plaintext, `close` to seal the last chunk.

    Each 64 KiB chunk is sealed in the caller's thread as soon as a byte after it arrives (the chunk held
    back may be the last one, which age marks, so a truncated file never authenticates); a second thread
    hashes and writes the ciphertext.
    """

    def __init__(self, out: IO[bytes], recipients: Sequence[str]) -> None:
        keys = [_recipient_bytes(r) for r in recipients]
        if not keys:
            raise CbBackupsError("age encryption needs at least one recipient")
        self._sink = _Digest(out)
        file_key, nonce = os.urandom(_FILE_KEY_BYTES), os.urandom(_NONCE_BYTES)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._held = bytearray()  # at most one chunk: the one that may turn out to be the last
        self._closed = False
        self._writer = _Writer(self._sink)
        self._writer.put([_header(file_key, keys) + nonce])

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> bytes:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise CbBackupsError("age encryption: write after close")
        view = memoryview(data).cast("B")
        if self._held:
            room = PAYLOAD_CHUNK - len(self._held)
            if len(view) <= room:
                self._held += view
                return
            self._held += view[:room]
            view = view[room:]
        sealed = []
        if self._held:
            sealed.append(self._seal(self._held, last=False))  # more follows: not the last chunk
            self._held = bytearray()
        while len(view) > PAYLOAD_CHUNK:  # whole chunks straight from the caller's buffer, no copy
            sealed.append(self._seal(view[:PAYLOAD_CHUNK], last=False))
            view = view[PAYLOAD_CHUNK:]
        self._held += view  # a copy: the caller may reuse its buffer
        if sealed:
            self._writer.put(sealed)

    def close(self) -> tuple[str, int]:
        """Seal the last chunk; (ciphertext sha256, ciphertext bytes) once all of it is written."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.put([self._seal(self._held, last=True)])  # empty only for an empty plaintext
            finally:
                self._held = bytearray()
                self._writer.finish()
            self._sink.flush()
        return self._sink.hash.hexdigest(), self._sink.bytes

    def abort(self) -> None:
        """After a failed write: no last chunk is sealed (the partial file is the caller's to remove)."""
        self._closed = True
        self._held = bytearray()
        with suppress(BaseException):
            self._writer.finish()


def encrypt_stream(source: IO[bytes], out: IO[bytes], recipients: Sequence[str]) -> tuple[str, int]:
    """Encrypt a readable stream into `out`; (ciphertext sha256, ciphertext bytes)."""
    encryptor = StreamEncryptor(out, recipients)
    while block := source.read(1024 * 1024):
        encryptor.write(block)
    return encryptor.close()


# --- decrypting ------------------------------------------------------------------------------------------


def mismatch_message(what: str, fingerprints: Sequence[str], identities: Sequence[x25519.Identity],
                     files: Sequence[Path]) -> str:
    encrypted_to = "recipient fingerprint(s) " + (", ".join(fingerprints) or "unknown")
    if not identities:
        return (f"{what} is encrypted (age) to {encrypted_to}; no identity to decrypt it: set CB_AGE_IDENTITY_FILE "
                "to a file holding the matching AGE-SECRET-KEY-1... line")
    held = ", ".join(fingerprint(public_key(i)) for i in identities)
    return (f"{what} is encrypted (age) to {encrypted_to}; none of the identities in CB_AGE_IDENTITY_FILE "
            f"({', '.join(str(f) for f in files)}) matches (theirs are {held}; `cb-backups keys show` prints "
            "fingerprints)")


def decrypt_into(source: IO[bytes], out: Any, identities: Sequence[x25519.Identity]) -> None:
    """Decrypt and authenticate `source` into `out`; raises pyrage.DecryptError on a wrong key or bad bytes."""
    pyrage.decrypt_io(source, out, list(identities))


DecryptError = pyrage.DecryptError


def age_header_problems(path: Path, recipients: int) -> list[str]:
    """What a check without a key can say of an age file: the format's header, one X25519 stanza per
    recorded recipient, and the header's end (its MAC needs a key: restores and `verify --deep` check it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError as exc:
        return [f"{path.name}: cannot read ({exc.strerror})"]
    if not head.startswith(AGE_HEADER):
        return [f"{path.name}: not an age file (no age-encryption.org/v1 header)"]
    lines = head.split(b"\n")
    if not any(line.startswith(b"--- ") for line in lines):
        return [f"{path.name}: the age header has no end (truncated)"]
    stanzas = sum(1 for line in lines if line.startswith(b"-> X25519 "))
    if stanzas != recipients:
        return [f"{path.name}: encrypted to {stanzas} X25519 recipient(s), the manifest says {recipients}"]
    return []
