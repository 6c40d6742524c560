"""Configuration: one TOML file plus environment variables, validated before use.

Where the file is: ``LLMRELAY_CONFIG`` if set, else ``config.toml`` in the user config directory
(``platformdirs.user_config_dir("llmrelay")``); a missing default file means "all defaults".
Environment variables override the file: ``LLMRELAY_MODEL``, ``LLMRELAY_TIMEOUT``,
``LLMRELAY_MAX_RETRIES``, ``LLMRELAY_PROXY``.

API keys are never written in the file: an endpoint names the environment variable that holds
its key (``api_key_env``), and ``llmrelay config`` shows everything with secrets masked.
Every key is described in docs/configuration.md.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from ._env import EnvWatch, getenv
from .errors import ConfigError

__all__ = [
    "Config",
    "EndpointConfig",
    "ProviderSettings",
    "config_path",
    "get_config",
    "load_config",
    "reload_config",
    "render_toml",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

#: Headers aiohttp sets from the body itself (its length and chunking; it is sent
#: uncompressed). One written in the file would not add to the request but corrupt it: a
#: ``Content-Length`` truncates the body the server reads. Lower case. (``Host`` and
#: ``Connection`` are not among them: a ``Host`` reaches a virtual host behind an address or
#: a tunnel, and aiohttp honours both.)
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding"})

#: An RFC 9110 field name: a token (letters, digits and ``!#$%&'*+-.^_`|~``), ASCII only.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Control characters no header value may hold (CR and LF above all: they would end the
#: header and start another); a horizontal tab is allowed.
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _among(headers: dict[str, str], names: frozenset[str]) -> list[str]:
    """The names of ``headers`` that are in ``names`` (lower case), whatever their case."""
    return sorted(name for name in headers if name.lower() in names)


def _not_bool(expected: str) -> BeforeValidator:
    """Refuse ``true``/``false`` for a number: bool is an int to pydantic's lax mode, so TOML's
    ``true`` would silently become 1. (Strict mode would also refuse the environment's "3".)"""

    def check(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(f"must be {expected}, not true or false (got {str(value).lower()})")
        return value

    return BeforeValidator(check)


_Int = Annotated[int, _not_bool("an integer")]
_Number = Annotated[float, _not_bool("a number")]


def _named(value: str) -> str:
    """Refuse an empty or blank name: a model, alias or variable named ``""`` is a slip (an
    unfinished edit), and further on it fails far from the file (a plugin refusing the
    endpoint took every other endpoint down with it)."""
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


#: A model name, alias or variable name: a non-blank string.
_Name = Annotated[str, AfterValidator(_named)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(_Strict):
    """Per-provider routing settings: higher ``priority`` is tried first."""

    priority: _Int = 0
    disabled: StrictBool = False


class EndpointConfig(_Strict):
    """An OpenAI-compatible server, registered as its own provider ``name``.

    ``models`` lists what it serves; left empty, the list cached by
    ``llmrelay models --refresh NAME`` is used. ``default_model`` is what ``NAME/`` asks for.
    ``model_aliases`` lets it serve a shared name under its own model name.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    base_url: str
    api_key_env: _Name | None = None
    models: tuple[_Name, ...] = ()
    default_model: _Name | None = None
    model_aliases: dict[_Name, _Name] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    working: StrictBool = True
    send_reasoning: StrictBool = False

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        from ._urls import check_base_url

        return check_base_url(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The base URL may carry a key (``?key=...``, ``user:pass@``): never in a repr.
        from ._redact import redact

        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "base_url" and isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _checked_headers(cls, value: dict[str, str]) -> dict[str, str]:
        from ._redact import SECRET_HEADERS, redact

        for name in value:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header name {redact(repr(name))} is not a valid HTTP field name "
                    "(letters, digits and !#$%&'*+-.^_`|~ only: no spaces, no colon)"
                )
        framing = _among(value, FRAMING_HEADERS)
        if framing:
            raise ValueError(
                f"header(s) {', '.join(framing)} are set by llmrelay from the request itself: "
                "remove them from the file"
            )
        for name, text in value.items():
            # Never the value in the message: it may be a secret.
            if _HEADER_VALUE_CONTROL.search(text):
                raise ValueError(
                    f"header {name} has a control character (CR, LF, NUL...) in its value: "
                    "a header value is one line of text"
                )
        secret = _among(value, SECRET_HEADERS)
        if secret:
            raise ValueError(
                f"header(s) {', '.join(secret)} hold secrets: name the variable holding the key "
                "with api_key_env instead of writing it in the file"
            )
        return value

    @model_validator(mode="after")
    def _names_are_listed(self) -> EndpointConfig:
        if not self.models:
            return self
        listed = ", ".join(self.models)
        if self.default_model and self.default_model not in self.models:
            raise ValueError(
                f"default_model {self.default_model!r} is not in models ({listed}): "
                "add it there or leave models empty"
            )
        unknown = sorted(t for t in self.model_aliases.values() if t not in self.models)
        if unknown:
            raise ValueError(
                f"model_aliases point at {', '.join(map(repr, unknown))}, not in models ({listed})"
            )
        return self

    def api_key(self) -> str | None:
        """The key from the environment, read at call time."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Config(_Strict):
    """The whole configuration. Every field has a default, so an empty file is valid."""

    default_model: _Name = "gpt-4o-mini"
    timeout: _Number | None = Field(default=120.0, gt=0, allow_inf_nan=False)
    max_retries: _Int = Field(default=2, ge=0, le=20)
    proxy: str | None = None
    #: Seconds a provider is tried later after a failure; doubles per consecutive failure.
    cooldown: _Number = Field(default=5.0, ge=0, allow_inf_nan=False)
    #: The longest cool-down, however many failures in a row.
    max_cooldown: _Number = Field(default=300.0, ge=0, allow_inf_nan=False)
    aliases: dict[_Name, _Name] = Field(default_factory=dict)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    endpoints: tuple[EndpointConfig, ...] = ()
    _source: str | None = PrivateAttr(default=None)
    _environment: tuple[str, ...] = PrivateAttr(default=())

    @property
    def source(self) -> str | None:
        """The file this configuration was read from (None: no file, defaults only)."""
        return self._source

    @property
    def environment(self) -> tuple[str, ...]:
        """The ``LLMRELAY_*`` variables that overrode the file."""
        return self._environment

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value:
            from ._proxy import parse_proxy

            parse_proxy(value)
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, target in value.items():
            if not alias or not target:
                raise ValueError("an alias and its target must not be empty")
            if alias == target:
                raise ValueError(f"alias {alias!r} points at itself")
        return value

    @model_validator(mode="after")
    def _cooldowns(self) -> Config:
        if self.max_cooldown < self.cooldown:
            raise ValueError(
                f"max_cooldown ({self.max_cooldown:g}) is shorter than cooldown ({self.cooldown:g})"
            )
        return self

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: tuple[EndpointConfig, ...]) -> tuple[EndpointConfig, ...]:
        names = [e.name for e in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint name(s) {', '.join(duplicates)} used more than once")
        return value

    def __repr_args__(self) -> Any:
        # The proxy URL may hold a password: repr() shows it redacted, like everything else.
        from ._redact import redact

        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "proxy" and isinstance(value, str) else value

    def priority(self, provider: str) -> int:
        settings = self.providers.get(provider)
        return settings.priority if settings else 0

    def disabled(self, provider: str) -> bool:
        settings = self.providers.get(provider)
        return bool(settings and settings.disabled)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked, for display.

        Every string goes through ``redact()`` (proxy passwords, key-shaped values), and the
        values of headers whose names look like credentials are hidden; each endpoint gains
        ``api_key``: ``"***"`` when its variable is set, else None. ``source``
        and ``environment`` say where the values came from.
        """
        from ._redact import looks_secret

        data: dict[str, Any] = _redacted(self.model_dump(mode="json"))
        for endpoint, model in zip(data["endpoints"], self.endpoints, strict=True):
            endpoint["api_key"] = "***" if model.api_key() else None
            # Names the file may use for other credentials (X-Auth-Token, Private-Token...).
            for name in endpoint["headers"]:
                if looks_secret(name):
                    endpoint["headers"][name] = "***"
        data["source"] = self.source
        data["environment"] = list(self.environment)
        return data


def _redacted(value: Any) -> Any:
    from ._redact import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def render_toml(data: dict[str, Any]) -> str:
    """``masked()`` data as TOML (what the file would say), for ``llmrelay config``.

    Unset values (TOML has no null) and the endpoints' key status are shown as comments.
    """
    lines: list[str] = []
    tables: list[str] = []

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            pairs = ", ".join(f"{json.dumps(k)} = {value(v)}" for k, v in item.items())
            return "{ " + pairs + " }" if pairs else "{}"
        return json.dumps(item, ensure_ascii=False)

    def key(name: str) -> str:
        return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)

    for name, item in data.items():
        if name in ("source", "environment", "aliases", "providers", "endpoints"):
            continue
        if item is None:  # a timeout of None is no deadline, not a default left unset
            state = "none (no deadline)" if name == "timeout" else "not set"
            lines.append(f"# {name}: {state}")
        else:
            lines.append(f"{name} = {value(item)}")
    if data.get("aliases"):
        tables.append("[aliases]")
        tables += [f"{key(k)} = {value(v)}" for k, v in data["aliases"].items()]
        tables.append("")
    for name, settings in (data.get("providers") or {}).items():
        tables.append(f"[providers.{key(name)}]")
        tables += [f"{k} = {value(v)}" for k, v in settings.items()]
        tables.append("")
    for endpoint in data.get("endpoints") or ():
        tables.append("[[endpoints]]")
        for k, v in endpoint.items():
            if k == "api_key":
                continue
            if k == "api_key_env" and v is not None:
                state = "set (***)" if endpoint.get("api_key") else "NOT set"
                tables.append(f"{k} = {value(v)}  # {state}")
            elif v is None:
                tables.append(f"# {k}: not set")
            else:
                tables.append(f"{k} = {value(v)}")
        tables.append("")
    return "\n".join([*lines, "", *tables]).rstrip() + "\n"


def config_path() -> Path:
    """The configuration file llmrelay reads (it may not exist)."""
    return _config_path(getenv("LLMRELAY_CONFIG"), getenv("XDG_CONFIG_HOME"), getenv("HOME"))


@functools.lru_cache(maxsize=8)
def _config_path(explicit: str | None, _xdg: str | None, _home: str | None) -> Path:
    # Cached per the variables it depends on: platformdirs is too slow to ask per request.
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("llmrelay")) / "config.toml"


_ENV_FIELDS = {
    "LLMRELAY_MODEL": "default_model",
    "LLMRELAY_TIMEOUT": "timeout",
    "LLMRELAY_MAX_RETRIES": "max_retries",
    "LLMRELAY_PROXY": "proxy",
}


def load_config() -> Config:
    """Read the file and the environment.

    Raises:
        ConfigError: naming the file (or variable), the key and what is expected.
    """
    path = config_path()
    data: dict[str, Any] = {}
    source: str | None = None
    if path.is_file():
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:  # unreadable: permissions, an I/O error
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot read the configuration file {path}: {reason}") from None
    elif os.environ.get("LLMRELAY_CONFIG"):
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"LLMRELAY_CONFIG points to {str(path)!r}, which {what}")
    _check(data, source or "defaults")
    env_used: list[str] = []
    for variable, key in _ENV_FIELDS.items():
        raw = os.environ.get(variable)
        if raw is None or not raw.strip():  # unset, empty or blank: the default
            continue
        env_used.append(variable)
        data[key] = None if key == "timeout" and raw.strip().lower() == "none" else raw
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        where = source or "environment"
        if env_used:
            where += " / " + ", ".join(env_used)
        raise ConfigError(_describe(exc, where)) from None
    config._source = source
    config._environment = tuple(env_used)
    return config


def _check(data: dict[str, Any], where: str) -> None:
    try:
        Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None


def _describe(exc: ValidationError, where: str) -> str:
    from ._redact import redact

    problems = []
    for err in exc.errors(include_url=False):
        # A blank part of the path (an empty key) is shown quoted: it is the mistake.
        key = ".".join(str(p) if str(p).strip() else repr(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key (check the spelling; see docs/configuration.md)")
        elif err["type"] == "value_error":  # our own checks: the message says it all
            problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            shown = redact(repr(err.get("input")))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(f"{key}: {err['msg']} (got {shown})")
    return f"invalid configuration in {where}: " + "; ".join(problems)


#: Every variable the configuration depends on: where the file is, and the overrides.
_CONFIG_ENV = EnvWatch("LLMRELAY_CONFIG", "XDG_CONFIG_HOME", "HOME", *_ENV_FIELDS)

#: How long ``get_config()`` trusts its last look at the file before looking again (seconds).
#: The environment is compared on every call; the file's ``stat`` (a system call, and the
#: largest single cost of a call's set-up) at most this often.
FILE_CHECK_INTERVAL = 1.0


@dataclass(slots=True)
class _Loaded:
    """A loaded configuration, what it was loaded from, and when to look at the file again."""

    env: tuple[object, ...]
    path: str
    stamp: object
    config: Config
    check_after: float


_cache: _Loaded | None = None


def _stamp(path: str) -> object:
    """What changes when the file is written, replaced or removed (None: no file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def get_config() -> Config:
    """``load_config()``, cached until the file or the environment changes.

    Cheap enough to call per request: a change of one of the environment variables it reads
    is seen on the next call (one pass over a dozen dict entries); a change of the file
    within ``FILE_CHECK_INTERVAL`` seconds (its ``stat`` is taken at most that often).
    ``reload_config()`` makes the next call read both at once.
    """
    global _cache
    env = _CONFIG_ENV.values()
    cached = _cache
    if cached is not None and cached.env == env:
        now = time.monotonic()
        if now < cached.check_after:
            return cached.config
        if cached.stamp == _stamp(cached.path):
            cached.check_after = now + FILE_CHECK_INTERVAL
            return cached.config
    path = str(config_path())
    checked = time.monotonic()
    stamp = _stamp(path)  # before reading: a write during the load is seen next time
    config = load_config()
    _cache = _Loaded(env, path, stamp, config, checked + FILE_CHECK_INTERVAL)
    return config


def reload_config() -> Config:
    """Read the configuration now (the file may have changed less than
    ``FILE_CHECK_INTERVAL`` seconds ago); later ``get_config()`` calls return the result."""
    global _cache
    _cache = None
    return get_config()
