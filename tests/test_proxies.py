"""Proxies: real pproxy servers on 127.0.0.1 (HTTP, SOCKS4, SOCKS5, with and without auth).

One pproxy process per module serves every listener. ``--auth 0`` stops it from remembering a
successful login per client IP, so a wrong password is really refused. ``-v`` makes it log one
line per tunnelled connection (``socks5 127.0.0.1:43710 -> 127.0.0.1:18090``): that line is the
proof a request went through the proxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider, RetryPolicy, errors
from llmrelay._proxy import ACCEPTED_SCHEMES, ProxyURL, checked_proxy, parse_proxy, proxy_for
from llmrelay._redact import redact
from llmrelay._transport import get_transport
from tests.replicas.faults import FAULTS, FaultState, make_app
from tests.support import Proxies, connection_read_size, free_port, run_pproxy

USER = "alice"
PASSWORD = "s3cret-Pw0rd"
#: Reserved characters that must survive the trip (percent-encoded in the URL).
ODD_PASSWORD = "p@ss/w%rd"
ODD_PASSWORD_URL = "p%40ss%2Fw%25rd"
WRONG = "wr0ng-Guess"
MESSAGES = [{"role": "user", "content": "Hello"}]
FAST = RetryPolicy(max_retries=2, backoff=0.01, max_backoff=0.05, jitter=0.01)


LISTENERS = {
    "http-open": "",
    "http-auth": f"#{USER}:{PASSWORD}",
    "http-odd": f"#{USER}:{ODD_PASSWORD}",
    "socks5-open": "",
    "socks5-auth": f"#{USER}:{PASSWORD}",
    "socks5-odd": f"#{USER}:{ODD_PASSWORD}",
    "socks4-open": "",
}


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    with run_pproxy(LISTENERS, tmp_path_factory.mktemp("pproxy") / "pproxy.log") as running:
        yield running


@dataclass
class Target:
    base: str
    port: int
    state: FaultState


@pytest.fixture
async def target(serve: Callable[[web.Application], Any]) -> Target:
    app = make_app()
    base = await serve(app)
    return Target(base, int(base.rsplit(":", 1)[1]), app[FAULTS])


class Echo(Provider):
    """GETs ``/ok`` from ``base_url`` and yields the answer."""

    name = "echo"
    url = "http://127.0.0.1:9"
    default_model = "m"
    models = ("m",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        data = await call.post_json(call.url("/ok"), {"model": model})
        yield data["answer"]
        yield FinishReason("stop")


async def fetch(target: Target, proxy: str | None, retry: RetryPolicy = FAST) -> str:
    call = Call(provider="echo", base_url=target.base, proxy=proxy, timeout=5.0, retry=retry)
    messages = llmrelay.validate_messages(MESSAGES)
    return await llmrelay.ChunkStream("echo", Echo.generate("m", messages, call), call).text()


def wait_for_lines(proxies: Proxies, port: int, count: int) -> list[str]:
    """pproxy logs from its own process: give the line a moment to land (bounded)."""
    deadline = time.monotonic() + 3
    lines = proxies.lines_to(port)
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.02)
        lines = proxies.lines_to(port)
    return lines


# -- through real proxies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "auth", "scheme"),
    [
        ("http-open", None, "http"),
        ("http-auth", f"{USER}:{PASSWORD}", "http"),
        ("http-odd", f"{USER}:{ODD_PASSWORD_URL}", "http"),
        ("socks5-open", None, "socks5"),
        ("socks5-auth", f"{USER}:{PASSWORD}", "socks5"),
        ("socks5-odd", f"{USER}:{ODD_PASSWORD_URL}", "socks5"),
        ("socks4-open", None, "socks4"),
    ],
)
async def test_requests_go_through_the_proxy(
    proxies: Proxies, target: Target, listener: str, auth: str | None, scheme: str
) -> None:
    assert await fetch(target, proxies.url(listener, auth)) == "ok"
    assert target.state.hits["/ok"] == 1
    lines = wait_for_lines(proxies, target.port, 1)
    assert len(lines) == 1
    assert lines[0].startswith(f"{scheme} 127.0.0.1:")


async def test_socks_tunnels_read_64_kib_at_a_time(proxies: Proxies, target: Target) -> None:
    """The SOCKS session's connections read in small pieces, as the direct session's do (see
    ``test_plain_connections_read_64_kib_at_a_time``)."""
    session = await get_transport().session(checked_proxy(proxies.url("socks5-open")))
    assert await connection_read_size(session.connector, target.base) == 64 * 1024
    assert wait_for_lines(proxies, target.port, 1)[0].startswith("socks5 ")


async def test_socks5h_is_accepted(proxies: Proxies, target: Target) -> None:
    url = proxies.url("socks5-auth", f"{USER}:{PASSWORD}").replace("socks5://", "socks5h://")
    assert await fetch(target, url) == "ok"
    assert wait_for_lines(proxies, target.port, 1)[0].startswith("socks5 ")


async def test_sequential_calls_through_a_socks_proxy_share_a_connection(
    proxies: Proxies, target: Target
) -> None:
    url = proxies.url("socks5-auth", f"{USER}:{PASSWORD}")
    for _ in range(3):
        assert await fetch(target, url) == "ok"
    assert target.state.hits["/ok"] == 3
    assert target.state.connections == 1
    assert len(wait_for_lines(proxies, target.port, 1)) == 1


async def test_the_public_api_takes_proxy(proxies: Proxies, target: Target) -> None:
    proxy = proxies.url("socks5-auth", f"{USER}:{PASSWORD}")
    stream = Echo.create_async_generator("m", MESSAGES, proxy=proxy, base_url=target.base)
    assert await stream.text() == "ok"
    assert len(wait_for_lines(proxies, target.port, 1)) == 1


# -- refusals: typed, and never showing the password ----------------------------------------------


@pytest.mark.parametrize("listener", ["socks5-auth", "http-auth"])
async def test_wrong_password_is_a_proxy_error_without_the_password(
    proxies: Proxies, target: Target, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    url = proxies.url(listener, f"{USER}:{WRONG}")
    started = time.monotonic()
    with pytest.raises(errors.ProxyError) as info:
        await fetch(target, url)
    exc = info.value
    assert time.monotonic() - started < 2.0
    assert isinstance(exc, errors.ConnectError)
    assert exc.provider == "echo"
    assert exc.retryable is False  # a wrong password does not become right
    if listener == "http-auth":
        assert exc.status == 407
    assert f"{USER}:***@127.0.0.1:{proxies.ports[listener]}" in str(exc)
    assert f"via {listener.split('-')[0]}://{USER}:***@127.0.0.1:" in caplog.text
    for text in (str(exc), repr(exc), str(exc.body), caplog.text):
        assert WRONG not in text
        assert PASSWORD not in text
    assert target.state.total == 0


@pytest.mark.parametrize("listener", ["socks5-auth", "http-auth"])
async def test_missing_credentials_are_refused(
    proxies: Proxies, target: Target, listener: str
) -> None:
    with pytest.raises(errors.ProxyError):
        await fetch(target, proxies.url(listener))
    assert target.state.total == 0


@pytest.mark.parametrize("scheme", ["socks5", "socks4", "http"])
async def test_unreachable_proxy_is_a_typed_retryable_error(
    target: Target, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    port = free_port()
    proxy = f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{port}"
    if scheme == "socks4":
        proxy = f"socks4://127.0.0.1:{port}"
    call = Call(provider="echo", base_url=target.base, proxy=proxy, timeout=5.0, retry=FAST)
    with pytest.raises(errors.ProxyError) as info:
        await call.request("GET", call.url("/ok"))
    exc = info.value
    assert exc.retryable is True
    assert call.attempts == 3
    assert f"127.0.0.1:{port}" in str(exc)
    for text in (str(exc), repr(exc), caplog.text):
        assert PASSWORD not in text
    assert target.state.total == 0


async def test_a_proxy_host_that_does_not_resolve_is_a_proxy_error(
    target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp reports a proxy host it cannot resolve as it would the destination's; the
    error must still name the proxy. The resolver fails the lookup itself: no DNS query
    leaves the machine."""
    import socket

    from aiohttp.resolver import DefaultResolver

    real_resolve = DefaultResolver.resolve
    looked_up: list[str] = []

    async def resolve(self: Any, host: str, port: int = 0, family: int = 0) -> Any:
        looked_up.append(host)
        if host == "proxy.invalid":
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return await real_resolve(self, host, port, family)

    monkeypatch.setattr(DefaultResolver, "resolve", resolve)
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    await get_transport().aclose()  # a session made now has a connector with the new resolver
    proxy = f"http://{USER}:{PASSWORD}@proxy.invalid:3128"
    call = Call(provider="echo", base_url=target.base, proxy=proxy, timeout=5.0, retry=FAST)
    with pytest.raises(errors.ProxyError) as info:
        await call.request("GET", call.url("/ok"))
    exc = info.value
    assert str(exc).startswith("echo: cannot reach proxy http://alice:***@proxy.invalid:3128")
    assert "Name or service not known" in str(exc)
    assert exc.retryable is True
    assert call.attempts == 3
    assert looked_up == ["proxy.invalid"] * 3
    for text in (str(exc), repr(exc), caplog.text):
        assert PASSWORD not in text
    assert target.state.total == 0


# -- the environment ------------------------------------------------------------------------------


async def test_llmrelay_proxy_env(
    proxies: Proxies, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRELAY_PROXY", proxies.url("socks5-auth", f"{USER}:{PASSWORD}"))
    assert await fetch(target, None) == "ok"
    assert len(wait_for_lines(proxies, target.port, 1)) == 1


async def test_http_proxy_env(
    proxies: Proxies, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxies.url("http-auth", f"{USER}:{PASSWORD}"))
    assert await fetch(target, None) == "ok"
    assert len(wait_for_lines(proxies, target.port, 1)) == 1


async def test_all_proxy_env(
    proxies: Proxies, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", proxies.url("socks5-open"))
    assert await fetch(target, None) == "ok"
    assert wait_for_lines(proxies, target.port, 1)[0].startswith("socks5 ")


async def test_no_proxy_bypasses_the_env_proxy(
    proxies: Proxies, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxies.url("http-open"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await fetch(target, None) == "ok"
    assert target.state.hits["/ok"] == 1
    # The answer came back, and pproxy logs a tunnel when it opens: there is none.
    assert proxies.lines_to(target.port) == []


async def test_explicit_empty_proxy_overrides_the_env(
    proxies: Proxies, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMRELAY_PROXY", proxies.url("socks5-open"))
    assert await fetch(target, "") == "ok"
    assert proxies.lines_to(target.port) == []


@pytest.mark.parametrize("name", ["LLMRELAY_PROXY", "HTTP_PROXY", "ALL_PROXY"])
async def test_malformed_env_proxy_is_a_config_error_before_any_io(
    target: Target, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, f"ftp://{USER}:{PASSWORD}@127.0.0.1:21")
    with pytest.raises(errors.ConfigError) as info:
        await fetch(target, None)
    assert str(info.value).startswith(f"{name}: ")
    assert "socks5://" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert target.state.total == 0


def test_proxy_for_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_for("http://api.test/v1", None) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert proxy_for("http://api.test/v1", None) is None  # HTTPS_PROXY is for https targets
    assert proxy_for("https://api.test/v1", None) == parse_proxy("http://127.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    assert proxy_for("http://api.test/v1", None) == parse_proxy("socks5://127.0.0.1:1080")
    monkeypatch.setenv("NO_PROXY", "api.test")
    assert proxy_for("https://api.test/v1", None) is None
    assert proxy_for("https://other.test/v1", None) == parse_proxy("http://127.0.0.1:3128")
    monkeypatch.setenv("LLMRELAY_PROXY", "socks5://127.0.0.1:9050")
    assert proxy_for("https://other.test/v1", None) == parse_proxy("socks5://127.0.0.1:9050")
    assert proxy_for("https://other.test/v1", "http://127.0.0.1:8080") == parse_proxy(
        "http://127.0.0.1:8080"
    )
    assert proxy_for("https://other.test/v1", "") is None


def test_no_proxy_entries_may_name_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1:18801, .internal.test")
    assert proxy_for("http://127.0.0.1:18801/v1", None) is None
    assert proxy_for("http://127.0.0.1:18802/v1", None) == parse_proxy("http://127.0.0.1:3128")
    assert proxy_for("http://api.internal.test:8000/v1", None) is None  # no port: any port
    assert proxy_for("http://api.test/v1", None) == parse_proxy("http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "api.test:80")  # the scheme's default port counts
    assert proxy_for("http://api.test/v1", None) is None


def test_a_standard_variable_without_a_scheme_is_an_http_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As curl, requests and urllib read HTTP_PROXY=host:port; llmrelay's own settings
    # (proxy=, LLMRELAY_PROXY, the file) still want a scheme.
    monkeypatch.setenv("HTTP_PROXY", "127.0.0.1:3128")
    assert proxy_for("http://api.test/v1", None) == parse_proxy("http://127.0.0.1:3128")
    monkeypatch.setenv("LLMRELAY_PROXY", "127.0.0.1:3128")
    with pytest.raises(errors.ConfigError, match="LLMRELAY_PROXY: unsupported proxy scheme"):
        proxy_for("http://api.test/v1", None)


# -- malformed proxy URLs, refused before any I/O -------------------------------------------------


@pytest.mark.parametrize(
    "proxy",
    [
        "ftp://127.0.0.1:21",
        "socks6://127.0.0.1:1080",
        "127.0.0.1:8080",
        "socks5://127.0.0.1:notaport",
        "socks5://127.0.0.1:99999",
        "socks5://127.0.0.1:0",
        "socks5://:1080",
        "http://127.0.0.1:8080/path",
        "http://127.0.0.1:8080?x=1",
        f"socks5://{USER}:{PASSWORD}@[::1",
        f"socks5://{USER}:pa#{PASSWORD}@127.0.0.1:1080",
    ],
)
async def test_malformed_proxy_is_an_invalid_request_before_any_io(
    target: Target, proxy: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        Echo.create_async_generator("m", MESSAGES, proxy=proxy, base_url=target.base)
    message = str(info.value)
    assert all(f"{scheme}://" in message for scheme in ACCEPTED_SCHEMES), message
    assert PASSWORD not in message
    assert PASSWORD not in repr(info.value)
    assert target.state.total == 0


def test_proxy_must_be_a_string() -> None:
    with pytest.raises(errors.InvalidRequest, match="URL string"):
        Echo.make_call(proxy=8080)  # type: ignore[arg-type]


# -- parse_proxy, ProxyURL and redact (no I/O) ----------------------------------------------------


def test_parse_proxy_parts_and_defaults() -> None:
    p = parse_proxy(f"SOCKS5://{USER}:{ODD_PASSWORD_URL}@Proxy.Example:1081")
    assert (p.scheme, p.host, p.port) == ("socks5", "proxy.example", 1081)
    assert (p.username, p.password) == (USER, ODD_PASSWORD)
    assert p.is_socks
    assert parse_proxy("http://127.0.0.1").port == 80
    assert parse_proxy("https://127.0.0.1").port == 443
    assert parse_proxy("socks4://127.0.0.1").port == 1080
    assert parse_proxy("http://127.0.0.1:3128/").port == 3128
    assert not parse_proxy("https://127.0.0.1").is_socks
    v6 = parse_proxy("socks5://[::1]:1080")
    assert v6.host == "::1"
    assert v6.url() == "socks5://[::1]:1080"


def test_proxy_url_hides_the_password() -> None:
    p = parse_proxy(f"socks5h://{USER}:{PASSWORD}@127.0.0.1:1080")
    assert str(p) == f"socks5h://{USER}:***@127.0.0.1:1080"
    assert repr(p) == f"ProxyURL('socks5h://{USER}:***@127.0.0.1:1080')"
    in_a_dict = str({"proxy": p})
    assert PASSWORD not in f"{p} {p!r} {[p]} {in_a_dict}"
    # The connector spelling: socks5h means remote DNS, which socks5 does here already.
    assert p.url() == f"socks5://{USER}:{PASSWORD}@127.0.0.1:1080"
    assert p.url(with_password=False) == f"socks5://{USER}:***@127.0.0.1:1080"
    odd = parse_proxy(f"http://{USER}:{ODD_PASSWORD_URL}@127.0.0.1:3128")
    assert odd.url() == f"http://{USER}:{ODD_PASSWORD_URL}@127.0.0.1:3128"
    assert parse_proxy(odd.url()) == odd  # the URL round-trips
    assert str(odd) == f"http://{USER}:***@127.0.0.1:3128"
    user_only = parse_proxy("socks4://bob@127.0.0.1:1080")
    assert str(user_only) == "socks4://bob@127.0.0.1:1080"
    assert str(parse_proxy("http://127.0.0.1:3128")) == "http://127.0.0.1:3128"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"proxy socks5://{USER}:{PASSWORD}@127.0.0.1:1080 failed", PASSWORD),
        (f"proxy http://{USER}:{ODD_PASSWORD}@127.0.0.1:1080 failed", "ss/w%rd"),
        (f"ProxyURL('http://{USER}:{PASSWORD}@h:1')", PASSWORD),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("Proxy-Authorization: Basic YWxpY2U6czNjcmV0", "YWxpY2U6czNjcmV0"),
        ('{"error": "Incorrect API key provided: sk-proj-abcdefghij1234"}', "abcdefghij1234"),
        ("key gsk_abcdefghijklmnop", "abcdefghijklmnop"),
        ("AIzaSyA1234567890abcdefghijklmnopqrs", "SyA1234567890abcdefghijklmnopqrs"),
        ("GET https://api.test/v1?key=topsecret&x=1", "topsecret"),
        ("GET https://api.test/v1?x=1&api_key=topsecret", "topsecret"),
    ],
)
def test_redact_hides_secrets(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "***" in redacted


def test_redact_keeps_ordinary_text() -> None:
    text = "HTTP 500: upstream overloaded; retry later (see https://status.example.com/)"
    assert redact(text) == text
    # SOCKS4's user is an identifier; elsewhere a user without a password is a token
    # (``http://TOKEN@proxy``, ``http://KEY:@proxy``).
    assert redact(f"socks4://{USER}@127.0.0.1:1080") == f"socks4://{USER}@127.0.0.1:1080"
    for url in (f"socks5://{USER}@127.0.0.1:1080", f"http://{USER}:@127.0.0.1:1080"):
        assert redact(url) == url.replace(USER, "***")


def test_proxy_url_is_hashable_and_comparable() -> None:
    a = parse_proxy(f"socks5://{USER}:{PASSWORD}@127.0.0.1:1080")
    b = ProxyURL("socks5", "127.0.0.1", 1080, USER, PASSWORD)
    assert a == b
    assert len({a, b}) == 1
