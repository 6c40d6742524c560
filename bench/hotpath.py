"""Where llmrelay's per-request time goes, beside raw aiohttp: cProfile (concurrency 1 unless
``--concurrency`` says otherwise).

  uv run python bench/hotpath.py                    # pizzagpt, openai and openai-stream
  uv run python bench/hotpath.py --case pizzagpt --n 3000 --top 25
  uv run python bench/hotpath.py --case openai --concurrency 50

For each case it runs bench/client.py twice per client (llmrelay, raw aiohttp shared
session) against bench/replica.py: once plain (true CPU µs per unit) and once under cProfile
(``--profile``). It prints, per unit (request, or content chunk for the stream):

- the CPU cost of each client without the profiler, and the difference;
- profiled self time grouped by package (llmrelay, aiohttp, asyncio, pydantic, ...) for both
  clients and the difference: where llmrelay's extra time goes;
- llmrelay's own functions (core/ and providers/) by self time and by inclusive time.

cProfile inflates code that makes many small calls, so its µs are larger than the plain
run's: use them to rank, and the plain figures for the size of the gap. The ``.prof`` files
are kept in $TMPDIR/llmrelay-bench-profiles/ (browse with ``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from run import HERE, PY, ROOT, bench_replica

CASES = {
    # name: (proto, stream, default n, unit)
    "pizzagpt": ("pizzagpt", False, 3000, "req"),
    "openai": ("openai", False, 3000, "req"),
    "openai-stream": ("openai", True, 100, "chunk"),
}
STREAM_CHUNKS = 200


def run_client(
    client: str,
    proto: str,
    stream: bool,
    n: int,
    port: int,
    env: dict[str, str],
    prof: str,
    concurrency: int = 1,
) -> dict[str, Any]:
    argv = [
        PY,
        str(HERE / "client.py"),
        "--client",
        client,
        "--proto",
        proto,
        "--port",
        str(port),
        "--n",
        str(n),
        "--warmup",
        "50" if not stream else "5",
        "--concurrency",
        str(concurrency),
    ]
    if stream:
        argv.append("--stream")
    if prof:
        argv += ["--profile", prof]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def package_of(filename: str) -> str:
    """A short owner for a profiled function's file."""
    if filename.startswith(("~", "<")):
        return "builtins (C)"
    path = filename.replace("\\", "/")
    for marker, name in (
        ("/core/llmrelay/", "llmrelay (core)"),
        ("/providers/", "llmrelay (providers)"),
        ("/bench/client.py", "bench client"),
    ):
        if marker in path:
            return name
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib " + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    return path


def short(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    path = filename.replace("\\", "/")
    for marker in ("/core/", "/providers/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.basename(path)
    return f"{path}:{line} {name}"


def is_own(filename: str) -> bool:
    path = filename.replace("\\", "/")
    return "/core/llmrelay/" in path or "/providers/" in path


def by_package(stats: pstats.Stats) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        out[package_of(func[0])] += tt
    return out


def report_case(
    name: str, n: int, top: int, port: int, env: dict[str, str], out: Path, concurrency: int = 1
) -> None:
    proto, stream, _, unit = CASES[name]
    units = n * (STREAM_CHUNKS if stream else 1)
    plain: dict[str, dict[str, Any]] = {}
    profs: dict[str, pstats.Stats] = {}
    for client in ("aiohttp-shared", "llmrelay"):
        plain[client] = run_client(client, proto, stream, n, port, env, "", concurrency)
        prof = out / f"profile-{name}-{client}-c{concurrency}.prof"
        profiled = run_client(client, proto, stream, n, port, env, str(prof), concurrency)
        plain[client]["profiled_wall_s"] = profiled["elapsed_s"]
        profs[client] = pstats.Stats(str(prof))

    print(f"\n## {name}: concurrency {concurrency}, {n} requests, µs per {unit}\n")
    print("| client | wall µs | CPU µs | wall µs under cProfile |")
    print("|---|---:|---:|---:|")
    for client, r in plain.items():
        print(
            f"| {client} | {r['elapsed_s'] / units * 1e6:.1f} | "
            f"{r['client_cpu_s'] / units * 1e6:.1f} | {r['profiled_wall_s'] / units * 1e6:.1f} |"
        )
    gap_wall = (plain["llmrelay"]["elapsed_s"] - plain["aiohttp-shared"]["elapsed_s"]) / units
    gap_cpu = (plain["llmrelay"]["client_cpu_s"] - plain["aiohttp-shared"]["client_cpu_s"]) / units
    print(f"\nGap without profiler: {gap_wall * 1e6:+.1f} µs wall, {gap_cpu * 1e6:+.1f} µs CPU.")

    raw_pkg, ours_pkg = by_package(profs["aiohttp-shared"]), by_package(profs["llmrelay"])
    print("\nProfiled self time by package (µs per unit):\n")
    print("| package | raw aiohttp | llmrelay | difference |")
    print("|---|---:|---:|---:|")
    rows = sorted(
        set(raw_pkg) | set(ours_pkg), key=lambda k: -(ours_pkg.get(k, 0) - raw_pkg.get(k, 0))
    )
    for pkg in rows:
        a, b = raw_pkg.get(pkg, 0.0) / units * 1e6, ours_pkg.get(pkg, 0.0) / units * 1e6
        if max(a, b) >= 0.5:
            print(f"| {pkg} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")

    entries = profs["llmrelay"].stats.items()  # type: ignore[attr-defined]
    own = [(func, tt, ct, nc) for func, (_cc, nc, tt, ct, _c) in entries if is_own(func[0])]
    print(
        f"\nllmrelay's own functions by self time (top {top}; µs per {unit}, calls per {unit}):\n"
    )
    print("| function | self µs | inclusive µs | calls |")
    print("|---|---:|---:|---:|")
    for func, tt, ct, nc in sorted(own, key=lambda e: -e[1])[:top]:
        print(
            f"| {short(func)} | {tt / units * 1e6:.1f} | {ct / units * 1e6:.1f} | "
            f"{nc / units:.2f} |"
        )
    print(f"\nllmrelay's own functions by inclusive time (top {top}):\n")
    print("| function | inclusive µs | self µs | calls |")
    print("|---|---:|---:|---:|")
    for func, tt, ct, nc in sorted(own, key=lambda e: -e[2])[:top]:
        print(
            f"| {short(func)} | {ct / units * 1e6:.1f} | {tt / units * 1e6:.1f} | "
            f"{nc / units:.2f} |"
        )
    # The costliest third-party and stdlib functions llmrelay calls that raw aiohttp does not.
    raw_funcs = {
        func: tt
        for func, (_cc, _nc, tt, _ct, _c) in profs["aiohttp-shared"].stats.items()  # type: ignore[attr-defined]
    }
    extra = [
        (func, tt - raw_funcs.get(func, 0.0), nc)
        for func, (_cc, nc, tt, _ct, _c) in entries
        if not is_own(func[0])
    ]
    print(f"\nOther code, extra self time under llmrelay vs raw aiohttp (top {top}):\n")
    print("| function | extra self µs | calls (llmrelay) |")
    print("|---|---:|---:|")
    for func, dt, nc in sorted(extra, key=lambda e: -e[1])[:top]:
        print(
            f"| {package_of(func[0])}: {short(func)} | {dt / units * 1e6:+.1f} | {nc / units:.2f} |"
        )


def micro(env: dict[str, str], port: int) -> None:
    """True µs of llmrelay's pieces, in-process and without I/O (timeit, best of 5)."""
    os.environ.update(env)
    import asyncio
    import timeit
    from collections.abc import AsyncGenerator

    from client import MESSAGES
    from replica import Replica

    import llmrelay
    from llmrelay import FinishReason, Provider
    from llmrelay._config import get_config
    from llmrelay_pizzagpt import Pizzagpt

    base = f"http://127.0.0.1:{port}"
    checked = llmrelay.validate_messages(MESSAGES)
    rows: list[tuple[str, str, float | None]] = []

    def timed(label: str, where: str, fn: Any, per: int = 1) -> None:
        try:
            fn()
            timer = timeit.Timer(fn)
            number, _ = timer.autorange()
            best = min(timer.repeat(5, number)) / number
            rows.append((label, where, best / per * 1e6))
        except Exception as exc:  # the code is moving: report, don't stop
            rows.append((label, f"{where} ({type(exc).__name__}: {exc})"[:120], None))

    call = Pizzagpt.make_call(base_url=base)
    url = call.url(Pizzagpt.api_endpoint or "")
    timed(
        "validate_messages(1 dict)",
        "_types.py:validate_messages",
        lambda: llmrelay.validate_messages(MESSAGES),
    )
    timed("get_config() (cached)", "_config.py:get_config", get_config)
    timed(
        "Pizzagpt.make_call(base_url=...)",
        "_provider.py:Provider.make_call",
        lambda: Pizzagpt.make_call(base_url=base),
    )
    timed(
        "Pizzagpt.create_async_generator(...) (no I/O)",
        "_provider.py:create_async_generator",
        lambda: Pizzagpt.create_async_generator("gpt-4o-mini", MESSAGES, base_url=base),
    )
    timed(
        "format_prompt(checked)",
        "_prompt.py:format_prompt",
        lambda: llmrelay.format_prompt(checked),
    )
    timed("call.proxy_for(url)", "_call.py:Call.proxy_for", lambda: call.proxy_for(url))
    try:
        from llmrelay._call import _encode

        body = {"question": "Say hello in Italian."}
        timed(
            "_encode(json body, headers)",
            "_call.py:_encode",
            lambda: _encode(body, Pizzagpt.headers),
        )
    except ImportError as exc:
        rows.append(("_encode", str(exc), None))
    timed(
        'relay("bench/llama3", ..., stream=False) (no I/O)',
        "_relay.py:relay",
        lambda: llmrelay.relay("bench/llama3", MESSAGES, stream=False),
    )
    from llmrelay._client import completion_id

    timed("completion id", "_client.py:completion_id", completion_id)
    timed("json.dumps(request body) (raw pays it too)", "stdlib", lambda: json.dumps(body))

    class Fake(Provider):
        name = "fake"
        url = base
        default_model = "m"
        models = ("m",)

        @classmethod
        async def generate(
            cls, model: str, messages: list[llmrelay.Message], call: llmrelay.Call
        ) -> AsyncGenerator[llmrelay.Chunk, None]:
            yield "Ciao!"
            yield FinishReason("stop")

    async def loop_text(n: int) -> None:
        for _ in range(n):
            await Fake.create_async_generator("m", MESSAGES).text()

    async def loop_timeout(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(60):  # noqa: ASYNC100 - timing the context manager
                pass

    async def loop_session(n: int) -> None:
        from llmrelay._transport import get_transport

        transport = get_transport()
        for _ in range(n):
            await transport.session(None)
        await llmrelay.aclose()

    def async_timed(label: str, where: str, factory: Any, n: int = 20000) -> None:
        try:
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                asyncio.run(factory(n))
                times.append(time.perf_counter() - t0)
            rows.append((label, where, min(times) / n * 1e6))
        except Exception as exc:
            rows.append((label, f"{where} ({type(exc).__name__}: {exc})"[:120], None))

    async_timed(
        "Provider.create_async_generator(...).text(), provider without I/O",
        "_provider.py:ChunkStream (whole pipeline minus HTTP)",
        loop_text,
    )
    async_timed("async with asyncio.timeout(60)", "used by _call.py:Call._bounded", loop_timeout)
    async_timed("transport.session() (existing)", "_transport.py:Transport.session", loop_session)

    # Per streamed chunk: the SSE decoder, the provider's parser, the client's chunk objects.
    frames, usage = Replica(200, 200).stream_frames(200)
    stream = b"".join(frames) + usage + b"data: [DONE]\n\n"
    events = len(frames) + 2
    from llmrelay.sse import SSEDecoder

    timed(
        "SSEDecoder().feed(whole stream), per event",
        "sse.py:SSEDecoder.feed",
        lambda: SSEDecoder().feed(stream),
        per=events,
    )
    timed(
        "SSEDecoder().feed(frame by frame), per event",
        "sse.py:SSEDecoder.feed",
        lambda: [d.feed(f) for d in [SSEDecoder()] for f in frames],
        per=len(frames),
    )
    timed("json.loads(one frame) (raw pays it too)", "stdlib", lambda: json.loads(frames[5][6:]))
    try:
        from llmrelay_openai_compat._provider import StreamParser

        timed(
            "StreamParser.feed(frame by frame), per event",
            "openai_compat/_provider.py:StreamParser.feed",
            lambda: [p.feed(f) for p in [StreamParser("bench")] for f in frames],
            per=len(frames),
        )
    except ImportError as exc:
        rows.append(("StreamParser", str(exc), None))
    try:
        from llmrelay._client import ChatCompletionChunk

        def chunk_object() -> object:
            return ChatCompletionChunk.model_validate(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {"index": 0, "delta": {"role": None, "content": " lorem"}},
                    ],
                    "usage": None,
                    "provider": "bench",
                }
            )

        timed(
            "one ChatCompletionChunk (model_validate of plain data)",
            "_client.py:AsyncCompletionStream._chunk",
            chunk_object,
        )
    except ImportError as exc:
        rows.append(("chunk objects", str(exc), None))

    print("\n## Pieces, timed alone (timeit, best of 5, no profiler, no I/O)\n")
    print("| piece | where | µs |")
    print("|---|---|---:|")
    for label, where, us in rows:
        print(f"| {label} | {where} | {'n/a' if us is None else f'{us:.2f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case", choices=[*CASES, "all", "none"], default="all", help="none: pieces only"
    )
    parser.add_argument("--n", type=int, help="requests per run (default per case)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    args = parser.parse_args()
    out = Path(tempfile.gettempdir()) / "llmrelay-bench-profiles"
    out.mkdir(exist_ok=True)
    with bench_replica() as (port, env):
        git = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        print(f"# llmrelay per-request profile (commit {git}, Python {sys.version.split()[0]})")
        chosen = {"all": list(CASES), "none": []}.get(args.case, [args.case])
        for name in chosen:
            report_case(name, args.n or CASES[name][2], args.top, port, env, out, args.concurrency)
        micro(env, port)


if __name__ == "__main__":
    main()
