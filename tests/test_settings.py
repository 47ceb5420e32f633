from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from service.cli import _settings, build_parser
from service.settings import (
    DEFAULT_PATH,
    RunningTasksSettings,
    Settings,
    SettingsError,
    load_settings,
    redact_url,
    settings_from_mapping,
)


def test_shipped_file_holds_the_defaults() -> None:
    assert load_settings(DEFAULT_PATH, env={}) == Settings()


def test_shipped_file_names_every_setting() -> None:
    text = DEFAULT_PATH.read_text()
    for section in msgspec.structs.fields(Settings):
        assert f"[{section.name}]" in text
        for field in msgspec.structs.fields(getattr(Settings(), section.name)):
            assert f"\n{field.name} = " in text, field.name


def test_established_defaults() -> None:
    rt = RunningTasksSettings()
    assert (rt.redis_timeout, rt.scan_batch_size, rt.max_scan_time) == (5000, 100, 10000)
    assert (rt.cache_enabled, rt.cache_ttl, rt.worker_count) == (True, 60, 10)
    assert rt.running_statuses == ("pending", "processing", "running")
    assert (rt.stall_after, rt.history_size) == (300, 10_000)
    assert (rt.query_cache_size, rt.query_cache_bytes) == (256, 64 * 1_048_576)


def test_environment_overrides() -> None:
    env = {
        "REDIS_URL": "redis://:secret@cache:6380/2",
        "PORT": "9000",
        "SERVICE__RUNNING_TASKS__CACHE_ENABLED": "false",
        "SERVICE__RUNNING_TASKS__SCAN_BATCH_SIZE": "500",
        "SERVICE__RUNNING_TASKS__RUNNING_STATUSES": "pending, processing",
        "SERVICE__RUNNING_TASKS__REFRESH_INTERVAL": "0.5",
        "UNRELATED": "x",
    }
    settings = load_settings(DEFAULT_PATH, env=env)
    assert settings.redis.url == "redis://:secret@cache:6380/2"
    assert settings.server.port == 9000
    assert settings.running_tasks.cache_enabled is False
    assert settings.running_tasks.scan_batch_size == 500
    assert settings.running_tasks.running_statuses == ("pending", "processing")
    assert settings.running_tasks.refresh_interval == 0.5


def test_port_and_redis_url_override_the_file_and_yield_to_service_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The platforms' PORT and REDIS_URL (a PaaS, a Redis add-on, `docker run -e`) beat the file;
    SERVICE__SERVER__PORT and SERVICE__REDIS__URL, this service's own names, beat them; the command line beats all."""
    file = {"server": {"port": 7000}, "redis": {"url": "redis://file:6380/0"}}
    platform = {"PORT": "9000", "REDIS_URL": "redis://platform:6380/1"}
    own = {"SERVICE__SERVER__PORT": "9100", "SERVICE__REDIS__URL": "redis://own:6380/2"}
    assert settings_from_mapping(file).server.port == 7000
    settings = settings_from_mapping(file, platform)
    assert (settings.server.port, settings.redis.url) == (9000, "redis://platform:6380/1")
    for env in ({**platform, **own}, {**own, **platform}):  # whatever the order of the environment
        settings = settings_from_mapping(file, env)
        assert (settings.server.port, settings.redis.url) == (9100, "redis://own:6380/2")
    # an overridden variable is not read at all; the one in effect is checked
    assert settings_from_mapping({}, {"PORT": "http", "SERVICE__SERVER__PORT": "9100"}).server.port == 9100
    with pytest.raises(SettingsError, match="^server.port = '0': must be >= 1$"):
        settings_from_mapping({}, {"PORT": "9000", "SERVICE__SERVER__PORT": "0"})
    # `scan --redis-url` beats both
    for name, value in {**platform, **own}.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["scan", "--redis-url", "redis://cli:6380/3"])
    assert _settings(args).redis.url == "redis://cli:6380/3"
    assert _settings(build_parser().parse_args(["scan"])).redis.url == "redis://own:6380/2"


def test_settings_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[running_tasks]\nworker_count = 3\nkey_pattern = "job:*"\n')
    settings = load_settings(env={"SERVICE_SETTINGS": str(path)})
    assert settings.running_tasks.worker_count == 3
    assert settings.running_tasks.key_pattern == "job:*"
    assert settings.running_tasks.scan_batch_size == 100  # untouched keys keep their defaults


def test_missing_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SERVICE_SETTINGS = .*no such file"):
        load_settings(env={"SERVICE_SETTINGS": str(tmp_path / "nope.toml")})


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[running_tasks\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"running_tasks": {"scan_batch_size": 0}}, {}, "running_tasks.scan_batch_size = 0: must be >= 1"),
        ({"running_tasks": {"cache_ttl": -5}}, {}, "running_tasks.cache_ttl = -5: must be >= 1"),
        ({"running_tasks": {"producer_key_ttl": -1}}, {}, "running_tasks.producer_key_ttl = -1: must be >= 0"),
        ({"running_tasks": {"worker_count": "10"}}, {}, "running_tasks.worker_count = '10': expected an integer"),
        ({"running_tasks": {"worker_count": True}}, {}, "running_tasks.worker_count = True: expected an integer"),
        ({"running_tasks": {"cache_enabled": 1}}, {}, "running_tasks.cache_enabled = 1: expected true or false"),
        ({"running_tasks": {"running_statuses": "pending"}}, {}, "running_statuses = 'pending': expected a list"),
        ({"running_tasks": {"running_statuses": []}}, {}, "running_statuses = \\[\\]: must be non-empty"),
        ({"running_tasks": {"key_pattern": ""}}, {}, "key_pattern = '': must not be empty"),
        (
            {"running_tasks": {"refresh_interval": 90, "cache_ttl": 60}},
            {},
            "running_tasks.refresh_interval = 90.0: must not exceed running_tasks.cache_ttl \\(60\\)",
        ),
        ({"running_tasks": {"scan_batchsize": 5}}, {}, "running_tasks.scan_batchsize = 5: unknown setting"),
        ({"running_tasks": {"stall_after": 0}}, {}, "running_tasks.stall_after = 0: must be >= 1"),
        ({"running_tasks": {"history_size": 0}}, {}, "running_tasks.history_size = 0: must be >= 1"),
        ({"running_tasks": {"query_cache_size": -1}}, {}, "running_tasks.query_cache_size = -1: must be >= 0"),
        ({}, {"SERVICE__RUNNING_TASKS__STALL_AFTER": "5m"}, "running_tasks.stall_after = '5m': expected an integer"),
        ({"runing_tasks": {}}, {}, "runing_tasks = {}: unknown section"),
        ({"redis": {"url": "http://x"}}, {}, "redis.url = 'http://x': scheme must be"),
        ({}, {"SERVICE__RUNNING_TASKS__CACHE_TTL": "soon"}, "running_tasks.cache_ttl = 'soon': expected an integer"),
        ({}, {"SERVICE__RUNNING_TASKS__CACHE_ENABLED": "maybe"}, "cache_enabled = 'maybe': expected true or false"),
        ({}, {"SERVICE__NOPE__X": "1"}, "SERVICE__NOPE__X = '1': expected SERVICE__<SECTION>__<KEY>"),
        ({}, {"PORT": "0"}, "server.port = '0': must be >= 1"),
        ({}, {"PORT": "http"}, "server.port = 'http': expected an integer"),
        ({}, {"PORT": "70000"}, "server.port = '70000': must be <= 65535"),
        ({}, {"REDIS_URL": "http://cache:6379"}, "redis.url = 'http://cache:6379': scheme must be"),
    ],
)
def test_bad_settings_name_the_key_and_the_value(raw: dict, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from_mapping(raw, env)


def test_redaction_hides_the_password_only() -> None:
    assert redact_url("redis://:hunter2@db:6380/1") == "redis://:***@db:6380/1"
    assert redact_url("rediss://user:hunter2@db/0") == "rediss://user:***@db/0"
    assert redact_url("redis://db:6379/0") == "redis://db:6379/0"
    settings = settings_from_mapping({"redis": {"url": "redis://:hunter2@db:6380/1"}})
    assert "hunter2" not in repr(settings.redacted())
    assert settings.redacted()["running_tasks"]["running_statuses"] == ["pending", "processing", "running"]


TOKEN_A = "tok-A-0123456789abcdef"
TOKEN_B = "tok-B-0123456789abcdef"


def test_operations_defaults() -> None:
    settings = Settings()
    assert settings.auth.tokens == ()
    assert (settings.rate_limit.requests_per_second, settings.rate_limit.burst) == (0, 40)  # no limit by default
    assert settings.cors.allowed_origins == ()
    assert (settings.logging.format, settings.logging.access_log) == ("plain", True)
    assert settings.server.trusted_proxies == ()


def test_tokens_and_operations_from_the_environment() -> None:
    env = {
        "SERVICE__AUTH__TOKENS": f"{TOKEN_A}, {TOKEN_B}",
        "SERVICE__RATE_LIMIT__REQUESTS_PER_SECOND": "0",
        "SERVICE__SERVER__TRUSTED_PROXIES": "10.0.0.0/8,127.0.0.1",
        "SERVICE__CORS__ALLOWED_ORIGINS": "https://dash.example.com",
        "SERVICE__LOGGING__FORMAT": "json",
    }
    settings = load_settings(DEFAULT_PATH, env=env)
    assert settings.auth.tokens == (TOKEN_A, TOKEN_B)
    assert settings.rate_limit.requests_per_second == 0
    assert settings.server.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert settings.cors.allowed_origins == ("https://dash.example.com",)
    assert settings.logging.format == "json"


def test_tokens_are_never_shown() -> None:
    settings = settings_from_mapping({"auth": {"tokens": [TOKEN_A, TOKEN_B]}})
    assert settings.redacted()["auth"]["tokens"] == ["***", "***"]
    for text in (repr(settings), repr(settings.auth), str(settings.redacted())):
        assert TOKEN_A not in text and TOKEN_B not in text


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"auth": {"tokens": ["short-but-secret"[:10]]}}, {}, "auth.tokens = \\*\\*\\*: token 1 has 10 characters"),
        ({"auth": {"tokens": [TOKEN_A, "has a space-0123456789"]}}, {}, "token 2 holds characters a Bearer header"),
        ({"auth": {"tokens": "tok-C-0123456789abcdef"}}, {}, "auth.tokens = \\*\\*\\*: expected a list of strings"),
        ({"auth": {"token": "tok-C-0123456789abcdef"}}, {}, "auth.token = \\*\\*\\*: unknown setting"),
        ({}, {"SERVICE__AUHT__TOKENS": "tok-C-0123456789abcdef"}, "SERVICE__AUHT__TOKENS = \\*\\*\\*: expected"),
    ],
)
def test_bad_token_settings_name_the_key_but_not_the_token(raw: dict, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        settings_from_mapping(raw, env)
    assert "0123456789" not in str(caught.value) and "short-but-" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}}, "'proxy.local' is not an IP address"),
        ({"rate_limit": {"requests_per_second": -1}}, "rate_limit.requests_per_second = -1: must be >= 0"),
        ({"rate_limit": {"burst": 0}}, "rate_limit.burst = 0: must be >= 1"),
        ({"rate_limit": {"max_clients": 0}}, "rate_limit.max_clients = 0: must be >= 1"),
        ({"cors": {"allowed_origins": ["dash.example.com"]}}, "'dash.example.com' is not an origin"),
        ({"cors": {"allowed_origins": ["https://dash.example.com/app"]}}, "is not an origin"),
        ({"logging": {"format": "xml"}}, "logging.format = 'xml': must be plain or json"),
        ({"logging": {"access_log": "yes"}}, "logging.access_log = 'yes': expected true or false"),
    ],
)
def test_bad_operations_settings_name_the_key_and_the_value(raw: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from_mapping(raw)


# -- the conversion comes from the struct declarations: what they make possible, and what a msgspec upgrade may move --


def _bounds() -> list[tuple[str, str, Any, str]]:
    """(section, key, a value just outside, the bound's text) for every bound declared on a settings field."""
    cases = []
    for section in msgspec.structs.fields(Settings):
        hints = typing.get_type_hints(section.type, include_extras=True)
        for key, hint in hints.items():
            if typing.get_origin(hint) is not Annotated:
                continue
            base, meta = typing.get_args(hint)
            step = 1 if base is int else 0.01
            if meta.ge is not None:
                cases.append((section.name, key, meta.ge - step, f">= {meta.ge}"))
            if meta.gt is not None:
                cases.append((section.name, key, meta.gt, f"> {meta.gt}"))
            if meta.le is not None:
                cases.append((section.name, key, meta.le + step, f"<= {meta.le}"))
    return cases


def test_bounds_are_found() -> None:
    found = {(section, key, bound.split()[0]) for section, key, _, bound in _bounds()}
    assert ("server", "port", ">=") in found and ("server", "port", "<=") in found
    assert ("server", "header_timeout", ">") in found
    assert ("running_tasks", "refresh_interval", ">=") in found
    assert len(found) >= 25


@pytest.mark.parametrize(("section", "key", "value", "bound"), _bounds())
def test_every_bound_on_either_side_names_the_key_the_value_and_the_bound(
    section: str, key: str, value: Any, bound: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from_mapping({section: {key: value}})
    assert str(caught.value).startswith(f"{section}.{key} = {value!r}: must be {bound}")
    env = {f"SERVICE__{section.upper()}__{key.upper()}": str(value)}
    with pytest.raises(SettingsError) as caught:
        settings_from_mapping({}, env)
    assert str(caught.value) == f"{section}.{key} = {str(value)!r}: must be {bound}"


def test_values_on_a_bound_are_accepted() -> None:
    settings = settings_from_mapping(
        {"server": {"port": 65535, "header_timeout": 3600}, "rate_limit": {"requests_per_second": 0}},
        {"SERVICE__RUNNING_TASKS__REFRESH_INTERVAL": "0.05", "SERVICE__RUNNING_TASKS__PRODUCER_KEY_TTL": "0"},
    )
    assert (settings.server.port, settings.server.header_timeout) == (65535, 3600.0)
    assert (settings.running_tasks.refresh_interval, settings.running_tasks.producer_key_ttl) == (0.05, 0)
    assert settings_from_mapping({}, {"PORT": "1"}).server.port == 1


def test_floats_from_the_environment_and_from_toml() -> None:
    env = {
        "SERVICE__SERVER__HEADER_TIMEOUT": " 2.5 ",
        "SERVICE__RATE_LIMIT__REQUESTS_PER_SECOND": "12",
        "SERVICE__RUNNING_TASKS__REFRESH_INTERVAL": "1e-1",
    }
    settings = settings_from_mapping({}, env)
    assert settings.server.header_timeout == 2.5
    assert settings.rate_limit.requests_per_second == 12.0
    assert type(settings.rate_limit.requests_per_second) is float  # an integer string for a float field: a float
    assert settings.running_tasks.refresh_interval == 0.1
    toml = settings_from_mapping({"server": {"header_timeout": 30}})  # a TOML integer for a float: accepted
    assert toml.server.header_timeout == 30.0 and type(toml.server.header_timeout) is float


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({}, {"SERVICE__SERVER__HEADER_TIMEOUT": "soon"}, "server.header_timeout = 'soon': expected a number"),
        ({}, {"SERVICE__RUNNING_TASKS__REFRESH_INTERVAL": "nan"}, "running_tasks.refresh_interval = 'nan': must be"),
        ({"server": {"header_timeout": "2.5"}}, {}, "server.header_timeout = '2.5': expected a number"),
        ({"server": {"header_timeout": True}}, {}, "server.header_timeout = True: expected a number"),
        ({"running_tasks": {"worker_count": 2.0}}, {}, "running_tasks.worker_count = 2.0: expected an integer"),
        ({"running_tasks": {"worker_count": None}}, {}, "running_tasks.worker_count = None: expected an integer"),
        ({"running_tasks": {"key_pattern": 5}}, {}, "running_tasks.key_pattern = 5: expected a string"),
        ({"running_tasks": 5}, {}, "running_tasks = 5: expected a table"),
        (
            {"running_tasks": {"running_statuses": ["pending", 1]}},
            {},
            "running_tasks.running_statuses = \\['pending', 1\\]: expected a list of strings",
        ),
    ],
)
def test_values_msgspec_refuses_are_explained_in_our_words(raw: dict, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}") as caught:
        settings_from_mapping(raw, env)
    assert "Expected `" not in str(caught.value) and "$." not in str(caught.value)  # no msgspec wording leaks


def test_lists_and_booleans_from_the_environment() -> None:
    env = {
        "SERVICE__RUNNING_TASKS__RUNNING_STATUSES": " queued ,, running , ",
        "SERVICE__CORS__ALLOWED_ORIGINS": "",
        "SERVICE__RUNNING_TASKS__CACHE_ENABLED": " Off ",
        "SERVICE__LOGGING__ACCESS_LOG": "YES",
        "SERVICE__RUNNING_TASKS__SCAN_BATCH_SIZE": " 500 ",
    }
    settings = settings_from_mapping({}, env)
    assert settings.running_tasks.running_statuses == ("queued", "running")  # a tuple, blanks dropped
    assert settings.cors.allowed_origins == ()
    assert settings.running_tasks.cache_enabled is False and settings.logging.access_log is True
    assert settings.running_tasks.scan_batch_size == 500
    with pytest.raises(SettingsError, match="^running_tasks.running_statuses = \\[\\]: must be non-empty"):
        settings_from_mapping({}, {"SERVICE__RUNNING_TASKS__RUNNING_STATUSES": " , "})


def test_the_environment_overrides_the_file_and_keeps_its_other_keys() -> None:
    raw = {"running_tasks": {"worker_count": 3, "cache_ttl": 120}}
    settings = settings_from_mapping(raw, {"SERVICE__RUNNING_TASKS__WORKER_COUNT": "7"})
    assert (settings.running_tasks.worker_count, settings.running_tasks.cache_ttl) == (7, 120)


def test_settings_are_frozen_hashable_and_default_constructible() -> None:
    settings = settings_from_mapping({}, {"SERVICE__AUTH__TOKENS": TOKEN_A})
    assert hash(settings) == hash(settings_from_mapping({"auth": {"tokens": [TOKEN_A]}}))
    with pytest.raises(AttributeError):
        settings.running_tasks.worker_count = 1  # type: ignore[misc]
    for section in msgspec.structs.fields(Settings):
        assert section.type() == getattr(Settings(), section.name)
        with pytest.raises(msgspec.ValidationError, match="unknown field"):  # forbid_unknown_fields is declared
            msgspec.convert({"no_such_key": 1}, section.type)


def test_an_unknown_key_named_like_a_secret_is_not_shown() -> None:
    for raw, env in (({}, {"SERVICE__REDIS__PASSWORD": "hunter2"}), ({"redis": {"password": "hunter2"}}, {})):
        with pytest.raises(SettingsError, match="^redis.password = \\*\\*\\*: unknown setting") as caught:
            settings_from_mapping(raw, env)
        assert "hunter2" not in str(caught.value)
    with pytest.raises(SettingsError, match="^redis.db = 3: unknown setting"):  # other unknown keys stay shown
        settings_from_mapping({"redis": {"db": 3}})


@pytest.mark.parametrize("env", [False, True])
def test_change_feed_is_one_of_three_words(env: bool) -> None:
    with pytest.raises(SettingsError) as caught:
        if env:
            settings_from_mapping({}, {"SERVICE__RUNNING_TASKS__CHANGE_FEED": "maybe"})
        else:
            settings_from_mapping({"running_tasks": {"change_feed": "maybe"}})
    assert str(caught.value) == "running_tasks.change_feed = 'maybe': must be one of 'auto', 'on', 'off'"
    for word in ("auto", "on", "off"):
        assert (
            settings_from_mapping({}, {"SERVICE__RUNNING_TASKS__CHANGE_FEED": word}).running_tasks.change_feed == word
        )
    assert settings_from_mapping({}).running_tasks.change_feed == "auto"
