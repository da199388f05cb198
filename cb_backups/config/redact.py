"""The one redactor: URL passwords, secret-named environment variables and secrets handed in.

Every text that leaves cb-backups and may carry a credential (errors, reports, notifications,
S3 error messages) passes through here. The settings name their own secrets
(`Settings.secrets()`); this module does not read the settings, so settings.py can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping

MASK = "<redacted>"
URL_MASK = "***"  # in a single URL shown back to the user (config errors): short, and still reads as a URL
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would blank out ordinary words
_SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK|CREDENTIAL)", re.I)
# `//user:password@` (user may be empty), anywhere in a text
_URL_PASSWORD = re.compile(r"(?P<head>//[^/\s:@]*):[^@/\s]*@")


def redact_url(value: str) -> str:
    """A URL with any embedded password replaced by ***, safe to show in an error or a log line."""
    return _URL_PASSWORD.sub(rf"\g<head>:{URL_MASK}@", str(value))


def secret_values(secrets: Iterable[str | None] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """Values to redact: `secrets` and every secret-named environment variable, longest first."""
    env = os.environ if env is None else env
    values = [v for k, v in env.items() if _SECRET_ENV.search(k) and not k.endswith("_FILE")]
    values += [v for v in secrets if v]
    return sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with each of `secrets` (no environment lookup) and every URL password replaced by <redacted>."""
    for value in sorted({v for v in secrets if v and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)


def redactor(secrets: Iterable[str | None] = (), env: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """A `redact` bound to `secrets` plus the secret-named environment variables, read once now."""
    known = secret_values(secrets, env)

    def bound(text: str) -> str:
        return redact(text, known)

    return bound
