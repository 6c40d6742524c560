"""Relay a request across the providers that serve a model: resolve, try in order, fall back.

Fallback happens only before the first text chunk reaches the caller. After that, a failure is
``StreamInterrupted`` and no other provider is tried, so an answer is never spliced from two.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Collection
from typing import Any

from . import errors
from ._call import Call, RetryPolicy
from ._config import get_config
from ._options import check_options
from ._provider import (
    READ_BY_ANOTHER_TASK,
    ChunkStream,
    Completion,
    Provider,
    checked_completion,
    typed_error,
)
from ._registry import Registry, get_registry
from ._routing import Health, health, route
from ._transport import SessionClosed
from ._types import Chunk, Message, Messages, validate_messages

__all__ = ["RelayStream", "relay"]

log = logging.getLogger("llmrelay")


class RelayStream(ChunkStream):
    """A stream that answers from the first provider that works.

    ``provider`` names the provider currently answering (the last one tried, after a failure).
    ``errors`` keeps the typed error of each provider that failed before it. One deadline
    (``timeout``) bounds the whole relay: each provider gets what is left of it.

    It drives each provider's own :class:`ChunkStream` (which checks the provider contract)
    directly, with no generator of its own in between: every chunk of every answer passes
    here, so a layer less is time saved on each. A whole answer (``collect()``) from a
    provider that implements ``complete()`` skips the ChunkStream too.
    """

    def __init__(
        self,
        model: str,
        candidates: list[tuple[type[Provider], str, Call]],
        messages: list[Message],
        proxy: str | None,
        options: dict[str, Any],
        tracker: Health = health,
        timeout: float | None = None,
        max_retry_after: float | None = None,
    ) -> None:
        self.model = model
        self.provider = candidates[0][0].name
        self.call = None
        self.errors: list[errors.ProviderError] = []
        self._health = tracker
        self._candidates = candidates
        self._tried = 0  # how many candidates were started (an index: no iterator object)
        self._messages = messages
        self._proxy = proxy
        self._options = options
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._deadline: float | None = None
        self._current: ChunkStream | None = None
        self._started = 0.0  # when the current candidate was started (on the health clock)
        self._sound = False  # some of the answer came: the provider answering is noted sound
        self._finished = False
        self._reading = False  # a read is under way (in this task or another)

    @property
    def delivered(self) -> bool:
        """Whether some of the answer reached the caller (see :attr:`ChunkStream.delivered`):
        from then on no other provider is tried."""
        return self._current is not None and self._current.delivered

    async def __anext__(self) -> Chunk:
        if self._finished and self._current is None:
            raise StopAsyncIteration
        if self._reading:  # refused before anything changes: the other read goes on
            raise RuntimeError(READ_BY_ANOTHER_TASK)
        self._reading = True
        try:
            while True:
                stream = self._current or self._open_next()
                try:
                    chunk = await stream.__anext__()
                except errors.ProviderError as exc:
                    await self._failed(stream, exc)
                    continue
                except BaseException:
                    self._finished = True
                    await stream.aclose()
                    raise
                if not self._sound:  # its first chunk: it works (the docs' "first success")
                    self._sound = True
                    self._health.succeeded(stream.provider)
                return chunk
        finally:
            self._reading = False

    async def collect(self) -> Completion:
        """Read the whole answer, falling back while no provider has produced text.

        A provider whose ``complete()`` gives this call's whole answer is awaited directly,
        with no :class:`ChunkStream` in between: this is the path of every whole answer, and
        the objects a request holds while it waits are what set how often the garbage
        collector runs under load.
        """
        if self._finished:
            raise errors.InvalidRequest(
                "this relay stream was already read or closed; "
                "start a new request to read another answer"
            )
        # Finished from the first read on: while a whole answer is awaited (no stream is
        # current yet), a second collect() or iteration must be refused, not start the next
        # provider; and whatever ends this read, the stream cannot be read again.
        self._finished = True
        while True:
            if self._current is None:
                provider, model, call = self._next_candidate()
                if _overrides_entry(provider) or not provider.completes(call):
                    stream = self._open(provider, model, call)
                else:
                    call.start()
                    try:
                        answer = checked_completion(
                            provider.name, await provider.complete(model, self._messages, call)
                        )
                    except errors.ProviderError as exc:
                        self._note_failure(provider.name, exc, delivered=False)
                        continue
                    except Exception as exc:
                        typed = typed_error(exc, provider.name)
                        if isinstance(typed, errors.ProviderError):  # a failure: fall back
                            self._note_failure(provider.name, typed, delivered=False)
                            continue
                        if typed is exc:
                            raise
                        raise typed from typed.__cause__
                    self._health.succeeded(provider.name)
                    return answer
            else:
                stream = self._current
            try:
                completion = await stream.collect()
            except errors.ProviderError as exc:
                await self._failed(stream, exc)
                continue
            self._health.succeeded(stream.provider)
            return completion

    async def aclose(self) -> None:
        """Stop early and release the connection of the provider answering."""
        self._finished = True
        if self._current is not None:
            await self._current.aclose()

    def _open_next(self) -> ChunkStream:
        """Start the next candidate's stream, or raise what ended the relay when none is left."""
        return self._open(*self._next_candidate())

    def _next_candidate(self) -> tuple[type[Provider], str, Call]:
        """The next provider to try, its model and its call (given what is left of the
        deadline), or raise what ended the relay when none is left."""
        if self._deadline is None and self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout  # (as Call.start: no loop clock)
        while self._tried < len(self._candidates):
            provider, model, call = self._candidates[self._tried]
            self._tried += 1
            if self._deadline is not None and self._tried > 1:  # the first has it whole
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                call.timeout = remaining
            if self._max_retry_after is not None:
                call.retry = _capped(call.retry, self._max_retry_after)
            if self._tried < len(self._candidates) and self._ready_behind():  # (one: no slice)
                call.retry = _capped(call.retry, call.retry.max_backoff)
            self.provider = provider.name
            self._started = self._health.clock()
            return provider, model, call
        self._finished = True
        raise self._final_error()

    def _ready_behind(self) -> bool:
        """Whether a provider after the one being started can likely answer at once: one
        marked working, with no failure since its last success. Only then is a long
        Retry-After not waited (see :func:`_capped`): handing over to a provider
        that is failing, or not expected to work, would trade a wait for a failure."""
        return any(
            provider.working and not self._health.failures(provider.name)
            for provider, _, _ in self._candidates[self._tried :]
        )

    def _open(self, provider: type[Provider], model: str, call: Call) -> ChunkStream:
        """The stream of one candidate, now the one answering."""
        if _overrides_entry(provider):
            options = self._options
            if self._deadline is not None:
                options = {**options, "timeout": call.timeout}
            stream = provider.create_async_generator(
                model, self._messages, proxy=self._proxy, **options
            )
        else:  # input and options were checked once, in relay(): skip doing it again
            stream = provider.start(model, self._messages, call)
        self._current = stream
        return stream

    async def _failed(self, stream: ChunkStream, exc: errors.ProviderError) -> None:
        """A provider's stream failed: re-raise if some of its answer had reached the caller,
        else note it and move on."""
        self._current = None
        try:
            self._note_failure(stream.provider, exc, delivered=stream.delivered)
        finally:
            await stream.aclose()

    def _note_failure(self, provider: str, exc: errors.ProviderError, *, delivered: bool) -> None:
        """Record a provider's failure; re-raise it if some of its answer had reached the caller
        (only the provider answering can have: an earlier one that had would have ended the
        relay here)."""
        if _provider_side(exc):
            self._health.failed(provider, since=self._started, retry_after=exc.retry_after)
        if delivered or isinstance(exc, errors.StreamInterrupted | SessionClosed):
            self._finished = True  # (closed under it: the next provider's session, too)
            raise exc
        self.errors.append(exc)
        then = "trying the next provider" if self._tried < len(self._candidates) else "none left"
        log.info("%s failed before any text (%s); %s", provider, exc.reason, then)

    def _final_error(self) -> Exception:
        if not self.errors:  # the deadline passed before any provider was tried
            return errors.ProviderTimeout(
                f"deadline of {self._timeout:g}s exceeded before any provider answered",
                provider=self.provider,
                retryable=False,
            )
        last = self.errors[-1]
        expired = self._deadline is not None and (
            time.monotonic() >= self._deadline
            # The last call stopped short of the deadline because it left no time to retry:
            # the deadline ended the relay all the same (a socket timeout is retryable).
            or (isinstance(last, errors.ProviderTimeout) and last.retryable is False)
        )
        if expired and len(self.errors) > 1:
            # The deadline, not the providers, ended the relay: say so, as a TimeoutError.
            timeout = errors.ProviderTimeout(
                f"deadline of {self._timeout:g}s exceeded after trying "
                + ", ".join(e.provider for e in self.errors),
                provider=self.provider,
                retryable=False,
            )
            timeout.__cause__ = errors.AllProvidersFailed(self.model, self.errors)
            return timeout
        if len(self.errors) == 1:
            return self.errors[0]
        return errors.AllProvidersFailed(self.model, self.errors)


def _capped(policy: RetryPolicy, max_retry_after: float) -> RetryPolicy:
    """``policy`` waiting out a provider's Retry-After only up to ``max_retry_after``: a
    longer one fails at once, with ``retry_after`` kept (see :class:`RetryPolicy`).

    The relay caps a provider with a sound one behind it (see
    :meth:`RelayStream._ready_behind`) at a backoff's cap (``max_backoff``): a rate limit of
    30 s would otherwise hold the answer 30 s, twice over, while another provider could give
    it now. The provider that asked is cooled down for as long as it asked (see ``Health``)
    and its error kept in :attr:`RelayStream.errors`. The last provider waits as long as its
    policy allows, unless the caller capped every wait (``llmrelay serve`` does: see
    :func:`relay_options`). A provider that replaces ``create_async_generator`` builds its own
    calls, with its own policy. Built once per policy and cap; the last one is found by
    identity, without hashing the policy (``llmrelay serve`` caps every request's).
    """
    global _last_capped
    if policy.max_retry_after <= max_retry_after:
        return policy
    last = _last_capped
    if last is not None and last[0] is policy and last[1] == max_retry_after:
        return last[2]
    capped = _build_capped(policy, max_retry_after)
    _last_capped = (policy, max_retry_after, capped)  # (one assignment: safe across threads)
    return capped


_last_capped: tuple[RetryPolicy, float, RetryPolicy] | None = None


@functools.lru_cache(maxsize=16)
def _build_capped(policy: RetryPolicy, max_retry_after: float) -> RetryPolicy:
    return dataclasses.replace(policy, max_retry_after=max_retry_after)


def _overrides_entry(provider: type[Provider]) -> bool:
    """A provider that replaced ``create_async_generator`` itself is called through it.

    Read from the class (``Provider.__init_subclass__`` sets it), not by comparing bound
    methods: that would build two method objects per request."""
    return provider._custom_entry


#: Names of llmrelay's own parameters: as request options they would collide with them.
_RESERVED_OPTIONS = frozenset({"config", "cls", "registry", "model", "messages"})


def _understood(
    options: dict[str, Any], caller_honours: Collection[str], provider: type[Provider]
) -> dict[str, Any]:
    """``options`` without those the caller honours itself (``stream_options`` for the
    client) that ``provider`` does not declare: passed where understood, never refused."""
    return {
        key: value
        for key, value in options.items()
        if key not in caller_honours or key in provider.supported_options
    }


def _provider_side(exc: errors.ProviderError) -> bool:
    """Whether ``exc`` says something about the provider's health, not about the request.

    A 400, 404 or 422 is the caller's request failing; cooling a healthy provider down for it
    would punish the next, valid request.
    """
    return exc.retryable or isinstance(
        exc,
        errors.InvalidResponse
        | errors.AuthenticationFailed
        | errors.PermissionDenied
        | errors.StreamInterrupted
        | errors.ProviderTimeout
        | errors.ProxyError,
    )


def relay(
    model: str,
    messages: Messages,
    *,
    proxy: str | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> RelayStream:
    """Stream an answer for ``model`` from the first provider that serves it and works.

    Input, model and options are all checked before any I/O. Providers are tried in the order
    :func:`~llmrelay._routing.route` gives (working, configured priority, recent health,
    registration); an empty ``model`` means the configured default. Providers that do not
    accept an option are skipped; if none accepts it, the first one's ``InvalidRequest`` is
    raised.

    Raises:
        InvalidRequest: bad messages, proxy URL or options.
        ModelNotFound: no provider serves ``model``.
    """
    return relay_options(model, messages, proxy, registry, options)


def relay_options(
    model: str,
    messages: Messages,
    proxy: str | None,
    registry: Registry | None,
    options: dict[str, Any],
    caller_honours: Collection[str] = (),
    max_retry_after: float | None = None,
) -> RelayStream:
    """:func:`relay` with the request options as a dict (no keyword of its own can collide
    with one a caller passes on, as ``llmrelay serve`` passes a request's fields).

    Options named in ``caller_honours`` are ones the caller acts on itself (the client's
    ``stream_options``): passed only to the providers that declare them, and never a reason
    to skip one. ``max_retry_after`` caps how long any provider's Retry-After is waited out
    (a longer one fails at once, with its ``retry_after``): for a caller that would rather
    pass the wait on than hold its own client, as ``llmrelay serve`` does.
    """
    if not options.keys().isdisjoint(_RESERVED_OPTIONS):
        clash = sorted(_RESERVED_OPTIONS & options.keys())
        raise errors.InvalidRequest(
            f"{', '.join(map(repr, clash))} cannot be passed as a request option"
        )
    if not isinstance(model, str):
        raise errors.InvalidRequest(f"model must be a string, got {type(model).__name__}")
    check_options(options)  # once, before any provider can refuse them in its own words
    checked = validate_messages(messages)
    config = get_config()
    candidates = route(model or config.default_model, registry or get_registry(), config)
    usable: list[tuple[type[Provider], str, Call]] = []
    first_refusal: errors.InvalidRequest | None = None
    for provider, provider_model in candidates:
        try:
            call = provider.make_call(
                proxy=proxy,
                config=config,
                **(_understood(options, caller_honours, provider) if caller_honours else options),
            )
        except errors.InvalidRequest as exc:
            first_refusal = first_refusal or exc
            continue
        usable.append((provider, provider_model, call))
    if not usable:
        assert first_refusal is not None
        raise first_refusal
    timeout = options.get("timeout", config.timeout)
    return RelayStream(
        model, usable, checked, proxy, options, timeout=timeout, max_retry_after=max_retry_after
    )
