"""Types shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

#: The ``serve`` fixture: ``base_url = await serve(app)`` starts ``app`` on 127.0.0.1.
Serve = Callable[[web.Application], Awaitable[str]]
