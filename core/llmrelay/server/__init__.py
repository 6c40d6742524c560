"""``llmrelay serve``: an OpenAI-compatible HTTP server in front of llmrelay's providers.

Any OpenAI client, in any language, works against it unchanged: ``POST /v1/chat/completions``
(JSON or SSE), ``GET /v1/models``, plus ``GET /health`` and ``GET /ready`` for probes. Built on
aiohttp.web, which core already depends on, so serving adds no web framework.

Embedding it::

    from llmrelay.server import ServerSettings, create_app, serving

    async with serving(create_app(ServerSettings(api_key=key)), "127.0.0.1", 8080) as server:
        ...  # server.url

See docs/operators.md for running it in production.
"""

from __future__ import annotations

from ._app import create_app
from ._errors import APIError
from ._run import RunOptions, Server, WorkersFailed, run, serving
from ._settings import BindRefused, ServerSettings, check_binding, is_loopback
from ._state import PROVIDER_HEADER

__all__ = [
    "PROVIDER_HEADER",
    "APIError",
    "BindRefused",
    "RunOptions",
    "Server",
    "ServerSettings",
    "WorkersFailed",
    "check_binding",
    "create_app",
    "is_loopback",
    "run",
    "serving",
]
