"""A plugin whose hookimpl asks for an argument the hookspec does not have."""

from __future__ import annotations

from collections.abc import Callable

import llmrelay


@llmrelay.hookimpl
def register_providers(register: Callable[..., None], config: object) -> None:
    raise AssertionError("pluggy must refuse this hookimpl before it is ever called")
