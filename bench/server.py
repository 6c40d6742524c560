"""``llmrelay serve`` in front of the replica, against the replica alone: one command, one run.

  uv run python bench/server.py            # the full run (5-10 minutes on 2 vCPUs)
  uv run python bench/server.py --quick    # smoke run: 1/10 of the requests, 1 repetition

What it does, in order:

1. As root with ``unshare`` and ``ip`` available, re-runs itself in a new network namespace
   whose only interface is ``lo`` (``--no-netns`` skips this). Everything listens on 127.0.0.1.
2. Starts bench/replica.py (``--chunks``, 200 content chunks per stream) and two servers in
   front of it, real ``llmrelay serve`` processes with a temporary configuration
   (``LLMRELAY_CONFIG``: one OpenAI-compatible endpoint, ``replica``, serving ``llama3``):
   ``--workers 1`` and ``--workers 2``, each with ``--max-concurrency`` above the largest load.
   The access log stays on (the default), written to a file. And the floor: bench/forward.py,
   a bare aiohttp forwarder with no llmrelay in it (one process, the same pool size).
3. Throughput: a fresh load-generator process (bench/loadgen.py, aiohttp, every answer
   checked) per case and repetition; ``stream=false`` requests/s and ``stream=true`` chunks/s
   at concurrency 1 and 50, against the replica directly, through the bare forwarder and
   through each server.
   Repetitions are interleaved (direct and through the server back to back), and the same
   outside-load guard as run.py applies.
4. 1 000 concurrent streams (``--big``), all started at once, against each target but the
   bare forwarder: every stream must carry exactly the expected chunks in order and end with
   ``[DONE]``. The established connections at the server's and the replica's ports are
   sampled meanwhile.
5. The same 1 000 streams against a server with the default ``--max-concurrency``, to show
   what an operator who keeps the default gets.
6. Peak RSS of every worker (``VmHWM`` in /proc/PID/status) after each phase.
7. Writes bench/results/server-raw-<UTC>.json and renders bench/server-results.md (a
   ``--quick`` run prints its table instead). ``--render RAW`` re-renders a raw file.

Every process it starts is stopped before it exits (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics as st
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import (
    LLMRELAY_SCRIPT,
    PY,
    QuietGuard,
    child_env,
    free_port,
    git,
    machine_busy_s,
)
from run import proc_cpu_s as proc_cpu_ticks_s

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "llama3"
ENDPOINT = "replica"
#: Wall-time bound of one load-generator process; a hung case fails the run instead.
GEN_TIMEOUT_S = 600
#: Bound for a server or the replica to start, and to stop after SIGTERM.
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
#: The throughput cases' targets; the 1 000-stream case leaves the bare forwarder out.
TARGETS = ("direct", "fwd", "w1", "w2")
BIG_TARGETS = ("direct", "w1", "w2")
TARGET_LABELS = {
    "direct": "replica directly",
    "fwd": "bare aiohttp forward (no llmrelay; the floor)",
    "w1": "llmrelay serve, 1 worker",
    "w2": "llmrelay serve, 2 workers",
    "w1-default": "llmrelay serve, 1 worker, default --max-concurrency",
}
MODE_LABELS = {"chat": "stream=false (req/s)", "stream": "stream=true (chunks/s)"}
TARGET_RATIO = 0.5


def say(*parts: object) -> None:
    print("[bench/server]", *parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes
def maybe_enter_netns(args: argparse.Namespace) -> None:
    """Re-run this script inside ``unshare -n`` with only ``lo`` up, when we can (as run.py)."""
    if args.no_netns or os.environ.get("LLMRELAY_BENCH_IN_NETNS"):
        return
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        say("no network namespace (needs root, unshare and ip): running on the host network")
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode:
        say("unshare -n refused: running on the host network")
        return
    env = dict(os.environ, LLMRELAY_BENCH_IN_NETNS="1")
    argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', PY]
    argv += [str(Path(__file__).resolve()), *sys.argv[1:]]
    sys.stdout.flush()
    os.execvpe("unshare", argv, env)  # noqa: S606 - our own script, fixed arguments


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("loopback only")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid_of(int(entry)) == pid:
            kids.append(int(entry))
    return sorted(kids)


def mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of ``pid``, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``, all its threads, to the nanosecond: the first field of
    /proc/PID/task/*/schedstat (time on a CPU). /proc/PID/stat counts 10 ms clock ticks, which
    in a ``--quick`` case (a few hundred requests) is ±50 µs per request. Falls back to the
    ticks where schedstat is missing."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/schedstat"
            with contextlib.suppress(OSError), open(path) as f:  # a thread that just ended
                total += int(f.read().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return proc_cpu_ticks_s(pid)
    return total / 1e9


def nofile_soft(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


@dataclass
class Service:
    """A process this bench started: the replica, the bare forwarder or one ``llmrelay serve``."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: list[int] = field(default_factory=list)  # the processes that serve requests
    helpers: list[int] = field(default_factory=list)  # supervisor's other children
    argv: list[str] = field(default_factory=list)
    requests_sent: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return sorted({self.popen.pid, *self.workers, *self.helpers})

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # a process that just ended
                total += proc_cpu_s(pid)
        return total

    def memory(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workers": []}
        for pid in self.workers:
            out["workers"].append({"pid": pid, **mem_kib(pid)})
        if self.popen.pid not in self.workers:
            out["supervisor"] = {"pid": self.popen.pid, **mem_kib(self.popen.pid)}
        return out

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL what outlives the bound; workers included. The exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop in {STOP_TIMEOUT_S}s: killing it")
                self.popen.kill()
                self.popen.wait()
        deadline = time.monotonic() + 5
        for pid in [*self.workers, *self.helpers]:
            while ppid_of(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if ppid_of(pid) is not None and pid != self.popen.pid:
                say(f"{self.name}: process {pid} outlived its supervisor: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return self.popen.returncode


def wait_health(svc: Service) -> Service:
    """``svc`` once ``GET /health`` answers 200; stopped and an error if it does not start."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if get(svc.url + "/health")[0] == 200:
                return svc
        except OSError:
            pass
        if svc.popen.poll() is not None:
            break
        time.sleep(0.1)
    svc.stop()
    raise RuntimeError(f"{svc.name} did not start: " + svc.log_path.read_text()[-2000:])


def start_replica(port: int, chunks: int, env: dict[str, str], tmp: Path) -> Service:
    log_path = tmp / "replica.log"
    argv = [PY, str(HERE / "replica.py"), "--port", str(port), "--chunks", str(chunks)]
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    return wait_health(Service("replica", popen, port, log_path, workers=[popen.pid], argv=argv))


def start_forwarder(
    port: int, upstream: Service, limit: int, env: dict[str, str], tmp: Path
) -> Service:
    """bench/forward.py in front of ``upstream``; its /health is the upstream's, forwarded."""
    log_path = tmp / "forward.log"
    argv = [PY, str(HERE / "forward.py"), "--port", str(port), "--upstream", upstream.url]
    argv += ["--limit", str(limit)]
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    return wait_health(Service("fwd", popen, port, log_path, workers=[popen.pid], argv=argv))


def start_server(
    name: str,
    port: int,
    workers: int,
    max_concurrency: int | None,
    env: dict[str, str],
    tmp: Path,
    extra: list[str],
) -> Service:
    log_path = tmp / f"server-{name}.log"
    argv = [LLMRELAY_SCRIPT, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(workers), "--shutdown-grace", "5", *extra]
    if max_concurrency is not None:
        argv += ["--max-concurrency", str(max_concurrency)]
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    svc = Service(name, popen, port, log_path, argv=argv)
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: set[int] = set()
    while time.monotonic() < deadline and popen.poll() is None:
        if workers == 1:
            svc.workers = [popen.pid]
        else:
            kids = children(popen.pid)
            svc.workers = [k for k in kids if "spawn_main" in cmdline(k)]
            svc.helpers = [k for k in kids if k not in svc.workers]  # resource tracker
        try:
            status, body = get(svc.url + "/health")
            if status == 200:
                seen.add(int(json.loads(body)["pid"]))
        except OSError:
            time.sleep(0.1)
            continue
        # Up when every worker has answered /health (new connections spread across them).
        ready = len(svc.workers) == workers and seen == set(svc.workers)
        if ready and get(svc.url + "/ready")[0] == 200:
            return svc
        time.sleep(0.02)
    svc.stop()
    raise RuntimeError(f"server {name} did not start: " + log_path.read_text()[-2000:])


def shown_argv(argv: list[str]) -> list[str]:
    """``argv`` as the results show it: the program's name, paths in the work tree relative."""
    rest = [a[len(str(ROOT)) + 1 :] if a.startswith(str(ROOT) + "/") else a for a in argv[1:]]
    return [Path(argv[0]).name, *rest]


def write_config(path: Path, replica_port: int) -> None:
    path.write_text(
        "# written by bench/server.py for one run\n"
        "[[endpoints]]\n"
        f'name = "{ENDPOINT}"\n'
        f'base_url = "http://127.0.0.1:{replica_port}/v1"\n'
        f'models = ["{MODEL}"]\n'
    )


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of the sockets ``pids`` hold open (/proc/PID/fd)."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def connections_to(port: int, pids: list[int]) -> int:
    """Established IPv4 connections from a socket of ``pids`` to 127.0.0.1:``port``."""
    owned = socket_inodes(pids)
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port:
                count += int(parts[9]) in owned
    return count


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- cases
@dataclass
class Bench:
    args: argparse.Namespace
    env: dict[str, str]
    replica: Service
    servers: dict[str, Service]
    tmp: Path

    def service(self, target: str) -> Service:
        return self.replica if target == "direct" else self.servers[target]

    def everyone(self) -> list[Service]:
        return [self.replica, *self.servers.values()]

    def run_gen(self, case: dict[str, Any], sample: bool = False) -> dict[str, Any]:
        """One load-generator process for ``case``; CPU of every process and outside load."""
        svc = self.service(case["target"])
        argv = [PY, str(HERE / "loadgen.py"), "--url", svc.url, "--mode", case["mode"]]
        argv += ["--n", str(case["n"]), "--concurrency", str(case["concurrency"])]
        argv += ["--warmup", str(case["warmup"]), "--chunks", str(self.args.chunks)]
        argv += ["--model", MODEL]
        if case.get("all_at_once"):
            argv.append("--all-at-once")
        peak_client = peak_upstream = 0
        err_path = self.tmp / "loadgen.err"
        cpu0 = {s.name: s.cpu_s() for s in self.everyone()}
        m0, c0, o0 = machine_busy_s(), children_cpu_s(), self_cpu_s()
        w0 = time.perf_counter()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=self.env)
        deadline = time.monotonic() + GEN_TIMEOUT_S
        try:
            while sample and proc.poll() is None and time.monotonic() < deadline:
                peak_client = max(peak_client, connections_to(svc.port, [proc.pid]))
                if svc is not self.replica:
                    peak_upstream = max(
                        peak_upstream, connections_to(self.replica.port, svc.pids())
                    )
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"load generator timed out after {GEN_TIMEOUT_S}s: {case}") from None
        wall = time.perf_counter() - w0
        cpu1 = {s.name: s.cpu_s() for s in self.everyone()}
        m1, c1, o1 = machine_busy_s(), children_cpu_s(), self_cpu_s()
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed {case}: {err_path.read_text()[-3000:]}")
        res = dict(json.loads(out.decode().strip().splitlines()[-1]))
        ours = sum(cpu1[k] - cpu0[k] for k in cpu0) + (c1 - c0) + (o1 - o0)
        svc.requests_sent += case["n"] + case["warmup"]
        served_units = (case["n"] + case["warmup"]) * (
            self.args.chunks if case["mode"] == "stream" else 1
        )
        res.update(
            target=case["target"],
            process_wall_s=wall,
            gen_process_cpu_s=c1 - c0,
            server_cpu_s=None if svc is self.replica else cpu1[svc.name] - cpu0[svc.name],
            replica_cpu_s=cpu1["replica"] - cpu0["replica"],
            served_units=served_units,
            others_cores=max(0.0, (m1 - m0) - ours) / wall,
            stderr_tail=err_path.read_text()[-500:],
        )
        if sample:
            res["max_client_conns"] = peak_client
            res["max_upstream_conns"] = None if svc is self.replica else peak_upstream
        return res


def throughput_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    for mode, n, warmup in (("chat", args.n, 20), ("stream", args.streams, 5)):
        for conc in (1, 50):
            for target in TARGETS:
                cases.append(
                    {"mode": mode, "n": n, "concurrency": conc, "warmup": warmup, "target": target}
                )
    return cases


def big_case(args: argparse.Namespace, target: str) -> dict[str, Any]:
    return {
        "mode": "stream",
        "n": args.big,
        "concurrency": args.big,
        "warmup": 1,
        "target": target,
        "all_at_once": True,
    }


def bad_note(res: dict[str, Any]) -> str:
    bad = res["bad"] + res["warmup_bad"]
    return f"  BAD {bad}: {res['problem_samples'][:2]}" if bad else ""


def measure(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"throughput": [], "big": [], "memory": {}}
    guard = QuietGuard(
        max_others=args.max_others,
        retries=(0 if args.quick else 2) if args.noisy_retries is None else args.noisy_retries,
        wait_budget_s=(20.0 if args.quick else 300.0)
        if args.quiet_wait is None
        else args.quiet_wait,
    )
    limit = max(1024, 2 * args.big)
    extra = ["--no-access-log"] if args.no_access_log else []
    replica = start_replica(free_port(), args.chunks, env, tmp)
    services: list[Service] = [replica]
    try:
        write_config(Path(env["LLMRELAY_CONFIG"]), replica.port)
        # The floor: the same upstream pool size as llmrelay serve's, max(100, --max-concurrency)
        # (core/llmrelay/server/_run.py, prepare_process).
        servers = {"fwd": start_forwarder(free_port(), replica, max(100, limit), env, tmp)}
        services.append(servers["fwd"])
        for name, workers in (("w1", 1), ("w2", 2)):
            servers[name] = start_server(name, free_port(), workers, limit, env, tmp, extra)
            services.append(servers[name])
        bench = Bench(args, env, replica, servers, tmp)
        data["servers"] = {
            s.name: {
                "argv": shown_argv(s.argv),
                "workers": s.workers,
                "helpers": [cmdline(p)[:120] for p in s.helpers],
                "nofile_soft": nofile_soft(s.workers[0]),
            }
            for s in bench.everyone()
        }
        data["memory"]["started"] = {s.name: s.memory() for s in servers.values()}

        # Priming: one tiny untimed run per target and mode (bytecode, connections, caches).
        for target in TARGETS:
            for mode in ("chat", "stream"):
                case = {"mode": mode, "n": 2, "concurrency": 1, "warmup": 1, "target": target}
                res = bench.run_gen(case)
                if res["bad"] or res["warmup_bad"]:
                    raise RuntimeError(f"priming {target}/{mode} failed: {res['problem_samples']}")
        data["memory"]["warm_idle"] = {s.name: s.memory() for s in servers.values()}

        cases = throughput_cases(args)
        for rep in range(1, args.reps + 1):
            for case in cases if rep % 2 else list(reversed(cases)):
                res = guard.run(lambda case=case: bench.run_gen(case))
                res["rep"] = rep
                data["throughput"].append(res)
                say(
                    f"rep {rep}/{args.reps} {case['mode']:6} c={case['concurrency']:<3} "
                    f"{case['target']:6} {res['units_per_s']:9.0f} units/s "
                    f"others={res['others_cores']:.2f}" + bad_note(res)
                )
        data["memory"]["after_throughput"] = {s.name: s.memory() for s in servers.values()}

        big_reps = args.big_reps
        for rep in range(1, big_reps + 1):
            for target in BIG_TARGETS if rep % 2 else tuple(reversed(BIG_TARGETS)):
                res = guard.run(lambda t=target: bench.run_gen(big_case(args, t), sample=True))
                res["rep"] = rep
                data["big"].append(res)
                say(
                    f"{args.big} streams rep {rep}/{big_reps} {target:6} "
                    f"ok {res['ok']}/{res['requests']} {res['units_per_s']:8.0f} chunks/s "
                    f"first p99 {res['first_chunk_s']['p99'] or 0:.2f}s "
                    f"conns {res['max_client_conns']} upstream {res['max_upstream_conns']}"
                    + bad_note(res)
                )
        data["memory"]["after_big"] = {s.name: s.memory() for s in servers.values()}

        # What an operator who keeps the default --max-concurrency gets for the same load.
        default = start_server("w1-default", free_port(), 1, None, env, tmp, extra)
        services.append(default)
        bench.servers["w1-default"] = default
        data["servers"]["w1-default"] = {
            "argv": shown_argv(default.argv),
            "workers": default.workers,
            "helpers": [],
            "nofile_soft": nofile_soft(default.workers[0]),
        }
        res = bench.run_gen(big_case(args, "w1-default"), sample=True)
        data["default_limit"] = res
        say(f"default --max-concurrency: statuses {res['statuses']}")
        data["memory"]["default_limit"] = {"w1-default": default.memory()}
        data["guard"] = {
            "max_others": guard.max_others,
            "retries": guard.retries,
            "wait_budget_s": guard.wait_budget_s,
            "waited_s": guard.waited_s,
            "reruns": guard.reruns,
        }
    finally:
        exits = {s.name: s.stop() for s in reversed(services)}
    data["exit_codes"] = exits
    data["access_log"] = {s.name: access_log_summary(s) for s in services if s is not replica}
    return data


ACCESS = re.compile(r'llmrelay\.access: \S+ "POST /v1/chat/completions" (\d+) ')


def access_log_summary(svc: Service) -> dict[str, Any]:
    """Access-log lines for chat requests by status, against the requests the bench sent.

    The bare forwarder writes no access log: only its error lines (tracebacks) count."""
    statuses: Counter[str] = Counter()
    errors = []
    for line in svc.log_path.read_text(errors="replace").splitlines():
        m = ACCESS.search(line)
        if m:
            statuses[m.group(1)] += 1
        elif " ERROR " in line or "Traceback" in line:
            errors.append(line[:300])
    return {
        "sent": svc.requests_sent,
        "lines": sum(statuses.values()),
        "statuses": dict(statuses),
        "error_lines": len(errors),
        "error_samples": errors[:5],
    }


# --------------------------------------------------------------------------- report
def med(xs: list[float]) -> float:
    return float(st.median(xs))


def mmm(xs: list[float], fmt: str = "{:.0f}") -> str:
    if not xs:
        return "–"
    lo, mid, hi = fmt.format(min(xs)), fmt.format(med(xs)), fmt.format(max(xs))
    return mid if lo == hi else f"{mid} ({lo}–{hi})"


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def ratio_cell(
    data: dict[str, Any], mode: str, conc: int, target: str, base: str = "direct"
) -> tuple[str, float]:
    """Median ratio to ``base``, with the range of the per-repetition (back-to-back) ratios."""
    rows: dict[str, dict[int, float]] = defaultdict(dict)
    for r in data["throughput"]:
        if r["mode"] == mode and r["concurrency"] == conc:
            rows[r["target"]][r["rep"]] = r["units_per_s"]
    mine, direct = rows[target], rows[base]
    if not mine or not direct:
        return "–", float("nan")
    ratio = med(list(mine.values())) / med(list(direct.values()))
    pairs = [mine[k] / direct[k] for k in mine if k in direct]
    if len(pairs) > 1:
        return f"{ratio:.2f} ({min(pairs):.2f}–{max(pairs):.2f})", ratio
    return f"{ratio:.2f}", ratio


def rows_nofile(rows: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(r["nofile"][0]) for r in rows}))


def render(data: dict[str, Any], raw_name: str) -> str:
    facts = data["facts"]
    args = data["args"]
    out: list[str] = []
    w = out.append
    w("# `llmrelay serve` in front of the replica: results")
    w("")
    quick = " **Quick run: 1/10 of the requests, 1 repetition; indicative only.**"
    w(
        f"Generated by `bench/server.py` from `results/{raw_name}` (not committed) on "
        f"{facts['date_utc']}, commit `{facts['git_commit']}`"
        + (
            f" with {len(facts['git_dirty'])} uncommitted file(s) under core/"
            if facts["git_dirty"]
            else ""
        )
        + f". {facts['nproc']} vCPUs ({facts['cpu']}), Python {facts['python']}, "
        f"aiohttp {facts['aiohttp']}; {facts['network']}. Repetitions: {args['reps']} "
        f"(throughput), {args['big_reps']} (1 000 streams); {args['chunks']} content chunks per "
        "stream; access log "
        + ("off" if args["no_access_log"] else "on (the default), to a file")
        + "."
        + (quick if args["quick"] else "")
    )
    w("")
    for name, info in data.get("servers", {}).items():
        if name != "replica":
            w(f"- {TARGET_LABELS[name]}: `{' '.join(info['argv'])}`")
    w("")
    w(
        "Method, cases and caveats: [README.md](README.md#llmrelay-serve-serverpy). Every "
        "process (load generator, replica, server workers) shares the same 2 cores, so a "
        "ratio below 1 includes the CPU the server takes away from the other two."
    )
    w("")

    # -- targets
    w("## Issue 6's target: ≥ 0.5× the replica's direct throughput with one worker")
    w("")
    w(
        "| figure | 1 worker ÷ direct | target | met | 2 workers ÷ direct "
        "| bare aiohttp forward ÷ direct | 1 worker ÷ bare forward |"
    )
    w("|---|---|---|---|---|---|---|")
    for mode in ("chat", "stream"):
        for conc in (1, 50):
            cell, ratio = ratio_cell(data, mode, conc, "w1")
            cell2, _ = ratio_cell(data, mode, conc, "w2")
            floor, _ = ratio_cell(data, mode, conc, "fwd")
            over_floor, _ = ratio_cell(data, mode, conc, "w1", base="fwd")
            met = "–" if ratio != ratio else ("yes" if ratio >= TARGET_RATIO else "**no**")
            w(
                f"| {MODE_LABELS[mode]}, concurrency {conc} | {cell} | ≥ {TARGET_RATIO} | {met} | "
                f"{cell2} | {floor} | {over_floor} |"
            )
    w("")
    w(
        "Ratio of the medians; the bracket is the lowest and highest ratio of a pair of runs "
        "made back to back. *Bare aiohttp forward*: bench/forward.py, an aiohttp.web server "
        "that forwards each request unchanged with one aiohttp `ClientSession` and streams the "
        "answer back, with no llmrelay in it: what any aiohttp-based relay costs on these 2 "
        "shared cores, the floor under the target. *1 worker ÷ bare forward* is the share of "
        "the floor's throughput that llmrelay's own layers keep."
    )
    w("")
    big = data.get("big", [])
    if big:
        w(f"**{args['big']} concurrent streams** (all started at once, every one checked):")
        w("")
        for target in TARGETS:
            rs = [r for r in big if r["target"] == target]
            if not rs:
                continue
            streams = sum(r["requests"] for r in rs)
            ok = sum(r["ok"] for r in rs)
            got = sum(r["units"] for r in rs)
            want = streams * args["chunks"]
            lost = sum(r["lost_chunks"] for r in rs)
            extra = sum(r["extra_chunks"] for r in rs)
            repl = sum(r["replaced_chunks"] for r in rs)
            nodone = sum(r["missing_done"] for r in rs)
            verdict = "yes" if ok == streams and got == want else "**no**"
            w(
                f"- {TARGET_LABELS[target]}: {ok}/{streams} streams complete and exact "
                f"({got}/{want} chunks; {lost} lost, {extra} duplicated or extra, {repl} "
                f"replaced, {nodone} without `[DONE]`): {verdict}"
            )
        w("")

    # -- throughput
    w("## Throughput")
    w("")
    w(
        "Units/s: requests (stream=false) or content chunks (stream=true) per second of the "
        "timed part, median (min–max). CPU µs per unit: the load generator's timed part; the "
        "server's and the replica's over the whole generator process (warm-up included, "
        "divided by the units served including it; from /proc/PID/task/*/schedstat). *Bad*: "
        "answers that failed a check (all runs). *Others*: cores used by other processes during "
        "the case (median)."
    )
    w("")
    w(
        "| case | target | units/s | ÷ direct | gen CPU µs/unit | server CPU µs/unit "
        "| replica CPU µs/unit | bad | others |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in data["throughput"]:
        groups[(r["mode"], r["concurrency"], r["target"])].append(r)
    for mode in ("chat", "stream"):
        for conc in (1, 50):
            for target in TARGETS:
                rs = groups.get((mode, conc, target), [])
                if not rs:
                    continue
                cell = "1" if target == "direct" else ratio_cell(data, mode, conc, target)[0]
                gen = [1e6 * r["gen_cpu_s"] / max(1, r["units"]) for r in rs]
                srv = [
                    1e6 * r["server_cpu_s"] / r["served_units"]
                    for r in rs
                    if r["server_cpu_s"] is not None
                ]
                rep = [1e6 * r["replica_cpu_s"] / r["served_units"] for r in rs]
                bad = sum(r["bad"] + r["warmup_bad"] for r in rs)
                others = med([r["others_cores"] for r in rs])
                w(
                    f"| {MODE_LABELS[mode]}, c={conc} | {TARGET_LABELS[target]} | "
                    f"{mmm([r['units_per_s'] for r in rs])} | {cell} | {mmm(gen)} | "
                    f"{mmm(srv) if srv else '–'} | {mmm(rep)} | {bad} | {others:.2f} |"
                )
    w("")

    # -- big
    if big:
        w(f"## {args['big']} concurrent streams")
        w("")
        w(
            "All streams are started at once on one client session (no pool limit). *First "
            "chunk* and *end*: seconds from the start of the case (p50 / p99 / max). *Client "
            "conns* and *upstream conns*: the most "
            "established connections sampled (every 0.2 s) from the load generator to the "
            "target, and from the server's processes to the replica. The load generator "
            f"raised its open-file limit to {rows_nofile(big)}."
        )
        w("")
        w(
            "| target | rep | streams ok | chunks/s | wall s | first chunk s | end s "
            "| client conns | upstream conns |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        rows = sorted(big, key=lambda r: (TARGETS.index(r["target"]), r["rep"]))
        if data.get("default_limit"):
            rows.append(dict(data["default_limit"], rep="–"))
        for r in rows:
            f, e = r["first_chunk_s"], r["end_s"]

            def trio(d: dict[str, float | None]) -> str:
                vals = [d["p50"], d["p99"], d["max"]]
                return " / ".join("–" if v is None else f"{v:.2f}" for v in vals)

            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
            w(
                f"| {TARGET_LABELS[r['target']]} | {r['rep']} | {r['ok']}/{r['requests']} "
                f"({statuses}) | {r['units_per_s']:.0f} | {r['elapsed_s']:.1f} | {trio(f)} | "
                f"{trio(e)} | {r['max_client_conns']} | "
                f"{'–' if r['max_upstream_conns'] is None else r['max_upstream_conns']} |"
            )
        w("")
        samples = list(dict.fromkeys(s for r in rows for s in r["problem_samples"]))
        if samples:
            w("Problems seen (first few):")
            w("")
            for s in samples[:8]:
                w(f"- `{s}`")
            w("")

    # -- memory
    mem = data.get("memory", {})
    if mem:
        w("## Memory per worker")
        w("")
        w(
            "VmRSS when started and when idle after the priming requests; VmHWM (the peak RSS "
            "of the process's life so far) after the throughput cases and after the "
            f"{args['big']}-stream cases. The supervisor of `--workers 2` serves nothing "
            "(it also starts multiprocessing's resource tracker, not shown)."
        )
        w("")
        w(
            "| server | process | RSS started | RSS warm, idle | peak after throughput "
            f"| peak after {args['big']} streams | open-file limit |"
        )
        w("|---|---|---|---|---|---|---|")
        phases = ("started", "warm_idle", "after_throughput", "after_big")
        for name in ("fwd", "w1", "w2", "w1-default"):
            if name == "w1-default":  # started for its one case: only its peak is shown
                snaps = [None, None, None, mem.get("default_limit", {}).get(name)]
            elif name == "fwd":  # not in the big case
                snaps = [mem.get(phase, {}).get(name) for phase in phases[:3]] + [None]
            else:
                snaps = [mem.get(phase, {}).get(name) for phase in phases]
            ref = next((s for s in snaps if s), None)
            if ref is None:
                continue
            procs = [("worker", i) for i in range(len(ref["workers"]))]
            if "supervisor" in ref:
                procs.append(("supervisor", 0))
            for kind, i in procs:
                cells = []
                for phase, snap in zip(phases, snaps, strict=True):
                    if not snap:
                        cells.append("–")
                        continue
                    p = snap["workers"][i] if kind == "worker" else snap["supervisor"]
                    key = "VmRSS" if phase in ("started", "warm_idle") else "VmHWM"
                    cells.append(mib(p[key]))
                label = f"{kind} {i}" if kind == "worker" else kind
                nofile = data["servers"].get(name, {}).get("nofile_soft", "?")
                w(f"| {TARGET_LABELS[name]} | {label} | " + " | ".join(cells) + f" | {nofile} |")
        w("")

    # -- logs and exits
    w("## Server logs and exits")
    w("")
    w("| server | chat requests sent | access-log lines (by status) | ERROR lines | exit code |")
    w("|---|---|---|---|---|")
    for name, a in data.get("access_log", {}).items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(a["statuses"].items()))
        lines = "none written" if name == "fwd" else f"{a['lines']} ({statuses})"
        w(
            f"| {TARGET_LABELS[name]} | {a['sent']} | {lines} | "
            f"{a['error_lines']} | {data['exit_codes'].get(name)} |"
        )
    w("")
    for name, a in data.get("access_log", {}).items():
        for s in a["error_samples"][:3]:
            w(f"- {name}: `{s}`")
    g = data.get("guard", {})
    if g:
        w(
            f"Outside-load guard: at most {g['max_others']} cores used by other processes per "
            f"case; {g['reruns']} case(s) re-run, {g['waited_s']:.0f} s spent waiting for a "
            f"quiet machine. Run time {data.get('duration_s', 0) / 60:.1f} min."
        )
        w("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- main
def facts() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import aiohttp

    ifaces = [name for _, name in socket.if_nameindex()]
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": git("status", "--porcelain", "--", "core", "pyproject.toml").splitlines(),
        "network": "own network namespace, loopback only (unshare -n)"
        if ifaces == ["lo"]
        else "host network namespace, 127.0.0.1 only",
        "loadavg_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/10 requests, 1 rep")
    parser.add_argument("--reps", type=int, help="throughput repetitions (default 5; 1 quick)")
    parser.add_argument("--n", type=int, help="stream=false requests per case (default 2000)")
    parser.add_argument("--streams", type=int, help="streams per throughput case (default 200)")
    parser.add_argument("--big", type=int, default=1000, help="concurrent streams (1000)")
    parser.add_argument("--big-reps", type=int, default=3, help="repetitions of --big (3)")
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per stream")
    parser.add_argument("--no-access-log", action="store_true", help="pass it to the servers")
    parser.add_argument("--no-netns", action="store_true", help="stay on the host network")
    parser.add_argument("--max-others", type=float, default=0.5, help="as in run.py (0.5)")
    parser.add_argument("--noisy-retries", type=int, help="as in run.py (default 2; 0 quick)")
    parser.add_argument("--quiet-wait", type=float, help="as in run.py (default 300; 20 quick)")
    parser.add_argument("--out", default=str(HERE / "results"), help="where raw JSON goes")
    parser.add_argument("--render", metavar="RAW", help="only re-render server-results.md")
    args = parser.parse_args()
    if args.render:
        raw = Path(args.render)
        (HERE / "server-results.md").write_text(render(json.loads(raw.read_text()), raw.name))
        return
    k = 10 if args.quick else 1
    args.reps = args.reps or (1 if args.quick else 5)
    args.n = args.n or 2000 // k
    args.streams = args.streams or 200 // k
    args.big_reps = 1 if args.quick else args.big_reps
    maybe_enter_netns(args)

    # The generator raises its own soft limit; the servers inherit this one (a server with
    # 1 000 clients and 100 upstream connections needs more than the usual 1 024).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    data: dict[str, Any] = {"facts": facts(), "args": vars(args)}
    say("machine", json.dumps({k: data["facts"][k] for k in ("nproc", "network", "git_commit")}))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmrelay-bench-server-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text("# written by bench/server.py\n")
        env = child_env(config)
        data.update(measure(args, env, Path(tmp)))
    data["duration_s"] = time.monotonic() - started
    data["facts"]["loadavg_end"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = out / f"server-raw-{stamp}{'-quick' if args.quick else ''}.json"
    raw.write_text(json.dumps(data, indent=1))
    say(f"raw results: {raw}")
    text = render(data, raw.name)
    if args.quick:
        print(text)
    else:
        (HERE / "server-results.md").write_text(text)
        say("table: bench/server-results.md")


if __name__ == "__main__":
    main()
