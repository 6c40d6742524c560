"""The plugin hook specification: the one hook a plugin implements.

A plugin is any module or object with a function marked ``@llmrelay.hookimpl`` named
``register_providers``. Distributions expose it through the ``llmrelay`` entry-point group::

    [project.entry-points.llmrelay]
    myprovider = "my_package.plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._provider import Provider

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "llmrelay"
#: The entry-point group plugins register under.
ENTRY_POINT_GROUP = "llmrelay"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: The marker plugins put on their ``register_providers`` function.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class HookSpecs:
    """The hooks llmrelay calls. Documented here, where they are declared."""

    @hookspec
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        """Register this plugin's providers by calling ``register(ProviderClass)`` for each.

        Called each time a registry is built (once per process, unless ``reset_registry()``),
        with a fresh ``register`` that works only until this hook returns. It must only
        register: no network, no heavy imports, no side effects.

        A plugin registers completely or not at all: if this raises, or any provider it
        registered is invalid, none of them is kept, the plugin is listed as failed (with its
        error) by ``llmrelay providers``, and every other plugin still loads. A provider whose
        name is already taken is skipped with a ``RuntimeWarning``; the first keeps its place.
        """
