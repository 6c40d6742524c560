"""Request options and flags are checked before any I/O, with OpenAI's types and ranges.

The same values are refused by every way in (the client, ``relay()``, a provider called
directly) and accepted exactly where ``llmrelay serve`` accepts them: the hypothesis test below
holds the library's check to the server's request model.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider, Registry, errors
from llmrelay._options import OPTION_TYPES, check_options
from llmrelay.server._request import ChatRequest
from tests.support import Plugin

HI = [{"role": "user", "content": "hi"}]


class Recorder(Provider):
    """Supports every OpenAI option; answers with the options its call received."""

    name = "recorder"
    url = "http://127.0.0.1:9"
    default_model = "rec-1"
    models = ("rec-1",)
    supported_options = frozenset(OPTION_TYPES)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield repr(sorted(call.options.items()))
        yield FinishReason("stop")


@pytest.fixture
def recorder(use_plugins: Callable[..., Registry]) -> None:
    use_plugins(("recorder", Plugin(Recorder)))


BAD = [
    ({"temperature": "hot"}, "option 'temperature' must be a finite number, got 'hot'"),
    ({"temperature": True}, "option 'temperature' must be a finite number, got True"),
    ({"top_p": math.nan}, "option 'top_p' must be a finite number, got nan"),
    ({"max_tokens": 1.5}, "option 'max_tokens' must be an integer, got 1.5"),
    ({"max_tokens": "256"}, "option 'max_tokens' must be an integer, got '256'"),
    ({"max_completion_tokens": True}, "option 'max_completion_tokens' must be an integer"),
    ({"stop": 5}, "option 'stop' must be a string or a list of strings, got 5"),
    ({"stop": ["a", 2]}, "option 'stop' must be a string or a list of strings, got ['a', 2]"),
    ({"seed": 1.5}, "option 'seed' must be an integer, got 1.5"),
    ({"presence_penalty": "0"}, "option 'presence_penalty' must be a finite number, got '0'"),
    ({"frequency_penalty": math.inf}, "option 'frequency_penalty' must be a finite number"),
    ({"logit_bias": {"50256": "x"}}, "option 'logit_bias' must be an object of token ids to"),
    ({"logit_bias": "50256"}, "option 'logit_bias' must be an object of token ids to numbers"),
    ({"response_format": "json"}, "option 'response_format' must be an object, got 'json'"),
    ({"user": 7}, "option 'user' must be a string, got 7"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
async def test_bad_option_values_are_refused_by_every_way_in(
    options: dict[str, Any], message: str, recorder: None
) -> None:
    async with llmrelay.AsyncClient() as client:
        with pytest.raises(errors.InvalidRequest) as info:
            await client.chat.completions.create(model="rec-1", messages=HI, **options)
    assert str(info.value).startswith(message)
    with pytest.raises(errors.InvalidRequest) as info:
        llmrelay.relay("rec-1", HI, **options)
    assert str(info.value).startswith(message)
    with pytest.raises(errors.InvalidRequest) as info:
        Recorder.create_async_generator("rec-1", HI, **options)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "options",
    [
        {
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 1,
            "stop": ("a", "b", "c", "d"),  # a tuple: the client's hint says Sequence[str]
            "seed": -5,
            "presence_penalty": -2.0,
            "logit_bias": {"50256": -100},
            "response_format": {"type": "json_object"},
            "user": "u-1",
        },
        # Beyond OpenAI's ranges, as vLLM, llama.cpp and Ollama take them: the upstream judges.
        {
            "temperature": 2.5,
            "max_tokens": 0,
            "stop": ["a", "b", "c", "d", "e"],
            "presence_penalty": 3,
            "logit_bias": {50256: 1.5},  # an int key, as Python code writes it; a float bias
        },
        {"logit_bias": [[15043, 1.0]]},  # llama.cpp's list form
    ],
)
async def test_good_values_go_through_unchanged(options: dict[str, Any], recorder: None) -> None:
    async with llmrelay.AsyncClient() as client:
        answer = await client.chat.completions.create(model="rec-1", messages=HI, **options)
    assert answer.choices[0].message.content == repr(sorted(options.items()))


def test_a_bad_value_of_an_option_a_provider_does_not_support_is_still_refused(
    use_plugins: Callable[..., Registry],
) -> None:
    """Refused once, up front, in its own words: not skipped provider by provider and then
    reported as "not supported" by the first."""

    class Plain(Recorder):
        name = "plain"
        supported_options = frozenset()

    use_plugins(("plain", Plugin(Plain)), ("recorder", Plugin(Recorder)))
    with pytest.raises(errors.InvalidRequest, match="option 'temperature' must be a finite"):
        llmrelay.relay("rec-1", HI, temperature="hot")


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, "x"])
async def test_flags_must_be_booleans(value: object, recorder: None) -> None:
    """``bool("false")`` is True: a flag given as anything but a bool is refused (the
    client's ``stream`` also takes None, as OpenAI's SDK does)."""
    stream = f"stream must be True or False, got {value!r}"
    if value is not None:
        client_stream = f"stream must be True, False or None, got {value!r}"
        async with llmrelay.AsyncClient() as client:
            with pytest.raises(errors.InvalidRequest, match=f"^{client_stream}$"):
                await client.chat.completions.create(model="rec-1", messages=HI, stream=value)
        with (
            llmrelay.Client() as sync,
            pytest.raises(errors.InvalidRequest, match=f"^{client_stream}$"),
        ):
            sync.chat.completions.create(model="rec-1", messages=HI, stream=value)  # type: ignore[call-overload]
    with pytest.raises(errors.InvalidRequest, match=f"^{stream}$"):
        llmrelay.relay("rec-1", HI, stream=value)
    drop = f"drop_unsupported must be True or False, got {value!r}"
    with pytest.raises(errors.InvalidRequest, match=f"^{drop}$"):
        Recorder.create_async_generator("rec-1", HI, drop_unsupported=value)
    with pytest.raises(errors.InvalidRequest, match=f"^{drop}$"):
        llmrelay.relay("rec-1", HI, drop_unsupported=value)


async def test_the_clients_stream_takes_none_for_false(recorder: None) -> None:
    """OpenAI's SDK takes ``stream=None`` (wrappers pass ``kwargs.get("stream")``)."""
    async with llmrelay.AsyncClient() as client:
        answer = await client.chat.completions.create(model="rec-1", messages=HI, stream=None)
    assert isinstance(answer, llmrelay.ChatCompletion)
    with llmrelay.Client() as sync:
        whole = sync.chat.completions.create(model="rec-1", messages=HI, stream=None)  # type: ignore[call-overload]
    assert isinstance(whole, llmrelay.ChatCompletion)


@pytest.mark.parametrize("model", [5, 1.5, ["rec-1"], b"rec-1"])
def test_a_model_that_is_not_a_string_is_refused(model: object, recorder: None) -> None:
    message = f"^model must be a string, got {type(model).__name__}$"
    with pytest.raises(errors.InvalidRequest, match=message):
        llmrelay.relay(model, HI)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequest, match=message):
        Recorder.create_async_generator(model, HI)  # type: ignore[arg-type]


def test_a_timeout_beyond_any_float_is_refused(recorder: None) -> None:
    for start in (
        lambda: llmrelay.relay("rec-1", HI, timeout=10**400),
        lambda: Recorder.create_async_generator("rec-1", HI, timeout=10**400),
    ):
        with pytest.raises(errors.InvalidRequest, match="got an integer of 401 digits"):
            start()


# -- the library and the server agree -------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=6),
    st.tuples(st.text(max_size=3)),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
)


@given(name=st.sampled_from(sorted(OPTION_TYPES)), value=_VALUES)
@example(name="temperature", value=2)
@example(name="temperature", value=2.0000001)
@example(name="max_tokens", value=0)
@example(name="stop", value=["a", "b", "c", "d"])
@example(name="stop", value=["a", "b", "c", "d", "e"])
@example(name="logit_bias", value={"1": True})
def test_the_library_accepts_whatever_the_server_accepts(name: str, value: Any) -> None:
    """One option at a time, through ``check_options`` and through the server's request
    model (which speaks JSON: a tuple arrives as a list). The server adds OpenAI's ranges to
    the library's types, so it may refuse what the library takes, never the reverse."""
    try:
        check_options({name: value})
        library = True
    except errors.InvalidRequest:
        library = False
    wire = list(value) if isinstance(value, tuple) else value
    try:
        ChatRequest.model_validate({"model": "m", "messages": HI, name: wire})
        server = True
    except ValidationError:
        server = False
    assert library or not server, (name, value)


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999/v1", "is not a valid URL (Port out of range 0-65535)"),
        ("http://127.0.0.1:8000/v1#frag", "a base URL has no fragment (remove the #... part)"),
        ("http:///v1", "has no host (e.g. http://127.0.0.1:8000/v1)"),
        ("ftp://127.0.0.1/v1", "must be an absolute http:// or https:// URL"),
        ("http://bob:s3cret-pw-0@[::1", "is not a valid URL (Invalid IPv6 URL)"),
    ],
)
def test_a_bad_base_url_is_the_callers_to_fix(base_url: str, reason: str, recorder: None) -> None:
    """Refused before any I/O as an InvalidRequest (it was the provider's InvalidResponse,
    which the relay falls back on and counts against the provider's health)."""
    for start in (
        lambda: llmrelay.relay("rec-1", HI, base_url=base_url),
        lambda: Recorder.create_async_generator("rec-1", HI, base_url=base_url),
    ):
        with pytest.raises(errors.InvalidRequest) as info:
            start()
        assert str(info.value).endswith(reason)
        assert "s3cret-pw-0" not in str(info.value)
    with pytest.raises(errors.InvalidRequest, match=r"^base_url must be an absolute http"):
        llmrelay.relay("rec-1", HI, base_url=5)
