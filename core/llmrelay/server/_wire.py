"""OpenAI's response shapes as bytes: the ``chat.completion`` body and the SSE frames of a
``chat.completion.chunk`` stream.

Everything here is on the hot path, so it encodes with one shared encoder (``json.dumps`` with
options builds a new one per call) and never through pydantic. Every chunk of one answer
repeats the same ``id``, ``created`` and ``model``, so that part is encoded once per answer and
a content chunk costs one string encoding. The frames are exactly what OpenAI sends::

    data: {"id":..., "choices":[{"index":0,"delta":{"role":"assistant","content":""},...}]}
    data: {... "delta":{"content":"Hel"} ...}
    data: {... "delta":{},"finish_reason":"stop"}]}
    data: {... "choices":[],"usage":{...}}          (only with stream_options.include_usage)
    data: [DONE]
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

from .._types import Usage

__all__ = ["DONE", "ChunkEncoder", "completion_body", "frame"]

DONE = b"data: [DONE]\n\n"

#: Compact, with UTF-8 kept raw (shorter than ``\u`` escapes). Shared: it holds no state.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: For the rare text with a lone surrogate (JSON input may carry one as ``"\ud800"``): it has
#: no UTF-8 form, so only its ``\u`` escape can be sent.
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))
_SURROGATE = re.compile("[\ud800-\udfff]")

#: Characters JSON may leave raw that ``str.splitlines()`` takes for line ends: a client that
#: splits the decoded stream that way would cut an event in two.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _dumps(value: Any) -> str:
    """Compact JSON that encodes to valid UTF-8 and holds no raw line breaker. ASCII output
    (the usual case) is checked in constant time and needs nothing more."""
    encoded = _ENCODER.encode(value)
    if encoded.isascii():
        return encoded
    if _SURROGATE.search(encoded):
        return _ASCII_ENCODER.encode(value)
    return encoded.translate(_LINE_BREAKERS)


def _string(text: str) -> str:
    """:func:`_dumps` for a string: the C encoder directly, without the encoder's dispatch."""
    encoded = encode_basestring(text)
    if encoded.isascii():
        return encoded
    if _SURROGATE.search(encoded):
        return encode_basestring_ascii(text)
    return encoded.translate(_LINE_BREAKERS)


def _usage(usage: Usage) -> str:
    """OpenAI's ``usage`` object: the three counts ``Usage`` holds, then what else the provider
    reported with them (``completion_tokens_details``, ...), as it came (what ``model_dump``
    gives, at a fraction of its cost; a test pins the two equal)."""
    counts = (
        f'{{"prompt_tokens":{usage.prompt_tokens:d},'
        f'"completion_tokens":{usage.completion_tokens:d},'
        f'"total_tokens":{usage.total_tokens:d}'
    )
    extra = usage.__pydantic_extra__
    if not extra:
        return counts + "}"
    # JSON's forms of what a plugin may have put there (a datetime, a Decimal, a float NaN,
    # which JSON cannot carry: null), as ``model_dump_json`` writes them; what came from a
    # server's JSON is JSON already.
    from pydantic_core import to_jsonable_python

    return f"{counts},{_dumps(to_jsonable_python(extra, inf_nan_mode='null'))[1:]}"


def frame(payload: Any) -> bytes:
    """One ``data:`` event. JSON never contains a raw newline, so one line always suffices."""
    return f"data: {_dumps(payload)}\n\n".encode()


def completion_body(
    completion: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    usage: Usage | None,
    reasoning: str | None = None,
) -> bytes:
    """A whole ``chat.completion`` (``stream=false``), as OpenAI sends it; the message carries
    ``reasoning`` (as vLLM, Ollama and OpenRouter name it) when the model sent any.

    Filled into a template, as the stream's frames are, rather than encoded from a dict: only
    the strings need encoding, and on a server's cold path the encoder's set-up for a dict
    costs more than the answer's text does.
    """
    totals = "null" if usage is None else _usage(usage)
    thought = "" if reasoning is None else f',"reasoning":{_string(reasoning)}'
    return (
        f'{{"id":{_string(completion)},"object":"chat.completion","created":{created},'
        f'"model":{_string(model)},"choices":[{{"index":0,"message":{{"role":"assistant",'
        f'"content":{_string(text)},"refusal":null{thought}}},"logprobs":null,'
        f'"finish_reason":{_string(finish)}}}],"usage":{totals},"system_fingerprint":null}}'
    ).encode()


class ChunkEncoder:
    """The frames of one streamed answer.

    With ``include_usage``, every chunk carries ``"usage": null`` and the usage chunk (empty
    ``choices``) carries the totals, as OpenAI does. The constant parts of a content frame are
    bytes built once, so a content frame is one string encoding and one concatenation.
    """

    def __init__(self, completion: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            f'data: {{"id":{_string(completion)},"object":"chat.completion.chunk",'
            f'"created":{created:d},"model":{_string(model)},'
        )
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self._choice = '"choices":[{"index":0,"delta":'
        self._content_head = f'{self._head}{self._choice}{{"content":'.encode()
        self._reasoning_head = f'{self._head}{self._choice}{{"reasoning":'.encode()
        self._content_tail = f'}},"logprobs":null,"finish_reason":null}}]{self._tail}'.encode()

    def _chunk(self, delta: str, finish: str | None) -> bytes:
        reason = "null" if finish is None else _string(finish)
        return (
            f'{self._head}{self._choice}{delta},"logprobs":null,"finish_reason":{reason}}}]'
            f"{self._tail}"
        ).encode()

    def role(self) -> bytes:
        """The first chunk: who speaks, no text yet."""
        return self._chunk('{"role":"assistant","content":""}', None)

    def content(self, text: str) -> bytes:
        return self._content_head + _string(text).encode() + self._content_tail

    def reasoning(self, text: str) -> bytes:
        """A piece of the model's reasoning, in the delta's ``reasoning`` (vLLM's name); built
        as a content frame is, since a reasoning model sends as many of these."""
        return self._reasoning_head + _string(text).encode() + self._content_tail

    def finish(self, reason: str) -> bytes:
        return self._chunk("{}", reason)

    def usage(self, usage: Usage) -> bytes:
        return f'{self._head}"choices":[],"usage":{_usage(usage)}}}\n\n'.encode()
