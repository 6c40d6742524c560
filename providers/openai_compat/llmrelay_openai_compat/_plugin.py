"""The entry point: one provider per ``[[endpoints]]`` entry of llmrelay's configuration.

Registration reads the configuration and, for an endpoint that lists no models, the model list
cached by ``llmrelay models --refresh NAME``: two small files, no network.
"""

from __future__ import annotations

from collections.abc import Callable

import llmrelay
from llmrelay._config import get_config

from ._provider import provider_for


@llmrelay.hookimpl
def register_providers(register: Callable[[type[llmrelay.Provider]], None]) -> None:
    for endpoint in get_config().endpoints:
        register(provider_for(endpoint))
