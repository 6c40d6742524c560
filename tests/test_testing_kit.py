"""The plugin author's kit: ``llmrelay.testing``, ``llmrelay record`` and the example plugin.

- the conformance suite runs on Pizzagpt (its shipped cassettes) and on the OpenAI-compatible
  provider (a cassette recorded from the replica in tests/replicas/openai.py);
- broken providers show that each conformance check catches what it is about;
- the pytest plugin runs in pytest subprocesses over throwaway test folders;
- ``llmrelay record`` records from the Pizzagpt replica, as a user runs it;
- examples/llmrelay-echo is installed into a fresh virtual environment and the tutorial's
  commands run there, in order, exactly as docs/tutorial-plugin.md prints them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner

import llmrelay
import llmrelay.testing
from llmrelay import Call, Chunk, Completion, FinishReason, Message, Usage, format_prompt
from llmrelay._cassettes import cassette
from llmrelay._config import EndpointConfig
from llmrelay.errors import (
    AuthenticationFailed,
    CassetteMismatch,
    CloudflareChallenge,
    InvalidResponse,
    MisuseDetected,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from llmrelay.testing import ErrorCase, ProviderConformance, free_port
from llmrelay_openai_compat import provider_for
from llmrelay_pizzagpt import Pizzagpt
from tests import openai_cases
from tests.pizzagpt_cases import BY_NAME
from tests.replicas import openai as openai_replica
from tests.replicas import pizzagpt as pizzagpt_replica
from tests.support import Serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "llmrelay-echo"
TUTORIAL = ROOT / "docs" / "tutorial-plugin.md"
LLMRELAY = str(Path(sys.executable).with_name("llmrelay"))


def _case(name: str, raises: type[llmrelay.errors.ProviderError]) -> ErrorCase:
    return ErrorCase(BY_NAME[name].path, BY_NAME[name].messages, raises)


def _openai_case(name: str, raises: type[llmrelay.errors.ProviderError]) -> ErrorCase:
    case = openai_cases.BY_NAME[name]
    return ErrorCase(case.path, case.messages, raises)


# -- the conformance suite on first-party providers --------------------------------------------


class TestPizzagptConformance(ProviderConformance):
    provider = Pizzagpt
    cassette = BY_NAME["system_user"].path
    messages = BY_NAME["system_user"].messages
    expected_text = "Blue."
    error_cases = (
        _case("http_500", ServerError),
        _case("misuse_detected", MisuseDetected),
        _case("cloudflare_403", CloudflareChallenge),
        _case("malformed_json", InvalidResponse),
        _case("empty_answer", InvalidResponse),
    )


OPENAI_KEY_ENV = "CONFORMANCE_OPENAI_KEY"
OPENAI_KEY = "sk-conformance-0123456789abcdef"
OpenAIReplica = provider_for(
    EndpointConfig(
        name="replica",
        base_url="http://127.0.0.1:8000/v1",
        models=openai_replica.MODELS,
        api_key_env=OPENAI_KEY_ENV,
    )
)


class TestOpenAICompatConformance(ProviderConformance):
    """Streamed (SSE) answers; the cassette is recorded from the replica for each test."""

    provider = OpenAIReplica
    model = "llama3"
    messages = ({"role": "user", "content": "Hi there"},)
    expected_text = "Echo: Hi there"
    env: ClassVar[dict[str, str]] = {OPENAI_KEY_ENV: OPENAI_KEY}
    secrets = (OPENAI_KEY,)
    # The shipped cassettes/openai_compat/ failures (recorded at the same URL as ``provider``).
    error_cases = (
        _openai_case("rate_limited_429", RateLimited),
        _openai_case("error_event", StreamInterrupted),
    )

    @pytest.fixture
    def conformance_cassette(self, tmp_path: Path) -> Path:
        path = tmp_path / "replica.yaml"

        async def record() -> None:
            async with llmrelay.testing.serve(openai_replica.make_app(key=OPENAI_KEY)) as origin:
                base_url = f"{origin}/v1"
                with cassette(path, mode="record", rewrite=(base_url, OpenAIReplica.url)):
                    stream = OpenAIReplica.create_async_generator(
                        self.model, self.messages, base_url=base_url, **self.options
                    )
                    await stream.text()
            await llmrelay.aclose()

        asyncio.run(record())
        assert OPENAI_KEY not in path.read_text(encoding="utf-8")
        return path


class TestOpenAICompatNonStreamedConformance(TestOpenAICompatConformance):
    """The same provider asked for one whole answer (``stream=False``)."""

    options: ClassVar[dict[str, Any]] = {"stream": False}
    error_cases = (_openai_case("unauthorized_401", AuthenticationFailed),)


# -- each check catches what it is about ---------------------------------------------------------

SYSTEM_USER = BY_NAME["system_user"]


class _OwnSession(Pizzagpt):
    """Opens an aiohttp session of its own instead of using ``call``."""

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        import aiohttp

        body = json.dumps({"question": format_prompt(messages)}, ensure_ascii=False)
        async with (
            aiohttp.ClientSession() as session,
            session.post(call.url(cls.api_endpoint or ""), data=body, headers=cls.headers) as r,
        ):
            data = await r.json()
        yield data["answer"]["content"]
        yield FinishReason("stop")


class _TextAfterFinish(Pizzagpt):
    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        async for chunk in super().generate(model, messages, call):
            yield chunk
        yield "and one more thing"


class _UsageFirst(Pizzagpt):
    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        yield Usage(1, 1)
        async for chunk in super().generate(model, messages, call):
            yield chunk


class _Untyped(Pizzagpt):
    """Lets a KeyError out on an answer of the wrong shape."""

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        url = call.url(cls.api_endpoint or "")
        response = await call.request("POST", url, headers=cls.headers, json_body={"q": "x"})
        yield json.loads(response.body)["answer"]["content"]
        yield FinishReason("stop")


class _IgnoresProxy(Pizzagpt):
    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        call.proxy = ""
        async for chunk in super().generate(model, messages, call):
            yield chunk


class _IgnoresBaseURL(Pizzagpt):
    """Builds its URL from ``url`` instead of ``call.url()``: ``base_url=`` is ignored."""

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        url = f"{cls.url}{cls.api_endpoint}"
        await call.request("POST", url, headers=cls.headers, json_body={"question": "x"})
        yield "never"
        yield FinishReason("stop")


class _LeakyHeader(Pizzagpt):
    """Sends a credential in a header (masked in the cassette: its name says token) and again
    in a query parameter whose name does not say so (kept)."""

    headers: ClassVar[dict[str, str]] = {**Pizzagpt.headers, "X-Session-Token": "tok-42-secret"}
    api_endpoint = f"{Pizzagpt.api_endpoint}?tag=tok-42-secret"


class _WholeDiffers(Pizzagpt):
    """Its whole answer (``complete``) is not what its stream (``generate``) says."""

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        answer = await super().complete(model, messages, call)
        return Completion(answer.text.upper(), answer.finish_reason)

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        for chunk in (await super().complete(model, messages, call)).chunks():
            yield chunk


def _suite(provider: type[Pizzagpt], **attrs: Any) -> ProviderConformance:
    namespace = {
        "provider": provider,
        "cassette": SYSTEM_USER.path,
        "messages": SYSTEM_USER.messages,
        **attrs,
    }
    suite: ProviderConformance = type("Suite", (ProviderConformance,), namespace)()
    return suite


def test_the_suite_catches_a_session_of_its_own() -> None:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        pytest.raises(AssertionError, match=r"opened 2 aiohttp.ClientSession\(s\) of its own"),
    ):
        _suite(_OwnSession).test_http_goes_through_the_core_transport(SYSTEM_USER.path, monkeypatch)


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (_TextAfterFinish, "must end with a FinishReason: str FinishReason str"),
        (_UsageFirst, "Usage comes after the text: Usage str FinishReason"),
    ],
)
def test_the_suite_catches_a_broken_chunk_order(provider: type[Pizzagpt], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        _suite(provider).test_chunks_are_text_then_usage_then_one_finish_reason(SYSTEM_USER.path)


def test_the_suite_catches_a_whole_answer_unlike_the_stream() -> None:
    with pytest.raises(AssertionError, match=r"the whole answer .* differs from the stream's"):
        _suite(_WholeDiffers).test_a_whole_answer_is_the_stream_joined(SYSTEM_USER.path)
    _suite(Pizzagpt).test_a_whole_answer_is_the_stream_joined(SYSTEM_USER.path)


def test_the_suite_catches_an_untyped_error() -> None:
    suite = _suite(_Untyped)
    with pytest.raises(
        AssertionError, match=r"expected llmrelay\.errors\.ProviderError, got .*KeyError"
    ):
        suite.test_failures_are_typed_errors_naming_the_provider("empty_object")


def test_the_suite_catches_an_ignored_proxy() -> None:
    suite = _suite(_IgnoresProxy)
    with pytest.raises(AssertionError, match="proxy= was not used"):
        suite.test_the_proxy_carries_the_request()
    with pytest.raises(
        AssertionError, match=r"expected llmrelay\.errors\.ProxyError, got .*Connect"
    ):
        suite.test_an_unreachable_proxy_is_a_proxy_error("socks5")


def test_the_suite_stops_a_provider_that_ignores_base_url_before_it_sends() -> None:
    message = "sent POST https://www.pizzagpt.it/api/chatx-completion although base_url="
    with pytest.raises(pytest.fail.Exception, match=re.escape(message)):
        _suite(_IgnoresBaseURL).test_failures_are_typed_errors_naming_the_provider("http_500")


def test_the_suite_catches_secrets_in_a_cassette(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="value of the X-Session-Token header") as info:
        _suite(_LeakyHeader).test_secrets_never_reach_a_cassette(tmp_path / "a")
    assert "tok-42-secret" not in str(info.value)  # the report names it, never shows it
    # A declared secret (the question, here) is looked for too.
    secret = format_prompt(llmrelay.validate_messages(SYSTEM_USER.messages))
    with pytest.raises(AssertionError, match=r"value of secrets\[0\]"):
        _suite(Pizzagpt, secrets=(secret,)).test_secrets_never_reach_a_cassette(tmp_path / "b")


def test_a_missing_cassette_says_how_to_record_it(tmp_path: Path) -> None:
    """It said only "does not exist"; the kit replays it and never records it itself."""
    missing = tmp_path / "hello.yaml"
    plain = _suite(Pizzagpt, messages=({"role": "user", "content": "Ciao, come va?"},))
    with pytest.raises(CassetteMismatch) as info:
        plain.test_stream_is_awaitable_and_async_iterable(missing)
    assert str(info.value) == (
        f"cassette '{missing}' (the class's `cassette`) does not exist; record one normal "
        "answer to the class's `messages`: llmrelay record --provider pizzagpt --cassette "
        f"{missing} 'Ciao, come va?' (against the real service, or --base-url)"
    )
    with pytest.raises(CassetteMismatch, match="run once with `pytest --llmrelay-record="):
        _suite(Pizzagpt).test_stream_is_awaitable_and_async_iterable(missing)  # two messages
    with_options = _suite(
        Pizzagpt, messages=({"role": "user", "content": "Ciao"},), options={"stream": False}
    )
    with pytest.raises(CassetteMismatch) as info:
        with_options.test_stream_is_awaitable_and_async_iterable(missing)
    assert f"--cassette {missing} --option stream=false Ciao (against" in str(info.value)
    assert "generate() streams even with stream=False" not in str(info.value)  # no stream
    # A provider that streams and has complete(): the checks may send two requests.
    both = _suite(
        OpenAIReplica, messages=({"role": "user", "content": "Ciao"},), options={"stream": False}
    )
    with pytest.raises(CassetteMismatch) as info:
        both.test_stream_is_awaitable_and_async_iterable(missing)
    assert "if generate() streams even with stream=False, record from a test marked" in str(
        info.value
    )


def test_the_suite_skips_http_checks_for_an_offline_provider() -> None:
    suite = _suite(Pizzagpt, uses_http=False, cassette=None)
    with pytest.raises(pytest.skip.Exception, match="makes no HTTP requests"):
        suite.test_the_proxy_carries_the_request()
    suite = _suite(Pizzagpt, cassette=None)
    with pytest.raises(pytest.skip.Exception, match="set `cassette`"):
        suite.test_stream_is_awaitable_and_async_iterable(None)


def test_the_kit_api() -> None:
    assert set(llmrelay.testing.__all__) == {
        "RECORD_ENV",
        "ErrorCase",
        "ProviderConformance",
        "RecordMode",
        "free_port",
        "record_mode",
        "serve",
        "use_cassette",
    }
    assert llmrelay.testing.record_mode("ALL") == "all"
    with pytest.raises(ValueError, match="expected one of none, missing, all"):
        llmrelay.testing.record_mode("yes")


def test_the_reference_lists_every_check() -> None:
    # docs/testing.md is where a failing check is looked up; it lacked one of them.
    reference = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    checks = [name for name in dir(ProviderConformance) if name.startswith("test_")]
    assert checks
    assert [name for name in checks if f"| `{name}` |" not in reference] == []


# -- the pytest plugin, in pytest subprocesses ---------------------------------------------------

PROJECT_CONFIG = """\
[tool.pytest.ini_options]
addopts = ["--strict-markers", "-p", "no:cacheprovider"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
filterwarnings = ["error"]
"""


def _pytest(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pytest in ``project`` with only pytest-asyncio and llmrelay's plugin loaded."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLMRELAY_", "PYTEST_"))
    }
    environment.update(
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1", COLUMNS="1000"
    )
    environment.update(env or {})
    command = [sys.executable, "-m", "pytest", "-p", "asyncio", "-p", "llmrelay.testing.plugin"]
    return subprocess.run(
        [*command, "-q", "-rA", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def _project(tmp_path: Path, tests: str) -> Path:
    project = tmp_path / "project"
    (project / "cassettes").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PROJECT_CONFIG, encoding="utf-8")
    (project / "test_it.py").write_text(textwrap.dedent(tests), encoding="utf-8")
    return project


@pytest.mark.slow
def test_marked_tests_replay_and_an_unmatched_request_shows_itself(tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        """
        import pytest
        from llmrelay_pizzagpt import Pizzagpt

        HELLO = [{"role": "user", "content": "Привет, как дела?"}]

        @pytest.mark.llmrelay_cassette("cassettes/hello.yaml")
        async def test_replays(llmrelay_cassette, llmrelay_record_mode):
            text = await Pizzagpt.create_async_generator("", HELLO).text()
            assert text.startswith("Привет!")
            assert llmrelay_cassette.play_count == 1
            assert llmrelay_record_mode == "none"

        @pytest.mark.llmrelay_cassette("cassettes/hello.yaml")
        async def test_unmatched():
            other = [{"role": "user", "content": "Something else"}]
            await Pizzagpt.create_async_generator("", other).text()

        @pytest.mark.llmrelay_cassette("cassettes/missing.yaml")
        def test_missing():
            pass

        def test_unmarked(llmrelay_cassette):
            pass
        """,
    )
    shutil.copy(BY_NAME["seed_hello"].path, project / "cassettes" / "hello.yaml")
    result = _pytest(project)
    out = result.stdout
    assert "PASSED test_it.py::test_replays" in out, out
    assert "FAILED test_it.py::test_unmatched - llmrelay.errors.CassetteMismatch" in out, out
    hello = project / "cassettes" / "hello.yaml"
    assert f"cassette '{hello}' has no recorded answer for this request" in out
    assert "POST https://www.pizzagpt.it/api/chatx-completion" in out
    assert '"question": "Something else"' in out
    missing = project / "cassettes" / "missing.yaml"
    assert f"ERROR test_it.py::test_missing - Failed: cassette '{missing}' does not exist" in out
    assert "pytest --llmrelay-record=missing" in out
    assert "ERROR test_it.py::test_unmarked - Failed: mark the test @pytest.mark.llmrelay_c" in out
    assert not missing.exists()


RECORDING_TESTS = """
import pytest
from aiohttp import web

from llmrelay import Call, FinishReason, Provider

PORT = {port}


class Local(Provider):
    name = "local"
    url = f"http://127.0.0.1:{{PORT}}"
    default_model = "m"
    models = ("m",)

    @classmethod
    async def generate(cls, model, messages, call):
        headers = {{"Authorization": "Bearer sk-recording-0123456789"}}
        payload = {{"prompt": messages[-1].text}}
        data = await call.post_json(call.url("/reply"), payload, headers=headers)
        yield data["reply"]
        yield FinishReason("stop")


@pytest.fixture
async def hits():
    seen = []

    async def reply(request):
        seen.append((await request.json())["prompt"])
        return web.json_response({{"reply": "re: " + seen[-1]}})

    app = web.Application()
    app.router.add_post("/reply", reply)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    yield seen
    await runner.cleanup()


@pytest.mark.llmrelay_cassette("cassettes/new.yaml")
async def test_new(hits, llmrelay_record_mode):
    text = await Local.create_async_generator("m", [{{"role": "user", "content": "hi"}}]).text()
    assert text == "re: hi"
    print(f"MODE={{llmrelay_record_mode}} HITS={{len(hits)}}")
"""


def _modes_and_hits(result: subprocess.CompletedProcess[str]) -> list[str]:
    return re.findall(r"MODE=\w+ HITS=\d", result.stdout)


@pytest.mark.slow
def test_the_record_mode_comes_from_the_option_or_the_environment(tmp_path: Path) -> None:
    project = _project(tmp_path, RECORDING_TESTS.format(port=free_port()))
    path = project / "cassettes" / "new.yaml"

    recorded = _pytest(project, "--llmrelay-record=missing")
    assert _modes_and_hits(recorded) == ["MODE=missing HITS=1"], recorded.stdout
    text = path.read_text(encoding="utf-8")
    assert "sk-recording-0123456789" not in text
    assert "re: hi" in text

    replayed = _pytest(project)
    assert _modes_and_hits(replayed) == ["MODE=none HITS=0"], replayed.stdout

    path.write_text(text.replace("re: hi", "re: stale"), encoding="utf-8")
    rerecorded = _pytest(project, env={"LLMRELAY_RECORD": "all"})
    assert _modes_and_hits(rerecorded) == ["MODE=all HITS=1"], rerecorded.stdout
    assert "re: stale" not in path.read_text(encoding="utf-8")


def test_a_bad_record_mode_stops_pytest(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmrelay.testing import plugin

    monkeypatch.setattr(pytestconfig.option, "llmrelay_record", None, raising=False)
    monkeypatch.setenv("LLMRELAY_RECORD", "yes")
    message = "LLMRELAY_RECORD: expected one of none, missing, all, got 'yes'"
    with pytest.raises(pytest.UsageError, match=message):
        plugin.pytest_configure(pytestconfig)


async def test_use_cassette_records_only_in_a_record_mode(serve: Serve, tmp_path: Path) -> None:
    from llmrelay.errors import CassetteMismatch
    from llmrelay.testing import use_cassette

    replica = pizzagpt_replica.make_app()
    base = await serve(replica)
    path = tmp_path / "deep" / "ciao.yaml"
    ciao = [{"role": "user", "content": "Ciao!"}]

    async def ask() -> str:
        return await Pizzagpt.create_async_generator("", ciao, base_url=base).text()

    missing = pytest.raises(CassetteMismatch, match="does not exist; record it with `pytest")
    with missing, use_cassette(path):
        pass
    for mode, hits in (("missing", 1), ("missing", 1), ("none", 1), ("all", 2)):
        with use_cassette(path, mode):  # type: ignore[arg-type]
            assert await ask() == "You asked: Ciao!"
        assert replica[pizzagpt_replica.STATE].hits == hits, mode


# -- llmrelay record ---------------------------------------------------------------------------


async def _llmrelay(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the installed ``llmrelay`` command without blocking the loop (servers run on it)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        LLMRELAY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_record_writes_a_scrubbed_cassette_that_chat_replays(
    serve: Serve, tmp_path: Path
) -> None:
    replica = pizzagpt_replica.make_app()
    base = await serve(replica)
    path = tmp_path / "cassettes" / "ciao.yaml"
    code, out, err = await _llmrelay(
        "record", "--provider", "pizzagpt", "--base-url", base, "--cassette", str(path), "Ciao!"
    )
    assert (code, out) == (0, "You asked: Ciao!\n"), err
    assert err.splitlines() == [
        f"recorded 1 interaction(s) into {path}",
        f"replay it with: llmrelay chat -m pizzagpt/ --replay {path} 'Ciao!'",
    ]
    text = path.read_text(encoding="utf-8")
    assert pizzagpt_replica.SECRET not in text  # Pizzagpt's x-secret header
    (interaction,) = yaml.safe_load(text)["interactions"]
    assert interaction["request"]["uri"] == "https://www.pizzagpt.it/api/chatx-completion"
    assert interaction["request"]["headers"]["x-secret"] == ["***"]
    assert not list(path.parent.glob(".*"))  # no scratch file left behind
    code, out, err = await _llmrelay("chat", "-m", "pizzagpt/", "--replay", str(path), "Ciao!")
    assert (code, out, err) == (0, "You asked: Ciao!\n", "")
    assert replica[pizzagpt_replica.STATE].hits == 1


async def test_record_refuses_a_cassette_path_it_cannot_write_before_calling(
    serve: Serve, tmp_path: Path
) -> None:
    """The answer was printed (the call made, maybe paid for), then lost to a traceback from
    the recorder: the path is now checked first."""
    from llmrelay.cli import cli

    replica = pizzagpt_replica.make_app()
    base = await serve(replica)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "ciao.yaml"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["record", "--provider", "pizzagpt", "--base-url", base, "--cassette", str(path), "Ciao"],
    )
    assert result.exit_code == 2
    assert f"Invalid value for '--cassette': cannot write {str(path)!r}" in result.stderr
    assert "a file stands where a directory is needed" in result.stderr
    assert replica[pizzagpt_replica.STATE].hits == 0


@pytest.mark.slow
async def test_record_says_how_to_replay_an_endpoint_that_wants_a_key(
    serve: Serve, tmp_path: Path
) -> None:
    """The provider asks for its key before a cassette can answer, so the printed command sets
    the variable (to anything: the cassette holds no key); it used to fail as printed."""
    key = "sk-test-0123456789"
    replica = openai_replica.make_app(key=key)
    base = await serve(replica)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[endpoints]]\nname = "local"\nbase_url = "{base}/v1"\nmodels = ["llama3"]\n'
        'api_key_env = "LOCAL_KEY"\n'
    )
    path = tmp_path / "hi.yaml"
    code, answer, err = await _llmrelay(
        "record", "--provider", "local", "--cassette", str(path), "Hi there",
        env={"LLMRELAY_CONFIG": str(config), "LOCAL_KEY": key},
    )  # fmt: skip
    assert code == 0, err
    assert err.splitlines()[-1] == (
        f"replay it with: LOCAL_KEY=replay llmrelay chat -m local/ --replay {path} 'Hi there'"
        "  (the cassette holds no key: any value of LOCAL_KEY does)"
    )
    assert key not in path.read_text(encoding="utf-8")
    replay = ("chat", "-m", "local/", "--replay", str(path), "Hi there")
    as_printed = {"LLMRELAY_CONFIG": str(config), "LOCAL_KEY": "replay"}
    assert await _llmrelay(*replay, env=as_printed) == (0, answer, "")
    code, _, err = await _llmrelay(*replay, env={"LLMRELAY_CONFIG": str(config)})
    assert (code, err) == (1, "error: local: no API key: set the environment variable LOCAL_KEY\n")
    assert replica[openai_replica.STATE].hits == 1


@pytest.mark.slow
async def test_record_and_chat_take_request_options(serve: Serve, tmp_path: Path) -> None:
    """``--option NAME=VALUE`` (VALUE read as JSON when it is): sent, recorded, and given
    again in the replay command, whose body must match the recorded one."""
    replica = openai_replica.make_app()
    base = await serve(replica)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[endpoints]]\nname = "local"\nbase_url = "{base}/v1"\nmodels = ["llama3"]\n'
    )
    env = {"LLMRELAY_CONFIG": str(config)}
    path = tmp_path / "opts.yaml"
    options = ("--option", "temperature=0.2", "--option", 'stop=["END"]', "--option", "user=u 1")
    code, answer, err = await _llmrelay(
        "record", "--provider", "local", "--cassette", str(path), *options, "Hi there", env=env
    )
    assert code == 0, err
    sent = replica[openai_replica.STATE].last_body
    assert (sent["temperature"], sent["stop"], sent["user"]) == (0.2, ["END"], "u 1")
    hint = err.splitlines()[-1]
    assert hint == (
        f"replay it with: llmrelay chat -m local/ --replay {path} --option temperature=0.2 "
        "--option 'stop=[\"END\"]' --option 'user=u 1' 'Hi there'"
    )
    replay = ("chat", "-m", "local/", "--replay", str(path))
    assert await _llmrelay(*replay, *options, "Hi there", env=env) == (0, answer, "")
    code, _, err = await _llmrelay(*replay, "Hi there", env=env)  # without them: another body
    assert code == 1
    assert "has no recorded answer for this request" in err
    assert replica[openai_replica.STATE].hits == 1


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("temperature", "'temperature' is not NAME=VALUE"),
        ("=0.2", "'=0.2' is not NAME=VALUE"),
        ("timeout=3", "'timeout' is not a request option here: use --timeout"),
        (
            "max_retries=1",
            "'max_retries' is not a request option here: set LLMRELAY_MAX_RETRIES, or "
            "max_retries in the configuration file",
        ),
        ("base_url=http://h/v1", "'base_url' is not a request option here: use --base-url"),
    ],
)
def test_a_bad_request_option_is_a_usage_error(flag: str, said: str) -> None:
    from llmrelay.cli import cli

    result = CliRunner().invoke(cli, ["chat", "--option", flag, "hi"])
    assert result.exit_code == 2
    assert said in result.stderr


@contextmanager
def _threaded(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 from a thread of its own, for code that runs its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    runner, url = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.usefixtures("_pizzagpt_only")
def test_record_never_replaces_a_cassette_with_a_failed_call(tmp_path: Path) -> None:
    replica = pizzagpt_replica.make_app("http_500")
    path = tmp_path / "up.yaml"
    with _threaded(replica) as base:
        record = ("--provider", "pizzagpt", "--base-url", base, "--cassette", str(path))
        result = _record(*record, "Are you up?")
        assert result.exit_code == 1
        assert f"recorded the failure into {path}" in result.output  # new: the failure is kept
        assert "error: pizzagpt: HTTP 500" in result.output
        kept = path.read_text(encoding="utf-8")
        result = _record(*record, "--overwrite", "Are you up?")
        assert result.exit_code == 1
        assert f"the call failed; {path} is unchanged" in result.output
        assert path.read_text(encoding="utf-8") == kept
        replica[pizzagpt_replica.STATE].mode = "ok"
        result = _record(*record, "--overwrite", "Are you up?")
        assert result.exit_code == 0, result.output
    assert "You asked: Are you up?" in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["up.yaml"]


def _record(*args: str) -> Any:
    from llmrelay.cli import cli

    return CliRunner().invoke(cli, ["record", *args])


@pytest.mark.usefixtures("_pizzagpt_only")
def test_record_refuses_before_any_io(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    result = _record("--provider", "nope", "--cassette", str(path), "hi")
    assert result.exit_code == 2
    assert "no provider named 'nope' (installed: pizzagpt)" in result.output
    result = _record(
        "--provider", "pizzagpt", "--cassette", str(path), "--proxy", "ftp://h:1", "hi"
    )
    assert result.exit_code == 1
    assert "unsupported proxy scheme" in result.output
    result = _record("--provider", "pizzagpt", "--cassette", str(path), "-m", "gpt-5", "hi")
    assert result.exit_code == 1
    assert "no provider serves model 'pizzagpt/gpt-5'" in result.output
    result = _record("--provider", "pizzagpt", "--cassette", str(path), "--option", "top_p=1", "hi")
    assert result.exit_code == 1
    assert (
        "provider 'pizzagpt' does not support option(s) top_p (it supports: none); "
        "remove the --option\n"
    ) in result.output  # a recording holds what was asked: no dropping offered
    path.write_text("keep me", encoding="utf-8")
    result = _record("--provider", "pizzagpt", "--cassette", str(path), "hi")
    assert result.exit_code == 1
    assert f"cassette '{path}' already exists; pass --overwrite to replace it" in result.output
    assert path.read_text(encoding="utf-8") == "keep me"


@pytest.mark.usefixtures("_pizzagpt_only")
def test_record_with_no_answer_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    closed = f"http://127.0.0.1:{free_port()}"
    record = ("--provider", "pizzagpt", "--base-url", closed, "--cassette", str(path))
    result = _record(*record, "hi")
    assert result.exit_code == 1
    assert "nothing recorded: the request got no answer; no cassette written" in result.output
    assert "error: pizzagpt: cannot connect to 127.0.0.1" in result.output
    assert list(tmp_path.iterdir()) == []
    path.write_text("keep me", encoding="utf-8")
    result = _record(*record, "--overwrite", "hi")
    assert result.exit_code == 1
    assert f"nothing recorded: the request got no answer; {path} is unchanged" in result.output
    assert [p.read_text(encoding="utf-8") for p in tmp_path.iterdir()] == ["keep me"]


@pytest.fixture
def _pizzagpt_only(use_plugins: Any) -> None:
    import llmrelay_pizzagpt._plugin

    use_plugins(("pizzagpt", llmrelay_pizzagpt._plugin))


# -- how the kit is wired into the llmrelay distribution ---------------------------------------


def test_pytest_loads_the_plugin_through_its_entry_point() -> None:
    """The entry point's name is the module's, so ``-p`` and ``pytest_plugins`` spellings of it
    name the plugin pytest already loaded instead of registering it twice (an error)."""
    (entry_point,) = [
        ep for ep in md.entry_points(group="pytest11") if ep.value == "llmrelay.testing.plugin"
    ]
    assert entry_point.name == "llmrelay.testing.plugin"
    assert entry_point.dist is not None
    assert entry_point.dist.name == "llmrelay"


def test_record_is_an_llmrelay_command() -> None:
    from llmrelay._cli_record import record
    from llmrelay.cli import cli

    assert cli.commands["record"] is record


# -- the example plugin, installed as a user installs it, and the tutorial's commands -------------

#: The tutorial's commands, in order, as docs/tutorial-plugin.md prints them ({port}: 8765 there).
TUTORIAL_STEPS = [
    "mkdir llmrelay-echo && cd llmrelay-echo",
    "uv venv",
    "source .venv/bin/activate",
    "uv pip install -e path/to/llmrelay/core",
    "uv pip install -e . --group dev",
    "llmrelay providers",
    "python tests/echo_server.py --port {port} &",
    "llmrelay record --provider echo --base-url http://127.0.0.1:{port} "
    "--cassette tests/cassettes/hi.yaml hi",
    "kill %1",
    "llmrelay chat -m echo/ --replay tests/cassettes/hi.yaml hi",
    "pytest",
    "uv build",
]


def _console(markdown: str) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of the page's console blocks, each with the lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    in_console = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_console = line == "```console"
        elif in_console and line.startswith("$ "):
            steps.append((line.removeprefix("$ "), []))
        elif in_console and steps:
            steps[-1][1].append(line)
    return steps


def _shown(expected: list[str], printed: str) -> bool:
    """Whether ``printed`` is what the tutorial shows: ``...`` stands for any lines, durations
    and pytest's ``=`` padding may differ."""

    def normal(line: str) -> str:
        return re.sub(r"\d+\.\d+s\b", "<t>s", line).strip("= ")

    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == "..." else re.escape(normal(line)) + r"\n" for line in expected
    )
    text = "".join(normal(line) + "\n" for line in printed.splitlines())
    return re.fullmatch(pattern, text) is not None


def test_the_tutorial_prints_the_commands_the_suite_runs() -> None:
    tutorial = TUTORIAL.read_text(encoding="utf-8")
    commands = [command for command, _ in _console(tutorial)]
    assert commands == [step.format(port=8765) for step in TUTORIAL_STEPS]
    snippets = re.findall(r'--8<-- "([^"]+)"', tutorial)
    assert snippets
    for snippet in snippets:
        assert (ROOT / snippet).is_file(), snippet
    shipped = {str(p.relative_to(ROOT)) for p in EXAMPLE.rglob("*") if p.is_file()}
    untold = {p for p in shipped - set(snippets) if "cache" not in p}
    assert untold == {
        "examples/llmrelay-echo/README.md",
        "examples/llmrelay-echo/llmrelay_echo/py.typed",
    }


def test_shown_output_matching() -> None:
    assert _shown(["a", "...", "== 3 passed in 1.25s =="], "a\nb\nc\n=== 3 passed in 10.5s ===\n")
    assert _shown(["a"], "a\n")
    assert not _shown(["a"], "a\nb\n")
    assert not _shown(["a", "...", "3 passed"], "a\n2 passed\n")


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:  # pragma: no cover - CI installs uv before anything else
        pytest.skip("uv is not installed")
    return uv


@contextmanager
def _background(command: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[None]:
    """Run ``command`` (a server) until the block ends, once it listens on ``port``."""
    import socket

    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, f"{command} did not listen on {port}"
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


@pytest.mark.slow
def test_the_example_plugin_installs_and_passes_its_tests_as_the_tutorial_says(
    tmp_path: Path,
) -> None:
    uv = _uv()
    # The exact versions of uv.lock, so nothing new is downloaded when the cache is warm.
    constraints = tmp_path / "constraints.txt"
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-workspace", "--no-header", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    constraints.write_text(exported.stdout, encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMRELAY_", "PYTEST_", "PYTHON"))
        and k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON", "COLUMNS")
    }
    env.update(UV_CONSTRAINT=str(constraints), UV_NO_PROGRESS="1")
    project = tmp_path / "llmrelay-echo"
    venv = project / ".venv"
    port = free_port()
    tutorial = _console(TUTORIAL.read_text(encoding="utf-8"))
    assert [command for command, _ in tutorial] == [s.format(port=8765) for s in TUTORIAL_STEPS]
    steps = iter(
        (step.format(port=port), shown)
        for step, (_, shown) in zip(TUTORIAL_STEPS, tutorial, strict=True)
    )

    def run(step: str, environment: dict[str, str]) -> str:
        """Run the tutorial's next step; what it prints must be what the tutorial shows."""
        expected, shown = next(steps)
        assert step == expected
        argv = step.split()
        if argv[0] == "uv":
            argv[0] = uv
        done = subprocess.run(
            argv,
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        printed = done.stdout + done.stderr
        assert done.returncode == 0, f"{step}\n{printed}"
        if shown:
            assert _shown(shown, printed), f"{step} printed:\n{printed}\nnot:\n" + "\n".join(shown)
        return done.stdout

    def emulated(step: str) -> None:
        """A step a subprocess cannot take as typed (a shell built-in): done by the test."""
        expected, shown = next(steps)
        assert (step, shown) == (expected, [])

    emulated("mkdir llmrelay-echo && cd llmrelay-echo")
    ignore = shutil.ignore_patterns("__pycache__", ".venv", ".*_cache", "dist")
    shutil.copytree(EXAMPLE, project, ignore=ignore)  # the files the tutorial shows
    shipped = project / "tests" / "cassettes" / "hi.yaml"
    shipped_cassette = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    shipped.unlink()  # the tutorial records it
    run("uv venv", {**env, "UV_PYTHON": sys.executable})
    emulated("source .venv/bin/activate")
    active = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    # "path/to/llmrelay" is where the reader cloned llmrelay: this repository. Installed as
    # it is (not editable), so nothing is written beside its sources.
    emulated("uv pip install -e path/to/llmrelay/core")
    subprocess.run(
        [uv, "pip", "install", "-q", str(ROOT / "core")], cwd=project, env=active, check=True
    )
    run("uv pip install -e . --group dev", active)
    assert (venv / "bin" / "llmrelay").is_file()
    run("llmrelay providers", active)

    server = f"python tests/echo_server.py --port {port} &"
    emulated(server)
    with _background(server.removesuffix(" &").split(), project, active, port):
        run(
            f"llmrelay record --provider echo --base-url http://127.0.0.1:{port} "
            "--cassette tests/cassettes/hi.yaml hi",
            active,
        )
        emulated("kill %1")
    recorded = yaml.safe_load(shipped.read_text(encoding="utf-8"))["interactions"][0]
    expected = shipped_cassette["interactions"][0]
    for side, fields in (("request", ("method", "uri", "body")), ("response", ("status", "body"))):
        for name in fields:
            assert recorded[side][name] == expected[side][name], (side, name)
    run("llmrelay chat -m echo/ --replay tests/cassettes/hi.yaml hi", active)

    started = time.monotonic()
    summary = run("pytest", {**active, "COLUMNS": "80"}).strip().splitlines()[-1]
    print(f"the example's tests: {summary.strip('= ')}, {time.monotonic() - started:.1f}s wall")

    run("uv build", active)
    (wheel,) = (project / "dist").glob("llmrelay_echo-0.1.0-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read("llmrelay_echo-0.1.0.dist-info/entry_points.txt").decode()
    assert "[llmrelay]\necho = llmrelay_echo._plugin" in entry_points
    assert {"llmrelay_echo/_echo.py", "llmrelay_echo/_plugin.py", "llmrelay_echo/py.typed"} <= names
    assert not [name for name in names if name.startswith("tests/")]
    (sdist,) = (project / "dist").glob("llmrelay_echo-0.1.0.tar.gz")
    assert sdist.stat().st_size < 50_000, "the sdist holds more than the project (.venv?)"
    assert next(steps, None) is None
