"""What an operator decides about one server: limits, auth, and where it may listen.

Kept apart from the application so the same frozen, picklable value travels to every worker
process and into tests unchanged.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_SHUTDOWN_GRACE",
    "BindRefused",
    "ServerSettings",
    "check_binding",
    "is_loopback",
]

#: 4 MiB: a long conversation with a few inline images fits; a runaway upload does not.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Seconds a client gets to send its whole request body. A request counts against the
#: concurrency limit from the start, before its body is read (that is what bounds the memory
#: bodies take), so without a deadline a client that stalls mid-upload would hold one of the
#: limited places for as long as it keeps its connection open.
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds a connection may go without a request in progress (before its first request's
#: headers are in, or between requests) before it is closed.
DEFAULT_HEADER_TIMEOUT = 60.0
#: Chat requests one worker answers at once; more get a 503 with ``Retry-After``.
DEFAULT_MAX_CONCURRENCY = 256
#: Seconds running requests get to finish after SIGTERM. Below Kubernetes' default
#: ``terminationGracePeriodSeconds`` (30 s), so the server ends before it is killed.
DEFAULT_SHUTDOWN_GRACE = 25.0


class BindRefused(ValueError):
    """The server was asked to listen beyond loopback without an API key."""


@dataclass(frozen=True)
class ServerSettings:
    """How one server behaves.

    ``api_key`` is excluded from ``repr`` so it never reaches a log line or a traceback.
    ``drop_unsupported`` drops request options no provider understands instead of answering
    400, for clients that always send options such as ``temperature``. ``body_timeout`` is
    the time a client gets to send its request body (``408`` after it); ``header_timeout``
    the time a connection may go without a request in progress (sending no request, or half
    its headers, or idle between requests) before it is closed.
    """

    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    drop_unsupported: bool = False
    access_log: bool = True
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __post_init__(self) -> None:
        if self.api_key is not None:
            # A client's key is read without surrounding whitespace, so the server's must be
            # too: the newline a secret file ends with would lock every client out.
            object.__setattr__(self, "api_key", self.api_key.strip())
            problem = api_key_problem(self.api_key)
            if problem:
                raise ValueError(problem)
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        for name in ("body_timeout", "header_timeout"):
            seconds = getattr(self, name)
            if not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must not be negative, got {self.shutdown_grace}")


def api_key_problem(key: str) -> str | None:
    """Why ``key`` (surrounding whitespace removed) cannot be the server's key, or None."""
    if not key:
        return "the API key must not be empty or blank"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return (
            "the API key holds a control character (a line break, say), which no HTTP header "
            "can carry: no client could ever send it"
        )
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine: ``localhost``, 127.0.0.0/8 or ``::1``.

    Any other name counts as public: a name can resolve to anything, so it gets no benefit of
    the doubt.
    """
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key: an open relay spends someone's quota.

    Raises:
        BindRefused: ``host`` is not loopback and no API key is configured.
    """
    if api_key is None and not is_loopback(host):
        raise BindRefused(
            f"refusing to listen on {host!r} without an API key: anyone who can reach it could "
            "use your providers. Set LLMRELAY_API_KEY (or --api-key), or listen on 127.0.0.1"
        )
