"""Regression tests for defects found in review: each one failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from aiohttp import web

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider, Registry, errors
from llmrelay._config import Config
from llmrelay._transport import Timeouts
from llmrelay_openai_compat._provider import error_from_body
from tests.support import Plugin, Serve

HI = [{"role": "user", "content": "hi"}]
PASSWORD = "hunter2-pass-word"


class Slow(Provider):
    """Yields one word, then sleeps long between chunks."""

    name = "slow"
    url = "http://127.0.0.1:9"
    default_model = "slow-1"
    models = ("slow-1",)
    supported_options = frozenset({"stop", "temperature", "response_format"})

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield "first "
        await asyncio.sleep(30)
        yield "late"
        yield FinishReason("stop")


def test_closing_the_sync_client_ends_a_read_in_another_thread(
    use_plugins: Callable[..., Registry],
) -> None:
    use_plugins(("slow", Plugin(Slow)))
    client = llmrelay.Client()
    stream = client.chat.completions.create(model="slow-1", messages=HI, stream=True)
    assert next(stream).choices[0].delta.content in ("", "first ", None)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.extend(chunk.choices[0].delta.content for chunk in stream)
        except BaseException as exc:  # record whatever ends the read
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    client.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 5
    assert not any(isinstance(item, BaseException) for item in outcome), outcome


async def test_closing_the_async_client_during_a_read_raises_nothing(
    use_plugins: Callable[..., Registry],
) -> None:
    use_plugins(("slow", Plugin(Slow)))
    client = llmrelay.AsyncClient()
    stream = await client.chat.completions.create(model="slow-1", messages=HI, stream=True)
    await anext(stream)
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    await client.aclose()  # must not raise "asynchronous generator is already running"
    reader.cancel()
    with pytest.raises((asyncio.CancelledError, StopAsyncIteration)):
        await reader


@pytest.mark.parametrize("name", ["config", "cls"])
def test_relay_refuses_options_named_like_its_parameters(
    name: str, use_plugins: Callable[..., Registry]
) -> None:
    use_plugins(("slow", Plugin(Slow)))
    with pytest.raises(errors.InvalidRequest, match=name):
        llmrelay.relay("slow-1", HI, **{name: 1})


@pytest.mark.parametrize(
    "options",
    [
        {"response_format": {"type": {"a"}}},
        {"response_format": {"type": "json_object", "x": float("nan")}},
        {"response_format": {"type": object()}},
    ],
)
def test_option_values_that_json_cannot_carry_are_refused_before_io(
    options: dict[str, Any],
) -> None:
    with pytest.raises(errors.InvalidRequest, match="cannot be sent as JSON"):
        Slow.create_async_generator("slow-1", HI, **options)


def test_client_defaults_may_not_collide_with_create_arguments() -> None:
    with pytest.raises(errors.InvalidRequest, match="'stream' cannot be a client default"):
        llmrelay.AsyncClient(stream=True)


def test_reprs_hide_proxy_passwords() -> None:
    call = Call(
        provider="p",
        base_url="http://127.0.0.1:9",
        proxy=f"socks5://bob:{PASSWORD}@127.0.0.1:1080",
        default_proxy=f"http://alice:{PASSWORD}@127.0.0.1:3128",
    )
    config = Config(proxy=f"http://alice:{PASSWORD}@127.0.0.1:3128")
    for shown in (repr(call), str(call), repr(config), str(config)):
        assert PASSWORD not in shown
    assert "alice:***@" in repr(config)


async def test_a_stream_read_timeout_is_a_retryable_read_timeout_not_the_deadline(
    serve: Serve,
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await asyncio.sleep(5)
        return response

    app = web.Application()
    app.router.add_get("/sse", stall)
    base = await serve(app)
    call = Call(provider="p", base_url=base, timeout=120, timeouts=Timeouts(read=0.3))
    call.start()
    async with call.open_stream("GET", f"{base}/sse") as response:
        await call.read(response.content.readany())
        with pytest.raises(errors.ProviderTimeout) as info:
            await call.read(response.content.readany())
    assert "read timed out" in str(info.value)
    assert info.value.retryable is True


def test_in_band_error_messages_are_scrubbed_and_shortened() -> None:
    message = "invalid key Bearer sk-live-abcdefghijklmnop " + "x" * 1000
    exc = error_from_body("compat", {"error": {"message": message}}, status=None)
    assert "sk-live-abcdefghijklmnop" not in str(exc)
    assert len(exc.reason) <= errors.BODY_EXCERPT_CHARS
    assert exc.body is not None
    assert "sk-live-abcdefghijklmnop" not in exc.body


class ReturnsAList(Provider):
    """``generate`` is a plain ``def`` returning the chunks: it loads, but is no generator."""

    name = "returns-a-list"
    url = "http://127.0.0.1:9"
    default_model = "list-1"
    models = ("list-1",)

    @classmethod
    def generate(  # type: ignore[override]
        cls, model: str, messages: list[Message], call: Call
    ) -> list[Chunk]:
        return ["hi", FinishReason("stop")]


@pytest.mark.parametrize("read", ["iterate", "collect"])
async def test_a_generate_that_is_no_async_generator_is_an_invalid_response(read: str) -> None:
    # It was an AttributeError ('list' object has no attribute '__anext__'), and closing the
    # stream then raised a bare AttributeError ('aclose') out of the relay and the CLI.
    stream = ReturnsAList.create_async_generator("", HI)
    first = anext(stream) if read == "iterate" else stream.collect()
    with pytest.raises(errors.InvalidResponse, match=r"generate\(\) returned a list, not an"):
        await first
    await stream.aclose()


async def test_the_relay_falls_back_from_a_generate_that_is_no_async_generator(
    use_plugins: Callable[..., Registry],
) -> None:
    class Fine(Provider):
        name = "fine"
        url = "http://127.0.0.1:9"
        default_model = "list-1"
        models = ("list-1",)

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield "fine"
            yield FinishReason("stop")

    use_plugins(("list", Plugin(ReturnsAList)), ("fine", Plugin(Fine)))
    assert [c async for c in llmrelay.relay("list-1", HI)] == ["fine", FinishReason("stop")]


class _Chunks:
    """An async iterator with ``aclose()``, not an async generator: all a stream uses."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.closed = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> Chunk:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


class ReturnsAnIterator(Provider):
    name = "returns-an-iterator"
    url = "http://127.0.0.1:9"
    default_model = "iter-1"
    models = ("iter-1",)

    @classmethod
    def generate(  # type: ignore[override]
        cls, model: str, messages: list[Message], call: Call
    ) -> _Chunks:
        return _Chunks(["hi", FinishReason("stop")])


async def test_a_generate_returning_an_async_iterator_with_aclose_is_taken() -> None:
    """The check for a list is not a check for the generator type: an async iterator with
    ``aclose()`` is all a stream uses, and it worked before."""
    assert await ReturnsAnIterator.create_async_generator("", HI).text() == "hi"
