"""aiohttp apps served on 127.0.0.1 from an event loop in a thread of their own.

The ``serve`` fixture runs servers on the test's own loop, which is right for async code. A test
of blocking code (the sync ``Client``, the CLI in-process) blocks that loop, so its servers must
run elsewhere: here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

#: ``base_url = serve(app)``: start ``app`` on 127.0.0.1 (a random port) in the background.
ServeInThread = Callable[[web.Application], str]


@contextmanager
def background_servers() -> Iterator[ServeInThread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-servers", daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def serve(app: web.Application) -> str:
        return asyncio.run_coroutine_threadsafe(start(app), loop).result(timeout=10)

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    try:
        yield serve
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
