"""The aiohttp application: routes, authentication, error shaping and the access log.

One middleware sits at the edge of every request and owns what must hold for all of them:
the API key is checked before any handler runs; every error leaves as an OpenAI-shaped JSON
body (aiohttp's own 404/405/413 included) and never as a traceback; and exactly one access-log
line is written per request, even when the client disconnects mid-stream.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import errors
from .._config import get_config
from .._connectors import read_in_small_pieces
from .._registry import Registry, get_registry
from .._routing import route
from ._chat import chat_completions, expect_continue
from ._errors import APIError, bug_behind, error_for, internal_error
from ._settings import ServerSettings
from ._state import LOG, REQUEST_ID_HEADER, STATE, RequestLog, ServerState

__all__ = ["OPEN_PATHS", "create_app"]

log = logging.getLogger("llmrelay.server")
access_log = logging.getLogger("llmrelay.access")

#: Probes answer without a key: load balancers and orchestrators do not hold one.
OPEN_PATHS = frozenset({"/health", "/ready"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: ServerSettings | None = None, *, registry: Registry | None = None
) -> web.Application:
    """The OpenAI-compatible application.

    ``registry`` pins the providers (tests, embedding); by default each request uses the
    process registry. Serve it with :func:`llmrelay.server.serving`, which turns on handler
    cancellation (the app relies on it to stop upstream requests of departed clients).
    """
    settings = settings or ServerSettings()
    app = web.Application(middlewares=[_edge], client_max_size=settings.max_body_bytes)
    key = None if settings.api_key is None else hashlib.sha256(settings.api_key.encode()).digest()
    app[STATE] = ServerState(settings=settings, registry=registry, key=key)
    app.router.add_post("/v1/chat/completions", chat_completions, expect_handler=expect_continue)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _get_model)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.on_shutdown.append(_start_draining)
    return app


# -- the edge ------------------------------------------------------------------------------


@web.middleware
async def _edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    # The connection's next requests are read 64 KiB at a time, as the client's answers are
    # (see llmrelay._connectors): a keep-alive client's requests then cost no mmap each.
    read_in_small_pieces(request.transport)
    info = RequestLog(request_id=os.urandom(16).hex())  # a UUID4's 32 hex digits, cheaper
    token = LOG.set(info)
    state = request.app[STATE]
    status = 500
    connection = request.protocol
    state.idle.request_started(connection)  # not closed as idle while this request runs
    try:
        try:
            if state.key is not None and request.path not in OPEN_PATHS:
                _authenticate(request.headers.get("Authorization"), state.key)
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            response = _from_http_exception(request, exc).response()
        except (APIError, errors.LLMRelayError) as exc:
            error = error_for(exc)
            if error.status >= 500 and not isinstance(exc, APIError):
                log.warning(
                    "%s %s failed: %s",
                    request.method,
                    request.path,
                    exc,
                    exc_info=bug_behind(exc),  # a provider's bug: its traceback, for operators
                )
            response = error.response()
        except (asyncio.CancelledError, ConnectionError):  # errors.ConnectError is caught above
            status = 499  # nginx's "client closed request": the handler was cancelled with it
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = internal_error().response()
        status = info.status or response.status
        if not response.prepared:  # a stream sets it itself before it starts
            response.headers[REQUEST_ID_HEADER] = info.request_id
        return response
    finally:
        state.idle.request_ended(connection)
        LOG.reset(token)
        if state.settings.access_log:
            # Logged after the response is sent: the event loop runs the callback when this
            # task next waits, which is after aiohttp has handed the response to the socket.
            # The line is no part of the answer, so the client does not wait for it.
            duration = time.perf_counter() - started
            asyncio.get_running_loop().call_soon(_log_access, request, status, info, duration)


def _authenticate(header: str | None, key: bytes) -> None:
    """Compare in constant time (``hmac.compare_digest``), so response timing reveals nothing
    about how much of a guessed key was right; digests are compared, so it does not reveal the
    key's length either. ``key`` is the key's SHA-256 digest. The key is never logged or echoed.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    if not header:
        raise APIError(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    if not (hmac.compare_digest(given, key) and scheme.lower() == "bearer"):
        raise APIError(
            401,
            "invalid API key",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> APIError:
    path = _printable(request.rel_url.raw_path, 200)
    if exc.status == 404:
        return APIError(404, f"no such route: {request.method} {path}", code="unknown_url")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return APIError(
            405,
            f"{request.method} is not allowed on {path} (allowed: {allow})",
            code="method_not_allowed",
            headers={"Allow": allow},
        )
    if exc.status == 413:
        limit = request.app[STATE].settings.max_body_bytes
        return APIError(
            413,
            f"the request body is larger than the limit of {limit} bytes",
            code="request_too_large",
        )
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return APIError(exc.status, exc.reason, type=kind)


#: The access line's format; its arguments are kept apart, as logging does (filters see them).
_ACCESS_FORMAT = '%s "%s %s" %d model=%s provider=%s %.3fs id=%s%s'


def _log_access(request: web.Request, status: int, info: RequestLog, duration: float) -> None:
    """One line per request, built only from values that cannot hold a secret: no headers, no
    query string, no body; the model name (client input) escaped and cut to one short line.

    The record is made and handled directly (``Logger.makeRecord`` and ``Logger.handle``, what
    ``Logger.info`` does after it has searched the stack for its caller), so the line costs no
    stack walk: the caller is known, it is this function.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    model = "-" if info.model is None else _printable(info.model, 100)
    extra = f" error={info.error}" if info.error else ""
    args = (
        request.remote or "-",
        request.method,
        _printable(request.rel_url.raw_path, 200),
        status,
        model,
        info.provider or "-",
        duration,
        info.request_id,
        extra,
    )
    record = access_log.makeRecord(
        access_log.name, logging.INFO, _HERE, _ACCESS_LINE, _ACCESS_FORMAT, args, None, _ACCESS_FUNC
    )
    access_log.handle(record)


#: What ``Logger.findCaller`` would report for the access line: this module and function.
_HERE = _log_access.__code__.co_filename
_ACCESS_LINE = _log_access.__code__.co_firstlineno
_ACCESS_FUNC = _log_access.__name__


def _printable(text: str, limit: int) -> str:
    """``text`` with control and non-ASCII characters escaped (no forged log lines), cut to
    ``limit`` characters."""
    if len(text) > limit:
        # Escaping never shortens: only the start can show, so only the start is escaped
        # (the text is client input, possibly megabytes).
        return _escape(text[:limit])[: limit - 3] + "..."
    return _printable_short(text, limit)


@functools.lru_cache(maxsize=256)
def _printable_short(text: str, limit: int) -> str:
    """Cached: the same few paths and model names come back request after request (and an
    entry is at most ``limit`` characters long)."""
    escaped = _escape(text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _escape(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


async def _start_draining(app: web.Application) -> None:
    """For runners other than :func:`serving` (which sets it earlier, before it waits)."""
    app[STATE].draining = True


# -- small endpoints -----------------------------------------------------------------------


def _registry(request: web.Request) -> Registry:
    return request.app[STATE].registry or get_registry()


def _model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


async def _list_models(request: web.Request) -> web.Response:
    """Every model and alias, owned by the provider tried first (OpenAI's list shape)."""
    from .._client import list_models

    models = list_models(_registry(request))
    return web.json_response(
        {"object": "list", "data": [_model_object(m.id, m.owned_by) for m in models.data]}
    )


async def _get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    providers = route(name, _registry(request), get_config())
    return web.json_response(_model_object(name, providers[0][0].name))


async def _health(request: web.Request) -> web.Response:
    """Liveness: the process answers. ``pid`` tells workers apart."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def _ready(request: web.Request) -> web.Response:
    """Readiness: not shutting down, a configuration that reads, and at least one provider
    installed and not disabled. (Not "serving a listed model": an endpoint without a model
    list answers whatever model is pinned to it.)"""
    from .._config import get_config

    state = request.app[STATE]
    if state.draining:
        raise APIError(503, "shutting down", type="server_error", code="shutting_down")
    try:
        config = get_config()  # read as a request reads it
        providers = _registry(request).providers
    except errors.ConfigError:
        raise APIError(503, "the configuration is invalid", type="server_error") from None
    count = sum(1 for name in providers if not config.disabled(name))
    if not count:
        raise APIError(
            503,
            "no provider can answer: none is installed, or every one is disabled",
            type="server_error",
            code="no_providers",
        )
    return web.json_response({"status": "ready", "providers": count})
