"""Typed settings from environment variables and an optional YAML file.

Precedence: environment > YAML file (`CB_CONFIG`) > defaults. Secrets are read
only from the environment or from files named by `*_FILE` variables, are kept
out of `repr`, and never appear in errors.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from cb_backups.config.hooks import SECTION as HOOKS_SECTION
from cb_backups.config.hooks import hooks_from_config
from cb_backups.config.pitr import SECTION as PITR_SECTION
from cb_backups.config.pitr import pitr_from_config
from cb_backups.config.redact import redact_url
from cb_backups.config.retention import ObjectLock, offsite_from_config, policies_from_config
from cb_backups.core.catalog import Catalog
from cb_backups.core.crypto import Encryption, parse_recipients, read_identities
from cb_backups.core.errors import CbBackupsError, ConfigError
from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES

# Sections of the CB_CONFIG file (feature modules read restore/drills/offsite/retention from Settings.raw).
SECTIONS = (*STORE_NAMES, "volumes", "s3", "retention", "offsite", "restore", "drills", "notifications", "report",
            FULL_SYSTEM, HOOKS_SECTION, "encryption", PITR_SECTION)
TOP_LEVEL_KEYS = ("backup_dir", "backup_dir_create", "timezone", "webhook_url", *SECTIONS)
DEFAULT_BACKUP_DIR = "backups"  # relative to the working directory; created when missing (it was not configured)
FLAG_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class Connection(NamedTuple):
    """The environment variable that connects a store, and the URL schemes it accepts."""

    env: str
    schemes: tuple[str, ...]


CONNECTIONS = {
    "postgres": Connection("CB_POSTGRES_URL", ("postgresql", "postgres")),
    "valkey": Connection("CB_VALKEY_URL", ("valkey", "redis")),
    "qdrant": Connection("CB_QDRANT_URL", ("http", "https")),
    "opensearch": Connection("CB_OPENSEARCH_URL", ("http", "https")),
    "neo4j": Connection("CB_NEO4J_URI", ("bolt", "neo4j", "bolt+s", "neo4j+s")),  # a bolt URI, not a URL
}
SECRET_FIELDS = ("password", "api_key")  # the store settings' fields that hold a secret


def secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from `NAME` or from the file named by `NAME_FILE`."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE", path, f"a readable file ({exc.strerror})") from None
    return None


def _url(what: str, value: str, schemes: tuple[str, ...]) -> str:
    shown = redact_url(value)
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:
        raise ConfigError(what, shown, f"a URL like {schemes[0]}://host:port") from None
    if parts.scheme not in schemes or not hostname:
        raise ConfigError(what, shown, f"a URL like {schemes[0]}://host:port (scheme {' or '.join(schemes)})")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(what, shown, "a port from 1 to 65535") from None
    if port == 0:
        raise ConfigError(what, shown, "a port from 1 to 65535")
    return value


def _connection_url(env: Mapping[str, str], store: str) -> str | None:
    """The store's connection URL from the environment, checked; None when the variable is unset or empty."""
    variable, schemes = CONNECTIONS[store]
    return _url(variable, env[variable], schemes) if env.get(variable) else None


@dataclass(frozen=True)
class PostgresSettings:
    host: str = "localhost"
    port: int = 5432
    user: str = "codingbrain"
    dbname: str = "codingbrain"
    password: str | None = field(default=None, repr=False)
    bin_dir: str | None = None  # where pg_dump/pg_restore live; PATH when None
    compression: str = "zstd:2"  # >= 5x faster than -Z 6 and smaller (benchmarks/); runbook's -Z 6 is "gzip:6"
    count_tables: tuple[str, ...] = ("memories", "apps", "users")
    migrations_query: str | None = None  # returns rows while a migration runs
    restore_jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    dump_jobs: int = 1  # >= 2: pg_dump -Fd -j N (directory format); 1: one -Fc stream (faster on 2 cores, benchmarks/)


@dataclass(frozen=True)
class ValkeySettings:
    host: str = "localhost"
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    data_dir: str | None = None  # when readable, RDB/AOF are copied from here; else `--rdb`
    bin_dir: str | None = None  # where valkey-cli / valkey-server live
    bgsave_timeout: float = 300.0
    stop_command: tuple[str, ...] = ()  # in-place restore; default: SHUTDOWN NOSAVE over the wire
    start_command: tuple[str, ...] = ()  # in-place restore: how to start the server again


@dataclass(frozen=True)
class QdrantSettings:
    url: str = "http://localhost:6333"
    api_key: str | None = field(default=None, repr=False)
    method: str = "snapshot"  # or "full_snapshot" (single node; restore via volumes.qdrant), "volume"


@dataclass(frozen=True)
class OpenSearchSettings:
    url: str = "http://localhost:9200"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    repository: str = "backups"
    repository_type: str = "fs"
    repository_settings: dict[str, Any] = field(default_factory=lambda: {"location": "/mnt/backups", "compress": True})
    method: str = "snapshot"  # or "volume"
    repository_host_path: str | None = None  # the fs repository folder as mounted HERE, when not at `location`


@dataclass(frozen=True)
class Neo4jSettings:
    uri: str = "bolt://localhost:7687"
    user: str = "neo4j"
    password: str | None = field(default=None, repr=False)
    database: str = "neo4j"
    admin_command: tuple[str, ...] = ("neo4j-admin",)
    stop_command: tuple[str, ...] = ()
    start_command: tuple[str, ...] = ()
    dump_dir: str | None = None  # where neo4j-admin writes, as seen from this host
    method: str = "dump"  # or "export" (online, over Bolt: stores/neo4j_export.py)


@dataclass(frozen=True)
class VolumeSettings:
    """The runbook's volume method: stop, tar the data folder, start again."""

    data_dir: str | None = None
    stop_command: tuple[str, ...] = ()
    start_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class S3Settings:
    bucket: str | None = None
    prefix: str = "cb-backups"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    storage_class: str | None = None
    sse: str | None = None  # "AES256" | "aws:kms"
    concurrency: int = 8
    multipart_chunk_mb: int = 8
    object_lock: ObjectLock | None = None  # from `offsite.object_lock` (config/retention.py), not the s3 section

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)


@dataclass(frozen=True)
class Settings:
    backup_dir: Path = Path("backups")
    timezone: str = "UTC"
    postgres: PostgresSettings | None = None
    valkey: ValkeySettings | None = None
    qdrant: QdrantSettings | None = None
    opensearch: OpenSearchSettings | None = None
    neo4j: Neo4jSettings | None = None
    volumes: dict[str, VolumeSettings] = field(default_factory=dict)
    s3: S3Settings = field(default_factory=S3Settings)
    webhook_url: str | None = field(default=None, repr=False)
    encryption: Encryption = field(default_factory=Encryption)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def store(self, name: str) -> Any:
        if name not in STORE_NAMES:
            raise ConfigError("store", name, ", ".join(STORE_NAMES))
        configured = getattr(self, name)
        if configured is None:
            raise ConfigError(f"{name} connection", "not configured",
                              f"set {CONNECTIONS[name].env} (or the '{name}:' section of the CB_CONFIG file)")
        return configured

    def configured_stores(self) -> list[str]:
        return [n for n in STORE_NAMES if getattr(self, n) is not None]

    def catalog(self) -> Catalog:
        """The backup catalog under `backup_dir`: the one way to reach what is stored there."""
        return Catalog(self.backup_dir, self.encryption)

    def secrets(self) -> list[str]:
        """Every secret these settings hold (for the redactor): the webhook URL, store passwords and API keys."""
        values = [self.webhook_url]
        for name in self.configured_stores():
            store = getattr(self, name)
            values += [getattr(store, attr, None) for attr in SECRET_FIELDS]
        for path in self.encryption.identity_files:  # the age identities, should one ever be printed
            try:
                values += [str(i) for i in read_identities(path, "CB_AGE_IDENTITY_FILE")]
            except ConfigError:
                continue  # whatever needs the identities reports that
        return [v for v in values if v]


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{name}' section", value, "a mapping of settings")
    return dict(value)


# Allowed ranges of the numeric settings, checked when settings load (not when a run first uses them).
INT_RANGES: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "restore_jobs": (1, 256),
    "dump_jobs": (1, 64),
    "concurrency": (1, 64),
    "multipart_chunk_mb": (5, 5120),  # S3's part size limits: 5 MiB to 5 GiB
}
SECONDS_RANGE = (0.1, 7 * 24 * 3600.0)  # timeouts: more than nothing, at most a week
TIMEZONE_ALLOWED = "an IANA zone name such as UTC or Europe/Berlin"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _int_in_range(what: str, value: Any, low: int, high: int) -> int:
    allowed = f"a whole number from {low} to {high}"
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(what, value, allowed)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(what, value, allowed) from None
    if not low <= number <= high:
        raise ConfigError(what, value, allowed)
    return number


def _seconds(what: str, value: Any) -> float:
    low, high = SECONDS_RANGE
    allowed = f"a number of seconds from {low:g} to {high:g}"
    if isinstance(value, bool):
        raise ConfigError(what, value, allowed)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(what, value, "a number of seconds") from None
    if not low <= number <= high:  # NaN fails both comparisons
        raise ConfigError(what, value, allowed)
    return number


def _text(what: str, value: Any, optional: bool) -> str | None:
    """Text settings: YAML may read a name such as `dbname: 2024` as a number; anything else is refused."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(what, value, "text")


def _strict_text(what: str, value: Any, allowed: str) -> str | None:
    """A path or a zone name: `backup_dir: 5` is a mistake, not a folder named 5."""
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(what, value, allowed)


def _words(what: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:  # shell-like quoting, so a command setting can hold e.g. `sh -c "..."`
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ConfigError(what, value, f"words with balanced quotes ({exc})") from None
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                               for v in value):
        return tuple(str(v) for v in value)
    raise ConfigError(what, value, "a list of names, e.g. [a, b] (or one space-separated text)")


def _convert(section: str, name: str, kind: str, value: Any) -> Any:
    what = f"{section}.{name}"
    if kind == "int":
        low, high = INT_RANGES.get(name, (1, 2**31 - 1))
        return _int_in_range(what, value, low, high)
    if kind == "float":
        return _seconds(what, value)
    if kind.startswith("tuple"):
        return _words(what, value)
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise ConfigError(what, value, "a mapping of settings")
        return dict(value)
    if kind in ("str", "str | None"):
        return _text(what, value, optional=kind.endswith("None"))
    return value


def _build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:  # the key, never its value (a misspelt password key must not echo the password)
        raise ConfigError(f"setting in the '{section}' section", unknown[0], ", ".join(sorted(allowed)))
    converted = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        if f.name in SECRET_FIELDS:  # never echoed, so not type-checked into an error message
            converted[f.name] = values[f.name] if values[f.name] is None else str(values[f.name])
            continue
        converted[f.name] = _convert(section, f.name, str(f.type), values[f.name])
    return cls(**converted)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    config_file = env.get("CB_CONFIG")
    if config_file:
        try:
            raw = yaml.safe_load(Path(config_file).read_text()) or {}
        except OSError as exc:
            raise ConfigError("CB_CONFIG", config_file, f"a readable YAML file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError("CB_CONFIG", config_file, f"valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError("CB_CONFIG", config_file, "a YAML mapping at the top level")
        unknown = sorted(str(k) for k in raw if k not in TOP_LEVEL_KEYS)
        if unknown:
            raise ConfigError(f"setting in {config_file}", unknown[0], ", ".join(TOP_LEVEL_KEYS))

    for name in SECTIONS:
        _section(raw, name)  # `restore: 5` is bad input here, not an AttributeError in a feature module
    hooks_from_config(raw)  # a bad hook command is bad input now, not when the backup runs
    _check_log_level(env.get("CB_LOG_LEVEL"))
    configured_dir = env.get("CB_BACKUP_DIR") or _strict_text("backup_dir", raw.get("backup_dir"), "a folder path")
    backup_dir = Path(configured_dir or DEFAULT_BACKUP_DIR)
    create = _flag("CB_BACKUP_DIR_CREATE", env.get("CB_BACKUP_DIR_CREATE"), raw.get("backup_dir_create"))
    # A configured folder that is missing is usually an unmounted disk: creating it would fill the root disk.
    _check_backup_dir(backup_dir, create=create or not configured_dir)
    timezone = env.get("CB_TIMEZONE") or _strict_text("timezone", raw.get("timezone"), TIMEZONE_ALLOWED) or "UTC"
    _check_timezone(timezone)

    stores: dict[str, Any] = {}
    pg = _section(raw, "postgres")
    if url := _connection_url(env, "postgres"):
        parts = urlsplit(url)
        pg.update(host=parts.hostname, port=parts.port or 5432)
        if parts.username:
            pg["user"] = parts.username
        if parts.path.strip("/"):
            pg["dbname"] = parts.path.strip("/")
        if parts.password:
            pg["password"] = parts.password
    for key, var in (("bin_dir", "CB_PG_BIN_DIR"), ("compression", "CB_POSTGRES_COMPRESSION"),
                     ("dump_jobs", "CB_POSTGRES_DUMP_JOBS")):
        if env.get(var):
            pg[key] = env[var]
    if pg:
        pg["password"] = secret(env, "CB_POSTGRES_PASSWORD") or pg.get("password")
        stores["postgres"] = _build(PostgresSettings, pg, "postgres")

    vk = _section(raw, "valkey")
    if url := _connection_url(env, "valkey"):
        parts = urlsplit(url)
        vk.update(host=parts.hostname, port=parts.port or 6379)
        if parts.password:
            vk["password"] = parts.password
    for key, var in (("data_dir", "CB_VALKEY_DATA_DIR"), ("bin_dir", "CB_VALKEY_BIN_DIR"),
                     ("stop_command", "CB_VALKEY_STOP"), ("start_command", "CB_VALKEY_START")):
        if env.get(var):
            vk[key] = env[var]
    if vk:
        vk["password"] = secret(env, "CB_VALKEY_PASSWORD") or vk.get("password")
        stores["valkey"] = _build(ValkeySettings, vk, "valkey")

    qd = _section(raw, "qdrant")
    if url := _connection_url(env, "qdrant"):
        qd["url"] = url
    if qd:
        qd["api_key"] = secret(env, "CB_QDRANT_API_KEY") or qd.get("api_key")
        stores["qdrant"] = _build(QdrantSettings, qd, "qdrant")

    os_ = _section(raw, "opensearch")
    if url := _connection_url(env, "opensearch"):
        os_["url"] = url
    if env.get("CB_OPENSEARCH_USER"):
        os_["user"] = env["CB_OPENSEARCH_USER"]
    if os_:
        os_["password"] = secret(env, "CB_OPENSEARCH_PASSWORD") or os_.get("password")
        stores["opensearch"] = _build(OpenSearchSettings, os_, "opensearch")

    neo = _section(raw, "neo4j")
    if url := _connection_url(env, "neo4j"):
        neo["uri"] = url
    for key, var in (("admin_command", "CB_NEO4J_ADMIN"), ("stop_command", "CB_NEO4J_STOP"),
                     ("start_command", "CB_NEO4J_START"), ("dump_dir", "CB_NEO4J_DUMP_DIR"),
                     ("user", "CB_NEO4J_USER")):
        if env.get(var):
            neo[key] = env[var]
    if neo:
        neo["password"] = secret(env, "CB_NEO4J_PASSWORD") or neo.get("password")
        stores["neo4j"] = _build(Neo4jSettings, neo, "neo4j")

    volumes_raw = _section(raw, "volumes")
    volumes = {str(name): _build(VolumeSettings, _section(volumes_raw, name), f"volumes.{name}")
               for name in volumes_raw}

    s3 = _section(raw, "s3")
    for key, var in (("bucket", "CB_S3_BUCKET"), ("prefix", "CB_S3_PREFIX"), ("endpoint_url", "CB_S3_ENDPOINT_URL"),
                     ("region", "CB_S3_REGION"), ("storage_class", "CB_S3_STORAGE_CLASS"), ("sse", "CB_S3_SSE")):
        if env.get(var):
            s3[key] = env[var]
    if s3.get("endpoint_url"):
        _url("s3.endpoint_url", s3["endpoint_url"], ("http", "https"))

    if raw.get("retention") is not None:
        policies_from_config(raw)  # a bad retention policy is bad input for every command
    lock = offsite_from_config(raw).object_lock  # so is a bad `offsite:` section
    if "object_lock" in s3:
        raise ConfigError("setting in the 's3' section", "object_lock", "offsite.object_lock (its own section)")
    pitr_from_config(raw, env)  # and a bad `postgres_wal:` section (point-in-time recovery)
    return Settings(
        encryption=_encryption(env, _section(raw, "encryption")),
        backup_dir=backup_dir,
        timezone=timezone,
        volumes=volumes,
        s3=replace(_build(S3Settings, s3, "s3"), object_lock=lock),
        webhook_url=secret(env, "CB_WEBHOOK_URL") or _text("webhook_url", raw.get("webhook_url"), optional=True),
        raw=raw,
        **stores,
    )


ENCRYPTION_KEYS = ("enabled", "stores", "recipients", "recipients_file", "identity_file")


def _yes_no(what: str, value: Any) -> bool:
    word = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if word not in FLAG_WORDS:
        raise ConfigError(what, value, "true or false")
    return FLAG_WORDS[word]


def _encryption(env: Mapping[str, str], section: dict[str, Any]) -> Encryption:
    """`encryption:` + CB_ENCRYPTION, CB_AGE_RECIPIENTS(_FILE), CB_AGE_IDENTITY_FILE. Without an explicit
    `enabled`, stores encrypt exactly when recipients are configured (so setting them is never ignored)."""
    unknown = sorted(str(k) for k in section if k not in ENCRYPTION_KEYS)
    if unknown:
        raise ConfigError("setting in 'encryption'", unknown[0], ", ".join(ENCRYPTION_KEYS))
    recipients: tuple[str, ...] = ()
    listed = env.get("CB_AGE_RECIPIENTS") or section.get("recipients")
    if isinstance(listed, list):
        listed = " ".join(str(r) for r in listed)
    if listed:
        recipients += parse_recipients(str(listed), "CB_AGE_RECIPIENTS")
    recipients_file = env.get("CB_AGE_RECIPIENTS_FILE") or section.get("recipients_file")
    if recipients_file:
        try:
            text = Path(str(recipients_file)).read_text()
        except OSError as exc:
            raise ConfigError("CB_AGE_RECIPIENTS_FILE", str(recipients_file),
                              f"a readable file of age public keys ({exc.strerror})") from None
        recipients += tuple(r for r in parse_recipients(text, f"recipient in {recipients_file}")
                            if r not in recipients)
    identity = env.get("CB_AGE_IDENTITY_FILE") or section.get("identity_file") or ""
    identity_files = tuple(Path(str(p).strip()) for p in
                           (identity if isinstance(identity, list) else str(identity).split(",")) if str(p).strip())
    if env.get("CB_ENCRYPTION"):
        default = _yes_no("CB_ENCRYPTION", env["CB_ENCRYPTION"])
    elif section.get("enabled") is not None:
        default = _yes_no("encryption.enabled", section["enabled"])
    else:
        default = bool(recipients)
    stores_raw = section.get("stores") or {}
    if not isinstance(stores_raw, dict):
        raise ConfigError("encryption.stores", stores_raw, "a mapping of store name to true/false")
    stores: dict[str, bool] = {}
    for name, value in stores_raw.items():
        if name not in (*STORE_NAMES, FULL_SYSTEM):
            raise ConfigError("store in encryption.stores", name, ", ".join((*STORE_NAMES, FULL_SYSTEM)))
        stores[name] = _yes_no(f"encryption.stores.{name}", value)
    if (default or any(stores.values())) and not recipients:
        raise ConfigError("encryption recipients", "none", "CB_AGE_RECIPIENTS (age1... public keys) or "
                          "CB_AGE_RECIPIENTS_FILE, when encryption is enabled")
    return Encryption(default, stores, recipients, identity_files)


def configured_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The secrets of the settings as configured now, for the redactor; none when the settings do not
    load (whatever needs them reports that error)."""
    try:
        return load_settings(env).secrets()
    except CbBackupsError:
        return []


def _check_backup_dir(path: Path, create: bool) -> None:
    what = "backup_dir (CB_BACKUP_DIR)"
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == path and not path.is_dir():
        raise ConfigError(what, str(path), "a folder (this is a file)")
    if probe != path and not probe.is_dir():
        raise ConfigError(what, str(path), f"a path under a folder ({probe} is a file)")
    if probe != path and not create:
        raise ConfigError(what, str(path), "an existing folder (is its disk mounted?); to let cb-backups create "
                                           "it, set CB_BACKUP_DIR_CREATE=1 or `backup_dir_create: true`")
    if not os.access(probe, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(what, str(path), "a folder cb-backups can read and write")


def _flag(what: str, env_value: str | None, yaml_value: Any) -> bool:
    """A yes/no setting: the variable (1/0, true/false, yes/no) over the YAML boolean."""
    if env_value:
        word = env_value.strip().lower()
        if word not in FLAG_WORDS:
            raise ConfigError(what, env_value, ", ".join(FLAG_WORDS))
        return FLAG_WORDS[word]
    if yaml_value is None:
        return False
    if not isinstance(yaml_value, bool):
        raise ConfigError("backup_dir_create", yaml_value, "true or false")
    return yaml_value


def _check_log_level(level: str | None) -> None:
    """CB_LOG_LEVEL becomes the level of Dagster's console logger for CLI runs."""
    if level and level.upper() not in LOG_LEVELS:
        raise ConfigError("CB_LOG_LEVEL", level, ", ".join(LOG_LEVELS))


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone", name, TIMEZONE_ALLOWED) from None
