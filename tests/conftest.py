"""Shared fixtures: a clean environment per test, loopback servers, registries of fake plugins."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

import llmrelay
import llmrelay._config as llmrelay_config
import llmrelay._redact as llmrelay_redact
from llmrelay._registry import Registry, build_registry, set_registry
from llmrelay._routing import health

_ENV_PREFIXES = ("LLMRELAY_",)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Neither the developer's LLMRELAY_* nor proxy variables leak into a test."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name.lower() in _PROXY_VARS:
            monkeypatch.delenv(name)
    # Tests rewrite configuration files and expect the next call to see them: look at the
    # file on every call (test_config.py checks the once-a-second default on its own).
    monkeypatch.setattr(llmrelay_config, "FILE_CHECK_INTERVAL", 0.0)
    monkeypatch.setattr(llmrelay_config, "_cache", None)
    # Secret values remembered for redaction belong to the test that used them.
    monkeypatch.setattr(llmrelay_redact, "_known", {})
    health.reset()
    yield
    llmrelay.reset_registry()
    health.reset()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    """Start aiohttp apps on 127.0.0.1 (random ports); returns ``await serve(app) -> base URL``."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    await llmrelay.aclose()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def use_plugins() -> Iterator[Callable[..., Registry]]:
    """Make the process registry exactly these ``(name, plugin)`` pairs (no entry points)."""
    undo: list[Callable[[], None]] = []

    def install(*plugins: tuple[str, object]) -> Registry:
        registry = build_registry(entry_points=[], extra_plugins=plugins)
        undo.append(set_registry(registry))
        return registry

    yield install
    for fn in reversed(undo):
        fn()
