"""``Provider.complete``: a whole answer in one piece, and how it relates to ``generate``.

The providers here make no I/O: what they answer, and which of their methods ran, is all
that is under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, ClassVar

import pytest

import llmrelay
from llmrelay import (
    Call,
    Chunk,
    Completion,
    FinishReason,
    Message,
    Provider,
    Registry,
    Usage,
    errors,
)
from tests.support import Plugin

MESSAGES = [{"role": "user", "content": "Hello"}]
USAGE = Usage(3, 2)


class Whole(Provider):
    """Answers in one piece: only ``complete``."""

    name = "whole"
    url = "http://127.0.0.1:9"
    default_model = "m"
    models = ("m",)
    ran: ClassVar[list[str]] = []

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        cls.ran.append("complete")
        return Completion(f"{cls.name}: {messages[-1].text}", FinishReason("length"), USAGE)


class Both(Whole):
    """Streams when asked to, answers whole otherwise."""

    name = "both"
    supports_stream = True
    ran: ClassVar[list[str]] = []

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        return await super().complete(model, messages, call)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        cls.ran.append("generate")
        yield f"{cls.name}: "
        yield messages[-1].text
        yield USAGE
        yield FinishReason("length")


class OwnGenerate(Whole):
    """Overrides the ``generate`` it would inherit, not the ``complete``."""

    name = "own"
    ran: ClassVar[list[str]] = []

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        cls.ran.append("generate")
        yield "from generate"
        yield FinishReason("stop")


@pytest.fixture(autouse=True)
def _forget_runs() -> None:
    for provider in (Whole, Both, OwnGenerate):
        provider.ran.clear()


async def test_a_provider_with_only_complete_streams_its_answer_as_chunks() -> None:
    chunks = [chunk async for chunk in Whole.create_async_generator("m", MESSAGES)]
    assert chunks == ["whole: Hello", USAGE, FinishReason("length")]
    assert Whole.ran == ["complete"]


async def test_a_whole_answer_comes_from_complete() -> None:
    completion = await Whole.create_async_generator("m", MESSAGES).collect()
    assert completion == Completion("whole: Hello", FinishReason("length"), USAGE)
    assert await Whole.create_async_generator("m", MESSAGES).text() == "whole: Hello"
    assert Whole.ran == ["complete", "complete"]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(False, ["complete"]), (True, ["generate"])],
)
async def test_with_both_the_callers_wish_for_a_stream_decides(
    stream: bool, expected: list[str]
) -> None:
    """``stream=True`` keeps a long answer streaming even when it is collected whole."""
    completion = await Both.create_async_generator("m", MESSAGES, stream=stream).collect()
    assert completion == Completion("both: Hello", FinishReason("length"), USAGE)
    assert Both.ran == expected


async def test_iterating_always_runs_generate() -> None:
    stream = Both.create_async_generator("m", MESSAGES, stream=False)
    assert [chunk async for chunk in stream][-1] == FinishReason("length")
    assert Both.ran == ["generate"]


async def test_a_subclass_overriding_generate_gets_whole_answers_from_it() -> None:
    assert await OwnGenerate.create_async_generator("m", MESSAGES).text() == "from generate"
    assert OwnGenerate.ran == ["generate"]


async def test_an_unread_stream_runs_nothing() -> None:
    stream = Both.create_async_generator("m", MESSAGES)
    await stream.aclose()
    assert Both.ran == []
    with pytest.raises(errors.InvalidRequest, match="already read or closed"):
        await stream.collect()


@pytest.mark.parametrize(
    "answer",
    [
        "just text",
        Completion(None, FinishReason("stop")),  # type: ignore[arg-type]
        Completion("text", "stop"),  # type: ignore[arg-type]
        Completion("text", FinishReason("stop"), {"prompt_tokens": 1}),  # type: ignore[arg-type]
    ],
)
async def test_a_broken_completion_is_an_invalid_response(answer: object) -> None:
    class Broken(Whole):
        name = "broken"

        @classmethod
        async def complete(cls, model: str, messages: list[Message], call: Call) -> Any:
            return answer

    with pytest.raises(errors.InvalidResponse, match="provider contract broken") as info:
        await Broken.create_async_generator("m", MESSAGES).collect()
    assert info.value.provider == "broken"
    with pytest.raises(errors.InvalidResponse, match="provider contract broken"):
        [chunk async for chunk in Broken.create_async_generator("m", MESSAGES)]


def _failing(name: str, error: Exception) -> type[Provider]:
    class Failing(Whole):
        ran: ClassVar[list[str]] = []

        @classmethod
        async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
            cls.ran.append("complete")
            raise error

    Failing.name = name
    return Failing


async def test_a_failed_whole_answer_falls_back_to_the_next_provider(
    use_plugins: Callable[..., Registry],
) -> None:
    first = _failing("first", errors.ServerError("HTTP 500", provider="first", status=500))
    use_plugins(*((p.name, Plugin(p)) for p in (first, Whole)))
    stream = llmrelay.relay("m", MESSAGES, max_retries=0)
    assert await stream.text() == "whole: Hello"
    assert stream.provider == "whole"
    assert [e.provider for e in stream.errors] == ["first"]


async def test_a_provider_without_either_method_says_so() -> None:
    class Neither(Provider):
        name = "neither"
        url = "http://127.0.0.1:9"
        default_model = "m"

    with pytest.raises(NotImplementedError, match="must implement generate\\(\\) or complete"):
        await Neither.create_async_generator("m", MESSAGES).text()


def test_completion_chunks_are_what_a_stream_carries() -> None:
    stop = FinishReason("stop")
    assert Completion("hi", stop, USAGE).chunks() == ["hi", USAGE, stop]
    assert Completion("", stop).chunks() == [stop]


async def test_a_second_read_while_a_whole_answer_is_awaited_is_refused(
    use_plugins: Callable[..., Registry],
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(Whole):
        name = "slow"
        ran: ClassVar[list[str]] = []

        @classmethod
        async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
            started.set()
            await release.wait()
            return await super().complete(model, messages, call)

    Whole.ran.clear()
    use_plugins(*((p.name, Plugin(p)) for p in (Slow, Whole)))
    stream = llmrelay.relay("m", MESSAGES, timeout=None)
    first = asyncio.create_task(stream.collect())
    await started.wait()
    with pytest.raises(errors.InvalidRequest, match="already read"):
        await stream.collect()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    release.set()
    assert (await first).text == "slow: Hello"
    assert stream.provider == "slow"
    assert Whole.ran == []  # the next provider was never started


@pytest.mark.parametrize("late", ["LATE", FinishReason("stop"), USAGE])
async def test_nothing_may_follow_the_finish_reason(
    late: Chunk, use_plugins: Callable[..., Registry]
) -> None:
    class Late(Whole):
        name = "late"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield ""  # no text: the FinishReason alone is what reached the caller
            yield FinishReason("content_filter")
            yield late

    class Next(Whole):
        name = "next"
        ran: ClassVar[list[str]] = []

    # Read past the FinishReason, the breach is an error; never a reason to ask another
    # provider, since the caller has the FinishReason already.
    use_plugins(*((p.name, Plugin(p)) for p in (Late, Next)))
    relayed = llmrelay.relay("m", MESSAGES, stream=True)
    assert [await relayed.__anext__(), await relayed.__anext__()] == [
        "",
        FinishReason("content_filter"),
    ]
    after = f"a {type(late).__name__} chunk after the FinishReason"
    with pytest.raises(errors.StreamInterrupted, match=after):
        await relayed.__anext__()
    assert Next.ran == []
    # Whole answers and the client stop at the FinishReason and close the provider's stream.
    answer = await Late.create_async_generator("m", MESSAGES).collect()
    assert answer.finish_reason == FinishReason("content_filter")
    async with llmrelay.AsyncClient() as client:
        chunks = await client.chat.completions.create(
            model="late/m", messages=MESSAGES, stream=True
        )
        reasons = [chunk.choices[0].finish_reason async for chunk in chunks]
    assert reasons[-1] == "content_filter"


async def test_a_failure_after_the_finish_reason_does_not_undo_the_answer() -> None:
    class Untidy(Whole):
        name = "untidy"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield "answer"
            yield FinishReason("stop")
            raise errors.ConnectError("connection reset while reading on to [DONE]", provider="u")

    chunks = [chunk async for chunk in Untidy.create_async_generator("m", MESSAGES)]
    assert chunks == ["answer", FinishReason("stop")]


async def test_a_bare_exception_from_a_provider_is_typed_and_falls_back(
    use_plugins: Callable[..., Registry],
) -> None:
    class Buggy(Whole):
        name = "buggy"

        @classmethod
        async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
            return {}["choices"]  # type: ignore[no-any-return]

    class BuggyLater(Whole):
        name = "buggy-later"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield "a"
            raise KeyError("choices")

    contract = r"the provider raised KeyError \(provider contract broken"
    with pytest.raises(errors.InvalidResponse, match=contract) as info:
        await Buggy.create_async_generator("m", MESSAGES).collect()
    assert info.value.provider == "buggy"
    assert isinstance(info.value.__cause__, KeyError)  # kept for whoever debugs the provider
    with pytest.raises(errors.StreamInterrupted, match=contract) as interrupted:
        [chunk async for chunk in BuggyLater.create_async_generator("m", MESSAGES)]
    assert isinstance(interrupted.value.__cause__, KeyError)

    use_plugins(*((p.name, Plugin(p)) for p in (Buggy, Whole)))
    relayed = llmrelay.relay("m", MESSAGES)
    assert (await relayed.collect()).text == "whole: Hello"
    assert [error.provider for error in relayed.errors] == ["buggy"]  # tried first, fell back
