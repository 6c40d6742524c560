"""The OpenAI-shaped client: ``client.chat.completions.create(model=..., messages=...)``.

``AsyncClient`` is the client; ``Client`` is the same for scripts, running the async client on
an event loop of its own in a background thread, so it also works from code that already runs
a loop (a notebook, a web handler). The objects returned have OpenAI's shape, plus ``provider``
naming the provider that answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from ._relay import RelayStream, relay
from ._types import FinishReason, Messages, Usage

__all__ = [
    "AsyncClient",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChunkChoice",
    "Client",
    "Model",
]

T = TypeVar("T")


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatCompletionMessage(_Shape):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(_Shape):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str


class ChatCompletion(_Shape):
    """A whole answer, as OpenAI's ``chat.completion`` object; ``provider`` says who answered."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    provider: str


class ChoiceDelta(_Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Shape):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Shape):
    """One piece of a streamed answer, as OpenAI's ``chat.completion.chunk``.

    The last chunk carries ``finish_reason``; a chunk with empty ``choices`` carries ``usage``
    when the provider reported it.
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


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class AsyncCompletionStream(AsyncIterator[ChatCompletionChunk]):
    """The chunks of one streamed answer. Close it (or use ``async with``) to stop early."""

    def __init__(self, stream: RelayStream, model: str) -> None:
        self._stream = stream
        self._model = model
        self._id = _completion_id()
        self._created = int(time.time())
        self._done = False

    @property
    def provider(self) -> str:
        return self._stream.provider

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._done:
            raise StopAsyncIteration
        item = await self._stream.__anext__()
        if isinstance(item, str):
            choice = ChunkChoice.model_construct(
                index=0, delta=ChoiceDelta.model_construct(content=item), finish_reason=None
            )
            return self._chunk([choice], None)
        if isinstance(item, Usage):
            return self._chunk([], item)
        self._done = True
        await self._stream.aclose()
        choice = ChunkChoice.model_construct(
            index=0, delta=ChoiceDelta.model_construct(), finish_reason=item.reason
        )
        return self._chunk([choice], None)

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_construct(
            id=self._id,
            object="chat.completion.chunk",
            created=self._created,
            model=self._model,
            choices=choices,
            usage=usage,
            provider=self._stream.provider,
        )

    async def aclose(self) -> None:
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
        self, *, model: str, messages: Messages, stream: Literal[False] = False, **options: Any
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self, *, model: str, messages: Messages, stream: Literal[True], **options: Any
    ) -> AsyncCompletionStream: ...

    async def create(
        self, *, model: str, messages: Messages, stream: bool = False, **options: Any
    ) -> ChatCompletion | AsyncCompletionStream:
        """Ask ``model``; returns a ``ChatCompletion``, or a stream of chunks with ``stream=True``.

        Options: ``timeout``, ``max_retries``, ``proxy``, ``drop_unsupported``, and request
        options such as ``temperature``, ``max_tokens`` and ``stop``, passed to providers that
        support them. Everything is checked before any I/O.

        Raises:
            InvalidRequest, ModelNotFound: before any I/O.
            ProviderError, AllProvidersFailed: when no provider could answer.
        """
        merged = {**self._client.defaults, **options}
        proxy = merged.pop("proxy", None)
        chunks = relay(model, messages, proxy=proxy, stream=stream, **merged)
        if stream:
            return AsyncCompletionStream(chunks, model)
        completion = await chunks.collect()
        return ChatCompletion.model_construct(
            id=_completion_id(),
            object="chat.completion",
            created=int(time.time()),
            model=model,
            choices=[
                Choice.model_construct(
                    index=0,
                    message=ChatCompletionMessage.model_construct(
                        role="assistant", content=completion.text
                    ),
                    finish_reason=completion.finish_reason.reason,
                )
            ],
            usage=completion.usage,
            provider=chunks.provider,
        )


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = AsyncCompletions(client)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[Model]:
        """Every model, with the providers serving it in the order they would be tried."""
        return list_models()


def list_models() -> list[Model]:
    from ._config import get_config
    from ._registry import get_registry
    from ._routing import route

    registry, config = get_registry(), get_config()
    names = [*registry.models(), *config.aliases]
    models = []
    for name in dict.fromkeys(names):
        try:
            providers = [p.name for p, _ in route(name, registry, config)]
        except LookupError:
            continue
        models.append(Model(id=name, owned_by=providers[0], providers=providers))
    return models


class AsyncClient:
    """The async client. ``async with AsyncClient() as client: ...`` closes its connections.

    Keyword arguments given here (``timeout``, ``max_retries``, ``proxy``, request options)
    are defaults for every call; a call's own arguments win.
    """

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)

    async def aclose(self) -> None:
        """Close the HTTP sessions this client's calls opened on the running loop."""
        from ._transport import aclose

        await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _LoopThread:
    """An event loop running in a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="llmrelay-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            from ._transport import aclose

            await aclose()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class CompletionStream(Iterator[ChatCompletionChunk]):
    """The synchronous face of :class:`AsyncCompletionStream`."""

    def __init__(self, stream: AsyncCompletionStream, runner: _LoopThread) -> None:
        self._stream = stream
        self._runner = runner

    @property
    def provider(self) -> str:
        return self._stream.provider

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ChatCompletionChunk:
        try:
            return self._runner.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._runner.run(self._stream.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self, *, model: str, messages: Messages, stream: Literal[False] = False, **options: Any
    ) -> ChatCompletion: ...

    @overload
    def create(
        self, *, model: str, messages: Messages, stream: Literal[True], **options: Any
    ) -> CompletionStream: ...

    def create(
        self, *, model: str, messages: Messages, stream: bool = False, **options: Any
    ) -> ChatCompletion | CompletionStream:
        """As :meth:`AsyncCompletions.create`, blocking."""
        client = self._client
        completions = client._async.chat.completions
        if stream:
            chunks = client._runner.run(
                completions.create(model=model, messages=messages, stream=True, **options)
            )
            return CompletionStream(chunks, client._runner)
        return client._runner.run(
            completions.create(model=model, messages=messages, stream=False, **options)
        )


class Chat:
    def __init__(self, client: Client) -> None:
        self.completions = Completions(client)


class Models:
    def list(self) -> list[Model]:
        return list_models()


class Client:
    """The synchronous client, for scripts. Use it as a context manager, or call ``close()``."""

    def __init__(self, **defaults: Any) -> None:
        self._async = AsyncClient(**defaults)
        self._runner = _LoopThread()
        self.chat = Chat(self)
        self.models = Models()

    def close(self) -> None:
        """Close connections and stop the client's event loop thread."""
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ += ["AsyncCompletionStream", "CompletionStream", "FinishReason"]
