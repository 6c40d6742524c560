"""The values that cross llmrelay's public surface: messages in, chunks out.

Messages are validated once, at the edge, so no provider ever sees malformed input and no I/O
starts for a request that cannot succeed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ._built import built, fill
from .errors import InvalidRequest

__all__ = [
    "REASONING_FIELDS",
    "Chunk",
    "ContentPart",
    "FinishReason",
    "Message",
    "Messages",
    "Reasoning",
    "Role",
    "TextPart",
    "Usage",
    "validate_messages",
]

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]
FinishReasonName: TypeAlias = Literal["stop", "length", "content_filter", "tool_calls", "error"]


class TextPart(BaseModel):
    """A text part of a message's content: ``{"type": "text", "text": "..."}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """A non-text part (image, audio, ...), kept whole so nothing the caller sent is lost."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)

    @field_validator("type")
    @classmethod
    def _not_text(cls, value: str) -> str:
        if value == "text":
            raise ValueError('a "text" part needs a string "text" field')
        return value


ContentPart: TypeAlias = TextPart | OtherPart

#: Where a message carries a model's reasoning, apart from its content: ``reasoning`` (vLLM
#: since 0.9, Ollama, OpenRouter, Groq, and llmrelay's answers) or ``reasoning_content``
#: (DeepSeek, llama.cpp, older vLLM); read in this order.
REASONING_FIELDS = ("reasoning_content", "reasoning")


class Message(BaseModel):
    """One chat message, in the OpenAI shape.

    ``content`` is a string or a list of parts. Fields llmrelay does not know (``name``,
    ``tool_call_id``, ...) are kept as given.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    role: Role
    content: str | list[ContentPart] | None

    @model_validator(mode="before")
    @classmethod
    def _assistant_turn(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("role") != "assistant":
            return data
        # An answer put back carries "reasoning": None when the model sent none: nothing.
        if any(data.get(name, "") is None for name in REASONING_FIELDS):
            data = {k: v for k, v in data.items() if not (k in REASONING_FIELDS and v is None)}
        # An assistant turn that calls tools may leave content out: it is then null, as
        # OpenAI reads it (every other message still gets "content: Field required").
        if "content" not in data and (data.get("tool_calls") or data.get("function_call")):
            return {**data, "content": None}
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _text_not_bytes(cls, value: Any) -> Any:
        # Lax validation would decode bytes without a word, while it refuses numbers and
        # booleans: say what to do instead, as for them.
        if isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("must be text (str), not bytes: decode it first")
        return value

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        # OpenAI allows content to be null, or left out, only on an assistant turn that calls
        # tools (``tool_calls``, or the deprecated ``function_call``).
        if self.content is None and not (
            self.role == "assistant"
            and self.model_extra
            and (self.model_extra.get("tool_calls") or self.model_extra.get("function_call"))
        ):
            raise ValueError(
                "content is required (null only for an assistant turn with tool_calls)"
            )
        return self

    @property
    def text(self) -> str:
        """The text of the content: the string itself, or the text parts concatenated."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


#: What every entry point accepts: ``Message`` objects or plain dicts, mixed freely, and the
#: message of an answer put back as it is (``completion.choices[0].message``, llmrelay's or
#: OpenAI's SDK's ``ChatCompletionMessage``, read as its fields that are not None).
Messages: TypeAlias = Sequence[Message | dict[str, Any] | BaseModel]

_MESSAGE_LIST = TypeAdapter(list[Message])
_MESSAGE_VALIDATOR = _MESSAGE_LIST.validator


def validate_messages(messages: object) -> list[Message]:
    """Check ``messages`` and return them as ``Message`` objects.

    Raises:
        InvalidRequest: naming the offending message index and field, e.g.
            ``messages[1].role: Input should be 'system', ... (got 'robot')``.
    """
    # A list, nearly always: the Sequence check is an ABC's, in Python, so it is skipped then.
    if type(messages) is not list and (
        isinstance(messages, str | bytes) or not isinstance(messages, Sequence)
    ):
        raise InvalidRequest(
            f"messages must be a list of messages, got {type(messages).__name__}; "
            'e.g. [{"role": "user", "content": "Hello"}]'
        )
    if not messages:
        raise InvalidRequest("messages must not be empty: send at least one message")
    plain = _plain_messages(messages)
    if plain is not None:
        return plain
    models = 0  # a loop, not all()/any() over a generator: this runs on every request
    others = False
    for index, m in enumerate(messages):
        if isinstance(m, Message):
            models += 1
        elif isinstance(m, BaseModel):
            if type(m).__name__ not in _ANSWER_MESSAGES:
                raise InvalidRequest(
                    f"messages[{index}] is a {type(m).__name__}: send a message (a dict, a "
                    "Message, or an answer's ChatCompletionMessage), not a chunk's delta or "
                    "another object"
                )
            others = True
    if models == len(messages):  # already checked (frozen): no copy
        return list(messages)
    if models or others:  # mixed: validate the models' data too
        messages = [_as_data(m) for m in messages]
    elif type(messages) is not list:  # a tuple or another Sequence: pydantic wants a list
        messages = list(messages)
    try:
        # The core validator itself: TypeAdapter.validate_python adds a Python layer per call.
        return _MESSAGE_VALIDATOR.validate_python(messages)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


#: The pydantic models read as a message: an answer's message, llmrelay's or OpenAI's SDK's
#: (by name: neither is imported here). A chunk's delta or another model is refused.
_ANSWER_MESSAGES = frozenset({"ChatCompletionMessage"})


def _as_data(message: object) -> object:
    """A message as the validator takes it: a ``Message``'s fields as given; another model's
    (an answer's message, put back) without those that are None (``refusal``, ``audio``,
    ``reasoning``, ... which an answer without them carries as None)."""
    if isinstance(message, Message):
        return message.model_dump(exclude_unset=True)
    if isinstance(message, BaseModel):
        return message.model_dump(exclude_none=True)
    return message


_ROLES = frozenset(get_args(Role))


def _plain_messages(messages: Sequence[object]) -> list[Message] | None:
    """``messages`` as ``Message`` objects if every one is a plain dict of a known role and
    a text content, and nothing else: what nearly every request sends. None otherwise; the
    validator then checks them all (and words any error).

    For such messages validation would only confirm the checks made here, so each
    ``Message`` is filled as it would fill it, without a run of pydantic-core (see
    ``_built``); tests/test_types.py pins the result to the validator's.
    """
    checked = []
    for m in messages:  # (no comprehension: it stops at the first message that is not plain)
        if type(m) is not dict or len(m) != 2:
            return None
        role = m.get("role")
        content = m.get("content")
        if type(role) is not str or role not in _ROLES or type(content) is not str:
            return None
        checked.append(built(Message, {"role": role, "content": content}, {}))
    return checked


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's report into one line per problem, addressed like ``messages[2].content``."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        where = f"messages[{loc[0]}]" if loc else "messages"
        # Drop pydantic's union branch names ("str", "list[...]", "TextPart") from the path.
        fields = [str(p) for p in loc[1:] if not _is_union_tag(p)]
        if fields:
            where += "." + ".".join(fields)
        got = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
        problems.append(f"{where}: {err['msg']}{got}")
    unique = list(dict.fromkeys(problems))
    return "invalid messages: " + "; ".join(unique[:5]) + ("; ..." if len(unique) > 5 else "")


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in {"str", "TextPart", "OtherPart"} or part.startswith(("list[", "function-"))
    )


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FinishReason(BaseModel):
    """The last item of every stream: why the provider stopped.

    ``FinishReason("stop")`` works positionally. Its ``str()`` is empty, so the common loop
    ``async for item in stream: print(item, end="")`` prints only the text.
    """

    model_config = ConfigDict(frozen=True)

    reason: FinishReasonName = "stop"

    def __init__(self, reason: FinishReasonName = "stop", /, **data: Any) -> None:
        super().__init__(reason=data.pop("reason", reason), **data)

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"FinishReason({self.reason!r})"


class Usage(BaseModel):
    """Token counts as the provider reported them; llmrelay never invents them.

    Whatever else the provider reported with them is kept as extra fields, as it came:
    OpenAI's ``completion_tokens_details`` (``reasoning_tokens``) and ``prompt_tokens_details``
    (``cached_tokens``), DeepSeek's ``prompt_cache_hit_tokens``, OpenRouter's ``cost``, ... Read
    them as attributes (``usage.completion_tokens_details``) or all at once in ``model_extra``;
    ``llmrelay serve`` sends them on.

    Its ``str()`` is empty for the same reason as :class:`FinishReason`'s.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    def __init__(
        self,
        /,
        prompt_tokens: int,
        completion_tokens: int,
        total_tokens: int | None = None,
        **data: Any,
    ) -> None:
        # ``self`` is positional-only: a provider's extra field named "self" is an extra.
        if (
            not data
            and type(prompt_tokens) is int
            and type(completion_tokens) is int
            and (total_tokens is None or type(total_tokens) is int)
            and prompt_tokens >= 0
            and completion_tokens >= 0
            and (total_tokens is None or total_tokens >= 0)
        ):
            # Counts already as validation would leave them (non-negative ints, as every
            # provider reports them): set as it would set them, without a run of
            # pydantic-core (see ``_built``).
            total = prompt_tokens + completion_tokens if total_tokens is None else total_tokens
            counts = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
            }
            fill(self, counts, {})
            return
        data["prompt_tokens"] = prompt_tokens
        data["completion_tokens"] = completion_tokens
        data["total_tokens"] = 0 if total_tokens is None else total_tokens
        # The validator itself, not BaseModel.__init__: a custom __init__ is what pydantic
        # calls to build a Usage from data too, and every answer with usage builds one.
        self.__pydantic_validator__.validate_python(data, self_instance=self)
        if total_tokens is None:  # the sum of the validated counts (never of "5" and "7")
            object.__setattr__(self, "total_tokens", self.prompt_tokens + self.completion_tokens)

    def __str__(self) -> str:
        return ""


class Reasoning(BaseModel):
    """Reasoning a model sent apart from its answer (its "thinking"), as reasoning models
    served by vLLM, llama.cpp, Ollama, DeepSeek, Groq or OpenRouter do.

    It is not the answer: ``.text()`` and ``ChatCompletion.choices[0].message.content`` leave
    it out, and its ``str()`` is empty for the same reason as :class:`FinishReason`'s. It is
    kept all the same (``message.reasoning``, ``delta.reasoning``), so nothing a provider
    sent is lost. ``Reasoning("...")`` works positionally.
    """

    model_config = ConfigDict(frozen=True)

    text: str

    def __init__(self, text: str | None = None, /, **data: Any) -> None:
        if not data and type(text) is str:
            # A plain str, as every provider yields it: set as validation would set it,
            # without a run of pydantic-core per chunk of a long stream of thought.
            fill(self, {"text": text}, None)
            return
        if text is not None:  # (None: ``text=`` is a keyword, as validation passes it)
            data["text"] = text
        super().__init__(**data)

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"Reasoning({self.text!r})"


#: One item of a provider's stream: text and reasoning, then optionally usage, then exactly one
#: finish reason.
Chunk: TypeAlias = str | Reasoning | Usage | FinishReason
