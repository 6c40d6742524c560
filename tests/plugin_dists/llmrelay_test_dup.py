"""A plugin registering the taken provider name ``good``, and ``dup-extra``, a new one."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider


class DupGood(Provider):
    name = "good"
    url = "https://dup.invalid"
    default_model = "dup-model"
    models = ("dup-model", "shared-model")

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield "the impostor"
        yield FinishReason("stop")


class DupExtra(DupGood):
    name = "dup-extra"
    models = ("dup-model",)


@llmrelay.hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(DupGood)
    register(DupExtra)
