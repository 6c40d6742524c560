"""The transport and its resilience, against a real aiohttp fault server on 127.0.0.1.

Each fault case asserts the exact number of requests the server saw, the typed error and its
fields, and the elapsed time within a band. Retries run with a tiny backoff by building the
:class:`llmrelay.Call` directly (what ``Provider.generate`` receives); the public
``create_async_generator`` path is covered where its options matter (``max_retries=``,
``timeout=``, the environment variables).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import llmrelay
from llmrelay import (
    Call,
    Chunk,
    ChunkStream,
    FinishReason,
    Message,
    Provider,
    RetryPolicy,
    Timeouts,
    errors,
)
from llmrelay._transport import (
    HTTPResponse,
    _stream_timeout,
    _whole_answer_timeout,
    get_transport,
    parse_retry_after,
)
from tests.background import background_servers
from tests.replicas.faults import FAULTS, FaultState, make_app
from tests.support import connection_read_size

MESSAGES = [{"role": "user", "content": "Hello"}]
SECRET_KEY = "sk-proj-SECRETSECRET1234567890"


class Faulty(Provider):
    """A tiny provider: one JSON request (or one line stream) to ``path`` on ``base_url``."""

    name = "faulty"
    url = "http://127.0.0.1:9"  # never used: every call passes base_url=
    default_model = "m"
    models = ("m",)
    supported_options = frozenset({"path", "method", "sse", "api_key"})

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        url = call.url(call.options.get("path", "/ok"))
        method = call.options.get("method", "POST")
        headers = {}
        if "api_key" in call.options:
            headers["Authorization"] = f"Bearer {call.options['api_key']}"
        payload = {"model": model, "messages": [m.model_dump() for m in messages]}
        if call.options.get("sse"):  # a line stream (the tests' own option)
            async with call.open_stream(
                method, url, headers=headers, json_body=payload
            ) as response:
                while line := await call.read(response.content.readline()):
                    text = line.decode().strip()
                    if text.startswith("data: ") and text != "data: [DONE]":
                        yield text.removeprefix("data: ")
            yield FinishReason("stop")
            return
        response = await call.request(method, url, headers=headers, json_body=payload)
        data = response.json(cls.name)
        answer = data.get("answer") if isinstance(data, dict) else None
        if not isinstance(answer, str) or not answer:
            raise errors.InvalidResponse(
                f"no answer in {response.excerpt()!r}", provider=cls.name, status=response.status
            )
        yield answer
        yield FinishReason("stop")


FAST = RetryPolicy(max_retries=2, backoff=0.01, max_backoff=0.05, jitter=0.01)
SHORT = Timeouts(connect=1.0, read=2.0)


@dataclass
class Server:
    base: str
    state: FaultState


@pytest.fixture
async def faults(serve: Callable[[web.Application], Any]) -> Server:
    app = make_app()
    base = await serve(app)
    return Server(base, app[FAULTS])


def fast_call(
    base: str,
    path: str,
    *,
    retry: RetryPolicy = FAST,
    timeout: float | None = 5.0,
    timeouts: Timeouts = SHORT,
    **options: Any,
) -> Call:
    return Call(
        provider="faulty",
        base_url=base,
        timeout=timeout,
        retry=retry,
        timeouts=timeouts,
        options={"path": path, **options},
    )


async def ask(call: Call) -> str:
    """Run Faulty with a ready-made Call, through the same ChunkStream callers get."""
    messages = llmrelay.validate_messages(MESSAGES)
    return await ChunkStream(call.provider, Faulty.generate("m", messages, call), call).text()


@contextmanager
def elapsed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    end: list[float] = []
    yield lambda: (end[0] if end else time.monotonic()) - started
    end.append(time.monotonic())


def free_port() -> int:
    """A port nobody listens on: bind to get one, then close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_provider_error(
    exc: errors.ProviderError, *, status: int | None, retryable: bool, retry_after: Any = None
) -> None:
    assert exc.provider == "faulty"
    assert exc.status == status
    assert exc.retryable is retryable
    if retry_after is None:
        assert exc.retry_after is None
    else:
        assert exc.retry_after == retry_after
    assert exc.body is None or len(exc.body) <= errors.BODY_EXCERPT_CHARS
    assert str(exc).startswith("faulty: ")


# -- success, connection reuse, closing ---------------------------------------------------------


async def test_ok_through_the_public_api(faults: Server) -> None:
    stream = Faulty.create_async_generator("m", MESSAGES, base_url=faults.base, path="/ok")
    assert await stream.text() == "ok"
    assert faults.state.hits["/ok"] == 1


async def test_two_sequential_calls_reuse_one_connection(faults: Server) -> None:
    for _ in range(2):
        assert await ask(fast_call(faults.base, "/ok")) == "ok"
    assert faults.state.hits["/ok"] == 2
    assert faults.state.connections == 1


async def test_aclose_closes_the_sessions_and_the_next_call_opens_new_ones(
    faults: Server,
) -> None:
    assert await ask(fast_call(faults.base, "/ok")) == "ok"
    session = await get_transport().session()
    assert not session.closed
    await llmrelay.aclose()
    assert session.closed
    assert await ask(fast_call(faults.base, "/ok")) == "ok"
    assert await get_transport().session() is not session
    assert faults.state.connections == 2
    await llmrelay.aclose()
    await llmrelay.aclose()  # twice is fine


async def test_plain_connections_read_64_kib_at_a_time(faults: Server) -> None:
    """asyncio's plain sockets read 256 KiB at a time, which glibc serves with mmap, mremap and
    munmap on every read (python/cpython#85451); llmrelay's connections read at most 64 KiB."""
    import aiohttp

    session = await get_transport().session()
    assert await connection_read_size(session.connector, faults.base) == 64 * 1024
    async with aiohttp.TCPConnector() as plain:  # what the change is measured against
        assert await connection_read_size(plain, faults.base) == 256 * 1024


async def test_an_answer_larger_than_one_read_arrives_whole(
    serve: Callable[[web.Application], Any],
) -> None:
    body = bytes(range(256)) * (3 * 1024 + 7)  # about 770 KiB: a dozen reads

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/large", large)
    base = await serve(app)
    call = fast_call(base, "/large")
    for _ in range(2):  # a new connection, then the pooled one
        response = await call.request("GET", f"{base}/large")
        assert response.body == body


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_cut_off_by_aclose_is_not_retried(faults: Server, stream: bool) -> None:
    """A request waiting for its answer when the sessions close fails at once, unretried: a
    retry opened a session of its own, which no later close covered, and waited on it until
    the deadline (for ever without one)."""
    call = fast_call(
        faults.base, "/slow?delay=30", timeout=None, stream=stream, retry=RetryPolicy(3, 0.01)
    )
    task = asyncio.create_task(ask(call))
    async with asyncio.timeout(5):
        while faults.state.hits["/slow"] == 0:  # noqa: ASYNC110 (the server's count, no event)
            await asyncio.sleep(0.01)
    with elapsed() as took:
        await llmrelay.aclose()
        with pytest.raises(errors.ConnectError, match="session was closed") as raised:
            await asyncio.wait_for(task, timeout=5)
    assert took() < 2
    assert raised.value.retryable is False
    assert call.attempts == 1
    assert faults.state.hits["/slow"] == 1


def test_sessions_close_with_the_loop_without_aclose(tmp_path: Any) -> None:
    """A script that never calls aclose leaves no "Unclosed client session" behind."""
    script = textwrap.dedent(
        """
        import asyncio, gc, warnings
        warnings.simplefilter("error")
        from aiohttp import web
        import llmrelay

        async def ok(request):
            return web.json_response({"answer": "ok"})

        async def main():
            app = web.Application()
            app.router.add_get("/ok", ok)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            call = llmrelay.Call(provider="p", base_url=f"http://127.0.0.1:{port}")
            response = await call.request("GET", call.url("/ok"))
            print(response.status)
            await runner.cleanup()

        asyncio.run(main())
        gc.collect()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"
    assert done.stderr == ""  # no "Unclosed client session", no "Exception ignored"


def test_an_event_loop_that_ended_is_not_kept_alive() -> None:
    """Each ``asyncio.run`` that used llmrelay is freed when it ends: the sessions kept for
    its loop must not hold the loop (a program running one loop per job kept them all)."""
    with background_servers() as serve:
        base = serve(make_app())

        async def main() -> asyncio.AbstractEventLoop:
            assert await ask(fast_call(base, "/ok")) == "ok"
            return asyncio.get_running_loop()

        loops = [weakref.ref(asyncio.run(main())) for _ in range(3)]
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]
    assert len(get_transport()._loops) == 0


# -- Retry-After ----------------------------------------------------------------------------------


async def test_429_retry_after_seconds_is_honoured(faults: Server) -> None:
    # Whole seconds are the norm; fractions are accepted (and keep this test short).
    with elapsed() as took:
        assert await ask(fast_call(faults.base, "/flaky/429?fail=1&retry_after=0.4")) == "ok"
    assert faults.state.hits["/flaky/429"] == 2
    assert 0.38 <= took() < 1.0


async def test_429_forever_gives_rate_limited_with_its_fields(faults: Server) -> None:
    with elapsed() as took, pytest.raises(errors.RateLimited) as info:
        await ask(fast_call(faults.base, "/status/429?retry_after=0.2"))
    assert faults.state.hits["/status/429"] == 3
    check_provider_error(info.value, status=429, retryable=True, retry_after=0.2)
    assert info.value.body == '{"error": {"message": "error 429", "code": 429}}'
    assert 0.4 <= took() < 1.5


async def test_429_retry_after_http_date_is_honoured(faults: Server) -> None:
    # An HTTP-date has whole seconds: "1 s from now" is a wait of (0, 1] seconds.
    with elapsed() as took:
        assert await ask(fast_call(faults.base, "/flaky/429?fail=1&retry_after_date=1")) == "ok"
    assert faults.state.hits["/flaky/429"] == 2
    assert took() < 1.5


async def test_429_retry_after_http_date_beyond_the_cap(faults: Server) -> None:
    with pytest.raises(errors.RateLimited) as info:
        await ask(fast_call(faults.base, "/status/429?retry_after_date=100"))
    assert faults.state.hits["/status/429"] == 1
    assert info.value.retry_after is not None
    assert 98 <= info.value.retry_after <= 100


async def test_retry_after_ms_is_honoured(faults: Server) -> None:
    with elapsed() as took:
        assert await ask(fast_call(faults.base, "/flaky/429?fail=2&retry_after_ms=150")) == "ok"
    assert faults.state.hits["/flaky/429"] == 3
    assert 0.3 <= took() < 1.5


async def test_retry_after_longer_than_the_cap_fails_at_once(faults: Server) -> None:
    with elapsed() as took, pytest.raises(errors.RateLimited) as info:
        await ask(fast_call(faults.base, "/status/429?retry_after=3600"))
    assert faults.state.hits["/status/429"] == 1
    check_provider_error(info.value, status=429, retryable=True, retry_after=3600.0)
    assert took() < 1.0


async def test_retry_after_cap_is_the_policys(faults: Server) -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.01, jitter=0.01, max_retry_after=0.1)
    with pytest.raises(errors.RateLimited) as info:
        await ask(fast_call(faults.base, "/status/429?retry_after=1", retry=policy))
    assert faults.state.hits["/status/429"] == 1
    assert info.value.retry_after == 1.0


def test_parse_retry_after_forms() -> None:
    import email.utils

    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "7"}) == 0.25
    assert parse_retry_after({"Retry-After": "-3"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    date = email.utils.formatdate(time.time() + 100, usegmt=True)
    value = parse_retry_after({"Retry-After": date})
    assert value is not None
    assert 98 <= value <= 100
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after({"Retry-After": past}) == 0.0


# -- status codes ---------------------------------------------------------------------------------


async def test_503_then_success(faults: Server) -> None:
    with elapsed() as took:
        assert await ask(fast_call(faults.base, "/flaky/503?fail=1")) == "ok"
    assert faults.state.hits["/flaky/503"] == 2
    assert took() < 1.0


async def test_500_forever_is_a_server_error_after_every_retry(faults: Server) -> None:
    call = fast_call(faults.base, "/status/500")
    with elapsed() as took, pytest.raises(errors.ServerError) as info:
        await ask(call)
    assert faults.state.hits["/status/500"] == 3
    assert call.attempts == 3
    check_provider_error(info.value, status=500, retryable=True)
    body = info.value.body
    assert body is not None
    assert len(body) == errors.BODY_EXCERPT_CHARS
    assert body.startswith('{"error": {"message": "overloaded overloaded')
    assert body.endswith("...")
    assert body in str(info.value)
    assert took() < 1.0


@pytest.mark.parametrize("status", [408, 409, 502, 504])
async def test_other_transient_statuses_are_retried(faults: Server, status: int) -> None:
    assert await ask(fast_call(faults.base, f"/flaky/{status}?fail=2")) == "ok"
    assert faults.state.hits[f"/flaky/{status}"] == 3


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, errors.BadRequest),
        (401, errors.AuthenticationFailed),
        (403, errors.PermissionDenied),
        (404, errors.EndpointNotFound),
        (422, errors.BadRequest),
    ],
)
async def test_client_errors_are_not_retried(
    faults: Server, status: int, kind: type[errors.ProviderError]
) -> None:
    with elapsed() as took, pytest.raises(kind) as info:
        await ask(fast_call(faults.base, f"/status/{status}"))
    assert type(info.value) is kind
    assert faults.state.hits[f"/status/{status}"] == 1
    check_provider_error(info.value, status=status, retryable=False)
    assert info.value.body == f'{{"error": {{"message": "error {status}", "code": {status}}}}}'
    assert took() < 1.0


async def test_cloudflare_challenge_is_named(faults: Server) -> None:
    with pytest.raises(errors.CloudflareChallenge) as info:
        await ask(fast_call(faults.base, "/cloudflare"))
    assert faults.state.hits["/cloudflare"] == 1
    check_provider_error(info.value, status=403, retryable=False)
    assert "Cloudflare" in str(info.value)
    assert "<html" not in str(info.value).lower()  # the page is in .body, not the message
    assert info.value.body is not None
    assert info.value.body.startswith("<!DOCTYPE html>")
    assert isinstance(info.value, errors.PermissionDenied)


async def test_x_should_retry_true_retries_a_400(faults: Server) -> None:
    with pytest.raises(errors.BadRequest) as info:
        await ask(fast_call(faults.base, "/status/400?should_retry=true"))
    assert faults.state.hits["/status/400"] == 3
    check_provider_error(info.value, status=400, retryable=True)


async def test_x_should_retry_false_stops_a_503(faults: Server) -> None:
    with pytest.raises(errors.ServerError) as info:
        await ask(fast_call(faults.base, "/status/503?should_retry=false"))
    assert faults.state.hits["/status/503"] == 1
    check_provider_error(info.value, status=503, retryable=False)


# -- malformed and empty answers ------------------------------------------------------------------


async def test_malformed_json_is_an_invalid_response(faults: Server) -> None:
    with pytest.raises(errors.InvalidResponse) as info:
        await ask(fast_call(faults.base, "/malformed"))
    assert faults.state.hits["/malformed"] == 1
    check_provider_error(info.value, status=200, retryable=False)
    assert info.value.body == '{"answer": "tr'
    assert "not JSON" in str(info.value)


async def test_empty_answer_is_an_invalid_response(faults: Server) -> None:
    with pytest.raises(errors.InvalidResponse) as info:
        await ask(fast_call(faults.base, "/empty"))
    assert faults.state.hits["/empty"] == 1
    assert info.value.status == 200
    assert info.value.retryable is False


# -- network failures -----------------------------------------------------------------------------


async def test_connection_refused(serve: Any) -> None:
    port = free_port()
    call = fast_call(f"http://127.0.0.1:{port}", "/ok")
    with elapsed() as took, pytest.raises(errors.ConnectError) as info:
        await ask(call)
    assert isinstance(info.value, ConnectionError)
    assert call.attempts == 3
    check_provider_error(info.value, status=None, retryable=True)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert took() < 1.0


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen backlog is full, so a new connect hangs (Linux drops the SYN)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


@pytest.mark.skipif(
    sys.platform != "linux", reason="relies on Linux dropping SYNs on a full backlog"
)
async def test_connect_timeout_is_retried(serve: Any, unanswered_port: int) -> None:
    call = fast_call(
        f"http://127.0.0.1:{unanswered_port}",
        "/ok",
        retry=RetryPolicy(max_retries=1, backoff=0.01, jitter=0.01),
        timeouts=Timeouts(connect=0.3, read=2.0),
    )
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    assert call.attempts == 2
    check_provider_error(info.value, status=None, retryable=True)
    assert "connect timed out" in str(info.value)
    assert 0.55 <= took() < 2.0


async def test_reset_mid_response_is_retried(faults: Server) -> None:
    assert await ask(fast_call(faults.base, "/reset?fail=1")) == "ok"
    assert faults.state.hits["/reset"] == 2


async def test_reset_mid_response_forever(faults: Server) -> None:
    with elapsed() as took, pytest.raises(errors.ConnectError) as info:
        await ask(fast_call(faults.base, "/reset"))
    assert faults.state.hits["/reset"] == 3
    check_provider_error(info.value, status=None, retryable=True)
    assert "payload is not completed" in str(info.value)
    assert took() < 1.0


async def test_slow_response_past_the_deadline(faults: Server) -> None:
    call = fast_call(faults.base, "/slow?delay=5", timeout=0.5)
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    assert isinstance(info.value, TimeoutError)
    assert faults.state.hits["/slow"] == 1
    check_provider_error(info.value, status=None, retryable=False)
    assert "deadline of 0.5s" in str(info.value)
    assert 0.45 <= took() < 1.5


async def test_a_stream_slow_to_start_is_a_read_timeout_and_retried(faults: Server) -> None:
    call = fast_call(
        faults.base,
        "/slow?delay=5",
        retry=RetryPolicy(max_retries=1, backoff=0.01, jitter=0.01),
        timeouts=Timeouts(connect=1.0, read=0.3),
        sse=True,
    )
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    assert faults.state.hits["/slow"] == 2
    check_provider_error(info.value, status=None, retryable=True)
    assert "read timed out" in str(info.value)
    assert 0.55 <= took() < 1.5


async def test_a_whole_answer_slower_than_the_read_timeout_is_waited_for(
    faults: Server,
) -> None:
    """A model answering in one piece is silent until it has finished: only the deadline
    bounds that silence, so a slow answer is neither cut off nor sent twice."""
    call = fast_call(
        faults.base,
        "/slow?delay=0.6",
        timeouts=Timeouts(connect=1.0, read=0.2),
        timeout=5.0,
    )
    with elapsed() as took:
        assert await ask(call) == "ok"
    assert faults.state.hits["/slow"] == 1
    assert 0.55 <= took() < 1.5


async def test_a_whole_answer_stalled_mid_body_ends_at_the_deadline(faults: Server) -> None:
    call = fast_call(
        faults.base,
        "/stall-body?delay=5",
        timeout=0.5,
        timeouts=Timeouts(connect=1.0, read=0.1),
    )
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    assert faults.state.hits["/stall-body"] == 1
    check_provider_error(info.value, status=None, retryable=False)
    assert "deadline of 0.5s" in str(info.value)
    assert 0.45 <= took() < 1.2


@pytest.mark.parametrize("total", [5.2, 7.3, 120.0])
def test_the_deadline_handed_to_aiohttp_is_not_rounded_up(total: float) -> None:
    """aiohttp rounds a timeout over its ``ceil_threshold`` (5 s by default) up to the next
    whole second of the loop's clock: a 5.2 s deadline ended at 5.9 s, a stream's at 6.0 s."""
    for timeout in (_stream_timeout(SHORT, total), _whole_answer_timeout(SHORT, total)):
        assert timeout.total == total
        assert timeout.ceil_threshold >= total  # aiohttp rounds only a longer timeout


def test_first_attempts_of_one_deadline_share_one_aiohttp_timeout() -> None:
    """What is left of a 120 s deadline microseconds after it started rounds up to 120 s, so
    every first attempt gets the same ``ClientTimeout`` (built once); what is left later is
    rounded up to the millisecond, never down (the deadline has passed when it fires)."""
    first = _whole_answer_timeout(SHORT, 119.99997)
    assert first is _whole_answer_timeout(SHORT, 119.99999)
    assert first.total == 120.0
    assert _whole_answer_timeout(SHORT, 3.2004).total == 3.201
    assert _whole_answer_timeout(SHORT, 0.0000001).total == 0.001  # never 0: no limit at all
    stream = _stream_timeout(SHORT, 119.99997)
    assert stream is _stream_timeout(SHORT, 119.99999)
    assert (stream.total, stream.sock_read) == (120.0, SHORT.read)


async def test_deadline_reached_during_retries_is_a_timeout(faults: Server) -> None:
    policy = RetryPolicy(max_retries=10, backoff=0.15, max_backoff=1.0, jitter=0.01)
    call = fast_call(faults.base, "/status/503", retry=policy, timeout=0.6)
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    exc = info.value
    assert isinstance(exc, TimeoutError)
    # 0.15 + 0.3 s of backoff fit in 0.6 s; the next 0.6 s would not, so it stops early.
    assert faults.state.hits["/status/503"] == 3
    assert exc.retryable is False
    assert exc.status == 503
    assert isinstance(exc.__cause__, errors.ServerError)
    assert "deadline of 0.6s" in str(exc)
    assert "HTTP 503" in str(exc)
    assert took() < 0.6


async def test_retry_after_beyond_the_deadline_stops_at_once(faults: Server) -> None:
    call = fast_call(faults.base, "/status/429?retry_after=2", timeout=1.0)
    with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
        await ask(call)
    assert faults.state.hits["/status/429"] == 1
    assert info.value.retry_after == 2.0
    assert isinstance(info.value.__cause__, errors.RateLimited)
    assert took() < 0.5


async def test_stream_opening_is_retried(faults: Server) -> None:
    # /flaky answers one JSON line after the failure; the stream reader sees no "data:" line.
    call = fast_call(faults.base, "/flaky/503?fail=2", sse=True)
    assert await ask(call) == ""
    assert faults.state.hits["/flaky/503"] == 3


async def test_stream_chunks(faults: Server) -> None:
    call = fast_call(faults.base, "/stream?chunks=3", sse=True)
    assert await ask(call) == "chunk-0chunk-1chunk-2"
    assert faults.state.hits["/stream"] == 1


async def test_stream_cut_after_a_chunk_is_interrupted_not_retried(faults: Server) -> None:
    call = fast_call(faults.base, "/stream?chunks=2&then=reset", sse=True)
    with pytest.raises(errors.StreamInterrupted) as info:
        await ask(call)
    assert faults.state.hits["/stream"] == 1
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, errors.ConnectError)


async def test_stream_stall_after_a_chunk_is_interrupted(faults: Server) -> None:
    call = fast_call(
        faults.base,
        "/stream?chunks=1&then=stall",
        sse=True,
        timeouts=Timeouts(connect=1.0, read=0.3),
    )
    with elapsed() as took, pytest.raises(errors.StreamInterrupted) as info:
        await ask(call)
    assert faults.state.hits["/stream"] == 1
    assert isinstance(info.value.__cause__, errors.ProviderTimeout)
    assert took() < 1.0


async def test_stream_deadline_after_a_chunk_is_interrupted(faults: Server) -> None:
    call = fast_call(faults.base, "/stream?chunks=1&then=stall", sse=True, timeout=0.4)
    with pytest.raises(errors.StreamInterrupted) as info:
        await ask(call)
    cause = info.value.__cause__
    assert isinstance(cause, errors.ProviderTimeout)
    assert "deadline" in str(cause)


async def test_a_deadline_passing_between_reads_ends_the_next_read_not_the_callers_work(
    faults: Server,
) -> None:
    """The deadline rides on the response (aiohttp's total timeout): it must never cancel
    what the caller does between two reads, only the read after it."""
    call = Call(provider="faulty", base_url=faults.base, timeout=0.3)
    call.start()
    async with call.open_stream("GET", f"{faults.base}/stream?chunks=1&then=stall") as response:
        assert await call.read(response.content.readany())
        await asyncio.sleep(0.5)  # the caller's own work outlives the deadline, uncancelled
        with elapsed() as took, pytest.raises(errors.ProviderTimeout, match="deadline"):
            await call.read(response.content.readany())
    assert took() < 0.1  # at once: the deadline had passed


async def test_a_deadline_reached_during_a_read_ends_it_as_the_deadline(faults: Server) -> None:
    call = Call(provider="faulty", base_url=faults.base, timeout=0.4, timeouts=SHORT)
    call.start()
    async with call.open_stream("GET", f"{faults.base}/stream?chunks=1&then=stall") as response:
        assert await call.read(response.content.readany())
        with elapsed() as took, pytest.raises(errors.ProviderTimeout) as info:
            await call.read(response.content.readany())
    assert "deadline" in str(info.value)
    assert info.value.retryable is False
    assert 0.2 <= took() < 1.0


@pytest.mark.parametrize(
    "path",
    [
        "/status/500",
        "/status/429?retry_after=3600",
        "/cloudflare",
        "/malformed",
        "/empty",
        "/reset",
        "/slow?delay=5",
        "/stall-body?delay=5",
        "/stream?chunks=1&then=reset",
        "/stream?chunks=1&then=stall",
        "/stream?chunks=0&then=reset",
    ],
)
async def test_no_bare_aiohttp_or_asyncio_error_escapes(faults: Server, path: str) -> None:
    call = fast_call(
        faults.base,
        path,
        retry=RetryPolicy(max_retries=0),
        timeout=0.5,  # what ends a whole answer that stalls (it has no read timeout)
        timeouts=Timeouts(connect=0.5, read=0.2),
        sse=path.startswith("/stream"),
    )
    with pytest.raises(Exception) as info:  # noqa: PT011 - the point is what it is
        await ask(call)
    assert isinstance(info.value, errors.ProviderError), repr(info.value)
    assert type(info.value).__module__ == "llmrelay.errors"


async def test_no_bare_error_on_refused_connection(serve: Any) -> None:
    call = fast_call(f"http://127.0.0.1:{free_port()}", "/stream", retry=RetryPolicy(0))
    call.options["sse"] = True
    with pytest.raises(errors.ConnectError):
        await ask(call)


# -- per-call options and the environment ---------------------------------------------------------


async def test_max_retries_zero_makes_one_attempt(faults: Server) -> None:
    stream = Faulty.create_async_generator(
        "m", MESSAGES, base_url=faults.base, path="/status/500", max_retries=0
    )
    with elapsed() as took, pytest.raises(errors.ServerError):
        await stream.text()
    assert faults.state.hits["/status/500"] == 1
    assert took() < 0.5


async def test_timeout_option_is_the_deadline(faults: Server) -> None:
    stream = Faulty.create_async_generator(
        "m", MESSAGES, base_url=faults.base, path="/slow?delay=5", timeout=0.3
    )
    with elapsed() as took, pytest.raises(TimeoutError) as info:
        await stream.text()
    assert isinstance(info.value, errors.ProviderTimeout)
    assert faults.state.hits["/slow"] == 1
    assert 0.25 <= took() < 1.0


async def test_env_max_retries(faults: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "0")
    stream = Faulty.create_async_generator("m", MESSAGES, base_url=faults.base, path="/status/500")
    assert stream.call is not None
    assert stream.call.retry.max_retries == 0
    with pytest.raises(errors.ServerError):
        await stream.text()
    assert faults.state.hits["/status/500"] == 1


async def test_env_timeout(faults: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "0.3")
    stream = Faulty.create_async_generator("m", MESSAGES, base_url=faults.base, path="/slow")
    with elapsed() as took, pytest.raises(errors.ProviderTimeout):
        await stream.text()
    assert 0.25 <= took() < 1.0


def test_env_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    call = Faulty.make_call(base_url="http://127.0.0.1:9")
    assert call.timeout == llmrelay._call.DEFAULT_TIMEOUT
    assert call.retry.max_retries == llmrelay._call.DEFAULT_MAX_RETRIES
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "none")
    monkeypatch.setenv("LLMRELAY_MAX_RETRIES", "5")
    call = Faulty.make_call(base_url="http://127.0.0.1:9")
    assert call.timeout is None
    assert call.retry.max_retries == 5
    monkeypatch.setenv("LLMRELAY_TIMEOUT", "7.5")
    call = Faulty.make_call(base_url="http://127.0.0.1:9", timeout=None, max_retries=1)
    assert call.timeout is None  # the per-call option wins over the environment
    assert call.retry.max_retries == 1
    assert Faulty.make_call(base_url="http://127.0.0.1:9").timeout == 7.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMRELAY_TIMEOUT", "soon"),
        ("LLMRELAY_TIMEOUT", "-1"),
        ("LLMRELAY_TIMEOUT", "0"),
        ("LLMRELAY_TIMEOUT", "nan"),
        ("LLMRELAY_TIMEOUT", "inf"),
        ("LLMRELAY_MAX_RETRIES", "many"),
        ("LLMRELAY_MAX_RETRIES", "1.5"),
        ("LLMRELAY_MAX_RETRIES", "-1"),
    ],
)
async def test_bad_env_values_are_config_errors_before_any_io(
    faults: Server, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(errors.ConfigError) as info:
        Faulty.create_async_generator("m", MESSAGES, base_url=faults.base, path="/ok")
    assert name in str(info.value)
    assert repr(value) in str(info.value)
    assert faults.state.total == 0


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": -1}, {"timeout": "5"}, {"max_retries": -1}, {"max_retries": 1.5}],
)
def test_bad_call_options_are_invalid_requests(options: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidRequest):
        Faulty.make_call(base_url="http://127.0.0.1:9", **options)


# -- logging --------------------------------------------------------------------------------------


async def test_each_attempt_is_logged_at_debug_without_secrets(
    faults: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    path = f"/status/401?key={SECRET_KEY}&body=Incorrect+API+key+provided:+{SECRET_KEY}"
    with pytest.raises(errors.AuthenticationFailed) as info:
        await ask(fast_call(faults.base, path, api_key=SECRET_KEY))
    assert faults.state.last_headers["Authorization"] == f"Bearer {SECRET_KEY}"
    for text in (str(info.value), repr(info.value), info.value.body or "", caplog.text):
        assert SECRET_KEY not in text
        assert "SECRETSECRET" not in text
    # The key sent in Authorization is remembered when the answer is an error: masked whole.
    assert "Incorrect API key provided: ***" in (info.value.body or "")

    caplog.clear()
    assert await ask(fast_call(faults.base, "/flaky/503?fail=2", api_key=SECRET_KEY)) == "ok"
    records = [r for r in caplog.records if r.name == "llmrelay"]
    assert all(r.levelno == logging.DEBUG for r in records)
    messages = [r.getMessage() for r in records]
    failed = [m for m in messages if "failed" in m]
    assert len(failed) == 2
    assert all("status=503" in m and m.startswith("faulty: attempt") for m in failed)
    assert any("attempt 3 succeeded (status=200)" in m for m in messages)
    assert sum("retrying in" in m for m in messages) == 2
    assert SECRET_KEY not in caplog.text


async def test_a_provider_with_a_reason_reaches_the_caller_unchanged() -> None:
    """Errors a provider raises itself pass through the stream untouched."""

    class Refuses(Faulty):
        name = "refuses"

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            raise errors.MisuseDetected("no", provider=cls.name)
            yield ""  # pragma: no cover

    with pytest.raises(errors.MisuseDetected):
        await Refuses.create_async_generator("m", MESSAGES, base_url="http://127.0.0.1:9").text()


async def test_http_response_headers_are_case_insensitive(faults: Server) -> None:
    call = fast_call(faults.base, "/ok")
    response = await call.request("GET", call.url("/ok"))
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["Content-Type"] == response.headers["CONTENT-TYPE"]
    assert response.json("faulty") == {"answer": "ok"}
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    "body",
    [
        '{"answer": "ciao é"}'.encode(),
        '\ufeff{"answer": "ciao é"}'.encode(),  # UTF-8 with a byte-order mark
        '{"answer": "ciao é"}'.encode("utf-16"),
        '{"answer": "ciao é"}'.encode("utf-32-le"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16", "utf-32-le"],
)
def test_json_bodies_decode_in_every_encoding_json_allows(body: bytes) -> None:
    response = HTTPResponse(200, {}, body, "http://127.0.0.1/")
    assert response.json("p") == {"answer": "ciao é"}


def test_a_body_that_is_not_json_is_invalid_response() -> None:
    response = HTTPResponse(200, {}, b"<html>nope</html>", "http://127.0.0.1/")
    with pytest.raises(errors.InvalidResponse, match="answer is not JSON: '<html>nope</html>'"):
        response.json("p")


async def test_a_stream_context_is_entered_once(faults: Server) -> None:
    """Entering one ``open_stream()`` (or transport ``open()``) context twice would open a
    second connection and lose the first; it is refused, and leaving a context never entered
    does nothing."""
    call = Call(provider="faulty", base_url=faults.base)
    call.start()
    opening = call.open_stream("GET", f"{faults.base}/stream?chunks=1")
    await opening.__aexit__(None, None, None)  # never entered: nothing to release
    async with opening as response:
        assert await response.content.read()
        with pytest.raises(RuntimeError, match="already opened"):
            await opening.__aenter__()
    sent = get_transport().open("faulty", "GET", f"{faults.base}/stream?chunks=1")
    await sent.__aexit__(None, None, None)
    async with sent as response:
        assert await response.content.read()
        with pytest.raises(RuntimeError, match="already opened"):
            await sent.__aenter__()
