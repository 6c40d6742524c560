"""A plugin whose hook registers a valid provider, then raises: nothing may be kept."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider


class HalfRaise(Provider):
    name = "half-raise"
    url = "https://half-raise.invalid"
    default_model = "half-model"
    models = ("half-model",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield FinishReason("stop")


@llmrelay.hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(HalfRaise)
    raise RuntimeError("boom from the hook")
