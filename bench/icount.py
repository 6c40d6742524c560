"""Instructions per request: the figure of llmrelay's cost that outside load hardly moves.

  uv run python bench/icount.py            # every case below, about 10 minutes on 2 cores
  uv run python bench/icount.py --case pizzagpt --case openai
  uv run python bench/icount.py --case openai --concurrency 50   # requests in flight

On a shared 2-core machine, requests per second and even CPU µs per request move by 20% or
more between identical runs (other work, the host's caches and clock). Counting the
instructions the client executes (valgrind's callgrind) moves far less, so it shows what a
change saved. Not nothing: the count includes the event loop's iterations, which depend on
whether an answer arrives in one read or two, and that on what else the machine does. The
same code gave 593k and 650k instructions per OpenAI request in runs minutes apart
(2026-12-07), and two runs at once (one per core) move it further: compare runs made back
to back, one at a time, and time a single piece with a microbenchmark (no I/O) under
callgrind when the change is smaller than that.

For each case it runs bench/client.py under ``valgrind --tool=callgrind`` twice against
bench/replica.py, with ``--n N1`` and ``--n N2`` units, concurrency 1, and reports
``(instructions(N2) - instructions(N1)) / (N2 - N1)``: imports, setup and warm-up cancel out.
``--concurrency 50`` counts the same with 50 requests in flight (as run.py's second load).
What it does not count: time in the kernel (system calls) and the cost of cache misses, so a
ratio here is not a ratio of seconds; it ranks, it does not time. Under valgrind the client is
about 50 times slower, so the replica always has the answer ready: the client never waits.

Writes bench/results/icount-<UTC>.json and prints a markdown table (bench/icount-results.md
holds the last full run's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from typing import Any

from run import HERE, PY, bench_replica, git

#: name: (proto, stream, N1, N2, unit); the stream cases count content chunks (200 a stream).
CASES: dict[str, tuple[str, bool, int, int, str]] = {
    "pizzagpt": ("pizzagpt", False, 200, 700, "request"),
    "openai": ("openai", False, 200, 700, "request"),
    "openai-stream": ("openai", True, 5, 15, "chunk"),
}
CLIENTS = ("llmrelay", "aiohttp-shared")
STREAM_CHUNKS = 200
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """The instructions callgrind counted for ``argv`` (the whole process), after checking
    that every request of the run succeeded: a failing request is cheaper than an answer."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    found = _COLLECTED.search(run.stderr)
    if run.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(argv)} failed under valgrind:\n{run.stderr[-2000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(
            f"{' '.join(argv)}: {result['errors']} failed requests, e.g. "
            f"{result['error_samples'][:2]}"
        )
    return int(found.group(1))


def measure(
    case: str, client: str, port: int, env: dict[str, str], concurrency: int = 1
) -> dict[str, Any]:
    proto, stream, n1, n2, unit = CASES[case]
    counts = []
    for n in (n1, n2):
        argv = [PY, str(HERE / "client.py"), "--client", client, "--proto", proto]
        argv += ["--port", str(port), "--n", str(n), "--warmup", "5" if stream else "20"]
        argv += ["--concurrency", str(concurrency)]
        counts.append(instructions([*argv, *(["--stream"] if stream else [])], env))
    units = (n2 - n1) * (STREAM_CHUNKS if stream else 1)
    per_unit = (counts[1] - counts[0]) / units
    return {
        "case": case,
        "client": client,
        "unit": unit,
        "concurrency": concurrency,
        "instructions_per_unit": per_unit,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | llmrelay (k instr / unit) | raw aiohttp (k instr / unit) | llmrelay ÷ raw |",
        "|---|---:|---:|---:|",
    ]
    for case in CASES:
        got = {r["client"]: r for r in rows if r["case"] == case}
        if set(got) != set(CLIENTS):
            continue
        mine = got["llmrelay"]["instructions_per_unit"]
        raw = got["aiohttp-shared"]["instructions_per_unit"]
        unit = got["llmrelay"]["unit"]
        lines.append(
            f"| {case} (per {unit}) | {mine / 1000:.1f} | {raw / 1000:.1f} | {mine / raw:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install -y valgrind")
    cases = args.case or list(CASES)
    rows = []
    with bench_replica() as (port, env):
        for case in cases:
            for client in CLIENTS:
                row = measure(case, client, port, env, args.concurrency)
                per_unit = row["instructions_per_unit"]
                print(f"[icount] {case} {client}: {per_unit:.0f}", flush=True)
                rows.append(row)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"icount-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    meta = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "date": stamp,
        "python": sys.version,
        "concurrency": args.concurrency,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(
        f"\nCommit {meta['commit']}, {stamp}, concurrency {args.concurrency}; "
        f"raw figures in {out.relative_to(HERE.parent)}.\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
