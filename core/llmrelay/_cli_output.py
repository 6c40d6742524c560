"""How ``llmrelay chat`` and ``llmrelay record`` write an answer at the terminal."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import click

from ._types import Chunk, Reasoning

__all__ = ["write_answer"]


async def write_answer(chunks: AsyncIterator[Chunk], *, show_reasoning: bool) -> None:
    """Write the text to stdout as it comes, then a newline.

    A model's reasoning goes to stderr (dimmed at a terminal), unless ``show_reasoning`` is
    off: it is not the answer, so ``llmrelay chat ... > answer.txt`` keeps only the answer,
    while the person at the terminal still sees the model think.
    """
    thinking = False  # reasoning was written and not yet ended by a newline
    async for chunk in chunks:
        if isinstance(chunk, str):
            if thinking and chunk:
                click.echo(err=True)
                thinking = False
            sys.stdout.write(chunk)
            sys.stdout.flush()
        elif isinstance(chunk, Reasoning) and show_reasoning and chunk.text:
            click.echo(click.style(chunk.text, dim=True), err=True, nl=False)
            thinking = True
    if thinking:
        click.echo(err=True)
    sys.stdout.write("\n")
