"""The OpenAI-compatible provider against the replica: JSON, SSE in every framing, errors."""

from __future__ import annotations

import pytest
from aiohttp import web

from llmrelay import FinishReason, Usage
from llmrelay._config import EndpointConfig
from llmrelay.errors import (
    AuthenticationFailed,
    EndpointNotFound,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from llmrelay_openai_compat import OpenAICompatible, provider_for
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
