"""The types of OpenAI's request options, checked before any I/O by the client
(``chat.completions.create``), :func:`llmrelay.relay` and a provider called directly.

Why check them here and not leave it to the upstream: a ``temperature="hot"`` would otherwise
be sent to every provider in turn, each refusing it in its own words (or one taking it), and
the caller would learn of it only after the network round trips.

Types only, not OpenAI's ranges: the same options go to vLLM, llama.cpp or Ollama through the
OpenAI-compatible provider, and those accept more (a ``temperature`` above 2, more than four
``stop`` strings, float ``logit_bias`` values, llama.cpp's list form of it). The upstream
judges the values. ``llmrelay serve``, which presents OpenAI's API to its clients, adds
OpenAI's ranges on top of these types (``llmrelay.server._request``).

Only the options OpenAI defines are checked; anything else a provider declares passes as it
is, for that provider to judge.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, Strict, StrictInt, StrictStr, TypeAdapter, ValidationError

from . import errors

__all__ = ["OPTION_TYPES", "Number", "check_options"]

#: A JSON number that is a real number: an int or a float, not a bool, not NaN or infinity.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]

#: What each option OpenAI defines must be (None: leave it out).
OPTION_TYPES: Mapping[str, Any] = {
    "temperature": Number,
    "top_p": Number,
    "max_tokens": StrictInt,
    "max_completion_tokens": StrictInt,
    "stop": StrictStr | list[StrictStr] | tuple[StrictStr, ...],
    "seed": StrictInt,
    "presence_penalty": Number,
    "frequency_penalty": Number,
    # Token ids (as JSON keys: strings; Python code often writes ints) to biases, or
    # llama.cpp's list of [token, bias] pairs.
    "logit_bias": dict[StrictStr | StrictInt, Number] | list[Any],
    "response_format": dict[str, Any],
    "user": StrictStr,
}

#: How each type is said in an error message.
_EXPECTED = {
    "temperature": "a finite number",
    "top_p": "a finite number",
    "max_tokens": "an integer",
    "max_completion_tokens": "an integer",
    "stop": "a string or a list of strings",
    "seed": "an integer",
    "presence_penalty": "a finite number",
    "frequency_penalty": "a finite number",
    "logit_bias": "an object of token ids to numbers",
    "response_format": "an object",
    "user": "a string",
}

_NAMES = frozenset(OPTION_TYPES)


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse a value of an OpenAI option that is not of the type OpenAI's API gives it.

    Raises:
        InvalidRequest: naming the option, what it must be, and the value given.
    """
    if _NAMES.isdisjoint(options):  # nearly every call: no allocation, no loop
        return
    for name in _NAMES.intersection(options):
        value = options[name]
        if value is None:
            continue
        try:
            _adapter(name).validate_python(value)
        except ValidationError:
            raise errors.InvalidRequest(
                f"option {name!r} must be {_EXPECTED[name]}, got {_shown(value)}"
            ) from None


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(OPTION_TYPES[name])


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
