"""The load generator of bench/server.py: one case in one process, one JSON line on stdout.

It speaks plain HTTP with aiohttp (one shared ``ClientSession``) to an OpenAI-compatible
``POST /v1/chat/completions`` — the replica itself, or ``llmrelay serve`` in front of it — and
checks every answer, so a figure never counts a broken answer:

  --mode chat     ``stream=false``: status 200, the replica's exact 200-byte answer, ``stop``
  --mode stream   ``stream=true`` with ``stream_options.include_usage``: status 200, a role
                  chunk, exactly the replica's ``--chunks`` content chunks *in order* (chunk i
                  is " " + 3 of replica.WORDS starting at i mod 8), a ``stop`` chunk, a usage
                  chunk with completion_tokens = 3 x chunks, ``data: [DONE]``, nothing after;
                  one ``id`` for all the chunks of a stream

A unit is a request, or in stream mode a content chunk. ``--concurrency C`` runs C workers
that take requests from a shared counter until ``--n`` are done; ``--all-at-once`` starts all
``--n`` streams together (no limit) and records when each one started, got its first chunk and
ended, for the 1 000-stream case. A stream that differs from the expected one is classified
with difflib against the expected chunk list: lost (missing), extra (duplicated or foreign)
and replaced chunks.

Timing excludes imports, setup and ``--warmup`` sequential requests (checked too).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from replica import WORDS, make_answer

MESSAGES = [{"role": "user", "content": "Say hello in Italian."}]
#: Stream shape as one letter per event: role, content..., finish, usage.
ROLE, CONTENT, FINISH, USAGE, ERROR, OTHER = "r", "c", "f", "u", "e", "?"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise this process's soft open-file limit to at least ``need`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def expected_chunks(n: int) -> list[str]:
    return [" " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) for i in range(n)]


@dataclass
class Outcome:
    """One request's result. ``units``: 1 for a good chat answer, content chunks for a stream."""

    status: int = 0
    ok: bool = False
    units: int = 0
    problem: str = ""
    lost: int = 0
    extra: int = 0
    replaced: int = 0
    done: bool = False
    after_done: bool = False
    stream_id: str | None = None
    t_start: float = 0.0
    t_first: float | None = None
    t_end: float = 0.0


@dataclass
class Totals:
    requests: int = 0
    ok: int = 0
    units: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    lost: int = 0
    extra: int = 0
    replaced: int = 0
    missing_done: int = 0
    after_done: int = 0
    ids: set[str] = field(default_factory=set)

    def add(self, o: Outcome) -> None:
        self.requests += 1
        self.units += o.units
        self.statuses[str(o.status)] += 1
        self.lost += o.lost
        self.extra += o.extra
        self.replaced += o.replaced
        self.missing_done += 0 if o.done or o.status != 200 else 1
        self.after_done += o.after_done
        if o.stream_id is not None:
            self.ids.add(o.stream_id)
        if o.ok:
            self.ok += 1
        else:
            self.problems[o.problem.split(":", 1)[0]] += 1
            if len(self.samples) < 5:
                self.samples.append(o.problem[:300])

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "bad": self.requests - self.ok,
            "units": self.units,
            "statuses": dict(self.statuses),
            "problems": dict(self.problems),
            "problem_samples": self.samples,
            "lost_chunks": self.lost,
            "extra_chunks": self.extra,
            "replaced_chunks": self.replaced,
            "missing_done": self.missing_done,
            "data_after_done": self.after_done,
            "distinct_ids": len(self.ids),
        }


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.url = args.url.rstrip("/") + "/v1/chat/completions"
        self.stream = args.mode == "stream"
        body: dict[str, Any] = {"model": args.model, "messages": MESSAGES}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        self.body = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
        self.answer = make_answer(args.answer_bytes)
        self.chunks = args.chunks
        self.expected = expected_chunks(args.chunks)
        self.shape = ROLE + CONTENT * args.chunks + FINISH + USAGE
        self.session: Any = None

    async def start(self) -> None:
        aiohttp = self.aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # no pool limit: the workers set it
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
        )

    async def close(self) -> None:
        await self.session.close()

    async def one(self) -> Outcome:
        o = Outcome(t_start=time.perf_counter())
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                o.status = resp.status
                if resp.status != 200:
                    text = (await resp.read())[:200].decode("utf-8", "replace")
                    o.problem = f"status {resp.status}: {text}"
                elif self.stream:
                    await self._read_stream(resp, o)
                else:
                    await self._read_chat(resp, o)
        except Exception as exc:  # a cut connection, a timeout, ...: counted, not raised
            o.problem = f"{type(exc).__name__}: {exc}"
        o.t_end = time.perf_counter()
        return o

    async def _read_chat(self, resp: Any, o: Outcome) -> None:
        data = json.loads(await resp.read())
        choice = data["choices"][0]
        if choice["message"]["content"] != self.answer:
            o.problem = "wrong answer: " + repr(choice["message"]["content"])[:100]
        elif choice["finish_reason"] != "stop":
            o.problem = f"finish_reason: {choice['finish_reason']!r}"
        else:
            o.ok, o.units, o.done = True, 1, True
        o.t_first = time.perf_counter()

    async def _read_stream(self, resp: Any, o: Outcome) -> None:
        # SSE: an event ends at a blank line; its data lines join with "\n" (one leading space
        # dropped); comments and other fields are skipped. Right for "\n" and "\r\n".
        shape: list[str] = []
        contents: list[str] = []
        ids: set[str] = set()
        usage: Any = None
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
            if o.done:
                o.after_done = True
                continue
            if payload == b"[DONE]":
                o.done = True
                continue
            obj = json.loads(payload)
            if "error" in obj:
                shape.append(ERROR)
                o.problem = "error event: " + json.dumps(obj["error"])[:200]
                continue
            ids.add(obj.get("id"))
            choices = obj.get("choices")
            if not choices:
                shape.append(USAGE)
                usage = obj.get("usage")
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            if delta.get("role"):
                shape.append(ROLE)
            elif delta.get("content"):
                shape.append(CONTENT)
                contents.append(delta["content"])
                if o.t_first is None:
                    o.t_first = time.perf_counter()
            elif choice.get("finish_reason"):
                shape.append(FINISH if choice["finish_reason"] == "stop" else OTHER)
            else:
                shape.append(OTHER)
        if pending and o.done:  # an unterminated event after [DONE]
            o.after_done = True
        o.units = len(contents)
        o.stream_id = next(iter(ids)) if len(ids) == 1 else None
        if contents != self.expected:
            ops = difflib.SequenceMatcher(None, self.expected, contents, autojunk=False)
            for tag, i1, i2, j1, j2 in ops.get_opcodes():
                if tag == "delete":
                    o.lost += i2 - i1
                elif tag == "insert":
                    o.extra += j2 - j1
                elif tag == "replace":
                    o.replaced += min(i2 - i1, j2 - j1)
                    o.lost += max(0, (i2 - i1) - (j2 - j1))
                    o.extra += max(0, (j2 - j1) - (i2 - i1))
        s = "".join(shape)
        want_tokens = 3 * self.chunks
        if o.problem:
            pass
        elif contents != self.expected:
            o.problem = (
                f"chunks: got {len(contents)}, want {self.chunks} "
                f"(lost {o.lost}, extra {o.extra}, replaced {o.replaced})"
            )
        elif s != self.shape:
            o.problem = f"shape: {s[:20]}...{s[-10:]} ({len(s)} events)"
        elif not o.done:
            o.problem = "no [DONE]"
        elif o.after_done:
            o.problem = "data after [DONE]"
        elif len(ids) != 1:
            o.problem = f"ids: {len(ids)} different ids in one stream"
        elif not usage or usage.get("completion_tokens") != want_tokens:
            o.problem = f"usage: {usage!r}"
        else:
            o.ok = True


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    return ys[min(len(ys) - 1, round(q * (len(ys) - 1)))]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


async def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile(args.n + 1024 if args.all_at_once else 4096)
    t_setup = time.perf_counter()
    gen = Generator(args)
    await gen.start()
    setup_s = time.perf_counter() - t_setup

    warm = Totals()
    first_s: float | None = None
    t = time.perf_counter()
    for i in range(args.warmup):
        warm.add(await gen.one())
        if i == 0:
            first_s = time.perf_counter() - t

    totals = Totals()
    outcomes: list[Outcome] = []
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    if args.all_at_once:
        outcomes = list(await asyncio.gather(*(gen.one() for _ in range(args.n))))
        for o in outcomes:
            totals.add(o)
    else:
        left = args.n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                totals.add(await gen.one())

        await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
    elapsed = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    await gen.close()
    await asyncio.sleep(0.05)  # let transports settle (not timed)

    result: dict[str, Any] = {
        "mode": args.mode,
        "n": args.n,
        "concurrency": args.n if args.all_at_once else args.concurrency,
        "all_at_once": args.all_at_once,
        "chunks": args.chunks if gen.stream else None,
        "warmup": args.warmup,
        "warmup_bad": warm.requests - warm.ok,
        "warmup_samples": warm.samples,
        "elapsed_s": elapsed,
        "gen_cpu_s": cpu,
        "units_per_s": totals.units / elapsed,
        "requests_per_s": args.n / elapsed,
        "first_request_s": first_s,
        "setup_s": setup_s,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "nofile": list(nofile),
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        **totals.as_dict(),
    }
    if args.all_at_once:
        firsts = [o.t_first - t0 for o in outcomes if o.t_first is not None]
        ends = [o.t_end - t0 for o in outcomes if o.status == 200]
        result["first_chunk_s"] = {
            "p50": percentile(firsts, 0.5),
            "p99": percentile(firsts, 0.99),
            "max": percentile(firsts, 1.0),
        }
        result["end_s"] = {
            "p50": percentile(ends, 0.5),
            "p99": percentile(ends, 0.99),
            "max": percentile(ends, 1.0),
        }
        # Streams receiving at once: from the first content chunk to the end of the stream.
        result["max_streaming_at_once"] = max_overlap(
            [(o.t_first, o.t_end) for o in outcomes if o.t_first is not None]
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--mode", choices=["chat", "stream"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--all-at-once", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=200, help="the replica's --chunks")
    parser.add_argument("--answer-bytes", type=int, default=200)
    parser.add_argument("--model", default="llama3")
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        raise SystemExit("loopback only: --url must be http://127.0.0.1:PORT")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
