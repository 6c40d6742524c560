"""Render bench/results.md from a raw results file (stdlib only).

  uv run python bench/report.py bench/results/raw-<stamp>.json [-o bench/results.md]

The anchors' figures (bench/anchors.json, copied from ../shared/anchors/anchors-results.md)
are shown beside ours for reference; they come from another run, so compare them by ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

LABELS = {
    ("pizzagpt", "llmrelay"): "llmrelay Pizzagpt `.text()`",
    ("pizzagpt", "aiohttp-shared"): "raw aiohttp, shared session",
    ("pizzagpt", "g4f"): "g4f Pizzagpt (0.5.3.2)",
    ("pizzagpt", "aiohttp-small-reads"): "raw aiohttp, shared session, 64 KiB reads",
    ("pizzagpt", "aiohttp-contract"): "raw aiohttp in the provider contract's shape",
    ("openai", "llmrelay"): "llmrelay `AsyncClient`",
    ("openai", "aiohttp-shared"): "raw aiohttp, shared session",
    ("openai", "openai"): "openai `AsyncOpenAI`",
    ("openai", "aiohttp-small-reads"): "raw aiohttp, shared session, 64 KiB reads",
    ("openai", "aiohttp-contract"): "raw aiohttp in the contracts' shape",
}
REFERENCE = "aiohttp-shared"
#: The suffix of a client measured without settling the heap after warm-up (client.py).
UNSETTLED = "@unsettled"
QUICK_NOTE = " **Quick run: 1/10 of the requests, 1 repetition; indicative only.**"
TITLES = {
    "pizzagpt": "Pizzagpt protocol (POST /api/chatx-completion, 200-byte answer)",
    "openai": "OpenAI protocol, stream=false (200-byte answer)",
    "openai-stream": "OpenAI protocol, stream=true, {chunks} content chunks per response",
}
#: (label, group, client, versus, target) — the ratios issues 4 and 5 set targets for.
TARGETS = [
    ("Pizzagpt: llmrelay ÷ raw aiohttp (req/s)", "pizzagpt", "llmrelay", REFERENCE, 0.9),
    ("OpenAI non-stream: llmrelay ÷ raw aiohttp (req/s)", "openai", "llmrelay", REFERENCE, 0.8),
    (
        "OpenAI stream: llmrelay ÷ raw aiohttp (chunks/s)",
        "openai-stream",
        "llmrelay",
        REFERENCE,
        0.5,
    ),
    ("OpenAI stream: llmrelay ÷ openai SDK (chunks/s)", "openai-stream", "llmrelay", "openai", 5.0),
]
SMALL = "aiohttp-small-reads"
CONTEXT = [
    ("Pizzagpt: llmrelay ÷ raw aiohttp with 64 KiB reads (req/s)", "pizzagpt", "llmrelay", SMALL),
    (
        "OpenAI non-stream: llmrelay ÷ raw aiohttp with 64 KiB reads (req/s)",
        "openai",
        "llmrelay",
        SMALL,
    ),
    (
        "OpenAI stream: llmrelay ÷ raw aiohttp with 64 KiB reads (chunks/s)",
        "openai-stream",
        "llmrelay",
        SMALL,
    ),
    ("Pizzagpt: g4f ÷ raw aiohttp (req/s)", "pizzagpt", "g4f", REFERENCE),
    (
        "Pizzagpt: raw aiohttp in the contract's shape ÷ raw aiohttp (req/s)",
        "pizzagpt",
        "aiohttp-contract",
        REFERENCE,
    ),
    ("OpenAI non-stream: openai SDK ÷ raw aiohttp (req/s)", "openai", "openai", REFERENCE),
    (
        "OpenAI non-stream: raw aiohttp in the contracts' shape ÷ raw aiohttp (req/s)",
        "openai",
        "aiohttp-contract",
        REFERENCE,
    ),
    ("OpenAI stream: openai SDK ÷ raw aiohttp (chunks/s)", "openai-stream", "openai", REFERENCE),
    (
        "Pizzagpt, heap not settled after warm-up: llmrelay ÷ raw aiohttp (req/s)",
        "pizzagpt",
        "llmrelay" + UNSETTLED,
        REFERENCE + UNSETTLED,
    ),
    (
        "OpenAI non-stream, heap not settled after warm-up: llmrelay ÷ raw aiohttp (req/s)",
        "openai",
        "llmrelay" + UNSETTLED,
        REFERENCE + UNSETTLED,
    ),
]


def reference_of(client: str) -> str:
    """The client the ``x raw`` column compares ``client`` with: raw aiohttp measured alike."""
    return REFERENCE + UNSETTLED if client.endswith(UNSETTLED) else REFERENCE


def client_label(group: str, client: str) -> str:
    base = client.removesuffix(UNSETTLED)
    name = LABELS[("openai" if group.startswith("openai") else group, base)]
    return name + (", heap not settled after warm-up" if base != client else "")


def med(xs: list[float]) -> float:
    return float(st.median(xs))


def mmm(xs: list[float], fmt: str = "{:.0f}", scale: float = 1.0) -> str:
    ys = [x * scale for x in xs]
    lo, mid, hi = fmt.format(min(ys)), fmt.format(med(ys)), fmt.format(max(ys))
    return mid if lo == hi else f"{mid} ({lo}–{hi})"


def load_anchors() -> dict[str, Any]:
    path = HERE / "anchors.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _anchor_index(anchors: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(a["group"], a["client"], a["concurrency"]): a for a in anchors.get("throughput", [])}


def _groups(data: dict[str, Any]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in data.get("throughput", []):
        groups[(r["group"], r["client"], r["concurrency"])].append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r["rep"])
    return groups


def _ratio(
    groups: dict[tuple[str, str, int], list[dict[str, Any]]], group: str, a: str, b: str, c: int
) -> tuple[float, float, float] | None:
    """Ratio of medians, and the min and max of the per-repetition (paired) ratios."""
    ra, rb = groups.get((group, a, c)), groups.get((group, b, c))
    if not ra or not rb:
        return None
    by_rep = {r["rep"]: r["units_per_s"] for r in rb}
    paired = [r["units_per_s"] / by_rep[r["rep"]] for r in ra if r["rep"] in by_rep]
    headline = med([r["units_per_s"] for r in ra]) / med([r["units_per_s"] for r in rb])
    return headline, min(paired), max(paired)


def _fmt_ratio(ratio: tuple[float, float, float] | None) -> str:
    if ratio is None:
        return "n/a"
    head, lo, hi = ratio
    return f"{head:.2f}× ({lo:.2f}–{hi:.2f})"


def render(data: dict[str, Any], raw_name: str = "") -> str:
    f = data["facts"]
    ws = f["versions"]["workspace"]
    g4f = f["versions"].get("g4f") or {}
    anchors = load_anchors()
    reps = data["args"]["reps"]
    out: list[str] = []
    add = out.append

    add("# llmrelay benchmark results")
    add("")
    add(
        "Generated by `uv run python bench/run.py`"
        + (f" from `bench/results/{raw_name}`" if raw_name else "")
        + "; do not edit by hand (see bench/README.md)."
    )
    add("")
    load_end = ", ".join(f"{x:.2f}" for x in f.get("loadavg_end", []))
    add(
        f"Date: {f['date_utc']}. Machine: {f['nproc']} vCPU ({f['cpu']}), {f['mem']} RAM, "
        f"Linux {f['kernel']}, shared (load avg at start "
        f"{', '.join(f'{x:.2f}' for x in f['loadavg_start'])}; at end {load_end}). "
        f"Python {f['python']}. {f.get('hyperfine') or 'hyperfine absent (timed loop)'}. "
        f"Network: {f['network']}."
    )
    add("")
    add(
        f"Code: commit {f['git_commit']}"
        + (
            f", with uncommitted changes in {len(f['git_dirty'])} file(s) under core/ or "
            "providers/ (edits in progress)."
            if f["git_dirty"]
            else ", clean tree under core/ and providers/."
        )
        + f" Versions: llmrelay {ws.get('llmrelay')}, llmrelay-pizzagpt "
        f"{ws.get('llmrelay-pizzagpt')}, llmrelay-openai-compat "
        f"{ws.get('llmrelay-openai-compat')}, aiohttp {ws.get('aiohttp')}, "
        f"pydantic {ws.get('pydantic')}, tenacity "
        f"{ws.get('tenacity')}, openai {ws.get('openai')} (httpx2 {ws.get('httpx2')}); "
        + (
            f"g4f {g4f.get('g4f')} (aiohttp {g4f.get('aiohttp')}) in its own venv."
            if g4f
            else f"g4f not measured ({data.get('g4f', {}).get('note')})."
        )
    )
    add("")
    add(
        f"All figures: median (min–max) over {reps} repetition(s). Each throughput repetition "
        "is a fresh client process; repetitions are interleaved (repetition 1 of every case, "
        "then repetition 2, ...). One replica process (bench/replica.py) on 127.0.0.1 shares "
        "the cores with the client. Between its warm-up and its timed part each client process"
        " runs one full garbage collection, so that the collector's work on the objects its"
        " first request created (imports) does not fall into the timed part; rows marked"
        " *heap not settled* skip it, as the anchors' harness does (see bench/README.md)."
        + (QUICK_NOTE if data["args"]["quick"] else "")
    )
    add("")
    guard = data.get("guard")
    if guard:
        add(
            "Outside load: before each case and import measurement the runner waited for other"
            " processes to use at"
            f" most {guard['max_others']:g} CPU cores (it waited {guard['waited_s']:.0f} s in"
            f" all, of a {guard['wait_budget_s']:.0f} s budget), and ran a case again when they"
            f" used more meanwhile (up to {guard['retries']} times, keeping the quietest"
            f" attempt): {guard['reruns']} re-run(s). The `others' load` column shows what"
            " remained."
        )
        add("")

    groups = _groups(data)
    if groups:
        add("## Targets (issues 4 and 5)")
        add("")
        add(
            "Ratio of the medians of units/s, then in brackets the lowest and highest ratio of "
            "the same repetition's pair of runs (run back to back)."
        )
        add("")
        add("| ratio | conc | measured | target | |")
        add("|---|---:|---:|---:|---|")
        for label, group, a, b, target in TARGETS:
            for conc in (1, 50):
                ratio = _ratio(groups, group, a, b, conc)
                verdict = "n/a"
                if ratio is not None:
                    verdict = "met" if ratio[0] >= target else "**not met**"
                add(f"| {label} | {conc} | {_fmt_ratio(ratio)} | ≥ {target:g}× | {verdict} |")
        for label, group, a, b in CONTEXT:
            for conc in (1, 50):
                ratio = _ratio(groups, group, a, b, conc)
                ref = _anchor_ratio(anchors, group, a, b, conc)
                add(f"| {label} (context; anchors: {ref}) | {conc} | {_fmt_ratio(ratio)} | – | |")
        add("")

    if "imports" in data:
        _render_imports(data["imports"], anchors, add)
    if groups:
        _render_throughput(data, groups, anchors, add)

    add("## Caveats")
    add("")
    out += [
        "- The client and the replica share 2 vCPUs, and the machine is shared with other work"
        " (see the load averages): absolute req/s move between runs. The ratios (taken from"
        " runs made back to back) and the client CPU per unit carry over better.",
        "- Every stream client sends `stream_options.include_usage` (llmrelay's provider always"
        " does), so all receive the same bytes: one role frame, the content frames, a finish"
        " frame, a usage frame, `[DONE]`. Only content frames are counted.",
        "- The raw aiohttp SSE reader is minimal (aiohttp's line iterator, blank-line framing,"
        " multi-line `data`); llmrelay's decoder also handles bare-CR line ends, split bytes and"
        " size limits, and its client builds OpenAI-shaped chunk objects.",
        "- The 1st-request column includes lazy imports and plugin discovery: llmrelay imports"
        " aiohttp and loads its registry on the first call.",
        "- The anchors' figures come from another run on the same kind of machine (their date is"
        " above their column); compare them by ratio, not by absolute value.",
        "- Loopback hides connection costs: g4f opens a new session (so a new TCP and TLS"
        " handshake) per request, which costs far more against a real server than here.",
    ]
    add("")
    return "\n".join(out)


def others(rs: list[dict[str, Any]]) -> str:
    """The CPU the rest of the machine used during these runs, in cores (median, max)."""
    xs = [r["others_cores"] for r in rs if "others_cores" in r]
    if not xs:
        return "–"
    return f"{med(xs):.2f} (≤{max(xs):.2f})"


def _faults_per_request(rs: list[dict[str, Any]]) -> str:
    """The client's minor page faults per request in the timed part (median, max): about two
    or more per request means its socket reads come from mmap (bench/README.md)."""
    xs = [r["client_minor_faults"] / r["n"] for r in rs if "client_minor_faults" in r]
    if not xs:  # a raw file from before the column
        return "–"
    return f"{med(xs):.1f} (≤{max(xs):.1f})"


def _gc_ms(rs: list[dict[str, Any]]) -> str:
    """The client's garbage collector time in the timed part, ms per run (median, max), and
    the median number of full (oldest-generation) collections in it."""
    xs = [r["client_gc_s"] * 1e3 for r in rs if "client_gc_s" in r]
    if not xs:  # a raw file from before the column
        return "–"
    full = med([float(r["client_gc_collections"][2]) for r in rs if "client_gc_s" in r])
    return f"{med(xs):.1f} (≤{max(xs):.1f}), {full:g} full"


def _anchor_ratio(anchors: dict[str, Any], group: str, a: str, b: str, conc: int) -> str:
    idx = _anchor_index(anchors)
    x = idx.get((group, a.removesuffix(UNSETTLED), conc))
    y = idx.get((group, b.removesuffix(UNSETTLED), conc))
    if not x or not y:
        return "n/a"
    return f"{x['units_per_s'] / y['units_per_s']:.2f}×"


def _render_imports(im: dict[str, Any], anchors: dict[str, Any], add: Any) -> None:
    add("## Import time and memory")
    add("")
    add(
        f"Wall: median of the {im['rounds']} round medians (min–max of round medians); a round ="
        f" {im['runs']} runs after 1 warm-up ({im['tool']}). `-X importtime` total = the"
        " cumulative time of the top-level imports that `python -c pass` does not make. Peak"
        " RSS = ru_maxrss of one run."
    )
    add("")
    add(
        "| command | wall ms | wall − `python -c pass` ms | `-X importtime` ms | peak RSS MiB |"
        " anchors' wall ms |"
    )
    add("|---|---:|---:|---:|---:|---:|")
    anchor_imports = anchors.get("imports_ms", {})
    for case in im["cases"]:
        base = im["baseline"][case["python"]]
        walls = [med(r) for r in case["wall_s"]]
        bases = [med(r) for r in base["wall_s"]]
        net = [w - b for w, b in zip(walls, bases, strict=True)]
        ref = anchor_imports.get(case["label"])
        add(
            f"| `{case['label']}` | {mmm(walls, scale=1e3)} | {mmm(net, scale=1e3)} | "
            f"{mmm([float(x) for x in case['importtime_us']], scale=1e-3)} | "
            f"{mmm([float(x) for x in case['rss_kib']], scale=1 / 1024)} | "
            f"{ref if ref is not None else '–'} |"
        )
    bases_txt = ", ".join(
        f"{med([med(r) for r in b['wall_s']]) * 1e3:.0f} ms / "
        f"{med([float(x) for x in b['rss_kib']]) / 1024:.0f} MiB"
        for b in im["baseline"].values()
    )
    add("")
    add(f"`python -c pass` (wall / peak RSS), per interpreter: {bases_txt}.")
    for case in im["cases"]:
        if case["label"] in ("import llmrelay", "llmrelay --help") and case.get("heaviest"):
            parts = ", ".join(f"{name} {us / 1e3:.0f}" for name, us in case["heaviest"])
            add("")
            add(
                f"Heaviest packages under `{case['label']}` (cumulative ms, one run; nested"
                f" packages overlap): {parts}."
            )
    add("")


def _render_throughput(
    data: dict[str, Any],
    groups: dict[tuple[str, str, int], list[dict[str, Any]]],
    anchors: dict[str, Any],
    add: Any,
) -> None:
    anchor_idx = _anchor_index(anchors)
    for group in ("pizzagpt", "openai", "openai-stream"):
        keys = [k for k in groups if k[0] == group]
        if not keys:
            continue
        stream = group == "openai-stream"
        unit = "chunk" if stream else "req"
        n = groups[keys[0]][0]["n"]
        title = TITLES[group].format(chunks=data.get("stream_chunks", 200))
        add(f"## {title}, {n} requests per run")
        add("")
        add(
            f"| client | conc | {unit}s/s | × raw | Δ µs/{unit} vs raw | client CPU µs/{unit} |"
            f" server CPU µs/{unit} | page faults /req | GC ms /run | peak RSS MiB |"
            " 1st request ms |"
            f" others' load | anchors' {unit}s/s |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        clients: list[str] = []
        for k in keys:
            if k[1] not in clients:
                clients.append(k[1])
        for conc in (1, 50):
            for client in clients:
                rs = groups.get((group, client, conc))
                if not rs:
                    continue
                reference = reference_of(client)
                raw = groups.get((group, reference, conc))
                raw_us = med([r["elapsed_s"] / r["units"] * 1e6 for r in raw]) if raw else None
                wall_us = med([r["elapsed_s"] / max(r["units"], 1) * 1e6 for r in rs])
                if client == reference:
                    delta, ratio = "0 (ref)", "1"
                else:
                    delta = f"{wall_us - raw_us:+.0f}" if raw_us is not None else "n/a"
                    r = _ratio(groups, group, client, reference, conc)
                    ratio = f"{r[0]:.2f}" if r else "n/a"
                cpu = med([r["client_cpu_s"] / max(r["units"], 1) * 1e6 for r in rs])
                # The server's CPU covers the warm-up too: divide by every unit it served.
                srv = med(
                    [
                        r["server_cpu_s"]
                        / max(r["units"] * (r["n"] + r["warmup"]) / r["n"], 1)
                        * 1e6
                        for r in rs
                    ]
                )
                faults = _faults_per_request(rs)
                errs = sum(r["errors"] for r in rs)
                short = sum(1 for r in rs if r["units"] != r.get("expected_units", r["units"]))
                name = client_label(group, client)
                if errs:
                    name += f" **{errs} errors**"
                if short:
                    name += f" **{short} runs short of units**"
                anchor = anchor_idx.get((group, client.removesuffix(UNSETTLED), conc))
                add(
                    f"| {name} | {conc} | {mmm([r['units_per_s'] for r in rs])} | {ratio} | "
                    f"{delta} | {cpu:.0f} | {srv:.0f} | {faults} | {_gc_ms(rs)} | "
                    f"{mmm([float(r['maxrss_kib']) for r in rs], scale=1 / 1024)} | "
                    f"{med([r['first_request_s'] for r in rs]) * 1e3:.1f} | "
                    f"{others(rs)} | {anchor['units_per_s'] if anchor else '–'} |"
                )
        add("")
    add(
        "Columns: × raw = ratio of median units/s to raw aiohttp with one shared session in the"
        " same mode; Δ = median wall time per unit minus raw aiohttp's; client CPU = user+sys"
        " CPU of the client process in the timed part, per unit; server CPU = the replica's,"
        " per unit served (warm-up included, 10 ms ticks); page faults = the client process's"
        " minor page faults per request in the timed part, median and maximum (about two or"
        " more per request: its socket reads are being served by mmap; a few tenths: they are"
        " not; see bench/README.md); GC ms = the time the client's garbage collector took in"
        " the timed part, median and maximum, and the median count of full collections (see"
        " bench/README.md); peak RSS = ru_maxrss of the client process, imports"
        " included; 1st request = the first call in a fresh process (lazy"
        " imports, plugin discovery, connection set-up); others' load = CPU the rest of the"
        " machine used during the run, in cores (busy time in /proc/stat minus the client and"
        " the replica), median and maximum; anchors' = the median in"
        f" ../shared/anchors/anchors-results.md ({anchors.get('date_utc', '?')} UTC), same"
        " client and mode."
    )
    add("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", help="bench/results/raw-<stamp>.json")
    parser.add_argument("-o", "--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    raw = Path(args.raw)
    text = render(json.loads(raw.read_text()), raw_name=raw.name)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
