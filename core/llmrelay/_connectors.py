"""The connectors of llmrelay's sessions: aiohttp's (and aiohttp-socks') own, with small reads.

Why: asyncio's plain-socket transport reads with ``sock.recv(256 KiB)``, so every read, however
few bytes arrive, first allocates a 256 KiB ``bytes``. glibc serves an allocation that large
with ``mmap``, shrinks it with ``mremap`` to the bytes received and unmaps it when it is freed:
three system calls and page faults on every read (python/cpython#85451). On the 2-core
benchmark machine that was about 20 µs per read, or 12 % of the client's CPU per request with
50 requests in flight, and it falls on every chunk of a stream. 64 KiB, the size of aiohttp's
own read buffer, is below glibc's ``mmap`` threshold (128 KiB, which only ever grows), so reads
come from the heap.

Only asyncio's plain-socket transport is changed (HTTP, a SOCKS tunnel, an HTTP proxy to an
``http://`` URL); TLS connections already read into one buffer of their own, and other event
loops (uvloop) have no such setting and are left as they are.

Imported with aiohttp, when the first session is made: not at ``import llmrelay``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = ["READ_SIZE", "SmallReads", "TCPConnector", "read_in_small_pieces", "socks_connector"]

#: The most one read of a plain socket asks for.
READ_SIZE = 64 * 1024


def read_in_small_pieces(transport: object) -> None:
    """Make ``transport`` read at most ``READ_SIZE`` bytes at a time, if it is asyncio's
    plain-socket transport and reads more (its ``max_size``, 256 KiB); else leave it as it is."""
    if getattr(transport, "max_size", 0) > READ_SIZE:
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]


class SmallReads(aiohttp.BaseConnector):
    """A connector mixin: every connection it hands out reads in small pieces.

    Done in ``connect()`` (aiohttp's documented way to get a connection), before the request
    is sent, so even a new connection's first answer is read this way; a pooled connection has
    been set already and costs one attribute look-up.
    """

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, passed on
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        read_in_small_pieces(connection.transport)
        return connection


class TCPConnector(SmallReads, aiohttp.TCPConnector):
    """aiohttp's ``TCPConnector``, reading in small pieces."""


def socks_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """aiohttp-socks' ``ProxyConnector(**kwargs)``, reading in small pieces."""
    return _socks_connector_class()(**kwargs)


@functools.cache
def _socks_connector_class() -> type[aiohttp.TCPConnector]:
    # aiohttp-socks is imported here, for the first SOCKS session only: it takes about 40 ms.
    from aiohttp_socks import ProxyConnector

    class SocksConnector(SmallReads, ProxyConnector):
        """aiohttp-socks' ``ProxyConnector``, reading in small pieces."""

    return SocksConnector
