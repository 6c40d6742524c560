"""Server-Sent Events frames in OpenAI's ``chat.completion.chunk`` shape.

Every chunk of one answer repeats the same ``id``, ``created`` and ``model``, so that part of
the JSON is encoded once per answer and only the delta is encoded per chunk: a content chunk
costs one ``json.dumps`` of its text. The frames are exactly what OpenAI sends::

    data: {"id":..., "choices":[{"index":0,"delta":{"role":"assistant","content":""},...}]}
    data: {... "delta":{"content":"Hel"} ...}
    data: {... "delta":{},"finish_reason":"stop"}]}
    data: {... "choices":[],"usage":{...}}          (only with stream_options.include_usage)
    data: [DONE]
"""

from __future__ import annotations

import json
from typing import Any

from .._types import Usage

__all__ = ["DONE", "ChunkEncoder", "frame"]

DONE = b"data: [DONE]\n\n"


#: Characters JSON may leave raw that ``str.splitlines()`` takes for line ends: a client that
#: splits the decoded stream that way would cut an event in two.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _dumps(value: Any) -> str:
    """Compact JSON with UTF-8 kept raw (shorter than ``\\u`` escapes), minus the few
    characters some clients mistake for line ends."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_LINE_BREAKERS)


def frame(payload: Any) -> bytes:
    """One ``data:`` event. JSON never contains a raw newline, so one line always suffices."""
    return f"data: {_dumps(payload)}\n\n".encode()


class ChunkEncoder:
    """The frames of one streamed answer.

    With ``include_usage``, every chunk carries ``"usage": null`` and the usage chunk (empty
    ``choices``) carries the totals, as OpenAI does.
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = _dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created})[
            :-1
        ]
        self._head = f'data: {head},"model":{_dumps(model)},'
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self._choice = '"choices":[{"index":0,"delta":'

    def _chunk(self, delta: str, finish: str | None) -> bytes:
        reason = "null" if finish is None else _dumps(finish)
        return (
            f'{self._head}{self._choice}{delta},"logprobs":null,"finish_reason":{reason}}}]'
            f"{self._tail}"
        ).encode()

    def role(self) -> bytes:
        """The first chunk: who speaks, no text yet."""
        return self._chunk('{"role":"assistant","content":""}', None)

    def content(self, text: str) -> bytes:
        return self._chunk(f'{{"content":{_dumps(text)}}}', None)

    def finish(self, reason: str) -> bytes:
        return self._chunk("{}", reason)

    def usage(self, usage: Usage) -> bytes:
        totals = _dumps(usage.model_dump(mode="json"))
        return f'{self._head}"choices":[],"usage":{totals}}}\n\n'.encode()
