"""Re-record the OpenAI-compatible cassettes against the local replica (offline, CI-safe).

    uv run python -m tests.record_openai_cassettes              # every case
    uv run python -m tests.record_openai_cassettes error_event  # only these cases

Each case (tests/openai_cases.py) runs the provider against tests/replicas/openai.py on
127.0.0.1 with a real-looking key in the environment; the recorded URL is rewritten to
``http://127.0.0.1:8000/v1``. Every file is then checked: neither key may appear in it, and the
``Authorization`` header must read ``***``. A failed check deletes the file and exits 1.
See cassettes/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import yaml
from aiohttp import web

from llmrelay import Chunk, aclose
from llmrelay._cassettes import cassette
from llmrelay._config import EndpointConfig
from llmrelay._endpoints import fetch_models
from llmrelay.errors import LLMRelayError
from llmrelay_openai_compat import provider_for
from tests.openai_cases import (
    CASES,
    KEY_ENV,
    MODELS,
    MODELS_CASSETTE,
    ORIGIN,
    RECORD_KEY,
    SECRETS,
    Case,
)
from tests.replicas.openai import STATE, make_app


def check_scrubbed(path: Path) -> None:
    """Raise AssertionError if a key shows in ``path`` or an Authorization header is not ***."""
    text = path.read_text(encoding="utf-8")
    for secret in SECRETS:
        assert secret not in text, f"{path}: a key was recorded"
    for interaction in yaml.safe_load(text)["interactions"]:
        for name, values in interaction["request"]["headers"].items():
            if name.lower() == "authorization":
                assert values == ["***"], f"{path}: Authorization is {values!r}"


async def _record(case: Case, local: str) -> str:
    endpoint = EndpointConfig(
        name="local", base_url=f"{local}/v1", models=MODELS, api_key_env=KEY_ENV
    )
    os.environ[KEY_ENV] = case.key
    items: list[Chunk] = []
    with cassette(case.path, mode="overwrite", rewrite=(local, ORIGIN)):
        try:
            async for item in provider_for(endpoint).create_async_generator(
                "llama3", case.messages, max_retries=0, **case.options
            ):
                items.append(item)
            outcome = f"ok: {items!r}"
        except LLMRelayError as exc:
            outcome = f"{items!r} then {type(exc).__name__}: {str(exc)[:70]}"
    return outcome


async def _record_models(local: str) -> str:
    endpoint = EndpointConfig(name="local", base_url=f"{local}/v1", api_key_env=KEY_ENV)
    os.environ[KEY_ENV] = RECORD_KEY
    with cassette(MODELS_CASSETTE, mode="overwrite", rewrite=(local, ORIGIN)):
        return f"ok: {await fetch_models(endpoint)!r}"


async def main(only: set[str]) -> int:
    app = make_app(key=RECORD_KEY)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    local = f"http://127.0.0.1:{runner.addresses[0][1]}"
    failed = 0
    try:
        jobs = [(c.path, c.name, c.mode) for c in CASES if not only or c.name in only]
        if not only or "models" in only:
            jobs.append((MODELS_CASSETTE, "models", "ok"))
        for path, name, mode in jobs:
            app[STATE].mode = mode
            if name == "models":
                outcome = await _record_models(local)
            else:
                outcome = await _record(next(c for c in CASES if c.name == name), local)
            try:
                check_scrubbed(path)
            except AssertionError as exc:
                path.unlink(missing_ok=True)
                outcome, failed = f"NOT SCRUBBED, deleted: {exc}", failed + 1
            print(f"{name}: {outcome}")
    finally:
        os.environ.pop(KEY_ENV, None)
        await aclose()
        await runner.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names, or 'models' (default: all)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(set(args.cases))))
