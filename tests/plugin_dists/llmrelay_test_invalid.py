"""Plugins that register something invalid (one distribution, several entry points).

``not_a_provider`` first registers a valid provider, then a class that is not a Provider:
nothing it registered may be kept. ``no_default`` registers a provider without a
``default_model``. There is no ``no_such_plugin``: that entry point fails to load.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider


class HalfInvalid(Provider):
    name = "half-invalid"
    url = "https://half-invalid.invalid"
    default_model = "half-model"
    models = ("half-model",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield FinishReason("stop")


class NotAProvider:
    name = "not-a-provider"


class NoDefault(HalfInvalid):
    name = "no-default"
    default_model = ""


class _NotAProviderPlugin:
    @llmrelay.hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(HalfInvalid)
        register(NotAProvider)  # type: ignore[arg-type]


class _NoDefaultPlugin:
    @llmrelay.hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(NoDefault)


not_a_provider = _NotAProviderPlugin()
no_default = _NoDefaultPlugin()
