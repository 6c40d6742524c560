"""The benchmark's replica server: pizzagpt and OpenAI protocols on 127.0.0.1, cheap to serve.

It answers exactly what ../shared/anchors/replica.py answers, so llmrelay's figures compare
with the anchors' figures: a 200-byte answer, pre-encoded bodies, SSE frames of 3 words each.
The one difference: the default number of content chunks per stream is a flag (``--chunks``,
200 here), because llmrelay's ``AsyncClient`` cannot add the ``x-replica-chunks`` header per
request. The header and ``?chunks=N`` still win when a request carries them.

  POST /api/chatx-completion   pizzagpt.it: needs ``x-secret: Marinara`` and a JSON body with a
                               string ``question``; answers ``{"answer": {"content": ...}}``
  POST /v1/chat/completions    OpenAI: ``stream=false`` JSON; ``stream=true`` SSE with a role
                               chunk, N content chunks, a finish chunk, a usage chunk when
                               ``stream_options.include_usage`` is true, then ``data: [DONE]``
  GET  /health, GET /stats     liveness, and what was served

Run: ``python bench/replica.py --port 8765 [--chunks 200] [--answer-bytes 200]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aiohttp import web

MISUSE = "Misuse detected. please get in touch"
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
MAX_CHUNKS = 100_000


def make_answer(n: int) -> str:
    base = "Ciao! This is the pizzagpt replica answering from 127.0.0.1. "
    return (base * (n // len(base) + 1))[:n]


class Replica:
    def __init__(self, answer_bytes: int, default_chunks: int) -> None:
        self.answer = make_answer(answer_bytes)
        self.default_chunks = default_chunks
        self.pizza_ok = json.dumps({"answer": {"content": self.answer}}).encode()
        self.pizza_misuse = json.dumps({"answer": {"content": MISUSE + "."}}).encode()
        self.created = int(time.time())
        self.chat_body = json.dumps(
            {
                "id": "chatcmpl-replica",
                "object": "chat.completion",
                "created": self.created,
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_replica",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.answer, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 40, "total_tokens": 48},
            }
        ).encode()
        self._streams: dict[int, tuple[list[bytes], bytes]] = {}
        self.stats = {"pizza": 0, "chat": 0, "stream": 0, "chunks": 0}

    def _frame(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        usage: dict[str, int] | None = None,
        no_choices: bool = False,
    ) -> bytes:
        obj: dict[str, Any] = {
            "id": "chatcmpl-replica",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_replica",
            "choices": []
            if no_choices
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def stream_frames(self, n: int) -> tuple[list[bytes], bytes]:
        """The frames of a stream with ``n`` content chunks, and its usage frame (cached)."""
        cached = self._streams.get(n)
        if cached is not None:
            return cached
        frames = [self._frame({"role": "assistant", "content": ""})]
        for i in range(n):
            words = " " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3))
            frames.append(self._frame({"content": words}))
        frames.append(self._frame({}, finish="stop"))
        usage = self._frame(
            {},
            usage={"prompt_tokens": 8, "completion_tokens": 3 * n, "total_tokens": 8 + 3 * n},
            no_choices=True,
        )
        if len(self._streams) < 64:
            self._streams[n] = (frames, usage)
        return frames, usage

    async def pizzagpt(self, request: web.Request) -> web.Response:
        if request.headers.get("x-secret") != "Marinara":
            return web.json_response({"error": "missing x-secret"}, status=401)
        try:
            question = json.loads(await request.read())["question"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad request"}, status=400)
        if not isinstance(question, str):
            return web.json_response({"error": "question must be a string"}, status=400)
        self.stats["pizza"] += 1
        body = self.pizza_misuse if request.query.get("misuse") else self.pizza_ok
        return web.Response(body=body, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            data = json.loads(await request.read())
            if not isinstance(data.get("messages"), list):
                raise ValueError
        except (ValueError, AttributeError):
            return web.json_response({"error": {"message": "bad request"}}, status=400)
        if not data.get("stream"):
            self.stats["chat"] += 1
            return web.Response(body=self.chat_body, content_type="application/json")
        raw = request.query.get("chunks") or request.headers.get("x-replica-chunks")
        n = max(0, min(int(raw) if raw else self.default_chunks, MAX_CHUNKS))
        frames, usage = self.stream_frames(n)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # One write per frame, as a real server flushes each token: the client sees many
        # small reads, which is what a stream costs it.
        for frame in frames:
            await response.write(frame)
        if (data.get("stream_options") or {}).get("include_usage"):
            await response.write(usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.stats["stream"] += 1
        self.stats["chunks"] += n
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)


def build_app(answer_bytes: int = 200, default_chunks: int = 200) -> web.Application:
    replica = Replica(answer_bytes, default_chunks)
    app = web.Application()
    app.router.add_post("/api/chatx-completion", replica.pizzagpt)
    app.router.add_post("/v1/chat/completions", replica.chat)
    app.router.add_get("/health", replica.health)
    app.router.add_get("/stats", replica.stats_handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--answer-bytes", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=200, help="default SSE content chunks")
    args = parser.parse_args()
    app = build_app(args.answer_bytes, args.chunks)
    # 127.0.0.1 only, never a public interface.
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
