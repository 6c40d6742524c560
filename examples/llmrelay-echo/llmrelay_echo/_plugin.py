from collections.abc import Callable

import llmrelay

from ._echo import Echo
from ._parrot import Parrot


@llmrelay.hookimpl
def register_providers(register: Callable[[type[llmrelay.Provider]], None]) -> None:
    register(Echo)
    register(Parrot)
