"""OpenAI's request options, with OpenAI's types and ranges: one definition for the client
(``chat.completions.create``, :func:`llmrelay.relay`) and the HTTP server.

Why check them here and not leave it to the upstream: a ``temperature="hot"`` would otherwise
be sent to every provider in turn, each refusing it with its own words (or worse, one
accepting it), and the caller would learn of it only after the network round trips. The
server refuses the same values with a 400 naming the field; the library refuses them with an
``InvalidRequest`` naming the option, before any I/O.

Only the options OpenAI defines are checked; anything else a provider declares passes as it
is, for that provider to judge.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, Strict, StrictInt, StrictStr, TypeAdapter, ValidationError

from . import errors

__all__ = [
    "MAX_STOP_SEQUENCES",
    "OPTION_TYPES",
    "LogitBias",
    "Number",
    "Penalty",
    "Stop",
    "Temperature",
    "TokenCount",
    "TopP",
    "check_options",
]

#: A JSON number that is a real number: not a bool, not NaN or infinity.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]

#: OpenAI allows at most this many stop sequences.
MAX_STOP_SEQUENCES = 4

Temperature = Annotated[Number, Field(ge=0, le=2)]
TopP = Annotated[Number, Field(ge=0, le=1)]
TokenCount = Annotated[StrictInt, Field(ge=1)]
#: Their number (at most ``MAX_STOP_SEQUENCES``) is checked apart, to say so in plain words.
Stop = StrictStr | list[StrictStr]
Penalty = Annotated[Number, Field(ge=-2, le=2)]
LogitBias = dict[str, StrictInt]

#: Each option OpenAI defines with the type and range its API accepts (None: leave it out).
#: The server's request model (``llmrelay.server._request.ChatRequest``) declares its fields
#: with these same types.
OPTION_TYPES: Mapping[str, Any] = {
    "temperature": Temperature,
    "top_p": TopP,
    "max_tokens": TokenCount,
    "max_completion_tokens": TokenCount,
    "stop": Stop,
    "seed": StrictInt,
    "presence_penalty": Penalty,
    "frequency_penalty": Penalty,
    "logit_bias": LogitBias,
    "response_format": dict[str, Any],
    "user": StrictStr,
}

_NAMES = frozenset(OPTION_TYPES)


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse a value of an OpenAI option that OpenAI's API would refuse.

    Raises:
        InvalidRequest: naming the option, what it must be, and the value given.
    """
    for name in _NAMES.intersection(options):  # nearly always empty: one C call
        value = options[name]
        if value is None:
            continue
        if name == "stop":  # a union: pydantic's message would speak of one branch only
            _check_stop(value)
            continue
        try:
            _adapter(name).validate_python(value)
        except ValidationError as exc:
            raise errors.InvalidRequest(
                f"option {name!r}: {_reason(exc)}, got {_shown(value)}"
            ) from None


def _check_stop(value: object) -> None:
    if isinstance(value, str) or (
        isinstance(value, list | tuple)  # a tuple is sent as the same JSON array
        and len(value) <= MAX_STOP_SEQUENCES
        and all(isinstance(item, str) for item in value)
    ):
        return
    raise errors.InvalidRequest(
        f"option 'stop': a string or a list of at most {MAX_STOP_SEQUENCES} strings is "
        f"expected, got {_shown(value)}"
    )


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(OPTION_TYPES[name])


def _reason(exc: ValidationError) -> str:
    """pydantic's words for the first problem, and where it lies inside a dict."""
    first = exc.errors(include_url=False)[0]
    where = "".join(f"[{part!r}]" for part in first["loc"])  # inside a dict: its key
    message = str(first["msg"])
    message = message[0].lower() + message[1:]
    return f"{where} {message}" if where else message


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
