"""A second good plugin: a plugin *object* registering two providers.

``sleepy`` (not working) is registered before ``other``; both serve ``shared-model``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider


class Other(Provider):
    name = "other"
    url = "https://other.invalid"
    default_model = "other-model"
    models = ("shared-model", "other-model")

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield f"{cls.name} answers with {model}"
        yield FinishReason("stop")


class Sleepy(Other):
    name = "sleepy"
    working = False
    default_model = "shared-model"
    models = ("shared-model",)


class OtherPlugin:
    @llmrelay.hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(Sleepy)
        register(Other)


plugin = OtherPlugin()
