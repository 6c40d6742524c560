"""A good provider, ``good``: serves ``shared-model`` and ``good-model`` (alias ``gm``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from llmrelay import Call, Chunk, FinishReason, Message, Provider


class Good(Provider):
    name = "good"
    url = "https://good.invalid"
    working = True
    default_model = "good-model"
    models = ("shared-model", "good-model")
    model_aliases = {"gm": "good-model"}  # noqa: RUF012

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield f"{cls.name} answers with {model}"
        yield FinishReason("stop")
