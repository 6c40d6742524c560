"""The provider conformance suite: the contract every llmrelay provider keeps, as tests.

Switch it on for a provider by subclassing :class:`ProviderConformance` in a test module::

    class TestEcho(ProviderConformance):
        provider = Echo
        cassette = "cassettes/hi.yaml"   # one normal answer to `messages`
        messages = [{"role": "user", "content": "hi"}]
        expected_text = "echo: hi"

The tests are synchronous (each runs its own event loop), so they need pytest and nothing
else: no pytest-asyncio, no particular asyncio mode. They never reach the network: answers come
from the cassette, and every live check talks to a server on 127.0.0.1 that the suite starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
from collections.abc import AsyncIterable, Awaitable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import pytest

from .. import errors
from .._cassettes import cassette as _cassette
from .._provider import ChunkStream, Completion, Provider
from .._redact import SECRET_HEADERS, looks_secret
from .._registry import check_provider
from .._types import Chunk, FinishReason, Messages, Reasoning, Usage, validate_messages
from ._servers import free_port, stand_in

__all__ = ["ErrorCase", "ProviderConformance"]

T = TypeVar("T")

#: Shorter values are not looked for in a cassette: they match innocent text.
_MIN_SECRET = 6
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

#: Answers from a broken or hostile server, and what the provider must raise for each: a
#: ``ProviderError`` naming the provider (and, for an error status, carrying it).
_FAULTS: dict[str, tuple[int, str, str]] = {
    "http_500": (500, "text/plain", "internal error"),
    "http_404": (404, "text/plain", "no such endpoint"),
    "http_429": (429, "application/json", '{"error": "slow down"}'),
    "not_json": (200, "text/plain", "this is not JSON"),
    "empty_body": (200, "application/json", ""),
    "empty_object": (200, "application/json", "{}"),
    "bad_event_stream": (200, "text/event-stream", "data: {not json\n\n"),
}


class ErrorCase(NamedTuple):
    """A recorded failure: replaying ``cassette`` with ``messages`` must raise ``raises``."""

    cassette: str | os.PathLike[str]
    messages: Messages
    raises: type[errors.ProviderError]


class ProviderConformance:
    """Base class of a provider's conformance tests; name the subclass ``Test...``.

    Set ``provider`` and, for a provider that makes HTTP requests, ``cassette``: a recording
    of one normal answer to ``messages`` (with ``model`` and ``options``), relative to the test
    file's folder. The rest is optional.
    """

    #: The provider class under test.
    provider: ClassVar[type[Provider]]
    #: A cassette holding one normal answer to ``messages``; relative to the test file.
    cassette: ClassVar[str | os.PathLike[str] | None] = None
    #: The conversation recorded in ``cassette``.
    messages: ClassVar[Messages] = ({"role": "user", "content": "Hello"},)
    #: The model asked for ("" for the provider's default).
    model: ClassVar[str] = ""
    #: Extra keyword arguments of the recorded call (``temperature=...``, ``stream=False``).
    options: ClassVar[Mapping[str, Any]] = {}
    #: The text the recorded answer must read as, when given.
    expected_text: ClassVar[str | None] = None
    #: The reasoning the recorded answer must carry (its ``Reasoning`` chunks joined), when
    #: given: for a reasoning model, so a provider that drops its thinking fails.
    expected_reasoning: ClassVar[str | None] = None
    #: Values that must never be written to a cassette (keys sent in a body or query string);
    #: the values of credential-looking request headers are checked without being listed.
    secrets: ClassVar[Sequence[str]] = ()
    #: Environment variables set for every check (an API key variable, say).
    env: ClassVar[Mapping[str, str]] = {}
    #: Recorded failures, each replayed and checked for its typed error.
    error_cases: ClassVar[Sequence[ErrorCase]] = ()
    #: False for a provider that never makes an HTTP request: the HTTP checks are skipped.
    uses_http: ClassVar[bool] = True
    #: Seconds each live check against a local server may take.
    timeout: ClassVar[float] = 10.0

    # -- fixtures -----------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _conformance_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No proxy from the environment; ``env`` set."""
        for name in list(os.environ):
            if name.lower() in _PROXY_VARIABLES or name == "LLMRELAY_PROXY":
                monkeypatch.delenv(name)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    @pytest.fixture
    def conformance_cassette(self, request: pytest.FixtureRequest) -> Path | None:
        """The path of ``cassette``; override this fixture to build the cassette instead."""
        if self.cassette is None:
            return None
        return Path(request.path).parent / self.cassette

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "error_case" in metafunc.fixturenames:
            cases: list[ErrorCase | None] = list(self.error_cases) or [None]
            ids = [Path(case.cassette).stem if case else "none" for case in cases]
            metafunc.parametrize("error_case", cases, ids=ids)

    # -- the contract -------------------------------------------------------------------------

    def test_declares_the_provider_attributes(self) -> None:
        provider = self.provider
        check_provider(provider)  # what the registry refuses to load, with its reason
        name = provider.__name__
        assert isinstance(provider.label, str), f"{name}.label must be a str"
        assert provider.url.startswith(("http://", "https://")), (
            f"{name}.url must be an absolute http(s) URL, got {provider.url!r}"
        )
        assert provider.api_endpoint is None or isinstance(provider.api_endpoint, str), (
            f"{name}.api_endpoint must be a str or None"
        )
        options = provider.supported_options
        assert isinstance(options, frozenset), f"{name}.supported_options must be a frozenset"
        assert all(isinstance(o, str) for o in options), f"{name}.supported_options: str only"
        for model in (*provider.models, *provider.model_aliases, ""):
            resolved = provider.get_model(model)
            assert not provider.models or resolved in provider.models, (
                f"{name}.get_model({model!r}) gives {resolved!r}, which is not in its models"
            )

    def test_stream_is_awaitable_and_async_iterable(
        self, conformance_cassette: Path | None
    ) -> None:
        self._need_answer(conformance_cassette)

        async def both_forms() -> tuple[list[Chunk], list[Chunk]]:
            with self._replay(conformance_cassette):
                stream = self._create()
                assert isinstance(stream, AsyncIterable), "the result is not async-iterable"
                assert inspect.isawaitable(stream), "the result is not awaitable"
                iterated = [chunk async for chunk in stream]
            with self._replay(conformance_cassette):
                awaited = await self._create()
                assert isinstance(awaited, AsyncIterable), "awaiting did not give an iterable"
                second = [chunk async for chunk in awaited]
            return iterated, second

        iterated, awaited = self._run(both_forms())
        assert iterated == awaited, "`async for` and `await` then `async for` differ"

    def test_chunks_are_text_then_usage_then_one_finish_reason(
        self, conformance_cassette: Path | None
    ) -> None:
        """The raw ``generate()``, unguarded by ``ChunkStream``, keeps the order by itself."""
        self._need_answer(conformance_cassette)

        async def raw_chunks() -> list[object]:
            provider = self.provider
            call = provider.make_call(**self.options)
            model = provider.get_model(self.model)
            with self._replay(conformance_cassette):
                generator = provider.generate(model, validate_messages(self.messages), call)
                assert inspect.isasyncgen(generator), "generate() must be an async generator"
                try:
                    return [chunk async for chunk in generator]
                finally:
                    await generator.aclose()

        chunks = self._run(raw_chunks())
        _check_order(chunks)
        text = "".join(chunk for chunk in chunks if isinstance(chunk, str))
        thoughts = "".join(chunk.text for chunk in chunks if isinstance(chunk, Reasoning))
        assert text.strip(), (
            "the recorded answer has reasoning but no text: record one that reaches an answer"
            if thoughts
            else "a normal answer has some text"
        )
        if self.expected_text is not None:
            assert text == self.expected_text
        if self.expected_reasoning is not None:
            assert thoughts == self.expected_reasoning, (
                f"the reasoning reads {thoughts!r}, not {self.expected_reasoning!r}: "
                "yield a model's thinking as Reasoning chunks, apart from the text"
            )

    def test_a_whole_answer_is_the_stream_joined(self, conformance_cassette: Path | None) -> None:
        """``.collect()`` gives the text, reasoning, usage and finish reason that iterating
        gives. It runs the provider's ``complete()`` (when it has one) for a call that asks for
        no stream the provider could send: ``options = {"stream": False}`` for a provider that
        streams, with a cassette that holds both requests (the test kit's recording mode makes
        one).

        It tells something only for a provider whose stream and whole answer take different
        paths (its own ``generate`` beside its own ``complete``); for one whose stream is
        built from ``complete`` (the default ``generate``), or whose ``generate`` calls
        ``complete`` for this request, it checks that llmrelay's joining agrees with itself.
        """
        self._need_answer(conformance_cassette)

        async def both() -> tuple[list[Chunk], Completion]:
            with self._replay(conformance_cassette):
                streamed = [chunk async for chunk in self._create()]
            with self._replay(conformance_cassette):
                whole = await self._create().collect()
            return streamed, whole

        streamed, whole = self._run(both())
        assert isinstance(whole, Completion), f"collect() gave a {type(whole).__name__}"
        text = "".join(chunk for chunk in streamed if isinstance(chunk, str))
        usage = next((chunk for chunk in streamed if isinstance(chunk, Usage)), None)
        thoughts = "".join(chunk.text for chunk in streamed if isinstance(chunk, Reasoning))
        expected = Completion(text, streamed[-1], usage, thoughts or None)  # type: ignore[arg-type]
        assert whole == expected, f"the whole answer {whole} differs from the stream's {streamed}"

    def test_http_goes_through_the_core_transport(
        self, conformance_cassette: Path | None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two calls: every aiohttp session comes from llmrelay's transport, none per call."""
        import aiohttp

        from .._transport import Transport

        self._need_answer(conformance_cassette)
        constructed: list[aiohttp.ClientSession] = []
        handed_out: list[aiohttp.ClientSession] = []
        original_init = aiohttp.ClientSession.__init__
        original_session = Transport._session

        def counting_init(session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
            constructed.append(session)
            original_init(session, *args, **kwargs)

        def session(transport: Transport, proxy: Any = None) -> aiohttp.ClientSession:
            shared = original_session(transport, proxy)
            handed_out.append(shared)
            return shared

        monkeypatch.setattr(aiohttp.ClientSession, "__init__", counting_init)
        monkeypatch.setattr(Transport, "_session", session)

        async def two_calls() -> list[int]:
            opened = []
            for _ in range(2):
                before = len(constructed)
                with self._replay(conformance_cassette):
                    await self._create().text()
                opened.append(len(constructed) - before)
            return opened

        opened = self._run(two_calls())
        own = [s for s in constructed if not any(s is shared for shared in handed_out)]
        assert not own, (
            f"{self.provider.__name__} opened {len(own)} aiohttp.ClientSession(s) of its own: "
            "do all HTTP through the `call` that generate() receives"
        )
        if self.uses_http:
            assert handed_out, (
                "no request went through llmrelay's transport; use call.request(), "
                "call.post_json() or call.open_stream()"
            )
            assert opened[1] == 0, "the second call opened a new session"
        else:
            assert not constructed, "uses_http is False, yet an HTTP session was opened"

    @pytest.mark.parametrize("proxy", ["ftp://127.0.0.1:21", "socks5://", "http://127.0.0.1:port"])
    def test_a_bad_proxy_url_is_refused_before_any_io(self, proxy: str) -> None:
        with pytest.raises(errors.InvalidRequest):
            self._create(proxy=proxy)  # not iterated: refused before anything is sent

    def test_the_proxy_carries_the_request(self) -> None:
        """With ``proxy=`` an HTTP proxy (a stand-in on 127.0.0.1) receives the request."""
        self._need_http()
        target = f"http://127.0.0.1:{free_port()}"

        async def through_a_proxy() -> tuple[list[str], BaseException]:
            async with stand_in(503, "answered by the proxy stand-in", "text/plain") as proxy:
                error = await _failure(self._create(**self._live(target, proxy=proxy.url)))
            return [r.target for r in proxy.requests], error

        targets, error = self._run(through_a_proxy(), live=True)
        assert targets, f"proxy= was not used: the call failed with {error!r}"
        assert all(t == target or t.startswith(f"{target}/") for t in targets), (
            f"the proxy was asked for {targets}, not for {target}"
        )
        self._check_typed(error)

    @pytest.mark.parametrize("scheme", ["http", "socks5"])
    def test_an_unreachable_proxy_is_a_proxy_error(self, scheme: str) -> None:
        self._need_http()
        proxy = f"{scheme}://127.0.0.1:{free_port()}"
        target = f"http://127.0.0.1:{free_port()}"
        error = self._run(_failure(self._create(**self._live(target, proxy=proxy))), live=True)
        self._check_typed(error, errors.ProxyError)

    @pytest.mark.parametrize("fault", list(_FAULTS))
    def test_failures_are_typed_errors_naming_the_provider(self, fault: str) -> None:
        self._need_http()
        status, content_type, body = _FAULTS[fault]

        async def against_a_broken_server() -> tuple[int, BaseException]:
            async with stand_in(status, body, content_type) as server:
                error = await _failure(self._create(**self._live(server.url)))
            return len(server.requests), error

        hits, error = self._run(against_a_broken_server(), live=True)
        assert hits, f"the provider sent nothing to base_url: {error!r}"
        typed = self._check_typed(error)
        if status >= 400:
            assert typed.status == status, f"{typed!r} should carry status={status}"

    def test_an_unreachable_service_is_a_connect_error(self) -> None:
        self._need_http()
        target = f"http://127.0.0.1:{free_port()}"
        error = self._run(_failure(self._create(**self._live(target))), live=True)
        self._check_typed(error, errors.ConnectError)

    def test_recorded_failures_replay_as_typed_errors(
        self, error_case: ErrorCase | None, request: pytest.FixtureRequest
    ) -> None:
        if error_case is None:
            pytest.skip("no error_cases declared")
        path = Path(request.path).parent / error_case.cassette

        async def replay() -> BaseException:
            with _cassette(path):
                stream = self._create(messages=error_case.messages, max_retries=0)
                return await _failure(stream)

        self._check_typed(self._run(replay()), error_case.raises)

    def test_secrets_never_reach_a_cassette(self, tmp_path: Path) -> None:
        """Record a call to a server that echoes the request back; no secret is written."""
        self._need_http()
        path = tmp_path / "secrets.yaml"

        async def record() -> list[dict[str, str]]:
            async with stand_in(reflect=True) as server:
                with _cassette(path, mode="record"), contextlib.suppress(errors.LLMRelayError):
                    await self._create(**self._live(server.url)).text()
            return [r.headers for r in server.requests]

        sent = self._run(record(), live=True)
        assert sent, "the provider sent nothing to base_url"
        assert path.is_file(), "nothing was recorded"
        recorded = _recorded_text(path)
        wanted = {f"secrets[{i}]": value for i, value in enumerate(self.secrets) if value}
        for headers in sent:
            for header, value in headers.items():
                if looks_secret(header):
                    for part in (value, value.partition(" ")[2]):
                        if len(part.strip()) >= _MIN_SECRET:
                            wanted[f"the {header} header"] = part.strip()
        leaked = sorted(label for label, value in wanted.items() if value in recorded)
        assert not leaked, (
            f"the cassette holds the value of {', '.join(leaked)}; llmrelay masks the headers "
            f"{', '.join(sorted(SECRET_HEADERS))} and every request header whose name has "
            "auth, key, token, secret, cookie, passw, signature or session in it, secret query "
            "parameters and JSON fields, and key-shaped values anywhere"
        )

    def test_an_unrecorded_request_fails_without_reaching_the_network(
        self, conformance_cassette: Path | None
    ) -> None:
        """Replay against a live server: the request is refused, the server never sees it."""
        self._need_http()
        self._need_answer(conformance_cassette)
        assert conformance_cassette is not None

        async def replay_elsewhere() -> tuple[int, str, str]:
            async with stand_in() as server:
                with _cassette(conformance_cassette), pytest.raises(errors.CassetteMismatch) as e:
                    await self._create(**self._live(server.url)).text()
            return len(server.requests), server.url, str(e.value)

        hits, url, message = self._run(replay_elsewhere(), live=True)
        assert hits == 0, "a request with no recorded answer reached the network"
        assert str(conformance_cassette) in message, "the error must name the cassette"
        assert url in message, "the error must show the unmatched request"

    # -- helpers ------------------------------------------------------------------------------

    def _create(self, **overrides: Any) -> ChunkStream:
        kwargs = {**self.options, **overrides}
        messages = kwargs.pop("messages", self.messages)
        return self.provider.create_async_generator(self.model, messages, **kwargs)

    def _live(self, base_url: str, proxy: str = "") -> dict[str, Any]:
        """Options for a call to a local server: no retries, no proxy but ``proxy``."""
        return {"base_url": base_url, "proxy": proxy, "max_retries": 0, "timeout": self.timeout}

    @contextlib.contextmanager
    def _replay(self, path: Path | None) -> Iterator[object]:
        if path is None:
            yield None
            return
        if not path.is_file():
            raise errors.CassetteMismatch(self._missing(path))
        with _cassette(path) as recorded:
            yield recorded

    def _missing(self, path: Path) -> str:
        """What to do about a missing ``cassette``: the command that records it, when one can."""
        import shlex

        said = f"cassette {str(path)!r} (the class's `cassette`) does not exist; record one "
        said += "normal answer to the class's `messages`"
        messages = list(self.messages)
        first = messages[0] if len(messages) == 1 else None
        prompt = first.get("content") if isinstance(first, Mapping) else None
        if isinstance(first, Mapping) and first.get("role") == "user" and isinstance(prompt, str):
            from .._cli_types import option_flags

            command = ["llmrelay", "record", "--provider", self.provider.name, "--cassette"]
            command += [str(path), *(["-m", self.model] if self.model else [])]
            command += [*option_flags(dict(self.options)), prompt]
            hint = f"{said}: {shlex.join(command)} (against the real service, or --base-url)"
            provider = self.provider
            if (
                self.options.get("stream") is False
                and provider.supports_stream
                and (provider._native_complete)
            ):
                # record collects the whole answer, as complete() sends it; the checks also
                # iterate generate(), which may send another request.
                hint += (
                    "; it records complete()'s request: if generate() streams even with "
                    "stream=False, record from a test marked `llmrelay_cassette` that makes "
                    "both calls, run once with `pytest --llmrelay-record=missing`"
                )
            return hint
        return (
            f"{said}: from a test marked `llmrelay_cassette` that makes the same call, run "
            "once with `pytest --llmrelay-record=missing` (see docs/testing.md)"
        )

    def _need_http(self) -> None:
        if not self.uses_http:
            pytest.skip(f"{self.provider.__name__} makes no HTTP requests (uses_http = False)")

    def _need_answer(self, path: Path | None) -> None:
        if path is None and self.uses_http:
            pytest.skip("set `cassette` to a recording of one normal answer to `messages`")

    def _check_typed(
        self, error: BaseException, kind: type[errors.ProviderError] = errors.ProviderError
    ) -> errors.ProviderError:
        """``error`` is a ``kind`` (an llmrelay.errors type) naming this provider, and the
        provider raised it: not a bare exception that llmrelay turned into one."""
        bare = getattr(error, "bare", None)
        assert bare is None, (
            f"expected llmrelay.errors.{kind.__name__}, got {type(bare).__module__}."
            f"{type(bare).__qualname__}: {bare} (llmrelay reports it as "
            f"{type(error).__name__}: {error}; raise llmrelay.errors instead)"
        )
        assert isinstance(error, kind), (
            f"expected llmrelay.errors.{kind.__name__}, got {type(error).__module__}."
            f"{type(error).__qualname__}: {error}"
        )
        assert error.provider == self.provider.name, (
            f"{type(error).__name__}.provider is {error.provider!r}, not {self.provider.name!r}"
        )
        return error

    def _run(self, coroutine: Coroutine[Any, Any, T], *, live: bool = False) -> T:
        """Run a check in an event loop of its own; ``live``: only 127.0.0.1 may be called."""
        if not live:
            return asyncio.run(_closing(coroutine))
        with _loopback_only():
            return asyncio.run(_closing(coroutine))


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Fail the test, before anything is sent, if a request leaves 127.0.0.1.

    The live checks point the provider at local servers with ``base_url=``; a provider that
    ignores it would otherwise call the real service, perhaps with a real key.
    """
    from urllib.parse import urlsplit

    from .._redact import redact
    from .._transport import Transport

    def guard(original: Any) -> Any:
        def guarded(
            transport: Transport, provider: str, method: str, url: str, *args: Any, **kwargs: Any
        ) -> Any:
            if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
                pytest.fail(
                    f"{provider} sent {method} {redact(url)} although base_url= named a "
                    "server on 127.0.0.1: build request URLs with call.url()",
                    pytrace=False,
                )
            return original(transport, provider, method, url, *args, **kwargs)

        return guarded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Transport, "request", guard(Transport.request))
        patch.setattr(Transport, "open", guard(Transport.open))
        yield


async def _closing(awaitable: Awaitable[T]) -> T:
    """Await, then close llmrelay's sessions on this loop."""
    from .._transport import aclose

    try:
        return await awaitable
    finally:
        await aclose()


def _recorded_text(path: Path) -> str:
    """Every string of a cassette, as stored and as decoded (YAML, then JSON bodies).

    A secret is found however it was written: folded by YAML, escaped in a JSON body.
    """
    import yaml

    raw = path.read_text(encoding="utf-8")
    found = [raw]

    def walk(value: object) -> None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            found.append(value)
            with contextlib.suppress(ValueError):
                decoded = json.loads(value)
                if decoded != value:
                    walk(decoded)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(yaml.safe_load(raw))
    return "\n".join(found)


async def _failure(stream: ChunkStream) -> BaseException:
    """The exception reading ``stream`` raises; fails the test when it raises none."""
    try:
        await stream.text()
    except Exception as exc:
        return exc
    pytest.fail("the call succeeded; it should have failed")


def _check_order(chunks: Sequence[object]) -> None:
    kinds = []
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, str):
            kinds.append("str")
        elif isinstance(chunk, Reasoning):
            kinds.append("Reasoning")
        elif isinstance(chunk, Usage):
            kinds.append("Usage")
        elif isinstance(chunk, FinishReason):
            kinds.append("FinishReason")
        else:
            kind = type(chunk).__name__
            pytest.fail(
                f"chunk {index} is a {kind}; yield only str, Reasoning, Usage and FinishReason"
            )
    shape = " ".join(kinds) or "nothing"
    assert kinds[-1:] == ["FinishReason"], f"the stream must end with a FinishReason: {shape}"
    assert kinds.count("FinishReason") == 1, f"exactly one FinishReason: {shape}"
    assert kinds.count("Usage") <= 1, f"at most one Usage: {shape}"
    if "Usage" in kinds:
        assert kinds.index("Usage") == len(kinds) - 2, f"Usage comes after the text: {shape}"
