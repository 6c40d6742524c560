"""The entry point: registers Pizzagpt with llmrelay (no I/O, nothing heavy)."""

from __future__ import annotations

from collections.abc import Callable

import llmrelay

from ._provider import Pizzagpt


@llmrelay.hookimpl
def register_providers(register: Callable[[type[llmrelay.Provider]], None]) -> None:
    register(Pizzagpt)
