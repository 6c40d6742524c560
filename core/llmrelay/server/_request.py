"""The body of ``POST /v1/chat/completions``: parsed, validated, and split into relay options.

Validated with pydantic before anything else happens, so a bad request costs no upstream call
and its 400 names the offending field in ``param`` (``messages[1].role``, ``temperature``).

Fields OpenAI defines are type-checked here with OpenAI's ranges and passed to
:func:`llmrelay.relay` as request options, where providers that do not support one refuse it
(400 naming it).

Every other field goes to the upstream as it was sent (see :func:`forwarding`): by name to a
provider that declares it, else inside ``extra_body`` to the providers that take one (the
OpenAI-compatible provider merges it into its request body), the others being skipped as for
any unsupported option. Two kinds are never forwarded as they are:

- the names that steer llmrelay itself (``base_url``, ``proxy``, ``timeout``, ...,
  :data:`RESERVED`): a client choosing where the server connects would be a server-side
  request forgery, so those are refused outright;
- OpenAI's fields whose answer this server cannot carry back (tool calls, log probabilities,
  audio: :data:`NOT_FORWARDED`): an upstream would act on them and their part of the answer be
  lost on the way, so they are passed by name only, to a provider that declares them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from .._options import Number
from .._types import Message
from ._errors import APIError, invalid_request

__all__ = [
    "EXTRA_BODY",
    "MAX_JSON_DEPTH",
    "MAX_MODEL_LENGTH",
    "NOT_FORWARDED",
    "RESERVED",
    "ChatRequest",
    "forwarding",
    "load_json_object",
    "parse_chat_request",
    "unsupported_param",
    "validate_chat_request",
]

#: Deeper JSON is refused: nothing legitimate nests this far, and very deep nesting exhausts
#: the recursion limit of every JSON encoder downstream.
MAX_JSON_DEPTH = 64

#: The request option that carries fields into the upstream body as they are: providers that
#: declare it (the OpenAI-compatible one) merge it into their request body.
EXTRA_BODY = "extra_body"

#: Names that would steer llmrelay's call (where to connect, how long to wait, which
#: registry) rather than the model's answer. Never taken from a client. ``extra_body`` is
#: among them: the OpenAI-compatible provider merges it into the upstream body over
#: everything else, so it would replace the model (any the upstream key can use, not the ones
#: configured), the messages and ``n`` this module checked. OpenAI's SDKs never send a field
#: of that name: they merge their ``extra_body`` argument into the body themselves, and the
#: server forwards those fields (see :func:`forwarding`).
RESERVED = frozenset(
    {
        "base_url",
        "extra_body",
        "proxy",
        "timeout",
        "max_retries",
        "drop_unsupported",
        "registry",
        "api_key",
        "config",
        "cls",
    }
)

#: OpenAI's fields whose answer this server cannot carry back: tool calls (``tools`` and
#: ``tool_choice`` too, which are checked fields), log probabilities, audio. Passed by name,
#: to providers that declare them (none of llmrelay's own): an upstream they were forwarded
#: to as they are would act on them, and its tool calls, log probabilities or audio be lost
#: on the way back. Without such a provider they get the 400 of any unsupported option (or
#: are dropped with ``--drop-unsupported``).
NOT_FORWARDED = frozenset(
    {
        "functions",
        "function_call",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
        "audio",
        "modalities",
    }
)


#: OpenAI's ranges, which this server presents to its clients as OpenAI's API does. The
#: library checks only the types (``llmrelay._options``): its providers include servers that
#: accept more, but a client of this server expects OpenAI's answers to OpenAI's requests.
Temperature = Annotated[Number, Field(ge=0, le=2)]
TopP = Annotated[Number, Field(ge=0, le=1)]
TokenCount = Annotated[StrictInt, Field(ge=1)]
Penalty = Annotated[Number, Field(ge=-2, le=2)]


def _token_id(key: str) -> str:
    if not (key.isascii() and key.isdigit()):
        raise ValueError("keys must be token ids: the tokenizer's numbers, as strings of digits")
    return key


#: ``logit_bias``: token ids (as JSON object keys, strings of digits) to a bias in -100..100.
TokenId = Annotated[str, AfterValidator(_token_id)]
Bias = Annotated[StrictInt, Field(ge=-100, le=100)]
#: OpenAI allows at most this many stop sequences.
MAX_STOP_SEQUENCES = 4

#: Longer model names are refused: real ones (``ft:gpt-4o-mini-2024-07-18:org::id``, a
#: Hugging Face ``org/repo:tag``) are far shorter, and an unknown name is compared with every
#: known one to suggest close names, which for a name of megabytes blocks the worker's event
#: loop (and every stream on it) for seconds.
MAX_MODEL_LENGTH = 256


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request, as far as llmrelay needs to know it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: StrictStr = Field(min_length=1, max_length=MAX_MODEL_LENGTH)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[TokenId, Bias] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    user: StrictStr | None = None

    @model_validator(mode="after")
    def _openai_rules(self) -> ChatRequest:
        if self.n is not None and self.n != 1:
            raise _FieldError("n", f"only n=1 is supported, got n={self.n}")
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_SEQUENCES:
            raise _FieldError(
                "stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop)}"
            )
        if self.stream_options is not None and not self.stream:
            raise _FieldError(
                "stream_options", "stream_options is only allowed when stream is true"
            )
        for name, value in (self.model_extra or {}).items():
            if name == EXTRA_BODY:
                raise _FieldError(
                    name,
                    "unknown parameter 'extra_body': send its fields at the top level of the "
                    "body, as OpenAI's SDKs do with their extra_body= argument; fields this "
                    "server does not know are forwarded to the upstream as they are",
                )
            if name in RESERVED:
                raise _FieldError(name, f"unknown parameter {name!r}")
            if not _finite(value):
                # 1e400 is valid JSON, but parses as infinity, which no JSON can carry on.
                raise _FieldError(name, "holds a number too large to forward as it was sent")
        return self

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def forwarded(self) -> list[str]:
        """The fields this server does not know that go upstream as they are (in
        ``extra_body`` where no provider declares them): every one the client set but those
        of :data:`NOT_FORWARDED` (null counts as unset, as for every field)."""
        extra = self.model_extra
        if not extra:  # nearly every request
            return []
        return [
            name for name, value in extra.items() if value is not None and name not in NOT_FORWARDED
        ]

    def options(self) -> dict[str, Any]:
        """Every field the client set (null counts as unset), except the ones the server itself
        acts on, by name: what :func:`forwarding` turns into the relay's request options."""
        own = {"model", "messages", "stream", "stream_options", "n"}
        options = {
            name: getattr(self, name)
            for name in self.model_fields_set
            if name not in own and name in type(self).model_fields
        }
        options.update(self.model_extra or {})
        return {
            name: value
            for name, value in options.items()
            if value is not None and not _asks_nothing(name, value, options)
        }


def _asks_nothing(name: str, value: object, options: dict[str, Any]) -> bool:
    """Whether a field whose answer this server cannot carry back (:data:`NOT_FORWARDED`,
    ``tool_choice``) holds a value that asks for no such answer: OpenAI's defaults, which some
    clients and frameworks send on every request. Unset, as null is, so they do not cost the
    request its providers (a ``400`` naming them): ``logprobs: false``, ``modalities:
    ["text"]``, and without ``tools`` or ``functions`` the tool fields that only steer them
    (``parallel_tool_calls``, ``tool_choice: "none"``, the older ``function_call: "none"``)."""
    if name == "logprobs":
        return value is False
    if name == "modalities":
        return value == ["text"]
    if name == "parallel_tool_calls" or (
        name in ("tool_choice", "function_call") and value == "none"
    ):
        return options.get("tools") is None and options.get("functions") is None  # (null: unset)
    return False


class _FieldError(ValueError):
    """A rule about one field, raised from a model validator; keeps the field for ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and validate a request body.

    Raises:
        APIError: 400, naming the field (``param``) and what is wrong with it.
    """
    return validate_chat_request(load_json_object(raw))


def load_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (checked for depth), or a 400 saying what is wrong."""
    if not raw or raw.isspace():
        raise invalid_request("the request body is empty: send a JSON object")
    try:
        # What json.loads does with bytes (UTF-8, -16 or -32), with one decoder for all.
        data = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        # The decoder's message quotes none of the body, and its end says where: all of it.
        reason = _short(str(exc), 160)
        raise invalid_request(f"the request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise invalid_request(f"the request body must be a JSON object, got {_json_type(data)}")
    if _may_nest_deeper(raw) and _depth(data) > MAX_JSON_DEPTH:
        raise _too_deep()
    return data


def validate_chat_request(data: dict[str, Any]) -> ChatRequest:
    """Validate a parsed body; a 400 names the first offending field in ``param``."""
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc) from None


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON and which no upstream accepts.
    raise ValueError(f"{name} is not a JSON value")


#: Built once: ``json.loads`` with an option builds a decoder (and its scanner) per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _may_nest_deeper(raw: bytes) -> bool:
    """Whether ``raw`` has enough brackets to nest deeper than the limit. Counting bytes is far
    cheaper than walking the parsed value, and an ordinary body has a few brackets."""
    return raw.count(b"{") + raw.count(b"[") >= MAX_JSON_DEPTH


def _too_deep() -> APIError:
    return invalid_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")


def _depth(value: object) -> int:
    """How deep ``value`` nests, without recursion (it must not fail on the input it checks)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > MAX_JSON_DEPTH:
                return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _describe(exc: ValidationError) -> APIError:
    """One 400 for all problems; ``param`` is the first problem's field."""
    problems: list[str] = []
    params: list[str] = []
    for err in exc.errors(include_url=False, include_context=True):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            params.append(cause.param)
            problems.append(f"{cause.param}: {cause.message}")
            continue
        where = _path(err["loc"]) or "body"
        params.append(where)
        got = "" if err["type"] == "missing" else f" (got {_short(repr(err.get('input')))})"
        problems.append(f"{where}: {err['msg']}{got}")
    unique = list(dict.fromkeys(problems))
    more = "; ..." if len(unique) > 3 else ""
    return invalid_request("invalid request: " + "; ".join(unique[:3]) + more, params[0])


def _path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content", "str")`` as ``messages[0].content``, union tags dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_tag(part):
            path += f".{part}" if path else part
    return path


def _is_union_tag(part: str) -> bool:
    # pydantic names the branch of a union it tried: "str", "list[...]", "TextPart", ...
    return (
        part in {"str", "int", "float", "bool", "dict", "list", "TextPart", "OtherPart"}
        or "[" in part
        or part.startswith(("function-", "constrained-"))
    )


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def forwarding(
    options: dict[str, Any], forwarded: Sequence[str], supported: Sequence[frozenset[str]]
) -> tuple[dict[str, Any], list[str]]:
    """The relay's request options, and the names moved into ``extra_body``.

    ``options`` are :meth:`ChatRequest.options`, ``forwarded`` the names among them that go
    upstream as they are (:attr:`ChatRequest.forwarded`), ``supported`` the
    ``supported_options`` of each provider serving the model. A forwarded field that one of
    them declares stays a request option by that name, as it was (that provider takes it);
    the others move into ``extra_body``, values untouched, for the providers that take one.
    A provider taking neither is skipped (or, with ``drop_unsupported``, gets neither).
    """
    declared = frozenset().union(*supported)
    moved = [name for name in forwarded if name not in declared]
    if not moved:
        return options, moved
    sent = {name: value for name, value in options.items() if name not in moved}
    sent[EXTRA_BODY] = {name: options[name] for name in moved}
    return sent, moved


def unsupported_param(
    options: dict[str, Any], supported: Sequence[frozenset[str]], moved: Sequence[str] = ()
) -> str | None:
    """The first option that none of the candidate providers supports (for ``param``): by
    name, or, for a field in ``moved`` (sent inside ``extra_body``), through ``extra_body``."""
    for name in options:
        through = name in moved
        if not any(
            name in accepted or (through and EXTRA_BODY in accepted) for accepted in supported
        ):
            return name
    return None


def _finite(value: object) -> bool:
    """Whether ``value`` (parsed JSON) holds no infinite number, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
