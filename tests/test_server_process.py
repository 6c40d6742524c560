"""``llmrelay serve`` as an operator runs it: a real process, real signals, real workers.

The server process answers from the OpenAI replica, which runs in the test's own event loop
(the OpenAI-compatible provider points at it through a configuration file), so every wait here
is asynchronous and bounded: a blocking wait would starve the replica the server is calling.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from click.testing import CliRunner

from llmrelay._cli_serve import serve as serve_command
from tests.replicas.openai import STATE
from tests.replicas.openai import make_app as make_replica
from tests.support import Serve

HI = [{"role": "user", "content": "Hi there"}]


def _env(tmp_path: Path, upstream: str, more_config: str = "") -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[endpoints]]\nname = "replica"\nbase_url = "{upstream}/v1"\nmodels = ["llama3"]\n'
        + more_config
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMRELAY_") and not k.lower().endswith("_proxy")
    }
    env.update(
        LLMRELAY_CONFIG=str(config),
        LLMRELAY_PLUGINS="openai_compat",
        LLMRELAY_MAX_RETRIES="0",
        PYTHONUNBUFFERED="1",
    )
    return env


class Process:
    """One ``llmrelay serve`` process, its log, and the workers it reports."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmrelay._cli_serve", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, pattern: str, count: int = 1, seconds: float = 20) -> list[str]:
        """The first group of each of ``count`` log lines matching ``pattern``, waited for."""
        async with asyncio.timeout(seconds):
            while True:
                found = re.findall(pattern, self.text())
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None:
                    raise AssertionError(f"llmrelay serve exited early:\n{self.text()}")
                await asyncio.sleep(0.05)

    async def exit_code(self, seconds: float = 20) -> int:
        async with asyncio.timeout(seconds):
            while (code := self.proc.poll()) is None:  # noqa: ASYNC110 - a process, no event
                await asyncio.sleep(0.05)
        return code

    def worker_pids(self) -> list[int]:
        return [
            int(pid) for pid in re.findall(r"worker \d+ listening on .* \(pid (\d+)\)", self.text())
        ]

    def reap(self) -> None:
        """Whatever happened in the test, leave no process behind (workers included)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.worker_pids():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str, upstream: str = "http://127.0.0.1:9", more_config: str = "") -> Process:
        process = Process(
            list(args),
            _env(tmp_path, upstream, more_config),
            tmp_path / f"serve-{len(started)}.log",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.reap()


@pytest.mark.slow
async def test_workers_share_one_port(serve: Serve, run_server: Callable[..., Process]) -> None:
    upstream = await serve(make_replica())
    # A second endpoint whose key variable is not set: the start warns of it once, not once
    # per worker.
    keyed = (
        '[[endpoints]]\nname = "keyed"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'models = ["other"]\napi_key_env = "LLMRELAY_TEST_SERVE_UNSET_KEY"\n'
    )
    server = run_server("--port", "0", "--workers", "2", upstream=upstream, more_config=keyed)
    (url,) = await server.wait_for(r"supervising 2 workers on (http://\S+)")
    await server.wait_for(r"(worker \d+ listening)", count=2)
    assert server.text().count("$LLMRELAY_TEST_SERVE_UNSET_KEY, which is not set") == 1
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        completion = await client.chat.completions.create(model="llama3", messages=HI)
        assert completion.choices[0].message.content == "Echo: Hi there"
        stream = await client.chat.completions.create(model="llama3", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: Hi there"
    pids: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection, a new hash each time
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(200):
            async with session.get(f"{url}/health") as response:
                pids.add((await response.json())["pid"])
            if len(pids) == 2:
                break
    assert pids == set(server.worker_pids())
    os.kill(min(pids), signal.SIGKILL)  # a crashed worker is replaced
    await server.wait_for(r"(exited with code -9 after [\d.]+s; starting another)")
    await server.wait_for(r"(worker \d+ listening)", count=3)
    pids = set(server.worker_pids()) - {min(pids)}
    server.proc.send_signal(signal.SIGTERM)
    assert await server.exit_code() == 0, server.text()
    assert "all workers stopped" in server.text()
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.slow
async def test_sigterm_lets_a_running_stream_finish(
    serve: Serve, run_server: Callable[..., Process]
) -> None:
    replica = make_replica()
    replica[STATE].delay = 0.05
    upstream = await serve(replica)
    server = run_server("--port", "0", "--shutdown-grace", "10", upstream=upstream)
    (url,) = await server.wait_for(r"listening on (http://\S+)")
    words = " ".join(f"w{i}" for i in range(20))  # 20 chunks x 50 ms
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": words}], stream=True
        )
        first = [await anext(stream) for _ in range(2)]
        server.proc.send_signal(signal.SIGTERM)
        await server.wait_for("stopped listening; waiting up to 10s for 1 request")
        with pytest.raises(openai.APIConnectionError):
            await client.models.list()  # no longer listening
        rest = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in first + rest if c.choices)
    assert text == f"Echo: {words}"
    assert rest[-1].choices[0].finish_reason == "stop"
    assert await server.exit_code() == 0, server.text()
    assert replica[STATE].streams_finished == 1
    assert '"POST /v1/chat/completions" 200 model=llama3 provider=replica' in server.text()


@pytest.mark.slow
async def test_a_busy_port_is_a_clear_error(run_server: Callable[..., Process]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for workers in ("1", "2"):
            server = run_server("--port", port, "--workers", workers)
            assert await server.exit_code() == 1
            assert f"error: cannot listen on 127.0.0.1:{port}" in server.text()
            assert "Traceback" not in server.text()


def test_refuses_public_binding_without_a_key() -> None:
    runner = CliRunner()
    result = runner.invoke(serve_command, ["--host", "0.0.0.0"], env={"LLMRELAY_API_KEY": None})
    assert result.exit_code == 2
    assert "refusing to listen on '0.0.0.0' without an API key" in result.output
    result = runner.invoke(serve_command, ["--api-key", " "])
    assert result.exit_code == 2
    assert "the API key must not be empty or blank" in result.output
    result = runner.invoke(serve_command, ["--api-key", "abc\ndef"])
    assert result.exit_code == 2
    assert "control character" in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(serve_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--api-key", "--workers", "--max-concurrency"):
        assert option in result.output
    assert "LLMRELAY_API_KEY" in result.output


@pytest.mark.parametrize("option", ["--shutdown-grace", "--body-timeout", "--header-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_seconds_must_be_finite(option: str, value: str) -> None:
    """``nan`` passed click's range check: --shutdown-grace nan then waited without limit."""
    result = CliRunner().invoke(serve_command, [option, value])
    assert result.exit_code == 2
    assert f"'{value}' is not a finite number of seconds" in result.output
