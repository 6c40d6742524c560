"""The OpenAI-compatible cassettes: each case's request and the replica mode it was recorded in.

One list serves the recorder (tests/record_openai_cassettes.py) and the tests, so a new case is
added in one place. Recordings are made against tests/replicas/openai.py with the URL rewritten
to ``BASE_URL``, the default address of a local vLLM server, so they replay for an endpoint
configured there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.replicas.openai import Mode

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes" / "openai_compat"

#: The server the cassettes carry, and the ``base_url`` of an endpoint that replays them.
ORIGIN = "http://127.0.0.1:8000"
BASE_URL = f"{ORIGIN}/v1"
#: The environment variable the recorded endpoint reads its key from.
KEY_ENV = "OPENAI_COMPAT_KEY"
#: The replica's key while recording; it must never appear in a cassette.
RECORD_KEY = "sk-replica-0123456789abcdefghij"
#: A wrong key, sent to record the 401; it must never appear in a cassette either.
WRONG_KEY = "sk-wrong-9876543210zyxwvutsrq"
SECRETS = (RECORD_KEY, WRONG_KEY)

HI = [{"role": "user", "content": "Hi there"}]
MODELS = ("gpt-4o-mini", "llama3")


@dataclass(frozen=True)
class Case:
    name: str
    mode: Mode = "ok"
    messages: list[dict[str, Any]] = field(default_factory=lambda: HI)
    #: Keyword options of the call (``stream=False`` for a non-streamed request).
    options: dict[str, Any] = field(default_factory=dict)
    key: str = RECORD_KEY
    #: What it shows, for cassettes/README.md and the test ids.
    about: str = ""

    @property
    def path(self) -> Path:
        return CASSETTES / f"{self.name}.yaml"


CASES = [
    Case("non_stream", options={"stream": False}, about="200 JSON, with usage"),
    Case("stream_usage", about="200 SSE; usage-only final chunk (include_usage asked by default)"),
    Case(
        "stream_no_usage",
        options={"stream_options": {"include_usage": False}},
        about="200 SSE without usage (the caller turned include_usage off)",
    ),
    Case(
        "unauthorized_401",
        options={"stream": False},
        key=WRONG_KEY,
        about="401 invalid_api_key (a wrong key was sent)",
    ),
    Case("rate_limited_429", mode="rate_limited", about="429 with Retry-After: 1"),
    Case(
        "error_event",
        mode="error_event",
        about="200 SSE: two chunks, then an error event and [DONE]",
    ),
    Case(
        "stream_reasoning",
        mode="reasoning",
        about="200 SSE from a reasoning model: `delta.reasoning` chunks (vLLM, Ollama, "
        "OpenRouter), then the answer",
    ),
    Case(
        "non_stream_reasoning_content",
        mode="reasoning_content",
        options={"stream": False},
        about="200 JSON from a reasoning model: `message.reasoning_content` (DeepSeek, llama.cpp)",
    ),
]
BY_NAME = {case.name: case for case in CASES}

#: ``GET /v1/models``, recorded by ``fetch_models`` (``llmrelay models --refresh``).
MODELS_CASSETTE = CASSETTES / "models.yaml"
