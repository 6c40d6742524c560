"""``POST /v1/chat/completions``: one request in, one relayed answer out, JSON or SSE.

The HTTP status is decided as late as possible: a stream's headers (200, and the provider
header) are sent only when the first real item has arrived, so every failure before the first
text — including a fallback to another provider — still gets a proper error status. After that
a failure can only be reported inside the stream (``data: {"error": ...}`` then ``[DONE]``).

A client that goes away cancels the upstream request at once: the server runs with aiohttp's
handler cancellation, so the cancellation reaches the provider's read, and the ``finally``
closes the relay stream and with it the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from .. import errors
from .._client import completion_id
from .._config import get_config
from .._registry import Registry, get_registry
from .._relay import RelayStream, relay_options
from .._routing import route
from .._types import Chunk, Reasoning, Usage
from ._errors import (
    APIError,
    bug_behind,
    error_for,
    internal_error,
    invalid_request,
    retry_after_headers,
)
from ._request import (
    ChatRequest,
    forwarding,
    load_json_object,
    unsupported_param,
    validate_chat_request,
)
from ._sse import FrameWriter
from ._state import (
    LOG,
    PROVIDER_HEADER,
    REQUEST_ID_HEADER,
    SHUTDOWN,
    STATE,
    RequestLog,
    ServerState,
)
from ._wire import DONE, ChunkEncoder, completion_body, frame

__all__ = ["chat_completions"]

log = logging.getLogger("llmrelay.server")

#: The longest wait an upstream asks for (Retry-After, with a 429 or 503) that the server
#: waits out before answering, as a backoff of its own would be at most. A longer one is
#: passed on at once (429 or 503 with the upstream's Retry-After, which OpenAI's SDKs honour):
#: waited out, it would hold the client, and its place under ``--max-concurrency``, for up to
#: a minute per retry, past the 60 s a proxy in front gives an answer by default.
MAX_UPSTREAM_WAIT = 8.0

#: The headers of every whole answer but the provider's: built once, copied per response.
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
#: Those of every stream but the provider's and the request id.
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx buffers responses unless told not to; a buffered stream is no stream.
    "X-Accel-Buffering": "no",
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.draining:
        raise _shutting_down()
    limit = state.settings.max_concurrency
    if len(state.tasks) >= limit:
        # Refused at once rather than queued: a queue hides overload until clients time out,
        # a 503 with Retry-After lets them (or the load balancer) go elsewhere now.
        raise APIError(
            503,
            f"the server is answering its limit of {limit} concurrent requests; retry shortly",
            type="server_error",
            code="server_overloaded",
            headers=retry_after_headers(1),
        )
    task = asyncio.current_task()
    assert task is not None
    state.tasks.add(task)
    try:
        return await _answer(request, state)
    except asyncio.CancelledError as exc:
        if not _is_shutdown(exc):
            raise
        # Our own shutdown ended the grace period before any answer was sent: say so.
        task.uncancel()
        raise _shutting_down() from None
    finally:
        state.tasks.discard(task)


def _is_shutdown(exc: asyncio.CancelledError) -> bool:
    return exc.args == (SHUTDOWN,)


def _shutting_down() -> APIError:
    return APIError(
        503,
        "the server is shutting down; retry the request",
        type="server_error",
        code="shutting_down",
        headers={"Retry-After": "1"},
    )


async def _answer(request: web.Request, state: ServerState) -> web.StreamResponse:
    info = LOG.get()
    settings = state.settings
    data = load_json_object(
        await _read_body(request, settings.max_body_bytes, settings.body_timeout)
    )
    if isinstance(data.get("model"), str):
        info.model = data["model"]  # logged even when the rest of the body is refused
    chat = validate_chat_request(data)
    stream = _open(chat, state)
    if chat.stream:
        return await _stream(request, chat, stream, info)
    return await _complete(chat, stream, info)


async def _read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The body, within ``seconds``: the request already holds a place under the
    concurrency limit, which a client stalled mid-upload must not keep indefinitely.

    A body whose ``Content-Length`` declares more than ``limit`` is refused before any of it
    is read (as nginx does): reading it could only end in 413, or, if the client sends less
    than it declared, in 408 after ``seconds``, its place held all that time. A body without
    a length (chunked) is counted as it arrives, by aiohttp's ``client_max_size``.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        # The body stays unread, so the connection cannot carry another request: the client
        # is told to close it (aiohttp drops what still arrives, for a bounded time).
        raise _too_large(limit, headers={"Connection": "close"})
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {seconds:g} seconds",
            code="request_timeout",
            headers={"Connection": "close"},  # the rest of the body may never come
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except ConnectionError:
        raise  # the client is gone: there is nobody to answer
    except Exception as exc:  # a broken chunked or compressed body, cut short, ...
        raise invalid_request(f"could not read the request body: {type(exc).__name__}") from None


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` (curl sends it for bodies over 1 KiB): a body declared over
    the limit is not invited. No ``100 Continue``: the request goes on to the handler, which
    (after the key is checked) refuses it with 413 before reading it. Any other request gets
    aiohttp's usual answer (its default handler: a private name, stable since aiohttp 1.0)."""
    from aiohttp.web_urldispatcher import _default_expect_handler

    declared = request.content_length
    if declared is not None and declared > request.app[STATE].settings.max_body_bytes:
        return
    await _default_expect_handler(request)


def _too_large(limit: int, headers: dict[str, str] | None = None) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes",
        code="request_too_large",
        headers=headers,
    )


def _open(chat: ChatRequest, state: ServerState) -> RelayStream:
    """Start the relay (no I/O yet): resolve the model, check the options.

    Fields the server does not know go upstream as they are: by name to a provider that
    declares them, else in ``extra_body`` (see :func:`~._request.forwarding`); the candidates
    are looked up for that only when there are any.
    """
    options = chat.options()
    sent = options
    moved: list[str] = []
    forwarded = chat.forwarded
    if forwarded:
        supported = _supported(chat.model, state.registry)
        sent, moved = forwarding(options, forwarded, supported)
    asked = {**sent, "stream": bool(chat.stream)}
    if state.settings.drop_unsupported:
        asked["drop_unsupported"] = True
    try:
        return relay_options(
            chat.model,
            chat.messages,
            None,
            state.registry,
            asked,
            max_retry_after=MAX_UPSTREAM_WAIT,
        )
    except errors.InvalidRequest as exc:
        param = _unsupported(chat.model, options, moved, state.registry)
        if param is None:
            raise invalid_request(str(exc)) from None
        raise invalid_request(
            f"parameter {param!r} is not supported by any provider serving model {chat.model!r}",
            param=param,
            code="unsupported_parameter",
        ) from None


def _supported(model: str, registry: Registry | None) -> list[frozenset[str]]:
    """The ``supported_options`` of each provider serving ``model`` (none when the model is
    unknown: the relay then says so)."""
    try:
        candidates = route(model, registry or get_registry(), get_config())
    except errors.LLMRelayError:
        return []
    return [provider.supported_options for provider, _ in candidates]


def _unsupported(
    model: str, options: dict[str, Any], moved: list[str], registry: Registry | None
) -> str | None:
    supported = _supported(model, registry)
    if not supported:
        return None
    return unsupported_param(options, supported, moved)


async def _complete(chat: ChatRequest, stream: RelayStream, info: RequestLog) -> web.Response:
    try:
        completion = await stream.collect()
    finally:
        info.provider = stream.provider
    body = completion_body(
        completion_id(),
        int(time.time()),
        chat.model,
        completion.text,
        completion.finish_reason.reason,
        completion.usage,
        completion.reasoning,
    )
    return web.Response(body=body, headers={**_JSON_HEADERS, PROVIDER_HEADER: stream.provider})


async def _stream(
    request: web.Request, chat: ChatRequest, stream: RelayStream, info: RequestLog
) -> web.StreamResponse:
    writer: FrameWriter | None = None
    try:
        first = await _first_item(stream)
        info.provider = stream.provider
        response = web.StreamResponse(
            headers={
                **_SSE_HEADERS,
                PROVIDER_HEADER: stream.provider,
                REQUEST_ID_HEADER: info.request_id,
            }
        )
        await response.prepare(request)
        encoder = ChunkEncoder(completion_id(), int(time.time()), chat.model, chat.wants_usage)
        writer = FrameWriter(response)
        try:
            await _send_chunks(writer, encoder, first, stream, info, chat.wants_usage)
        except ConnectionResetError:
            info.status = 499  # the client left; ``finally`` closes the upstream request
        except asyncio.CancelledError as exc:
            if not _is_shutdown(exc):
                raise
            await _end_for_shutdown(writer, info)
        return response
    finally:
        if writer is not None:
            writer.discard()
        info.provider = stream.provider
        await stream.aclose()


async def _end_for_shutdown(writer: FrameWriter, info: RequestLog) -> None:
    """The grace period ran out mid-stream: end it with an error event and ``[DONE]``, which a
    client can report, rather than a cut connection, which it cannot tell from a crash."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    error = _shutting_down()
    info.error = error.code
    with contextlib.suppress(ConnectionError):
        await writer.end(frame(error.body()) + DONE)


async def _first_item(stream: RelayStream) -> Chunk:
    """The first item worth sending. Empty text and reasoning are skipped: until something has
    been sent the relay may still fall back, and the provider header must name the one
    answering."""
    while True:
        item = await anext(stream)
        if isinstance(item, str):
            if item:
                return item
        elif not isinstance(item, Reasoning) or item.text:
            return item


async def _send_chunks(
    writer: FrameWriter,
    encoder: ChunkEncoder,
    item: Chunk,
    stream: RelayStream,
    info: RequestLog,
    include_usage: bool,
) -> None:
    """Relay the stream as frames; the last ones (finish, usage, ``[DONE]``, or an error
    event and ``[DONE]``) leave together with the end of the response."""
    writer.hold(encoder.role())  # sent with the first text, in the same write as the headers
    usage: Usage | None = None
    last = DONE
    try:
        while True:
            if isinstance(item, str):
                if item:
                    await writer.send(encoder.content(item))
            elif isinstance(item, Reasoning):
                if item.text:
                    await writer.send(encoder.reasoning(item.text))
            elif isinstance(item, Usage):
                usage = item
            else:
                ending = encoder.finish(item.reason)
                if include_usage and usage is not None:
                    # Sent only when the provider reported usage: llmrelay never invents counts.
                    ending += encoder.usage(usage)
                last = ending + DONE
                break
            item = await anext(stream)
    except ConnectionResetError:
        raise
    except errors.LLMRelayError as exc:
        error = error_for(exc)
        info.error = error.code or error.type
        log.warning(
            "stream from %s failed after it started: %s",
            stream.provider,
            exc,
            exc_info=bug_behind(exc),  # a provider's bug: its traceback, for operators
        )
        last = frame(error.body()) + DONE
    except Exception:
        log.exception("stream from %s failed after it started", stream.provider)
        error = internal_error()
        info.error = error.type
        last = frame(error.body()) + DONE
    await writer.end(last)
