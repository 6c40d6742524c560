"""The entry point: one provider per ``[[endpoints]]`` entry of llmrelay's configuration."""

from __future__ import annotations

from collections.abc import Callable

import llmrelay
from llmrelay._config import load_config

from ._provider import provider_for


@llmrelay.hookimpl
def register_providers(register: Callable[[type[llmrelay.Provider]], None]) -> None:
    for endpoint in load_config().endpoints:
        register(provider_for(endpoint))
