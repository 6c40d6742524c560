"""``llmrelay serve`` in-process, with the official ``openai`` SDK as its client.

Behind the server: the OpenAI replica (through the OpenAI-compatible provider) where the
upstream's side must be observed, and fake providers registered as plugins where a failure
must happen at an exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import aiohttp.web
import openai
import pytest

from llmrelay import (
    Call,
    Chunk,
    FinishReason,
    Message,
    Provider,
    Reasoning,
    Registry,
    Usage,
    errors,
)
from llmrelay._config import EndpointConfig
from llmrelay.server import (
    PROVIDER_HEADER,
    BindRefused,
    Server,
    ServerSettings,
    check_binding,
    create_app,
    is_loopback,
    serving,
)
from llmrelay_openai_compat import provider_for
from llmrelay_pizzagpt import Pizzagpt
from tests.replicas.openai import STATE, ReplicaState
from tests.replicas.openai import make_app as make_replica
from tests.replicas.pizzagpt import STATE as PIZZA_STATE
from tests.replicas.pizzagpt import ReplicaState as PizzaState
from tests.replicas.pizzagpt import make_app as make_pizza_replica
from tests.support import Plugin, Serve

HI = [{"role": "user", "content": "Hi there"}]
KEY = "sk-server-key-0123456789"
#: Short grace: a test that leaves a request running must not wait the default 25 s.
FAST = ServerSettings(shutdown_grace=2.0)


class Echo(Provider):
    """Answers at once, no I/O: ``Echo: <last text>``, usage, stop."""

    name = "echo"
    url = "http://echo.invalid"
    default_model = "echo-1"
    models = ("echo-1",)
    supported_options = frozenset({"temperature", "max_tokens", "stop", "seed", "top_p", "user"})
    seen: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        cls.seen.append(dict(call.options))
        yield "Echo: "
        yield messages[-1].text
        yield Usage(3, 2)
        yield FinishReason("stop")


class SlowEcho(Echo):
    """Echo, after thinking for 0.8 s: a request that outlasts a short header timeout."""

    name = "slow-echo"
    default_model = "slow-echo"
    models = ("slow-echo",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        await asyncio.sleep(0.8)
        async for chunk in super().generate(model, messages, call):
            yield chunk


class Gate(Provider):
    """Sends ``first ``, then waits for the test to open ``gate``: a stream held mid-answer."""

    name = "gate"
    url = "http://gate.invalid"
    default_model = "gate-1"
    models = ("gate-1",)
    gate: ClassVar[asyncio.Event]
    cancelled: ClassVar[int] = 0

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield "first "
        try:
            await cls.gate.wait()
        except asyncio.CancelledError:
            cls.cancelled += 1
            raise
        yield "second"
        yield FinishReason("stop")


def failing(
    name: str, error: Callable[[str], Exception], models: tuple[str, ...] = ("shared",)
) -> type[Provider]:
    """A provider that raises ``error(name)`` before any text."""

    class Failing(Provider):
        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            raise error(cls.name)
            yield ""  # pragma: no cover - makes this an async generator

    Failing.name = name
    Failing.url = f"http://{name}.invalid"
    Failing.default_model = models[0]
    Failing.models = models
    Failing.__name__ = Failing.__qualname__ = f"Failing_{name}"
    return Failing


class BreaksMidStream(Provider):
    name = "breaks"
    url = "http://breaks.invalid"
    default_model = "breaks-1"
    models = ("breaks-1",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield "partial "
        raise errors.ServerError("HTTP 500: boom", provider=cls.name, status=500)


# -- fixtures ------------------------------------------------------------------------------

StartServer = Callable[..., Awaitable[Server]]
MakeClient = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def relay_server(serve: Serve) -> AsyncIterator[StartServer]:
    """``await relay_server(settings)`` serves llmrelay on 127.0.0.1 until the test ends.

    Depends on ``serve`` so it stops before the replicas and before llmrelay's sessions close.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            settings: ServerSettings = FAST, registry: Registry | None = None
        ) -> Server:
            app = create_app(settings, registry=registry)
            return await stack.enter_async_context(serving(app))

        yield start


@pytest.fixture
async def client(relay_server: StartServer) -> AsyncIterator[MakeClient]:
    """``client(server, key=...)``: an ``openai.AsyncOpenAI`` for the server, closed after."""
    clients: list[openai.AsyncOpenAI] = []

    def make(server: Server, key: str = "unused") -> openai.AsyncOpenAI:
        made = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, for what the SDK hides: raw frames, headers, broken bodies."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def replica(serve: Serve, use_plugins: Callable[..., Registry]) -> ReplicaState:
    """The OpenAI replica behind the provider ``replica`` (models gpt-4o-mini and llama3)."""
    app = make_replica()
    base = await serve(app)
    endpoint = EndpointConfig(
        name="replica", base_url=f"{base}/v1", models=("gpt-4o-mini", "llama3")
    )
    use_plugins(("replica", Plugin(provider_for(endpoint))))
    return app[STATE]


@pytest.fixture
def fakes(use_plugins: Callable[..., Registry]) -> Callable[..., Registry]:
    def install(*providers: type[Provider]) -> Registry:
        return use_plugins(*((p.name, Plugin(p)) for p in providers))

    return install


@pytest.fixture(autouse=True)
def _no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream errors reach the client at once instead of after backoff."""
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "0")


@pytest.fixture(autouse=True)
def _fresh_fakes() -> None:
    Echo.seen.clear()
    Gate.gate = asyncio.Event()
    Gate.cancelled = 0


async def _frames(response: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order."""
    text = (await response.read()).decode()
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


async def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll state that other code owns (a replica's counters, the server's tasks), bounded."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- answers -------------------------------------------------------------------------------


async def test_non_stream_answer(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    raw = await client(server).chat.completions.with_raw_response.create(
        model="llama3", messages=HI
    )
    assert raw.headers[PROVIDER_HEADER] == "replica"
    assert raw.headers["x-request-id"]
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "llama3"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert (choice.index, choice.message.role) == (0, "assistant")
    assert choice.message.content == "Echo: Hi there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == (9, 12)
    assert "stream" not in replica.last_body  # a whole answer was asked upstream too


async def test_stream_in_openai_order_with_usage(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    stream = await client(server).chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Hi there"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + [
        "stop"
    ]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    assert {c.created for c in chunks} == {chunks[0].created}


async def test_stream_frames_on_the_wire(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes(Echo)
    server = await relay_server()
    body = {"model": "echo-1", "messages": HI, "stream": True}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers[PROVIDER_HEADER] == "echo"
        frames = await _frames(response)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Echo: "},
        {"content": "Hi there"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert all("usage" not in c for c in chunks)  # not asked for: not sent
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


class Thinker(Provider):
    """A reasoning model: its thinking (one empty piece among it), then the answer."""

    name = "thinker"
    url = "http://thinker.invalid"
    default_model = "thinker-1"
    models = ("thinker-1",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield Reasoning("Let me ")
        yield Reasoning("")
        yield Reasoning("thínk.")
        yield "Hi"
        yield FinishReason("stop")


async def test_reasoning_frames_on_the_wire(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Reasoning goes in ``delta.reasoning`` (vLLM's, Ollama's and OpenRouter's name), apart
    from the content; whole, in ``message.reasoning``."""
    fakes(Thinker)
    server = await relay_server()
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "thinker-1", "messages": HI, "stream": True}
    async with http.post(url, json=body) as response:
        frames = await _frames(response)
    assert [json.loads(f)["choices"][0]["delta"] for f in frames[:-1]] == [
        {"role": "assistant", "content": ""},
        {"reasoning": "Let me "},
        {"reasoning": "thínk."},
        {"content": "Hi"},
        {},
    ]
    async with http.post(url, json={**body, "stream": False}) as response:
        message = (await response.json())["choices"][0]["message"]
    assert (message["content"], message["reasoning"]) == ("Hi", "Let me thínk.")


async def test_the_openai_sdk_reads_reasoning_from_the_server(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    replica.mode = "reasoning_content"  # DeepSeek's field upstream; vLLM's name downstream
    server = await relay_server()
    openai_client = client(server)
    completion = await openai_client.chat.completions.create(model="llama3", messages=HI)
    message = completion.choices[0].message
    assert message.content == "Echo: Hi there"
    assert message.model_extra == {"reasoning": "The user wrote 'Hi there', so I echo it."}
    stream = await openai_client.chat.completions.create(model="llama3", messages=HI, stream=True)
    deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]
    thinking = "".join((d.model_extra or {}).get("reasoning", "") for d in deltas)
    assert thinking == "The user wrote 'Hi there', so I echo it."
    assert "".join(d.content or "" for d in deltas) == "Echo: Hi there"


async def test_models_list_and_retrieve(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    openai_client = client(server)
    page = await openai_client.models.list()
    assert {(m.id, m.owned_by, m.object) for m in page.data} == {
        ("gpt-4o-mini", "replica", "model"),
        ("llama3", "replica", "model"),
    }
    model = await openai_client.models.retrieve("llama3")
    assert (model.id, model.owned_by) == ("llama3", "replica")
    with pytest.raises(openai.NotFoundError):
        await openai_client.models.retrieve("llama4-nope")


async def test_health_and_ready_answer_without_a_key(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes(Echo)
    server = await relay_server(ServerSettings(api_key=KEY, shutdown_grace=2.0))
    async with http.get(f"{server.url}/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    async with http.get(f"{server.url}/ready") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ready", "providers": 1}
    async with http.get(f"{server.url}/v1/models") as response:
        assert response.status == 401


async def test_the_server_reads_its_connections_64_kib_at_a_time(
    fakes: Callable[..., Registry], http: aiohttp.ClientSession
) -> None:
    """As llmrelay's client connections do (see ``llmrelay._connectors``): asyncio's 256 KiB
    reads cost an mmap, mremap and munmap each."""
    fakes(Echo)
    app = create_app(FAST)

    async def read_size(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(getattr(request.transport, "max_size", None))

    app.router.add_get("/read-size", read_size)
    async with serving(app) as server, http.get(f"{server.url}/read-size") as response:
        assert await response.json() == 64 * 1024


async def test_request_options_reach_the_provider(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    await client(server).chat.completions.create(
        model="llama3", messages=HI, temperature=0.2, max_tokens=7, stop=["\n"], seed=3, n=1
    )
    body = replica.last_body
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (
        0.2,
        7,
        ["\n"],
        3,
    )
    assert "n" not in body  # the server's own business: n=1 is all it offers


async def test_extra_body_on_the_wire_is_refused(
    replica: ReplicaState, relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """A body field named ``extra_body`` would be merged into the upstream request over the
    checked fields: another model than the client asked for (and the operator configured),
    ``n`` above 1. OpenAI's SDKs never send one (they send their ``extra_body=`` argument's
    fields at the top level): it is refused, saying where its fields go, and nothing goes
    upstream."""
    server = await relay_server()
    body = {"model": "llama3", "messages": HI, "extra_body": {"model": "gpt-4o-mini", "n": 3}}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == "extra_body"
    assert "unknown parameter" in error["message"]
    assert "top level" in error["message"]
    assert replica.hits == 0


# -- fields the server does not know: forwarded as they are ------------------------------

#: vLLM's sampling options and a structured one: what ``extra_body=`` carries in practice.
VLLM_FIELDS: dict[str, Any] = {
    "top_k": 5,
    "min_p": 0.05,
    "repetition_penalty": 1.0,
    "guided_json": {
        "type": "object",
        "properties": {"a": {"type": "integer", "enum": [1, 2, None]}},
        "required": ["a"],
    },
    "chat_template_kwargs": {"enable_thinking": False},
    "bad_words": ["x", "y"],
}


@pytest.fixture
async def pizza_and_replica(
    serve: Serve, use_plugins: Callable[..., Registry]
) -> tuple[PizzaState, ReplicaState]:
    """Pizzagpt (no ``extra_body``; on its replica, marked working so it is tried first for
    ``gpt-4o-mini``) and the OpenAI replica's endpoint, which serves that model too."""
    pizza_app, replica_app = make_pizza_replica(), make_replica()
    pizza = type("LocalPizzagpt", (Pizzagpt,), {"url": await serve(pizza_app), "working": True})
    endpoint = EndpointConfig(
        name="replica",
        base_url=f"{await serve(replica_app)}/v1",
        models=("gpt-4o-mini", "llama3"),
    )
    use_plugins(("pizzagpt", Plugin(pizza)), ("replica", Plugin(provider_for(endpoint))))
    return pizza_app[PIZZA_STATE], replica_app[STATE]


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_fields_reach_the_upstream_as_sent(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient, stream: bool
) -> None:
    """What OpenAI's SDK sends for ``extra_body={...}`` (its fields at the top level) arrives
    upstream field for field: ints stay ints, objects stay nested, nested nulls stay; known
    fields go beside them, checked; nothing named ``extra_body`` is sent."""
    server = await relay_server()
    sent = {**VLLM_FIELDS, "unset": None}
    response = await client(server).chat.completions.create(
        model="llama3", messages=HI, temperature=0.2, stream=stream, extra_body=sent
    )
    if stream:
        assert isinstance(response, openai.AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in response if c.choices])
    else:
        assert isinstance(response, openai.types.chat.ChatCompletion)
        text = response.choices[0].message.content or ""
    assert text == "Echo: Hi there"
    body = replica.last_body
    assert {name: body[name] for name in VLLM_FIELDS} == VLLM_FIELDS
    assert type(body["top_k"]) is int
    assert type(body["repetition_penalty"]) is float
    assert body["temperature"] == 0.2
    assert (body["model"], body["messages"]) == ("llama3", HI)
    assert "extra_body" not in body
    assert "unset" not in body  # null counts as unset, for every field
    assert ("stream" in body) is stream


async def test_known_fields_are_still_checked_beside_forwarded_ones(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    with pytest.raises(openai.BadRequestError) as info:
        await client(server).chat.completions.create(
            model="llama3", messages=HI, temperature=5, extra_body={"top_k": 5}
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "temperature"
    assert replica.hits == 0


async def test_a_field_a_provider_declares_reaches_it_by_name(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """A plugin that declares ``top_k`` itself gets it as an option, as before: ``extra_body``
    is only for the fields no candidate knows by name."""

    class Sampler(Echo):
        name = "sampler"
        url = "http://sampler.invalid"
        supported_options = frozenset({"temperature", "top_k"})

    fakes(Sampler)
    server = await relay_server()
    completion = await client(server).chat.completions.create(
        model="echo-1", messages=HI, temperature=0.3, extra_body={"top_k": 5}
    )
    assert completion.choices[0].message.content == "Echo: Hi there"
    assert Echo.seen[-1] == {"temperature": 0.3, "top_k": 5}


async def test_unknown_fields_to_a_provider_without_extra_body_are_400_unless_dropped(
    pizza_and_replica: tuple[PizzaState, ReplicaState],
    relay_server: StartServer,
    client: MakeClient,
) -> None:
    """Pizzagpt alone (pinned) cannot take ``top_k``: the 400 names it, and nothing goes
    out; with ``--drop-unsupported`` it answers without it."""
    pizza, replica = pizza_and_replica
    strict = client(await relay_server())
    with pytest.raises(openai.BadRequestError) as info:
        await strict.chat.completions.create(
            model="pizzagpt/gpt-4o-mini", messages=HI, extra_body={"top_k": 5, "min_p": 0.1}
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "top_k"
    assert info.value.body["code"] == "unsupported_parameter"
    assert "'top_k' is not supported by any provider" in info.value.body["message"]
    assert (pizza.hits, replica.hits) == (0, 0)

    lenient = client(await relay_server(ServerSettings(drop_unsupported=True, shutdown_grace=2)))
    raw = await lenient.chat.completions.with_raw_response.create(
        model="pizzagpt/gpt-4o-mini", messages=HI, extra_body={"top_k": 5}
    )
    assert raw.headers[PROVIDER_HEADER] == "pizzagpt"
    assert raw.parse().choices[0].message.content == "You asked: Hi there"
    assert json.loads(pizza.last_body) == {"question": "Hi there"}


async def test_a_provider_without_extra_body_is_skipped_for_unknown_fields(
    pizza_and_replica: tuple[PizzaState, ReplicaState],
    relay_server: StartServer,
    client: MakeClient,
) -> None:
    """Pizzagpt comes first for ``gpt-4o-mini``; a request with ``top_k`` goes to the
    OpenAI-compatible endpoint behind it instead, as for any option Pizzagpt lacks. With
    ``--drop-unsupported`` the first provider answers, without what it cannot take."""
    pizza, replica = pizza_and_replica
    openai_client = client(await relay_server())
    plain = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert plain.headers[PROVIDER_HEADER] == "pizzagpt"
    tuned = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, extra_body={"top_k": 5}
    )
    assert tuned.headers[PROVIDER_HEADER] == "replica"
    assert replica.last_body["top_k"] == 5
    assert (pizza.hits, replica.hits) == (1, 1)

    lenient = client(await relay_server(ServerSettings(drop_unsupported=True, shutdown_grace=2)))
    dropped = await lenient.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, extra_body={"top_k": 5}
    )
    assert dropped.headers[PROVIDER_HEADER] == "pizzagpt"
    assert json.loads(pizza.last_body) == {"question": "Hi there"}


@pytest.mark.parametrize(
    "field",
    [
        {"logprobs": True},
        {"top_logprobs": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"functions": [{"name": "f", "parameters": {}}]},
        {"function_call": "auto"},
        {"tool_choice": "auto"},
        {"modalities": ["text", "audio"]},
        {"audio": {"voice": "alloy", "format": "wav"}},
    ],
)
async def test_fields_whose_answer_cannot_be_relayed_are_not_forwarded(
    replica: ReplicaState,
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    field: dict[str, Any],
) -> None:
    """Tool calls, log probabilities and audio would be lost between the upstream and the
    client: these OpenAI fields stay unsupported options (400 naming them, or dropped), never
    forwarded as they are."""
    (name,) = field
    body = {"model": "llama3", "messages": HI, **field}
    server = await relay_server()
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (name, "unsupported_parameter")
    assert replica.hits == 0
    lenient = await relay_server(ServerSettings(drop_unsupported=True, shutdown_grace=2))
    async with http.post(f"{lenient.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
    assert name not in replica.last_body


async def test_those_fields_holding_values_that_ask_for_nothing_are_taken_as_unset(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    """OpenAI's defaults of those fields, which some clients send on every request, ask for
    no answer the server would have to carry back: the request is answered as without them
    (not 400), and they are not sent upstream."""
    server = await relay_server()
    answer = await client(server).chat.completions.create(
        model="llama3",
        messages=HI,
        logprobs=False,
        modalities=["text"],
        parallel_tool_calls=False,
        tool_choice="none",
    )
    assert answer.choices[0].message.content
    sent = replica.last_body
    assert sent.keys().isdisjoint({"logprobs", "modalities", "parallel_tool_calls", "tool_choice"})
    nulls = {"tools": None, "functions": None, "parallel_tool_calls": True, "function_call": "none"}
    answer = await client(server).chat.completions.create(
        model="llama3", messages=HI, tool_choice="none", extra_body=nulls
    )
    assert answer.choices[0].message.content
    assert replica.last_body.keys().isdisjoint({*nulls, "tool_choice"})


async def test_with_tools_the_fields_that_steer_them_are_refused_with_them(
    replica: ReplicaState, relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    for steering in ({"parallel_tool_calls": False}, {"tool_choice": "none"}):
        body = {"model": "llama3", "messages": HI, "tools": tools, **steering}
        lenient = await relay_server(ServerSettings(drop_unsupported=True, shutdown_grace=2))
        async with http.post(f"{lenient.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
        assert replica.last_body.keys().isdisjoint({"tools", *steering})  # dropped, not sent
        hits = replica.hits
        strict = await relay_server()
        async with http.post(f"{strict.url}/v1/chat/completions", json=body) as response:
            assert response.status == 400
        assert replica.hits == hits


async def test_a_forwarded_number_json_cannot_carry_is_400(
    replica: ReplicaState, relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """``1e400`` is valid JSON but parses as infinity: refused rather than sent altered."""
    server = await relay_server()
    raw = b'{"model": "llama3", "messages": [{"role": "user", "content": "x"}], "k": [1e400]}'
    async with http.post(f"{server.url}/v1/chat/completions", data=raw) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == "k"
    assert replica.hits == 0


# -- client errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'user'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required"),
        ({"messages": []}, "messages", "at least 1"),
        ({"temperature": 5}, "temperature", "less than or equal to 2"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"n": 3}, "n", "only n=1"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"logit_bias": {"abc": 1}}, "logit_bias.abc", "keys must be token ids"),
        ({"logit_bias": {"50256": 1000}}, "logit_bias.50256", "less than or equal to 100"),
        ({"model": ""}, "model", "at least 1"),
        ({"model": "m" * 257}, "model", "at most 256"),  # no seconds spent on suggestions
        ({"base_url": "http://169.254.169.254/"}, "base_url", "unknown parameter"),
        ({"proxy": "http://evil:1"}, "proxy", "unknown parameter"),
        ({"timeout": 1}, "timeout", "unknown parameter"),
    ],
)
async def test_invalid_fields_are_400_naming_the_field(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    param: str,
    words: str,
) -> None:
    fakes(Echo)
    server = await relay_server()
    body = {"model": "echo-1", "messages": HI, **change}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert Echo.seen == []  # refused before any provider was called


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (  # the whole decoder message: where the mistake is, too
            b'{"model": "m", \'messages\': []}',
            "Expecting property name enclosed in double quotes: line 1 column 16 (char 15)",
        ),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'{"model": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100 + b"]" * 100, "must be a JSON object"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "nests deeper"),
    ],
)
async def test_unparseable_bodies_are_400(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    raw: bytes,
    words: str,
) -> None:
    fakes(Echo)
    server = await relay_server()
    async with http.post(f"{server.url}/v1/chat/completions", data=raw) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert words in error["message"]


async def test_bad_request_through_the_sdk(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Echo)
    server = await relay_server()
    with pytest.raises(openai.BadRequestError) as info:
        await client(server).chat.completions.create(
            model="echo-1",
            messages=[{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}],  # type: ignore[list-item]
        )
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "messages[1].role"


async def test_unsupported_option_is_400_naming_it_unless_dropped(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Echo)
    strict = client(await relay_server())
    with pytest.raises(openai.BadRequestError) as info:
        await strict.chat.completions.create(
            model="echo-1", messages=HI, presence_penalty=0.5, temperature=0.3
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "presence_penalty"
    assert info.value.body["code"] == "unsupported_parameter"
    assert Echo.seen == []
    lenient = client(await relay_server(ServerSettings(drop_unsupported=True)))
    completion = await lenient.chat.completions.create(
        model="echo-1", messages=HI, presence_penalty=0.5, temperature=0.3
    )
    assert completion.choices[0].message.content == "Echo: Hi there"
    assert Echo.seen[-1] == {"temperature": 0.3}


async def test_unknown_model_is_404_with_suggestions(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    server = await relay_server()
    with pytest.raises(openai.NotFoundError) as info:
        await client(server).chat.completions.create(model="llama", messages=HI)
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"
    assert "llama3" in info.value.body["message"]
    assert replica.hits == 0


async def test_unknown_routes_and_methods_are_openai_shaped(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes(Echo)
    server = await relay_server()
    async with http.get(f"{server.url}/v1/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_url"
    async with http.delete(f"{server.url}/v1/chat/completions") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert (await response.json())["error"]["code"] == "method_not_allowed"


# -- auth ----------------------------------------------------------------------------------


async def test_a_key_read_with_its_trailing_newline_still_matches(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """A key from a secret file (Kubernetes' --from-file) ends in a newline that no client
    can send: it is not part of the key."""
    fakes(Echo)
    server = await relay_server(ServerSettings(api_key=f"  {KEY}\n", shutdown_grace=2.0))
    answer = await client(server, KEY).chat.completions.create(model="echo-1", messages=HI)
    assert answer.choices[0].message.content == "Echo: Hi there"
    with pytest.raises(ValueError, match="control character"):
        ServerSettings(api_key="sk-one\nsk-two")


async def test_auth(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fakes(Echo)
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    server = await relay_server(ServerSettings(api_key=KEY, shutdown_grace=2.0))
    wrong = "sk-server-key-0123456780"  # one character off
    with pytest.raises(openai.AuthenticationError) as info:
        await client(server, wrong).chat.completions.create(model="echo-1", messages=HI)
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "invalid_api_key"
    async with http.post(f"{server.url}/v1/chat/completions", json={}) as response:
        assert response.status == 401
        assert "missing API key" in (await response.json())["error"]["message"]
    headers = {"Authorization": f"Basic {KEY}"}
    async with http.get(f"{server.url}/v1/models", headers=headers) as response:
        assert response.status == 401
    completion = await client(server, KEY).chat.completions.create(model="echo-1", messages=HI)
    assert completion.choices[0].message.content == "Echo: Hi there"
    assert KEY not in caplog.text
    assert wrong not in caplog.text
    assert "Hi there" not in caplog.text  # nor the prompt


def test_binding_beyond_loopback_needs_a_key() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
        check_binding(host, None)
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "example.com", "localhost.example.com"):
        assert not is_loopback(host), host
        with pytest.raises(BindRefused, match="without an API key"):
            check_binding(host, None)
        check_binding(host, KEY)
    with pytest.raises(ValueError, match="must not be empty"):
        ServerSettings(api_key="  ")


# -- upstream errors -----------------------------------------------------------------------


async def test_upstream_429_is_passed_on_with_retry_after(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    replica.mode = "rate_limited"
    server = await relay_server()
    with pytest.raises(openai.RateLimitError) as info:
        await client(server).chat.completions.create(model="llama3", messages=HI)
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.response.headers["retry-after-ms"] == "1000"
    assert "Rate limit reached" in info.value.message


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (lambda p: errors.ServerError("HTTP 500: oops", provider=p, status=500), 502, None),
        (lambda p: errors.ConnectError("refused", provider=p), 502, None),
        (lambda p: errors.AuthenticationFailed("HTTP 401", provider=p, status=401), 502, None),
        (lambda p: errors.ProviderTimeout("read timed out", provider=p), 504, "upstream_timeout"),
        (lambda p: errors.ServerError("HTTP 503", provider=p, status=503), 503, None),
        (lambda p: errors.BadRequest("HTTP 400: bad", provider=p, status=400), 400, None),
        (lambda p: errors.MisuseDetected("Misuse detected", provider=p), 400, "content_filter"),
        # The deadline left no time for the wait an upstream asked: its status, not a 504.
        (lambda p: _cut_short(p, 429), 429, "rate_limit_exceeded"),
        (lambda p: _cut_short(p, 503), 503, "upstream_unavailable"),
        # An upstream 500 asking to come back in 45 s: passed on, not final.
        (lambda p: _cut_short(p, 500), 503, "upstream_unavailable"),
        (lambda p: _cut_short(p, 500, wait=None), 502, "upstream_error"),
        (
            lambda p: errors.ServerError("HTTP 500", provider=p, status=500, retry_after=45),
            503,
            None,
        ),
    ],
)
async def test_one_failing_provider_maps_to_a_status(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    error: Callable[[str], Exception],
    status: int,
    code: str | None,
) -> None:
    fakes(failing("only", error))
    server = await relay_server()
    with pytest.raises(openai.APIStatusError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"].startswith("only: ")
    if code:
        assert info.value.body["code"] == code
    headers = info.value.response.headers
    # llmrelay has retried already: a client's retries would only multiply the requests.
    assert headers.get("x-should-retry") == ("false" if status in (500, 502, 504) else None)
    if status in (429, 503) and (
        "cut short" in info.value.body["message"] or "500" in str(info.value.body["message"])
    ):
        assert headers["retry-after"] == "45"
    if status == 400:
        assert isinstance(info.value, openai.BadRequestError)
    elif status == 429:
        assert isinstance(info.value, openai.RateLimitError)
    else:
        assert isinstance(info.value, openai.InternalServerError)


def _cut_short(provider: str, status: int, wait: float | None = 45.0) -> errors.ProviderTimeout:
    """What ``Call`` raises when the deadline leaves no time to wait out an upstream answer."""
    return errors.ProviderTimeout(
        f"deadline of 10s leaves no time to retry (cut short) after HTTP {status}",
        provider=provider,
        status=status,
        retryable=False,
        retry_after=wait,
    )


async def test_all_providers_failing_is_502_listing_each(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(
        failing("first", lambda p: errors.ServerError("HTTP 500", provider=p, status=500)),
        failing("second", lambda p: errors.ConnectError("refused", provider=p)),
    )
    server = await relay_server()
    with pytest.raises(openai.InternalServerError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI, stream=True)
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "all_providers_failed"
    assert "first: HTTP 500" in info.value.message
    assert "second: refused" in info.value.message


async def test_one_provider_asking_to_come_back_later_makes_the_answer_retryable(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """The first asked for 30 s (handed over, not waited out), the second failed outright:
    the client may come back when the first said, not told that retrying cannot help."""
    fakes(
        failing(
            "first",
            lambda p: errors.RateLimited("HTTP 429", provider=p, status=429, retry_after=30),
        ),
        failing("second", lambda p: errors.ServerError("HTTP 500", provider=p, status=500)),
    )
    server = await relay_server()
    with pytest.raises(openai.APIStatusError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI)
    assert info.value.status_code == 429  # (the only one asking to wait was rate limited)
    assert info.value.response.headers["retry-after"] == "30"
    assert "x-should-retry" not in info.value.response.headers
    assert "second: HTTP 500" in info.value.message


async def test_all_providers_rate_limited_is_429_with_the_shortest_wait(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    def limited(wait: float) -> Callable[[str], Exception]:
        return lambda p: errors.RateLimited("HTTP 429", provider=p, status=429, retry_after=wait)

    fakes(failing("first", limited(7)), failing("second", limited(2.5)))
    server = await relay_server()
    with pytest.raises(openai.RateLimitError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI)
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.response.headers["retry-after-ms"] == "2500"


def busy(name: str, status: int, wait: float) -> type[Provider]:
    """A provider whose upstream answers ``status`` (429 or 503) asking for ``wait`` seconds,
    through ``Call``'s retries: with a shorter deadline, the call is cut short at once."""

    class Busy(Provider):
        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            kind = errors.RateLimited if status == 429 else errors.ServerError

            async def attempt() -> None:
                raise kind(f"HTTP {status}", provider=cls.name, status=status, retry_after=wait)

            await call.with_retries(attempt)
            yield ""  # pragma: no cover - never reached

    Busy.name = name
    Busy.url = f"http://{name}.invalid"
    Busy.default_model = "shared"
    Busy.models = ("shared",)
    Busy.__name__ = Busy.__qualname__ = f"Busy_{name}"
    return Busy


@pytest.mark.parametrize(
    ("second", "status", "wait"),
    [(429, 429, "20"), (503, 503, "20")],
    ids=["both rate limited", "one rate limited, one overloaded"],
)
async def test_every_provider_asking_to_wait_past_the_deadline_is_still_told_to_wait(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    second: int,
    status: int,
    wait: str,
) -> None:
    """Each provider's wait is longer than the deadline leaves, so each is cut short at once:
    the client hears the upstreams' 429 or 503 and the shortest wait, retryable, not a 504."""
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "2")
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "5")
    fakes(busy("first", 429, 30), busy("second", second, 20))
    server = await relay_server()
    with pytest.raises(openai.APIStatusError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI)
    assert info.value.status_code == status
    headers = info.value.response.headers
    assert headers["retry-after"] == wait
    assert "x-should-retry" not in headers


async def test_a_long_upstream_wait_is_passed_on_at_once_not_waited_out(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream asking for 30 s: waited out, twice with retries, it would hold the client
    a minute before the same 429. The server answers at once with the upstream's wait."""
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "2")
    fakes(busy("only", 429, 30))
    server = await relay_server()
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        await client(server).chat.completions.create(model="shared", messages=HI)
    assert time.monotonic() - started < 5
    assert info.value.response.headers["retry-after"] == "30"
    assert "x-should-retry" not in info.value.response.headers


async def test_a_short_upstream_wait_is_still_waited_out(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wait no longer than a backoff of the server's own is absorbed: the client gets
    the answer the retry brings."""
    from llmrelay.server._chat import MAX_UPSTREAM_WAIT

    assert MAX_UPSTREAM_WAIT == 8.0
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "1")
    attempts = 0

    class Blip(Echo):
        name = "blip"
        models = ("shared",)
        default_model = "shared"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            async def attempt() -> None:
                nonlocal attempts
                attempts += 1
                if attempts == 1:
                    raise errors.RateLimited("HTTP 429", provider=cls.name, retry_after=0.2)

            await call.with_retries(attempt)
            yield "after the wait"
            yield FinishReason("stop")

    fakes(Blip)
    server = await relay_server()
    answer = await client(server).chat.completions.create(model="shared", messages=HI)
    assert (answer.choices[0].message.content, attempts) == ("after the wait", 2)


async def test_fallback_names_the_provider_that_answered(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    class Second(Echo):
        name = "second"
        models = ("shared",)
        default_model = "shared"

    fakes(failing("first", lambda p: errors.ConnectError("refused", provider=p)), Second)
    server = await relay_server()
    body = {"model": "shared", "messages": HI, "stream": True}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.headers[PROVIDER_HEADER] == "second"
        assert (await _frames(response))[-1] == "[DONE]"


async def test_failure_after_the_stream_started_is_an_error_event(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    http: aiohttp.ClientSession,
) -> None:
    fakes(BreaksMidStream)
    server = await relay_server()
    stream = await client(server).chat.completions.create(
        model="breaks-1", messages=HI, stream=True
    )
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="boom") as info:
        await consume()
    assert "".join(received) == "partial "
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "stream_interrupted"
    body = {"model": "breaks-1", "messages": HI, "stream": True}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        frames = await _frames(response)
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["error"]["type"] == "upstream_error"


async def test_a_whole_answer_cut_midway_stays_retryable(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """llmrelay never retries an answer that broke after some text; the client, which got
    none of it (not streamed), may: no x-should-retry: false on this 502."""
    fakes(BreaksMidStream)
    server = await relay_server()
    body = {"model": "breaks-1", "messages": HI}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "stream_interrupted"
        assert "x-should-retry" not in response.headers


# -- limits --------------------------------------------------------------------------------


async def test_body_limit(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Echo)
    server = await relay_server(ServerSettings(max_body_bytes=4096, shutdown_grace=2.0))
    openai_client = client(server)
    with pytest.raises(openai.APIStatusError) as info:
        await openai_client.chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": "x" * 20_000}]
        )
    assert info.value.status_code == 413
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "request_too_large"
    assert "4096" in info.value.message
    ok = await openai_client.chat.completions.create(model="echo-1", messages=HI)
    assert ok.choices[0].message.content == "Echo: Hi there"


async def test_a_body_declared_over_the_limit_is_413_at_once(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """A Content-Length over the limit is refused before the body is read: a client that
    declares more than it sends must not wait out the body timeout (then 408) holding a place
    under the concurrency limit."""
    fakes(Echo)
    server = await relay_server(
        ServerSettings(
            max_body_bytes=4096, max_concurrency=1, body_timeout=30.0, shutdown_grace=2.0
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n{}"
    )
    try:
        async with asyncio.timeout(2):  # far below the body timeout
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in head
    assert body == {
        "error": {
            "message": "the request body is larger than this server's limit of 4096 bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    await _wait_for(lambda: not server.state.tasks)
    ok = await client(server).chat.completions.create(model="echo-1", messages=HI)
    assert ok.choices[0].message.content == "Echo: Hi there"


@pytest.mark.parametrize("length", [999_999, 100])
async def test_expect_100_continue_is_answered_by_the_limit(
    fakes: Callable[..., Registry], relay_server: StartServer, length: int
) -> None:
    """curl sends ``Expect: 100-continue`` for bodies over 1 KiB: one declared over the limit
    gets its 413 at once, never a ``100 Continue`` that invites it; one within gets that."""
    fakes(Echo)
    server = await relay_server(ServerSettings(max_body_bytes=4096, shutdown_grace=2.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(2):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    expected = b"HTTP/1.1 413 " if length > 4096 else b"HTTP/1.1 100 Continue\r\n"
    assert head.startswith(expected)
    if length > 4096:  # answered through the server's edge, as every response is
        assert b"\r\nx-request-id: " in head.lower()


async def test_a_chunked_body_over_the_limit_is_413(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Without a Content-Length the body is counted as it arrives."""
    fakes(Echo)
    server = await relay_server(ServerSettings(max_body_bytes=4096, shutdown_grace=2.0))

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"model": "echo-1", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}]}'

    async with http.post(f"{server.url}/v1/chat/completions", data=pieces()) as response:
        assert response.request_info.headers["Transfer-Encoding"] == "chunked"
        assert response.status == 413
        error = (await response.json())["error"]
    assert error["code"] == "request_too_large"
    assert error["param"] is None
    assert "4096" in error["message"]


async def test_concurrency_limit(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Gate, Echo)
    server = await relay_server(ServerSettings(max_concurrency=1, shutdown_grace=2.0))
    openai_client = client(server)
    held = await openai_client.chat.completions.create(model="gate-1", messages=HI, stream=True)
    first = [await anext(held) for _ in range(2)]
    assert first[1].choices[0].delta.content == "first "
    with pytest.raises(openai.InternalServerError) as info:
        await openai_client.chat.completions.create(model="echo-1", messages=HI)
    assert info.value.status_code == 503
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "server_overloaded"
    assert info.value.response.headers["retry-after"] == "1"
    Gate.gate.set()
    rest = [chunk async for chunk in held]
    assert rest[0].choices[0].delta.content == "second"
    await _wait_for(lambda: not server.state.tasks)
    ok = await openai_client.chat.completions.create(model="echo-1", messages=HI)
    assert ok.choices[0].message.content == "Echo: Hi there"


async def test_a_stalled_body_gets_408_and_frees_its_place(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """A request holds its place under the concurrency limit while its body arrives: a client
    that stops sending must not hold it for as long as it keeps its connection open."""
    fakes(Echo)
    server = await relay_server(
        ServerSettings(max_concurrency=1, body_timeout=0.2, shutdown_grace=2.0)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
            assert b"\r\nConnection: close\r\n" in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert json.loads(await reader.readexactly(length))["error"]["code"] == (
                "request_timeout"
            )
    finally:
        writer.close()
    await _wait_for(lambda: not server.state.tasks)
    ok = await client(server).chat.completions.create(model="echo-1", messages=HI)
    assert ok.choices[0].message.content == "Echo: Hi there"


async def test_connections_that_send_no_request_are_closed(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    """A connection that sends nothing, or half its headers, held its socket for ever (no key
    needed, outside the concurrency limit): a few hundred used up the worker's descriptors.
    They are closed after ``header_timeout``; one whose request runs longer is not."""
    fakes(SlowEcho)
    server = await relay_server(ServerSettings(header_timeout=0.4, shutdown_grace=2.0))
    silent = await asyncio.open_connection("127.0.0.1", server.port)
    halfway = await asyncio.open_connection("127.0.0.1", server.port)
    halfway[1].write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
    started = time.monotonic()
    try:
        # A request that takes longer than the timeout keeps its connection.
        slow = await client(server).chat.completions.create(model="slow-echo", messages=HI)
        assert slow.choices[0].message.content == "Echo: Hi there"
        async with asyncio.timeout(5):
            for reader, _writer in (silent, halfway):
                assert await reader.read() == b""  # closed by the server
        assert 0.3 < time.monotonic() - started < 3
    finally:
        for _reader, writer in (silent, halfway):
            writer.close()


# -- disconnects and shutdown --------------------------------------------------------------


async def test_client_disconnect_cancels_the_upstream_stream(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    replica.delay = 0.02
    server = await relay_server()
    words = " ".join(f"w{i}" for i in range(200))  # 200 chunks x 20 ms: 4 s if not cancelled
    stream = await client(server).chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": words}], stream=True
    )
    assert [(await anext(stream)).choices[0].delta.content for _ in range(3)] == [
        "",
        "Echo: ",
        "w0 ",
    ]
    await stream.close()
    await _wait_for(lambda: replica.streams_cancelled == 1)
    assert replica.streams_finished == 0
    await _wait_for(lambda: not server.state.tasks)


async def test_non_stream_disconnect_cancels_upstream_too(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes(Gate)
    server = await relay_server()
    body = {"model": "gate-1", "messages": HI}
    request = asyncio.ensure_future(http.post(f"{server.url}/v1/chat/completions", json=body))
    await _wait_for(lambda: bool(server.state.tasks))
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await _wait_for(lambda: Gate.cancelled == 1)
    await _wait_for(lambda: not server.state.tasks)


async def test_graceful_shutdown_lets_running_streams_finish(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    client: MakeClient,
    http: aiohttp.ClientSession,
) -> None:
    fakes(Gate)
    server = await relay_server(ServerSettings(shutdown_grace=10.0))
    url = server.url
    stream = await client(server).chat.completions.create(model="gate-1", messages=HI, stream=True)
    assert (await anext(stream)).choices[0].delta.role == "assistant"
    stopping = asyncio.ensure_future(server.shutdown())
    await _wait_for(lambda: server.state.draining)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{url}/health"):
            pass  # pragma: no cover - the listener is closed
    assert not stopping.done()
    Gate.gate.set()
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "first second"
    async with asyncio.timeout(5):
        await stopping


async def test_grace_expiry_ends_streams_with_an_error_event(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Gate)
    server = await relay_server(ServerSettings(shutdown_grace=0.2))
    stream = await client(server).chat.completions.create(model="gate-1", messages=HI, stream=True)
    assert [(await anext(stream)).choices[0].delta.content for _ in range(2)] == ["", "first "]
    async with asyncio.timeout(5):
        await server.shutdown()
    with pytest.raises(openai.APIError, match="shutting down"):
        async for _ in stream:
            pass  # pragma: no cover - nothing more arrives before the error
    assert Gate.cancelled == 1


async def test_hurry_ends_the_grace_period_at_once(
    fakes: Callable[..., Registry], relay_server: StartServer, client: MakeClient
) -> None:
    fakes(Gate)
    server = await relay_server(ServerSettings(shutdown_grace=60.0))
    stream = await client(server).chat.completions.create(model="gate-1", messages=HI, stream=True)
    assert [(await anext(stream)).choices[0].delta.content for _ in range(2)] == ["", "first "]
    stopping = asyncio.ensure_future(server.shutdown())
    await _wait_for(lambda: server.state.draining)
    server.hurry()  # what a second SIGTERM or Ctrl-C does
    async with asyncio.timeout(5):
        await stopping
    with pytest.raises(openai.APIError, match="shutting down"):
        await anext(stream)
    assert Gate.cancelled == 1


async def test_ready_turns_503_while_draining(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes(Echo)
    server = await relay_server()
    server.state.draining = True  # what shutdown sets first, observed on a kept-alive connection
    async with http.get(f"{server.url}/ready") as response:
        assert response.status == 503
    body = {"model": "echo-1", "messages": HI}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "shutting_down"
    server.state.draining = False


async def test_ready_is_503_without_providers(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    fakes()
    server = await relay_server()
    async with http.get(f"{server.url}/ready") as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "no_providers"


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ("[providers.echo]\ndisabled = true\n", "no_providers"),  # installed, not routable
        ('timeout = "soon"\n', None),  # every request would fail on it
    ],
    ids=["every provider disabled", "a broken configuration"],
)
async def test_ready_is_503_when_no_request_could_be_answered(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    code: str | None,
) -> None:
    fakes(Echo)
    server = await relay_server()
    async with http.get(f"{server.url}/ready") as response:
        assert response.status == 200
    path = tmp_path / "config.toml"
    path.write_text(config, encoding="utf-8")
    monkeypatch.setenv("LLMRELAY_CONFIG", str(path))  # read again: the variable changed
    async with http.get(f"{server.url}/ready") as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == code


async def test_ready_with_a_provider_that_lists_no_models(
    fakes: Callable[..., Registry], relay_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """An endpoint configured without models answers whatever model is pinned to it: the
    server is ready, though no model is listed."""

    class Unlisted(Echo):
        name = "unlisted"
        models = ()

    fakes(Unlisted)
    server = await relay_server()
    async with http.get(f"{server.url}/ready") as response:
        assert (response.status, await response.json()) == (
            200,
            {"status": "ready", "providers": 1},
        )


def test_the_start_warns_of_what_will_fail(
    use_plugins: Callable[..., Registry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint no plugin serves, a key variable not set: said once, at the start, rather
    than found out from the first requests' 404s and 502s."""
    from llmrelay._config import get_config
    from llmrelay.server._run import _setup_problems

    class Keyed(Echo):
        name = "keyed"
        api_key_env = "KEYED_TEST_KEY"

    monkeypatch.delenv("KEYED_TEST_KEY", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(
        '[[endpoints]]\nname = "orphan"\nbase_url = "http://127.0.0.1:9/v1"\n', encoding="utf-8"
    )
    monkeypatch.setenv("LLMRELAY_CONFIG", str(path))
    registry = use_plugins(("keyed", Plugin(Keyed)))
    problems = _setup_problems(get_config(), registry)
    assert len(problems) == 2
    assert problems[0].startswith("[[endpoints]] 'orphan': no provider is registered for it")
    assert problems[1] == (
        "keyed reads its API key from $KEYED_TEST_KEY, which is not set: its requests will fail"
    )
    monkeypatch.setenv("KEYED_TEST_KEY", "sk-set")
    assert len(_setup_problems(get_config(), registry)) == 1
    # A model cache the endpoint relies on that cannot be used: said too.
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "orphan.json").write_text("{cut", encoding="utf-8")
    problems = _setup_problems(get_config(), registry)
    assert len(problems) == 2
    assert problems[1].startswith("[[endpoints]] 'orphan': ignoring its model cache ")
    assert problems[1].endswith("; run `llmrelay models --refresh orphan`")


# -- the access log ------------------------------------------------------------------------


async def test_one_access_log_line_per_request(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fakes(Echo, BreaksMidStream)
    caplog.set_level(logging.INFO, logger="llmrelay.access")
    server = await relay_server(ServerSettings(api_key=KEY, shutdown_grace=2.0))
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    secret = "my-secret-prompt"
    requests = [
        {"model": "echo-1", "messages": [{"role": "user", "content": secret}], "stream": True},
        {"model": "breaks-1", "messages": HI, "stream": True},
        {"model": "evil\nINFO forged line", "messages": HI},
    ]
    for body in requests:
        async with http.post(f"{url}?api_key=querysecret", json=body, headers=headers) as r:
            await r.read()
    async with http.get(f"{server.url}/health") as r:
        await r.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "llmrelay.access"]
    assert len(lines) == 4
    ok, broken, unknown, health = lines
    assert '"POST /v1/chat/completions" 200 model=echo-1 provider=echo ' in ok
    assert '"POST /v1/chat/completions" 200 model=breaks-1 provider=breaks ' in broken
    assert broken.endswith("error=stream_interrupted")
    assert '"POST /v1/chat/completions" 404 model=evil\\nINFO\\x20forged\\x20line ' in unknown
    assert '"GET /health" 200 model=- provider=- ' in health
    assert all(line.count("\n") == 0 for line in lines)
    assert all("s id=" in line for line in lines)  # the duration, then the request id
    text = "\n".join(lines)
    assert KEY not in text
    assert "querysecret" not in text
    assert secret not in text


@pytest.mark.parametrize(
    "header",
    [
        f"Authorization: Bearer {KEY}\x01".encode(),  # a stray control character
        f"Authorization: Bearer {KEY}{'x' * 9000}".encode(),  # over aiohttp's line limit
        f"Proxy-Authorization: Basic {KEY}\x00".encode(),
    ],
)
async def test_a_malformed_request_is_logged_without_its_headers(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    header: bytes,
) -> None:
    """aiohttp logs a request it cannot parse as an ERROR quoting the offending line, the key
    included: the server logs one INFO line naming the client and the kind of problem."""
    fakes(Echo)
    caplog.set_level(logging.DEBUG)
    server = await relay_server(ServerSettings(api_key=KEY, shutdown_grace=2.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n")).split()[1] == b"400"
            await reader.read()  # aiohttp closes the connection after the error
    finally:
        writer.close()
    assert KEY not in caplog.text
    [record] = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert (record.name, record.levelno, record.exc_info) == (
        "llmrelay.server.http",
        logging.INFO,
        None,
    )
    assert record.getMessage().startswith("malformed HTTP request from 127.0.0.1: ")


async def test_a_departed_client_is_logged_as_499(
    replica: ReplicaState,
    relay_server: StartServer,
    client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="llmrelay.access")
    replica.delay = 0.02
    server = await relay_server()
    words = " ".join(f"w{i}" for i in range(100))
    stream = await client(server).chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": words}], stream=True
    )
    await anext(stream)
    await stream.close()
    await _wait_for(lambda: any(r.name == "llmrelay.access" for r in caplog.records))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llmrelay.access"]
    assert " 499 model=llama3 provider=replica " in line
    await _wait_for(lambda: replica.streams_cancelled == 1)


async def test_a_providers_bug_is_a_502_without_its_details(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Buggy(Echo):
        name = "buggy"
        models = ("buggy-1",)
        default_model = "buggy-1"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            raise KeyError("internal detail")
            yield ""  # pragma: no cover

    fakes(Buggy)
    server = await relay_server()
    async with http.post(
        f"{server.url}/v1/chat/completions", json={"model": "buggy-1", "messages": HI}
    ) as response:
        assert response.status == 502  # the provider failed (the relay would fall back)
        text = await response.text()
    assert "Traceback" not in text
    assert "internal detail" not in text
    error = json.loads(text)["error"]
    assert error["type"] == "upstream_error"
    assert "buggy: the provider raised KeyError (provider contract broken" in error["message"]
    assert "internal detail" in caplog.text  # the operator gets it, in the log's traceback


async def test_embedding_with_the_default_app(serve: Serve) -> None:
    """``serving()`` with no app serves ``create_app()`` (the process registry)."""
    async with (
        serving() as server,
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/health") as response,
    ):
        assert response.status == 200
    assert isinstance(server.state.settings, ServerSettings)


def test_frames_survive_clients_that_split_on_unicode_line_ends() -> None:
    from llmrelay.server._wire import ChunkEncoder

    text = "a\u2028b\u2029c\x85d é\n"
    frame = ChunkEncoder("chatcmpl-1", 1, "m\u2028", include_usage=False).content(text)
    (line, blank) = frame.decode().splitlines()
    assert blank == ""
    chunk = json.loads(line.removeprefix("data: "))
    assert (chunk["model"], chunk["choices"][0]["delta"]["content"]) == ("m\u2028", text)


def test_whole_answer_body_on_the_wire() -> None:
    """The ``chat.completion`` template gives OpenAI's object, field for field."""
    from llmrelay.server._wire import completion_body

    usage = Usage(3, 4)
    body = completion_body("chatcmpl-1", 7, "m\u2028", 'a "quote"\n\ud800', "length", usage)
    assert b"\\u2028" in body  # escaped: a raw one would end a line for some clients
    assert json.loads(body.decode()) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "m\u2028",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": 'a "quote"\n\ud800', "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": usage.model_dump(mode="json"),
        "system_fingerprint": None,
    }
    assert json.loads(completion_body("chatcmpl-1", 7, "m", "", "stop", None))["usage"] is None


def test_usage_chunk_carries_what_the_provider_reported() -> None:
    from llmrelay.server._wire import ChunkEncoder

    usage = Usage(3, 4, 9)
    frame = ChunkEncoder("chatcmpl-1", 1, "m", include_usage=True).usage(usage)
    chunk = json.loads(frame.decode().removeprefix("data: "))
    assert (chunk["choices"], chunk["usage"]) == ([], usage.model_dump(mode="json"))


def test_log_lines_read_as_the_standard_formatter_writes_them() -> None:
    """``llmrelay serve`` formats the time once per second; the lines do not change."""
    from llmrelay.server._run import _Formatter

    fmt = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    ours, standard = _Formatter(fmt), logging.Formatter(fmt)
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.0, 1_700_000_001.5):
        record = logging.LogRecord("llmrelay.access", logging.INFO, __file__, 1, "%s", ("x",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
    record.created = 1_700_000_000.25  # back in time (a clock step): still right
    record.msecs = 250
    assert ours.format(record) == standard.format(record)
    assert ours.formatTime(record, "%H") == standard.formatTime(record, "%H")


def test_settings_never_show_the_key() -> None:
    assert KEY not in repr(ServerSettings(api_key=KEY))


def test_prepare_process_sizes_the_pool_and_the_file_limit() -> None:
    """A worker can hold ``max_concurrency`` upstream connections and twice as many sockets."""
    import resource

    from llmrelay._transport import get_transport
    from llmrelay.server._run import prepare_process

    transport = get_transport()
    before = transport.limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        prepare_process(500)
        assert transport.limit == max(before, 500)
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        expected = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, 1 << 20))
        assert raised == expected
    finally:
        transport.limit = before
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"role": "user", "content": "x\\ud800"}', "lone surrogate"),
        (b'{"role": "user", "content": "x", "name": "\\udfff"}', "lone surrogate"),
    ],
)
async def test_text_utf8_cannot_carry_is_400_not_a_server_error(
    replica: ReplicaState,
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    stream: bool,
    raw: bytes,
    words: str,
) -> None:
    # Valid JSON ("\ud800" is a legal escape), yet no UTF-8 request can carry it upstream.
    server = await relay_server()
    body = b'{"model": "llama3", "stream": %s, "messages": [%s]}' % (
        b"true" if stream else b"false",
        raw,
    )
    async with http.post(f"{server.url}/v1/chat/completions", data=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert replica.hits == 0


async def test_a_providers_bug_mid_stream_is_logged_with_its_traceback(
    fakes: Callable[..., Registry],
    relay_server: StartServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BuggyLater(Echo):
        name = "buggy-later"
        models = ("buggy-later-1",)
        default_model = "buggy-later-1"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield "some text"
            raise KeyError("internal detail")

    fakes(BuggyLater)
    server = await relay_server()
    body = {"model": "buggy-later-1", "messages": HI, "stream": True}
    async with http.post(f"{server.url}/v1/chat/completions", json=body) as response:
        text = await response.text()
    assert "some text" in text
    assert "stream_interrupted" in text
    assert "internal detail" not in text
    traced = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], KeyError)]
    assert traced  # the operator gets the provider's traceback
    assert "internal detail" in caplog.text


def test_running_out_of_descriptors_is_logged_once_in_a_while() -> None:
    """asyncio logs every failed accept() with a traceback, thousands a second while a worker
    is out of file descriptors: one line per 10 s is kept, saying how many were left out."""
    from llmrelay.server._run import _OutOfDescriptors

    keep = _OutOfDescriptors()

    def record(message: str) -> logging.LogRecord:
        error = OSError(24, "Too many open files")
        return logging.LogRecord(
            "asyncio", logging.ERROR, "x", 1, message, (), (OSError, error, None)
        )

    first = record("socket.accept() out of system resource\nsocket: <socket>")
    assert keep.filter(first)
    assert first.getMessage() == (
        "cannot accept connections: [Errno 24] Too many open files "
        "(0 more such failures not logged)"
    )
    assert first.exc_info is None
    assert not any(keep.filter(record("socket.accept() out of system resource")) for _ in range(5))
    assert keep.filter(record("Task exception was never retrieved"))  # anything else: as it is
    keep._last = time.monotonic() - 11  # ten seconds on
    later = record("socket.accept() out of system resource")
    assert keep.filter(later)
    assert "(5 more such failures not logged)" in later.getMessage()


async def test_the_openai_sdk_reads_the_usage_details_the_upstream_reported(
    replica: ReplicaState, relay_server: StartServer, client: MakeClient
) -> None:
    """A reasoning model's ``completion_tokens_details`` (and the prompt's) pass through the
    relay to an OpenAI client, in a whole answer and in a stream's usage chunk."""
    replica.mode = "reasoning"
    server = await relay_server()
    openai_client = client(server)
    completion = await openai_client.chat.completions.create(model="llama3", messages=HI)
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    thoughts = usage.completion_tokens_details.reasoning_tokens
    assert thoughts is not None
    assert 0 < thoughts < usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    stream = await openai_client.chat.completions.create(
        model="llama3", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1].usage
    assert last is not None
    assert last.completion_tokens_details is not None
    assert last.completion_tokens_details.reasoning_tokens == thoughts


def test_usage_on_the_wire_carries_the_details_as_model_dump_does() -> None:
    from llmrelay.server._wire import ChunkEncoder, completion_body

    usage = Usage(3, 4, completion_tokens_details={"reasoning_tokens": 2}, note="é\u2028")
    body = json.loads(completion_body("chatcmpl-1", 7, "m", "", "stop", usage).decode())
    assert body["usage"] == usage.model_dump(mode="json")
    frame = ChunkEncoder("chatcmpl-1", 1, "m", include_usage=True).usage(usage)
    (line, _) = frame.decode().splitlines()  # one line: the line breaker is escaped
    assert json.loads(line.removeprefix("data: "))["usage"] == usage.model_dump(mode="json")


def test_usage_fields_json_cannot_carry_are_sent_as_model_dump_json_writes_them() -> None:
    """A plugin's float NaN or infinity becomes null, as in ``model_dump_json``: a client's
    JSON parser refuses the bare ``NaN`` Python's encoder would write."""
    from llmrelay.server._wire import completion_body

    usage = Usage(3, 4, cost=float("nan"), limits=[float("inf"), 1.5])
    body = completion_body("chatcmpl-1", 7, "m", "", "stop", usage).decode()
    assert "NaN" not in body
    assert "Infinity" not in body
    sent = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} sent"))["usage"]
    assert sent == json.loads(usage.model_dump_json())
    assert (sent["cost"], sent["limits"]) == (None, [None, 1.5])
