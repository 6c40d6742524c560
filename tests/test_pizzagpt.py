"""The Pizzagpt reference provider: every shipped cassette, and the live protocol on a replica."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

import llmrelay
from llmrelay import FinishReason, Provider
from llmrelay._cassettes import cassette
from llmrelay.errors import (
    CloudflareChallenge,
    InvalidRequest,
    InvalidResponse,
    MisuseDetected,
    ModelNotFound,
    ServerError,
    UnsupportedOption,
)
from llmrelay_pizzagpt import MISUSE_TEXT, Pizzagpt
from tests.pizzagpt_cases import BY_NAME, CASES
from tests.replicas.pizzagpt import ANSWERS, STATE, answer_for, make_app
from tests.support import Serve


def test_declares_the_provider_contract() -> None:
    assert issubclass(Pizzagpt, Provider)
    assert Pizzagpt.name == "pizzagpt"
    assert Pizzagpt.url == "https://www.pizzagpt.it"
    assert Pizzagpt.api_endpoint == "/api/chatx-completion"
    assert Pizzagpt.default_model == "gpt-4o-mini"
    assert Pizzagpt.models == ("gpt-4o-mini",)
    assert Pizzagpt.working is False  # last seen answering in January 2025
    assert Pizzagpt.supports_stream is False
    assert Pizzagpt.needs_auth is False


def test_is_discovered_through_its_entry_point() -> None:
    info = llmrelay.get_registry().providers["pizzagpt"]
    assert info.provider is Pizzagpt
    assert info.distribution == "llmrelay-pizzagpt"


def test_every_case_has_a_cassette() -> None:
    shipped = {p.stem for p in BY_NAME["seed_hello"].path.parent.glob("*.yaml")}
    assert shipped == set(BY_NAME)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("seed_hello", ANSWERS["Привет, как дела?"]),
        (
            "seed_poem_history",
            answer_for(
                "User: Напиши короткий стих о лете.\n"
                "Assistant: Солнце светит ярко, птички поют,\nЛето наступило, радость вокруг!\n"
                "Assistant:"
            ),
        ),
        ("system_user", "Blue."),
        ("top_level_content", "You asked: Ciao!"),
    ],
)
async def test_answers_replay_as_text_then_stop(case: str, expected: str) -> None:
    with cassette(BY_NAME[case].path) as recorded:
        items = [
            item
            async for item in Pizzagpt.create_async_generator("gpt-4o-mini", BY_NAME[case].messages)
        ]
        assert recorded.all_played
    assert items == [expected, FinishReason("stop")]


@pytest.mark.parametrize(
    ("case", "error", "fragment"),
    [
        ("misuse_detected", MisuseDetected, MISUSE_TEXT),
        ("http_500", ServerError, "HTTP 500"),
        ("cloudflare_403", CloudflareChallenge, "Cloudflare challenge"),
        ("malformed_json", InvalidResponse, '{"answer": {"content": "Ciao'),
        ("empty_answer", InvalidResponse, "no answer in the response"),
    ],
)
async def test_failures_replay_as_typed_errors(
    case: str, error: type[Exception], fragment: str
) -> None:
    with cassette(BY_NAME[case].path), pytest.raises(error) as info:
        await Pizzagpt.create_async_generator(
            "gpt-4o-mini", BY_NAME[case].messages, max_retries=0
        ).text()
    assert fragment in str(info.value)
    assert info.value.provider == "pizzagpt"  # type: ignore[attr-defined]


async def test_misuse_is_a_value_error_as_the_seed_examples_expect() -> None:
    with cassette(BY_NAME["misuse_detected"].path), pytest.raises(ValueError, match="Misuse"):
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini", BY_NAME["misuse_detected"].messages
        ):
            pass


async def test_both_call_forms_of_the_seed_examples_work() -> None:
    case = BY_NAME["seed_hello"]
    with cassette(case.path, mode="replay"):
        generator = await Pizzagpt.create_async_generator(
            model="gpt-4o-mini", messages=case.messages, proxy=None
        )
        first = [item async for item in generator]
    with cassette(case.path):
        second = [item async for item in Pizzagpt.create_async_generator("", case.messages)]
    assert first == second
    assert "".join(str(item) for item in first) == ANSWERS["Привет, как дела?"]


# -- the live protocol, against the replica on 127.0.0.1 ------------------------------------


@pytest.fixture
def replica() -> web.Application:
    return make_app()


async def test_sends_the_protocol_exactly(serve: Serve, replica: web.Application) -> None:
    base = await serve(replica)
    text = await Pizzagpt.create_async_generator(
        "gpt-4o-mini", BY_NAME["system_user"].messages, base_url=base
    ).text()
    state = replica[STATE]
    assert text == "Blue."
    assert state.hits == 1
    headers = {k.lower(): v for k, v in state.last_headers.items()}
    assert headers["x-secret"] == "Marinara"
    assert headers["content-type"] == "application/json"
    assert headers["origin"] == "https://www.pizzagpt.it"
    assert headers["referer"] == "https://www.pizzagpt.it/en"
    assert headers["accept"] == "application/json"
    assert "Chrome/" in headers["user-agent"]
    assert json.loads(state.last_body) == {
        "question": "System: You are a terse assistant. Answer in one word.\n"
        "User: What colour is the sky on a clear day?\nAssistant:"
    }


async def test_a_change_to_the_headers_is_sent_on_the_next_request(
    serve: Serve, replica: web.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = await serve(replica)
    hi = [{"role": "user", "content": "Hi"}]
    await Pizzagpt.create_async_generator("gpt-4o-mini", hi, base_url=base).text()
    monkeypatch.setattr(Pizzagpt, "headers", {**Pizzagpt.headers, "X-Extra": "1"})
    await Pizzagpt.create_async_generator("gpt-4o-mini", hi, base_url=base).text()
    assert replica[STATE].last_headers.get("X-Extra") == "1"
    Pizzagpt.headers["X-Extra"] = "2"  # the same dict, changed in place
    await Pizzagpt.create_async_generator("gpt-4o-mini", hi, base_url=base).text()
    assert replica[STATE].last_headers.get("X-Extra") == "2"


async def test_url_is_built_at_call_time_from_the_class_attribute(
    serve: Serve,
    replica: web.Application,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Pizzagpt, "url", await serve(replica))
    assert (
        await Pizzagpt.create_async_generator(
            "gpt-4o-mini", [{"role": "user", "content": "Hi"}]
        ).text()
        == "You asked: Hi"
    )
    assert replica[STATE].hits == 1


async def test_bad_input_fails_before_any_io(serve: Serve, replica: web.Application) -> None:
    base = await serve(replica)
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        Pizzagpt.create_async_generator(
            "gpt-4o-mini", [{"role": "bot", "content": "x"}], base_url=base
        )
    with pytest.raises(UnsupportedOption, match="does not support option") as refused:
        Pizzagpt.create_async_generator(
            "gpt-4o-mini", [{"role": "user", "content": "x"}], temperature=0.2, base_url=base
        )
    assert (refused.value.provider, refused.value.options) == ("pizzagpt", ["temperature"])
    assert refused.value.supported == []
    assert isinstance(refused.value, InvalidRequest)
    with pytest.raises(InvalidRequest, match="proxy scheme"):
        Pizzagpt.create_async_generator(
            "gpt-4o-mini", [{"role": "user", "content": "x"}], proxy="ftp://h:1", base_url=base
        )
    with pytest.raises(ModelNotFound, match="gpt-4o-mini"):
        Pizzagpt.create_async_generator(
            "gpt-4o-mnii", [{"role": "user", "content": "x"}], base_url=base
        )
    assert replica[STATE].hits == 0


async def test_unsupported_options_may_be_dropped_on_request(
    serve: Serve, replica: web.Application
) -> None:
    base = await serve(replica)
    text = await Pizzagpt.create_async_generator(
        "gpt-4o-mini",
        [{"role": "user", "content": "x"}],
        temperature=0.2,
        drop_unsupported=True,
        base_url=base,
    ).text()
    assert text == "You asked: x"
    assert json.loads(replica[STATE].last_body) == {"question": "x"}


@pytest.mark.parametrize("case", [c.name for c in CASES])
async def test_replica_reproduces_every_cassette(serve: Serve, case: str) -> None:
    """The cassettes are what the replica says today: re-recording would change nothing."""
    import yaml

    app = make_app(BY_NAME[case].mode)
    base = await serve(app)
    stream = Pizzagpt.create_async_generator(
        "gpt-4o-mini", BY_NAME[case].messages, base_url=base, max_retries=0
    )
    try:
        live: object = await stream.text()
    except llmrelay.LLMRelayError as exc:
        live = type(exc)
    recorded = yaml.safe_load(BY_NAME[case].path.read_text())["interactions"]
    assert len(recorded) == 1
    assert json.loads(recorded[0]["request"]["body"]) == json.loads(app[STATE].last_body)
    assert recorded[0]["request"]["uri"] == "https://www.pizzagpt.it/api/chatx-completion"
    with cassette(BY_NAME[case].path):
        try:
            replayed: object = await Pizzagpt.create_async_generator(
                "gpt-4o-mini", BY_NAME[case].messages, max_retries=0
            ).text()
        except llmrelay.LLMRelayError as exc:
            replayed = type(exc)
    assert live == replayed


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            r"messages\[1\] has a 'image_url' part",
        ),
        ({"role": "user", "content": "Hi", "name": "alice"}, r"messages\[1\] has name"),
        (
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]},
            r"messages\[1\] has a text part with cache_control",
        ),
    ],
)
async def test_what_the_question_cannot_carry_is_refused_not_dropped(
    serve: Serve, replica: web.Application, message: dict[str, object], named: str
) -> None:
    """The service takes one question: an image, a name or a part's extra field would be left
    out of it without a word, so the request is refused, naming what, before any I/O."""
    base = await serve(replica)
    messages = [{"role": "system", "content": "Be brief."}, message]
    with pytest.raises(InvalidRequest, match=named):
        await Pizzagpt.create_async_generator("gpt-4o-mini", messages, base_url=base).text()
    assert replica[STATE].hits == 0
    # the same conversation in text only is answered
    text_only = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert await Pizzagpt.create_async_generator("gpt-4o-mini", text_only, base_url=base).text()
