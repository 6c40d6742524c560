"""The entry point of ``llmrelay-test-good``: a module with a marked hook function."""

from __future__ import annotations

from collections.abc import Callable

import llmrelay

from . import Good


@llmrelay.hookimpl
def register_providers(register: Callable[[type[llmrelay.Provider]], None]) -> None:
    register(Good)
