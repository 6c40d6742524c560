"""The provider contract: what a backend declares and how callers consume it."""

from __future__ import annotations

import difflib
import functools
import logging
import math
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Mapping
from dataclasses import dataclass
from types import AsyncGeneratorType, TracebackType
from typing import Any, ClassVar, NoReturn, Self

from . import errors
from ._call import _JSON, EMPTY_MAPPING, Call, RetryPolicy
from ._config import Config, get_config
from ._options import check_options
from ._proxy import checked_proxy
from ._redact import redact
from ._types import Chunk, FinishReason, Message, Messages, Reasoning, Usage, validate_messages

__all__ = ["READ_BY_ANOTHER_TASK", "ChunkStream", "Completion", "Provider"]

log = logging.getLogger("llmrelay")

#: What a second task reading a stream already being read is told. Refused before anything
#: changes, so the first read goes on; Python's own refusal, raised by the provider's
#: generator, would read as the provider failing (and the relay would fall back on it).
READ_BY_ANOTHER_TASK = (
    "this stream is already being read (by another task or thread): read a stream from one "
    "place at a time"
)

#: Keyword arguments every provider accepts; they shape the call, not the provider's request.
CALL_OPTIONS = frozenset({"base_url", "timeout", "max_retries", "drop_unsupported", "stream"})


class Provider:
    """Base class of every provider.

    A provider declares what it serves with class attributes and implements :meth:`generate`,
    an async generator that yields ``str`` chunks (and :class:`Reasoning` chunks among them,
    for a model's thinking), then optionally one :class:`Usage`, and ends
    with exactly one :class:`FinishReason`; or :meth:`complete`, a coroutine that returns the
    whole answer as a :class:`Completion`, for a backend that answers in one piece; or both.
    Callers use :meth:`create_async_generator`, which validates input before any I/O and
    checks the provider keeps that contract.

    HTTP goes through the :class:`Call` that ``generate`` receives (shared sessions, proxies,
    timeouts, retries, typed errors), never through a ``ClientSession`` of the provider's own.
    """

    #: The registered name, used in ``"name/model"`` and in every error message.
    name: ClassVar[str] = ""
    #: A human-friendly name for listings.
    label: ClassVar[str] = ""
    #: The base URL of the service; ``base_url=`` overrides it per call.
    url: ClassVar[str] = ""
    #: The path of the one endpoint, for providers that call one endpoint.
    api_endpoint: ClassVar[str | None] = None
    #: Whether the service is known to answer today; working providers are tried first.
    working: ClassVar[bool] = True
    default_model: ClassVar[str] = ""
    models: ClassVar[tuple[str, ...]] = ()
    #: Alternative names callers may use, mapped to entries of ``models``.
    model_aliases: ClassVar[Mapping[str, str]] = {}
    supports_stream: ClassVar[bool] = False
    supports_system_message: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = True
    needs_auth: ClassVar[bool] = False
    #: The environment variable the provider reads its key from, if it reads one: shown by
    #: ``llmrelay providers``, and set in the replay command ``llmrelay record`` prints (the
    #: provider asks for its key before a cassette can answer).
    api_key_env: ClassVar[str | None] = None
    #: Request options (``temperature``, ...) this provider understands; others are refused.
    supported_options: ClassVar[frozenset[str]] = frozenset()
    #: Whether the class (or a parent below Provider) implements :meth:`complete`, and
    #: whether whole answers come from it (set per subclass).
    _implements_complete: ClassVar[bool] = False
    _native_complete: ClassVar[bool] = False
    #: Whether the class replaced :meth:`create_async_generator` (the relay then calls it).
    _custom_entry: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that overrides generate() but not the complete() it inherits means its
        # generate(): whole answers then come from that, not from the parent's complete().
        completes, generates = _owner(cls, "complete"), _owner(cls, "generate")
        cls._implements_complete = completes is not Provider
        cls._native_complete = cls._implements_complete and (
            generates is Provider or issubclass(completes, generates)
        )
        cls._custom_entry = _owner(cls, "create_async_generator") is not Provider

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Resolve ``model`` (empty means the default; aliases map to real names)."""
        if not model:
            return cls.default_model
        model = cls.model_aliases.get(model, model)
        if cls.models and model not in cls.models:
            known = [*cls.models, *cls.model_aliases]
            raise errors.ModelNotFound(
                f"{cls.name}/{model}", difflib.get_close_matches(model, known, n=3, cutoff=0.5)
            )
        return model

    @classmethod
    def create_async_generator(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> ChunkStream:
        """Start a chat completion; iterate the result (or await it, then iterate).

        Keyword options: ``base_url`` (point at another server), ``timeout`` (total seconds,
        retries included; ``None`` for none), ``max_retries``, ``stream`` (False asks a provider
        that can stream for one whole answer instead), ``drop_unsupported`` (drop options this
        provider does not support instead of refusing them), and the provider's
        ``supported_options``. Defaults come from the configuration (``llmrelay config``).

        Raises (before any I/O):
            InvalidRequest: bad messages, proxy URL or options.
            ModelNotFound: the provider does not serve ``model``.
        """
        if model is not None and not isinstance(model, str):
            raise errors.InvalidRequest(f"model must be a string, got {type(model).__name__}")
        checked = validate_messages(messages)
        resolved = cls.get_model(model)
        check_options(kwargs)  # (the relay checks them once for all its candidates)
        call = cls.make_call(proxy=proxy, **kwargs)
        return cls.start(resolved, checked, call)

    @classmethod
    def start(cls, model: str, messages: list[Message], call: Call) -> ChunkStream:
        """The stream of :meth:`generate` for input already checked (``model`` resolved).

        Nothing runs until the stream is read: iterating it runs :meth:`generate`; collecting
        it (``collect()``, ``text()``) runs :meth:`complete` instead when the provider
        implements it and the call does not ask for a stream the provider could send.
        """
        return ChunkStream._of(cls, model, messages, call)

    @classmethod
    def completes(cls, call: Call) -> bool:
        """Whether a whole answer for ``call`` comes from :meth:`complete` (not collected
        from :meth:`generate`): the provider implements it, and the call does not ask for a
        stream the provider could send (``stream=True`` keeps a long answer streaming)."""
        return cls._native_complete and not (call.stream and cls.supports_stream)

    @classmethod
    def make_call(
        cls, proxy: str | None = None, *, config: Config | None = None, **kwargs: Any
    ) -> Call:
        """Check the call options and build the :class:`Call` handed to :meth:`generate`.

        ``config`` saves a look-up when the caller already holds the configuration.
        """
        options: Mapping[str, Any] = EMPTY_MAPPING
        for key in kwargs:  # any request option? (a loop: no key view or set per call)
            if key not in CALL_OPTIONS:  # checked against what this provider supports
                options = cls._request_options(kwargs)
                break
        if proxy is not None:
            if not isinstance(proxy, str):
                raise errors.InvalidRequest(
                    f"proxy must be a URL string, got {type(proxy).__name__}"
                )
            if proxy:
                checked_proxy(proxy)  # a bad proxy URL is refused before any I/O
        base_url = kwargs.get("base_url") or cls.url
        if base_url is not cls.url:  # the caller's: checked (a provider's own is trusted)
            if not isinstance(base_url, str):
                raise errors.InvalidRequest(
                    f"base_url must be an absolute http(s) URL, got {type(base_url).__name__}"
                )
            _checked_base_url(base_url)
        if config is None:
            config = get_config()  # a broken file or environment variable is reported here
        timeout = config.timeout
        if "timeout" in kwargs:
            timeout = _checked_timeout(kwargs["timeout"])
        retry = _retry_policy(config.max_retries)
        if "max_retries" in kwargs:
            retry = _retry_policy(_checked_max_retries(kwargs["max_retries"]))
        stream = kwargs.get("stream", True)
        if stream.__class__ is not bool:  # bool("false") is True: a flag must be a bool
            raise errors.InvalidRequest(f"stream must be True or False, got {stream!r}")
        drop = kwargs.get("drop_unsupported", False)
        if drop.__class__ is not bool:
            raise errors.InvalidRequest(f"drop_unsupported must be True or False, got {drop!r}")
        return Call(
            provider=cls.name,
            base_url=base_url,
            proxy=proxy,
            timeout=timeout,
            retry=retry,
            options=options,
            stream=stream,
            default_proxy=config.proxy,
        )

    @classmethod
    def _request_options(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The request options in ``kwargs`` this provider supports (the others refused or,
        with ``drop_unsupported=True``, dropped), checked to be sendable as JSON."""
        options = {k: v for k, v in kwargs.items() if k not in CALL_OPTIONS}
        unsupported = sorted(options.keys() - cls.supported_options)
        if unsupported and not kwargs.get("drop_unsupported", False):
            raise errors.UnsupportedOption(cls.name, unsupported, sorted(cls.supported_options))
        for key in unsupported:
            options.pop(key)
        if options:
            _check_encodable(cls.name, options)
        return options

    @classmethod
    def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        """Yield the answer: ``str`` chunks (and ``Reasoning`` chunks, for a model that sends its
        reasoning apart from its answer), optionally a ``Usage``, then one ``FinishReason``.

        Subclasses implement this as an ``async def`` generator classmethod. A provider that
        implements only :meth:`complete` gets this for free: its answer as one text chunk,
        the usage if reported, and the finish reason.
        """
        if cls._implements_complete:
            return _chunks_of_complete(cls, model, messages, call)
        raise NotImplementedError(f"{cls.__name__} must implement generate() or complete()")

    @classmethod
    async def complete(cls, model: str, messages: list[Message], call: Call) -> Completion:
        """Return the whole answer as one :class:`Completion`.

        Implement this (an ``async def`` classmethod) instead of :meth:`generate` when the
        backend answers in one piece, or beside it when it can do both: a whole answer then
        skips the chunk-by-chunk path (an async generator, its checks, the joining), which
        is most of the cost of a short answer on the caller's side. The default collects
        :meth:`generate`.
        """
        return await ChunkStream(cls.name, cls.generate(model, messages, call), call).collect()


def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO that defines ``name``."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))


async def _chunks_of_complete(
    provider: type[Provider], model: str, messages: list[Message], call: Call
) -> AsyncGenerator[Chunk, None]:
    """The chunks of :meth:`Provider.complete`'s answer, for a provider without ``generate``."""
    answer = checked_completion(provider.name, await provider.complete(model, messages, call))
    for chunk in answer.chunks():
        yield chunk


def checked_completion(provider: str, answer: object) -> Completion:
    """``answer``, what a provider's ``complete()`` returned, if it is a valid ``Completion``.

    Raises:
        InvalidResponse: it is not (the provider broke its contract).
    """
    if (
        type(answer) is Completion  # the exact type: nearly always, and fast
        or isinstance(answer, Completion)
    ) and (
        isinstance(answer.text, str)
        and isinstance(answer.finish_reason, FinishReason)
        and (answer.usage is None or isinstance(answer.usage, Usage))
        and (answer.reasoning is None or isinstance(answer.reasoning, str))
    ):
        if answer.reasoning == "":  # no reasoning, as a stream without Reasoning chunks says
            return Completion(answer.text, answer.finish_reason, answer.usage)
        return answer
    raise errors.InvalidResponse(
        f"complete() returned an invalid {type(answer).__name__} (provider contract broken: "
        "expected a Completion with str text, a FinishReason, a Usage or None and a str "
        "or None as reasoning)",
        provider=provider,
    )


def typed_error(exc: Exception, provider: str) -> Exception:
    """The error to raise for ``exc``, an exception from ``provider``'s code that is not a
    provider error.

    llmrelay's own errors stay as they are (an ``InvalidRequest`` is the caller's to fix); a
    cassette with no answer for the request is ``CassetteMismatch``; a network failure the
    provider met outside ``Call`` is the typed error the transport would have raised. Anything
    else (a ``KeyError`` on an unexpected answer, a bug) breaks the provider contract, which
    is to raise ``llmrelay.errors``: it is an ``InvalidResponse`` naming the provider, with
    the original as its cause, so the relay falls back and the caller never meets a bare
    exception from deep inside.
    """
    if isinstance(exc, errors.LLMRelayError):
        return exc
    if "vcr.errors" in sys.modules:  # a cassette may be in use
        from ._cassettes import as_mismatch

        mismatch = as_mismatch(exc)
        if mismatch is not None:
            return mismatch
    from ._transport import network_error

    typed = network_error(exc, provider, None, time.monotonic()) if _is_network(exc) else None
    if typed is None:
        # Not the exception's text: it is the provider's internals (a server shows this
        # message to its clients); the cause keeps it for logs and debuggers.
        typed = errors.InvalidResponse(
            f"the provider raised {type(exc).__name__} (provider contract broken: providers "
            "raise llmrelay.errors; the cause of this error has the details)",
            provider=provider,
        )
    typed.__cause__ = exc  # the traceback that explains it, for whoever debugs the provider
    if isinstance(typed, errors.ProviderError):
        typed.bare = exc  # what the provider raised itself (the test kit and the server look)
    return typed


def _is_network(exc: Exception) -> bool:
    """Whether ``exc`` is a network failure (aiohttp's, a connection's, a timeout), not a bug
    that happens to be an ``OSError`` (a missing file is no reason to retry)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    module = type(exc).__module__
    return module.startswith(("aiohttp", "aiohttp_socks", "asyncio"))


def _check_encodable(provider: str, options: dict[str, Any]) -> None:
    """Refuse, before any I/O, option values a request body cannot carry (sets, NaN, ...)."""
    for key, value in options.items():
        try:
            _JSON.encode(value)
        except (TypeError, ValueError) as exc:
            raise errors.InvalidRequest(
                f"option {key!r} for provider {provider!r} cannot be sent as JSON: {exc}"
            ) from None


@functools.lru_cache(maxsize=64)
def _checked_base_url(base_url: str) -> None:
    """Refuse a ``base_url=`` that cannot be joined with a path and sent (once per value)."""
    from ._urls import check_base_url

    try:
        check_base_url(base_url)
    except ValueError as exc:
        raise errors.InvalidRequest(f"base_url {redact(base_url)!r} {exc}") from None


def _checked_timeout(timeout: object) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf  # also refuses NaN, which compares false to everything
    ):
        raise errors.InvalidRequest(
            f"timeout must be a positive, finite number of seconds or None (no deadline), "
            f"got {timeout!r}"
        )
    if timeout is None:
        return None
    try:
        return float(timeout)
    except OverflowError:  # an int beyond any float (10**400): no deadline is that far
        raise errors.InvalidRequest(
            f"timeout must be a positive, finite number of seconds or None (no deadline), "
            f"got an integer of {len(str(timeout))} digits"
        ) from None


def _checked_max_retries(max_retries: object) -> int:
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise errors.InvalidRequest(
            f"max_retries must be a non-negative integer, got {max_retries!r}"
        )
    return max_retries


@functools.lru_cache(maxsize=32)
def _retry_policy(max_retries: int) -> RetryPolicy:
    """Policies are immutable: share one per retry count instead of building one per call."""
    return RetryPolicy(max_retries=max_retries)


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer: the text, the usage if reported, why it stopped, and the reasoning the
    model sent apart from the text (None when it sent none)."""

    text: str
    finish_reason: FinishReason
    usage: Usage | None = None
    reasoning: str | None = None

    def chunks(self) -> list[Chunk]:
        """The answer as a stream carries it: the reasoning (if any), the text (if any), the
        usage (if reported), the finish reason."""
        chunks: list[Chunk] = [self.text] if self.text else []
        if self.reasoning:
            chunks.insert(0, Reasoning(self.reasoning))
        if self.usage is not None:
            chunks.append(self.usage)
        chunks.append(self.finish_reason)
        return chunks


class ChunkStream(AsyncIterator[Chunk]):
    """What :meth:`Provider.create_async_generator` returns.

    Async-iterable, and awaitable (awaiting gives the same stream back), so both
    ``async for x in P.create_async_generator(...)`` and
    ``stream = await P.create_async_generator(...); async for x in stream`` work. Also an async
    context manager that closes the underlying request early.

    It enforces the provider contract as chunks pass: text and ``Reasoning``, in any order,
    then at most one ``Usage``, then exactly one ``FinishReason``. A provider error after text
    (or reasoning) has been yielded becomes :class:`~llmrelay.errors.StreamInterrupted`, so no
    caller ever retries a half-sent answer.
    """

    def __init__(
        self, provider: str, chunks: AsyncGenerator[Chunk, None], call: Call | None = None
    ) -> None:
        self.provider = provider
        self.call = call
        self._chunks: AsyncGenerator[Chunk, None] | None = chunks
        #: The provider call not started yet (see ``_of``): its generator, or its complete().
        self._pending: tuple[type[Provider], str, list[Message], Call] | None = None
        self._sent_text = False
        self._sent_reasoning = False  # (kept apart: only the message says which was sent)
        self._text_over = False  # a Usage or the FinishReason came: no more text
        self._usage_seen = False
        self._finish_seen = False
        self._finished = False

    @classmethod
    def _of(
        cls, provider: type[Provider], model: str, messages: list[Message], call: Call
    ) -> ChunkStream:
        """The stream of one provider call, started by the first read: iterating runs the
        provider's ``generate``; ``collect()`` may run its ``complete`` instead."""
        stream = cls.__new__(cls)
        stream.provider = provider.name
        stream.call = call
        stream._chunks = None
        stream._pending = (provider, model, messages, call)
        stream._sent_text = stream._sent_reasoning = stream._text_over = False
        stream._usage_seen = False
        stream._finish_seen = stream._finished = False
        return stream

    def _generator(self) -> AsyncGenerator[Chunk, None]:
        """The provider's generator, created on the first read of a stream made by ``_of``."""
        if self._chunks is None:
            if self._pending is None:  # pragma: no cover - __init__ or _of set one of the two
                raise RuntimeError("a ChunkStream without chunks")
            provider, model, messages, call = self._pending
            chunks = provider.generate(model, messages, call)
            if type(chunks) is not AsyncGeneratorType and not (
                isinstance(chunks, AsyncIterator) and callable(getattr(chunks, "aclose", None))
            ):
                # A plain "def" that returns a list, say: refused here, by name, rather than
                # as an AttributeError from deep inside the stream (and again on closing it).
                # An async iterator with aclose() is all the stream uses: taken as it is.
                raise errors.InvalidResponse(
                    f"generate() returned a {type(chunks).__name__}, not an async generator "
                    "(provider contract broken: write generate as an async def that yields)",
                    provider=self.provider,
                )
            self._chunks = chunks
        return self._chunks

    def __aiter__(self) -> Self:
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self._self().__await__()

    async def _self(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        if self._finished:
            await self.aclose()
            raise StopAsyncIteration
        if not self._sent_text and self.call is not None:
            self.call.start()  # the deadline starts with the first read (idempotent)
        chunks = self._chunks or self._generator()
        if getattr(chunks, "ag_running", False):
            raise RuntimeError(READ_BY_ANOTHER_TASK)
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            if self._finish_seen:  # the end, after the FinishReason: as it should be
                self._finished = True
                raise
            if self._finished:  # closed by another task while this read waited
                raise
            self._broken("no FinishReason before the end")
        except Exception as exc:
            if self._finish_seen:  # the answer is whole: a failure in the provider's clean-up
                self._finished = True  # (reading on to [DONE], releasing) cannot undo it
                log.debug("%s: ignored after the FinishReason: %r", self.provider, exc)
                raise StopAsyncIteration from None
            if self._finished:  # closed by another task while this read waited (see aclose)
                log.debug("%s: closed during a read that then failed: %r", self.provider, exc)
                raise StopAsyncIteration from None
            self._raise_typed(exc)
        if self._finished:  # closed by another task while this read waited: the chunk is
            await self.aclose()  # not the caller's any more, and the generator is free to end
            raise StopAsyncIteration
        if type(chunk) is str and not self._text_over:  # text: nearly every chunk
            if chunk:
                self._sent_text = True
            return chunk
        return self._check(chunk)

    def _raise_typed(self, exc: Exception) -> NoReturn:
        """Raise ``exc`` as :meth:`_typed` says; a ``StreamInterrupted`` keeps it as cause."""
        typed = self._typed(exc)
        if typed is exc:
            raise exc
        if isinstance(typed, errors.StreamInterrupted):
            raise typed from exc
        raise typed from typed.__cause__  # None, or the bare exception a typed error stands for

    @property
    def delivered(self) -> bool:
        """Whether some of the answer (text, reasoning, usage, the finish reason) reached the
        caller: from then on a failure is ``StreamInterrupted``, and no other provider may
        answer (its answer would be spliced onto this one)."""
        return self._sent_text or self._sent_reasoning or self._usage_seen or self._finish_seen

    def _typed(self, exc: Exception) -> Exception:
        """The error to raise for ``exc``: after text, a provider error is StreamInterrupted."""
        if isinstance(exc, errors.ProviderError):
            if self.delivered and not isinstance(exc, errors.StreamInterrupted):
                if self._sent_text:
                    what = "text was sent"
                elif self._sent_reasoning:
                    what = "reasoning was sent"
                else:
                    what = "the answer had started"
                cut = (
                    errors.StreamTimedOut
                    if isinstance(exc, errors.ProviderTimeout)
                    else errors.StreamInterrupted
                )
                interrupted = cut(
                    f"failed after {what}: {exc.reason}",
                    provider=self.provider,
                    status=exc.status,
                    retryable=False,
                    body=exc.body,
                )
                interrupted.bare = exc.bare
                return interrupted
            return exc
        typed = typed_error(exc, self.provider)
        return self._typed(typed) if isinstance(typed, errors.ProviderError) else typed

    def _check(self, chunk: object) -> Chunk:
        if self._finish_seen:
            self._broken(f"a {type(chunk).__name__} chunk after the FinishReason")
        if isinstance(chunk, str):
            if self._text_over:
                self._broken("text after Usage")
            if chunk:
                self._sent_text = True
            return chunk
        if isinstance(chunk, Reasoning):
            if self._text_over:
                self._broken("reasoning after Usage")
            if chunk.text:  # the caller has seen it: no other provider may answer now
                self._sent_reasoning = True
            return chunk
        if isinstance(chunk, Usage):
            if self._usage_seen:
                self._broken("a second Usage")
            self._usage_seen = self._text_over = True
            return chunk
        if isinstance(chunk, FinishReason):
            # Not finished yet: the next read checks that the provider yields nothing more.
            self._finish_seen = self._text_over = True
            return chunk
        return self._broken(
            f"a {type(chunk).__name__} chunk (expected str, Reasoning, Usage or FinishReason)"
        )

    def _broken(self, what: str) -> NoReturn:
        broken = errors.InvalidResponse(
            f"stream yielded {what} (provider contract broken)", provider=self.provider
        )
        raise self._typed(broken)

    async def aclose(self) -> None:
        """Stop early and release the connection.

        When another task is reading the stream at this moment, its generator cannot be closed
        from here: the stream is marked finished instead, and the reader's own exit (a
        cancellation, or the end of its read) releases the connection.
        """
        self._finished = True
        if self._chunks is None:
            return  # never started: nothing to release
        if getattr(self._chunks, "ag_running", False):
            # Read by another task right now: its generator cannot be closed from here. Its
            # connection is ended instead, so the read fails, and ends (see __anext__).
            if self.call is not None:
                self.call.end_reads()
            return
        await self._chunks.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def collect(self) -> Completion:
        """Read the whole stream into a :class:`Completion`.

        The same checks as iterating, on the provider's generator directly: this is the path
        of every whole answer, and one wrapper call less per chunk is measurable there.
        """
        if self._finished:
            raise errors.InvalidRequest(
                f"this {self.provider} stream was already read or closed; "
                "start a new request to read another answer"
            )
        if self.call is not None:
            self.call.start()
        if self._chunks is None and self._pending is not None:
            provider, model, messages, call = self._pending
            if provider.completes(call):  # the provider's own whole answer
                self._finished = True
                try:
                    answer = await provider.complete(model, messages, call)
                except Exception as exc:
                    self._raise_typed(exc)
                return checked_completion(self.provider, answer)
        chunks = self._generator()
        parts: list[str] = []
        thoughts: list[str] = []
        usage: Usage | None = None
        try:
            async for chunk in chunks:
                if type(chunk) is str and not self._text_over:
                    if chunk:
                        self._sent_text = True
                        parts.append(chunk)
                    continue
                checked = self._check(chunk)
                if isinstance(checked, FinishReason):
                    reasoning = "".join(thoughts) or None
                    return Completion("".join(parts), checked, usage, reasoning)
                if isinstance(checked, Usage):
                    usage = checked
                elif isinstance(checked, Reasoning):
                    thoughts.append(checked.text)
                else:
                    parts.append(checked)  # a str subclass
            self._broken("no FinishReason before the end")
        except Exception as exc:
            self._raise_typed(exc)
        finally:
            self._finished = True
            await chunks.aclose()

    async def text(self) -> str:
        """Read the whole stream and return its text."""
        return (await self.collect()).text
