"""One benchmark case in one fresh process; prints one JSON line on stdout.

Stdlib at the top, the client under test imported inside ``make_client``, so the same file
runs in the workspace's venv (llmrelay, raw aiohttp, openai) and in the throwaway g4f venv.

  pizzagpt protocol (POST /api/chatx-completion):
    --client llmrelay         Pizzagpt.create_async_generator(..., base_url=replica).text()
    --client aiohttp-shared   raw aiohttp, one shared ClientSession (the reference)
    --client aiohttp-small-reads  the same, its connections reading 64 KiB at a time as
                              llmrelay's do (see core/llmrelay/_connectors.py)
    --client g4f              g4f.Provider.Pizzagpt (g4f 0.5.3.2), its url pointed at the replica
    --client aiohttp-contract raw aiohttp inside the provider contract's bare shape (pydantic
                              messages, an async generator, a deadline): the floor of the design
  OpenAI protocol (POST /v1/chat/completions):
    --client llmrelay         AsyncClient().chat.completions.create(model="bench/llama3", ...),
                              through the OpenAI-compatible provider (endpoint from
                              LLMRELAY_CONFIG, which run.py writes)
    --client aiohttp-shared   raw aiohttp, one shared ClientSession, minimal SSE parsing
    --client aiohttp-small-reads  the same, reading 64 KiB at a time
    --client openai           openai.AsyncOpenAI(base_url=replica/v1)
    --client aiohttp-contract raw aiohttp inside the contracts' bare shape for a whole answer
                              (whole answers only): pydantic messages, an async generator,
                              a deadline, per-request headers, a pydantic ChatCompletion

Every client asks the same thing; in stream mode every client sends
``stream_options: {"include_usage": true}`` (llmrelay's provider always does), so all of
them receive the same bytes. A unit is a request, or in stream mode a content chunk (a
non-empty ``delta.content``). Timing excludes imports, client setup and the warm-up requests.

``--profile FILE`` runs the timed part under cProfile and dumps the stats to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PIZZA_HEADERS = {  # the header set g4f's Pizzagpt sends (and llmrelay's, but for the UA)
    "accept": "application/json",
    "accept-language": "en-US,en;q=0.9",
    "content-type": "application/json",
    "user-agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36"
    ),
    "x-secret": "Marinara",
}
MESSAGES = [{"role": "user", "content": "Say hello in Italian."}]
MISUSE = "Misuse detected. please get in touch"
#: The endpoint name and model run.py writes into the llmrelay configuration.
ENDPOINT = "bench"
MODEL = "llama3"
#: The suffix of a client's name in the results when its heap was not settled after warm-up.
UNSETTLED = "@unsettled"

One = Callable[[], Awaitable[int]]
Close = Callable[[], Awaitable[None]]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def minor_faults() -> int:
    """The process's minor page faults so far: a socket read served by ``mmap`` (see
    bench/README.md, "allocation history") faults on every read."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class GCClock:
    """The garbage collector's work while it is on: collections per generation and the time
    they took (``gc.callbacks``, called around each collection: no cost in between)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = 0.0
        self._started = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._note)

    def stop(self) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def check_answer(text: object) -> None:
    if not isinstance(text, str) or len(text) < 10:
        raise RuntimeError(f"unexpected answer {text!r}")


class LazySession:
    """The raw clients' one shared aiohttp session, made on first use (inside the loop).

    ``small_reads``: its connections read 64 KiB at a time, not asyncio's 256 KiB, as
    llmrelay's do (core/llmrelay/_connectors.py): the same change, on raw aiohttp.
    """

    def __init__(self, small_reads: bool = False, **kwargs: Any) -> None:
        self._small_reads = small_reads
        self._kwargs = kwargs
        self._session: Any = None

    def get(self) -> Any:  # aiohttp.ClientSession
        if self._session is None:
            import aiohttp

            kwargs = dict(self._kwargs)
            if self._small_reads:
                kwargs["connector"] = small_reads_connector()
            self._session = aiohttp.ClientSession(**kwargs)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def small_reads_connector() -> Any:  # aiohttp.TCPConnector
    """A TCPConnector whose connections read at most 64 KiB at a time (asyncio's plain
    sockets read 256 KiB, which glibc serves with mmap, mremap and munmap on every read)."""
    import aiohttp

    class SmallReads(aiohttp.TCPConnector):
        async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
            connection = await super().connect(req, traces, timeout)
            if getattr(connection.transport, "max_size", 0) > 64 * 1024:
                connection.transport.max_size = 64 * 1024
            return connection

    return SmallReads()


def contract_messages() -> Callable[[Any], list[Any]]:
    """The contract-shaped clients' message check: a list of frozen pydantic models."""
    from typing import Literal

    import pydantic

    class Message(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True)
        role: Literal["system", "user", "assistant"]
        content: str

    return pydantic.TypeAdapter(list[Message]).validate_python


# --------------------------------------------------------------------------- pizzagpt clients
def pizzagpt_client(name: str, base: str) -> tuple[One, Close]:
    if name == "llmrelay":
        import llmrelay
        from llmrelay_pizzagpt import Pizzagpt

        async def one() -> int:
            text = await Pizzagpt.create_async_generator(
                "gpt-4o-mini", MESSAGES, base_url=base
            ).text()
            check_answer(text)
            return 1

        async def close() -> None:
            await llmrelay.aclose()

        return one, close

    if name == "g4f":
        from g4f.Provider import Pizzagpt as G4fPizzagpt  # g4f==0.5.3.2

        G4fPizzagpt.url = base

        async def one() -> int:
            parts = [
                chunk async for chunk in G4fPizzagpt.create_async_generator("gpt-4o-mini", MESSAGES)
            ]
            check_answer(parts[0] if parts else None)
            return 1

        async def close() -> None:
            return None

        return one, close

    if name in ("aiohttp-shared", "aiohttp-small-reads"):
        url = base + "/api/chatx-completion"
        shared = LazySession(
            small_reads=name == "aiohttp-small-reads",
            headers=dict(PIZZA_HEADERS, origin=base, referer=base + "/en"),
        )

        async def one() -> int:
            async with shared.get().post(url, json={"question": MESSAGES[-1]["content"]}) as resp:
                resp.raise_for_status()
                data = await resp.json()
            content = data.get("answer", data).get("content")
            check_answer(content)
            if MISUSE in content:
                raise ValueError(content)
            return 1

        return one, shared.close

    if name == "aiohttp-contract":
        # The floor of any design with llmrelay's provider contract, and nothing else of it:
        # the raw client above, with the messages validated into pydantic models and the
        # answer produced by an async generator (text, then a finish reason) read with
        # ``async for``, under a total deadline. No configuration, routing, retries, proxies
        # or typed errors: what llmrelay adds beyond this is what those cost.
        import aiohttp

        validate = contract_messages()
        url = base + "/api/chatx-completion"
        headers = dict(PIZZA_HEADERS, origin=base, referer=base + "/en")
        shared = LazySession()  # no session headers: a shared session serves every provider

        async def generate(messages: list[Any]) -> Any:  # AsyncGenerator[str, None]
            session = shared.get()
            body = json.dumps({"question": messages[-1].content}).encode()
            timeout = aiohttp.ClientTimeout(total=120.0, sock_connect=10.0)
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                resp.raise_for_status()
                data = json.loads(await resp.read())
            content = data.get("answer", data).get("content")
            if MISUSE in content:
                raise ValueError(content)
            yield content
            yield "stop"

        async def one() -> int:
            parts = [chunk async for chunk in generate(validate(MESSAGES))]
            check_answer(parts[0])
            return 1

        return one, shared.close

    raise SystemExit(f"unknown pizzagpt client {name!r}")


# --------------------------------------------------------------------------- OpenAI clients
def openai_client(name: str, base: str, stream: bool) -> tuple[One, Close]:
    usage_opt = {"include_usage": True}

    if name == "llmrelay":
        import llmrelay

        try:
            AsyncClient = llmrelay.AsyncClient  # type: ignore[attr-defined]
        except AttributeError:  # not re-exported yet (issue 5 is in progress)
            from llmrelay._client import AsyncClient
        client = AsyncClient()
        model = f"{ENDPOINT}/{MODEL}"

        async def one() -> int:
            if not stream:
                r = await client.chat.completions.create(model=model, messages=MESSAGES)
                check_answer(r.choices[0].message.content)
                return 1
            n = 0
            chunks = await client.chat.completions.create(
                model=model, messages=MESSAGES, stream=True
            )
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    n += 1
            return n

        async def close() -> None:
            await client.aclose()

        return one, close

    if name == "openai":
        from openai import AsyncOpenAI

        oai = AsyncOpenAI(base_url=base + "/v1", api_key="x")

        async def one() -> int:
            if not stream:
                r = await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
                check_answer(r.choices[0].message.content)
                return 1
            n = 0
            chunks = await oai.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options=usage_opt,  # type: ignore[arg-type]
            )
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    n += 1
            return n

        async def close() -> None:
            await oai.close()

        return one, close

    if name in ("aiohttp-shared", "aiohttp-small-reads"):
        url = base + "/v1/chat/completions"
        shared = LazySession(
            small_reads=name == "aiohttp-small-reads", headers={"Authorization": "Bearer x"}
        )

        async def one() -> int:
            session = shared.get()
            body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
            if not stream:
                async with session.post(url, json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                check_answer(data["choices"][0]["message"]["content"])
                return 1
            body["stream"] = True
            body["stream_options"] = usage_opt
            n = 0
            async with session.post(url, json=body) as resp:
                resp.raise_for_status()
                # Minimal SSE, right for "\n" and "\r\n" line ends (aiohttp's line reader
                # does not split a bare "\r"): an event ends at a blank line, its data lines
                # join with "\n" (one leading space dropped), comments and other fields are
                # skipped.
                pending: list[bytes] = []
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        pending.append(line[6:] if line[5:6] == b" " else line[5:])
                        continue
                    if line or not pending:
                        continue
                    payload = pending[0] if len(pending) == 1 else b"\n".join(pending)
                    pending = []
                    if payload == b"[DONE]":
                        break
                    obj = json.loads(payload)
                    if "error" in obj:
                        raise RuntimeError(obj["error"])
                    choices = obj.get("choices")
                    if choices and choices[0]["delta"].get("content"):
                        n += 1
            return n

        return one, shared.close

    if name == "aiohttp-contract" and not stream:
        # A lower bound for any design with llmrelay's contracts for a whole answer: their
        # bare shape, without their checks. Raw aiohttp on a session shared by every
        # provider (so per-request headers), a per-call deadline, pydantic-validated
        # messages, an async generator (text, usage, finish reason) read with ``async for``,
        # and a pydantic ChatCompletion in OpenAI's shape as the result. No chunk-order or
        # error-body checks, configuration, routing, fallback, retries, proxies or typed
        # errors.
        from typing import Literal

        import aiohttp
        import pydantic

        class Message(pydantic.BaseModel):
            role: Literal["assistant"]
            content: str

        class Choice(pydantic.BaseModel):
            index: int
            message: Message
            finish_reason: str

        class TokenUsage(pydantic.BaseModel):
            prompt_tokens: int
            completion_tokens: int
            total_tokens: int

        class ChatCompletion(pydantic.BaseModel):
            id: str
            object: Literal["chat.completion"]
            created: int
            model: str
            choices: list[Choice]
            usage: TokenUsage | None

        validate = contract_messages()
        to_json = pydantic.TypeAdapter(list[Any]).dump_python
        url = base + "/v1/chat/completions"
        headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
        shared = LazySession()

        async def generate(messages: list[Any]) -> Any:  # AsyncGenerator[object, None]
            session = shared.get()
            body = json.dumps({"model": MODEL, "messages": to_json(messages)}).encode()
            timeout = aiohttp.ClientTimeout(total=120.0, sock_connect=10.0)
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                resp.raise_for_status()
                data = json.loads(await resp.read())
            choice = data["choices"][0]
            yield choice["message"]["content"]
            yield data.get("usage")
            yield choice.get("finish_reason") or "stop"

        async def one() -> int:
            parts = [chunk async for chunk in generate(validate(MESSAGES))]
            content, usage, reason = parts
            answer = ChatCompletion.model_validate(
                {
                    "id": f"chatcmpl-{os.urandom(12).hex()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": reason,
                        }
                    ],
                    "usage": usage,
                }
            )
            check_answer(answer.choices[0].message.content)
            return 1

        return one, shared.close

    raise SystemExit(f"unknown openai client {name!r}")


# --------------------------------------------------------------------------- driver
async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://127.0.0.1:{args.port}"
    t_setup = time.perf_counter()
    if args.proto == "pizzagpt":
        one, close = pizzagpt_client(args.client, base)
    else:
        one, close = openai_client(args.client, base, args.stream)
    setup_s = time.perf_counter() - t_setup

    t = time.perf_counter()
    first_units = await one()
    first_s = time.perf_counter() - t
    for _ in range(max(0, args.warmup - 1)):
        await one()
    if args.settle:
        # The first request imported what the client needs (aiohttp, plugins, models): tens of
        # thousands of objects that the garbage collector goes on examining, generation by
        # generation, until one full collection moves them to the oldest. Left alone, that
        # start-up work (a full collection of 20-30 ms, and costlier young ones meanwhile)
        # falls into the timed part: once per process, whatever its length. Settled here, for
        # every client alike, the timed part measures the steady state. ``--no-settle``
        # measures as the anchors' harness does.
        gc.collect()

    errors: list[str] = []
    units = 0

    async def guarded(sem: asyncio.Semaphore) -> None:
        nonlocal units
        async with sem:
            try:
                got = await one()  # not `units += await one()`: that reads units first
                units += got
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    collector = GCClock()
    collector.start()
    faults0 = minor_faults()
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if args.concurrency <= 1:
        for _ in range(args.n):
            try:
                units += await one()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    else:
        sem = asyncio.Semaphore(args.concurrency)
        await asyncio.gather(*(guarded(sem) for _ in range(args.n)))
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    faults = minor_faults() - faults0
    collector.stop()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    await close()
    await asyncio.sleep(0.05)  # let transports settle (not timed)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "client": args.client if args.settle else f"{args.client}{UNSETTLED}",
        "settled": args.settle,
        "proto": args.proto,
        "stream": args.stream,
        "n": args.n,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "client_minor_faults": faults,
        "client_gc_s": collector.seconds,
        "client_gc_collections": collector.collections,
        "rps": args.n / elapsed,
        "units": units,
        "units_per_s": units / elapsed,
        "first_request_s": first_s,
        "first_units": first_units,
        "client_setup_s": setup_s,
        "maxrss_kib": ru.ru_maxrss,
        "errors": len(errors),
        "error_samples": errors[:5],
        "python": sys.version.split()[0],
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--client", required=True)
    parser.add_argument("--proto", choices=["pizzagpt", "openai"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the timed part into FILE")
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="no full garbage collection between the warm-up and the timed part",
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
