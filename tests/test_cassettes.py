"""llmrelay's cassette rules: strict replay, explicit recording, secrets scrubbed."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

import llmrelay
from llmrelay import Call, Chunk, FinishReason, Message, Provider, RetryPolicy
from llmrelay._cassettes import cassette
from llmrelay.errors import CassetteMismatch, InvalidRequest
from tests.support import Serve

SECRET = "sk-live-0123456789abcdef"
GOOGLE_KEY = "AIzaSyA1234567890abcdefghijklmnop"


class Echo(Provider):
    """A provider that sends a key three ways (header, query, body) to a loopback echo server."""

    name = "echo"
    url = "http://127.0.0.1:9"
    default_model = "echo-1"
    models = ("echo-1",)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        data = await call.post_json(
            call.url(f"/v1/echo?api_key={SECRET}&lang=en"),
            {"model": model, "prompt": messages[-1].text, "api_key": SECRET},
            headers={
                "Authorization": f"Bearer {SECRET}",
                "X-Api-Key": SECRET,
                "X-Goog-Api-Key": GOOGLE_KEY,  # a name not in SECRET_HEADERS
                "X-Client": f"echo/1.0 ({GOOGLE_KEY})",  # an innocent name, a key's shape
            },
        )
        yield str(data["text"])
        yield FinishReason("stop")


async def _echo(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {"text": f"echo: {body['prompt']}", "debug": f"you sent {body['api_key']}"},
        headers={"Set-Cookie": f"session={SECRET}; HttpOnly"},
    )


def _echo_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/echo", _echo)
    return app


async def _record(path: Path, base: str, prompt: str = "hi") -> str:
    with cassette(path, mode="record"):
        return await Echo.create_async_generator(
            "echo-1", [{"role": "user", "content": prompt}], base_url=base
        ).text()


async def test_recording_scrubs_secrets_everywhere(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "echo.yaml"
    assert await _record(path, await serve(_echo_app())) == "echo: hi"
    text = path.read_text()
    assert SECRET not in text
    (interaction,) = yaml.safe_load(text)["interactions"]
    request, response = interaction["request"], interaction["response"]
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["authorization"] == ["***"]
    assert headers["x-api-key"] == ["***"]
    assert headers["x-goog-api-key"] == ["***"]
    assert headers["x-client"] == ["echo/1.0 (***)"]  # the value masked, as it is known
    assert GOOGLE_KEY not in text
    assert "api_key=%2A%2A%2A" in request["uri"] or "api_key=***" in request["uri"]
    assert "lang=en" in request["uri"]
    assert '"api_key": "***"' in request["body"]
    assert not any(name.lower() == "set-cookie" for name in response["headers"])
    assert "you sent ***" in response["body"]["string"]


async def test_replay_needs_no_network_and_ignores_key_order(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "echo.yaml"
    app = _echo_app()
    base = await serve(app)
    await _record(path, base)
    # Same request again, with the server gone: the answer comes from the cassette.
    with cassette(path) as recorded:
        text = await Echo.create_async_generator(
            "echo-1", [{"role": "user", "content": "hi"}], base_url=base
        ).text()
        assert recorded.play_count == 1
    assert text == "echo: hi"


async def test_a_recording_answers_each_repeat_of_its_request(serve: Serve, tmp_path: Path) -> None:
    """As docs/cassettes.md says: a second call (or a retry) meets the same recording."""
    path = tmp_path / "echo.yaml"
    base = await serve(_echo_app())
    await _record(path, base)
    messages = [{"role": "user", "content": "hi"}]
    with llmrelay.cassette(path) as recorded:
        for _ in range(3):
            text = await Echo.create_async_generator("echo-1", messages, base_url=base).text()
            assert text == "echo: hi"
        assert recorded.play_count == 3


async def test_replayed_failures_are_retried_like_a_server_that_keeps_failing() -> None:
    """The shipped 500 cassette holds one failure; every attempt of a retried call meets it."""
    from llmrelay.errors import ServerError
    from llmrelay_pizzagpt import Pizzagpt

    cassettes = Path(__file__).parent.parent / "cassettes" / "pizzagpt"
    fast = RetryPolicy(max_retries=2, backoff=0.01, max_backoff=0.02, jitter=0.0)
    call = Call(provider="pizzagpt", base_url=Pizzagpt.url, retry=fast)
    messages = llmrelay.validate_messages([{"role": "user", "content": "Are you up?"}])
    with llmrelay.cassette(cassettes / "http_500.yaml") as recorded:
        stream = llmrelay.ChunkStream(
            "pizzagpt", Pizzagpt.generate("gpt-4o-mini", messages, call), call
        )
        with pytest.raises(ServerError):
            await stream.text()
        assert recorded.play_count == 3
    assert call.attempts == 3


async def test_unmatched_request_names_the_cassette_and_shows_the_request(
    serve: Serve, tmp_path: Path
) -> None:
    path = tmp_path / "echo.yaml"
    base = await serve(_echo_app())
    await _record(path, base)
    with cassette(path), pytest.raises(CassetteMismatch) as info:
        await Echo.create_async_generator(
            "echo-1", [{"role": "user", "content": "something else"}], base_url=base
        ).text()
    message = str(info.value)
    assert str(path) in message
    assert f"POST {base}/v1/echo" in message
    assert '"prompt": "something else"' in message
    assert "differs in json_body" in message
    assert SECRET not in message
    assert isinstance(info.value, LookupError)


async def test_another_host_does_not_match(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "echo.yaml"
    await _record(path, await serve(_echo_app()))
    with cassette(path), pytest.raises(CassetteMismatch, match="differs in"):
        await Echo.create_async_generator(
            "echo-1", [{"role": "user", "content": "hi"}], base_url="http://127.0.0.1:9"
        ).text()


def test_missing_cassette_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CassetteMismatch, match="does not exist"), cassette(tmp_path / "no.yaml"):
        pass


async def test_recording_refuses_to_overwrite_unless_told(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "echo.yaml"
    base = await serve(_echo_app())
    await _record(path, base)
    with pytest.raises(FileExistsError, match="already exists"):
        await _record(path, base, "again")
    with cassette(path, mode="overwrite"):
        await Echo.create_async_generator(
            "echo-1", [{"role": "user", "content": "again"}], base_url=base
        ).text()
    assert '"prompt": "again"' in path.read_text()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("foo: 1\n", "KeyError"),
        ("- 1\n", "TypeError"),
        ("interactions:\n- request: 1\n", "TypeError"),
        ("a: [\n", "ParserError"),
        ("", "ValueError: the file is empty"),
        ("\n  \n", "ValueError: the file is empty"),
    ],
)
def test_a_file_that_is_not_a_cassette_is_one_clear_error(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with (
        pytest.raises(CassetteMismatch, match="is not a valid cassette") as info,
        cassette(path),
    ):
        pass
    assert why in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["Replay", "bogus", "", "all", None])
def test_an_unknown_mode_is_refused_before_any_traffic(mode: object, tmp_path: Path) -> None:
    """A typo must not fall through to recording: that would reach the network and
    rewrite the cassette."""
    path = tmp_path / "echo.yaml"
    path.write_text("interactions: []\nversion: 1\n")
    refused = pytest.raises(InvalidRequest, match="cassette mode must be one of 'replay', 'record'")
    with refused, llmrelay.cassette(path, mode=mode):  # type: ignore[arg-type]
        pytest.fail("the block must not run")
    assert path.read_text() == "interactions: []\nversion: 1\n"


@pytest.mark.parametrize("mode", ["replay", "record", "overwrite"])
def test_a_path_that_is_no_file_is_refused(mode: str, tmp_path: Path) -> None:
    directory = pytest.raises(InvalidRequest, match="is a directory, not a file")
    with directory, llmrelay.cassette(tmp_path, mode=mode):  # type: ignore[arg-type]
        pytest.fail("the block must not run")
    nothing = pytest.raises(InvalidRequest, match="cassette path must be a str or a path, got None")
    with nothing, llmrelay.cassette(None, mode=mode):  # type: ignore[arg-type]
        pytest.fail("the block must not run")
    assert tmp_path.is_dir()
