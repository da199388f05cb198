"""Errors with messages a person can act on. The CLI maps them to exit codes."""

from __future__ import annotations


class CbBackupsError(Exception):
    """Base class: the message is complete and safe to show (no secrets)."""

    exit_code = 1


class ConfigError(CbBackupsError):
    """Bad input: a setting, argument or name that is not allowed (exit code 2)."""

    exit_code = 2

    def __init__(self, what: str, value: object, allowed: str) -> None:
        super().__init__(f"invalid {what}: {value!r} (allowed: {allowed})")
        self.what = what
        self.value = value
        self.allowed = allowed


class StoreUnavailable(CbBackupsError):
    """The store's server could not be reached or refused the request."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: server unavailable: {detail}")
        self.store = store


class BackupFailed(CbBackupsError):
    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: backup failed: {detail}")
        self.store = store


class VerificationFailed(CbBackupsError):
    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: verification failed: {detail}")
        self.store = store


class RestoreRefused(CbBackupsError):
    """A restore was stopped before it touched the target."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: restore refused (target untouched): {detail}")
        self.store = store


class RestoreFailed(CbBackupsError):
    """A restore started changing the target and then failed (the message says how far it got)."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: restore failed: {detail}")
        self.store = store
