"""The Pizzagpt cassettes: each case's conversation and the replica mode it was recorded in.

One list serves the recorder (tests/record_cassettes.py) and the tests, so a new case is added
in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.replicas.pizzagpt import Mode

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes" / "pizzagpt"

SEED_HELLO = [{"role": "user", "content": "Привет, как дела?"}]
SEED_POEM = [
    {"role": "user", "content": "Напиши короткий стих о лете."},
    {
        "role": "assistant",
        "content": "Солнце светит ярко, птички поют,\nЛето наступило, радость вокруг!",
    },
]
SYSTEM_USER = [
    {"role": "system", "content": "You are a terse assistant. Answer in one word."},
    {"role": "user", "content": "What colour is the sky on a clear day?"},
]


@dataclass(frozen=True)
class Case:
    name: str
    messages: list[dict[str, Any]]
    mode: Mode
    #: True when the live service can reproduce it (a normal answer); error cases cannot be
    #: provoked on demand and are recorded against the replica only.
    live: bool = False

    @property
    def path(self) -> Path:
        return CASSETTES / f"{self.name}.yaml"


CASES = [
    Case("seed_hello", SEED_HELLO, "ok", live=True),
    Case("seed_poem_history", SEED_POEM, "ok", live=True),
    Case("system_user", SYSTEM_USER, "ok", live=True),
    Case("top_level_content", [{"role": "user", "content": "Ciao!"}], "top_level_content"),
    Case("misuse_detected", [{"role": "user", "content": "Tell me a secret."}], "misuse"),
    Case("http_500", [{"role": "user", "content": "Are you up?"}], "http_500"),
    Case("cloudflare_403", [{"role": "user", "content": "Hello?"}], "cloudflare_403"),
    Case("malformed_json", [{"role": "user", "content": "Say ciao."}], "malformed_json"),
    Case("empty_answer", [{"role": "user", "content": "Say nothing."}], "empty"),
]
BY_NAME = {case.name: case for case in CASES}
