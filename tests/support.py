"""Types shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

import llmrelay
from llmrelay import Provider


class Plugin:
    """A plugin object registering the given providers, as a third-party distribution would."""

    def __init__(self, *providers: type[Provider]) -> None:
        self.providers = providers

    @llmrelay.hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        for provider in self.providers:
            register(provider)


#: The ``serve`` fixture: ``base_url = await serve(app)`` starts ``app`` on 127.0.0.1.
Serve = Callable[[web.Application], Awaitable[str]]


def free_port() -> int:
    """A port nothing listens on right now (for "connection refused" and for servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxies:
    """The listeners of one pproxy process, and its log."""

    ports: dict[str, int]
    log: Path

    def url(self, name: str, auth: str | None = None) -> str:
        scheme = name.split("-")[0]
        return f"{scheme}://{auth + '@' if auth else ''}127.0.0.1:{self.ports[name]}"

    def lines_to(self, port: int) -> list[str]:
        """The tunnel lines logged for connections to 127.0.0.1:``port``."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if line.endswith(f"-> 127.0.0.1:{port}")]


def _wait_for_ports(ports: list[int], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"pproxy exited: {log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"pproxy did not listen on {pending}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


@contextmanager
def run_pproxy(listeners: dict[str, str], log: Path) -> Iterator[Proxies]:
    """Run one real pproxy process on 127.0.0.1 serving every listener; stop it after.

    ``listeners`` maps ``"<scheme>-<label>"`` to an auth suffix (``"#user:pass"`` or ``""``).
    ``--auth 0`` stops pproxy from remembering a successful login per client IP, so a wrong
    password is really refused; ``-v`` logs one line per tunnelled connection, the proof a
    request went through the proxy.
    """
    ports = {name: free_port() for name in listeners}
    command = [sys.executable, "-m", "pproxy", "--auth", "0", "-v"]
    for name, auth in listeners.items():
        scheme = name.split("-")[0]
        command += ["-l", f"{scheme}://127.0.0.1:{ports[name]}{auth}"]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for_ports(list(ports.values()), proc, log)
        yield Proxies(ports, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(timeout=5)


async def connection_read_size(connector: Any, url: str) -> int:
    """How much one socket read of a connection from ``connector`` to ``url`` asks for."""
    request = aiohttp.ClientRequest("GET", URL(url), loop=asyncio.get_running_loop())
    connection = await connector.connect(request, [], aiohttp.ClientTimeout(total=5))
    try:
        return int(connection.transport.max_size)
    finally:
        connection.close()
