"""Reasoning a model sends apart from its answer: kept, never mixed into the text.

Reasoning models served by vLLM, llama.cpp, Ollama, DeepSeek, Groq or OpenRouter send their
thinking in ``reasoning`` or ``reasoning_content``. A provider yields it as ``Reasoning``
chunks; the contract, the relay, both clients, the server and the CLI carry it to the caller
beside the text (the wire format's side is in tests/test_openai_compat*.py and test_server.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import pydantic
import pytest

from llmrelay import (
    AsyncClient,
    Call,
    Chunk,
    Client,
    Completion,
    FinishReason,
    Message,
    Provider,
    Reasoning,
    Registry,
    RelayStream,
    Usage,
    errors,
    relay,
)
from tests.endpoint_support import endpoint, install_endpoints, run_cli, write_config
from tests.openai_cases import BASE_URL, BY_NAME, HI, KEY_ENV
from tests.support import Plugin, Serve

THOUGHT = "The user wrote 'Hi there', so I echo it."


# -- the chunk type -----------------------------------------------------------------------------


def test_a_reasoning_chunk_is_built_as_validation_would_build_it() -> None:
    ours, theirs = Reasoning("Let me think"), Reasoning.model_validate({"text": "Let me think"})
    assert ours == theirs
    assert ours.model_fields_set == theirs.model_fields_set == {"text"}
    assert ours.__pydantic_extra__ == theirs.__pydantic_extra__
    assert ours.__pydantic_private__ == theirs.__pydantic_private__
    assert ours.model_dump() == {"text": "Let me think"}
    assert Reasoning(text="keyword") == Reasoning("keyword")
    with pytest.raises(pydantic.ValidationError):
        Reasoning()  # type: ignore[call-arg]


def test_reasoning_is_not_text() -> None:
    # The common loop `print(item, end="")` prints the answer only, as with FinishReason.
    assert str(Reasoning("thinking")) == ""
    assert repr(Reasoning("thinking")) == "Reasoning('thinking')"
    with pytest.raises(pydantic.ValidationError):
        Reasoning.model_validate({"text": 5})
    with pytest.raises(pydantic.ValidationError):
        Reasoning("frozen").text = "changed"  # type: ignore[misc]


def test_a_whole_answer_streams_its_reasoning_first() -> None:
    answer = Completion("Hi", FinishReason("stop"), Usage(1, 2), "Because")
    assert answer.chunks() == [Reasoning("Because"), "Hi", Usage(1, 2), FinishReason("stop")]
    assert Completion("Hi", FinishReason("stop")).chunks() == ["Hi", FinishReason("stop")]


# -- the provider contract ----------------------------------------------------------------------


def _provider(name: str, *chunks: Chunk | Exception) -> type[Provider]:
    """A provider yielding ``chunks`` in order (raising the exceptions among them)."""

    class Scripted(Provider):
        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            for chunk in chunks:
                if isinstance(chunk, Exception):
                    raise chunk
                yield chunk

    Scripted.name = name
    Scripted.url = f"http://{name}.invalid"
    Scripted.default_model = "thinker-1"
    Scripted.models = ("thinker-1",)
    Scripted.__name__ = Scripted.__qualname__ = f"Scripted_{name}"
    return Scripted


THINKER = (Reasoning("Let me "), Reasoning(""), Reasoning("think."), "Hi ", "there")


async def test_the_stream_carries_reasoning_and_collect_keeps_it_apart() -> None:
    thinker = _provider("thinker", *THINKER, Usage(4, 5), FinishReason("stop"))
    streamed = [chunk async for chunk in thinker.create_async_generator("", HI)]
    assert streamed == [*THINKER, Usage(4, 5), FinishReason("stop")]
    whole = await thinker.create_async_generator("", HI).collect()
    assert whole == Completion("Hi there", FinishReason("stop"), Usage(4, 5), "Let me think.")
    assert await thinker.create_async_generator("", HI).text() == "Hi there"


async def test_an_answer_without_reasoning_has_none() -> None:
    plain = _provider("plain", "Hi", Reasoning(""), FinishReason("stop"))
    assert (await plain.create_async_generator("", HI).collect()).reasoning is None


async def test_reasoning_may_come_between_pieces_of_text() -> None:
    # Interleaved thinking (a model that thinks again mid-answer) keeps its order in a stream.
    chunks = ("A", Reasoning("hm"), "B", FinishReason("stop"))
    interleaved = _provider("interleaved", *chunks)
    assert [c async for c in interleaved.create_async_generator("", HI)] == list(chunks)


async def test_reasoning_after_the_usage_breaks_the_contract() -> None:
    late = _provider("late", "Hi", Usage(1, 1), Reasoning("late"), FinishReason("stop"))
    # Text reached the caller first: the breach ends the stream as an interruption.
    with pytest.raises(errors.StreamInterrupted, match="reasoning after Usage"):
        await late.create_async_generator("", HI).text()


async def test_a_failure_after_reasoning_is_an_interruption_and_never_falls_back(
    use_plugins: Callable[..., Registry],
) -> None:
    """Reasoning reached the caller: another provider's answer would be spliced onto it."""
    stream = _failing_then_answering(use_plugins, Reasoning("Let me think"))
    assert not stream.delivered
    assert await anext(stream) == Reasoning("Let me think")
    assert stream.delivered
    with pytest.raises(errors.StreamInterrupted, match=r"failed after reasoning was sent: .*boom"):
        await anext(stream)
    assert stream.provider == "first"


async def test_usage_alone_is_part_of_the_answer_too(
    use_plugins: Callable[..., Registry],
) -> None:
    """A provider that reported usage, then failed: another provider's answer would follow
    that usage (two Usage chunks, spliced), so the relay stops there."""
    stream = _failing_then_answering(use_plugins, Usage(1, 1))
    assert await anext(stream) == Usage(1, 1)
    with pytest.raises(errors.StreamInterrupted, match="failed after the answer had started"):
        await anext(stream)


async def test_empty_reasoning_does_not_stop_a_fall_back(
    use_plugins: Callable[..., Registry],
) -> None:
    stream = _failing_then_answering(use_plugins, Reasoning(""))
    assert (await stream.collect()).text == "other answer"


def _failing_then_answering(
    use_plugins: Callable[..., Registry], first_chunk: Chunk
) -> RelayStream:
    """The relay of two providers: ``first`` yields ``first_chunk`` then fails with an HTTP
    500, ``second`` answers "other answer"."""
    boom = errors.ServerError("HTTP 500: boom", provider="first", status=500)
    first = _provider("first", first_chunk, boom)
    second = _provider("second", "other answer", FinishReason("stop"))
    use_plugins(("first", Plugin(first)), ("second", Plugin(second)))
    return relay("thinker-1", HI, max_retries=0)


# -- the clients, over the recorded reasoning model ----------------------------------------------


@pytest.fixture
def configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_plugins: Callable[..., Registry]
) -> Registry:
    """The endpoint the cassettes were recorded for, configured as a user would."""
    monkeypatch.setenv(KEY_ENV, "sk-any-key-for-replay")
    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path / "cache"))
    write_config(
        tmp_path / "config.toml", monkeypatch, endpoint("local", BASE_URL, api_key_env=KEY_ENV)
    )
    return install_endpoints(use_plugins)


async def test_the_async_client_gives_reasoning_beside_the_answer(configured: Registry) -> None:
    from llmrelay import cassette

    async with AsyncClient() as client:
        with cassette(BY_NAME["non_stream_reasoning_content"].path):
            completion = await client.chat.completions.create(model="local/llama3", messages=HI)
        message = completion.choices[0].message
        assert (message.content, message.reasoning) == ("Echo: Hi there", THOUGHT)
        assert message.model_fields_set == {"role", "content", "reasoning"}
        assert message.model_dump() == {
            "role": "assistant",
            "content": "Echo: Hi there",
            "reasoning": THOUGHT,
        }

        with cassette(BY_NAME["stream_reasoning"].path):
            stream = await client.chat.completions.create(
                model="local/llama3", messages=HI, stream=True
            )
            chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert "".join(d.reasoning or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == "Echo: Hi there"
    # Reasoning pieces carry no content, and come before the answer's first piece.
    thinking = [d for d in deltas if d.reasoning]
    assert all(d.content is None for d in thinking)
    assert deltas.index(thinking[-1]) < next(i for i, d in enumerate(deltas) if d.content)
    assert deltas[0].role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_sync_client_gives_reasoning_too(configured: Registry) -> None:
    from llmrelay import cassette

    with Client() as client, cassette(BY_NAME["stream_reasoning"].path):
        stream = client.chat.completions.create(model="local/llama3", messages=HI, stream=True)
        thinking = "".join(chunk.choices[0].delta.reasoning or "" for chunk in stream)
    assert thinking == THOUGHT


async def test_an_answer_without_reasoning_leaves_the_field_unset(configured: Registry) -> None:
    from llmrelay import cassette

    async with AsyncClient() as client:
        with cassette(BY_NAME["non_stream"].path):
            completion = await client.chat.completions.create(
                model="local/llama3", messages=HI, stream=False
            )
    message = completion.choices[0].message
    assert message.reasoning is None
    assert message.model_fields_set == {"role", "content"}  # as validation leaves it


# -- the terminal -----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [None, "--reasoning", "--no-reasoning"])
def test_chat_writes_reasoning_to_stderr_and_the_answer_to_stdout(
    tmp_path: Path, flag: str | None
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(endpoint("local", BASE_URL, api_key_env=KEY_ENV), encoding="utf-8")
    result = run_cli(
        "chat",
        *([flag] if flag else []),
        "--replay",
        str(BY_NAME["stream_reasoning"].path),
        "-m",
        "local/llama3",
        "Hi there",
        env={"LLMRELAY_CONFIG": str(config), KEY_ENV: "replay"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: Hi there\n"
    if flag == "--no-reasoning":
        assert result.stderr == ""
    else:  # no terminal: no styling either
        assert result.stderr == THOUGHT + "\n"


class _Scripted:
    """A stream for ``write_answer``: its chunks when iterated, its ``Completion`` when
    collected (as a provider's ``generate`` and ``complete`` may differ)."""

    def __init__(self, chunks: list[Chunk | Exception], whole: Completion) -> None:
        self.chunks, self.whole, self.used = chunks, whole, ""

    async def __aiter__(self) -> AsyncGenerator[Chunk, None]:
        self.used = "iterated"
        for chunk in self.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    async def collect(self) -> Completion:
        self.used = "collected"
        return self.whole


@pytest.mark.parametrize("whole", [False, True])
async def test_the_terminal_writes_what_the_call_asked_for(
    whole: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--option stream=false`` collects the answer (a provider's ``complete()``, whose
    request a cassette recorded) instead of iterating ``generate()``'s stream."""
    from llmrelay._cli_output import write_answer

    stream = _Scripted(
        [Reasoning("streamed thought"), "streamed", FinishReason("stop")],
        Completion("whole", FinishReason("stop"), None, "whole thought"),
    )
    await write_answer(stream, show_reasoning=True, whole=whole)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    kind = "whole" if whole else "streamed"
    assert (out, err) == (f"{kind}\n", f"{kind} thought\n")
    assert stream.used == ("collected" if whole else "iterated")


@pytest.mark.parametrize("show", [True, False])
async def test_an_answer_without_text_is_said_so(
    show: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that ran out of tokens while thinking: not an empty line and exit status 0
    with nothing said, even with the reasoning hidden."""
    from llmrelay._cli_output import write_answer

    stream = _Scripted(
        [Reasoning("hmm"), FinishReason("length")], Completion("", FinishReason("length"))
    )
    await write_answer(stream, show_reasoning=show)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == "\n"
    note = "(the answer has no text; the model stopped: length)\n"
    assert err == ("hmm\n" if show else "") + note


async def test_a_failure_after_reasoning_starts_a_line_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmrelay._cli_output import write_answer

    boom = errors.StreamInterrupted("boom", provider="p")
    stream = _Scripted([Reasoning("hmm"), boom], Completion("", FinishReason("stop")))
    with pytest.raises(errors.StreamInterrupted):
        await write_answer(stream, show_reasoning=True)  # type: ignore[arg-type]
    assert capsys.readouterr().err == "hmm\n"  # the CLI's "error: ..." then starts a line


def test_a_whole_answer_with_empty_reasoning_has_none() -> None:
    """``Completion(..., reasoning="")`` from a provider's ``complete()`` reads as no
    reasoning, as a stream without Reasoning chunks does."""
    from llmrelay._provider import checked_completion

    checked = checked_completion("p", Completion("Hi", FinishReason("stop"), None, ""))
    assert checked.reasoning is None
    assert checked == Completion("Hi", FinishReason("stop"))


def test_the_conformance_kit_checks_the_reasoning(monkeypatch: pytest.MonkeyPatch) -> None:
    """``expected_reasoning``: a provider that drops its model's thinking, or mixes it into
    the text, fails the kit's check on the recorded answer."""
    from llmrelay._config import EndpointConfig
    from llmrelay.testing import ProviderConformance
    from llmrelay_openai_compat import provider_for

    monkeypatch.setenv(KEY_ENV, "sk-any-key-for-replay")
    endpoint = EndpointConfig(
        name="local", base_url=BASE_URL, models=("gpt-4o-mini", "llama3"), api_key_env=KEY_ENV
    )

    class Check(ProviderConformance):
        provider = provider_for(endpoint)
        model = "llama3"
        messages = tuple(HI)
        expected_text = "Echo: Hi there"
        expected_reasoning = THOUGHT

    recorded = BY_NAME["stream_reasoning"].path
    Check().test_chunks_are_text_then_usage_then_one_finish_reason(recorded)
    Check.expected_reasoning = "something else"
    with pytest.raises(AssertionError, match="yield a model's thinking as Reasoning chunks"):
        Check().test_chunks_are_text_then_usage_then_one_finish_reason(recorded)


# -- an answer put back into the conversation ---------------------------------------------------

#: The next turn after an answer with reasoning, the answer dumped back as OpenAI's examples do.
ROUND_TRIP = [
    *HI,
    {"role": "assistant", "content": "Echo: Hi there", "reasoning": THOUGHT},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Again: Echo", "reasoning": None},  # (a dump without any)
    {"role": "user", "content": "Once more"},
]


@pytest.mark.parametrize("send_reasoning", [False, True])
async def test_an_earlier_answers_reasoning_is_not_sent_back_unless_asked(
    serve: Serve, send_reasoning: bool
) -> None:
    """DeepSeek asks for it not to be sent back, and Groq refuses unknown message fields;
    vLLM reads it back for interleaved thinking (``send_reasoning = true``)."""
    from llmrelay._config import EndpointConfig
    from llmrelay_openai_compat import provider_for
    from tests.replicas.openai import STATE, make_app

    app = make_app()
    base = await serve(app)
    endpoint = EndpointConfig(
        name="local", base_url=f"{base}/v1", models=("llama3",), send_reasoning=send_reasoning
    )
    provider = provider_for(endpoint)
    for stream in (True, False):
        await provider.create_async_generator("llama3", ROUND_TRIP, stream=stream).text()
        sent = app[STATE].last_body["messages"]
        expected = {"role": "assistant", "content": "Echo: Hi there"}
        assert sent[1] == ({**expected, "reasoning": THOUGHT} if send_reasoning else expected)
        assert sent[3] == {"role": "assistant", "content": "Again: Echo"}  # never a null


def test_a_turn_that_called_tools_keeps_its_reasoning() -> None:
    """DeepSeek refuses an assistant turn with tool calls without its reasoning_content, and
    interleaved-thinking models read it: kept, whatever ``send_reasoning`` says."""
    from llmrelay import validate_messages
    from llmrelay_openai_compat._provider import _messages_data

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn = {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "f"}
    messages = validate_messages(
        [*HI, turn, {"role": "tool", "tool_call_id": "c1", "content": "4"}]
    )
    assert _messages_data("p", messages)[1] == turn


def test_pizzagpt_takes_a_conversation_with_an_earlier_answers_reasoning() -> None:
    from llmrelay import validate_messages
    from llmrelay_pizzagpt._provider import _check_text_only

    _check_text_only(validate_messages(ROUND_TRIP))  # the reasoning is not the conversation
    with pytest.raises(errors.InvalidRequest, match="messages\\[0\\] has reasoning"):
        _check_text_only(validate_messages([{**HI[0], "reasoning": "a user's own field"}]))


def test_an_answers_message_object_goes_back_into_the_conversation() -> None:
    """OpenAI's idiom ``messages.append(completion.choices[0].message)``: the object itself,
    llmrelay's or OpenAI's SDK's, is read as its fields that are not None."""
    import openai.types.chat as openai_types

    from llmrelay import validate_messages
    from llmrelay._client import ChatCompletionMessage, ChoiceDelta

    ours = ChatCompletionMessage(content="Echo: Hi there", reasoning=THOUGHT)
    theirs = openai_types.ChatCompletionMessage(role="assistant", content="Echo: Hi there")
    checked = validate_messages([*HI, ours, {"role": "user", "content": "Again"}, theirs])
    assert [m.role for m in checked] == ["user", "assistant", "user", "assistant"]
    assert checked[1].model_extra == {"reasoning": THOUGHT}
    assert checked[3].model_extra == {}  # refusal=None, audio=None, ... are not fields sent
    with pytest.raises(errors.InvalidRequest, match=r"messages\[1\]\.role"):
        validate_messages([*HI, ChatCompletionMessage.model_construct(role="robot", content="x")])
    # An answer without reasoning, dumped: its "reasoning": None is nothing to carry on.
    (_, dumped) = validate_messages([*HI, ChatCompletionMessage(content="x").model_dump()])
    assert dumped.model_extra == {}
    # A chunk's delta is not a message: appending one instead would cut the answer short.
    with pytest.raises(errors.InvalidRequest, match=r"messages\[1\] is a ChoiceDelta"):
        validate_messages([*HI, ChoiceDelta(role="assistant", content="Hel")])
