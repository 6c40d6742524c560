"""A local replica of pizzagpt.it's chat API, faithful to docs/providers/pizzagpt.md.

Used to record cassettes (pizzagpt.it is out of reach from CI) and by live loopback tests. It
checks what the real service checked (method, path, ``x-secret``, a JSON body with a string
``question``) and can be switched into the failure modes seen from the real service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

Mode = Literal[
    "ok", "top_level_content", "misuse", "http_500", "cloudflare_403", "malformed_json", "empty"
]

SECRET = "Marinara"
MISUSE = "Misuse detected. please get in touch"

#: Canned answers for the prompts the shipped cassettes use; anything else gets a short echo.
ANSWERS = {
    "Привет, как дела?": "Привет! У меня всё отлично, спасибо. Чем могу помочь?",
    (
        "User: Напиши короткий стих о лете.\n"
        "Assistant: Солнце светит ярко, птички поют,\nЛето наступило, радость вокруг!\n"
        "Assistant:"
    ): (
        "Тёплый ветер шепчет в травах,\nРека искрится в бликах дня,\n"
        "И лето в солнечных забавах\nЗовёт на луг гулять меня."
    ),
    (
        "System: You are a terse assistant. Answer in one word.\n"
        "User: What colour is the sky on a clear day?\nAssistant:"
    ): "Blue.",
}

CLOUDFLARE_PAGE = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>
<div class="main-wrapper" role="main"><h1>www.pizzagpt.it</h1>
<p>Verifying you are human. This may take a few seconds.</p></div>
<div class="footer">Performance &amp; security by Cloudflare</div></body></html>"""


def answer_for(question: str) -> str:
    return ANSWERS.get(question, f"You asked: {question[:200]}")


@dataclass
class ReplicaState:
    """What a test may steer (``mode``) and inspect (``hits``, ``last_headers``)."""

    mode: Mode = "ok"
    hits: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body: bytes = b""


STATE = web.AppKey("state", ReplicaState)


def make_app(mode: Mode = "ok") -> web.Application:
    """The replica; ``app[STATE]`` holds its mode and what it has seen."""
    app = web.Application()
    app[STATE] = ReplicaState(mode=mode)
    app.router.add_post("/api/chatx-completion", _chat)
    return app


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.hits += 1
    state.last_headers = dict(request.headers)
    state.last_body = await request.read()
    mode = state.mode
    if mode == "cloudflare_403":
        return web.Response(
            status=403,
            text=CLOUDFLARE_PAGE,
            content_type="text/html",
            headers={"server": "cloudflare", "cf-ray": "8f1c2d3e4a5b6c7d-MXP"},
        )
    if request.headers.get("x-secret") != SECRET:
        return web.json_response({"error": "Unauthorized"}, status=401)
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return web.json_response({"error": "Invalid JSON"}, status=400)
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str) or not question:
        return web.json_response({"error": "Missing question"}, status=400)
    if mode == "http_500":
        return web.json_response({"error": "Internal Server Error"}, status=500)
    if mode == "malformed_json":
        return web.Response(text='{"answer": {"content": "Ciao', content_type="application/json")
    if mode == "empty":
        return web.json_response({"answer": {"content": ""}})
    content = MISUSE if mode == "misuse" else answer_for(question)
    if mode == "top_level_content":
        return web.json_response({"content": content})
    return web.json_response({"answer": {"content": content, "role": "assistant"}})
