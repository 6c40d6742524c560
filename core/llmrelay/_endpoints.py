"""OpenAI-compatible endpoints from the configuration: their request headers, and the model
lists fetched from them (``llmrelay models --refresh NAME``) and cached on disk.

It lives in core, not in the provider package, because the CLI (core) fetches and writes the
list and the provider (a plugin core never imports) reads it back at registration time.

The cache is one JSON file per endpoint name, in ``LLMRELAY_CACHE_DIR`` if set, else the user
cache directory (``platformdirs.user_cache_dir("llmrelay")``), under ``models/``. A list cached
for another ``base_url`` than the endpoint's current one is ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import errors
from ._config import EndpointConfig
from ._redact import redact, remember_secret

__all__ = [
    "cache_dir",
    "cache_problem",
    "cache_problems",
    "cached_models",
    "fetch_models",
    "models_cache_path",
    "request_headers",
    "save_models",
    "upstream_error",
]

log = logging.getLogger("llmrelay")


def request_headers(
    provider: str, api_key_env: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The headers of a request to an OpenAI-compatible server: ``extra``, then the key.

    The key is read from the environment variable ``api_key_env`` now, at call time.

    Raises:
        AuthenticationFailed: ``api_key_env`` is named but unset or empty (before any I/O).
    """
    headers = {"Accept": "application/json", **(extra or {})}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise errors.AuthenticationFailed(
                f"no API key: set the environment variable {api_key_env}", provider=provider
            )
        remember_secret(key)  # scrubbed from errors and logs even if a server quotes it back
        headers["Authorization"] = f"Bearer {key}"
    return headers


def cache_dir() -> Path:
    """Where llmrelay caches things (``LLMRELAY_CACHE_DIR``, else the user cache directory)."""
    explicit = os.environ.get("LLMRELAY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmrelay"))


def models_cache_path(name: str) -> Path:
    """The file holding endpoint ``name``'s fetched model list (it may not exist)."""
    return cache_dir() / "models" / f"{name}.json"


def cached_models(endpoint: EndpointConfig) -> tuple[str, ...]:
    """The model list cached for ``endpoint``; empty when there is none or it is unusable
    (:func:`cache_problem` says why; it is logged here too)."""
    models, why = _read_cache(endpoint)
    if why is not None:
        log.warning("%s", _cache_problem(endpoint, why))
    return models


def cache_problem(endpoint: EndpointConfig) -> str | None:
    """Why the model list cached for ``endpoint`` is not used, or None: none is cached, or it
    is used. ``llmrelay config`` and ``llmrelay serve`` say it, for an endpoint whose models
    the configuration does not list (a library's warning reaches no one by default)."""
    why = _read_cache(endpoint)[1]
    return None if why is None else _cache_problem(endpoint, why)


def cache_problems(endpoints: Iterable[EndpointConfig]) -> list[str]:
    """:func:`cache_problem` of each endpoint whose models the configuration does not list
    (those that serve what was fetched and cached)."""
    found = (cache_problem(endpoint) for endpoint in endpoints if not endpoint.models)
    return [problem for problem in found if problem is not None]


def _cache_problem(endpoint: EndpointConfig, why: str) -> str:
    """What to say of ``endpoint``'s unusable model cache, ``why`` it is not used."""
    path = models_cache_path(endpoint.name)
    return (
        f"[[endpoints]] {endpoint.name!r}: ignoring its model cache {path}: {why}; "
        f"run `llmrelay models --refresh {endpoint.name}`"
    )


def _read_cache(endpoint: EndpointConfig) -> tuple[tuple[str, ...], str | None]:
    """The cached model list of ``endpoint``, or nothing and why it is not used."""
    path = models_cache_path(endpoint.name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # none yet (or none can be, under a file)
        return (), None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        return (), str(exc)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        return (), "no list of model names in it"
    if data.get("base_url") != endpoint.base_url:
        return (), (
            f"fetched from {redact(str(data.get('base_url')))}, "
            f"the endpoint is now {redact(endpoint.base_url)}"
        )
    return tuple(dict.fromkeys(models)), None


def save_models(endpoint: EndpointConfig, models: list[str]) -> Path:
    """Write ``models`` as ``endpoint``'s cached list (atomically); returns the file.

    Raises:
        ConfigError: the cache directory cannot be written (it names the directory and
            ``LLMRELAY_CACHE_DIR``, the variable that moves it).
    """
    path = models_cache_path(endpoint.name)
    data = {
        "endpoint": endpoint.name,
        "base_url": endpoint.base_url,
        "fetched_at": int(time.time()),
        "models": models,
    }
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        scratch.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a half-written scratch file, if any
            scratch.unlink(missing_ok=True)
        raise errors.ConfigError(
            f"cannot write the model cache in {path.parent}: {exc.strerror or exc} "
            "(set LLMRELAY_CACHE_DIR to a writable directory)"
        ) from None
    return path


async def fetch_models(endpoint: EndpointConfig, *, proxy: str | None = None) -> list[str]:
    """``GET {base_url}/models`` through llmrelay's transport: the ids, in the server's order.

    The request is a :class:`~llmrelay.Call`, so the configured proxy, timeout and retries
    apply and failures are llmrelay's typed errors.

    Raises:
        ProviderError: the server could not be reached, refused, or answered something other
            than OpenAI's ``{"object": "list", "data": [{"id": ...}, ...]}``.
    """
    from ._call import Call, RetryPolicy
    from ._config import get_config

    config = get_config()
    call = Call(
        provider=endpoint.name,
        base_url=endpoint.base_url,
        proxy=proxy,
        default_proxy=config.proxy,
        timeout=config.timeout,
        retry=RetryPolicy(max_retries=config.max_retries),
    )
    headers = request_headers(endpoint.name, endpoint.api_key_env, endpoint.headers)
    try:
        response = await call.request("GET", call.url("models"), headers=headers)
    except errors.HTTPStatusError as exc:
        raise upstream_error(exc) from None
    return _model_ids(endpoint.name, response.json(endpoint.name))


def _model_ids(provider: str, data: Any) -> list[str]:
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        from ._transport import excerpt

        shown = excerpt(json.dumps(data, ensure_ascii=False))
        raise errors.InvalidResponse(
            f"the model list is not OpenAI's {{'data': [...]}}: {shown!r}",
            provider=provider,
            body=shown,
        )
    if not entries:
        raise errors.InvalidResponse("the model list is empty", provider=provider)
    ids = []
    for index, entry in enumerate(entries):
        model = entry.get("id") if isinstance(entry, dict) else None
        # A usable name: text, not blank, nothing a terminal or a table would act on.
        if not isinstance(model, str) or not model.strip() or not model.isprintable():
            from ._transport import excerpt

            shown = excerpt(json.dumps(entry, ensure_ascii=True))
            raise errors.InvalidResponse(
                f"the model list's entry {index} has no usable 'id' (a printable, non-blank "
                f"string): {shown}",
                provider=provider,
                body=shown,
            )
        ids.append(model)
    return list(dict.fromkeys(ids))


_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)(")?')


def upstream_error(exc: errors.HTTPStatusError) -> errors.HTTPStatusError:
    """``exc`` with the message of its ``{"error": {"message": ...}}`` body as the reason.

    The transport quotes the start of an error body; for an OpenAI-style body the upstream
    message (and its ``code``) says it better. Anything else comes back unchanged.
    """
    body = exc.body or ""
    message: str | None = None
    code: Any = None
    try:
        data = json.loads(body)
    except ValueError:
        match = _MESSAGE.search(body)  # the excerpt was cut: take what there is
        if match:
            message = match.group(1) + ("" if match.group(2) else "...")
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = error.get("message") if isinstance(error.get("message"), str) else None
            code = error.get("code") or error.get("type")
        elif isinstance(error, str):
            message = error
    if not message:
        return exc
    reason = f"HTTP {exc.status}: {message}" + (f" ({code})" if isinstance(code, str) else "")
    return type(exc)(
        reason,
        provider=exc.provider,
        status=exc.status,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        body=exc.body,
    )
