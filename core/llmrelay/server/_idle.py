"""Closing connections that send no request.

aiohttp closes a keep-alive connection left idle after a request (``keepalive_timeout``), but
sets no limit on the time a connection takes to send a request's headers. A client that
connects and sends nothing, or half a header line, held its socket for ever, without an API
key and outside ``--max-concurrency``: a few hundred such connections used up the worker's
file descriptors, and the worker then refused everyone, ``/health`` included. Here, a
connection with no request in progress for ``header_timeout`` seconds (since it opened, or
since its last request ended) is closed, as nginx's ``client_header_timeout`` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.web_protocol import RequestHandler

__all__ = ["IdleConnections", "close_idle_connections"]

log = logging.getLogger("llmrelay.server")


class IdleConnections:
    """Which connections have a request in progress, and since when the others are idle.

    The app's edge middleware reports each request's start and end (``request.protocol`` is
    its connection); :meth:`sweep` closes what has been idle for ``timeout`` seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._busy: dict[RequestHandler, int] = {}
        self._idle_since: dict[RequestHandler, float] = {}

    def request_started(self, connection: RequestHandler) -> None:
        self._busy[connection] = self._busy.get(connection, 0) + 1
        self._idle_since.pop(connection, None)

    def request_ended(self, connection: RequestHandler) -> None:
        left = self._busy.pop(connection, 1) - 1
        if left > 0:
            self._busy[connection] = left
        else:
            self._idle_since[connection] = time.monotonic()

    def sweep(self, connections: list[RequestHandler]) -> int:
        """Close the connections among ``connections`` (the server's open ones) that have had
        no request in progress for ``timeout`` seconds; forget the closed ones. Returns how
        many it closed."""
        now = time.monotonic()
        open_now = set(connections)
        for known in (self._busy, self._idle_since):
            for connection in [c for c in known if c not in open_now]:
                del known[connection]
        closed = 0
        for connection in connections:
            if connection in self._busy:
                continue
            if now - self._idle_since.setdefault(connection, now) >= self.timeout:
                connection.force_close()
                del self._idle_since[connection]
                closed += 1
        return closed


async def close_idle_connections(server: web.Server, idle: IdleConnections) -> None:
    """Sweep ``server``'s connections until cancelled: a few times per ``idle.timeout``, at
    most once a second."""
    interval = min(1.0, idle.timeout / 4)
    while True:
        await asyncio.sleep(interval)
        closed = idle.sweep(server.connections)
        if closed:
            log.info("closed %d connection(s) that sent no request for %gs", closed, idle.timeout)
