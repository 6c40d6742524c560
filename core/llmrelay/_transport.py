"""The one HTTP layer every provider uses.

Why one layer: a new ``ClientSession`` per request costs a TCP (and TLS) handshake every time and
leaks when an exception skips its close. Here there is one session per (event loop, SOCKS proxy),
created lazily and reused; HTTP proxies ride on the direct session per request, as aiohttp
supports them natively. Every failure leaves this module as one of llmrelay's typed errors, never
as a bare aiohttp or asyncio exception.

Sessions close when :func:`llmrelay.aclose` is awaited, or by themselves when their event loop
ends: a small keeper task per loop closes them when ``asyncio.run`` (or any ``asyncio.Runner``)
cancels the leftover tasks, so scripts that never call ``aclose`` leave no "Unclosed client
session" warning behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from . import errors
from ._json import loads
from ._proxy import ProxyURL
from ._redact import cookie_values, looks_secret, redact, remember_secret

if TYPE_CHECKING:
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HTTPResponse", "Timeouts", "Transport", "error_for_status", "get_transport"]

log = logging.getLogger("llmrelay")


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt socket timeouts, in seconds.

    ``connect`` bounds the TCP (and proxy) connect. ``read`` bounds the wait for the next bytes
    of a stream (its headers included): a stream that falls silent that long is dead. A whole
    answer has no read timeout: its first byte comes when the model has finished, so a silence
    there is the model thinking, which only the call's deadline may bound (see ``Call``).
    """

    connect: float = 10.0
    read: float = 60.0


class HTTPResponse:
    """A fully read response: status, headers, body, and the URL it came from."""

    __slots__ = ("_url", "body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, url: object) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._url = url  # aiohttp's yarl URL, turned into text only when someone asks

    @property
    def url(self) -> str:
        """The URL of the answer (after any redirect)."""
        return str(self._url)

    def __repr__(self) -> str:
        return f"HTTPResponse(status={self.status}, url={self.url!r}, {len(self.body)} bytes)"

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def excerpt(self) -> str:
        """The start of the body on one line, secrets scrubbed: for error messages."""
        return excerpt(self.text())

    def json(self, provider: str) -> Any:
        """The body as JSON, or ``InvalidResponse`` quoting the start of the body."""
        try:
            return loads(self.body)
        except ValueError:
            raise errors.InvalidResponse(
                f"answer is not JSON: {excerpt(self.text())!r}",
                provider=provider,
                status=self.status,
                body=excerpt(self.text()),
            ) from None


def excerpt(text: str, limit: int = errors.BODY_EXCERPT_CHARS) -> str:
    """The start of ``text`` on one line, secrets scrubbed, for error messages.

    Only the start is scrubbed (20 times what is shown, for the whitespace that folds): an
    error body of megabytes costs no more than one of kilobytes.
    """
    flat = " ".join(redact(text[: limit * 20]).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class _LoopSessions:
    """The sessions of one event loop, and the keeper task that closes them with the loop."""

    sessions: dict[ProxyURL | None, aiohttp.ClientSession] = field(default_factory=dict)
    keeper: asyncio.Task[None] | None = None
    #: Sessions taken out of ``sessions`` to be closed, until they are: a close that was
    #: cancelled midway leaves them here for the next one to finish.
    closing: list[aiohttp.ClientSession] = field(default_factory=list)


class Transport:
    """Owns the aiohttp sessions; one instance (``get_transport()``) serves the process."""

    def __init__(self, *, limit: int = 100, limit_per_host: int = 0) -> None:
        self.limit = limit
        self.limit_per_host = limit_per_host
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSessions] = (
            weakref.WeakKeyDictionary()
        )

    async def session(self, proxy: ProxyURL | None = None) -> aiohttp.ClientSession:
        """The shared session for the running loop and (SOCKS) proxy, created on first use."""
        return self._session(proxy)

    def _session(self, proxy: ProxyURL | None) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopSessions()
            state.keeper = loop.create_task(_keep(state), name="llmrelay-session-keeper")
        key = proxy if proxy is not None and proxy.is_socks else None
        existing = state.sessions.get(key)
        if existing is not None and not existing.closed:
            return existing
        return self._new_session(state, key)

    def _new_session(self, state: _LoopSessions, key: ProxyURL | None) -> aiohttp.ClientSession:
        import aiohttp

        from . import _connectors

        connector: aiohttp.BaseConnector
        if key is not None:
            from aiohttp_socks import ProxyType

            # The parts, not a URL string: a password with "@", "/" or ":" in it survives, and
            # no library gets a URL with the password to put in its own error messages.
            connector = _connectors.socks_connector(
                proxy_type=ProxyType.SOCKS4 if key.scheme == "socks4" else ProxyType.SOCKS5,
                host=key.host,
                port=key.port,
                username=key.username,
                password=key.password,
                rdns=True,
                limit=self.limit,
                limit_per_host=self.limit_per_host,
            )
        else:
            connector = _connectors.TCPConnector(
                limit=self.limit, limit_per_host=self.limit_per_host
            )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )
        state.sessions[key] = session
        return session

    def open(
        self,
        provider: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        proxy: ProxyURL | None = None,
        timeouts: Timeouts = Timeouts(),
        total: float | None = None,
    ) -> OpenedResponse:
        """Send one request and, entered (``async with``), give the open response once its
        status is a success.

        An error status is read (for its message) and raised as the matching typed error.
        Network failures while connecting or reading are raised as typed errors too.
        ``total`` bounds the request and every read of its body (aiohttp's total timeout).
        """
        return OpenedResponse(self, provider, method, url, headers, data, proxy, timeouts, total)

    async def request(
        self,
        provider: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        proxy: ProxyURL | None = None,
        timeouts: Timeouts = Timeouts(),
        total: float | None = None,
    ) -> HTTPResponse:
        """Send one request and read the whole answer (one attempt, no retry).

        ``total`` bounds the whole attempt (the caller's remaining deadline), enforced by
        aiohttp's own timer; expiry surfaces as ``ProviderTimeout``. There is no read timeout
        (see ``Timeouts``): a long silence before a whole answer is the model at work.

        The same steps as :meth:`open` then a read, written out flat: this is the hot path
        of every non-streamed call.
        """
        session = self._session(proxy)
        timeout = _whole_answer_timeout(timeouts, total)
        started = time.monotonic()
        try:
            # Awaited, not entered: ``release()`` below is all its ``async with`` would do
            # once the body is read, and the two coroutines less are per request.
            response = await session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=timeout,
                proxy=_http_proxy_url(proxy),
            )
            try:
                if response.status >= 400:
                    text = await response.text(errors="replace")
                    _remember_sent_secrets(headers)
                    raise error_for_status(provider, response.status, response.headers, text, proxy)
                body = await response.read()
            finally:
                response.release()  # back to the pool when read to the end; closed if not
        except errors.LLMRelayError:
            raise
        except Exception as exc:
            self._raise_typed(exc, provider, proxy, started, session)
        # The response's own headers stay case-insensitive (``headers["content-type"]``).
        return HTTPResponse(response.status, response.headers, body, response.url)

    def _raise_typed(
        self,
        exc: Exception,
        provider: str,
        proxy: ProxyURL | None,
        started: float,
        session: aiohttp.ClientSession,
    ) -> NoReturn:
        """Raise :meth:`_typed`'s error for ``exc``, which the caller is handling, or ``exc``
        itself if it is no network failure."""
        typed = self._typed(exc, provider, proxy, started, session)
        if typed is None:
            raise  # the caller's exception, as it was
        raise typed from None

    def _typed(
        self,
        exc: Exception,
        provider: str,
        proxy: ProxyURL | None,
        started: float,
        session: aiohttp.ClientSession,
    ) -> errors.LLMRelayError | None:
        """The typed error for ``exc``, a failure of a request on ``session``, or None if it
        is no network failure: ``SessionClosed`` when the session was closed, or is being
        closed, under the request, whatever the failure looked like."""
        typed = network_error(exc, provider, proxy, started)
        if typed is not None and (session.closed or self._closing(session)):
            return closed_under(provider)
        return typed

    def _closing(self, session: aiohttp.ClientSession) -> bool:
        """Whether ``session`` is being closed on the running loop (``session.closed`` turns
        true only once ``close()`` is done, after the reads it ended have failed)."""
        state = self._loops.get(asyncio.get_running_loop())
        return state is not None and any(session is closing for closing in state.closing)

    async def aclose(self) -> None:
        """Close the sessions of the running loop (other loops close theirs when they end)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            return
        await _close_all(state)
        # Forgotten only once closed (a cancelled close is finished by the next one), and not
        # if a request opened a session meanwhile: that one is the next close's.
        if not state.sessions and self._loops.get(loop) is state:
            del self._loops[loop]
            if state.keeper is not None:
                state.keeper.cancel()


class OpenedResponse:
    """:meth:`Transport.open`'s context: the request is sent on entry, the response released
    on exit, and aiohttp's failures (while opening, or while the body reads it) are raised
    as llmrelay's typed errors.

    A class, not an ``asynccontextmanager``: every async generator a loop has run is also
    closed by the loop when it ends (``asyncio.run`` closes them all at once), and an
    abandoned stream then had its generators closed in parallel, from the inside out:
    "generator didn't stop after athrow()" at exit. The provider's own generator, closed
    by the loop, now closes this in order.
    """

    __slots__ = (
        "_data",
        "_headers",
        "_method",
        "_provider",
        "_proxy",
        "_request",
        "_session",
        "_started",
        "_timeouts",
        "_total",
        "_transport",
        "_url",
    )

    def __init__(
        self,
        transport: Transport,
        provider: str,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        data: bytes | None,
        proxy: ProxyURL | None,
        timeouts: Timeouts,
        total: float | None,
    ) -> None:
        self._transport = transport
        self._provider = provider
        self._method = method
        self._url = url
        self._headers = headers
        self._data = data
        self._proxy = proxy
        self._timeouts = timeouts
        self._total = total
        self._request: Any = None  # aiohttp's request context, once sent

    async def __aenter__(self) -> aiohttp.ClientResponse:
        if self._request is not None:  # a second entry would leak the first connection
            raise RuntimeError("this response was already opened: call open() again")
        self._session = self._transport._session(self._proxy)
        self._started = time.monotonic()
        try:
            self._request = self._session.request(
                self._method,
                self._url,
                headers=self._headers,
                data=self._data,
                timeout=_stream_timeout(self._timeouts, self._total),
                proxy=_http_proxy_url(self._proxy),
            )
            response: aiohttp.ClientResponse = await self._request.__aenter__()
            if response.status >= 400:
                try:
                    body = await response.text(errors="replace")
                finally:
                    await self._request.__aexit__(None, None, None)
                _remember_sent_secrets(self._headers)
                raise error_for_status(
                    self._provider, response.status, response.headers, body, self._proxy
                )
            return response
        except errors.LLMRelayError:
            raise
        except Exception as exc:
            self._transport._raise_typed(
                exc, self._provider, self._proxy, self._started, self._session
            )

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._request is None:  # never entered: nothing to release
            return
        try:
            await self._request.__aexit__(kind, exc, tb)  # releases the connection
        except errors.LLMRelayError:
            raise
        except Exception as failure:
            self._transport._raise_typed(
                failure, self._provider, self._proxy, self._started, self._session
            )
        if isinstance(exc, Exception) and not isinstance(exc, errors.LLMRelayError):
            # The body's reads failed: the typed error for it, or the exception as it was.
            typed = self._transport._typed(
                exc, self._provider, self._proxy, self._started, self._session
            )
            if typed is not None:
                raise typed from None


@functools.lru_cache(maxsize=64)
def _http_proxy_url(proxy: ProxyURL | None) -> Any:
    """An HTTP proxy as a yarl URL built from its parts, so reserved characters in the
    credentials stay inside the credentials (a string would send ``p@ss`` to the host ``ss``).

    None for no proxy and for a SOCKS proxy (its session's connector speaks to it).
    """
    if proxy is None or proxy.is_socks:
        return None
    from yarl import URL

    return URL.build(
        scheme=proxy.scheme,
        user=proxy.username,
        password=proxy.password,
        host=proxy.host,
        port=proxy.port,
    )


#: aiohttp rounds a timeout longer than ``ceil_threshold`` (5 s by default) up to the next whole
#: second of the loop's clock: a deadline of 5.2 s ended up to 1 s late. Never round it.
_EXACT = math.inf


def _stream_timeout(timeouts: Timeouts, total: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for opening a stream: connect, read between bytes, and ``total``.

    ``total`` (what is left of the deadline) then bounds every read of the body too, so the
    reads need no timer of their own. The read timeout is left out when the deadline comes
    first anyway: it could never fire, and re-arming it costs a timer per packet.
    """
    if total is None:
        return _socket_timeout(timeouts)
    total = _to_the_millisecond(total)
    read = timeouts.read if timeouts.read < total else None
    return _deadline_timeout(total, timeouts.connect, read)


def _whole_answer_timeout(timeouts: Timeouts, total: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for a whole answer: connect, and ``total`` if the call has a deadline.

    No read timeout: a model answering in one piece sends nothing until it has finished, so
    a read timeout would cut off (and retry) every answer that takes longer to write.
    """
    if total is None:
        return _connect_timeout(timeouts.connect)
    return _deadline_timeout(_to_the_millisecond(total), timeouts.connect, None)


def _to_the_millisecond(total: float) -> float:
    """``total`` (what is left of a deadline) rounded up to the next millisecond.

    A call's first attempt starts microseconds after its deadline does, so what is left is
    the call's ``timeout`` less those microseconds: rounded, it is the ``timeout`` again, and
    one ``ClientTimeout`` (about 9k instructions to build, attrs' frozen class) serves every
    such attempt (:func:`_deadline_timeout`). Up, never down: when aiohttp's timer fires, the
    deadline has passed, so the attempt ends as the deadline's error, not as a timeout worth
    a retry; and it ends at most a millisecond late.
    """
    return math.ceil(total * 1000) / 1000


@functools.lru_cache(maxsize=256)
def _deadline_timeout(total: float, connect: float, read: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout bounding a whole attempt by ``total`` (built once per value)."""
    import aiohttp

    return aiohttp.ClientTimeout(
        total=total, sock_connect=connect, sock_read=read, ceil_threshold=_EXACT
    )


@functools.lru_cache(maxsize=32)
def _socket_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for ``timeouts`` alone (built once per value: it is immutable)."""
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)


@functools.lru_cache(maxsize=32)
def _connect_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout with a connect limit only (built once per value)."""
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_connect=connect)


async def _keep(state: _LoopSessions) -> None:
    """Wait until cancelled (by ``aclose`` or by the loop's shutdown), then close the sessions."""
    try:
        await asyncio.Event().wait()
    finally:
        # A task holds its loop even once done: kept in ``state``, it would keep the loop (the
        # weak key of ``Transport._loops``) alive for ever, with every object of its run.
        state.keeper = None
        await _close_all(state)


async def _close_all(state: _LoopSessions) -> None:
    if state.sessions:  # out of use at once: a request from now on opens a new session
        state.closing.extend(state.sessions.values())
        state.sessions = {}
    # Listed in ``closing`` until closed: the failures of the reads ended here are the close's
    # (``Transport._raise_typed``), and a cancelled close leaves the rest to the next one.
    for session in list(state.closing):
        await _end_reads(session)
        await session.close()
        with contextlib.suppress(ValueError):  # (another close may have finished it first)
            state.closing.remove(session)


async def _end_reads(session: aiohttp.ClientSession) -> None:
    """End the connections ``session`` has in use, and wait until their readers know.

    aiohttp's ``close()`` forgets a response's body before its connection reports the end, so
    a task reading one (a stream read by another task while its client closes) would wait for
    ever, or until the deadline. Aborted first, the connection ends every read on it: with the
    end of the stream, or an error.
    """
    closed = []
    for protocol in list(getattr(session.connector, "_acquired", ())):
        transport = protocol.transport
        if transport is not None and protocol.closed is not None:
            closed.append(protocol.closed)
            transport.abort()
    if closed:  # (bounded: an abort reports at the loop's next turn; close() goes on anyway)
        await asyncio.wait(closed, timeout=1.0)


class SessionClosed(errors.ConnectError):
    """A request cut off by its session closing (the client closing, or ``llmrelay.aclose()``).

    Neither retried nor a reason to fall back to another provider: either would open a
    session of its own that no one closes, and wait on it until the deadline, for ever
    without one. A ``ConnectError`` to callers; its own class only so the relay can tell.
    """


def closed_under(provider: str) -> errors.ConnectError:
    """The error of a request whose session was closed while it ran (see ``SessionClosed``)."""
    return SessionClosed(
        "the request was cut off: its HTTP session was closed while it ran "
        "(the client was closed, or llmrelay.aclose() called)",
        provider=provider,
        retryable=False,
    )


def network_error(
    exc: BaseException, provider: str, proxy: ProxyURL | None, started: float
) -> errors.LLMRelayError | None:
    """The typed error for an aiohttp, aiohttp-socks or asyncio failure; None if not one."""
    import aiohttp
    import aiohttp_socks

    if isinstance(
        exc,
        aiohttp_socks.ProxyConnectionError
        | aiohttp_socks.ProxyTimeoutError
        | aiohttp.ClientProxyConnectionError,
    ):
        # The proxy is down or unreachable: as transient as a refused connection to a host.
        # (aiohttp-socks' errors are plain Exceptions, not aiohttp.ClientError or OSError.)
        return errors.ProxyError(
            f"cannot reach proxy {proxy}: {redact(str(exc)) or type(exc).__name__}",
            provider=provider,
            retryable=True,
        )
    if isinstance(exc, aiohttp_socks.ProxyError):
        # The proxy answered but refused: bad credentials or a refused destination.
        return errors.ProxyError(
            f"proxy {proxy} refused the connection: {redact(str(exc)) or type(exc).__name__}",
            provider=provider,
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return errors.ProxyError(
            f"proxy {proxy} answered {exc.status} {exc.message}",
            provider=provider,
            status=exc.status,
        )
    if isinstance(exc, asyncio.IncompleteReadError):
        if proxy is not None and proxy.is_socks:
            # pproxy (and others) hang up mid-handshake on bad SOCKS credentials.
            return errors.ProxyError(
                f"proxy {proxy} closed the connection during the handshake (wrong credentials?)",
                provider=provider,
            )
        return errors.ConnectError(f"connection cut: {exc}", provider=provider)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        what = "connect" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "read"
        return errors.ProviderTimeout(
            f"{what} timed out after {time.monotonic() - started:.1f}s", provider=provider
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return errors.InvalidRequest(f"{provider}: invalid URL {redact(str(exc))!r}")
    if isinstance(exc, ValueError) and str(exc).startswith("Cannot combine AUTHORIZATION"):
        # aiohttp refuses, before sending, a URL with user:password@ for a request that
        # carries an Authorization header (the provider's key) already.
        return errors.InvalidRequest(
            f"{provider}: the base URL's user:password@ cannot be sent with the provider's "
            "own Authorization header (its API key): remove the credentials from the URL"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if _is_http_proxy(proxy, exc.host, exc.port):
            # aiohttp names only a refused proxy connection as such; a proxy host that does
            # not resolve fails like the destination's would (ClientConnectorDNSError).
            return errors.ProxyError(
                f"cannot reach proxy {proxy}: {exc.os_error.strerror or exc.os_error}",
                provider=provider,
                retryable=True,
            )
        return errors.ConnectError(
            f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}",
            provider=provider,
        )
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        detail = redact(str(exc)) or type(exc).__name__
        return errors.ConnectError(f"connection failed: {detail}", provider=provider)
    return None


def _remember_sent_secrets(headers: Mapping[str, str] | None) -> None:
    """Scrub, from the error about to be made and from everything after, the credentials this
    request sent in headers (``X-Drip-Key``, ``Authorization: Bearer ...``): a server that
    refuses a key often quotes it back. Done when an answer is an error, never on the way
    out: a provider need not declare its key for it to stay out of messages and logs."""
    if not headers:
        return
    for name, value in headers.items():
        if looks_secret(name):
            remember_secret(value)
            remember_secret(value.partition(" ")[2])  # "Bearer <token>": the token
            if name.lower() == "cookie":
                for cookie in cookie_values(value):
                    remember_secret(cookie)


def _is_http_proxy(proxy: ProxyURL | None, host: str, port: int | None) -> bool:
    """Whether ``host:port`` is ``proxy``'s, an HTTP proxy that aiohttp connects to itself."""
    return proxy is not None and not proxy.is_socks and (proxy.host, proxy.port) == (host, port)


def error_for_status(
    provider: str,
    status: int,
    headers: Mapping[str, str] | CIMultiDictProxy[str],
    body: str,
    proxy: ProxyURL | None = None,
) -> errors.ProviderError:
    """The typed error for an HTTP error status, keeping the start of the body."""
    headers = _case_insensitive(headers)
    short = excerpt(body)
    kind: type[errors.ProviderError]
    reason = f"HTTP {status}"
    retry_after = parse_retry_after(headers)
    if status == 407:
        return errors.ProxyError(
            f"proxy {proxy} requires (other) credentials: HTTP 407",
            provider=provider,
            status=status,
            body=short,
        )
    if status in (400, 422):
        kind = errors.BadRequest
    elif status == 401:
        kind = errors.AuthenticationFailed
    elif status == 403:
        kind = errors.PermissionDenied
        if _is_cloudflare(headers, body):
            kind, reason = errors.CloudflareChallenge, "HTTP 403 Cloudflare challenge page"
    elif status == 404:
        kind = errors.EndpointNotFound
    elif status == 429:
        kind = errors.RateLimited
    elif status >= 500:
        kind = errors.ServerError
    else:
        kind = errors.HTTPStatusError
    retryable: bool | None = status in (408, 409) or None
    should_retry = headers.get("x-should-retry", "").strip().lower()
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    detail = f": {short}" if short and kind is not errors.CloudflareChallenge else ""
    return kind(
        f"{reason}{detail}",
        provider=provider,
        status=status,
        retryable=retryable,
        retry_after=retry_after,
        body=short,
    )


def _is_cloudflare(headers: Mapping[str, str] | CIMultiDictProxy[str], body: str) -> bool:
    head = body[:4096].lower()
    served_by_cf = "cf-ray" in headers or headers.get("server", "").lower() == "cloudflare"
    return ("<html" in head or "<!doctype html" in head) and (
        served_by_cf or "cloudflare" in head or "just a moment" in head
    )


def _case_insensitive(
    headers: Mapping[str, str] | CIMultiDictProxy[str],
) -> CIMultiDictProxy[str] | CIMultiDict[str]:
    """Header names are case-insensitive; a plain dict from a caller is not."""
    from multidict import CIMultiDict, CIMultiDictProxy

    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        return headers
    return CIMultiDict(headers)


def parse_retry_after(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP-date).

    Header names match in any case, whatever mapping holds them.
    """
    headers = _case_insensitive(headers)
    millis = headers.get("retry-after-ms")
    if millis:
        with contextlib.suppress(ValueError):
            return max(0.0, float(millis) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_transport: Transport | None = None


def get_transport() -> Transport:
    """The process-wide transport."""
    global _transport
    if _transport is None:
        _transport = Transport()
    return _transport


async def aclose() -> None:
    """Close llmrelay's HTTP sessions on the running event loop.

    Optional in scripts run with ``asyncio.run`` (sessions close with the loop); call it when a
    long-lived loop is done with llmrelay.
    """
    if _transport is not None:
        await _transport.aclose()
