"""The OpenAI chat-completions protocol, streamed (SSE) or not.

One class speaks the protocol; :func:`provider_for` makes a subclass per configured endpoint, so
each endpoint is its own provider with its own name, URL, key and models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from llmrelay import Call, Chunk, FinishReason, Message, Provider, Usage, errors
from llmrelay._config import EndpointConfig
from llmrelay.sse import SSEDecoder, SSETooLarge

__all__ = ["OpenAICompatible", "provider_for"]

log = logging.getLogger("llmrelay")

#: Request fields passed through to the server as given.
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
        "user",
        "stream_options",
    }
)

_FINISH = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


class OpenAICompatible(Provider):
    """Any server that speaks ``POST {base_url}/chat/completions`` like OpenAI."""

    name = "openai_compat"
    label = "OpenAI-compatible"
    url = "http://127.0.0.1:8000/v1"
    api_endpoint = "/chat/completions"
    default_model = ""
    supports_stream = True
    supported_options = OPTIONS
    #: The environment variable holding the key (``Authorization: Bearer ...``), if any.
    api_key_env: ClassVar[str | None] = None
    extra_headers: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def headers(cls) -> dict[str, str]:
        headers = {"Accept": "application/json", **cls.extra_headers}
        if cls.api_key_env:
            import os

            key = os.environ.get(cls.api_key_env)
            if not key:
                raise errors.AuthenticationFailed(
                    f"no API key: set the environment variable {cls.api_key_env}",
                    provider=cls.name,
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump(mode="json", exclude_unset=True) for m in messages],
            **call.options,
        }
        url = call.url(cls.api_endpoint or "")
        if not call.stream:
            answer = await call.request("POST", url, headers=cls.headers(), json_body=body)
            async for chunk in _from_completion(cls.name, answer.json(cls.name)):
                yield chunk
            return
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
        state = _StreamState(cls.name)
        async with call.open_stream("POST", url, headers=cls.headers(), json_body=body) as response:
            if "text/event-stream" not in response.headers.get("Content-Type", ""):
                # Some servers ignore "stream": take the whole answer as one chunk.
                data = await call.read(response.read())
                async for chunk in _from_completion(cls.name, _json(cls.name, data)):
                    yield chunk
                return
            decoder = SSEDecoder()
            while not state.done:
                raw = await call.read(response.content.readany())
                try:
                    events = decoder.feed(raw) if raw else decoder.close()
                except SSETooLarge as exc:
                    raise errors.InvalidResponse(str(exc), provider=cls.name) from None
                for event in events:
                    text = state.handle(event.data)
                    if text:
                        yield text
                    if state.done:
                        break
                if not raw:
                    break
        if not state.done and state.finish is None:
            raise errors.ConnectError("stream ended before [DONE]", provider=cls.name)
        if state.usage is not None:
            yield state.usage
        yield FinishReason(state.finish or "stop")  # type: ignore[arg-type]


class _StreamState:
    """What the stream has said so far: text is yielded, the ending is kept for last."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.finish: str | None = None
        self.usage: Usage | None = None

    def handle(self, data: str) -> str:
        if data == "[DONE]":
            self.done = True
            return ""
        chunk = _json(self.provider, data)
        if not isinstance(chunk, dict):
            raise _invalid(self.provider, data)
        if "error" in chunk:
            raise error_from_body(self.provider, chunk, status=None)
        usage = chunk.get("usage")
        if usage:
            self.usage = _usage(self.provider, usage)
        text = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                text.append(content)
            if choice.get("finish_reason"):
                self.finish = _finish(choice["finish_reason"])
        return "".join(text)


async def _from_completion(provider: str, data: Any) -> AsyncGenerator[Chunk, None]:
    if not isinstance(data, dict):
        raise _invalid(provider, str(data))
    if "error" in data:
        raise error_from_body(provider, data, status=None)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _invalid(provider, json.dumps(data)[:200])
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, str) and content:
        yield content
    if data.get("usage"):
        yield _usage(provider, data["usage"])
    yield FinishReason(_finish(choice.get("finish_reason")))  # type: ignore[arg-type]


def _finish(reason: Any) -> str:
    if reason is None:
        return "stop"
    mapped = _FINISH.get(str(reason))
    if mapped is None:
        log.debug("unknown finish_reason %r reported as 'stop'", reason)
        return "stop"
    return mapped


def _usage(provider: str, usage: Any) -> Usage:
    try:
        return Usage(
            int(usage["prompt_tokens"]),
            int(usage["completion_tokens"]),
            int(usage.get("total_tokens") or 0) or None,
        )
    except (KeyError, TypeError, ValueError):
        raise _invalid(provider, f"usage {usage!r}") from None


def _json(provider: str, data: str | bytes) -> Any:
    try:
        return json.loads(data)
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
    """An ``{"error": {...}}`` event sent inside a 200 stream, as a typed error."""
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
    return cls(message, provider=provider, status=status)


def provider_for(endpoint: EndpointConfig) -> type[OpenAICompatible]:
    """A provider class for one configured endpoint."""
    models = tuple(endpoint.models)
    attrs: dict[str, Any] = {
        "name": endpoint.name,
        "label": f"{endpoint.name} (OpenAI-compatible)",
        "url": endpoint.base_url,
        "models": models,
        "default_model": endpoint.default_model or (models[0] if models else ""),
        "working": endpoint.working,
        "needs_auth": endpoint.api_key_env is not None,
        "api_key_env": endpoint.api_key_env,
        "extra_headers": dict(endpoint.headers),
        "__doc__": f"The OpenAI-compatible endpoint {endpoint.name!r} at {endpoint.base_url}.",
    }
    return type(f"OpenAICompatible[{endpoint.name}]", (OpenAICompatible,), attrs)
