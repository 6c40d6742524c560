"""The async client: one whole answer, then a streamed one.

From the repository root (the cassettes answer instead of a server on 127.0.0.1:8000):

    LLMRELAY_CONFIG=docs/examples/local.toml uv run python docs/examples/client_async.py
"""

import asyncio

from llmrelay import AsyncClient, cassette

MESSAGES = [{"role": "user", "content": "Hi there"}]


async def main() -> None:
    async with AsyncClient() as client:
        with cassette("cassettes/openai_compat/non_stream.yaml"):
            completion = await client.chat.completions.create(
                model="llama3", messages=MESSAGES, stream=False
            )
        print(completion.choices[0].message.content)
        print(completion.choices[0].finish_reason, repr(completion.usage), completion.provider)

        with cassette("cassettes/openai_compat/stream_usage.yaml"):
            stream = await client.chat.completions.create(
                model="llama3", messages=MESSAGES, stream=True
            )
            async for chunk in stream:
                choice = chunk.choices[0]
                print(
                    chunk.provider,
                    repr(choice.delta.content),
                    choice.finish_reason,
                    repr(chunk.usage),
                )


asyncio.run(main())
