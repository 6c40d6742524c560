"""Secrets never leave: an API key, a proxy password and cookies, through a real call.

One provider call is recorded into a cassette through an authenticated HTTP proxy (real
pproxy), with debug logging captured, against a server that echoes what it received and sets a
cookie; then a failing call does the same. The key, the password and the cookie values must
appear in none of: the cassette file, the log records, the error messages and reprs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from llmrelay import Call, Chunk, FinishReason, Message, Provider, errors
from llmrelay._cassettes import cassette
from tests.support import Proxies, Serve, run_pproxy

API_KEY = "sk-proj-Zq8sEcReT0123456789abcdef"
PROXY_PASSWORD = "hunter2-Pr0xy-Pass"
COOKIE = "sessid-7f3a9c1e5b2d4086"
SERVER_COOKIE = "srv-cookie-91ab3f77e2"
SECRETS = (API_KEY, PROXY_PASSWORD, COOKIE, SERVER_COOKIE)


class Leaky(Provider):
    """Sends the key as a header, a query parameter and a body field, plus a cookie."""

    name = "leaky"
    url = "http://127.0.0.1:9"
    default_model = "m"
    models = ("m",)
    supported_options = frozenset({"fail"})

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        path = "/fail" if call.options.get("fail") else "/echo"
        data = await call.post_json(
            call.url(f"{path}?api_key={API_KEY}"),
            {"prompt": messages[-1].text, "api_key": API_KEY, "auth": {"token": API_KEY}},
            headers={"Authorization": f"Bearer {API_KEY}", "Cookie": f"session={COOKIE}"},
        )
        yield str(data["text"])
        yield FinishReason("stop")


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    reflected = f"{request.headers.get('Authorization')} {request.headers.get('Cookie')} {body}"
    return web.json_response(
        {"text": "ok", "debug": reflected},
        headers={"Set-Cookie": f"server={SERVER_COOKIE}; Path=/"},
    )


async def _fail(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization")
    return web.json_response({"error": {"message": f"invalid key {auth}"}}, status=401)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    listeners = {"http-auth": f"#alice:{PROXY_PASSWORD}"}
    with run_pproxy(listeners, tmp_path_factory.mktemp("pproxy") / "log") as running:
        yield running


def _assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}"


async def test_no_secret_reaches_cassettes_logs_or_errors(
    serve: Serve, proxy: Proxies, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    app.router.add_post("/echo", _echo)
    app.router.add_post("/fail", _fail)
    base = await serve(app)
    proxy_url = proxy.url("http-auth", f"alice:{PROXY_PASSWORD}")
    path = tmp_path / "leaky.yaml"
    caplog.set_level(logging.DEBUG, logger="llmrelay")

    with cassette(path, mode="record"):
        answer = await Leaky.create_async_generator(
            "m", [{"role": "user", "content": "hi"}], base_url=base, proxy=proxy_url
        ).text()
        with pytest.raises(errors.AuthenticationFailed) as failure:
            await Leaky.create_async_generator(
                "m",
                [{"role": "user", "content": "hi"}],
                base_url=base,
                proxy=proxy_url,
                fail=True,
            ).text()

    assert answer == "ok"
    assert proxy.lines_to(int(base.rsplit(":", 1)[1]))  # it really went through the proxy
    assert caplog.records  # debug logging really ran
    _assert_clean("the cassette", path.read_text())
    _assert_clean("the logs", "\n".join(r.getMessage() for r in caplog.records))
    _assert_clean("the error", f"{failure.value} {failure.value!r} {failure.value.body}")

    with pytest.raises(errors.InvalidRequest) as bad_proxy:
        Leaky.create_async_generator(
            "m", [{"role": "user", "content": "hi"}], proxy=f"ftp://alice:{PROXY_PASSWORD}@h:1"
        )
    _assert_clean("the proxy error", f"{bad_proxy.value} {bad_proxy.value!r}")


def test_secrets_in_a_base_url_stay_out_of_reprs_listings_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from llmrelay._config import EndpointConfig
    from llmrelay.cli import cli

    url = "http://u:URLPASS555@127.0.0.1:9/v1?api-version=2024&key=QUERYKEY444"
    config = tmp_path / "config.toml"
    config.write_text(f'[[endpoints]]\nname = "azure"\nbase_url = "{url}"\nmodels = ["m"]\n')
    monkeypatch.setenv("LLMRELAY_CONFIG", str(config))
    shown = [
        repr(EndpointConfig(name="azure", base_url=url)),
        repr(Call(provider="azure", base_url=url)),
        CliRunner().invoke(cli, ["providers"]).output,
        json.dumps(json.loads(CliRunner().invoke(cli, ["providers", "--json"]).output)),
    ]
    with pytest.raises(errors.InvalidRequest) as info:
        Leaky.make_call(base_url="ftp://u:URLPASS555@h/v1")
    shown.append(str(info.value))
    for text in shown:
        assert "URLPASS555" not in text
        assert "QUERYKEY444" not in text
    assert "u:***@127.0.0.1:9/v1" in shown[2]


@pytest.mark.parametrize(
    ("proxy", "shown"),
    [
        ("bob:PROXYPASS777@h:1", "bob:***@h:1"),
        ("ftp//bob:PROXYPASS777@h", "ftp//bob:***@h"),
        ("PROXYPASS777@h:1", "***@h:1"),
    ],
)
def test_a_proxy_without_a_scheme_keeps_its_password_out_of_the_error(
    proxy: str, shown: str
) -> None:
    from llmrelay._proxy import parse_proxy

    with pytest.raises(errors.InvalidRequest) as info:
        parse_proxy(proxy)
    assert "PROXYPASS777" not in str(info.value)
    assert repr(shown) in str(info.value)


def test_remembered_secrets_are_generated_looking_values_only() -> None:
    from llmrelay._proxy import parse_proxy
    from llmrelay._redact import redact, remember_secret

    parse_proxy("http://alice:hunter2-Pr0xy-Pass@127.0.0.1:3128")
    # The password alone, no URL around it: only remembering it can hide it.
    assert redact("auth hunter2-Pr0xy-Pass refused") == "auth *** refused"
    for placeholder in ("ollama", "lm-studio", "not-needed", "no-key-required-here"):
        remember_secret(placeholder)  # what local servers accept: words, not secrets
    text = "ollama: cannot connect to ollama:11434 (lm-studio, not-needed, no-key-required-here)"
    assert redact(text) == text
    remember_secret("plainsecretvalue42")
    assert redact("key plainsecretvalue42.") == "key ***."
    remember_secret("OnlyLettersInThisKeyAbc")  # long, letters only, no separator: a key
    assert redact("key OnlyLettersInThisKeyAbc.") == "key ***."


DRIP_KEY = "drk-LeakMe-98765abc"  # no vendor shape: only remembering it can hide it


class Drip(Provider):
    """Sends its key in a header of its own, as a plugin would, without declaring it."""

    name = "drip"
    url = "http://127.0.0.1:9"
    default_model = "m"
    models = ("m",)
    supports_stream = True

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        headers = {"X-Drip-Key": DRIP_KEY}
        if call.stream:
            async with call.open_stream("POST", call.url("/v1/drip"), headers=headers) as resp:
                yield (await resp.read()).decode()
        else:
            yield str((await call.post_json(call.url("/v1/drip"), {}, headers=headers))["text"])
        yield FinishReason("stop")


async def _refuse_quoting_the_key(request: web.Request) -> web.Response:
    key = request.headers["X-Drip-Key"]
    return web.json_response({"error": {"message": f"unknown key {key}"}}, status=401)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_a_server_quotes_back_in_an_error_is_scrubbed(
    serve: Serve, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """Whatever header a provider sends its key in: an error quoting it back shows ***."""
    caplog.set_level(logging.DEBUG, logger="llmrelay")
    app = web.Application()
    app.router.add_post("/v1/drip", _refuse_quoting_the_key)
    base = await serve(app)
    stream_of = Drip.create_async_generator(
        "m", [{"role": "user", "content": "hi"}], base_url=base, stream=stream
    )
    with pytest.raises(errors.AuthenticationFailed) as info:
        await stream_of.text()
    exc = info.value
    assert "unknown key ***" in str(exc)
    for text in (str(exc), repr(exc), exc.body or "", caplog.text):
        assert DRIP_KEY not in text


@pytest.mark.parametrize(
    "query",
    [
        "subscription-key=SubKey0123456789",  # Azure API Management
        "code=AzFuncKey0123456789",  # Azure Functions
        "sig=SasSig0123456789",  # Azure SAS
        "auth_token=AuthTok0123456789",
        "x-api-key=XKey0123456789",
        "private_token=PrivTok0123456789",
        "secret=Secret0123456789",
        "client_secret=Secret0123456789",
    ],
)
def test_credentials_in_any_query_parameter_are_hidden(query: str) -> None:
    """Query names as loose as header names: in logs, errors, listings and cassettes."""
    from llmrelay._cassettes import _Scrubber
    from llmrelay._redact import redact

    name, _, value = query.partition("=")
    url = f"http://127.0.0.1:9/v1/chat/completions?api-version=2024&{query}"
    assert redact(url) == f"http://127.0.0.1:9/v1/chat/completions?api-version=2024&{name}=***"

    import types

    recorded = types.SimpleNamespace(uri=url, headers={}, body=b"")
    scrubbed = _Scrubber(None).request(recorded)
    assert value not in scrubbed.uri
    assert "api-version=2024" in scrubbed.uri


@pytest.mark.parametrize(
    "text",
    [
        "http://h/v1?max_tokens=100&keyword=python&author=Tolkien&tokenizer=bpe&keys=3",
        "ssh://git@github.com/org/repo.git",  # a user without a password outside proxy URLs
        "postgres://postgres@localhost/db",
        "socks4://bob@127.0.0.1:1080",  # SOCKS4's user is an identifier
    ],
)
def test_ordinary_urls_are_left_alone(text: str) -> None:
    """Names are matched by whole parts (``key``, ``token``...), not substrings: ``author``
    and ``keyword`` were hidden, and a cassette then masked their values everywhere."""
    from llmrelay._cassettes import _Scrubber
    from llmrelay._redact import redact

    assert redact(text) == text
    import types

    scrubbed = _Scrubber(None).request(types.SimpleNamespace(uri=text, headers={}, body=b""))
    assert scrubbed.uri == text


def test_redacting_long_pathological_text_takes_linear_time() -> None:
    """A body of many ``?`` or ``http://`` (a garbled charset) made the patterns backtrack:
    12 s for 4 KB of ``?key``, 112 s for 40 KB of ``?`` in an error's excerpt."""
    import time

    from llmrelay._redact import redact
    from llmrelay._transport import excerpt

    started = time.perf_counter()
    for text in ("?key" * 5000, "?" * 100_000, "http://a" * 10_000, "http://u:" + "p" * 100_000):
        redact(text)
        excerpt(text * 10)
    assert time.perf_counter() - started < 5  # about 0.2 s; the old patterns took minutes


@pytest.mark.parametrize(
    "proxy", ["http://ZyteKey0123456789abcdef:@127.0.0.1:8011", "http://Tok0123456789@h:1"]
)
def test_a_credential_in_a_proxy_urls_user_place_is_hidden(proxy: str) -> None:
    """Proxy services take the key as the user, with an empty password or none."""
    from llmrelay._proxy import parse_proxy
    from llmrelay._redact import redact

    secret = proxy.split("//")[1].split("@")[0].rstrip(":")
    parsed = parse_proxy(proxy)
    assert parsed.username == secret  # still sent
    for text in (str(parsed), repr(parsed), redact(proxy), redact(f"proxy said: {secret}")):
        assert secret not in text


def test_each_cookie_sent_is_scrubbed_from_what_a_server_quotes() -> None:
    from llmrelay._redact import redact
    from llmrelay._transport import _remember_sent_secrets

    _remember_sent_secrets({"Cookie": "theme=dark; sessionid=lettersonlysecretvalue"})
    assert redact("bad session lettersonlysecretvalue; theme dark") == (
        "bad session ***; theme dark"
    )
