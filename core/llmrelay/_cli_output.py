"""How ``llmrelay chat`` and ``llmrelay record`` write an answer at the terminal."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import click

from ._provider import Completion
from ._types import Chunk, FinishReason, Reasoning

__all__ = ["write_answer"]


class Answer(Protocol):
    """A provider's stream or the relay's: iterated chunk by chunk, or collected whole."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def collect(self) -> Completion: ...


async def write_answer(stream: Answer, *, show_reasoning: bool, whole: bool = False) -> None:
    """Write the text to stdout as it comes, then a newline.

    A model's reasoning goes to stderr (dimmed at a terminal), unless ``show_reasoning`` is
    off: it is not the answer, so ``llmrelay chat ... > answer.txt`` keeps only the answer,
    while the person at the terminal still sees the model think. An answer without any text
    (a model that ran out of tokens while thinking) is said so on stderr, with its finish
    reason, rather than left as an empty line.

    ``whole``: the call asked for no stream (``--option stream=false``), so the answer is
    collected as a client's whole answer is (through a provider's ``complete()``, whose
    request is not the stream's), then written.
    """
    chunks: AsyncIterator[Chunk] | Iterable[Chunk]
    chunks = (await stream.collect()).chunks() if whole else aiter(stream)
    thinking = False  # reasoning was written and not yet ended by a newline
    wrote_text = False
    finish = "stop"
    try:
        async for chunk in _each(chunks):
            if isinstance(chunk, str):
                if not chunk:
                    continue
                if thinking:
                    click.echo(err=True)
                    thinking = False
                sys.stdout.write(chunk)
                sys.stdout.flush()
                wrote_text = True
            elif isinstance(chunk, Reasoning):
                if show_reasoning and chunk.text:
                    click.echo(click.style(chunk.text, dim=True), err=True, nl=False)
                    thinking = True
            elif isinstance(chunk, FinishReason):
                finish = chunk.reason
    finally:
        if thinking:  # an error message that follows starts on a line of its own
            click.echo(err=True)
    if not wrote_text:
        click.echo(f"(the answer has no text; the model stopped: {finish})", err=True)
    sys.stdout.write("\n")


async def _each(chunks: AsyncIterator[Chunk] | Iterable[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterator):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
