"""Encrypted backups seen as plaintext by restores and drills (no Dagster here).

A store adapter only ever reads plaintext: `Plaintexts.of(artifact)` is the artifact itself, or for an
encrypted one its decrypted and authenticated copy in a private folder on the backup disk (made once per
restore, removed when the restore ends). It runs after the ciphertext's sha256 was checked and before
anything is restored, so a wrong or missing identity stops the restore with the target untouched.
"""

from __future__ import annotations

import contextlib

from cb_backups.core.catalog import Catalog
from cb_backups.core.model import Artifact


class Plaintexts:
    """Decrypted views of the encrypted artifacts one restore or drill reads, each decrypted once."""

    def __init__(self, catalog: Catalog, stack: contextlib.ExitStack) -> None:
        self.catalog, self.stack = catalog, stack
        self.views: dict[str, Artifact] = {}

    def of(self, artifact: Artifact) -> Artifact:
        if not artifact.manifest.encrypted:
            return artifact
        key = str(artifact.directory.resolve())
        if key not in self.views:
            self.views[key] = self.stack.enter_context(self.catalog.plaintext(artifact))
        return self.views[key]
