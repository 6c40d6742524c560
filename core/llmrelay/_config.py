"""Configuration: one TOML file plus environment variables, validated before use.

Where the file is: ``LLMRELAY_CONFIG`` if set, else ``config.toml`` in the user config directory
(``platformdirs.user_config_dir("llmrelay")``); a missing default file means "all defaults".
Environment variables override the file: ``LLMRELAY_MODEL``, ``LLMRELAY_TIMEOUT``,
``LLMRELAY_MAX_RETRIES``, ``LLMRELAY_PROXY``.

API keys are never written in the file: an endpoint names the environment variable that holds
its key (``api_key_env``), and ``llmrelay config`` shows everything with secrets masked.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = [
    "Config",
    "EndpointConfig",
    "ProviderSettings",
    "config_path",
    "get_config",
    "load_config",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(_Strict):
    """Per-provider routing settings: higher ``priority`` is tried first."""

    priority: int = 0
    disabled: bool = False


class EndpointConfig(_Strict):
    """An OpenAI-compatible server, registered as its own provider ``name``."""

    name: str = Field(pattern=_NAME_PATTERN)
    base_url: str
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    default_model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    working: bool = True

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_secrets_in_headers(cls, value: dict[str, str]) -> dict[str, str]:
        from ._redact import SECRET_HEADERS

        secret = sorted(k for k in value if k.lower() in SECRET_HEADERS)
        if secret:
            raise ValueError(
                f"header(s) {', '.join(secret)} hold secrets: name the variable holding the key "
                "with api_key_env instead of writing it in the file"
            )
        return value

    def api_key(self) -> str | None:
        """The key from the environment, read at call time."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Config(_Strict):
    """The whole configuration. Every field has a default, so an empty file is valid."""

    default_model: str = "gpt-4o-mini"
    timeout: float | None = Field(default=120.0, gt=0, allow_inf_nan=False)
    max_retries: int = Field(default=2, ge=0, le=20)
    proxy: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    endpoints: tuple[EndpointConfig, ...] = ()
    #: Where this configuration was read from (None: defaults only).
    source: str | None = Field(default=None, exclude=True)

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value:
            from ._proxy import parse_proxy

            parse_proxy(value)
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: tuple[EndpointConfig, ...]) -> tuple[EndpointConfig, ...]:
        names = [e.name for e in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint name(s) {', '.join(duplicates)} used more than once")
        return value

    def priority(self, provider: str) -> int:
        settings = self.providers.get(provider)
        return settings.priority if settings else 0

    def disabled(self, provider: str) -> bool:
        settings = self.providers.get(provider)
        return bool(settings and settings.disabled)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked, for display."""
        from ._redact import redact

        data = self.model_dump(mode="json")
        if data.get("proxy"):
            data["proxy"] = redact(data["proxy"])
        for endpoint, model in zip(data["endpoints"], self.endpoints, strict=True):
            endpoint["api_key"] = "***" if model.api_key() else None
        data["source"] = self.source
        return data


def config_path() -> Path:
    """The configuration file llmrelay reads (it may not exist)."""
    return _config_path(
        os.environ.get("LLMRELAY_CONFIG"), os.environ.get("XDG_CONFIG_HOME"), os.environ.get("HOME")
    )


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
    elif os.environ.get("LLMRELAY_CONFIG"):
        raise ConfigError(f"LLMRELAY_CONFIG points to {str(path)!r}, which does not exist")
    _check(data, source or "defaults")
    env_used = []
    for variable, key in _ENV_FIELDS.items():
        raw = os.environ.get(variable)
        if raw is None or raw == "":
            continue
        env_used.append(variable)
        data[key] = None if key == "timeout" and raw.lower() == "none" else raw
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        where = source or "environment"
        if env_used:
            where += " / " + ", ".join(env_used)
        raise ConfigError(_describe(exc, where)) from None


def _check(data: dict[str, Any], where: str) -> None:
    try:
        Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None


def _describe(exc: ValidationError, where: str) -> str:
    from ._redact import redact

    problems = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key (check the spelling; see docs/configuration.md)")
        elif err["type"] == "value_error":  # our own checks: the message says it all
            problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            shown = redact(repr(err.get("input")))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(f"{key}: {err['msg']} (got {shown})")
    return f"invalid configuration in {where}: " + "; ".join(problems)


_cache: tuple[tuple[object, ...], Config] | None = None


def get_config() -> Config:
    """``load_config()``, cached until the file or the environment changes.

    Cheap enough to call per request: one ``stat`` and a few environment look-ups.
    """
    global _cache
    path = config_path()
    try:
        stat = path.stat()
        stamp: object = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    key = (str(path), stamp, *(os.environ.get(v) for v in _ENV_FIELDS))
    if _cache is None or _cache[0] != key:
        _cache = (key, load_config())
    return _cache[1]
