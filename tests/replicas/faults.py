"""A fault server: one aiohttp app whose routes fail in every way a real provider does.

Tests start it with the ``serve`` fixture (127.0.0.1, random port) and read ``app[FAULTS]``
afterwards: how many requests each route saw, and from how many distinct client connections.

Routes (any method):

- ``/ok``: 200 ``{"answer": "ok"}``.
- ``/empty``: 200 with an empty body.
- ``/malformed``: 200, ``application/json``, a cut JSON document.
- ``/status/{code}``: ``code`` forever, with a JSON error body. Query options add headers:
  ``retry_after=S`` (seconds), ``retry_after_date=S`` (an HTTP-date S seconds ahead),
  ``retry_after_ms=MS``, ``should_retry=true|false``, ``body=TEXT``.
- ``/flaky/{code}?fail=N``: ``code`` (same query options) for the first N requests, then 200.
- ``/cloudflare``: a 403 Cloudflare challenge page in HTML.
- ``/reset?fail=N``: the first N requests (all when N is absent) announce 1000 bytes, send a few,
  and close the connection; later ones answer 200.
- ``/slow?delay=S``: waits S seconds before sending anything (a slow first byte / a response
  past the deadline), then 200.
- ``/stall-body?delay=S``: sends the headers and part of the body, then stalls S seconds.
- ``/stream?chunks=N&then=ok|reset|stall``: ``N`` lines ``data: chunk-i``, then either a clean end
  (``data: [DONE]``), a cut connection, or a stall of ``delay`` seconds.

Every wait ends early when the server shuts down, so no test teardown waits for a sleeping
handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

CLOUDFLARE_PAGE = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>
<div class="main-wrapper" role="main"><h1>api.example.test</h1>
<p>Verifying you are human. This may take a few seconds.</p></div>
<div class="footer">Performance &amp; security by Cloudflare</div></body></html>"""

#: A long error body, to check errors keep at most 200 characters of it.
LONG_ERROR = "overloaded " * 100


@dataclass
class FaultState:
    """What the server has seen: requests per route and the client ports they came from."""

    hits: Counter[str] = field(default_factory=Counter)
    #: Client (host, port) pairs: one per TCP connection the server accepted and used.
    peers: list[tuple[str, int]] = field(default_factory=list)
    last_headers: dict[str, str] = field(default_factory=dict)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def connections(self) -> int:
        return len(set(self.peers))

    @property
    def total(self) -> int:
        return sum(self.hits.values())


FAULTS = web.AppKey("faults", FaultState)


def make_app() -> web.Application:
    app = web.Application()
    app[FAULTS] = FaultState()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_route("*", "/ok", _ok)
    app.router.add_route("*", "/empty", _empty)
    app.router.add_route("*", "/malformed", _malformed)
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_route("*", "/flaky/{code}", _flaky)
    app.router.add_route("*", "/cloudflare", _cloudflare)
    app.router.add_route("*", "/reset", _reset)
    app.router.add_route("*", "/slow", _slow)
    app.router.add_route("*", "/stall-body", _stall_body)
    app.router.add_route("*", "/stream", _stream)
    return app


async def _on_shutdown(app: web.Application) -> None:
    app[FAULTS].shutdown.set()


def _count(request: web.Request) -> tuple[FaultState, int]:
    """Count the request under its path; returns the state and this request's number (1-based)."""
    state = request.app[FAULTS]
    state.hits[request.path] += 1
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer:
        state.peers.append((peer[0], peer[1]))
    state.last_headers = dict(request.headers)
    return state, state.hits[request.path]


async def _pause(state: FaultState, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.shutdown.wait(), seconds)


def _answer() -> web.Response:
    return web.json_response({"answer": "ok"})


async def _ok(request: web.Request) -> web.Response:
    _count(request)
    await request.read()
    return _answer()


async def _empty(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(status=200, body=b"", content_type="application/json")


async def _malformed(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(text='{"answer": "tr', content_type="application/json")


def _error(request: web.Request, code: int) -> web.Response:
    q = request.query
    headers: dict[str, str] = {}
    if "retry_after" in q:
        headers["Retry-After"] = q["retry_after"]
    if "retry_after_date" in q:
        when = time.time() + float(q["retry_after_date"])
        headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
    if "retry_after_ms" in q:
        headers["retry-after-ms"] = q["retry_after_ms"]
    if "should_retry" in q:
        headers["x-should-retry"] = q["should_retry"]
    message = q.get("body", LONG_ERROR if code >= 500 else f"error {code}")
    body = json.dumps({"error": {"message": message, "code": code}})
    return web.Response(status=code, text=body, content_type="application/json", headers=headers)


async def _status(request: web.Request) -> web.Response:
    _count(request)
    return _error(request, int(request.match_info["code"]))


async def _flaky(request: web.Request) -> web.Response:
    _, n = _count(request)
    if n <= int(request.query.get("fail", "1")):
        return _error(request, int(request.match_info["code"]))
    return _answer()


async def _cloudflare(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(
        status=403,
        text=CLOUDFLARE_PAGE,
        content_type="text/html",
        headers={"server": "cloudflare", "cf-ray": "8f1c2d3e4a5b6c7d-MXP"},
    )


async def _cut(request: web.Request) -> web.StreamResponse:
    """Close the connection under a response that has not been fully sent."""
    await asyncio.sleep(0.01)  # let the client read what was written
    if request.transport is not None:  # None: the client has gone already
        request.transport.close()
    # Hold the handler until the server notices the connection is gone; answering now would
    # only make aiohttp log an error about writing to a closed transport.
    raise asyncio.CancelledError


async def _reset(request: web.Request) -> web.StreamResponse:
    _, n = _count(request)
    fail = request.query.get("fail")
    if fail is not None and n > int(fail):
        return _answer()
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"answer": "this answer will be cut')
    return await _cut(request)


async def _slow(request: web.Request) -> web.Response:
    state, _ = _count(request)
    await _pause(state, float(request.query.get("delay", "5")))
    return _answer()


async def _stall_body(request: web.Request) -> web.StreamResponse:
    state, _ = _count(request)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"answer": "stalling')
    await _pause(state, float(request.query.get("delay", "5")))
    return await _cut(request)


async def _stream(request: web.Request) -> web.StreamResponse:
    state, _ = _count(request)
    q = request.query
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(int(q.get("chunks", "3"))):
        await response.write(f"data: chunk-{i}\n\n".encode())
    then = q.get("then", "ok")
    if then == "reset":
        return await _cut(request)
    if then == "stall":
        await _pause(state, float(q.get("delay", "5")))
        return await _cut(request)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
