"""The Pizzagpt protocol: one JSON round trip to ``/api/chatx-completion``.

The service takes the whole conversation as one prompt (``format_prompt``), answers in one
piece (no streaming, no token usage), and guards itself with a static shared header and an
abuse filter whose refusal arrives as the answer's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from llmrelay import (
    Call,
    Completion,
    FinishReason,
    Message,
    Provider,
    TextPart,
    format_prompt,
)
from llmrelay.errors import InvalidRequest, InvalidResponse, MisuseDetected

__all__ = ["MISUSE_TEXT", "Pizzagpt"]

#: The abuse filter's refusal; an answer containing it is an error, not an answer.
MISUSE_TEXT = "Misuse detected. please get in touch"

_HEADERS = {
    "accept": "application/json",
    "accept-language": "en-US,en;q=0.9",
    "content-type": "application/json",
    "origin": "https://www.pizzagpt.it",
    "referer": "https://www.pizzagpt.it/en",
    "user-agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
    ),
    # A static value the site's own web client sends; the API refuses requests without it.
    "x-secret": "Marinara",
}


#: The only way a Pizzagpt answer ends (the service reports no finish reason); one shared,
#: immutable instance instead of a new one per answer.
_STOP = FinishReason("stop")


class Pizzagpt(Provider):
    """pizzagpt.it's free chat API (gpt-4o-mini behind a single-question endpoint).

    ``working`` is False: the service was last seen answering in January 2025 and cannot be
    checked from llmrelay's CI. The protocol is kept exact so it works again the day it does.
    """

    name = "pizzagpt"
    label = "Pizzagpt"
    url = "https://www.pizzagpt.it"
    api_endpoint = "/api/chatx-completion"
    working = False
    default_model = "gpt-4o-mini"
    models = ("gpt-4o-mini",)
    supports_stream = False
    supports_system_message = True
    supports_message_history = True
    needs_auth = False

    headers: ClassVar[dict[str, str]] = _HEADERS
    #: ``headers`` as sent (see ``_ready_headers``), with the dict it was built from.
    _headers_built: ClassVar[tuple[dict[str, str], Mapping[str, str]] | None] = None

    @classmethod
    def _ready_headers(cls) -> Mapping[str, str]:
        """``headers`` as aiohttp's read-only case-insensitive mapping, which it sends without
        copying (a plain dict it copies into one on every request: about 9k instructions for
        these eight headers, 1.5 % of a request). Built again whenever ``headers`` changes,
        a subclass's own included."""
        built = cls._headers_built
        if built is None or built[0] != cls.headers:
            from multidict import CIMultiDict, CIMultiDictProxy  # aiohttp's own

            built = (dict(cls.headers), CIMultiDictProxy(CIMultiDict(cls.headers)))
            cls._headers_built = built
        return built[1]

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        """The service answers in one piece: one request, one answer (its stream is that
        answer as one chunk, from ``Provider.generate``)."""
        _check_text_only(messages)
        question = format_prompt(messages)
        if not question.strip():
            raise InvalidRequest("pizzagpt: the prompt is empty; send a message with some text")
        url = call.url(cls.api_endpoint or "")
        response = await call.request(
            "POST", url, headers=cls._ready_headers(), json_body={"question": question}
        )
        content = _content(response.json(cls.name))
        if content is None or not content.strip():
            raise InvalidResponse(
                f"no answer in the response: {response.excerpt()!r}",
                provider=cls.name,
                status=response.status,
                body=response.excerpt(),
            )
        if MISUSE_TEXT in content:
            raise MisuseDetected(content, provider=cls.name)
        return Completion(content, _STOP)


def _check_text_only(messages: list[Message]) -> None:
    """Refuse what the service's one question cannot carry, rather than leave it out unsaid:
    a non-text part (an image, audio, a file) or a field beyond ``role`` and ``content``
    (``name``, ``tool_calls``, ``tool_call_id``, ...).

    Raises:
        InvalidRequest: naming the message and what it holds.
    """
    for index, message in enumerate(messages):
        beyond = _beyond_text(message)
        if beyond is not None:
            raise InvalidRequest(
                f"pizzagpt takes only the text of each message: messages[{index}] has "
                f"{beyond}, which it cannot send; leave it out or pin a provider that takes it"
            )


def _beyond_text(message: Message) -> str | None:
    """What ``message`` holds besides its text, or None. An earlier answer's reasoning, which
    a dumped answer carries, is not part of the conversation: no service is sent it back."""
    extra = message.model_extra
    if extra and message.role == "assistant":
        extra = {k: v for k, v in extra.items() if k not in _REASONING_FIELDS}
    if extra:
        return ", ".join(sorted(extra))
    for part in message.content if isinstance(message.content, list) else ():
        if not isinstance(part, TextPart):
            return f"a {part.type!r} part"
        if part.model_extra:
            return f"a text part with {', '.join(sorted(part.model_extra))}"
    return None


#: Where an assistant turn dumped from an answer carries that answer's reasoning.
_REASONING_FIELDS = frozenset({"reasoning", "reasoning_content"})


def _content(data: Any) -> str | None:
    """``answer.content``, or a top-level ``content`` (both shapes have been seen)."""
    if not isinstance(data, dict):
        return None
    answer = data.get("answer")
    if isinstance(answer, dict) and isinstance(answer.get("content"), str):
        return str(answer["content"])
    if isinstance(data.get("content"), str):
        return str(data["content"])
    return None
