"""Settings: `settings.toml`, then the environment; every error names the key and the bad value."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "settings.toml"
ENV_PREFIX = "SERVICE__"


class SettingsError(ValueError):
    """A setting is missing, of the wrong type, out of range or unknown."""


def _bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"low": low, "high": high}


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"

    def validate(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"redis.url = {redact_url(self.url)!r}: scheme must be redis://, rediss:// or unix://")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_bounds(1, 65535))
    log_level: str = "info"
    # peers whose X-Forwarded-For names the client (addresses or networks); nobody else's is believed
    trusted_proxies: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise SettingsError(
                f"server.log_level = {self.log_level!r}: must be one of critical, error, warning, info, debug"
            )
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(
                    f"server.trusted_proxies = {list(self.trusted_proxies)!r}: "
                    f"{entry!r} is not an IP address or network"
                ) from None


@dataclass(frozen=True)
class RunningTasksSettings:
    redis_timeout: int = field(default=5000, metadata=_bounds(1))  # ms, every Redis call and the connect
    scan_batch_size: int = field(default=100, metadata=_bounds(1, 100_000))  # SCAN COUNT and keys per fetch
    max_scan_time: int = field(default=10_000, metadata=_bounds(1))  # ms, budget of one full scan
    cache_enabled: bool = True
    cache_ttl: int = field(default=60, metadata=_bounds(1))  # s
    worker_count: int = field(default=10, metadata=_bounds(1, 256))
    refresh_interval: float = field(default=2, metadata=_bounds(0.05))  # s
    key_pattern: str = "request:id:*"
    running_statuses: tuple[str, ...] = ("pending", "processing", "running")
    producer_key_ttl: int = field(default=3600, metadata=_bounds(0))  # s; 0 = unknown
    fetch_max_bytes: int = field(default=1_048_576, metadata=_bounds(1024))  # bytes one value fetch may return
    full_read_every: int = field(default=30, metadata=_bounds(1))  # every Nth scan reads even unchanged values
    # refreshes on an event loop of their own, in a thread: a read load cannot starve them (false: on the serving loop)
    refresh_thread: bool = True
    # the query API (issue 5)
    stall_after: int = field(default=300, metadata=_bounds(1))  # s without a change before a task is stalled
    history_size: int = field(default=10_000, metadata=_bounds(1, 1_000_000))  # finished tasks kept in memory
    query_cache_size: int = field(default=256, metadata=_bounds(0, 100_000))  # query results kept; 0 = none
    query_cache_bytes: int = field(default=64 * 1_048_576, metadata=_bounds(0))  # bytes those results may hold

    def validate(self) -> None:
        if self.refresh_interval > self.cache_ttl:
            raise SettingsError(
                f"running_tasks.refresh_interval = {self.refresh_interval!r}: must not exceed "
                f"running_tasks.cache_ttl ({self.cache_ttl})"
            )
        if not self.key_pattern:
            raise SettingsError("running_tasks.key_pattern = '': must not be empty")
        if not self.running_statuses or any(not s for s in self.running_statuses):
            raise SettingsError(
                f"running_tasks.running_statuses = {list(self.running_statuses)!r}: must be non-empty strings"
            )


# RFC 6750 b64token: what an `Authorization: Bearer` header can carry unchanged
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_LENGTH = 16
# a mistyped environment variable whose name holds one of these may hold a secret: its value is not shown
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD")


@dataclass(frozen=True)
class AuthSettings:
    # Empty: no authentication. Never shown: not in repr, errors, logs or cache-stats.
    tokens: tuple[str, ...] = field(default=(), repr=False, metadata={"secret": True})

    def validate(self) -> None:
        for index, token in enumerate(self.tokens, 1):
            if not _BEARER_TOKEN.fullmatch(token):
                raise SettingsError(
                    f"auth.tokens = ***: token {index} holds characters a Bearer header cannot carry "
                    "(allowed: letters, digits, - . _ ~ + / and trailing =)"
                )
            if len(token) < MIN_TOKEN_LENGTH:
                raise SettingsError(
                    f"auth.tokens = ***: token {index} has {len(token)} characters, at least {MIN_TOKEN_LENGTH} "
                    "are required (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )


@dataclass(frozen=True)
class RateLimitSettings:
    requests_per_second: float = field(default=20, metadata=_bounds(0))  # per client; 0 disables the limit
    burst: int = field(default=40, metadata=_bounds(1, 1_000_000))  # requests a client may make at once
    max_clients: int = field(default=10_000, metadata=_bounds(1, 10_000_000))  # buckets kept; oldest dropped


@dataclass(frozen=True)
class CorsSettings:
    allowed_origins: tuple[str, ...] = ()  # e.g. ["https://dash.example.com"]; ["*"]: any; empty: no CORS
    max_age: int = field(default=600, metadata=_bounds(0, 86_400))  # s browsers may cache a preflight answer

    def validate(self) -> None:
        for origin in self.allowed_origins:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise SettingsError(
                    f"cors.allowed_origins = {list(self.allowed_origins)!r}: {origin!r} is not an origin "
                    "like https://dash.example.com (scheme, host, optional port; no path) or '*'"
                )


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "plain"  # or "json": one object per line
    access_log: bool = True  # one line per request

    def validate(self) -> None:
        if self.format not in ("plain", "json"):
            raise SettingsError(f"logging.format = {self.format!r}: must be plain or json")


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    running_tasks: RunningTasksSettings = field(default_factory=RunningTasksSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def redacted(self) -> dict[str, Any]:
        """The settings in effect as plain data, with any password in the Redis URL and every token replaced."""
        data = dataclasses.asdict(self)
        data["redis"]["url"] = redact_url(self.redis.url)
        data["running_tasks"]["running_statuses"] = list(self.running_tasks.running_statuses)
        data["auth"]["tokens"] = ["***"] * len(self.auth.tokens)
        return data


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _coerce(key: str, value: Any, hint: Any, from_env: bool) -> Any:
    """Check (and, for environment strings, parse) one value against its declared type."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if from_env and isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if from_env and isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{key} = {value!r}: expected true or false")
    if hint is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(f"{key} = {value!r}: expected an integer")
    if hint is float:
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(f"{key} = {value!r}: expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{key} = {value!r}: expected a string")
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SettingsError(f"{key} = {value!r}: expected a list of strings")
    raise SettingsError(f"{key}: unsupported type {hint!r}")  # pragma: no cover - a programming error


def _build_section(name: str, cls: type[Any], raw: Mapping[str, Any], env_keys: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    # in a section holding a secret, a mistyped key may hold the secret itself: no value is ever shown
    secret_section = any(f.metadata.get("secret") for f in known.values())
    for key in raw:
        if key not in known:
            shown = "***" if secret_section else repr(raw[key])
            raise SettingsError(f"{name}.{key} = {shown}: unknown setting (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        try:
            coerced = _coerce(dotted, value, hints[key], from_env=key in env_keys)
        except SettingsError as exc:
            if known[key].metadata.get("secret"):
                raise SettingsError(str(exc).replace(f"{dotted} = {value!r}", f"{dotted} = ***", 1)) from None
            raise
        low, high = known[key].metadata.get("low"), known[key].metadata.get("high")
        if low is not None and coerced < low:
            raise SettingsError(f"{dotted} = {value!r}: must be >= {low}")
        if high is not None and coerced > high:
            raise SettingsError(f"{dotted} = {value!r}: must be <= {high}")
        values[key] = coerced
    section = cls(**values)
    validate = getattr(section, "validate", None)  # the cross-field checks of sections that have them
    if validate is not None:
        validate()
    return section


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (default `settings.toml`, or `$SERVICE_SETTINGS`), then apply environment overrides."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("SERVICE_SETTINGS") or DEFAULT_PATH
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    elif path != DEFAULT_PATH:
        raise SettingsError(f"SERVICE_SETTINGS = {str(path)!r}: no such file")
    return settings_from_mapping(raw, env)


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from parsed TOML data plus environment overrides (`{}` gives the defaults)."""
    env = {} if env is None else env
    sections = _section_types()
    data: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in sections:
            raise SettingsError(f"{name} = {value!r}: unknown section (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise SettingsError(f"{name} = {value!r}: expected a table")
        data[name] = dict(value)
    from_env: dict[str, set[str]] = {name: set() for name in sections}

    def override(section: str, key: str, value: str) -> None:
        data.setdefault(section, {})[key] = value
        from_env[section].add(key)

    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or parts[0] not in sections:
            shown = "***" if any(word in var.upper() for word in _SECRET_WORDS) else repr(value)
            raise SettingsError(f"{var} = {shown}: expected SERVICE__<SECTION>__<KEY> with a known section")
        override(parts[0], parts[1], value)
    if "REDIS_URL" in env:
        override("redis", "url", env["REDIS_URL"])
    if "PORT" in env:
        override("server", "port", env["PORT"])
    built = {name: _build_section(name, cls, data.get(name, {}), from_env[name]) for name, cls in sections.items()}
    return Settings(**built)
