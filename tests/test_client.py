"""The OpenAI-shaped clients end to end: real replicas on 127.0.0.1, endpoints from a config file.

Both clients, both shapes, fallback, health-aware routing, unknown models, unsupported options,
configuration errors, and closing: pytest turns warnings into errors, so a session left open by
a client fails the test that leaked it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

import llmrelay
from llmrelay import AsyncClient, ChatCompletion, ChatCompletionChunk, Client, Registry, Usage
from llmrelay._client import (
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    list_models,
)
from llmrelay._routing import health
from llmrelay._transport import get_transport
from llmrelay.errors import (
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    ProviderTimeout,
    ServerError,
    StreamInterrupted,
)
from tests.background import background_servers
from tests.endpoint_support import endpoint, install_endpoints, write_config
from tests.replicas.openai import STATE, Mode, ReplicaState, make_app
from tests.support import Plugin, Serve

HI = [{"role": "user", "content": "Hi there"}]
ANSWER = "Echo: Hi there"
USAGE = Usage(9, 3, 12)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))


@dataclass
class Replicas:
    """Two endpoints serving the same models: ``bad`` (registered first) and ``good``."""

    bad: ReplicaState
    good: ReplicaState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The health record's clock, moved by hand: cool-downs pass without waiting."""
    fake = FakeClock()
    monkeypatch.setattr(health, "clock", fake)
    return fake


def _config_path(tmp_path: Path) -> Path:
    return tmp_path / "config.toml"


@pytest.fixture
async def local(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> ReplicaState:
    """One endpoint, ``local``, on a replica on the test's loop."""
    app = make_app()
    base = await serve(app)
    write_config(_config_path(tmp_path), monkeypatch, endpoint("local", f"{base}/v1"))
    install_endpoints(use_plugins)
    return app[STATE]


async def _two(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
    *extra: str,
    bad_mode: Mode = "server_error",
) -> Replicas:
    bad_app, good_app = make_app(bad_mode), make_app()
    bad, good = await serve(bad_app), await serve(good_app)
    write_config(
        _config_path(tmp_path),
        monkeypatch,
        *extra,
        endpoint("bad", f"{bad}/v1"),
        endpoint("good", f"{good}/v1"),
    )
    install_endpoints(use_plugins)
    return Replicas(bad_app[STATE], good_app[STATE])


@pytest.fixture
async def two(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> Replicas:
    return await _two(serve, tmp_path, monkeypatch, use_plugins)


@pytest.fixture
def threaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_plugins: Callable[..., Registry]
) -> Iterator[ReplicaState]:
    """One endpoint, ``local``, on a replica in a background thread (for blocking callers)."""
    with background_servers() as serve:
        app = make_app()
        base = serve(app)
        write_config(_config_path(tmp_path), monkeypatch, endpoint("local", f"{base}/v1"))
        install_endpoints(use_plugins)
        yield app[STATE]


def check_completion(completion: ChatCompletion, provider: str = "local") -> None:
    assert isinstance(completion, ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "llama3"
    assert completion.created > 1_600_000_000
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert completion.usage == Usage(9, 3, 12)
    assert completion.provider == provider
    data = completion.model_dump(mode="json")
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": ANSWER,
        "reasoning": None,
    }
    assert data["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


@pytest.mark.parametrize("reasoning", [None, "Perché?"])
@pytest.mark.parametrize("usage", [USAGE, None])
@pytest.mark.parametrize("reason", ["stop", "length", "error"])
def test_a_whole_answer_is_built_as_validation_would_build_it(
    usage: Usage | None, reason: llmrelay.FinishReasonName, reasoning: str | None
) -> None:
    """``_completion`` puts checked values in without validating them again: the result must
    be exactly the validated model, to the fields set, extras and nested models."""
    from llmrelay._client import _completion

    completion = llmrelay.Completion(
        "Ciao, come stai? 🍕", llmrelay.FinishReason(reason), usage, reasoning
    )
    message = {"role": "assistant", "content": completion.text}
    if reasoning is not None:  # (the provider sent some: the field is set)
        message["reasoning"] = reasoning
    built = _completion(completion, "bench/llama3", "bench")
    validated = ChatCompletion.model_validate(
        {
            "id": built.id,
            "object": "chat.completion",
            "created": built.created,
            "model": "bench/llama3",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reason,
                }
            ],
            "usage": usage,
            "provider": "bench",
        }
    )
    assert built == validated
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
    for ours, theirs in [
        (built, validated),
        (built.choices[0], validated.choices[0]),
        (built.choices[0].message, validated.choices[0].message),
    ]:
        assert type(ours) is type(theirs)
        assert ours.model_fields_set == theirs.model_fields_set
        assert ours.model_extra == theirs.model_extra == {}
        assert ours.__pydantic_private__ == theirs.__pydantic_private__
    assert built.choices[0].finish_reason == reason
    assert built.usage is usage  # the provider's own, not a copy
    copy = built.model_copy(update={"provider": "other"})
    assert (copy.provider, built.provider) == ("other", "bench")
    assert ChatCompletion.model_validate_json(built.model_dump_json()) == built


def check_chunks(chunks: list[ChatCompletionChunk], usage: Usage | None = USAGE) -> None:
    """OpenAI's chunk shape: one id, role first, text deltas, finish_reason (+ usage) last."""
    assert len(chunks) == 4
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.provider == "local" for c in chunks)
    assert all(len(c.choices) == 1 and c.choices[0].index == 0 for c in chunks)
    assert [c.choices[0].delta.role for c in chunks] == ["assistant", None, None, None]
    assert [c.choices[0].delta.content for c in chunks] == ["Echo: ", "Hi ", "there", None]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]
    assert [c.usage for c in chunks] == [None, None, None, usage]


# -- both shapes, both clients ------------------------------------------------------------------


async def test_async_client_non_stream(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        completion = await client.chat.completions.create(model="llama3", messages=HI)
    check_completion(completion)
    assert "stream" not in local.last_body


async def test_async_client_stream(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        assert stream.provider == "local"
        chunks = [chunk async for chunk in stream]
    check_chunks(chunks)
    assert local.last_body["stream_options"] == {"include_usage": True}


async def test_a_deadline_that_cuts_a_stream_is_a_timeout_error(local: ReplicaState) -> None:
    """Issue 4: a deadline reached at any point raises a TimeoutError. After some text it was
    a StreamInterrupted only, which ``except TimeoutError`` missed."""
    local.delay = 0.3  # a chunk every 0.3 s
    async with AsyncClient() as client:
        stream = await client.chat.completions.create(
            model="local/llama3", messages=HI, stream=True, timeout=0.5
        )
        texts: list[str | None] = []

        async def read() -> None:
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content if chunk.choices else None)

        with pytest.raises(TimeoutError) as info:
            await read()
    assert any(texts)  # the answer had begun
    error = info.value
    assert isinstance(error, llmrelay.errors.StreamTimedOut)
    assert isinstance(error, StreamInterrupted)
    assert isinstance(error, llmrelay.errors.ProviderTimeout)
    assert error.retryable is False
    assert isinstance(error.__cause__, llmrelay.errors.ProviderTimeout)
    assert "deadline" in str(error)


async def test_stream_without_reported_usage_has_none(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        stream = await client.chat.completions.create(
            model="local/llama3",
            messages=HI,
            stream=True,
            stream_options={"include_usage": False},
        )
        check_chunks([chunk async for chunk in stream], usage=None)


async def test_stream_options_are_the_clients_own(local: ReplicaState) -> None:
    """OpenAI's ``stream_options`` is honoured by the client, whichever provider answers: it
    is not a request option a provider could refuse, and ``include_usage`` says whether the
    last chunk carries the usage the provider reported."""
    async with AsyncClient() as client:
        stream = await client.chat.completions.create(
            model="local/llama3", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        check_chunks([chunk async for chunk in stream])
        # the provider asks for usage as it always does; the caller's choice stays here
        assert local.last_body["stream_options"] == {"include_usage": True}
        for bad, message in [
            ({"include_usage": "yes"}, r"stream_options\['include_usage'\] must be True or False"),
            ({"include_usage": True, "chunk_size": 3}, r"unknown key\(s\) 'chunk_size'"),
            ([("include_usage", True)], "stream_options must be a dict"),
        ]:
            with pytest.raises(InvalidRequest, match=message):
                await client.chat.completions.create(
                    model="local/llama3", messages=HI, stream=True, stream_options=bad
                )
        with pytest.raises(InvalidRequest, match="only allowed with stream=True"):
            await client.chat.completions.create(
                model="local/llama3", messages=HI, stream_options={"include_usage": True}
            )
        assert local.hits == 1  # the refused calls sent nothing
    hits = local.hits
    # a client default applies to streams only: a whole answer ignores it
    async with AsyncClient(stream_options={"include_usage": False}) as client:
        check_completion(await client.chat.completions.create(model="llama3", messages=HI))
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        check_chunks([chunk async for chunk in stream], usage=None)
    assert local.hits == hits + 2


class _Offline(llmrelay.Provider):
    """A provider that declares no request options at all (no ``stream_options``)."""

    name = "offline"
    url = "http://127.0.0.1"
    default_model = "m1"
    models = ("m1",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[llmrelay.Message], call: llmrelay.Call
    ) -> AsyncIterator[llmrelay.Chunk]:
        assert "stream_options" not in call.options
        yield "hello"
        yield USAGE
        yield llmrelay.FinishReason("stop")


async def test_stream_options_work_with_a_provider_that_does_not_declare_them(
    use_plugins: Callable[..., Registry],
) -> None:
    """``stream_options`` is not passed to a provider that does not declare it (it used to
    refuse the call, "does not support option(s) stream_options"): the client honours it."""
    use_plugins(("offline", Plugin(_Offline)))
    async with AsyncClient() as client:
        for include_usage, usage in [(True, USAGE), (False, None)]:
            stream = await client.chat.completions.create(
                model="offline/m1",
                messages=HI,
                stream=True,
                stream_options={"include_usage": include_usage},
            )
            chunks = [chunk async for chunk in stream]
            assert [c.choices[0].delta.content for c in chunks] == ["hello", None]
            assert chunks[-1].usage == usage


def test_sync_client_both_shapes(threaded: ReplicaState) -> None:
    with Client() as client:
        check_completion(client.chat.completions.create(model="llama3", messages=HI))
        with client.chat.completions.create(model="llama3", messages=HI, stream=True) as stream:
            assert stream.provider == "local"
            check_chunks(list(stream))


async def test_sync_client_inside_a_running_loop(
    threaded: ReplicaState,
) -> None:
    """As in a notebook: blocking calls from code that runs an event loop of its own."""
    asyncio.get_running_loop()  # this test runs inside a loop
    with Client(max_retries=0) as client:
        check_completion(client.chat.completions.create(model="llama3", messages=HI))
        check_chunks(list(client.chat.completions.create(model="llama3", messages=HI, stream=True)))
    assert threaded.hits == 2


def test_client_defaults_and_call_options(threaded: ReplicaState) -> None:
    state = threaded
    with Client(temperature=0.5, max_tokens=7) as client:
        client.chat.completions.create(model="llama3", messages=HI, temperature=0.1, stop=None)
    assert state.last_body["temperature"] == 0.1  # the call's own value wins
    assert state.last_body["max_tokens"] == 7  # the client's default
    assert "stop" not in state.last_body  # None means "not given"


# -- closing ------------------------------------------------------------------------------------


def _sessions() -> list[aiohttp.ClientSession]:
    state = get_transport()._loops.get(asyncio.get_running_loop())
    return [] if state is None else list(state.sessions.values())


async def test_async_client_closes_its_sessions(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        await client.chat.completions.create(model="llama3", messages=HI)
        (session,) = _sessions()
    assert session.closed
    assert client.closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.chat.completions.create(model="llama3", messages=HI)


async def test_one_client_closing_leaves_another_working(local: ReplicaState) -> None:
    """Per-request clients in a web app: the first to finish must not cut the others off."""
    local.delay = 0.01
    async with AsyncClient() as streaming:
        stream = await streaming.chat.completions.create(model="llama3", messages=HI, stream=True)
        first = await anext(stream)
        async with AsyncClient() as other:
            await other.chat.completions.create(model="llama3", messages=HI)
        rest = [chunk async for chunk in stream]
        assert not any(session.closed for session in _sessions())
    assert first.choices[0].delta.content == "Echo: "
    assert "".join(c.choices[0].delta.content or "" for c in rest) == "Hi there"
    assert _sessions() == []


async def test_closing_the_client_closes_an_unfinished_stream(local: ReplicaState) -> None:
    local.delay = 0.05
    client = AsyncClient()
    stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
    await anext(stream)
    await client.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    for _ in range(100):  # the server sees the connection go
        if local.streams_cancelled:
            break
        await asyncio.sleep(0.01)
    assert local.streams_cancelled == 1


@pytest.mark.parametrize("others", [0, 1], ids=["the only client", "beside another"])
async def test_closing_the_client_ends_a_read_waiting_in_another_task(
    local: ReplicaState, others: int
) -> None:
    """A task reading a stream when the client closes sees the stream end, as the sync
    client's reader does. Alone, the client closes the loop's sessions: aiohttp closed the
    connection under the read without a word, and the read waited for ever
    (``timeout=None``), or until the deadline. Beside another client the sessions stay open,
    so the close must end the read itself: it waited for the upstream after the close."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(others):
            other = await stack.enter_async_context(AsyncClient())
            await other.chat.completions.create(model="llama3", messages=HI)  # a loop user
        local.delay = 0.5  # the next chunk is not there yet when the client closes
        client = AsyncClient(timeout=None)
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        got: list[str | None] = []
        first = asyncio.Event()

        async def read() -> None:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content)
                first.set()

        reader = asyncio.create_task(read())
        await first.wait()  # the reader then waits for the second chunk
        started = asyncio.get_running_loop().time()
        await client.aclose()
        await asyncio.wait_for(reader, timeout=1)
        assert asyncio.get_running_loop().time() - started < 0.4
        assert got == ["Echo: "]
        connector = (await get_transport().session()).connector
        assert connector is not None
        assert len(connector._acquired) == 0  # the connection is not held


async def test_closing_a_stream_that_has_not_started_ends_its_read(
    local: ReplicaState,
) -> None:
    """Closed (by another task) while its first read waits for the response to start: the
    read ends with nothing, and the response, when it comes, is dropped unread."""
    local.head_delay = 0.3
    local.delay = 0.2  # still streaming when the connection is dropped
    async with AsyncClient(timeout=None) as client:
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        reader = asyncio.create_task(_texts(stream))
        await _until(lambda: local.hits == 1)
        await stream.aclose()
        assert await asyncio.wait_for(reader, timeout=2) == []
        await _until(lambda: local.streams_cancelled == 1)
        assert local.streams_finished == 0


@pytest.mark.parametrize("upstream_streams", [True, False], ids=["open_stream", "request"])
async def test_closing_a_stream_waiting_to_retry_sends_no_more_requests(
    local: ReplicaState, upstream_streams: bool
) -> None:
    """Whether the provider opens a stream or asks for a whole answer (``call.request``), the
    close wakes the wait before the retry, which then stops: nothing more is sent, and the
    reader is not kept waiting out the backoff (0.5 s and more, up to a Retry-After)."""
    local.mode = "server_error"
    stream = llmrelay.relay("llama3", HI, max_retries=5, timeout=None, stream=upstream_streams)
    reader = asyncio.create_task(_items(stream))
    await _until(lambda: local.hits == 1)  # the first attempt failed; a backoff follows
    started = time.monotonic()
    await stream.aclose()
    assert await asyncio.wait_for(reader, timeout=10) == []
    assert time.monotonic() - started < 0.3
    assert local.hits == 1


async def _items(stream: llmrelay.RelayStream) -> list[object]:
    return [item async for item in stream]


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll state a replica owns, bounded."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_second_reader_is_refused_and_the_first_reads_on(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    """Python's "asynchronous generator is already running", raised in the provider's
    generator, read as the provider failing: the relay fell back to the next provider and
    spliced its answer into the first reader's."""
    replicas = await _two(serve, tmp_path, monkeypatch, use_plugins, bad_mode="ok")
    replicas.bad.delay = 0.05  # the first provider answers, slowly
    async with AsyncClient(timeout=None) as client:
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        first = await stream.__anext__()
        reader = asyncio.create_task(_texts(stream))
        await asyncio.sleep(0.01)  # the reader now waits for the next chunk
        with pytest.raises(RuntimeError, match=r"^this stream is already being read"):
            await stream.__anext__()
        rest = await asyncio.wait_for(reader, timeout=5)
    assert "".join([first.choices[0].delta.content or "", *rest]) == "Echo: Hi there"
    assert {first.provider, stream.provider} == {"bad"}
    assert (replicas.bad.hits, replicas.good.hits) == (1, 0)
    assert health.failures("bad") == 0


async def _texts(stream: llmrelay._client.AsyncCompletionStream) -> list[str]:
    return [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]


async def test_a_close_that_failed_midway_is_finished_by_the_next(local: ReplicaState) -> None:
    """``aclose()`` marked the client closed before its work, so after one that failed (or was
    cancelled) midway, the next returned at once: streams and sessions stayed open."""
    client = AsyncClient()
    streams = [
        await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        for _ in range(2)
    ]
    session = await get_transport().session()
    failing, original = streams[0], streams[0].aclose
    failures = [RuntimeError("the first close fails")]

    async def aclose() -> None:
        if failures:
            raise failures.pop()
        await original()

    failing.aclose = aclose  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the first close fails"):
        await client.aclose()
    assert client.closed  # no new request from the first call on
    with pytest.raises(RuntimeError, match="closed"):
        await client.chat.completions.create(model="llama3", messages=HI)
    await client.aclose()
    assert [chunk for stream in streams async for chunk in stream] == []
    assert session.closed
    await client.aclose()  # and once more is fine


async def test_a_client_starting_while_another_closes_the_sessions_closes_its_own(
    local: ReplicaState,
) -> None:
    """Client B's first request lands while A, the loop's last user, closes the sessions: B
    is the loop's user from then on, and its close closes the session it opened."""
    a = AsyncClient()
    await a.chat.completions.create(model="llama3", messages=HI)
    b = AsyncClient()
    closing = asyncio.create_task(a.aclose())
    await asyncio.sleep(0)  # A is now closing the sessions
    await b.chat.completions.create(model="llama3", messages=HI)
    await closing
    session = await get_transport().session()  # the one B's request opened
    await b.aclose()
    assert session.closed


async def test_a_cancelled_close_is_finished_by_the_next(local: ReplicaState) -> None:
    """Cancelled while closing the sessions (a read in flight makes it wait), the next
    ``aclose()`` closes what the first had not."""
    local.delay = 0.2
    client = AsyncClient()
    stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
    await anext(stream)
    reading = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    session = await get_transport().session()
    closing = asyncio.create_task(client.aclose())
    for _ in range(3):  # into the transport's close, before the session is closed
        await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await client.aclose()
    assert session.closed
    with contextlib.suppress(StopAsyncIteration, llmrelay.errors.LLMRelayError):
        await reading


def test_an_abandoned_stream_is_closed_quietly_when_its_loop_ends(
    threaded: ReplicaState, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream left open (the caller's error out of ``async for``) is closed by
    ``asyncio.run`` as it ends, and quietly: the loop closes every async generator it ran at
    once, and llmrelay's own (inside the provider's) failed with "generator didn't stop
    after athrow()", logged with a traceback."""
    import logging

    caplog.set_level(logging.ERROR, logger="asyncio")

    async def abandon() -> None:
        client = AsyncClient()
        stream = await client.chat.completions.create(
            model="local/llama3", messages=HI, stream=True
        )
        async for _chunk in stream:
            raise LookupError("the caller's own error")

    with pytest.raises(LookupError):
        asyncio.run(abandon())
    assert "asynchronous generator" not in caplog.text
    # The client's side only: the replica (aiohttp.server, in its thread) may log its own
    # failed write to the connection the client dropped, a race the test does not judge.
    client_side = [r for r in caplog.records if not r.name.startswith("aiohttp.server")]
    assert not [r for r in client_side if r.levelno >= logging.ERROR]


def test_sync_client_stops_its_thread(threaded: ReplicaState) -> None:
    before = set(threading.enumerate())
    client = Client()
    assert set(threading.enumerate()) == before  # the thread starts on the first request
    stream = client.chat.completions.create(model="llama3", messages=HI, stream=True)
    next(stream)
    (thread,) = set(threading.enumerate()) - before
    client.close()
    assert not thread.is_alive()
    assert client.closed
    assert list(stream) == []  # the client closed the unfinished stream
    with pytest.raises(RuntimeError, match="closed"):
        client.chat.completions.create(model="llama3", messages=HI)
    client.close()  # twice is fine


def test_sync_client_never_closed_is_closed_with_its_last_reference(
    threaded: ReplicaState,
) -> None:
    """No reference cycle holds a client: its thread stops as soon as nothing refers to it,
    not at some later run of the garbage collector (a one-liner, a notebook cell re-run)."""
    import gc

    before = set(threading.enumerate())
    gc.disable()
    try:
        check_completion(Client().chat.completions.create(model="llama3", messages=HI))
        # Closed by then (its thread joined): a client in a cycle would still be running.
        assert set(threading.enumerate()) == before
    finally:
        gc.enable()


def test_a_sync_client_keeps_its_parts(threaded: ReplicaState) -> None:
    """``client.chat`` is one object, as in OpenAI's SDK: a test can patch
    ``client.chat.completions.create`` and the next call sees the patch."""
    from unittest import mock

    with Client() as client:
        assert client.chat is client.chat
        assert client.models is client.models
        with mock.patch.object(client.chat.completions, "create", return_value="mocked"):
            assert client.chat.completions.create(model="llama3", messages=HI) == "mocked"
        check_completion(client.chat.completions.create(model="llama3", messages=HI))


def test_a_closed_client_lists_no_models(threaded: ReplicaState) -> None:
    client = Client()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.models.list()


async def test_a_closed_async_client_lists_no_models(local: ReplicaState) -> None:
    client = AsyncClient()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.models.list()


def test_closing_a_client_under_a_waiting_call_is_a_runtime_error(
    threaded: ReplicaState,
) -> None:
    threaded.head_delay = 5  # the answer is far off when the client closes
    client = Client()
    failures: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="llama3", messages=HI)
        except BaseException as exc:
            failures.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while threaded.hits == 0 and time.monotonic() < deadline:  # bounded
        time.sleep(0.01)
    client.close()
    caller.join(timeout=5)
    (failure,) = failures
    assert type(failure) is RuntimeError
    assert str(failure) == "this Client was closed while the request was in flight"


def test_a_sync_call_gives_way_to_a_pending_interrupt(threaded: ReplicaState) -> None:
    """A KeyboardInterrupt raised while a call waits (``_thread.interrupt_main()``; Ctrl-C on
    Windows) stops the call at once, not when the answer comes."""
    import _thread

    threaded.head_delay = 3
    with Client() as client:
        timer = threading.Timer(0.2, _thread.interrupt_main)
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.chat.completions.create(model="llama3", messages=HI)
        assert time.monotonic() - started < 1.5
        timer.join()


def test_a_sync_call_whose_deadline_passes_raises_it(threaded: ReplicaState) -> None:
    """The coroutine's own TimeoutError (ProviderTimeout) is the call's answer, not a reason
    to go on waiting for one."""
    threaded.head_delay = 2
    with Client() as client, pytest.raises(ProviderTimeout):
        client.chat.completions.create(model="llama3", messages=HI, timeout=0.3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_sync_client_used_before_a_fork_works_in_the_child(threaded: ReplicaState) -> None:
    """Only the forking thread survives a fork: the child gets a loop of its own, instead of
    waiting for ever on the parent's, which no thread runs there."""
    import warnings

    client = Client()
    check_completion(client.chat.completions.create(model="llama3", messages=HI))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # (Python 3.12+ warns about forking with threads)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave at once
        code = 1
        try:
            answer = client.chat.completions.create(model="llama3", messages=HI, timeout=10)
            os.write(write_end, (answer.choices[0].message.content or "").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child's call hung")
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(read_end, 1000).decode() == ANSWER
    finally:
        os.close(read_end)
        client.close()


# -- routing through the client -----------------------------------------------------------------


async def test_fallback_from_a_failing_provider(two: Replicas) -> None:
    async with AsyncClient(max_retries=0) as client:
        completion = await client.chat.completions.create(model="llama3", messages=HI)
    check_completion(completion, provider="good")
    assert (two.bad.hits, two.good.hits) == (1, 1)


async def test_stream_fallback_names_the_provider_on_every_chunk(
    two: Replicas, clock: FakeClock
) -> None:
    async with AsyncClient(max_retries=0) as client:
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        chunks = [chunk async for chunk in stream]
    assert {chunk.provider for chunk in chunks} == {"good"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER


async def test_a_provider_that_failed_is_tried_later_while_it_cools_down(
    two: Replicas, clock: FakeClock
) -> None:
    async with AsyncClient(max_retries=0) as client:

        async def ask() -> str:
            completion = await client.chat.completions.create(model="llama3", messages=HI)
            return completion.provider

        def order() -> list[str]:
            return {m.id: m.providers for m in list_models()}["llama3"]

        assert order() == ["bad", "good"]
        assert await ask() == "good"  # bad failed first
        assert health.failures("bad") == 1
        assert order() == ["good", "bad"]  # bad cools down for 5 s
        assert await ask() == "good"
        assert two.bad.hits == 1  # not tried while cooling down
        clock.now += 5.1
        assert order() == ["bad", "good"]  # cool-down over: its usual place again
        assert await ask() == "good"
        assert (two.bad.hits, health.failures("bad")) == (2, 2)
        clock.now += 5.1
        assert order() == ["good", "bad"]  # the second cool-down is twice as long
        clock.now += 5
        assert order() == ["bad", "good"]
        assert await client.models.list() == list_models()


async def test_a_success_resets_the_cool_down(two: Replicas, clock: FakeClock) -> None:
    async with AsyncClient(max_retries=0) as client:
        await client.chat.completions.create(model="llama3", messages=HI)
        assert health.failures("bad") == 1
        two.bad.mode = "ok"
        clock.now += 5.1
        completion = await client.chat.completions.create(model="llama3", messages=HI)
        assert completion.provider == "bad"
        assert health.failures("bad") == 0


async def test_priority_comes_before_registration_order(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    replicas = await _two(
        serve,
        tmp_path,
        monkeypatch,
        use_plugins,
        "[providers.good]\npriority = 10\n",
        bad_mode="ok",
    )
    async with AsyncClient() as client:
        completion = await client.chat.completions.create(model="llama3", messages=HI)
        models = {m.id: m for m in await client.models.list()}
    assert completion.provider == "good"
    assert replicas.bad.hits == 0
    assert models["llama3"].providers == ["good", "bad"]
    assert models["llama3"].owned_by == "good"


async def test_a_disabled_provider_is_never_tried(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    replicas = await _two(
        serve, tmp_path, monkeypatch, use_plugins, "[providers.bad]\ndisabled = true\n"
    )
    async with AsyncClient(max_retries=0) as client:
        completion = await client.chat.completions.create(model="llama3", messages=HI)
        assert completion.provider == "good"
        assert {m.id: m.providers for m in await client.models.list()}["llama3"] == ["good"]
        with pytest.raises(ModelNotFound, match="bad is disabled in the configuration"):
            await client.chat.completions.create(model="bad/llama3", messages=HI)
    assert replicas.bad.hits == 0


async def test_error_after_text_is_stream_interrupted(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    replicas = await _two(serve, tmp_path, monkeypatch, use_plugins, bad_mode="error_event")
    received: list[str | None] = []

    async def consume(stream: AsyncIterator[ChatCompletionChunk]) -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    async with AsyncClient() as client:
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        with pytest.raises(StreamInterrupted, match="overloaded"):
            await consume(stream)
        assert stream.provider == "bad"
    assert received == ["Echo: ", "Hi "]
    assert replicas.good.hits == 0  # never spliced with another provider's answer


async def test_all_failing_raises_the_providers_errors(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    await _two(serve, tmp_path, monkeypatch, use_plugins)
    async with AsyncClient(max_retries=0) as client:
        with pytest.raises(ServerError, match="The server had an error"):
            await client.chat.completions.create(model="bad/llama3", messages=HI)


# -- refused before any I/O ---------------------------------------------------------------------


async def test_unknown_model_suggests_the_closest_names(
    two: Replicas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncClient() as client:
        with pytest.raises(ModelNotFound) as info:
            await client.chat.completions.create(model="lama3", messages=HI)
        assert "llama3" in info.value.suggestions
        assert "did you mean" in str(info.value)
        with pytest.raises(ModelNotFound) as info:
            await client.chat.completions.create(model="good/lama3", messages=HI)
        assert info.value.suggestions == ["llama3"]
    assert two.bad.hits + two.good.hits == 0


async def test_unsupported_option_names_option_and_provider(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        with pytest.raises(InvalidRequest) as info:
            await client.chat.completions.create(model="llama3", messages=HI, logprobs=True)
        assert "'local'" in str(info.value)
        assert "logprobs" in str(info.value)
        assert "drop_unsupported=True" in str(info.value)
        assert local.hits == 0
        completion = await client.chat.completions.create(
            model="llama3", messages=HI, logprobs=True, temperature=0.3, drop_unsupported=True
        )
    assert completion.choices[0].message.content == ANSWER
    assert "logprobs" not in local.last_body
    assert local.last_body["temperature"] == 0.3


async def test_bad_input_is_refused_before_any_io(local: ReplicaState) -> None:
    async with AsyncClient() as client:
        with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
            await client.chat.completions.create(
                model="llama3", messages=[{"role": "robot", "content": "x"}]
            )
        with pytest.raises(InvalidRequest, match="model must be a string"):
            await client.chat.completions.create(model=None, messages=HI)  # type: ignore[call-overload]
        for bad in (-1, 0, float("inf"), float("nan"), "10", True):
            with pytest.raises(InvalidRequest, match="timeout must be a positive, finite number"):
                await client.chat.completions.create(model="llama3", messages=HI, timeout=bad)
    assert local.hits == 0


async def test_a_config_error_is_raised_before_any_io(
    local: ReplicaState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config_path(tmp_path)
    path.write_text("timeout = 'soon'\n" + path.read_text())
    async with AsyncClient() as client:
        with pytest.raises(ConfigError) as info:
            await client.chat.completions.create(model="llama3", messages=HI)
    assert str(path) in str(info.value)
    assert "timeout: Input should be a valid number" in str(info.value)
    assert local.hits == 0


# -- models -------------------------------------------------------------------------------------


async def test_models_list(two: Replicas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config_path(tmp_path)
    path.write_text('[aliases]\nfast = "good/llama3"\n' + path.read_text())
    async with AsyncClient() as client:
        listed = await client.models.list()
    assert listed.object == "list"
    assert [m.id for m in listed] == ["gpt-4o-mini", "llama3", "fast"]
    assert listed[2].providers == ["good"]
    assert len(listed) == 3
    assert listed.model_dump(mode="json")["data"][1] == {
        "id": "llama3",
        "object": "model",
        "created": 0,
        "owned_by": "bad",
        "providers": ["bad", "good"],
    }


async def test_an_alias_routes_to_its_target(local: ReplicaState, tmp_path: Path) -> None:
    path = _config_path(tmp_path)
    path.write_text('default_model = "fast"\n[aliases]\nfast = "local/llama3"\n' + path.read_text())
    async with AsyncClient() as client:
        completion = await client.chat.completions.create(model="fast", messages=HI)
        assert (completion.provider, completion.model) == ("local", "fast")
        assert local.last_body["model"] == "llama3"
        default = await client.chat.completions.create(model="", messages=HI)
        assert default.model == "fast"  # empty: the configured default model
        with pytest.raises(ModelNotFound) as info:
            await client.chat.completions.create(model="fats", messages=HI)
        assert "fast" in info.value.suggestions


def test_the_shapes_parse_as_the_openai_sdk_expects() -> None:
    """What a server would send from these objects, read back by the official SDK's types."""
    from openai.types.chat import ChatCompletion as SDKCompletion
    from openai.types.chat import ChatCompletionChunk as SDKChunk

    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[Choice(message=ChatCompletionMessage(content="hi"), finish_reason="stop")],
        usage=Usage(1, 2),
        provider="p",
    )
    sdk = SDKCompletion.model_validate(completion.model_dump(mode="json"))
    assert sdk.choices[0].message.content == "hi"
    assert sdk.usage is not None
    assert sdk.usage.total_tokens == 3
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[ChunkChoice(delta=ChoiceDelta(role="assistant", content="h"))],
        provider="p",
    )
    assert SDKChunk.model_validate(chunk.model_dump(mode="json")).choices[0].delta.content == "h"


# -- the documented examples run as written -----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "config", "expected"),
    [
        (
            "client_async.py",
            "docs/examples/local.toml",
            "Echo: Hi there\n"
            "stop Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12) local\n"
            "local 'Echo: ' None None\n"
            "local 'Hi ' None None\n"
            "local 'there' None None\n"
            "local None stop Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12)\n",
        ),
        (
            "client_sync.py",
            None,
            "Привет! У меня всё отлично, спасибо. Чем могу помочь?\npizzagpt None\n",
        ),
    ],
)
def test_client_examples(
    script: str,
    config: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run as ``python docs/examples/<script>`` from the repository root (warnings are errors)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("LLMRELAY_CONFIG", str(ROOT / config) if config else str(empty))
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "docs" / "examples" / script), run_name="__main__")
    assert capsys.readouterr().out == expected


async def test_model_aliases_share_one_name_across_endpoints(
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_plugins: Callable[..., Registry],
) -> None:
    """Two servers know one model by different names; each endpoint maps the shared one."""
    first_app, second_app = make_app("server_error"), make_app()
    first, second = await serve(first_app), await serve(second_app)
    write_config(
        _config_path(tmp_path),
        monkeypatch,
        f'[[endpoints]]\nname = "first"\nbase_url = "{first}/v1"\nmodels = ["llama3"]\n'
        'model_aliases = { "shared" = "llama3" }\n',
        f'[[endpoints]]\nname = "second"\nbase_url = "{second}/v1"\nmodels = ["gpt-4o-mini"]\n'
        'model_aliases = { "shared" = "gpt-4o-mini" }\n',
    )
    install_endpoints(use_plugins)
    async with AsyncClient(max_retries=0) as client:
        completion = await client.chat.completions.create(model="shared", messages=HI)
        listed = {m.id: m.providers for m in await client.models.list()}
    assert (completion.provider, completion.model) == ("second", "shared")
    assert first_app[STATE].last_body["model"] == "llama3"
    assert second_app[STATE].last_body["model"] == "gpt-4o-mini"
    assert listed["shared"] == ["second", "first"]  # first is cooling down after its failure


def test_completion_ids_are_unique_even_when_random_is_seeded() -> None:
    """Ids have OpenAI's shape and come from llmrelay's own generator: seeding ``random``
    (as tests and simulations do) repeats none, in this process or in a forked child."""
    import random
    import re
    import subprocess
    import sys

    from llmrelay._client import completion_id

    random.seed(1234)
    first = [completion_id() for _ in range(3)]
    random.seed(1234)
    again = [completion_id() for _ in range(3)]
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in first + again)
    assert len(set(first + again)) == 6
    # A fork in a fresh interpreter (this one may run threads): the child's next id is not
    # its parent's next id.
    script = (
        "import os\n"
        "from llmrelay._client import completion_id\n"
        "completion_id()\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, completion_id().encode()); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.read(read, 100).decode(), completion_id())\n"
    )
    if not hasattr(__import__("os"), "fork"):
        return
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child, parent = out.stdout.split()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", child)
    assert child != parent
