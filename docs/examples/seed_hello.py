"""Seed example 1: ask Pizzagpt one question and print the answer.

From the repository root, live:

    uv run python docs/examples/seed_hello.py

or offline, answered from a recorded cassette:

    LLMRELAY_REPLAY=cassettes/pizzagpt/seed_hello.yaml uv run python docs/examples/seed_hello.py
"""

import asyncio
import os

from llmrelay import FinishReason, Messages  # noqa: F401  (the seed's imports, kept as written)
from llmrelay_pizzagpt import Pizzagpt


async def main():
    try:
        generator = await Pizzagpt.create_async_generator(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Привет, как дела?"}],
            proxy=None,
        )
        async for item in generator:
            print(item, end="")
    except ValueError as e:
        print(f"Error: {e}")


if __name__ == "__main__":
    # LLMRELAY_REPLAY=<cassette> answers from a recorded cassette instead of the network.
    replay = os.environ.get("LLMRELAY_REPLAY")
    if replay:
        from llmrelay import cassette

        with cassette(replay):
            asyncio.run(main())
    else:
        asyncio.run(main())
