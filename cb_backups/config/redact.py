"""The one redactor: secrets known to the settings or the environment, and URL passwords.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

_SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK|CREDENTIAL)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]+):[^@/\s]+@", re.I)


def redact_url(value: str) -> str:
    """A URL with any embedded password replaced by ***, safe to show in an error or a log line."""
    return re.sub(r"(//[^/@:]*):[^@/]*@", r"\1:***@", str(value))


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values to redact: every secret in the settings and secret-named environment variables."""
    env = dict(os.environ if env is None else env)
    values: list[str] = [v for k, v in env.items() if _SECRET_ENV.search(k) and not k.endswith("_FILE")]
    try:
        from cb_backups.config.settings import load_settings

        settings = load_settings(env)
        values.append(settings.webhook_url or "")
        for name in settings.configured_stores():
            store = getattr(settings, name)
            values += [getattr(store, attr, None) or "" for attr in ("password", "api_key")]
    except Exception:  # a broken config file is reported elsewhere
        pass
    return sorted({v for v in values if v and len(v) >= 6}, key=len, reverse=True)


def redactor(env: dict[str, str] | None = None) -> Callable[[str], str]:
    secrets = secret_values(env)

    def redact(text: str) -> str:
        for value in secrets:
            text = text.replace(value, "<redacted>")
        return _URL_PASSWORD.sub(r"\g<head>:<redacted>@", text)

    return redact
