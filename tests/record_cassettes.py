"""Re-record the Pizzagpt cassettes.

    uv run python -m tests.record_cassettes            # against the local replica (CI-safe)
    uv run python -m tests.record_cassettes --live     # against https://www.pizzagpt.it

Replica recordings are rewritten to carry the real service's URL, so they replay for the real
provider. ``--live`` records only the cases the live service can produce (normal answers) and
keeps the existing cassette when a live call fails; error cases stay replica-made. Secrets are
scrubbed by llmrelay's cassette rules either way. See cassettes/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

from llmrelay import aclose
from llmrelay._cassettes import cassette
from llmrelay.errors import LLMRelayError
from llmrelay_pizzagpt import Pizzagpt
from tests.pizzagpt_cases import CASES, Case
from tests.replicas.pizzagpt import STATE, make_app


async def _record(case: Case, base_url: str | None, rewrite: tuple[str, str] | None) -> str:
    """Record ``case`` into a scratch file; replace the cassette only if the outcome is right.

    A live run that fails (no network, a Cloudflare page) leaves the shipped cassette alone.
    """
    options = {"base_url": base_url} if base_url else {}
    scratch = case.path.with_suffix(".recording.yaml")
    answered = False
    with cassette(scratch, mode="overwrite", rewrite=rewrite):
        try:
            text = await Pizzagpt.create_async_generator(
                "gpt-4o-mini", case.messages, max_retries=0, **options
            ).text()
            outcome, answered = f"ok: {text[:40]!r}", True
        except LLMRelayError as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
    if base_url is None and not answered:
        scratch.unlink(missing_ok=True)
        return f"{outcome} (live call failed: kept the existing cassette)"
    scratch.replace(case.path)
    return outcome


async def main(live: bool, only: set[str]) -> None:
    cases = [c for c in CASES if (not only or c.name in only) and (c.live or not live)]
    if live:
        for case in cases:
            print(f"{case.name}: {await _record(case, None, None)}")
        await aclose()
        return
    app = make_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    local = f"http://127.0.0.1:{port}"
    try:
        for case in cases:
            app[STATE].mode = case.mode
            outcome = await _record(case, local, (local, Pizzagpt.url))
            print(f"{case.name}: {outcome}")
    finally:
        await aclose()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="record against pizzagpt.it itself")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    asyncio.run(main(args.live, set(args.cases)))
    sys.exit(0)
