"""The OpenAI-compatible provider against the replica: JSON, SSE in every framing, errors."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llmrelay import FinishReason, Reasoning, Usage, errors
from llmrelay._config import EndpointConfig
from llmrelay._endpoints import (
    cache_problem,
    cached_models,
    fetch_models,
    models_cache_path,
    save_models,
)
from llmrelay.cli import cli
from llmrelay.errors import (
    AuthenticationFailed,
    EndpointNotFound,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from llmrelay_openai_compat import OpenAICompatible, provider_for
from llmrelay_openai_compat._provider import PLACEHOLDER_MODEL, StreamParser, upstream_error
from tests.background import background_servers
from tests.endpoint_support import run_cli
from tests.replicas.openai import STATE, Mode, make_app
from tests.support import Serve

HI = [{"role": "user", "content": "Hi there"}]


async def _provider(
    serve: Serve, mode: Mode = "ok", key: str | None = None, key_env: str | None = None
) -> tuple[type[OpenAICompatible], web.Application]:
    app = make_app(mode, key)
    base = await serve(app)
    endpoint = EndpointConfig(
        name="local", base_url=f"{base}/v1", models=("gpt-4o-mini", "llama3"), api_key_env=key_env
    )
    return provider_for(endpoint), app


async def test_endpoint_becomes_a_provider(serve: Serve) -> None:
    provider, _ = await _provider(serve)
    assert provider.name == "local"
    assert provider.models == ("gpt-4o-mini", "llama3")
    assert provider.default_model == "gpt-4o-mini"
    assert provider.supports_stream is True
    assert issubclass(provider, OpenAICompatible)


async def test_stream_yields_words_then_usage_then_stop(serve: Serve) -> None:
    provider, app = await _provider(serve)
    items = [item async for item in provider.create_async_generator("llama3", HI)]
    assert items == ["Echo: ", "Hi ", "there", Usage(9, 3, 12), FinishReason("stop")]
    body = app[STATE].last_body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == HI
    assert body["model"] == "llama3"


@pytest.mark.parametrize("mode", ["crlf", "cr"])
async def test_stream_in_other_newline_styles(serve: Serve, mode: Mode) -> None:
    provider, _ = await _provider(serve, mode)
    assert await provider.create_async_generator("llama3", HI).text() == "Echo: Hi there"


async def test_non_stream(serve: Serve) -> None:
    provider, app = await _provider(serve)
    completion = await provider.create_async_generator("llama3", HI, stream=False).collect()
    assert completion.text == "Echo: Hi there"
    assert completion.usage == Usage(9, 3, 12)
    assert completion.finish_reason == FinishReason("stop")
    assert "stream" not in app[STATE].last_body


async def test_options_are_passed_through(serve: Serve) -> None:
    provider, app = await _provider(serve)
    await provider.create_async_generator(
        "llama3", HI, temperature=0.1, max_tokens=5, stop=["\n"]
    ).text()
    body = app[STATE].last_body
    assert (body["temperature"], body["max_tokens"], body["stop"]) == (0.1, 5, ["\n"])


async def test_bearer_key_from_the_environment(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, app = await _provider(serve, key="sk-test-123456789", key_env="LOCAL_KEY")
    with pytest.raises(AuthenticationFailed, match="set the environment variable LOCAL_KEY"):
        await provider.create_async_generator("llama3", HI).text()
    assert app[STATE].hits == 0
    monkeypatch.setenv("LOCAL_KEY", "sk-wrong-123456789")
    with pytest.raises(AuthenticationFailed, match="Incorrect API key") as info:
        await provider.create_async_generator("llama3", HI).text()
    assert "sk-wrong-123456789" not in str(info.value)
    monkeypatch.setenv("LOCAL_KEY", "sk-test-123456789")
    assert await provider.create_async_generator("llama3", HI).text() == "Echo: Hi there"


async def test_a_subclass_never_sends_its_parents_headers(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Headers are built once per class and reused; a subclass naming its own key variable
    # must not be handed the headers its parent (which needs no key) built before it.
    parent, app = await _provider(serve)
    monkeypatch.delenv("CHILD_KEY", raising=False)
    assert await parent.create_async_generator("llama3", HI).text() == "Echo: Hi there"
    child = type("Child", (parent,), {"name": "child", "api_key_env": "CHILD_KEY"})
    with pytest.raises(AuthenticationFailed, match="set the environment variable CHILD_KEY"):
        await child.create_async_generator("llama3", HI).text()
    assert app[STATE].hits == 1  # refused before any I/O
    monkeypatch.setenv("CHILD_KEY", "sk-child-123456789")
    assert await child.create_async_generator("llama3", HI).text() == "Echo: Hi there"
    assert app[STATE].last_headers["Authorization"] == "Bearer sk-child-123456789"


async def test_extra_headers_changed_in_place_are_sent_on_the_next_request(
    serve: Serve,
) -> None:
    provider, app = await _provider(serve)
    provider.extra_headers = {"X-Team": "a"}
    await provider.create_async_generator("llama3", HI).text()
    assert app[STATE].last_headers["X-Team"] == "a"
    provider.extra_headers["X-Team"] = "b"  # type: ignore[index]
    await provider.create_async_generator("llama3", HI).text()
    assert app[STATE].last_headers["X-Team"] == "b"


async def test_an_overridden_headers_method_runs_for_every_request(serve: Serve) -> None:
    provider, app = await _provider(serve)
    tokens = iter(["t1", "t2"])

    class Refreshing(provider):  # type: ignore[valid-type,misc]
        name = "refreshing"

        @classmethod
        def headers(cls) -> dict[str, str]:
            return {**super().headers(), "X-Token": next(tokens)}

    await Refreshing.create_async_generator("llama3", HI).text()
    assert app[STATE].last_headers["X-Token"] == "t1"
    await Refreshing.create_async_generator("llama3", HI).text()
    assert app[STATE].last_headers["X-Token"] == "t2"


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("rate_limited", RateLimited, "Rate limit reached"),
        ("server_error", ServerError, "The server had an error"),
    ],
)
async def test_error_bodies_keep_the_upstream_message(
    serve: Serve, mode: Mode, error: type[Exception], message: str
) -> None:
    provider, _ = await _provider(serve, mode)
    with pytest.raises(error, match=message):
        await provider.create_async_generator("llama3", HI, max_retries=0).text()


async def test_unknown_model_upstream_is_endpoint_not_found(serve: Serve) -> None:
    app = make_app()
    base = await serve(app)
    provider = provider_for(EndpointConfig(name="any", base_url=f"{base}/v1"))
    with pytest.raises(EndpointNotFound, match="does not exist"):
        await provider.create_async_generator("mystery", HI).text()


async def test_error_event_after_text_is_stream_interrupted(serve: Serve) -> None:
    provider, _ = await _provider(serve, "error_event")
    stream = provider.create_async_generator("llama3", HI)
    assert [await anext(stream), await anext(stream)] == ["Echo: ", "Hi "]
    with pytest.raises(StreamInterrupted, match="overloaded"):
        await anext(stream)


async def test_cut_stream_after_text_is_stream_interrupted(serve: Serve) -> None:
    provider, _ = await _provider(serve, "cut")
    with pytest.raises(StreamInterrupted):
        await provider.create_async_generator("llama3", HI).text()


# -- the SSE stream, cut anywhere ---------------------------------------------------------------

_EVENTS: list[dict[str, Any] | str] = [
    ": keep-alive",
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Thínking"}}]},
    {"choices": [{"index": 0, "delta": {"content": None, "reasoning": " on"}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": " both", "reasoning": " both"}}]},
    {"choices": [{"index": 0, "delta": {"reasoning": "", "content": "Héllo, 世界"}}]},
    {"choices": None},
    {"choices": [{"index": 1, "delta": {"content": "another choice"}}]},
    "MULTILINE",
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}},
    "[DONE]",
    {"choices": [{"index": 0, "delta": {"content": "after DONE: never read"}}]},
]


def _sse(events: list[dict[str, Any] | str], newline: str) -> bytes:
    out = []
    for event in events:
        if event == "MULTILINE":  # one JSON document over two data lines
            out.append(
                'data: {"choices": [{"index": 0,'
                + newline
                + 'data: "delta": {"content": " wörld"}}]}'
                + newline * 2
            )
        elif isinstance(event, str) and event.startswith(":"):
            out.append(event + newline * 2)
        else:
            data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            out.append(f"data: {data}{newline * 2}")
    return "".join(out).encode()


def _parse(pieces: list[bytes]) -> list[object]:
    parser = StreamParser("p")
    out: list[object] = []
    for piece in [*(p for p in pieces if p), b""]:  # b"" is the end of the stream
        out += parser.feed(piece)
        if parser.done:
            break
    try:
        out += parser.ending()
    except errors.ProviderError as exc:
        out.append(f"{type(exc).__name__}: {exc}")
    return out


EXPECTED = [
    # Either name of the reasoning field, one of them when a server sends both (vLLM does).
    Reasoning("Thínking"),
    Reasoning(" on"),
    Reasoning(" both"),
    "Héllo, 世界",
    " wörld",
    Usage(4, 3, 7),
    FinishReason("length"),
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_any_cut_of_the_stream_gives_the_same_chunks(newline: str, data: st.DataObject) -> None:
    raw = _sse(_EVENTS, newline)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=30))
    bounds = [0, *sorted(cuts), len(raw)]
    assert _parse([raw[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_an_error_event_comes_after_the_text_before_it(data: st.DataObject) -> None:
    events: list[dict[str, Any] | str] = [
        {"choices": [{"index": 0, "delta": {"content": "partial"}}]},
        {"error": {"message": "The model is overloaded.", "type": "server_error"}},
        "[DONE]",
    ]
    raw = _sse(events, "\n")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    bounds = [0, *sorted(cuts), len(raw)]
    assert _parse([raw[a:b] for a, b in itertools.pairwise(bounds)]) == [
        "partial",
        "ServerError: p: The model is overloaded.",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'event: error\ndata: {"error": {"message": "quota", "code": 429}}\n\n', "RateLimited"),
        (b"event: error\ndata: not json\n\n", "ServerError: p: not json"),
        (b'event: error\ndata: "boom"\n\n', 'ServerError: p: "boom"'),
        (b"event: error\ndata: [1, 2]\n\n", "ServerError: p: [1, 2]"),
        (b"event: error\ndata: 123\n\n", "ServerError: p: 123"),
        (b"data:\n\n" + _sse(_EVENTS, "\n"), "Héllo, 世界"),  # an empty event is skipped
        (b'data: {"error": {"message": "bad", "code": 400}}\n\n', "BadRequest: p: bad"),
        (b"data: {not json\n\n", "InvalidResponse"),
        (b'data: {"choices": []}\n\n', "ConnectError: p: stream ended before [DONE]"),
        (b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]}\n\n', "x"),
    ],
)
def test_stream_endings_and_errors(raw: bytes, expected: str) -> None:
    out = _parse([raw])
    assert any(isinstance(item, str) and item.startswith(expected) for item in out), out


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("length", "length"), ("error", "error"), ("function_call", "tool_calls"), ("eos", "stop")],
)
def test_finish_reasons_pass_through(reason: str, expected: str) -> None:
    """OpenRouter's "error" (a generation that failed after some text) is not taken for a
    normal stop: the answer is cut, and says so."""
    from llmrelay_openai_compat._provider import _completion

    event = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": reason}]}
    assert _parse([_sse([event, "[DONE]"], "\n")]) == ["x", FinishReason(expected)]  # type: ignore[arg-type]
    whole = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": reason}]}
    assert _completion("p", whole).finish_reason == FinishReason(expected)  # type: ignore[arg-type]


# -- errors keep the upstream message -----------------------------------------------------------


async def test_http_errors_carry_the_upstream_message_and_code(serve: Serve) -> None:
    provider, _ = await _provider(serve, "rate_limited")
    with pytest.raises(RateLimited) as info:
        await provider.create_async_generator("llama3", HI, max_retries=0).text()
    assert info.value.reason == "HTTP 429: Rate limit reached for requests. (rate_limit_exceeded)"
    assert (info.value.status, info.value.retry_after) == (429, 1.0)
    assert "rate_limit_exceeded" in (info.value.body or "")


def test_a_cut_error_body_still_gives_its_message() -> None:
    body = (
        '{"error": {"message": "This model\'s maximum context length is 8192 tokens. However, yo...'
    )
    exc = upstream_error(errors.BadRequest("HTTP 400: ...", provider="p", status=400, body=body))
    assert exc.reason.startswith("HTTP 400: This model's maximum context length is 8192 tokens.")
    assert exc.reason.endswith("...")
    assert isinstance(exc, errors.BadRequest)
    html = errors.PermissionDenied("HTTP 403", provider="p", status=403, body="<html>")
    assert upstream_error(html) is html


# -- request body -------------------------------------------------------------------------------


async def test_extra_body_is_merged_into_the_request(serve: Serve) -> None:
    provider, app = await _provider(serve)
    await provider.create_async_generator(
        "llama3", HI, extra_body={"top_k": 20, "repetition_penalty": 1.1}
    ).text()
    body = app[STATE].last_body
    assert (body["top_k"], body["repetition_penalty"]) == (20, 1.1)
    assert "extra_body" not in body
    with pytest.raises(errors.InvalidRequest, match="extra_body must be a dict"):
        await provider.create_async_generator("llama3", HI, extra_body=["x"]).text()


async def test_stream_options_are_not_sent_without_streaming(serve: Serve) -> None:
    provider, app = await _provider(serve)
    await provider.create_async_generator(
        "llama3", HI, stream=False, stream_options={"include_usage": True}
    ).text()
    assert "stream_options" not in app[STATE].last_body


async def test_a_server_that_ignores_stream_answers_whole(serve: Serve) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response(
            {"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    base = await serve(app)
    provider = provider_for(EndpointConfig(name="plain", base_url=f"{base}/v1", models=("m",)))
    items = [item async for item in provider.create_async_generator("m", HI)]
    assert items == ["whole", FinishReason("stop")]  # no usage reported: none invented


# -- models: configured, fetched, cached --------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(path))
    return path


def test_default_model_must_be_listed() -> None:
    with pytest.raises(ValidationError, match="default_model 'qwen' is not in models"):
        EndpointConfig(name="a", base_url="http://h", models=("llama3",), default_model="qwen")


def test_an_endpoint_without_models_accepts_any_pinned_model(cache_dir: Path) -> None:
    provider = provider_for(EndpointConfig(name="any", base_url="http://127.0.0.1:9/v1"))
    assert provider.models == ()
    assert provider.default_model == PLACEHOLDER_MODEL
    assert provider.get_model("whatever/with-slash") == "whatever/with-slash"
    named = provider_for(EndpointConfig(name="any", base_url="http://h", default_model="qwen"))
    assert (named.models, named.default_model) == ((), "qwen")


async def test_fetched_models_are_cached_and_served(serve: Serve, cache_dir: Path) -> None:
    base = await serve(make_app(key="sk-test-123456789"))
    endpoint = EndpointConfig(name="local", base_url=f"{base}/v1", api_key_env="LOCAL_KEY")
    with pytest.raises(AuthenticationFailed, match="set the environment variable LOCAL_KEY"):
        await fetch_models(endpoint)
    os.environ["LOCAL_KEY"] = "sk-test-123456789"
    try:
        found = await fetch_models(endpoint)
    finally:
        del os.environ["LOCAL_KEY"]
    assert found == ["gpt-4o-mini", "llama3"]
    path = save_models(endpoint, found)
    assert path == models_cache_path("local") == cache_dir / "models" / "local.json"
    assert json.loads(path.read_text())["base_url"] == f"{base}/v1"
    assert cached_models(endpoint) == ("gpt-4o-mini", "llama3")
    provider = provider_for(endpoint)
    assert (provider.models, provider.default_model) == (("gpt-4o-mini", "llama3"), "gpt-4o-mini")
    chosen = provider_for(endpoint.model_copy(update={"default_model": "phi3"}))
    assert chosen.models == ("phi3", "gpt-4o-mini", "llama3")
    listed = provider_for(endpoint.model_copy(update={"models": ("llama3",)}))
    assert listed.models == ("llama3",)  # the configuration wins over the cache
    moved = endpoint.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
    assert cached_models(moved) == ()  # fetched from another server: not trusted


def test_a_broken_cache_is_ignored_and_said_so(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = EndpointConfig(name="local", base_url="http://127.0.0.1:9/v1")
    path = models_cache_path("local")
    assert cache_problem(endpoint) is None  # none cached: nothing to say
    path.parent.mkdir(parents=True)
    for text, why in [
        ("{not json", "Expecting property name"),
        ('{"models": "llama3"}', "no list of model names in it"),
        ("[]", "no list of model names in it"),
        (
            '{"base_url": "http://user:pw@old:1/v1", "models": ["a"]}',
            "fetched from http://user:***@old:1/v1, the endpoint is now http://127.0.0.1:9/v1",
        ),
    ]:
        path.write_text(text)
        with caplog.at_level(logging.WARNING, logger="llmrelay"):
            assert cached_models(endpoint) == ()
        problem = cache_problem(endpoint)
        assert problem is not None
        assert problem.startswith(f"[[endpoints]] 'local': ignoring its model cache {path}: ")
        assert why in problem
        assert problem.endswith("; run `llmrelay models --refresh local`")
        assert caplog.messages[-1] == problem
    path.write_bytes(b"\xff\xfe")
    assert "invalid start byte" in (cache_problem(endpoint) or "")
    save_models(endpoint, ["llama3"])
    assert (cached_models(endpoint), cache_problem(endpoint)) == (("llama3",), None)
    # ``llmrelay config`` says it, for an endpoint that relies on the cache only.
    path.write_text("{not json")
    config = tmp_path / "config.toml"
    config.write_text('[[endpoints]]\nname = "local"\nbase_url = "http://127.0.0.1:9/v1"\n')
    env = {"LLMRELAY_CONFIG": str(config), "LLMRELAY_CACHE_DIR": str(cache_dir)}
    shown = CliRunner().invoke(cli, ["config"], env=env)
    assert shown.exit_code == 0
    assert f"warning: [[endpoints]] 'local': ignoring its model cache {path}: " in shown.stderr
    config.write_text(config.read_text() + 'models = ["llama3"]\n')
    listed = CliRunner().invoke(cli, ["config"], env=env)
    assert "model cache" not in listed.stderr  # its models are configured: the cache is unused


async def test_a_refused_refresh_says_the_servers_message(serve: Serve, cache_dir: Path) -> None:
    base = await serve(make_app(key="sk-right-123456789"))
    endpoint = EndpointConfig(name="local", base_url=f"{base}/v1", api_key_env="LOCAL_KEY")
    os.environ["LOCAL_KEY"] = "sk-wrong-123456789"
    try:
        with pytest.raises(AuthenticationFailed) as refused:
            await fetch_models(endpoint)
    finally:
        del os.environ["LOCAL_KEY"]
    assert str(refused.value) == ("local: HTTP 401: Incorrect API key provided. (invalid_api_key)")


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"models": ["a"]}, "not OpenAI's"),
        # These replaced a good cache with nothing, or put escapes on the user's terminal.
        ({"data": []}, "the model list is empty"),
        ({"data": [{"id": "ok"}, {"name": "x"}]}, "entry 1 has no usable 'id'"),
        ({"data": [{"id": "ok"}, 5]}, "entry 1 has no usable 'id'"),
        ({"data": [{"id": "  "}]}, "entry 0 has no usable 'id'"),
        ({"data": [{"id": "\u001b[31mRED"}]}, "entry 0 has no usable 'id'"),
        ({"data": [{"id": "new\nline"}]}, "entry 0 has no usable 'id'"),
    ],
)
async def test_a_model_list_of_another_shape_is_invalid(
    serve: Serve, answer: object, words: str
) -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    base = await serve(app)
    with pytest.raises(errors.InvalidResponse, match=words):
        await fetch_models(EndpointConfig(name="odd", base_url=f"{base}/v1"))


def test_llmrelay_models_refresh(tmp_path: Path, cache_dir: Path) -> None:
    """``llmrelay models --refresh local`` fetches, caches, and the next listing serves them."""
    config = tmp_path / "config.toml"
    env = {"LLMRELAY_CONFIG": str(config), "LLMRELAY_CACHE_DIR": str(cache_dir)}
    path = cache_dir / "models" / "local.json"
    runner = CliRunner()
    with background_servers() as serve_in_thread:
        base = serve_in_thread(make_app())
        config.write_text(f'[[endpoints]]\nname = "local"\nbase_url = "{base}/v1"\n')
        result = run_cli("models", "--refresh", "local", env=env)  # as a user runs it
        assert result.returncode == 0, result.stderr
        assert result.stderr == f"local: 2 model(s) cached in {path}\n"
        assert result.stdout.splitlines() == ["gpt-4o-mini  local, pizzagpt", "llama3       local"]
        after = runner.invoke(cli, ["models", "--json"], env=env)
        assert json.loads(after.stdout) == {
            "gpt-4o-mini": ["local", "pizzagpt"],
            "llama3": ["local"],
        }
        blocked = tmp_path / "a-file"
        blocked.write_text("")
        unwritable = run_cli(
            "models", "--refresh", "local", env={**env, "LLMRELAY_CACHE_DIR": str(blocked)}
        )
        assert unwritable.returncode == 1
        assert unwritable.stderr == (
            f"error: cannot write the model cache in {blocked / 'models'}: Not a directory "
            "(set LLMRELAY_CACHE_DIR to a writable directory)\n"
        )
        unknown = runner.invoke(cli, ["models", "--refresh", "nope"], env=env)
        assert unknown.exit_code == 2
        assert "no [[endpoints]] entry is named 'nope'" in unknown.stderr
        assert "(configured: local)" in unknown.stderr
        # One endpoint failing does not stop the others being refreshed.
        config.write_text(
            f'[[endpoints]]\nname = "local"\nbase_url = "{base}/v1"\n'
            '[[endpoints]]\nname = "dead"\nbase_url = "http://127.0.0.1:9/v1"\n'
        )
        path.unlink()
        both = run_cli(
            "models",
            "--refresh",
            "dead",
            "--refresh",
            "local",
            env={**env, "LLMRELAY_MAX_RETRIES": "0"},
        )
        assert both.returncode == 1
        assert both.stderr.splitlines()[0].startswith("error: dead: cannot connect to ")
        assert both.stderr.splitlines()[0].endswith(" (its previous list is kept)")
        assert both.stderr.splitlines()[1] == f"local: 2 model(s) cached in {path}"
        assert "llama3       local" in both.stdout  # the listing still comes
        config.write_text(f'[[endpoints]]\nname = "local"\nbase_url = "{base}/v1"\n')
    down = runner.invoke(
        cli, ["models", "--refresh", "local"], env={**env, "LLMRELAY_MAX_RETRIES": "0"}
    )
    assert down.exit_code == 1
    assert down.stderr.startswith("error: local: cannot connect to 127.0.0.1:")
    assert json.loads(path.read_text())["models"] == ["gpt-4o-mini", "llama3"]  # kept


async def test_a_key_the_server_quotes_back_is_scrubbed_whatever_its_shape(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Not a vendor shape (sk-..., Bearer ...): only knowing the value can hide it.
    key = "plainsecretvalue42"

    async def refuse(request: web.Request) -> web.Response:
        sent = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response(
            {"error": {"message": f"Incorrect API key provided: {sent}", "code": "invalid"}},
            status=401,
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    base = await serve(app)
    endpoint = EndpointConfig(
        name="quoter", base_url=f"{base}/v1", models=("m",), api_key_env="QUOTER_KEY"
    )
    monkeypatch.setenv("QUOTER_KEY", key)
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    for stream in (False, True):
        refused = r"Incorrect API key provided: \*\*\*"
        with pytest.raises(AuthenticationFailed, match=refused) as info:
            await provider_for(endpoint).create_async_generator("m", HI, stream=stream).text()
        shown = f"{info.value} {info.value!r} {info.value.body}"
        assert key not in shown
    assert "Incorrect API key" in caplog.text
    assert key not in caplog.text


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"weight": float("nan")}, r"messages\[0\]\.weight holds nan"),
        ({"deep": {"a": [1, float("-inf")]}}, r"messages\[0\]\.deep holds -inf"),
        ({"tags": {"a", "b"}}, r"messages\[0\]\.tags holds a set"),
        ({"blob": b"\xff"}, r"messages\[0\]\.blob holds bytes"),
        ({"blob": b"abc"}, r"messages\[0\]\.blob holds bytes"),
        ({"z": 1 + 2j}, r"messages\[0\]\.z holds a complex number"),
        ({"m": {1: "a"}}, r"messages\[0\]\.m holds the key 1, not a string"),
        ({"name": "x\ud800"}, "lone surrogate"),
    ],
)
async def test_message_fields_json_cannot_carry_are_refused_not_altered(
    serve: Serve, extra: dict[str, Any], words: str
) -> None:
    provider, app = await _provider(serve)
    messages = [{"role": "user", "content": "Hi", **extra}]
    for stream in (False, True):
        with pytest.raises(errors.InvalidRequest, match=words):
            await provider.create_async_generator("llama3", messages, stream=stream).text()
    assert app[STATE].hits == 0


async def test_message_fields_go_in_the_json_form_pydantic_gives_them(serve: Serve) -> None:
    import datetime
    import uuid

    provider, app = await _provider(serve)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    ident = uuid.UUID(int=7)
    parts = [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "u"}}]
    messages = [
        {"role": "user", "content": "Hi", "sent_at": when, "id": ident},
        {"role": "user", "content": parts},
    ]
    await provider.create_async_generator("llama3", messages, stream=False).text()
    sent = app[STATE].last_body["messages"]
    assert sent[0] == {
        "role": "user",
        "content": "Hi",
        "sent_at": "2024-01-02T03:04:05",
        "id": str(ident),
    }
    assert sent[1] == {"role": "user", "content": parts}


async def test_a_nan_inside_a_content_part_is_refused(serve: Serve) -> None:
    provider, app = await _provider(serve)
    parts = [{"type": "image_url", "image_url": {"url": "u", "detail": float("nan")}}]
    with pytest.raises(errors.InvalidRequest, match=r"messages\[0\]\.content\[0\]\.image_url"):
        await provider.create_async_generator("llama3", [{"role": "user", "content": parts}]).text()
    assert app[STATE].hits == 0


@pytest.mark.parametrize("content_type", ["Text/Event-Stream", "TEXT/EVENT-STREAM; charset=utf-8"])
async def test_the_event_stream_media_type_matches_in_any_case(
    serve: Serve, content_type: str
) -> None:
    async def stream(request: web.Request) -> web.Response:
        return web.Response(body=_sse(_EVENTS, "\n"), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    base = await serve(app)
    provider = provider_for(EndpointConfig(name="cased", base_url=f"{base}/v1", models=("m",)))
    chunks = [c async for c in provider.create_async_generator("m", HI, stream=True)]
    assert chunks == EXPECTED


@pytest.mark.parametrize("stream", [False, True])
async def test_credentials_in_the_base_url_beside_a_key_are_the_callers_to_fix(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """aiohttp refuses a URL's user:password@ with an Authorization header before sending; that
    was the provider's InvalidResponse ("the provider raised ValueError")."""
    monkeypatch.setenv("LOCAL_KEY", "sk-test-0123456789")
    provider, app = await _provider(serve, key_env="LOCAL_KEY")
    base = provider.url.replace("http://", "http://bob:pw-9-secret@")
    stream_of = provider.create_async_generator("llama3", HI, base_url=base, stream=stream)
    with pytest.raises(errors.InvalidRequest) as info:
        await stream_of.text()
    assert str(info.value) == (
        "local: the base URL's user:password@ cannot be sent with the provider's own "
        "Authorization header (its API key): remove the credentials from the URL"
    )
    assert app[STATE].hits == 0


async def test_a_host_header_from_the_configuration_is_sent(serve: Serve) -> None:
    """A virtual host behind an address: the endpoint's Host reaches the server."""
    app = make_app()
    base = await serve(app)
    endpoint = EndpointConfig(
        name="internal",
        base_url=f"{base}/v1",
        models=("llama3",),
        headers={"Host": "api.internal.example"},
    )
    answer = await provider_for(endpoint).create_async_generator("llama3", HI).text()
    assert answer
    assert app[STATE].last_headers["Host"] == "api.internal.example"


_DETAILED_USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 12,
    "total_tokens": 32,
    "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 8, "accepted_prediction_tokens": 0},
    "prompt_cache_hit_tokens": 16,  # DeepSeek's
    "cost": 0.00042,  # OpenRouter's
}


def test_usage_details_are_kept_in_whole_answers_and_streams() -> None:
    """What a server reports beside the counts reaches the caller as it came."""
    from llmrelay_openai_compat._provider import _completion

    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "usage": _DETAILED_USAGE,
    }
    usage = _completion("p", answer).usage
    assert usage is not None
    assert usage.model_dump() == _DETAILED_USAGE
    events: list[dict[str, Any] | str] = [
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": _DETAILED_USAGE},
        "[DONE]",
    ]
    streamed = _parse([_sse(events, "\n")])
    assert streamed == ["Hi", Usage.model_validate(_DETAILED_USAGE), FinishReason("stop")]
    reported = [item for item in streamed if isinstance(item, Usage)]
    assert reported[0].model_dump() == _DETAILED_USAGE


def test_usage_without_a_total_is_summed_and_its_details_kept() -> None:
    from llmrelay_openai_compat._provider import _usage

    usage = _usage("p", {"prompt_tokens": 2, "completion_tokens": 3, "queue_time": 0.01})
    assert (usage.total_tokens, usage.model_extra) == (5, {"queue_time": 0.01})
    with pytest.raises(errors.InvalidResponse, match="usage"):
        _usage("p", {"prompt_tokens": -1, "completion_tokens": 3, "cost": 1})
