"""hypothesis against the server's edge: whatever arrives, never a 500, never a traceback.

The server runs on an event loop of its own, in a thread, for the whole module, so the fuzzed
requests are plain blocking HTTP (``http.client``), and the server surviving every example is
part of what is tested. Behind it is ``Echo`` (no I/O), so only the server's own code is fuzzed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import llmrelay
from llmrelay._registry import build_registry
from llmrelay.server import Server, ServerSettings, create_app, serving
from tests.test_server import Echo, Plugin

KEY = "sk-fuzz-key-0123456789"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class ThreadServer:
    """``serving()`` on a private event loop in a daemon thread."""

    def __init__(self, settings: ServerSettings) -> None:
        registry = build_registry(entry_points=[], extra_plugins=[("echo", Plugin(Echo))])
        self.app = create_app(settings, registry=registry)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server")
        self._serving = serving(self.app)

    def __enter__(self) -> Server:
        self.thread.start()
        return self._run(self._serving.__aenter__())

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._serving.__aexit__(None, None, None))
            self._run(llmrelay.aclose())
            self._run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)


@pytest.fixture(scope="module")
def open_server() -> Iterator[tuple[str, int]]:
    """A server without a key (loopback), shared by the module's examples."""
    with ThreadServer(ServerSettings(max_body_bytes=64 * 1024, shutdown_grace=1.0)) as server:
        yield "127.0.0.1", server.port
        assert _get_health("127.0.0.1", server.port) == 200


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[str, int]]:
    with ThreadServer(ServerSettings(api_key=KEY, shutdown_grace=1.0)) as server:
        yield "127.0.0.1", server.port
        assert _get_health("127.0.0.1", server.port) == 200


def _get_health(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def _post(
    address: tuple[str, int], body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers or {})
        response = conn.getresponse()
        return (
            response.status,
            response.getheader("Content-Type") or "",
            response.read().decode("utf-8", "replace"),
        )
    finally:
        conn.close()


def _check(status: int, content_type: str, text: str) -> None:
    """What every answer must be: no 5xx, no traceback, errors in OpenAI's shape."""
    assert status < 500, text
    assert "Traceback" not in text
    assert 'File "' not in text
    if status == 200:
        if content_type.startswith("text/event-stream"):
            assert text.endswith("data: [DONE]\n\n")
        else:
            assert json.loads(text)["object"] == "chat.completion"
        return
    if not content_type.startswith("application/json"):
        # Only aiohttp's HTTP parser answers before the app can (malformed headers): a 400.
        assert status == 400, (status, text)
        return
    error = json.loads(text)["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert "param" in error
    assert "code" in error


# -- strategies ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", ""]) | st.text()})
    | st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}),
    max_size=3,
)

messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])
            | st.text(max_size=10)
        },
        optional={
            "content": st.text(max_size=40) | parts | json_values,
            "name": st.text(max_size=10),
            "tool_calls": json_values,
        },
    ),
    max_size=4,
)

FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "n",
    "stop",
    "seed",
    "user",
    "logit_bias",
    "tools",
    "base_url",
    "proxy",
)

valid_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
            "content": st.text(max_size=40)
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
                max_size=3,
            ),
        }
    ),
    min_size=1,
    max_size=4,
)

valid_requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["echo-1", "echo/echo-1", "echo/"]), "messages": valid_messages},
    optional={
        "stream": st.booleans(),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 10**6),
        "seed": st.integers(-(2**63), 2**63),
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=4),
        "user": st.text(max_size=10),
        "n": st.just(1),
    },
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid requests with a few fields replaced by anything, or removed: the edges
    between valid and invalid are where handlers break."""
    body: dict[str, Any] = draw(valid_requests)
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    replaced = draw(
        st.dictionaries(
            st.sampled_from(FIELDS) | st.text(max_size=12),
            json_values | messages | st.floats() | st.integers(),
            max_size=2,
        )
    )
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        body.pop(name, None)
    return {**body, **replaced}


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


# -- tests ---------------------------------------------------------------------------------


@FUZZ
@given(body=requests())
def test_fuzzed_request_objects(open_server: tuple[str, int], body: dict[str, Any]) -> None:
    status, kind, text = _post(open_server, _dumps(body))
    event(f"status {status}")  # --hypothesis-show-statistics shows what the fuzzing reached
    _check(status, kind, text)


@FUZZ
@given(body=json_values.map(_dumps) | st.binary(max_size=300))
def test_fuzzed_json_and_bytes(open_server: tuple[str, int], body: bytes) -> None:
    status, kind, text = _post(open_server, body)
    event(f"status {status}")
    _check(status, kind, text)


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,19}", fullmatch=True).filter(
    lambda name: (
        name.lower()
        not in {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}
    )
)
header_values = st.text(
    alphabet=st.characters(
        codec="latin-1", exclude_characters="\r\n\x00", exclude_categories=["Cc"]
    ),
    max_size=60,
)
authorizations = (
    st.just(f"Bearer {KEY}")
    | st.builds(lambda s: f"Bearer {s}", header_values)
    | st.sampled_from(["", "Bearer", "Bearer ", f"bearer {KEY}", f"Basic {KEY}", KEY])
    | header_values
)


@FUZZ
@given(
    headers=st.dictionaries(header_names, header_values, max_size=6),
    authorization=st.none() | authorizations,
    content_type=st.none()
    | st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1"]),
    encoding=st.none() | st.sampled_from(["gzip", "deflate", "br", "identity", "x-unknown"]),
)
def test_fuzzed_headers(
    keyed_server: tuple[str, int],
    headers: dict[str, str],
    authorization: str | None,
    content_type: str | None,
    encoding: str | None,
) -> None:
    sent = dict(headers)
    for name, value in (
        ("Authorization", authorization),
        ("Content-Type", content_type),
        ("Content-Encoding", encoding),
    ):
        if value is not None:
            sent[name] = value
    body = _dumps({"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]})
    status, kind, text = _post(keyed_server, body, sent)
    event(f"status {status}")
    _check(status, kind, text)
    authorized = {k.lower(): v for k, v in sent.items()}.get("authorization")
    if authorized is None or authorized.strip().split(" ", 1)[-1].strip() != KEY:
        assert status in (400, 401)
    assert KEY not in text


def test_oversized_bodies_get_413(open_server: tuple[str, int]) -> None:
    body = _dumps({"model": "echo-1", "messages": [{"role": "user", "content": "x" * 70_000}]})
    status, kind, text = _post(open_server, body)
    assert status == 413
    _check(status, kind, text)
    assert json.loads(text)["error"]["code"] == "request_too_large"
