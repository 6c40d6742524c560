"""The OpenAI-compatible provider and the clients, replayed from cassettes/openai_compat/.

The cassettes were recorded by tests/record_openai_cassettes.py against the replica; here no
server runs at all: every answer comes from a file, and a request that is not in it raises
``CassetteMismatch`` instead of reaching the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmrelay import (
    AsyncClient,
    Chunk,
    Client,
    FinishReason,
    Reasoning,
    Registry,
    Usage,
    errors,
)
from llmrelay._cassettes import cassette
from llmrelay._config import EndpointConfig
from llmrelay._endpoints import fetch_models
from llmrelay_openai_compat import provider_for
from tests.endpoint_support import endpoint, install_endpoints, write_config
from tests.openai_cases import (
    BASE_URL,
    BY_NAME,
    CASES,
    CASSETTES,
    HI,
    KEY_ENV,
    MODELS,
    MODELS_CASSETTE,
    SECRETS,
)
from tests.record_openai_cassettes import check_scrubbed

USAGE = Usage(9, 3, 12)
LOCAL = EndpointConfig(name="local", base_url=BASE_URL, models=MODELS, api_key_env=KEY_ENV)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any key does: headers are not matched on replay, and the recorded one was scrubbed.
    monkeypatch.setenv(KEY_ENV, "sk-any-key-for-replay")


@pytest.fixture
def configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_plugins: Callable[..., Registry]
) -> Registry:
    """The endpoint the cassettes were recorded for, configured as a user would."""
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))
    write_config(
        tmp_path / "config.toml", monkeypatch, endpoint("local", BASE_URL, api_key_env=KEY_ENV)
    )
    return install_endpoints(use_plugins)


async def _items(name: str) -> list[Chunk | str]:
    """What the provider yields for a case, then the error it raises (as "Type: reason")."""
    case = BY_NAME[name]
    items: list[Chunk | str] = []
    with cassette(case.path) as played:
        try:
            async for item in provider_for(LOCAL).create_async_generator(
                "llama3", case.messages, max_retries=0, **case.options
            ):
                items.append(item)
        except errors.ProviderError as exc:
            items.append(f"{type(exc).__name__}: {exc.reason}")
        assert played.all_played
    return items


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("non_stream", ["Echo: Hi there", USAGE, FinishReason("stop")]),
        ("stream_usage", ["Echo: ", "Hi ", "there", USAGE, FinishReason("stop")]),
        ("stream_no_usage", ["Echo: ", "Hi ", "there", FinishReason("stop")]),
        (
            "unauthorized_401",
            ["AuthenticationFailed: HTTP 401: Incorrect API key provided. (invalid_api_key)"],
        ),
        (
            "rate_limited_429",
            ["RateLimited: HTTP 429: Rate limit reached for requests. (rate_limit_exceeded)"],
        ),
        (
            "error_event",
            [
                "Echo: ",
                "Hi ",
                "StreamInterrupted: failed after text was sent: The model is overloaded.",
            ],
        ),
        (
            "stream_reasoning",
            [
                *map(Reasoning, ["The ", "user ", "wrote ", "'Hi ", "there', ", "so ", "I "]),
                *map(Reasoning, ["echo ", "it."]),
                "Echo: ",
                "Hi ",
                "there",
                Usage(9, 12, 21),
                FinishReason("stop"),
            ],
        ),
        (
            "non_stream_reasoning_content",
            [
                Reasoning("The user wrote 'Hi there', so I echo it."),
                "Echo: Hi there",
                Usage(9, 12, 21),
                FinishReason("stop"),
            ],
        ),
    ],
)
async def test_provider_replays_each_case(name: str, expected: list[Chunk | str]) -> None:
    assert await _items(name) == expected


async def test_rate_limit_carries_retry_after() -> None:
    case = BY_NAME["rate_limited_429"]
    with cassette(case.path), pytest.raises(errors.RateLimited) as info:
        await provider_for(LOCAL).create_async_generator("llama3", HI, max_retries=0).text()
    assert (info.value.status, info.value.retry_after, info.value.retryable) == (429, 1.0, True)


async def test_a_request_not_in_the_cassette_never_reaches_the_network() -> None:
    with cassette(BY_NAME["non_stream"].path), pytest.raises(errors.CassetteMismatch):
        await (
            provider_for(LOCAL)
            .create_async_generator(
                "llama3", [{"role": "user", "content": "Something else"}], stream=False
            )
            .text()
        )


async def test_a_whole_answer_not_in_the_cassette_is_a_mismatch_through_the_client(
    configured: Registry,
) -> None:
    # The client awaits the provider's complete() directly (no ChunkStream in between): the
    # cassette's refusal must still arrive as CassetteMismatch, not as a raw vcrpy error.
    async with AsyncClient() as client:
        with cassette(BY_NAME["non_stream"].path), pytest.raises(errors.CassetteMismatch):
            await client.chat.completions.create(
                model="local/llama3", messages=[{"role": "user", "content": "Something else"}]
            )


async def test_models_list_replays() -> None:
    with cassette(MODELS_CASSETTE):
        assert await fetch_models(LOCAL) == list(MODELS)


async def test_async_client_replays_both_shapes(configured: Registry) -> None:
    async with AsyncClient() as client:
        with cassette(BY_NAME["non_stream"].path):
            completion = await client.chat.completions.create(
                model="local/llama3", messages=HI, stream=False
            )
        with cassette(BY_NAME["stream_usage"].path):
            stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
            chunks = [chunk async for chunk in stream]
    assert (completion.choices[0].message.content, completion.usage) == ("Echo: Hi there", USAGE)
    assert completion.provider == "local"
    assert [c.choices[0].delta.content for c in chunks] == ["Echo: ", "Hi ", "there", None]
    assert chunks[-1].usage == USAGE
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sync_client_replays_both_shapes(configured: Registry) -> None:
    with Client() as client:
        with cassette(BY_NAME["non_stream"].path):
            completion = client.chat.completions.create(model="llama3", messages=HI)
        with cassette(BY_NAME["stream_no_usage"].path):
            chunks = list(
                client.chat.completions.create(
                    model="llama3",
                    messages=HI,
                    stream=True,
                    stream_options={"include_usage": False},
                )
            )
    assert completion.choices[0].message.content == "Echo: Hi there"
    assert [c.usage for c in chunks] == [None] * 4  # none reported, none invented
    assert {c.provider for c in chunks} == {"local"}


async def test_sync_client_replays_inside_a_running_loop(configured: Registry) -> None:
    with Client() as client, cassette(BY_NAME["stream_usage"].path):
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(model="llama3", messages=HI, stream=True)
        )
    assert text == "Echo: Hi there"


@pytest.mark.parametrize("path", sorted(CASSETTES.glob("*.yaml")), ids=lambda p: p.stem)
def test_cassettes_hold_no_keys(path: Path) -> None:
    check_scrubbed(path)  # neither key; Authorization is "***"
    text = path.read_text()
    assert all(secret not in text for secret in SECRETS)
    (interaction,) = yaml.safe_load(text)["interactions"]
    assert interaction["request"]["headers"]["Authorization"] == ["***"]
    assert interaction["request"]["uri"].startswith(BASE_URL)


def test_every_case_has_its_cassette() -> None:
    assert {p.stem for p in CASSETTES.glob("*.yaml")} == {c.name for c in CASES} | {"models"}
