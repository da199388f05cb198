"""Client-side encryption in the age format (pyrage), streamed: no Dagster, no store knowledge.

- `Encryption` says which stores encrypt to which X25519 recipients (public keys only: the backup
  host never needs a key that can decrypt) and where the identities for restores are.
- `encrypting(staging_dir, recipients)` marks a staging folder: every `HashingWriter` opened under
  it encrypts as it writes (core.fileio), so dump -> compress -> encrypt -> hash -> write stays one
  pass. Files are remembered by inode, so an adapter (or the full system backup) may rename them.
- `decrypt_into` authenticates while it streams: age's STREAM chunks each carry a Poly1305 tag, so
  a changed byte or a truncated file is an error, never wrong plaintext.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyrage
from pyrage import x25519

from cb_backups.core.errors import CbBackupsError, ConfigError

AGE_SUFFIX = ".age"
AGE_HEADER = b"age-encryption.org/v1\n"  # the first line of every age file
PAYLOAD_CHUNK = 64 * 1024  # age's STREAM chunk: each carries its own Poly1305 tag
IDENTITY_PREFIX = "AGE-SECRET-KEY-"
RECIPIENT_PREFIX = "age1"
_QUEUE_BLOCKS = 8  # blocks in flight between the writer and the encrypting thread: memory stays flat


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
    """What pyrage writes: hashed and counted on its way into the file."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.bytes = out, hashlib.sha256(), 0
        self.error: OSError | None = None  # the file's own error (a full disk), before pyrage wraps it

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.hash.update(view)
        written = 0
        try:
            while written < len(view):
                written += self.out.write(view[written:]) or 0  # a raw file may write less than asked
        except OSError as exc:
            self.error = exc
            raise
        self.bytes += written
        return written

    def flush(self) -> None:
        self.out.flush()


class _Blocks:
    """A reader over blocks handed in by another thread (pyrage pulls, adapters push)."""

    def __init__(self) -> None:
        self.blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_BLOCKS)
        self.pending = memoryview(b"")
        self.done = False
        self.aborted = False  # the writer failed: pyrage must fail too, never seal a truncated stream

    def read(self, size: int = -1) -> bytes:
        if self.aborted:
            raise OSError("encryption aborted: the backup failed")
        while not self.pending and not self.done:
            block = self.blocks.get()
            if block is None:
                self.done = True
            else:
                self.pending = memoryview(block)
        if self.aborted:  # woken by abort's None: not the end of the stream
            raise OSError("encryption aborted: the backup failed")
        if size is None or size < 0:
            size = len(self.pending)
        taken, self.pending = self.pending[:size], self.pending[size:]  # views: no copy of the rest
        return bytes(taken)

    def readinto(self, buffer: memoryview | bytearray) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class StreamEncryptor:
    """Push-style age encryption into `out`: `write` plaintext, `close` to finish the last chunk."""

    def __init__(self, out: IO[bytes], recipients: Sequence[str]) -> None:
        self._sink = _Digest(out)
        self._reader = _Blocks()
        self._error: BaseException | None = None
        keys = [x25519.Recipient.from_str(r) for r in recipients]
        self._thread = threading.Thread(target=self._run, args=(keys,), name="cb-age-encrypt", daemon=True)
        self._thread.start()

    def _run(self, keys: list[x25519.Recipient]) -> None:
        try:
            pyrage.encrypt_io(self._reader, self._sink, keys)
        except BaseException as exc:  # handed to the writing thread on its next write or close
            self._error = exc
            while not self._reader.done:  # unblock a writer waiting on a full queue
                if self._reader.blocks.get() is None:
                    break

    def write(self, data: bytes | bytearray | memoryview) -> None:
        block = bytes(data)
        while True:
            if self._error is not None or not self._thread.is_alive():
                self._raise()
            try:
                self._reader.blocks.put(block, timeout=1.0)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        """The file's own error as it was (a full disk stays an ENOSPC OSError for its one-line message)."""
        if self._sink.error is not None:
            raise self._sink.error
        raise CbBackupsError(f"age encryption failed: {self._error}")

    def close(self) -> tuple[str, int]:
        """Finish the stream; (ciphertext sha256, ciphertext bytes)."""
        while self._thread.is_alive():
            try:
                self._reader.blocks.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is not None:
            self._raise()
        self._sink.flush()
        return self._sink.hash.hexdigest(), self._sink.bytes

    def abort(self) -> None:
        """Stop the encrypting thread after a failed write (the partial file is the caller's to remove)."""
        self._reader.aborted = self._reader.done = True
        with suppress(queue.Full):
            self._reader.blocks.put_nowait(None)
        self._thread.join(timeout=10)  # it fails on its next read: no thread outlives the backup


def encrypt_stream(source: IO[bytes], out: IO[bytes], recipients: Sequence[str]) -> tuple[str, int]:
    """Encrypt a readable stream into `out`; (ciphertext sha256, ciphertext bytes)."""
    sink = _Digest(out)
    pyrage.encrypt_io(source, sink, [x25519.Recipient.from_str(r) for r in recipients])
    sink.flush()
    return sink.hash.hexdigest(), sink.bytes


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
AGE_HEADER = b"age-encryption.org/v1\n"


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
