"""What the handlers share: the settings, the live counters, and per-request log fields."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field

from aiohttp import web

from .._registry import Registry
from ._idle import IdleConnections
from ._settings import ServerSettings

__all__ = [
    "LOG",
    "PROVIDER_HEADER",
    "REQUEST_ID_HEADER",
    "SHUTDOWN",
    "STATE",
    "RequestLog",
    "ServerState",
]

#: The response header naming the provider that answered (the body keeps OpenAI's shape).
PROVIDER_HEADER = "x-llmrelay-provider"
#: The response header carrying the id the access-log line shows, to match a client's report.
REQUEST_ID_HEADER = "x-request-id"

#: The cancellation message that tells a chat handler the shutdown grace period is over (as
#: opposed to its client having left): it then ends its stream with an error event.
SHUTDOWN = "llmrelay: server shutting down"


@dataclass
class ServerState:
    """One application's settings and counters.

    ``registry`` None means the process registry (entry points), looked up per request so
    ``reset_registry()`` takes effect; tests and embedders pass their own.
    ``key`` is the SHA-256 digest of the API key (None: no key required).
    ``tasks`` holds the chat requests in progress: their number is what the concurrency limit
    counts, and shutdown waits for them. ``draining`` is set once shutdown begins, so
    ``/ready`` tells load balancers to stop sending traffic.
    """

    settings: ServerSettings
    registry: Registry | None = None
    tasks: set[asyncio.Task[object]] = field(default_factory=set)
    draining: bool = False
    key: bytes | None = field(default=None, repr=False)
    #: The connections with a request in progress, for closing those that send none.
    idle: IdleConnections = field(init=False)

    def __post_init__(self) -> None:
        self.idle = IdleConnections(self.settings.header_timeout)


@dataclass(slots=True)
class RequestLog:
    """What the access-log line of one request says beyond method, path and status.

    ``status`` overrides the response's (499 when the client went away mid-answer);
    ``error`` is the code of an error sent inside a 200 stream, which the status cannot show.
    """

    request_id: str
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    error: str | None = None


STATE = web.AppKey("llmrelay.server.state", ServerState)
#: The current request's :class:`RequestLog`. A context variable rather than request storage:
#: the middleware, the handler and ``on_response_prepare`` all run in the request's task, and
#: request storage wants ``web.RequestKey``, newer than the oldest aiohttp core supports.
LOG: contextvars.ContextVar[RequestLog] = contextvars.ContextVar("llmrelay_server_request")
