"""Fallback across providers, with fake providers registered as plugins and a real fault server.

The rule under test: a provider that fails before its first chunk hands over to the next; once
a chunk has reached the caller no other provider is tried (``StreamInterrupted``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider, Registry, errors
from tests.replicas.faults import FAULTS, FaultState, make_app
from tests.support import Plugin

MESSAGES = [{"role": "user", "content": "Hello"}]


def fake(
    name: str,
    url: str,
    endpoint: str,
    *,
    working: bool = True,
    models: tuple[str, ...] = ("shared",),
    options: frozenset[str] = frozenset(),
) -> type[Provider]:
    """A provider answering ``models`` from ``url + endpoint``: JSON, or SSE lines for /stream."""

    class Fake(Provider):
        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            endpoint = call.url(cls.api_endpoint or "")
            if "/stream" in endpoint:
                async with call.open_stream("GET", endpoint) as response:
                    while line := await call.read(response.content.readline()):
                        text = line.decode().strip()
                        if text.startswith("data: ") and text != "data: [DONE]":
                            yield f"{cls.name}:{text.removeprefix('data: ')} "
            else:
                data = await call.post_json(endpoint, {"model": model})
                yield f"{cls.name}:{data['answer']}"
            yield FinishReason("stop")

    Fake.name = name
    Fake.url = url
    Fake.api_endpoint = endpoint
    Fake.working = working
    Fake.default_model = models[0]
    Fake.models = models
    Fake.supported_options = options
    Fake.__name__ = Fake.__qualname__ = f"Fake_{name}"
    return Fake


@pytest.fixture(autouse=True)
def _fresh_health() -> Iterator[None]:
    """The relay orders providers by recent failures, kept per process: start and end clean."""
    from llmrelay._routing import health

    health.reset()
    yield
    health.reset()


@pytest.fixture
async def server(serve: Callable[[web.Application], Any]) -> tuple[str, FaultState]:
    app = make_app()
    return await serve(app), app[FAULTS]


def install(use_plugins: Callable[..., Registry], *providers: type[Provider]) -> Registry:
    return use_plugins(*((p.name, Plugin(p)) for p in providers))


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_fallback_before_the_first_chunk(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/status/500"), fake("second", base, "/ok"))
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    assert await stream.text() == "second:ok"
    assert stream.provider == "second"
    assert len(stream.errors) == 1
    error = stream.errors[0]
    assert isinstance(error, errors.ServerError)
    assert error.provider == "first"
    assert error.status == 500
    assert state.hits["/status/500"] == 1
    assert state.hits["/ok"] == 1


async def test_relay_stream_is_awaitable_too(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, _ = server
    install(use_plugins, fake("first", base, "/ok"))
    stream = await llmrelay.relay("shared", MESSAGES)
    chunks = [chunk async for chunk in stream]
    assert chunks == ["first:ok", FinishReason("stop")]


async def test_failure_after_a_chunk_is_interrupted_and_never_falls_back(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("first", base, "/stream?chunks=2&then=reset"),
        fake("second", base, "/ok"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    received: list[Chunk] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(errors.StreamInterrupted) as info:
        await consume()
    assert received == ["first:chunk-0 ", "first:chunk-1 "]
    assert info.value.provider == "first"
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, errors.ConnectError)
    assert stream.provider == "first"
    assert stream.errors == []
    assert state.hits["/stream"] == 1
    assert state.hits["/ok"] == 0  # the second provider was never called


async def test_a_stream_that_fails_before_its_first_chunk_falls_back(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("first", base, "/stream?chunks=0&then=reset"),
        fake("second", base, "/ok"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    assert await stream.text() == "second:ok"
    assert [type(e) for e in stream.errors] == [errors.ConnectError]
    assert state.hits["/stream"] == 1


async def test_all_failing_gives_one_error_listing_each_reason(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("first", base, "/status/500"),
        fake("second", base, "/status/401"),
        fake("third", refused_url(), "/ok"),
        fake("fourth", base, "/cloudflare"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    with pytest.raises(errors.AllProvidersFailed) as info:
        await stream.text()
    exc = info.value
    assert [type(e) for e in exc.errors] == [
        errors.ServerError,
        errors.AuthenticationFailed,
        errors.ConnectError,
        errors.CloudflareChallenge,
    ]
    assert [e.provider for e in exc.errors] == ["first", "second", "third", "fourth"]
    assert exc.errors == stream.errors
    assert exc.model == "shared"
    lines = str(exc).splitlines()
    assert lines[0] == "all 4 providers failed for model 'shared':"
    assert lines[1].startswith("  - first: HTTP 500: ")
    assert lines[2].startswith("  - second: HTTP 401: ")
    assert lines[3].startswith("  - third: cannot connect to 127.0.0.1:")
    assert lines[4] == "  - fourth: HTTP 403 Cloudflare challenge page"
    assert len(lines) == 5
    assert all(len(line) < 300 for line in lines)
    assert state.hits["/status/500"] == 1
    assert state.hits["/status/401"] == 1


async def test_one_provider_failing_raises_its_own_error(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, _ = server
    install(use_plugins, fake("first", base, "/status/404"), fake("second", base, "/ok"))
    with pytest.raises(errors.EndpointNotFound):
        await llmrelay.relay("first/shared", MESSAGES).text()


async def test_working_providers_are_tried_first(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("stale", base, "/status/500", working=False),
        fake("fresh", base, "/ok"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    assert await stream.text() == "fresh:ok"
    assert stream.provider == "fresh"
    assert stream.errors == []
    assert state.hits["/status/500"] == 0


async def test_a_non_working_provider_is_still_a_fallback(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("stale", base, "/ok", working=False),
        fake("fresh", base, "/status/503"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=0)
    assert await stream.text() == "stale:ok"
    assert [e.provider for e in stream.errors] == ["fresh"]
    assert state.hits["/status/503"] == 1


async def test_unknown_model_suggests_close_names(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/ok", models=("shared", "gpt-4o-mini")))
    with pytest.raises(errors.ModelNotFound) as info:
        llmrelay.relay("gpt-4o-mimi", MESSAGES)
    assert isinstance(info.value, LookupError)
    assert "gpt-4o-mini" in info.value.suggestions
    assert "did you mean" in str(info.value)
    with pytest.raises(errors.ModelNotFound) as info:
        llmrelay.relay("first/sharde", MESSAGES)
    assert "shared" in info.value.suggestions
    assert state.total == 0


async def test_unsupported_options_are_refused_before_any_io(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/ok"), fake("second", base, "/ok"))
    with pytest.raises(errors.InvalidRequest) as info:
        llmrelay.relay("shared", MESSAGES, temperature=0.2)
    assert "temperature" in str(info.value)
    assert "drop_unsupported=True" in str(info.value)
    assert state.total == 0


async def test_providers_without_an_option_are_skipped(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(
        use_plugins,
        fake("plain", base, "/status/500"),
        fake("tunable", base, "/ok", options=frozenset({"temperature"})),
    )
    stream = llmrelay.relay("shared", MESSAGES, temperature=0.2)
    assert await stream.text() == "tunable:ok"
    assert stream.errors == []
    assert state.hits["/status/500"] == 0
    # drop_unsupported=True keeps the plain provider, which then comes first.
    stream = llmrelay.relay(
        "shared", MESSAGES, temperature=0.2, drop_unsupported=True, max_retries=0
    )
    assert await stream.text() == "tunable:ok"
    assert [e.provider for e in stream.errors] == ["plain"]


async def test_bad_input_is_refused_before_any_io(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/ok"))
    with pytest.raises(errors.InvalidRequest):
        llmrelay.relay("shared", [{"role": "robot", "content": "hi"}])
    with pytest.raises(errors.InvalidRequest):
        llmrelay.relay("shared", MESSAGES, proxy="ftp://127.0.0.1:21")
    with pytest.raises(errors.InvalidRequest):
        llmrelay.relay("shared", MESSAGES, timeout=-1)
    assert state.total == 0


async def test_closing_early_releases_everything(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/stream?chunks=5"))
    async with llmrelay.relay("shared", MESSAGES) as stream:
        async for chunk in stream:
            assert chunk == "first:chunk-0 "
            break
    assert state.hits["/stream"] == 1
    # The connection went back or was closed: a new call works on the same loop.
    assert (await llmrelay.relay("shared", MESSAGES).text()).startswith("first:chunk-0")


async def test_one_deadline_bounds_the_whole_relay(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Two providers that each stall: the relay gives up at its one deadline, not at 2x.

    The deadline (0.45 s) is shorter than the first backoff (0.5 s plus jitter), so the
    first provider hands over at once rather than, with a small jitter, retrying into the
    deadline and leaving the second untried.
    """
    base, state = server
    install(use_plugins, fake("first", base, "/status/503"), fake("second", base, "/slow?delay=5"))
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await llmrelay.relay("shared", MESSAGES, timeout=0.45, max_retries=5).text()
    took = time.monotonic() - started
    assert isinstance(info.value, errors.ProviderTimeout)
    assert isinstance(info.value.__cause__, errors.AllProvidersFailed)
    assert 0.4 <= took < 0.85  # one deadline, not one per provider
    assert state.hits["/slow"] == 1


async def test_a_relay_its_deadline_stopped_short_is_a_timeout(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Each provider stops retrying when its next wait would pass the deadline, just before
    it: the relay ended by the deadline all the same, and raised AllProvidersFailed (no
    TimeoutError) because the clock had not yet reached it."""
    base, state = server
    path = "/status/503?retry_after=0.3"
    install(use_plugins, fake("first", base, path), fake("second", base, path))
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await llmrelay.relay("shared", MESSAGES, timeout=1.0, max_retries=5).text()
    took = time.monotonic() - started
    assert isinstance(info.value, errors.ProviderTimeout)
    assert isinstance(info.value.__cause__, errors.AllProvidersFailed)
    assert str(info.value) == "second: deadline of 1s exceeded after trying first, second"
    # Per provider, the deadline left: three significant digits, not 0.0913801s.
    second = info.value.__cause__.errors[1]
    assert re.search(r"deadline of 0\.0*[1-9]\d{0,2}s leaves no time to retry", str(second))
    assert 0.6 <= took < 1.05
    assert state.hits["/status/503"] >= 3


async def test_a_long_retry_after_hands_over_to_the_next_provider_at_once(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """A provider asking for 30 s is not waited while another can answer now: the next one
    answers at once, and the first's rate limit is kept with its ``retry_after``."""
    base, state = server
    install(
        use_plugins, fake("first", base, "/status/429?retry_after=30"), fake("second", base, "/ok")
    )
    started = time.monotonic()
    stream = llmrelay.relay("shared", MESSAGES)
    assert await stream.text() == "second:ok"
    assert time.monotonic() - started < 5
    assert state.hits["/status/429"] == 1
    (limited,) = stream.errors
    assert (type(limited), limited.provider, limited.retry_after) == (
        errors.RateLimited,
        "first",
        30.0,
    )


async def test_a_short_retry_after_is_waited_even_with_another_provider_behind(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """A wait no longer than a backoff is a blip: the same provider is asked again."""
    base, state = server
    install(
        use_plugins,
        fake("first", base, "/status/429?retry_after=0.2"),
        fake("second", base, "/ok"),
    )
    stream = llmrelay.relay("shared", MESSAGES, max_retries=1)
    assert await stream.text() == "second:ok"
    assert state.hits["/status/429"] == 2  # retried once after 0.2 s, then handed over


async def test_the_last_provider_waits_as_long_as_its_policy_allows(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Only a provider with another behind it has its wait cut: the last one, asked for 9 s
    (over the 8 s cut, under the 60 s cap), would wait, which here passes the deadline."""
    base, _ = server
    path = "/status/429?retry_after=9"
    install(use_plugins, fake("first", base, path), fake("second", base, path))
    with pytest.raises(errors.ProviderTimeout) as info:
        await llmrelay.relay("shared", MESSAGES, timeout=1.0, max_retries=1).text()
    first, second = info.value.__cause__.errors  # type: ignore[union-attr]
    assert type(first) is errors.RateLimited  # handed over at once
    assert type(second) is errors.ProviderTimeout  # would have waited
    assert "leaves no time to retry" in str(second)


def test_a_capped_policy_is_built_once_per_policy_and_cap() -> None:
    from llmrelay._call import RetryPolicy
    from llmrelay._relay import _capped

    policy, short = RetryPolicy(), RetryPolicy(max_retry_after=2.0)
    eight = _capped(policy, 8.0)
    assert (eight.max_retry_after, eight.max_retries) == (8.0, policy.max_retries)
    assert _capped(policy, 8.0) is eight
    assert _capped(policy, 5.0).max_retry_after == 5.0  # another cap: not the last one's
    assert _capped(policy, 8.0) is eight
    assert _capped(short, 8.0) is short  # already within it


async def test_no_hand_over_to_a_provider_that_is_failing(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Handing over to a provider that just failed (or is not marked working) would trade a
    wait for a failure: the first provider's Retry-After is waited as usual."""
    from llmrelay._routing import health

    base, _ = server
    install(
        use_plugins, fake("first", base, "/status/429?retry_after=9"), fake("second", base, "/ok")
    )
    health.failed("second")
    stream = llmrelay.relay("shared", MESSAGES, timeout=1.0, max_retries=1)
    assert await stream.text() == "second:ok"  # (after the first gave up on the deadline)
    (first,) = stream.errors
    assert type(first) is errors.ProviderTimeout
    assert "leaves no time to retry" in str(first)
    health.reset()
    install(
        use_plugins,
        fake("first", base, "/status/429?retry_after=9"),
        fake("second", base, "/ok", working=False),
    )
    stream = llmrelay.relay("shared", MESSAGES, timeout=1.0, max_retries=1)
    assert await stream.text() == "second:ok"
    assert type(stream.errors[0]) is errors.ProviderTimeout


async def test_the_provider_that_asked_for_a_wait_is_asked_last_meanwhile(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Its cool-down lasts as long as it asked: the next requests go to the other first."""
    from llmrelay._routing import health

    base, state = server
    install(
        use_plugins, fake("first", base, "/status/429?retry_after=30"), fake("second", base, "/ok")
    )
    assert await llmrelay.relay("shared", MESSAGES).text() == "second:ok"
    assert health.cooldown("first") > 25  # not the 5 s one failure earns
    assert await llmrelay.relay("shared", MESSAGES).text() == "second:ok"
    assert state.hits["/status/429"] == 1  # the second request did not ask it again


async def test_a_relay_deadline_is_quoted_as_given(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """The first provider's deadline is the relay's own: its error says the timeout asked
    for, not what was left of it a few microseconds later (``deadline of 0.299998s``)."""
    base, _ = server
    install(use_plugins, fake("first", base, "/slow?delay=5"))
    with pytest.raises(errors.ProviderTimeout, match=r"deadline of 0\.3s exceeded"):
        await llmrelay.relay("shared", MESSAGES, timeout=0.3).text()


async def test_a_stream_read_to_the_end_cannot_be_read_again(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    provider = fake("first", base, "/ok")
    install(use_plugins, provider)
    stream = llmrelay.relay("shared", MESSAGES)
    assert await stream.text() == "first:ok"
    with pytest.raises(errors.InvalidRequest, match="already read or closed"):
        await stream.collect()
    assert [chunk async for chunk in stream] == []  # iterating again just ends
    direct = provider.create_async_generator("shared", MESSAGES)
    assert [chunk async for chunk in direct] == ["first:ok", FinishReason("stop")]
    with pytest.raises(errors.InvalidRequest, match="already read or closed"):
        await direct.text()
    assert state.hits["/ok"] == 2  # one request per stream, none for the re-reads


async def test_a_stream_closed_before_reading_sends_nothing(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    base, state = server
    install(use_plugins, fake("first", base, "/ok"))
    stream = llmrelay.relay("shared", MESSAGES)
    await stream.aclose()
    assert [chunk async for chunk in stream] == []
    assert state.hits["/ok"] == 0


@pytest.mark.parametrize(
    ("base_url", "endpoint", "url"),
    [
        ("https://h/v1", "/chat/completions", "https://h/v1/chat/completions"),
        ("https://h/v1/", "chat/completions", "https://h/v1/chat/completions"),
        (
            "https://h/openai?api-version=2024-06-01",
            "/chat/completions",
            "https://h/openai/chat/completions?api-version=2024-06-01",
        ),
        ("https://h/o/?v=1", "/models?limit=5", "https://h/o/models?limit=5&v=1"),
        ("https://h/v1?v=1", "", "https://h/v1?v=1"),
    ],
)
def test_call_url_joins_the_path_before_the_base_urls_query(
    base_url: str, endpoint: str, url: str
) -> None:
    from llmrelay import Call

    assert Call(provider="p", base_url=base_url).url(endpoint) == url


async def test_a_relay_cut_off_by_closing_does_not_fall_back(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """Closing the sessions under a request ends the relay: the next provider would open a
    session of its own that no one closes, and wait on it (for ever, without a deadline)."""
    base, state = server
    install(use_plugins, fake("first", base, "/slow?delay=30"), fake("second", base, "/ok"))
    task = asyncio.create_task(llmrelay.relay("shared", MESSAGES, timeout=None).text())
    async with asyncio.timeout(5):
        while state.hits["/slow"] == 0:  # noqa: ASYNC110 (the server's count, no event)
            await asyncio.sleep(0.01)
    await llmrelay.aclose()
    with pytest.raises(errors.ConnectError, match="session was closed"):
        await asyncio.wait_for(task, timeout=5)
    assert state.hits["/ok"] == 0


async def test_a_request_field_cannot_steer_the_relay(
    server: tuple[str, FaultState], use_plugins: Callable[..., Registry]
) -> None:
    """No keyword of the relay's own can be set as a request option (``llmrelay serve`` passes
    a request's fields as options): an unknown one is refused like any unsupported option."""
    base, state = server
    install(use_plugins, fake("first", base, "/ok"))
    with pytest.raises(errors.InvalidRequest, match=r"does not support option.*caller_honours"):
        llmrelay.relay("shared", MESSAGES, temperature=0.5, caller_honours=["temperature"])
    assert state.hits["/ok"] == 0
