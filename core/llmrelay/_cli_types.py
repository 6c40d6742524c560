"""Option types shared by the ``llmrelay`` commands (click only: ``--help`` stays fast)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from click.decorators import FC

    from .errors import UnsupportedOption

__all__ = [
    "NO_DEADLINE",
    "SECONDS",
    "option_flags",
    "reasoning_option",
    "request_option",
    "request_options",
    "timeout_option",
    "timeout_options",
    "unsupported_here",
]

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


class FiniteSeconds(click.FloatRange):
    """A number of seconds from ``min`` (``min_open``: above it), finite: click's
    ``FloatRange`` lets ``nan`` through (no comparison with it is true) and ``inf``."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def timeout_option(help_text: str) -> Callable[[FC], FC]:
    """``--timeout SECONDS``: the call's deadline; ``none`` for none."""
    return click.option("--timeout", type=SECONDS, help=f"{help_text} 'none' for no deadline.")


def timeout_options(timeout: float | str | None) -> dict[str, Any]:
    """The call's keyword for ``--timeout`` as given: nothing (the configured default), a
    number of seconds, or None for no deadline."""
    if timeout is None:
        return {}
    return {"timeout": None if timeout == NO_DEADLINE else timeout}


#: Names a request option may not take: each command sets these itself, or has a flag for
#: them; and where to set each instead.
_OWN = {
    "timeout": "use --timeout",
    "max_retries": "set LLMRELAY_MAX_RETRIES, or max_retries in the configuration file",
    "proxy": "use --proxy",
    "base_url": (
        "use --base-url (llmrelay record), or an endpoint's base_url in the configuration file"
    ),
    "model": "use -m/--model",
    "messages": "give the prompt (and -s/--system)",
    "drop_unsupported": "use --drop-unsupported (llmrelay chat)",
}


class _RequestOption(click.ParamType):  # type: ignore[type-arg]
    """``NAME=VALUE``, a request option: VALUE read as JSON when it is JSON (``0.2``,
    ``true``, ``["a", "b"]``, ``{"type": "json_object"}``), else taken as a string."""

    name = "name=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        name, eq, text = str(value).partition("=")
        name = name.strip()
        if not eq or not name:
            self.fail(f"{value!r} is not NAME=VALUE (temperature=0.2, say)", param, ctx)
        if name in _OWN:
            self.fail(f"{name!r} is not a request option here: {_OWN[name]}", param, ctx)
        return (name, _read_value(text))


def _read_value(text: str) -> Any:
    """VALUE of ``--option NAME=VALUE``: JSON when it is JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def request_option() -> Callable[[FC], FC]:
    """``--option NAME=VALUE``, repeatable: request options passed to the provider."""
    return click.option(
        "--option",
        "request_options_given",
        type=_RequestOption(),
        multiple=True,
        help="A request option for the provider, NAME=VALUE (VALUE read as JSON when it is: "
        "temperature=0.2, stop='[\"END\"]'). Repeatable.",
    )


def reasoning_option() -> Callable[[FC], FC]:
    """``--reasoning/--no-reasoning``: whether a model's reasoning is shown (on stderr)."""
    return click.option(
        "--reasoning/--no-reasoning",
        "show_reasoning",
        default=True,
        show_default=True,
        help="Show the reasoning a model sends apart from its answer, on stderr.",
    )


def request_options(given: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The ``--option`` pairs as keyword arguments (a name given twice: the last wins)."""
    return dict(given)


def option_flags(options: dict[str, Any]) -> list[str]:
    """``--option NAME=VALUE`` flags that give ``options`` again (for a printed command)."""
    flags = []
    for name, value in options.items():
        # A string given as it is, when reading it back gives the same string (not JSON).
        as_is = isinstance(value, str) and _read_value(value) == value
        text = value if as_is else json.dumps(value)
        flags += ["--option", f"{name}={text}"]
    return flags


def unsupported_here(exc: UnsupportedOption, *, can_drop: bool) -> UnsupportedOption:
    """``exc`` in the command line's words: the options it names came from ``--option``,
    and ``drop_unsupported=True`` is the ``--drop-unsupported`` flag where there is one."""
    fix = "remove the --option"
    if can_drop:
        fix += ", or add --drop-unsupported to send the request without it"
    return type(exc)(exc.provider, exc.options, exc.supported, fix=fix)
