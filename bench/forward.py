"""A bare aiohttp forwarder with no llmrelay in it: the floor of any aiohttp-based relay.

bench/server.py puts it in front of the replica beside ``llmrelay serve``, so the results
show how much of the gap to "replica directly" any aiohttp server + client relay costs on
this machine, and how much is llmrelay's own layers. It does the least a relay must do and
nothing else: no auth, no validation, no parsing, no logging, no error handling (an upstream
failure is aiohttp's own 500).

  POST /v1/chat/completions   the request body, unchanged, to the upstream's same path with
                              one shared ``ClientSession``; the upstream's status and body
                              back: streamed chunk by chunk (``iter_any``) when it is
                              ``text/event-stream``, else read whole
  GET  /health                forwarded the same way (bench/server.py polls it to start)

One process, the default asyncio loop, 127.0.0.1 only, like ``llmrelay serve`` (no access
log, listen backlog 1024). ``--limit`` is the connection pool's size, 0 for none; server.py
passes the pool size ``llmrelay serve`` uses (``max(100, --max-concurrency)``).

Run: ``python bench/forward.py --port 8766 --upstream http://127.0.0.1:8765 [--limit 0]``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    url = request.app[UPSTREAM] + request.path
    headers = {}
    if "Content-Type" in request.headers:
        headers["Content-Type"] = request.headers["Content-Type"]
    body = await request.read()
    async with session.request(request.method, url, data=body, headers=headers) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        if not content_type.startswith("text/event-stream"):
            return web.Response(
                status=upstream.status,
                body=await upstream.read(),
                headers={"Content-Type": content_type},
            )
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(upstream: str, limit: int) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(client_session)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/health", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8765")
    parser.add_argument("--limit", type=int, default=0, help="connection pool size (0: none)")
    args = parser.parse_args()
    app = build_app(args.upstream, args.limit)
    # 127.0.0.1 only, never a public interface.
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
