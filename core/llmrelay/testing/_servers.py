"""Loopback HTTP servers for tests: a plugin's own service stand-in, and the suite's fakes."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["SeenRequest", "StandIn", "free_port", "serve", "stand_in"]


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port) for the ``async with`` block; yields its base URL.

    ``async with serve(make_app()) as base_url:`` then call the provider with
    ``base_url=base_url``. The server stops when the block ends.
    """
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SeenRequest:
    """One request a :class:`StandIn` received."""

    method: str
    #: The request line's target: a path, or an absolute URL when sent to a proxy.
    target: str
    headers: dict[str, str]
    body: str


@dataclass
class StandIn:
    """A server that answers every request alike, and remembers what it was sent.

    With ``reflect=True`` it answers 200 with a JSON body quoting the request's headers and
    body, as a server echoing a key in an error message would.
    """

    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    reflect: bool = False
    url: str = ""
    requests: list[SeenRequest] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        body = await request.text()
        headers = dict(request.headers)
        self.requests.append(SeenRequest(request.method, request.raw_path, headers, body))
        if self.reflect:
            reflected = json.dumps({"you_sent": {"headers": headers, "body": body}})
            return web.Response(status=200, text=reflected, content_type="application/json")
        return web.Response(status=self.status, text=self.body, content_type=self.content_type)


@contextlib.asynccontextmanager
async def stand_in(
    status: int = 200,
    body: str = "",
    content_type: str = "application/json",
    *,
    reflect: bool = False,
) -> AsyncIterator[StandIn]:
    """Run a :class:`StandIn` on 127.0.0.1 for the block (any method, any path)."""
    from aiohttp import web

    server = StandIn(status, body, content_type, reflect)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with serve(app) as url:
        server.url = url
        yield server
