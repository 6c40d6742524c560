"""One provider call: its options, its deadline and its retry policy.

A provider's ``generate`` receives a :class:`Call` and does all its HTTP through it, so every
provider gets the same shared sessions, proxies, timeouts, retries and typed errors for free.

Retries wrap only the opening of a request (send, check the status, read a buffered body),
never an iteration that has yielded text: see ``StreamInterrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from . import errors
from ._proxy import ProxyURL, proxy_for
from ._redact import redact
from ._transport import HTTPResponse, SessionClosed, Timeouts, get_transport

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "Call", "RetryPolicy"]

log = logging.getLogger("llmrelay")
T = TypeVar("T")

#: Total seconds a call may take, retries included (config ``timeout``, ``LLMRELAY_TIMEOUT``).
DEFAULT_TIMEOUT = 120.0
#: Retries after the first attempt for transient failures (config ``max_retries``,
#: ``LLMRELAY_MAX_RETRIES``).
DEFAULT_MAX_RETRIES = 2


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    ``max_retries`` counts retries after the first attempt. Backoff is exponential with jitter,
    starting near ``backoff`` seconds and capped at ``max_backoff``. A provider's Retry-After is
    honoured up to ``max_retry_after``; a longer wait fails at once with ``retry_after`` set.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0


#: Shared defaults (both immutable), so building a ``Call`` allocates no policy of its own.
_DEFAULT_POLICY = RetryPolicy()
_DEFAULT_TIMEOUTS = Timeouts()
#: One read-only empty mapping, shared: the options of a call without request options, and
#: the headers of a request sent without any.
EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True)
class Call:
    """The context of one provider call: who, where through, how long, which options.

    ``stream`` says whether the caller wants the answer streamed (providers that cannot
    stream ignore it); ``options`` holds the request options the provider declared it supports.
    ``default_proxy`` is the configured proxy, used when neither ``proxy=`` nor
    ``LLMRELAY_PROXY`` says otherwise.
    """

    provider: str
    base_url: str
    proxy: str | None = field(default=None, repr=False)  # may hold a password
    default_proxy: str | None = field(default=None, repr=False)
    stream: bool = True
    timeout: float | None = DEFAULT_TIMEOUT
    retry: RetryPolicy = _DEFAULT_POLICY
    timeouts: Timeouts = _DEFAULT_TIMEOUTS
    options: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    _deadline: float | None = field(default=None, init=False, repr=False)
    #: Set once a stream is open with the deadline as aiohttp's total timeout: its reads need
    #: no timer of their own.
    _transport_bounds_reads: bool = field(default=False, init=False, repr=False)
    #: The responses of this call's streams open now (see ``end_reads``).
    _open_responses: list[aiohttp.ClientResponse] | None = field(
        default=None, init=False, repr=False
    )
    #: Set by ``end_reads``: no request of this call may start, or try again, from then on.
    _reads_ended: bool = field(default=False, init=False, repr=False)
    #: Set while waiting to retry: ``end_reads`` wakes the wait up.
    _wake: asyncio.Event | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:
        # Not the dataclass's: the base URL may carry a key (``?key=...``, ``user:pass@``).
        return (
            f"Call(provider={self.provider!r}, base_url={redact(self.base_url)!r}, "
            f"stream={self.stream!r}, timeout={self.timeout!r}, retry={self.retry!r}, "
            f"timeouts={self.timeouts!r}, options={dict(self.options)!r}, "
            f"attempts={self.attempts!r})"
        )

    def url(self, endpoint: str = "") -> str:
        """An absolute URL: the base URL (``url`` or ``base_url=``) joined with ``endpoint``.

        A query in the base URL (``...?api-version=2024-06-01``, as Azure's) stays at the end.
        """
        if not endpoint:
            return self.base_url
        if "?" not in self.base_url:  # nearly always
            return f"{self.base_url.rstrip('/')}/{endpoint.lstrip('/')}"
        base, _, query = self.base_url.partition("?")
        joined = f"{base.rstrip('/')}/{endpoint.lstrip('/')}"
        return f"{joined}{'&' if '?' in endpoint else '?'}{query}"

    def proxy_for(self, url: str) -> ProxyURL | None:
        return proxy_for(url, self.proxy, self.default_proxy)

    def start(self) -> None:
        """Start the total deadline; called when the provider's generator first runs.

        The deadline is on ``time.monotonic()``, not the loop's clock: only lengths of time
        leave here (aiohttp's total timeout is "what remains"), and on Unix
        ``asyncio.get_running_loop()`` costs a ``getpid`` system call, on every call.
        """
        if self._deadline is None and self.timeout is not None:
            self._deadline = time.monotonic() + self.timeout

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the call has none."""
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def _deadline_error(self, last: errors.ProviderError | None = None) -> errors.ProviderTimeout:
        if last is None:
            what = f"deadline of {self.timeout:.3g}s exceeded after {self.attempts} attempt(s)"
        else:
            what = (
                f"deadline of {self.timeout:.3g}s leaves no time to retry after "
                f"{self.attempts} attempt(s); last error: {last.reason}"
            )
        return errors.ProviderTimeout(
            what,
            provider=self.provider,
            status=None if last is None else last.status,
            retryable=False,
            retry_after=None if last is None else last.retry_after,
            body=None if last is None else last.body,
        )

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        remaining = self.remaining()
        if remaining is None:
            return await awaitable
        if remaining <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise self._deadline_error()
        started = time.monotonic()
        try:
            async with asyncio.timeout(remaining):
                return await awaitable
        except TimeoutError as exc:
            raise self._timeout_error(exc, started) from None

    def _timeout_error(self, exc: TimeoutError, started: float) -> Exception:
        """What a ``TimeoutError`` means: our deadline, or a socket timeout (aiohttp's read
        timeout is a TimeoutError too), which keeps its own, retryable, meaning."""
        if self._expired():
            return self._deadline_error()
        if isinstance(exc, errors.LLMRelayError):
            return exc
        from ._transport import network_error

        return network_error(exc, self.provider, None, started) or exc

    def _expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    async def with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` with the retry policy and within the deadline.

        When the next wait would pass the deadline, the call stops at once with
        ``ProviderTimeout`` (its ``__cause__`` and message keep the last error): the deadline is
        what ended the call, and waiting only to fail later helps nobody. The first attempt
        skips tenacity's machinery: most calls succeed at once.
        """
        self.start()
        try:
            return await self._attempt(attempt)
        except errors.ProviderError as exc:
            if not self._retries_after(exc):
                raise
            failure = exc
        return await self._retry(failure, functools.partial(self._attempt, attempt))

    def _retries_after(self, first_failure: errors.ProviderError) -> bool:
        """Whether the first attempt's failure is worth another attempt."""
        return self.retry.max_retries > 0 and self._should_retry(first_failure)

    async def _retry(
        self, first_failure: errors.ProviderError, again: Callable[[], Awaitable[T]]
    ) -> T:
        """Retry after ``first_failure`` (a retryable error) with tenacity's waits and stops."""
        pending: errors.ProviderError | None = first_failure
        deadline_stop = False

        def stop_at_deadline(state: RetryCallState) -> bool:
            nonlocal deadline_stop
            deadline_stop = self._no_time_for(state.upcoming_sleep)
            return deadline_stop

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.max_retries + 1) | stop_when(stop_at_deadline),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            before_sleep=self._log_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt_state in retrying:
                with attempt_state:
                    if pending is not None:
                        # Hand tenacity the failure we already had, so its waits, attempt
                        # numbers and stop rules count it; the request is not sent again.
                        failure, pending = pending, None
                        raise failure
                    return await again()
        except errors.ProviderError as exc:
            if deadline_stop and not isinstance(exc, errors.ProviderTimeout):
                raise self._deadline_error(exc) from exc
            raise
        raise AssertionError(
            "unreachable: tenacity either returns or re-raises"
        )  # pragma: no cover

    async def _attempt(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """One attempt within the deadline, counted and logged."""
        self.attempts += 1
        started = time.monotonic()
        try:
            result = await self._bounded(attempt())
        except errors.ProviderError as exc:
            self._log_failure(exc, started)
            raise
        self._log_success(getattr(result, "status", None), started)
        return result

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        proxy: ProxyURL | None,
        first: bool = True,
    ) -> HTTPResponse:
        """One attempt of :meth:`request`, counted and logged; when it is the ``first`` and
        fails with a retryable error, the retries follow from here (tenacity's loop, each
        retry an attempt with ``first=False``).

        Why here, not in a coroutine around the first attempt: while the answer is awaited,
        a request then holds no retry wrapper (coroutine, partial, bound method) at all, and
        the objects alive across that await are what set how often the garbage collector
        runs under concurrency. The deadline is handed to aiohttp as the attempt's total
        timeout rather than wrapped around it: one timer less per request.
        """
        self.attempts += 1
        started = time.monotonic()
        debug = log.isEnabledFor(logging.DEBUG)  # once: most calls log nothing
        try:
            if self._reads_ended:  # the stream this answer was for was closed
                raise self._closed_error()
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                raise self._deadline_error()
            if debug:
                self._log_request(method, url, proxy)
            response = await get_transport().request(
                self.provider,
                method,
                url,
                headers=headers,
                data=data,
                proxy=proxy,
                timeouts=self.timeouts,
                total=remaining,
            )
        except errors.ProviderError as exc:
            # aiohttp's total timeout firing is our deadline, not a socket timeout.
            expired = isinstance(exc, errors.ProviderTimeout) and exc.retryable is not False
            if expired and self._expired():
                exc = self._deadline_error()
                self._log_failure(exc, started)
                raise exc from None
            self._log_failure(exc, started)
            if not first or not self._retries_after(exc):
                raise
            failure = exc
        else:
            if debug:
                self._log_success(response.status, started)
            return response
        again = functools.partial(self._send, method, url, headers, data, proxy, False)
        return await self._retry(failure, again)

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, errors.ProviderError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self.retry.max_retry_after

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        backoff = wait_exponential_jitter(
            multiplier=self.retry.backoff, max=self.retry.max_backoff, jitter=self.retry.jitter
        )
        return float(backoff(state))

    def _no_time_for(self, sleep: float | None) -> bool:
        """Whether sleeping ``sleep`` seconds would reach the deadline."""
        remaining = self.remaining()
        return remaining is not None and remaining <= (sleep or 0.0)

    def _log_success(self, status: object, started: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: attempt %d succeeded (status=%s) in %.2fs",
                self.provider,
                self.attempts,
                status,
                time.monotonic() - started,
            )

    def _log_failure(self, exc: errors.ProviderError, started: float) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        log.debug(
            "%s: attempt %d failed (status=%s) in %.2fs: %s",
            self.provider,
            self.attempts,
            exc.status,
            time.monotonic() - started,
            redact(exc.reason),
        )

    def _log_retry(self, state: RetryCallState) -> None:
        log.debug(
            "%s: retrying in %.2fs (attempt %d of %d)",
            self.provider,
            state.upcoming_sleep,
            state.attempt_number + 1,
            self.retry.max_retries + 1,
        )

    def _log_request(self, method: str, url: str, proxy: ProxyURL | None) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return  # redact() is not free: skip it on the hot path when nobody listens
        # str(ProxyURL) hides the password; redact() hides keys in the query string.
        via = f" via {proxy}" if proxy is not None else ""
        log.debug(
            "%s: %s %s%s (attempt %d)", self.provider, method, redact(url), via, self.attempts
        )

    # -- HTTP helpers for providers -----------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Coroutine[Any, Any, HTTPResponse]:
        """Send a request and read the whole answer, with retries, within the deadline:
        ``response = await call.request(...)``.

        ``json_body`` is serialised here (UTF-8, not ASCII-escaped) so the bytes sent are the
        bytes recorded in a cassette. A plain method that returns the coroutine of the
        attempts (see :meth:`_send`): one coroutine less alive per request in flight.
        """
        data, headers = _encode(json_body, headers, self.provider)
        self.start()
        return self._send(method, url, headers, data, self.proxy_for(url))

    async def post_json(
        self, url: str, payload: Any, *, headers: Mapping[str, str] | None = None
    ) -> Any:
        """POST ``payload`` as JSON and return the decoded JSON answer."""
        response = await self.request("POST", url, headers=headers, json_body=payload)
        return response.json(self.provider)

    def open_stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> OpenStream:
        """Open a streamed response (retrying the opening only): ``async with
        call.open_stream(...) as response`` gives it unread."""
        return OpenStream(self, method, url, headers, json_body)

    def _closed_error(self) -> SessionClosed:
        """The end of a request whose stream was closed: neither retried nor a reason to fall
        back (a ``SessionClosed``), and never seen by the reader, whose stream is over."""
        return SessionClosed(
            "the request was cut off: its stream was closed while it ran",
            provider=self.provider,
            retryable=False,
        )

    async def _sleep(self, seconds: float) -> None:
        """tenacity's wait before a retry, cut short when the call's reads end (its stream was
        closed by another task): the retry then stops at once, and the reader with it."""
        if self._reads_ended:
            return
        self._wake = wake = asyncio.Event()
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass
        finally:
            self._wake = None

    def end_reads(self) -> None:
        """End every read of this call's streams by aborting their connections: a task
        reading one (while another closes its stream) sees its read fail at once, instead of
        waiting for bytes that no one will read after it. A stream still opening (connecting,
        or waiting to retry) stops as soon as it can, and sends no request after this."""
        self._reads_ended = True
        if self._wake is not None:
            self._wake.set()
        for response in list(self._open_responses or ()):
            connection = response.connection
            if connection is not None and connection.transport is not None:
                connection.transport.abort()

    async def read(self, awaitable: Awaitable[T]) -> T:
        """Await one read of an open stream within the deadline (for providers that stream).

        A deadline reached while waiting raises ``ProviderTimeout``, as does a read started
        after it; a read timeout (no bytes for too long) stays a retryable ``ProviderTimeout``.
        """
        if not self._transport_bounds_reads:
            return await self._bounded(awaitable)
        if self._expired():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise self._deadline_error()
        started = time.monotonic()
        try:
            return await awaitable
        except TimeoutError as exc:
            raise self._timeout_error(exc, started) from None


class OpenStream:
    """:meth:`Call.open_stream`'s context: on entry, the request is sent (with retries until
    the response opens) and the open response given; on exit, it is released.

    A class, not an ``asynccontextmanager``, for the reason given in
    :class:`~llmrelay._transport.OpenedResponse`: no async generator of llmrelay's own for
    the event loop to close in parallel with the provider's when a stream is abandoned.
    """

    __slots__ = ("_call", "_headers", "_json_body", "_method", "_response", "_stack", "_url")

    def __init__(
        self,
        call: Call,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        json_body: Any,
    ) -> None:
        self._call = call
        self._method = method
        self._url = url
        self._headers = headers
        self._json_body = json_body
        self._stack: contextlib.AsyncExitStack | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        if self._stack is not None:  # a second entry would leak the first connection
            raise RuntimeError("this stream was already opened: call open_stream() again")
        call, method, url = self._call, self._method, self._url
        data, headers = _encode(self._json_body, self._headers, call.provider)
        proxy = call.proxy_for(url)
        transport = get_transport()
        self._stack = stack = contextlib.AsyncExitStack()

        async def attempt() -> aiohttp.ClientResponse:
            if call._reads_ended:  # closed while connecting or waiting to retry: stop
                raise call._closed_error()
            call._log_request(method, url, proxy)
            return await stack.enter_async_context(
                transport.open(
                    call.provider,
                    method,
                    url,
                    headers=headers,
                    data=data,
                    proxy=proxy,
                    timeouts=call.timeouts,
                    total=call.remaining(),
                )
            )

        try:
            response = await call.with_retries(attempt)
            if call._reads_ended:  # closed while the response was on its way: not read
                raise call._closed_error()
        except BaseException:
            await stack.aclose()
            raise
        # aiohttp now enforces the deadline on every read of this response (its total
        # timeout covers the body): one timer per call instead of one per read.
        call._transport_bounds_reads = True
        if call._open_responses is None:
            call._open_responses = []
        call._open_responses.append(response)
        self._response = response
        return response

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool | None:
        if self._stack is None:  # never entered: nothing to release
            return None
        open_responses = self._call._open_responses
        if open_responses is not None and self._response in open_responses:
            open_responses.remove(self._response)
        return await self._stack.__aexit__(kind, exc, tb)


class stop_when(stop_base):
    """A tenacity stop strategy from a predicate, so it composes with ``|``."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _encode(
    json_body: Any, headers: Mapping[str, str] | None, provider: str = ""
) -> tuple[bytes | None, Mapping[str, str]]:
    """The body's bytes, and the headers to send with it: the caller's own mapping (never
    changed) when it already names a Content-Type, else a copy that adds JSON's.

    Raises:
        InvalidRequest: the body holds what JSON cannot carry, or not as it is (NaN, a set,
            bytes, a lone surrogate, which no UTF-8 text can hold): refused before any I/O
            rather than sent altered.
    """
    if headers is None:
        headers = EMPTY_MAPPING
    if json_body is None:
        return None, headers
    if "content-type" not in headers and "Content-Type" not in headers:
        for key in headers:  # another spelling? (a loop, not any(): no generator per request)
            if key.lower() == "content-type":
                break
        else:
            headers = {**headers, "Content-Type": "application/json"}
    try:
        return encode_json(json_body).encode("utf-8"), headers
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        problem = f"it holds {bad!r}, a lone surrogate, which is not text UTF-8 can carry"
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    who = f"{provider}: " if provider else ""
    raise errors.InvalidRequest(
        f"{who}the request cannot be sent as JSON ({problem}); check the messages and options"
    )


#: The JSON rules of every request body: UTF-8 kept as is, NaN and infinities refused.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _body_encoder() -> Callable[[Any], str]:
    """``_JSON.encode`` without its Python layer: CPython's C encoder, called directly.

    ``JSONEncoder.encode`` goes through ``iterencode``, which sets up in Python what the C
    encoder then does; calling the C encoder directly writes the same text in about half
    the instructions (23k -> 18k for a small OpenAI body, about 1.5 µs here). One encoder
    serves every call, without the circular-reference markers ``_JSON.encode`` makes per
    call (about 0.7 µs more): a body that contains itself, or is nested beyond the recursion
    limit, is still a ``ValueError``, and a failure leaves nothing behind.

    ``c_make_encoder`` is an implementation detail of CPython's ``json`` module. If it is
    missing, or does not behave as expected here, this is ``_JSON.encode`` itself.
    """
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)  # CPython's C accelerator (untyped)
    if make is None:  # pragma: no cover - CPython always has it
        return _JSON.encode
    settings = (
        _JSON.default,
        encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        _JSON.key_separator,
        _JSON.item_separator,
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    # One encoder for every body, without circular-reference markers (a dict to fill and
    # empty per call, and one entry per container): a body that contains itself then goes
    # as deep as the recursion limit allows, and fails there, as one nested too deep does.
    shared = make(None, *settings)

    def encode(value: Any) -> str:
        try:
            return "".join(shared(value, 0))
        except RecursionError:
            raise ValueError(
                "Circular reference detected, or nesting deeper than Python's recursion limit"
            ) from None

    sample = {"a": [1, 2.5, None, True, "é\n"], "b": {}}
    try:
        same = encode(sample) == _JSON.encode(sample)
    except Exception:  # pragma: no cover - a different signature in some future CPython
        same = False
    return encode if same else _JSON.encode


#: ``json.dumps(value, ensure_ascii=False, allow_nan=False)``, for request bodies.
encode_json = _body_encoder()
