"""A local replica of an OpenAI-compatible chat server (the wire format in docs/).

It answers ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true) and
``GET /v1/models``, checks the bearer key when one is set, and can be switched into the failure
modes real servers show. The answer is deterministic: ``"Echo: <last user text>"`` split into
word chunks, or ``chunks`` copies of ``"tok "`` when the request carries ``x-replica-chunks``
(for benchmarks).

Run it alone for benchmarks: ``python -m tests.replicas.openai --port 8123``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Mode = Literal[
    "ok",
    "unauthorized",
    "rate_limited",
    "server_error",
    "error_event",
    "cut",
    "crlf",
    "cr",
    "reasoning",
    "reasoning_content",
]

#: The modes of a reasoning model, and the field each sends its reasoning in: ``reasoning``
#: (vLLM since 0.9, Ollama, OpenRouter, Groq) or ``reasoning_content`` (DeepSeek, llama.cpp).
REASONING_FIELD = {"reasoning": "reasoning", "reasoning_content": "reasoning_content"}

MODELS = ("gpt-4o-mini", "llama3")


@dataclass
class ReplicaState:
    """What a test steers (``mode``, ``key``) and inspects (``hits``, ``last_body``, ...)."""

    mode: Mode = "ok"
    key: str | None = None
    hits: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)
    streams_started: int = 0
    streams_finished: int = 0
    streams_cancelled: int = 0
    #: Seconds between streamed chunks (0: as fast as possible).
    delay: float = 0.0
    #: Seconds before the response starts (its status and headers), as a model that is slow
    #: to begin.
    head_delay: float = 0.0


STATE = web.AppKey("state", ReplicaState)


def make_app(mode: Mode = "ok", key: str | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = ReplicaState(mode=mode, key=key)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


def _error(
    status: int, message: str, kind: str, code: str | None = None, **headers: str
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def _word_chunks(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _answer_words(body: dict[str, Any], chunks: int | None) -> list[str]:
    if chunks is not None:
        return ["tok "] * chunks
    return _word_chunks(f"Echo: {_last_user_text(body)}")


def _thoughts(body: dict[str, Any]) -> list[str]:
    """A reasoning model's thinking before its answer, as word chunks (deterministic)."""
    return _word_chunks(f"The user wrote {_last_user_text(body)!r}, so I echo it.")


async def _models(request: web.Request) -> web.Response:
    key = request.app[STATE].key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        return _error(  # as OpenAI's: the list needs the key too
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "replica"} for m in MODELS
            ],
        }
    )


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.hits += 1
    state.last_headers = dict(request.headers)
    if state.key is not None and request.headers.get("Authorization") != f"Bearer {state.key}":
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error"
        )
    state.last_body = body
    if state.head_delay:
        await asyncio.sleep(state.head_delay)
    if body.get("model") not in MODELS:
        return _error(
            404,
            f"The model `{body.get('model')}` does not exist.",
            "invalid_request_error",
            "model_not_found",
        )
    if state.mode == "unauthorized":
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    if state.mode == "rate_limited":
        return _error(
            429,
            "Rate limit reached for requests.",
            "requests",
            "rate_limit_exceeded",
            **{"Retry-After": "1"},
        )
    if state.mode == "server_error":
        return _error(500, "The server had an error while processing your request.", "server_error")
    raw_chunks = request.headers.get("x-replica-chunks")
    words = _answer_words(body, int(raw_chunks) if raw_chunks else None)
    created = int(time.time())
    base = {
        "id": "chatcmpl-replica",
        "created": created,
        "model": body["model"],
        "system_fingerprint": "fp_replica",
    }
    thoughts = _thoughts(body) if state.mode in REASONING_FIELD else []
    tokens = len(words) + len(thoughts)
    usage: dict[str, Any] = {
        "prompt_tokens": 9,
        "completion_tokens": tokens,
        "total_tokens": 9 + tokens,
    }
    if thoughts:  # as OpenAI reports a reasoning model's: the thinking's share, the cache's
        usage["completion_tokens_details"] = {"reasoning_tokens": len(thoughts)}
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(words)}
        if thoughts:
            message[REASONING_FIELD[state.mode]] = "".join(thoughts)
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    return await _stream(request, state, base, words, usage, body, thoughts)


async def _stream(
    request: web.Request,
    state: ReplicaState,
    base: dict[str, Any],
    words: list[str],
    usage: dict[str, Any],
    body: dict[str, Any],
    thoughts: list[str],
) -> web.StreamResponse:
    newline = {"crlf": "\r\n", "cr": "\r"}.get(state.mode, "\n")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state.streams_started += 1

    def frame(payload: dict[str, Any] | str) -> bytes:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        return f"data: {data}{newline}{newline}".encode()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        extra = {"usage": None} if include_usage else {}
        return frame(
            {
                **base,
                "object": "chat.completion.chunk",
                **extra,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    try:
        await response.write(f": keep-alive{newline}{newline}".encode())
        await response.write(chunk({"role": "assistant", "content": ""}))
        for thought in thoughts:  # a reasoning model thinks first, with no content yet
            field_name = REASONING_FIELD[state.mode]
            await response.write(chunk({"content": None, field_name: thought}))
        for i, word in enumerate(words):
            if state.mode == "error_event" and i == 2:
                await response.write(
                    frame(
                        {
                            "error": {
                                "message": "The model is overloaded.",
                                "type": "server_error",
                                "code": None,
                            }
                        }
                    )
                )
                await response.write(frame("[DONE]"))
                return response
            if state.mode == "cut" and i == 2:
                request.transport.close()  # type: ignore[union-attr]
                return response
            await response.write(chunk({"content": word}))
            if state.delay:
                await asyncio.sleep(state.delay)
        await response.write(chunk({}, "stop"))
        if include_usage:
            await response.write(
                frame({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        await response.write(frame("[DONE]"))
        await response.write_eof()
        state.streams_finished += 1
    except (asyncio.CancelledError, ConnectionResetError):
        state.streams_cancelled += 1
        raise
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible replica on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
