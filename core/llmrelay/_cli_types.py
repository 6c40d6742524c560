"""Option types shared by the ``llmrelay`` commands (click only: ``--help`` stays fast)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from click.decorators import FC

__all__ = ["NO_DEADLINE", "SECONDS", "timeout_option", "timeout_options"]

#: What ``--timeout none`` gives: the call has no deadline (``timeout=None``).
NO_DEADLINE = "none"


class _Seconds(click.ParamType):  # type: ignore[type-arg]
    """A deadline: positive, finite seconds, or ``none`` for no deadline (as
    ``LLMRELAY_TIMEOUT=none``). Anything else is a usage error (exit status 2)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or value == NO_DEADLINE:
            return value
        text = str(value).strip()
        if text.lower() == NO_DEADLINE:
            return NO_DEADLINE
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            self.fail(
                f"{value!r} is not a positive number of seconds (or 'none' for no deadline)",
                param,
                ctx,
            )
        return seconds


SECONDS = _Seconds()


def timeout_option(help_text: str) -> Callable[[FC], FC]:
    """``--timeout SECONDS``: the call's deadline; ``none`` for none."""
    return click.option("--timeout", type=SECONDS, help=f"{help_text} 'none' for no deadline.")


def timeout_options(timeout: float | str | None) -> dict[str, Any]:
    """The call's keyword for ``--timeout`` as given: nothing (the configured default), a
    number of seconds, or None for no deadline."""
    if timeout is None:
        return {}
    return {"timeout": None if timeout == NO_DEADLINE else timeout}
