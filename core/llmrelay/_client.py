"""The OpenAI-shaped client: ``client.chat.completions.create(model=..., messages=...)``.

``AsyncClient`` is the client; ``Client`` is the same for scripts. It runs an ``AsyncClient`` on
an event loop of its own, in a background thread started on first use, so it also works from
code that already runs a loop (a notebook, a web handler, an async test). The objects returned
have OpenAI's shape, plus ``provider`` naming the provider that answered.

Streams follow OpenAI's chunks with one difference: the usage a provider reports rides on the
last chunk (the one with ``finish_reason``) instead of an extra chunk with empty ``choices``,
so ``chunk.choices[0]`` is safe on every chunk.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast, overload

from pydantic import BaseModel, ConfigDict

from ._built import built
from ._provider import READ_BY_ANOTHER_TASK, Completion
from ._registry import Registry
from ._relay import RelayStream, relay_options
from ._types import FinishReasonName, Messages, Reasoning, Usage
from .errors import InvalidRequest

__all__ = [
    "AsyncChat",
    "AsyncClient",
    "AsyncCompletionStream",
    "AsyncCompletions",
    "AsyncModels",
    "Chat",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChunkChoice",
    "Client",
    "CompletionStream",
    "Completions",
    "Model",
    "ModelList",
    "Models",
    "list_models",
]

log = logging.getLogger("llmrelay")
T = TypeVar("T")

#: Request options for which ``None`` means "not given" (they are left out of the request).
_NONE_IS_UNSET = ("temperature", "max_tokens", "stop", "stream_options")
#: The keys of OpenAI's ``stream_options`` the client understands.
_STREAM_OPTIONS = frozenset({"include_usage"})
#: Options the client honours itself: passed only to providers that declare them.
_HONOURED = frozenset({"stream_options"})


def _stream_flag(stream: object) -> bool:
    """``stream`` as a bool: True, False, or None (OpenAI's SDK takes None for False).
    Anything else is refused: ``bool("false")`` is True, and a stream nobody asked for is an
    iterator where an answer was expected."""
    if stream is None:
        return False
    if stream.__class__ is not bool:
        raise InvalidRequest(f"stream must be True, False or None, got {stream!r}")
    return stream is True


def _include_usage(stream_options: object, stream: bool, given_here: bool) -> bool:
    """What OpenAI's ``stream_options`` asks of a stream: whether to report usage.

    The client honours it itself, whichever provider answers: usage rides on the last chunk
    when the provider reports it (see the module's docstring), and ``include_usage=False``
    leaves it out. It is passed on, unchanged, to the providers that declare it as an option
    (the OpenAI-compatible one), and not to the others, which would refuse the call. Like
    OpenAI, it is refused on a call that does not stream (a client default applies to
    streams only).

    Raises:
        InvalidRequest: not a dict of known keys with booleans, or given without a stream.
    """
    if not isinstance(stream_options, dict):
        raise InvalidRequest(
            "stream_options must be a dict such as {'include_usage': True}, "
            f"got {type(stream_options).__name__}"
        )
    unknown = sorted(map(str, stream_options.keys() - _STREAM_OPTIONS))
    if unknown:
        raise InvalidRequest(
            f"stream_options has unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_STREAM_OPTIONS))})"
        )
    for key, value in stream_options.items():
        if not isinstance(value, bool):
            raise InvalidRequest(f"stream_options[{key!r}] must be True or False, got {value!r}")
    if not stream and given_here:
        raise InvalidRequest("stream_options is only allowed with stream=True")
    return bool(stream_options.get("include_usage", True))


# -- the shapes ---------------------------------------------------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatCompletionMessage(_Shape):
    """The answer. ``reasoning`` is the reasoning the model sent apart from it (vLLM's,
    Ollama's and OpenRouter's ``reasoning``, DeepSeek's and llama.cpp's ``reasoning_content``),
    or None when it sent none. Dumped back into a conversation, it is not sent upstream
    again (see the OpenAI-compatible endpoints' ``send_reasoning``)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning: str | None = None


class Choice(_Shape):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: FinishReasonName


class ChatCompletion(_Shape):
    """A whole answer, as OpenAI's ``chat.completion`` object; ``provider`` says who answered.

    ``usage`` is what the provider reported, or None: llmrelay never invents token counts.
    """

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    provider: str


class ChoiceDelta(_Shape):
    """A piece of the answer (``content``) or of the model's reasoning (``reasoning``)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None


class ChunkChoice(_Shape):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: FinishReasonName | None = None


class ChatCompletionChunk(_Shape):
    """One piece of a streamed answer, as OpenAI's ``chat.completion.chunk``.

    Every chunk has one choice. The first carries ``delta.role == "assistant"``; the last
    carries ``finish_reason`` and, when the provider reported it, ``usage``. ``provider`` names
    the provider answering (the same on every chunk: fallback happens only before the first).
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    provider: str


class Model(_Shape):
    """A model as OpenAI lists it, plus the providers serving it in the order tried."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    providers: list[str]


class ModelList(_Shape):
    """OpenAI's ``{"object": "list", "data": [...]}``; iterate it, or read ``data``."""

    object: Literal["list"] = "list"
    data: list[Model]

    def __iter__(self) -> Iterator[Model]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Model:
        return self.data[index]


#: ``ChatCompletionChunk.model_validate`` without its Python layer: it runs for every chunk of
#: a stream (keeping the validator's code warm, unlike a whole answer's one model per call).
_new_chunk = cast(
    "Callable[[dict[str, Any]], ChatCompletionChunk]",
    ChatCompletionChunk.__pydantic_validator__.validate_python,
)


def list_models(registry: Registry | None = None) -> ModelList:
    """Every model and alias, with the providers serving it in the order they would be tried
    (by :func:`~llmrelay._routing.route`, so disabled providers are left out).

    A provider's model id that a request would read as another provider pinned (``a/llama3``
    listed by ``r`` while a provider ``a`` exists) is listed as ``r/a/llama3``, the name that
    reaches it. Linear in the number of models: a refreshed list may hold tens of thousands.
    """
    from ._config import get_config
    from ._registry import get_registry
    from ._routing import ordered, route

    registry, config = registry or get_registry(), get_config()
    listed = registry.listing()
    entries: dict[str, list[str]] = {}
    for name in dict.fromkeys([*listed, *config.aliases]):
        prefix, pin, _ = name.partition("/")
        pinned = pin and prefix in registry.providers
        try:
            if name in config.aliases or pinned:  # read as a request reads it: route()
                candidates = route(name, registry, config)
            else:  # (from the listing: no search per name)
                candidates = ordered(name, listed[name], registry, config)
        except LookupError:  # served only by disabled providers, or an alias to nothing
            candidates = []
        if candidates:
            entries.setdefault(name, [p.name for p, _ in candidates])
        if pinned and name in listed and name not in config.aliases:
            # A model id that reads as provider ``prefix`` pinned ("a/llama3" listed by "r"
            # while a provider "a" exists): its own providers serve it as "r/a/llama3".
            for provider, _ in listed[name]:
                if not config.disabled(provider.name):
                    entries.setdefault(f"{provider.name}/{name}", [provider.name])
    return ModelList(
        data=[Model(id=name, owned_by=names[0], providers=names) for name, names in entries.items()]
    )


#: The generator of completion ids: its own, seeded from os.urandom (and again in a forked
#: child), so a program that seeds ``random`` cannot make two runs, or a parent and its child,
#: repeat ids; and no system call per answer, as ``os.urandom`` per id would make.
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def completion_id() -> str:
    """``chatcmpl-`` and 24 random hex digits, the shape of OpenAI's ids (the client's and the
    server's)."""
    # (bytes.hex(): 3.4k instructions against 4.7k for an f-string's ``:024x`` of the int)
    return "chatcmpl-" + _ids.getrandbits(96).to_bytes(12, "little").hex()


#: What validation leaves unset in a message without reasoning (its default, None, is set).
_UNSET_REASONING = frozenset({"reasoning"})


def _completion(completion: Completion, model: str, provider: str) -> ChatCompletion:
    """The ``ChatCompletion`` for a whole answer, built from values already checked.

    Every value is llmrelay's own or was checked on its way here (``checked_completion``: the
    text a ``str``, the finish reason and the usage validated models; ``create``: the model
    a ``str``), so they go in as they are, as ``model_construct`` would put them, without its
    Python layer: 37.4k → 35.1k instructions per answer (callgrind), and no run through
    pydantic-core's validator for three nested models, code that under load has left the
    CPU's instruction cache by the time the next answer comes. ``tests/test_client.py`` pins
    the result to what validation gives.
    """
    message = built(
        ChatCompletionMessage,
        {"role": "assistant", "content": completion.text, "reasoning": completion.reasoning},
        {},
        _UNSET_REASONING if completion.reasoning is None else None,
    )
    choice = built(
        Choice,
        {"index": 0, "message": message, "finish_reason": completion.finish_reason.reason},
        {},
    )
    return built(
        ChatCompletion,
        {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": completion.usage,
            "provider": provider,
        },
        {},
    )


def _shown_model(model: str) -> str:
    if model:
        return model
    from ._config import get_config

    return get_config().default_model


# -- async --------------------------------------------------------------------------------------


class AsyncCompletionStream(AsyncIterator[ChatCompletionChunk]):
    """The chunks of one streamed answer. Close it (or use ``async with``) to stop early."""

    def __init__(
        self,
        stream: RelayStream,
        model: str,
        owner: AsyncClient | None = None,
        include_usage: bool = True,
    ) -> None:
        self._stream = stream
        self._model = model
        self._owner = owner
        self._include_usage = include_usage
        self._id = completion_id()
        self._created = int(time.time())
        self._first = True
        self._usage: Usage | None = None
        self._done = False
        self._reading = False  # a read is under way (in this task or another)

    @property
    def provider(self) -> str:
        """The provider answering (after a fallback, the one that took over)."""
        return self._stream.provider

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._done:
            raise StopAsyncIteration
        if self._reading:  # refused before anything changes: the other read goes on
            raise RuntimeError(READ_BY_ANOTHER_TASK)
        self._reading = True
        try:
            while True:
                item = await self._stream.__anext__()
                if self._done:  # closed (by another task or thread) while this read waited
                    await self._stream.aclose()
                    raise StopAsyncIteration
                if isinstance(item, str):
                    return self._chunk(item, None)
                if isinstance(item, Reasoning):
                    if item.text:
                        return self._chunk(None, None, item.text)
                    continue
                if isinstance(item, Usage):
                    if self._include_usage:  # sent with the finish_reason, on the last chunk
                        self._usage = item
                    continue
                reason = item.reason
                break
        except BaseException:
            self._release()
            raise
        finally:
            self._reading = False
        self._release()
        # Closed at the FinishReason, not read on: the last chunk goes out now, whatever the
        # provider still does (reading on to [DONE], say).
        await self._stream.aclose()
        return self._chunk(None, reason)

    def _chunk(
        self, content: str | None, finish: FinishReasonName | None, reasoning: str | None = None
    ) -> ChatCompletionChunk:
        role: Literal["assistant"] | None = None
        if self._first:
            self._first, role = False, "assistant"
        delta: dict[str, Any] = {"role": role, "content": content}
        if reasoning is not None:
            delta["reasoning"] = reasoning
        # Validating plain data runs in pydantic-core: twice as fast as model_construct.
        return _new_chunk(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": finish,
                    }
                ],
                "usage": self._usage if finish is not None else None,
                "provider": self._stream.provider,
            }
        )

    def _release(self) -> None:
        self._done = True
        if self._owner is not None:
            self._owner._streams.discard(self)

    async def aclose(self) -> None:
        """Stop early and release the connection (nothing happens if the stream is over)."""
        self._release()
        await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: Literal[False] = False,
        timeout: float | None = ...,  # noqa: ASYNC109 (the provider deadline)
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: Literal[True],
        timeout: float | None = ...,  # noqa: ASYNC109 (the provider deadline)
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> AsyncCompletionStream: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: bool,
        timeout: float | None = ...,  # noqa: ASYNC109 (the provider deadline)
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> ChatCompletion | AsyncCompletionStream: ...

    async def create(
        self, *, model: str, messages: Messages, stream: bool = False, **options: Any
    ) -> ChatCompletion | AsyncCompletionStream:
        """Ask ``model``; returns a ``ChatCompletion``, or a stream of chunks with ``stream=True``.

        ``model`` is a model name, an alias, or ``provider/model`` to pin one provider (empty:
        the configured default). Options: ``timeout`` (total seconds for the whole call,
        retries and fallback included; None for none), ``max_retries``, ``proxy``,
        ``drop_unsupported`` (leave out options a provider does not support instead of
        refusing them), ``stream_options`` (OpenAI's; ``{"include_usage": False}`` leaves
        usage out of a stream), and request options
        such as ``temperature``, ``max_tokens`` and ``stop`` (None leaves them out), passed to
        providers that support them. Everything is checked before any I/O.

        Raises:
            InvalidRequest, ModelNotFound, ConfigError: before any I/O.
            ProviderError, AllProvidersFailed: when no provider could answer.
        """
        client = self._client
        client._attach()
        if stream.__class__ is not bool:
            stream = _stream_flag(stream)
        # ``options`` is this call's own dict (from **options): no copy without defaults.
        merged = {**client.defaults, **options} if client.defaults else options
        if merged:  # (no loop at all for a call without options)
            for name in _NONE_IS_UNSET:
                if name in merged and merged[name] is None:
                    del merged[name]
        proxy = merged.pop("proxy", None)
        include_usage = True
        honoured: frozenset[str] = frozenset()
        if "stream_options" in merged:  # honoured here, passed on only where understood
            include_usage = _include_usage(
                merged["stream_options"], stream, "stream_options" in options
            )
            if stream:
                honoured = _HONOURED
            else:  # a client default, for streams only
                del merged["stream_options"]
        merged["stream"] = stream  # (merged is this call's own dict, or a new one)
        chunks = relay_options(model, messages, proxy, None, merged, honoured)
        if stream:
            answer = AsyncCompletionStream(chunks, _shown_model(model), client, include_usage)
            client._streams.add(answer)
            return answer
        completion = await chunks.collect()
        return _completion(completion, _shown_model(model), chunks.provider)


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = AsyncCompletions(client)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> ModelList:
        """Every model, with the providers serving it in the order they would be tried."""
        if self._client.closed:
            raise RuntimeError("this AsyncClient is closed; create a new one")
        return list_models()


#: The AsyncClients that made requests on each event loop and are not closed yet: the last one
#: to close on a loop closes the loop's shared HTTP sessions, and never one still in use.
_clients_on: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


class AsyncClient:
    """The async client. ``async with AsyncClient() as client: ...`` closes what it opened.

    Keyword arguments given here (``timeout``, ``max_retries``, ``proxy``, request options)
    are defaults for every call; a call's own arguments win.

    HTTP connections are shared by everything llmrelay does on an event loop. Closing a client
    closes its unfinished streams; the shared sessions close with the last client still open
    on that loop (or with the loop itself), so one client closing never breaks another's
    requests.
    """

    def __init__(self, **defaults: Any) -> None:
        clash = sorted(defaults.keys() & {"model", "messages", "stream"})
        if clash:
            raise InvalidRequest(
                f"{', '.join(map(repr, clash))} cannot be a client default; "
                "pass it to chat.completions.create()"
            )
        self.defaults = defaults
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)
        self._streams: weakref.WeakSet[AsyncCompletionStream] = weakref.WeakSet()
        self._closed = False
        self._closes_sessions = False  # the last user of its loop: aclose() closes the sessions
        self._attached_to: weakref.ref[asyncio.AbstractEventLoop] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def _attach(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncClient is closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._attached_to is not None and self._attached_to() is loop:
            return  # already among the loop's users (only aclose() takes it out)
        users = _clients_on.get(loop)
        if users is None:
            users = _clients_on[loop] = weakref.WeakSet()
        users.add(self)
        self._attached_to = weakref.ref(loop)

    async def aclose(self) -> None:
        """Close this client's unfinished streams, and the loop's sessions if it is the last.

        Closed from the first call on (no new request starts); a close that was cancelled or
        failed midway is finished by calling ``aclose()`` again, and one that finished has
        nothing left to do (no stream, not among the loop's users, no sessions owed).
        """
        self._closed = True
        for stream in builtins.list(self._streams):
            await stream.aclose()
        loop = asyncio.get_running_loop()
        users = _clients_on.get(loop)
        if users is not None and self in users:  # else: no request on this loop, nothing to close
            users.discard(self)  # at once: a client starting meanwhile is a new user
            if not users:
                del _clients_on[loop]
                self._closes_sessions = True
        if self._closes_sessions:  # (still true after an interrupted close: finished here)
            from ._transport import aclose

            await aclose()
            self._closes_sessions = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- sync ---------------------------------------------------------------------------------------


class _LoopThread:
    """An event loop in a daemon thread, started on first use; coroutines are submitted to it.

    Calls block the calling thread only, so they work from code that runs a loop of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        _runners.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's loop has no thread here (only the forking thread
        survives a fork), so the next call starts a loop of its own instead of waiting for
        ever on one nobody runs. The parent's loop is kept, unclosed: its file descriptors are
        shared with the parent, and closing it here would touch what the parent still uses."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        if self._loop is not None:
            _left_by_fork.append(self._loop)
        self._loop = self._thread = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Client is closed; create a new one")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._main, args=(loop,), name="llmrelay-client", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            if threading.current_thread() is self._thread:
                raise RuntimeError("a Client cannot be called from its own event loop thread")
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the thread's loop and wait for its result."""
        try:
            loop = self._running_loop()
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            while True:
                # In slices, not one wait: Python runs a pending KeyboardInterrupt (Ctrl-C on
                # Windows, ``_thread.interrupt_main()``) only between two waits.
                try:
                    return future.result(timeout=_WAIT_SLICE)
                except TimeoutError:
                    if future.done():  # the coroutine's own TimeoutError (ProviderTimeout)
                        return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): stop the work too
            raise

    def close(self, aclose: Callable[[], Awaitable[None]]) -> None:
        """Run ``aclose``, end the loop's tasks and async generators, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return  # never started
        if threading.current_thread() is thread:
            # Garbage-collected on the loop's own thread: nothing can wait for it here, so the
            # shutdown runs as a task and the thread ends by itself.
            loop.create_task(_shutdown(aclose))
            return
        asyncio.run_coroutine_threadsafe(_shutdown(aclose), loop)
        thread.join()


#: Every sync client's loop thread, to reset in a forked child (see ``_after_fork``).
_runners: weakref.WeakSet[_LoopThread] = weakref.WeakSet()
#: Loops that belonged to a parent process: kept, never used or closed (see ``_after_fork``).
_left_by_fork: list[asyncio.AbstractEventLoop] = []
#: Seconds a sync call waits at a time, between two chances to run a pending interrupt.
_WAIT_SLICE = 0.25


def _reset_runners_after_fork() -> None:
    for runner in list(_runners):
        runner._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_runners_after_fork)


async def _shutdown(aclose: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(30):
            # Readers first: a stream being read cannot be closed under its reader's feet.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for step in (aclose, loop.shutdown_asyncgens, loop.shutdown_default_executor):
                try:
                    await step()
                except Exception:
                    log.warning("closing the llmrelay Client failed in a step", exc_info=True)
    except Exception:
        log.warning("closing the llmrelay Client's event loop failed", exc_info=True)
    finally:
        loop.call_soon(loop.stop)


async def _next_chunk(stream: AsyncCompletionStream) -> ChatCompletionChunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class CompletionStream(Iterator[ChatCompletionChunk]):
    """The synchronous face of :class:`AsyncCompletionStream`."""

    def __init__(self, stream: AsyncCompletionStream, client: _Owned) -> None:
        self._stream = stream
        self._client = client  # keeps the client's loop alive while the stream is

    @property
    def provider(self) -> str:
        return self._stream.provider

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._stream._done:  # over, or closed (by the client too)
            raise StopIteration
        try:
            chunk = self._client.runner.run(_next_chunk(self._stream))
        except concurrent.futures.CancelledError:
            if self._client.closed:  # the client was closed while this read was waiting
                raise StopIteration from None
            raise
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Stop early and release the connection (nothing happens if the stream is over)."""
        if not self._stream._done:
            self._client.runner.run(self._stream.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Owned:
    """What a :class:`Client` owns, its AsyncClient and its loop thread, closed together and
    once: by ``close()``, or as soon as nothing refers to it any more.

    The client, its ``chat`` and ``models``, and its streams all hold this; it holds none of
    them. So there is no reference cycle, and an unclosed client is closed when its last user
    is gone (a one-liner, a notebook cell run again), not whenever the garbage collector next
    looks for cycles; while a ``client.chat.completions.create(...)`` or a stream runs, the
    client is alive even when nothing else holds it.
    """

    def __init__(self, async_client: AsyncClient) -> None:
        self.async_client = async_client
        self.runner = _LoopThread()
        self.finalizer = weakref.finalize(self, self.runner.close, async_client.aclose)

    @property
    def closed(self) -> bool:
        return not self.finalizer.alive


class Completions:
    def __init__(self, client: _Owned) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: Literal[False] = False,
        timeout: float | None = ...,
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: Literal[True],
        timeout: float | None = ...,
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> CompletionStream: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Messages,
        stream: bool,
        timeout: float | None = ...,
        max_retries: int = ...,
        proxy: str | None = ...,
        temperature: float | None = ...,
        max_tokens: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        drop_unsupported: bool = ...,
        **options: Any,
    ) -> ChatCompletion | CompletionStream: ...

    def create(
        self, *, model: str, messages: Messages, stream: bool = False, **options: Any
    ) -> ChatCompletion | CompletionStream:
        """As :meth:`AsyncCompletions.create`, blocking; a stream is a plain iterator."""
        client = self._client
        completions = client.async_client.chat.completions
        stream = _stream_flag(stream)
        try:
            if stream:
                chunks = client.runner.run(
                    completions.create(model=model, messages=messages, stream=True, **options)
                )
                return CompletionStream(chunks, client)
            answer: ChatCompletion = client.runner.run(
                completions.create(model=model, messages=messages, stream=False, **options)
            )
        except concurrent.futures.CancelledError:
            if client.closed:  # closed by another thread while this call waited
                raise RuntimeError(
                    "this Client was closed while the request was in flight"
                ) from None
            raise
        return answer


class Chat:
    def __init__(self, client: _Owned) -> None:
        self.completions = Completions(client)


class Models:
    def __init__(self, client: _Owned) -> None:
        self._client = client

    def list(self) -> ModelList:
        """Every model, with the providers serving it in the order they would be tried."""
        if self._client.closed:
            raise RuntimeError("this Client is closed; create a new one")
        return list_models()


class Client:
    """The synchronous client, for scripts. Use it as a context manager, or call ``close()``.

    Its event loop thread starts on the first request. ``close()`` (or leaving the ``with``
    block) closes its streams and connections and stops the thread; a client that is never
    closed is closed when it is garbage-collected or at interpreter exit.
    """

    def __init__(self, **defaults: Any) -> None:
        self._owned = _Owned(AsyncClient(**defaults))
        self.chat = Chat(self._owned)
        self.models = Models(self._owned)

    @property
    def defaults(self) -> dict[str, Any]:
        return self._owned.async_client.defaults

    @property
    def closed(self) -> bool:
        return self._owned.closed

    def close(self) -> None:
        """Close streams and connections and stop the client's event loop thread."""
        self._owned.finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
