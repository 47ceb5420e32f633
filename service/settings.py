"""Settings: `settings.toml`, then the environment; every error names the key and the bad value."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

# The file the repository ships, every setting at its default with what it means. Read when it is the working
# directory's settings.toml (or named); an installed service without one runs on the built-in defaults.
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "settings.toml"
LOCAL_FILE = "settings.toml"
ENV_PREFIX = "SERVICE__"


class SettingsError(ValueError):
    """A setting is missing, of the wrong type, out of range or unknown."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table of settings.toml; `validate` checks what the field types cannot (one field against another)."""

    def validate(self) -> None:
        return None


# the TLS files redis-py reads from a URL's query (`?ssl_ca_certs=...`), checked like the settings of the same name
_URL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisSettings(_Section, frozen=True, forbid_unknown_fields=True):
    # standalone: one server at `url`; cluster: `url` names any one node, the others are discovered; sentinel: the
    # master named `master_name` is asked of `sentinels`, and `url` gives only the scheme, credentials and database
    url: str = "redis://127.0.0.1:6379/0"
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    sentinels: tuple[str, ...] = ()  # "host:port" of each Sentinel (sentinel mode)
    master_name: str = ""  # the name the Sentinels monitor the master under (sentinel mode)
    # the Sentinels' own credentials (sentinel.conf `requirepass`, or an ACL user there), apart from the master's in
    # `url`: a Sentinel rarely has any, so none by default
    sentinel_username: str = ""
    sentinel_password: str = ""
    # TLS (a rediss:// url): the names are redis.conf's own (tls-ca-cert-file, tls-cert-file, tls-key-file)
    tls_ca_cert_file: str = ""  # the CA that signed the servers' certificates; empty: the system's CAs
    tls_cert_file: str = ""  # a client certificate, for servers with tls-auth-clients yes
    tls_key_file: str = ""  # its private key

    def validate(self) -> None:
        parts = urlsplit(self.url)
        shown = redact_url(self.url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"redis.url = {shown!r}: scheme must be redis://, rediss:// or unix://")
        tls_files = {"tls_ca_cert_file": self.tls_ca_cert_file, "tls_cert_file": self.tls_cert_file,
                     "tls_key_file": self.tls_key_file}  # fmt: skip
        for name, file in tls_files.items():
            if file and parts.scheme != "rediss":
                raise SettingsError(f"redis.{name} = {file!r}: TLS needs a rediss:// url (redis.url is {shown!r})")
            _check_file(f"redis.{name}", file)
        for name, values in parse_qs(parts.query).items():
            if name in _URL_FILES:
                _check_file(f"redis.url ({name})", values[-1])
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                ("tls_cert_file", "tls_key_file") if self.tls_cert_file else ("tls_key_file", "tls_cert_file")
            )
            raise SettingsError(f"redis.{given} = {tls_files[given]!r}: needs redis.{missing} too")
        if self.mode == "cluster":
            if parts.scheme == "unix":
                raise SettingsError(f"redis.url = {shown!r}: a cluster is reached over TCP (redis:// or rediss://)")
            if parts.path.strip("/") not in ("", "0"):
                raise SettingsError(f"redis.url = {shown!r}: a cluster has database 0 only")
        if self.mode != "sentinel":
            for name, given in (
                ("sentinel_username", self.sentinel_username),
                ("sentinel_password", self.sentinel_password),
            ):
                if given:
                    raise SettingsError(
                        f"redis.{name} is set, but redis.mode = {self.mode!r}: it is for the Sentinels (sentinel mode)"
                    )
        elif self.sentinel_username and not self.sentinel_password:
            raise SettingsError(
                f"redis.sentinel_username = {self.sentinel_username!r}: needs redis.sentinel_password too"
            )
        if self.mode == "sentinel":
            if not self.sentinels:
                raise SettingsError('redis.sentinels = []: sentinel mode needs at least one "host:port"')
            for entry in self.sentinels:
                host, _, port = entry.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise SettingsError(f"redis.sentinels = {list(self.sentinels)!r}: {entry!r} is not host:port")
            if not self.master_name:
                raise SettingsError("redis.master_name = '': sentinel mode needs the master's name")
            if parts.scheme == "unix":
                raise SettingsError(
                    f"redis.url = {shown!r}: sentinels name a master by address (redis:// or rediss://)"
                )

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(host, int(port)) for host, _, port in (entry.rpartition(":") for entry in self.sentinels)]


def _check_file(name: str, file: str) -> None:
    """A file the TLS handshake will read: missing or unreadable stops startup here, naming the setting."""
    if not file:
        return
    path = Path(file)
    if not path.is_file():
        raise SettingsError(f"{name} = {file!r}: no such file")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{name} = {file!r}: not readable by this process")


class ServerSettings(_Section, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    log_level: str = "info"
    # peers whose X-Forwarded-For names the client (addresses or networks); nobody else's is believed
    trusted_proxies: tuple[str, ...] = ()
    # What one client may cost before its request reaches the app (service.http.server explains each default):
    # a request's head (line and headers) in bytes, past it 431; seconds to send it, past them 408; seconds a
    # keep-alive connection may idle between requests; open connections at which further requests get 503.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1_048_576)] = 64 * 1024
    header_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    keep_alive_timeout: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 8192

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


class RunningTasksSettings(_Section, frozen=True, forbid_unknown_fields=True):
    redis_timeout: Annotated[int, msgspec.Meta(ge=1)] = 5000  # ms, every Redis call and the connect
    scan_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100  # SCAN COUNT and keys per fetch
    max_scan_time: Annotated[int, msgspec.Meta(ge=1)] = 10_000  # ms, budget of one full scan
    cache_enabled: bool = True
    cache_ttl: Annotated[int, msgspec.Meta(ge=1)] = 60  # s
    worker_count: Annotated[int, msgspec.Meta(ge=1, le=256)] = 10
    refresh_interval: Annotated[float, msgspec.Meta(ge=0.05)] = 2  # s
    key_pattern: str = "request:id:*"
    running_statuses: tuple[str, ...] = ("pending", "processing", "running")
    producer_key_ttl: Annotated[int, msgspec.Meta(ge=0)] = 3600  # s; 0 = unknown
    fetch_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576  # bytes one value fetch may return
    full_read_every: Annotated[int, msgspec.Meta(ge=1)] = 30  # every Nth scan reads even unchanged values
    # refreshes on an event loop of their own, in a thread: a read load cannot starve them (false: on the serving loop)
    refresh_thread: bool = True
    # the change feed (docs/operations.md, "The change feed"): follow Redis' invalidation pushes (CLIENT TRACKING,
    # broadcasting mode) and apply what changed in batches; SCAN stays the reconciler
    change_feed: Literal["auto", "on", "off"] = "auto"
    change_batch_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 20  # ms names are gathered before a batch
    reconcile_interval: Annotated[float, msgspec.Meta(ge=1)] = 60  # s between full scans while the feed runs
    change_buffer: Annotated[int, msgspec.Meta(ge=1)] = 100_000  # names held at once; past it, a full scan
    # the query API (issue 5)
    stall_after: Annotated[int, msgspec.Meta(ge=1)] = 300  # s without a change before a task is stalled
    history_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000  # finished tasks kept in memory
    query_cache_size: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 256  # query results kept; 0 = none
    query_cache_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1_048_576  # bytes those results may hold

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


class EventsSettings(_Section, frozen=True, forbid_unknown_fields=True):
    # The event stream (GET .../tasks/running/events) and the running list's `since=`; the README says why each
    # default is what it is.
    max_streams: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1000  # open at once; beyond, 503 + Retry-After
    heartbeat_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15  # a comment line when nothing else is sent
    retry_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 3000  # the `retry:` hint sent to clients
    queue_events: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256  # events waiting per stream; beyond, a reset
    held_generations: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000  # change sets kept for resumes


# RFC 6750 b64token: what an `Authorization: Bearer` header can carry unchanged
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_LENGTH = 16
# a mistyped environment variable whose name holds one of these may hold a secret: its value is not shown
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD")
_SECRET_SECTIONS = frozenset({"auth"})  # tables whose values are never shown, not even a mistyped key's


class AuthSettings(_Section, frozen=True, forbid_unknown_fields=True):
    # Empty: no authentication. Never shown: not in repr, errors, logs or cache-stats.
    tokens: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"AuthSettings(tokens=[{', '.join('***' for _ in self.tokens)}])"

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


class RateLimitSettings(_Section, frozen=True, forbid_unknown_fields=True):
    # Per client (its token, else its address); 0, the default: no limit. A fleet of dashboards behind one NAT is
    # one address: a limit on by default refused most of its polls, and a refusal cost about what an answer does.
    requests_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 40  # requests a client may make at once
    max_clients: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000  # buckets kept; oldest dropped


class CorsSettings(_Section, frozen=True, forbid_unknown_fields=True):
    allowed_origins: tuple[str, ...] = ()  # e.g. ["https://dash.example.com"]; ["*"]: any; empty: no CORS
    max_age: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 600  # s browsers may cache a preflight answer

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


class LoggingSettings(_Section, frozen=True, forbid_unknown_fields=True):
    format: str = "plain"  # or "json": one object per line
    access_log: bool = True  # one line per request

    def validate(self) -> None:
        if self.format not in ("plain", "json"):
            raise SettingsError(f"logging.format = {self.format!r}: must be plain or json")


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    running_tasks: RunningTasksSettings = msgspec.field(default_factory=RunningTasksSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    cors: CorsSettings = msgspec.field(default_factory=CorsSettings)
    events: EventsSettings = msgspec.field(default_factory=EventsSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)

    def redacted(self) -> dict[str, Any]:
        """The settings in effect as plain data, with any password (the Redis URL's, the Sentinels') and every token
        replaced."""
        data: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))  # as JSON has them: lists
        data["redis"]["url"] = redact_url(self.redis.url)
        if self.redis.sentinel_password:
            data["redis"]["sentinel_password"] = "***"
        data["auth"]["tokens"] = ["***"] * len(self.auth.tokens)
        return data


# Query parameters of a Redis URL (redis-py reads them as connection options) whose value is a credential or
# names one: masked wherever a URL is shown or logged, whatever their case or encoding.
_SECRET_QUERY_WORDS = ("pass", "secret", "token", "key", "auth", "cred")


def redact_url(url: str) -> str:
    """`url` with every credential it carries replaced by ***: the password of `user:password@` (or `:password@`)
    and the value of any query parameter that holds a secret (`?password=...`, `ssl_password=`, ...). A URL that
    does not parse shows nothing of itself."""
    try:
        parts = urlsplit(url)
        password = parts.password
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError:
        return "***"
    head, sep, query = url.partition("?")
    if password is not None:
        scheme, _, rest = head.partition("://")
        authority, slash, path = rest.partition("/")
        userinfo, _, host = authority.rpartition("@")
        head = f"{scheme}://{userinfo.partition(':')[0]}:***@{host}{slash}{path}"
    if query:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            secret = any(word in unquote(name).lower() for word in _SECRET_QUERY_WORDS)
            pairs.append(f"{name}=***" if equals and secret else pair)
        query = "&".join(pairs)
    return head + sep + query


# -- reading: TOML and environment into the structs, errors as one line naming the key and the value ---------------


def _section_types() -> dict[str, type[_Section]]:
    return {field.name: field.type for field in msgspec.structs.fields(Settings)}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _from_env(text: str, hint: Any) -> Any:
    """An environment string as the value the field's type wants (its bounds are checked with the rest)."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    if base is bool:
        word = text.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else text
    if typing.get_origin(base) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if base in (int, float):
        try:
            return msgspec.convert(text.strip(), base, strict=False)
        except msgspec.ValidationError:
            return text  # refused below, with the value as it was given
    return text


# msgspec's words for a type -> ours, for the value's key
_EXPECTED = {
    "int": "expected an integer",
    "float": "expected a number",
    "bool": "expected true or false",
    "str": "expected a string",
    "array": "expected a list of strings",
}
_BOUND = re.compile(r"Expected `\w+` (>=|<=|>|<) (\S+)")
_TYPE = re.compile(r"Expected `(\w+)`")


def _explain(message: str, list_item: bool) -> str:
    """What msgspec's validation message means for one setting, in this module's words."""
    bound = _BOUND.match(message)
    if bound:  # a float's bound as declared: `>= 0`, not msgspec's `>= 0.0`
        return f"must be {bound.group(1)} {bound.group(2).removesuffix('.0')}"
    kind = _TYPE.match(message)
    if list_item or (kind and kind.group(1) == "array"):
        return _EXPECTED["array"]
    return _EXPECTED.get(kind.group(1) if kind else "", message)


def _build_section(name: str, cls: type[_Section], raw: Mapping[str, Any], env_keys: set[str]) -> _Section:
    hints = typing.get_type_hints(cls, include_extras=True)
    # a section holding a secret shows no value at all: a mistyped key may hold the secret itself
    secret = name in _SECRET_SECTIONS
    for key in raw:
        if key not in hints:
            # so may an unknown key named like one, in any section (`SERVICE__REDIS__PASSWORD`)
            shown = "***" if secret or any(word in key.upper() for word in _SECRET_WORDS) else repr(raw[key])
            raise SettingsError(f"{name}.{key} = {shown}: unknown setting (known: {', '.join(hints)})")
    values = {key: _from_env(value, hints[key]) if key in env_keys else value for key, value in raw.items()}
    try:
        section = msgspec.convert(values, cls, strict=True)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        key = path.rstrip("`").split("[", 1)[0] if path else next(iter(raw), "")
        shown = "***" if secret else repr(raw.get(key))
        hint = hints.get(key)
        if typing.get_origin(hint) is Literal:  # one of a few words: name them
            explained = "must be one of " + ", ".join(repr(word) for word in typing.get_args(hint))
        else:
            explained = _explain(message, "[" in path)
        raise SettingsError(f"{name}.{key} = {shown}: {explained}") from None
    section.validate()
    return section


def settings_file(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """Where the settings are read from: `path` (the command line's --settings), else $SERVICE_SETTINGS, else
    `settings.toml` in the working directory when there is one; None: the built-in defaults."""
    env = os.environ if env is None else env
    if path is not None:
        return Path(path)
    if env.get("SERVICE_SETTINGS"):
        return Path(env["SERVICE_SETTINGS"])
    local = Path.cwd() / LOCAL_FILE
    return local.resolve() if local.is_file() else None


def log_settings_source(file: Path | None) -> None:
    """One line at startup: which file the settings came from."""
    logging.getLogger("service.settings").info(
        "settings: %s", "built-in defaults (no settings file)" if file is None else f"read from {file}"
    )


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings file (see `settings_file`), then apply the environment's overrides."""
    env = os.environ if env is None else env
    file = settings_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        if not file.is_file():
            named = "settings file" if path is not None else "SERVICE_SETTINGS"
            raise SettingsError(f"{named} = {str(file)!r}: no such file")
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{file}: not valid TOML: {exc}") from exc
    return settings_from_mapping(raw, env)


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from parsed TOML data plus environment overrides (`{}` gives the defaults): `REDIS_URL` and
    `PORT` override the file, and `SERVICE__<SECTION>__<KEY>` overrides both."""
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

    # The platforms' conventions first (a PaaS or a Redis add-on sets them), then SERVICE__<SECTION>__<KEY>, which
    # names this service's own setting and so wins when both are set: file < REDIS_URL, PORT < SERVICE__...
    if "REDIS_URL" in env:
        override("redis", "url", env["REDIS_URL"])
    if "PORT" in env:
        override("server", "port", env["PORT"])
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or parts[0] not in sections:
            shown = "***" if any(word in var.upper() for word in _SECRET_WORDS) else repr(value)
            raise SettingsError(f"{var} = {shown}: expected SERVICE__<SECTION>__<KEY> with a known section")
        override(parts[0], parts[1], value)
    built = {name: _build_section(name, cls, data.get(name, {}), from_env[name]) for name, cls in sections.items()}
    return Settings(**built)  # type: ignore[arg-type]  # each section is its field's type
