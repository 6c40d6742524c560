"""The OpenAI chat-completions protocol, streamed (SSE) or not.

One class speaks the protocol; :func:`provider_for` makes a subclass per configured endpoint, so
each endpoint is its own provider with its own name, URL, key and models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, TypeAdapter

from llmrelay import (
    Call,
    Chunk,
    Completion,
    FinishReason,
    Message,
    Provider,
    Reasoning,
    Usage,
    errors,
)
from llmrelay._config import EndpointConfig
from llmrelay._endpoints import cached_models, request_headers, upstream_error
from llmrelay._env import getenv
from llmrelay._json import loads
from llmrelay._provider import _owner
from llmrelay._types import REASONING_FIELDS
from llmrelay.sse import SSEDecoder, SSETooLarge

__all__ = ["OpenAICompatible", "StreamParser", "provider_for"]

log = logging.getLogger("llmrelay")

#: Request fields passed through to the server as given (``extra_body`` is merged in).
OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "reasoning_effort",
        "user",
        "stream_options",
        "extra_body",
    }
)

#: The model asked for by ``NAME/`` when an endpoint lists no models and sets no default:
#: single-model servers (llama.cpp, LM Studio with one model loaded) answer whatever it is.
PLACEHOLDER_MODEL = "default"

#: The messages as JSON data in one call into pydantic-core (``model_dump`` per message adds
#: a Python layer for each). See ``_messages_data`` for what JSON mode would alter.
_MESSAGES_JSON = TypeAdapter(list[Message]).serializer.to_python

_FINISH = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    # Not OpenAI's, but OpenRouter's (and llmrelay serve's own) for a generation that failed
    # after some text: reported as "stop" it would pass a cut answer off as whole.
    "error": "error",
}
#: One immutable ``FinishReason`` per name, shared by every answer.
_FINISH_REASON: dict[str, FinishReason] = {
    name: FinishReason(name)  # type: ignore[arg-type]
    for name in set(_FINISH.values())
}


class OpenAICompatible(Provider):
    """Any server that speaks ``POST {base_url}/chat/completions`` like OpenAI.

    Subclass it (or let :func:`provider_for` do it) with ``name``, ``url`` (the base URL,
    ``.../v1``), ``models`` and, for a server that wants a key, ``api_key_env``.
    """

    name = "openai_compat"
    label = "OpenAI-compatible"
    url = "http://127.0.0.1:8000/v1"
    api_endpoint = "/chat/completions"
    default_model = PLACEHOLDER_MODEL
    supports_stream = True
    supported_options = OPTIONS
    #: The environment variable holding the key (``Authorization: Bearer ...``), if any.
    api_key_env: ClassVar[str | None] = None
    #: Headers sent with every request (never the key: see ``api_key_env``).
    extra_headers: ClassVar[Mapping[str, str]] = {}
    #: Whether earlier assistant turns' reasoning is sent back (see ``_messages_data``).
    send_reasoning: ClassVar[bool] = False
    #: This class's request headers, once built (see ``_headers``).
    _headers_built: ClassVar[_BuiltHeaders | None] = None
    #: Whether the class overrides :meth:`headers` (then called on every request).
    _custom_headers: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._custom_headers = _owner(cls, "headers") is not OpenAICompatible

    @classmethod
    def headers(cls) -> dict[str, str]:
        """The request headers, with the key read from the environment now."""
        return request_headers(cls.name, cls.api_key_env, cls.extra_headers)

    @classmethod
    def _headers(cls) -> Mapping[str, str]:
        """What a request sends: :meth:`headers`, as a read-only case-insensitive mapping
        (one aiohttp takes without converting it) built again only when what it is made of
        changed: the key variable's name or value, or ``extra_headers``. Each class keeps its
        own (a subclass's key is its own), and a subclass that overrides :meth:`headers` gets
        it called on every request, as before."""
        if cls._custom_headers:
            return cls.headers()
        key = getenv(cls.api_key_env) if cls.api_key_env else None
        built = cls._headers_built
        if (
            built is not None
            and built.owner is cls  # not a parent's (a subclass may name another key)
            and built.key == key
            and built.key_env == cls.api_key_env
            and built.extra == cls.extra_headers
        ):
            return built.headers
        cls._headers_built = None  # a key that is gone is forgotten, even if the build fails
        from multidict import CIMultiDict, CIMultiDictProxy  # aiohttp's own (not at import)

        headers = CIMultiDict(cls.headers())
        headers.setdefault("Content-Type", "application/json")
        ready = CIMultiDictProxy(headers)
        cls._headers_built = _BuiltHeaders(
            cls, cls.api_key_env, key, dict(cls.extra_headers), ready
        )
        return ready

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        """A whole answer: one request without ``"stream": true``."""
        # The body is built in the argument list, not held in a local: a local would keep it
        # (three objects) alive for as long as the answer is awaited.
        try:
            answer = await call.request(
                "POST",
                call.url(cls.api_endpoint or ""),
                headers=cls._headers(),
                json_body=_whole_answer_body(cls.name, model, messages, call, cls.send_reasoning),
            )
        except errors.HTTPStatusError as exc:
            raise upstream_error(exc) from None
        return _completion(cls.name, answer.json(cls.name))

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        if not call.stream:
            for chunk in (await cls.complete(model, messages, call)).chunks():
                yield chunk
            return
        body = _request_body(cls.name, model, messages, call, cls.send_reasoning)
        url = call.url(cls.api_endpoint or "")
        headers = cls._headers()
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
        parser = StreamParser(cls.name)
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    call.open_stream("POST", url, headers=headers, json_body=body)
                )
            except errors.HTTPStatusError as exc:
                raise upstream_error(exc) from None
            if "text/event-stream" not in response.headers.get("Content-Type", "").lower():
                # Some servers ignore "stream": take the whole answer as one chunk.
                data = await call.read(response.read())
                for chunk in _completion(cls.name, _json(cls.name, data)).chunks():
                    yield chunk
                return
            while not parser.done:
                raw = await call.read(response.content.readany())
                for text in parser.feed(raw):
                    yield text
                if not raw:
                    break
        for chunk in parser.ending():
            yield chunk


def _whole_answer_body(
    provider: str, model: str, messages: list[Message], call: Call, keep_reasoning: bool
) -> dict[str, Any]:
    """The JSON body of a whole answer: without ``stream_options``, which servers refuse
    without ``"stream": true``."""
    body = _request_body(provider, model, messages, call, keep_reasoning)
    body.pop("stream_options", None)
    return body


def _request_body(
    provider: str, model: str, messages: list[Message], call: Call, keep_reasoning: bool = False
) -> dict[str, Any]:
    """The JSON body: model, messages, then the request options, then ``extra_body``'s fields
    (which win, as OpenAI's SDK has it)."""
    body = {"model": model, "messages": _messages_data(provider, messages, keep_reasoning)}
    if not call.options:  # nearly every call: nothing to copy or check
        return body
    options = dict(call.options)
    extra = options.pop("extra_body", None) or {}
    if not isinstance(extra, Mapping):
        raise errors.InvalidRequest(
            f"{provider}: extra_body must be a dict of fields to add to the request, "
            f"got {type(extra).__name__}"
        )
    body.update(options)
    body.update(extra)
    return body


def _messages_data(provider: str, messages: list[Message], keep_reasoning: bool = False) -> Any:
    """The messages as JSON data, as pydantic writes them: extra fields holding datetimes,
    UUIDs, Decimals or enums go as their JSON forms.

    An earlier assistant turn's ``reasoning`` (``reasoning_content``), which an answer dumped
    back into the conversation carries, is left out unless ``keep_reasoning`` or the turn
    called tools: servers that refuse unknown message fields (Groq)
    fail on it, and DeepSeek ignores it, but on a turn with tool calls DeepSeek requires it.

    What JSON mode would alter without a word is refused instead (NaN and infinities become
    null, sets become lists), as it is in request options, and so is what it cannot write.

    Raises:
        InvalidRequest: naming the message and the field.
    """
    plain = True  # every message only a role and text: nearly every request
    for message in messages:  # (no enumerate(): this runs on every request)
        # Only extra fields (the message's own, or its content parts') can hold such values.
        if message.__pydantic_extra__ or type(message.content) is not str:
            plain = False
            _check_faithful(provider, messages, message)
    if plain:
        # What the serializer writes for them, written here: the request body takes 10.3k →
        # 7.8k instructions (callgrind), and the serializer's code is not run at all.
        return [{"role": message.role, "content": message.content} for message in messages]
    try:
        data = _MESSAGES_JSON(messages, mode="json", exclude_unset=True)
    except ValueError as exc:  # PydanticSerializationError; UnicodeDecodeError for bytes
        raise errors.InvalidRequest(
            f"{provider}: the messages cannot be sent as JSON ({exc}); check their extra fields"
        ) from None
    for item in data:
        # A turn that called tools keeps it: DeepSeek refuses such a turn without its
        # reasoning_content, and interleaved-thinking models read it. (A None is never
        # there: ``Message`` drops it.)
        if item.get("role") == "assistant" and not (
            keep_reasoning or item.get("tool_calls") or item.get("function_call")
        ):
            for name in REASONING_FIELDS:
                item.pop(name, None)
    return data


def _check_faithful(provider: str, messages: list[Message], message: Message) -> None:
    fields: list[tuple[str, object]] = list((message.model_extra or {}).items())
    if isinstance(message.content, list):
        for n, part in enumerate(message.content):
            fields += [(f"content[{n}].{k}", v) for k, v in (part.model_extra or {}).items()]
    for name, value in fields:
        problem = _unfaithful(value)
        if problem is not None:
            index = next(i for i, m in enumerate(messages) if m is message)  # by identity
            raise errors.InvalidRequest(
                f"{provider}: messages[{index}].{name} holds {problem}, which JSON cannot "
                "carry as it is; send a JSON value instead"
            )


def _unfaithful(value: object, depth: int = 0) -> str | None:
    """What in ``value`` JSON mode would change without a word, or None: a non-finite float
    (null), a set (a list), bytes (text), a complex number (text), a key that is not a
    string (text)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else repr(value)
    if isinstance(value, set | frozenset):
        return "a set"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, complex):
        return "a complex number"
    if depth > 32:  # deeper than any message needs; pydantic refuses cycles itself
        return None
    items: Iterable[object] = ()
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return f"the key {key!r}, not a string"
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif isinstance(value, BaseModel):
        items = [*vars(value).values(), *(value.model_extra or {}).values()]
    for item in items:
        problem = _unfaithful(item, depth + 1)
        if problem is not None:
            return problem
    return None


class StreamParser:
    """Turns the bytes of an OpenAI SSE stream, cut anywhere, into text (and ``Reasoning``)
    chunks.

    :meth:`feed` returns the text of each event it completed, each event's ``Reasoning``
    before its text (``b""`` means the end of the stream); :meth:`ending` gives the ``Usage``
    (if reported) and the ``FinishReason`` once the stream is over, or raises the error the
    stream reported. It follows the SSE rules of
    :mod:`llmrelay.sse` and OpenAI's: ``[DONE]`` ends the stream, an ``error`` object (or an
    ``error`` event) is a typed error even after a 200, ``choices`` may be null or empty (the
    usage-only last chunk), only choice 0 is read.

    An error ends the stream but is kept for :meth:`ending`, so the text of the events before
    it is delivered first, however the bytes were cut.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.error: errors.ProviderError | None = None
        self._decoder = SSEDecoder()

    def feed(self, raw: bytes) -> list[str | Reasoning]:
        if self.done:
            return []
        try:
            events = self._decoder.feed(raw) if raw else self._decoder.close()
        except SSETooLarge as exc:
            raise errors.InvalidResponse(str(exc), provider=self.provider) from None
        texts: list[str | Reasoning] = []
        for event in events:
            try:
                text = self._handle(event.event, event.data, texts)
            except errors.ProviderError as exc:
                self.error, self.done = exc, True
            else:
                if text:
                    texts.append(text)
            if self.done:
                break
        return texts

    def ending(self) -> list[Chunk]:
        """What follows the text: ``[Usage]``, ``FinishReason``.

        Raises:
            ProviderError: the error the stream reported (an error event, a malformed chunk).
            ConnectError: the connection ended before ``[DONE]`` and before any
                ``finish_reason`` (a cut stream; after text, the caller sees
                ``StreamInterrupted``).
        """
        if self.error is not None:
            raise self.error
        if not self.done and self.finish is None:
            raise errors.ConnectError("stream ended before [DONE]", provider=self.provider)
        ending: list[Chunk] = [] if self.usage is None else [self.usage]
        ending.append(_FINISH_REASON[self.finish or "stop"])
        return ending

    def _handle(self, event: str, data: str, out: list[str | Reasoning]) -> str:
        """The text of one event; its reasoning, if any, is appended to ``out``."""
        if data == "[DONE]":
            self.done = True
            return ""
        if event == "error":
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):  # plain text, or JSON that is not an object
                payload = {"error": {"message": data}}
            raise error_from_body(self.provider, payload, status=None)
        if not data.strip():  # an event with no data carries nothing (a keep-alive)
            return ""
        chunk = _json(self.provider, data)
        if not isinstance(chunk, dict):
            raise _invalid(self.provider, data)
        if chunk.get("error"):
            raise error_from_body(self.provider, chunk, status=None)
        usage = chunk.get("usage")
        if usage:
            self.usage = _usage(self.provider, usage)
        text = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            if "reasoning_content" in delta or "reasoning" in delta:
                thought = _reasoning(delta)
                if thought:
                    out.append(Reasoning(thought))
            content = delta.get("content")
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                self.finish = _finish(choice["finish_reason"])
        return text


@dataclass(frozen=True, slots=True)
class _BuiltHeaders:
    """One endpoint's request headers and what they were built from."""

    owner: type[OpenAICompatible]
    key_env: str | None
    key: str | None = field(repr=False)  # a secret: never shown
    extra: dict[str, str]
    headers: Mapping[str, str] = field(repr=False)


def _completion(provider: str, data: Any) -> Completion:
    """The ``Completion`` in a ``chat.completion`` object (choice 0)."""
    if not isinstance(data, dict):
        raise _invalid(provider, str(data))
    if data.get("error"):
        raise error_from_body(provider, data, status=None)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _invalid(provider, json.dumps(data))
    choice = choices[0]
    message = choice.get("message") or {}
    if not isinstance(message, dict):
        message = {}
    content = message.get("content")
    usage = data.get("usage")
    thought = None
    if "reasoning_content" in message or "reasoning" in message:  # (a reasoning model)
        thought = _reasoning(message) or None
    return Completion(
        content if isinstance(content, str) else "",
        _FINISH_REASON[_finish(choice.get("finish_reason"))],
        _usage(provider, usage) if usage else None,
        thought,
    )


def _reasoning(message: dict[str, Any]) -> str:
    """The reasoning in a message or a delta, apart from its content: ``reasoning`` (vLLM
    since 0.9, Ollama, OpenRouter, Groq) or ``reasoning_content`` (DeepSeek, llama.cpp, older
    vLLM); the first that holds text, so a server that sends both is not read twice."""
    for name in REASONING_FIELDS:
        text = message.get(name)
        if isinstance(text, str) and text:
            return text
    return ""


def _finish(reason: Any) -> str:
    if reason is None:
        return "stop"
    mapped = _FINISH.get(str(reason))
    if mapped is None:
        log.debug("unknown finish_reason %r reported as 'stop'", reason)
        return "stop"
    return mapped


def _usage(provider: str, usage: Any) -> Usage:
    """The ``usage`` object as a :class:`Usage`: its three counts, and whatever else the server
    reported beside them (``completion_tokens_details``, ``prompt_tokens_details``, a cost, a
    cache's hits...) kept as it came, as extra fields."""
    try:
        counts = (
            int(usage["prompt_tokens"]),
            int(usage["completion_tokens"]),
            int(usage.get("total_tokens") or 0) or None,
        )
        if len(usage) == 3 and "total_tokens" in usage:  # the counts and nothing else
            return Usage(*counts)
        return Usage(*counts, **{k: v for k, v in usage.items() if k not in _COUNTS})
    except (KeyError, TypeError, ValueError):
        raise _invalid(provider, f"usage {usage!r}") from None


#: The counts of a ``usage`` object; anything else in it is kept as an extra field.
_COUNTS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})


def _json(provider: str, data: str | bytes) -> Any:
    try:
        return loads(data)
    except ValueError:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        raise _invalid(provider, text) from None


def _invalid(provider: str, text: str) -> errors.InvalidResponse:
    from llmrelay._transport import excerpt

    return errors.InvalidResponse(
        f"unexpected answer: {excerpt(text)!r}", provider=provider, body=excerpt(text)
    )


def error_from_body(
    provider: str, data: dict[str, Any], status: int | None
) -> errors.ProviderError:
    """An ``{"error": {...}}`` object sent inside a 200 answer or stream, as a typed error.

    The upstream message is kept. Its ``code`` (when numeric) or ``type`` picks the class:
    429 or a rate-limit type is ``RateLimited``, another 4xx ``BadRequest``, anything else
    ``ServerError`` (retryable before the first chunk, ``StreamInterrupted`` after it).
    """
    error = data.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("type") or "error")
        code = error.get("code")
        kind = str(error.get("type") or "")
    else:
        message, code, kind = str(error), None, ""
    if status is None and isinstance(code, int) and 400 <= code < 600:
        status = code
    cls: type[errors.ProviderError] = errors.ServerError
    if status == 429 or "rate" in kind:
        cls = errors.RateLimited
    elif status is not None and 400 <= status < 500:
        cls = errors.BadRequest
    from llmrelay._transport import excerpt

    # Upstream text is untrusted: shortened and scrubbed like every other error body.
    return cls(excerpt(message), provider=provider, status=status, body=excerpt(json.dumps(data)))


def provider_for(endpoint: EndpointConfig) -> type[OpenAICompatible]:
    """A provider class for one configured endpoint.

    Its models are the configured ones, else the list cached by
    ``llmrelay models --refresh NAME``. With neither, it serves no model by bare name (but its
    ``model_aliases``) and accepts any model pinned as ``NAME/model``.
    """
    models = endpoint.models or cached_models(endpoint)
    default = endpoint.default_model or (models[0] if models else PLACEHOLDER_MODEL)
    if models:  # a fetched list may lack what the configuration names: serve those too
        named = [default, *endpoint.model_aliases.values()]
        models = (*(m for m in dict.fromkeys(named) if m not in models), *models)
    attrs: dict[str, Any] = {
        "name": endpoint.name,
        "label": f"{endpoint.name} (OpenAI-compatible)",
        "url": endpoint.base_url,
        "models": models,
        "default_model": default,
        "model_aliases": dict(endpoint.model_aliases),
        "working": endpoint.working,
        "needs_auth": endpoint.api_key_env is not None,
        "api_key_env": endpoint.api_key_env,
        "extra_headers": dict(endpoint.headers),
        "send_reasoning": endpoint.send_reasoning,
        "__doc__": f"The OpenAI-compatible endpoint {endpoint.name!r} at {endpoint.base_url}.",
    }
    return type(f"OpenAICompatible[{endpoint.name}]", (OpenAICompatible,), attrs)
