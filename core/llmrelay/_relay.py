"""Relay a request across the providers that serve a model: resolve, try in order, fall back.

Fallback happens only before the first text chunk reaches the caller. After that, a failure is
``StreamInterrupted`` and no other provider is tried, so an answer is never spliced from two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from . import errors
from ._call import Call
from ._config import get_config
from ._provider import ChunkStream, Provider
from ._registry import Registry, get_registry
from ._routing import Health, health, route
from ._types import Chunk, FinishReason, Message, Messages, validate_messages

__all__ = ["RelayStream", "relay"]

log = logging.getLogger("llmrelay")


class RelayStream(ChunkStream):
    """A stream that answers from the first provider that works.

    ``provider`` names the provider currently answering (the last one tried, after a failure).
    ``errors`` keeps the typed error of each provider that failed before it. One deadline
    (``timeout``) bounds the whole relay: each provider gets what is left of it.
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
    ) -> None:
        self.model = model
        self._health = tracker
        self.errors: list[errors.ProviderError] = []
        self._candidates = candidates
        self._messages = messages
        self._proxy = proxy
        self._options = options
        self._timeout = timeout
        super().__init__(candidates[0][0].name, self._run())

    async def _run(self) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        for provider, model, call in self._candidates:
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                call.timeout = remaining
            self.provider = provider.name
            if _overrides_entry(provider):
                options = self._options
                if deadline is not None:
                    options = {**options, "timeout": call.timeout}
                stream = provider.create_async_generator(
                    model, self._messages, proxy=self._proxy, **options
                )
            else:  # input and options were checked once, in relay(): skip doing it again
                stream = provider.start(model, self._messages, call)
            sent = False
            try:
                async for chunk in stream:
                    if isinstance(chunk, FinishReason):
                        # Before yielding: a caller commonly stops at the FinishReason and
                        # closes the stream, so code after the last yield may never run.
                        self._health.succeeded(provider.name)
                    else:
                        sent = sent or (isinstance(chunk, str) and bool(chunk))
                    yield chunk
                return
            except errors.ProviderError as exc:
                if _provider_side(exc):
                    self._health.failed(provider.name)
                if sent or isinstance(exc, errors.StreamInterrupted):
                    raise
                self.errors.append(exc)
                log.info(
                    "%s failed before any text (%s); trying the next provider",
                    provider.name,
                    exc.reason,
                )
            finally:
                await stream.aclose()
        if deadline is not None and loop.time() >= deadline and len(self.errors) > 1:
            # The deadline, not the providers, ended the relay: say so, as a TimeoutError.
            raise errors.ProviderTimeout(
                f"deadline of {self._timeout:g}s exceeded after trying "
                + ", ".join(e.provider for e in self.errors),
                provider=self.provider,
                retryable=False,
            ) from errors.AllProvidersFailed(self.model, self.errors)
        if len(self.errors) == 1:
            raise self.errors[0]
        raise errors.AllProvidersFailed(self.model, self.errors)


def _overrides_entry(provider: type[Provider]) -> bool:
    """A provider that replaced ``create_async_generator`` itself is called through it."""
    own = provider.create_async_generator.__func__  # type: ignore[attr-defined]
    return own is not Provider.create_async_generator.__func__  # type: ignore[attr-defined]


#: Names of llmrelay's own parameters: as request options they would collide with them.
_RESERVED_OPTIONS = frozenset({"config", "cls", "registry", "model", "messages"})


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
    clash = sorted(_RESERVED_OPTIONS & options.keys())
    if clash:
        raise errors.InvalidRequest(
            f"{', '.join(map(repr, clash))} cannot be passed as a request option"
        )
    checked = validate_messages(messages)
    config = get_config()
    candidates = route(model or config.default_model, registry or get_registry(), config)
    usable: list[tuple[type[Provider], str, Call]] = []
    first_refusal: errors.InvalidRequest | None = None
    for provider, provider_model in candidates:
        try:
            call = provider.make_call(proxy=proxy, config=config, **options)
        except errors.InvalidRequest as exc:
            first_refusal = first_refusal or exc
            continue
        usable.append((provider, provider_model, call))
    if not usable:
        assert first_refusal is not None
        raise first_refusal
    timeout = options.get("timeout", config.timeout)
    return RelayStream(model, usable, checked, proxy, options, timeout=timeout)
