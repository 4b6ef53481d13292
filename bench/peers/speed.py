"""The speed workloads of ``make bench-peers``: every selected peer side by side.

Sections (ids for ``--only``): ``throughput``, ``latency``, ``cpu``, ``memory``,
``waiters-threads``, ``waiters-asyncio``. Each starts every selected peer (with
``opts.workers`` workers; the forking ones first), warms it up, then runs them in interleaved
rounds -- A B C, B C A, C A B ... -- so drift of the shared machine hits them alike, and
reports medians. ``latency`` runs in a child process pinned to one CPU (a cross-CPU wake-up
costs more than anything a pool does: /work/shared/BENCHMARKING.md); ``memory`` runs each peer
in a fresh child process of its own (so that the host's growth is that peer's alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from peers import adapters
from peers.adapters import API, Peer, ray_session, started
from peers.report import Section, plot, section
from peers.tasks import spin

SECTION_IDS = ("throughput", "latency", "cpu", "memory", "waiters-threads", "waiters-asyncio")
BENCH_PEERS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_peers.py"
)
REF = "pooly-executor"


def run(opts: argparse.Namespace) -> list[Section]:
    only = set(getattr(opts, "only", None) or SECTION_IDS)
    out: list[Section] = []
    steps: list[tuple[str, Callable[[argparse.Namespace], list[Section]]]] = [
        ("throughput", lambda o: [throughput(o)]),
        ("latency", lambda o: [latency(o)]),
        ("cpu", lambda o: [cpu(o)]),
        ("memory", lambda o: [memory(o)]),
        ("waiters", waiters),
    ]
    for key, step in steps:
        wanted = [s for s in only if s == key or s.startswith(key + "-")]
        if not wanted:
            continue
        o = argparse.Namespace(**vars(opts))
        o.only = sorted(only)
        out += _guarded(key, step, o)
    return out


def _guarded(
    key: str, step: Callable[[argparse.Namespace], list[Section]], o: argparse.Namespace
) -> list[Section]:
    import traceback

    from peers.report import failed_section

    t = time.monotonic()
    try:
        secs = step(o)
    except Exception as e:
        traceback.print_exc()
        secs = [failed_section(key, key, f"{type(e).__name__}: {e}")]
    for s in secs:
        emit(s)
    print(f"  ({key}: {time.monotonic() - t:.0f} s)\n", flush=True)
    return secs


def emit(sec: Section) -> None:
    from peers.report import section_text

    print(section_text(sec), flush=True)


# ------------------------------------------------------------------ helpers


def rounds(
    names: list[str], run_one: Callable[[str], float | None], n_rounds: int
) -> dict[str, list[float]]:
    """``run_one(name)`` for each name, in rounds rotated by one each time; the figures
    ``run_one`` returned (None: nothing recorded), by name."""
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(n_rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            v = run_one(name)
            if v is not None:
                out[name].append(v)
    return out


def ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    return value / ref


def live_and_failed(peers: dict[str, Peer | str]) -> tuple[dict[str, Peer], list[str]]:
    live = {k: v for k, v in peers.items() if isinstance(v, Peer)}
    notes = [f"{k}: {v}" for k, v in peers.items() if isinstance(v, str)]
    return live, notes


def skipped_ray(opts: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The peers to run, and a note if Ray was asked for but can't be imported."""
    peers = list(opts.peers)
    if "ray" in peers:
        why = adapters.ray_available()
        if why is not None:
            peers.remove("ray")
            return peers, [f"ray skipped: Ray can't be imported here ({why})."]
    return peers, []


def _check(name: str, got: list[Any], want: list[Any]) -> None:
    if got != want:
        raise AssertionError(f"{name} returned wrong results")


def api_notes(peers: list[str]) -> list[str]:
    return [f"{p}: {API[p]}." for p in peers]


# ------------------------------------------------------------------ 1. throughput


def throughput(opts: argparse.Namespace) -> Section:
    n, n_rounds = (1000, 2) if opts.quick else (10_000, 3)
    chunk, n_chunked = 100, 10 * n
    peers, notes = skipped_ray(opts)
    items = list(range(n))
    chunked_items = list(range(n_chunked))
    with ray_session(peers, opts.workers), started(peers, opts.workers) as all_:
        live, failed = live_and_failed(all_)
        notes += failed
        runs: dict[str, Callable[[], list[Any] | None]] = {}
        for name, p in live.items():  # warm up: every worker started and answering
            _check(name, p.map("echo", items[:500]), items[:500])
            runs[name] = lambda p=p: p.map("echo", items)
            if p.map_chunked("echo", items[:500], chunk) is not None:
                runs[f"{name}|chunked"] = lambda p=p: p.map_chunked("echo", chunked_items, chunk)

        def one(key: str) -> float:
            want = chunked_items if key.endswith("|chunked") else items
            t = time.perf_counter()
            got = runs[key]()
            s = time.perf_counter() - t
            _check(key, got or [], want)
            return len(want) / s

        rates = rounds(list(runs), one, n_rounds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref = med.get(REF)
    rows: list[list[Any]] = [
        [
            k,
            med[k],
            min(rates[k]),
            max(rates[k]),
            ratio(med[k], ref),
            med.get(f"{k}|chunked"),
        ]
        for k in live
    ]
    return section(
        "throughput",
        "Trivial tasks: throughput",
        f"{n:,} trivial tasks (a function returning its argument) through each peer's bulk API "
        f"with chunksize 1, {opts.workers} workers each, results checked; {n_rounds} "
        "interleaved rounds (the order rotated each round), after a warm-up of 500 tasks. "
        "Tasks per second: the median round, and the slowest and fastest. Unpinned, in the "
        f"benchmark's main process. Last column, for information: {n_chunked:,} tasks with "
        f"chunksize {chunk}, in the same rounds, where the peer's bulk API takes a chunksize "
        "(— where it has none: deadpool ignores Executor.map's, Ray's ActorPool and pooly's "
        "leases send one call at a time).",
        [
            "peer",
            "tasks/s (median)",
            "slowest round",
            "fastest round",
            f"÷ {REF}",
            f"chunksize {chunk}: tasks/s",
        ],
        rows,
        notes=notes + api_notes(list(live)),
        plots=[
            plot(
                "throughput.png",
                "bar",
                f"Trivial-task throughput, chunksize 1, {opts.workers} workers (higher is better)",
                "",
                "tasks per second",
                {k: med[k] for k in live},
            )
        ],
    )


# ------------------------------------------------------------------ 2. latency (pinned child)


def latency(opts: argparse.Namespace) -> Section:
    """Runs :func:`latency_child` in a fresh process pinned to one CPU."""
    data = run_child("latency", opts, opts.peers, timeout=900)
    return data["section"]  # type: ignore[no-any-return]


def latency_child(opts: argparse.Namespace) -> dict[str, Any]:
    cpu_ = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu_})  # before any thread or child: all of them inherit it
    calls, n_rounds = (100, 2) if opts.quick else (300, 6)
    peers, notes = skipped_ray(opts)
    pc = time.perf_counter_ns
    samples: dict[str, list[int]] = {}
    with ray_session(peers, opts.workers), started(peers, opts.workers) as all_:
        live, failed = live_and_failed(all_)
        notes += failed
        import contextlib

        with contextlib.ExitStack() as stack:
            fns = {k: stack.enter_context(p.rtt()) for k, p in live.items()}
            for f in fns.values():
                for i in range(50):  # warm-up
                    f(i)
            samples = {k: [] for k in fns}

            def one(name: str) -> None:
                f, out = fns[name], samples[name]
                for i in range(calls):
                    t = pc()
                    if f(i) != i:
                        raise AssertionError(f"{name} echoed something else")
                    out.append(pc() - t)

            rounds(list(fns), one, n_rounds)  # type: ignore[arg-type]

    def q(xs: list[int], p: float) -> float:
        s = sorted(xs)
        return s[min(len(s) - 1, int(p * len(s)))] / 1e3

    p50 = {k: q(v, 0.5) for k, v in samples.items()}
    ref = p50.get(REF)
    rows: list[list[Any]] = [
        [k, p50[k], q(v, 0.99), ratio(p50[k], ref)] for k, v in samples.items()
    ]
    sec = section(
        "latency",
        "Trivial tasks: latency of a lone round trip",
        f"One task at a time, waiting for its result before the next (echo of an int): "
        f"{calls} round trips per peer per round, {n_rounds} interleaved rounds, after 50 "
        f"warm-up calls; p50 and p99 over all {calls * n_rounds} samples, in µs. The "
        "benchmark process and everything it starts (workers, fork servers, Ray) are pinned "
        "to one CPU, as a cross-CPU wake-up costs more than the pools' own work "
        f"(pool of {opts.workers} workers). pooly-lease: a call on a lease held throughout; "
        "pooly-executor and the other executors: submit(echo, i).result().",
        ["peer", "p50 (µs)", "p99 (µs)", f"p50 ÷ {REF}"],
        rows,
        notes=notes + api_notes(list(samples)),
        plots=[
            plot(
                "latency.png",
                "bar",
                "Lone round trip, p50 (lower is better), pinned to one CPU",
                "",
                "µs per round trip",
                p50,
                log_y=True,
            )
        ],
    )
    return {"section": sec}


def run_child(
    kind: str, opts: argparse.Namespace, peers: list[str], timeout: float
) -> dict[str, Any]:
    """``bench_peers.py --child KIND`` in a fresh process; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="pooly-bench-peers-") as d:
        path = os.path.join(d, "out.json")
        cmd = [
            sys.executable,
            BENCH_PEERS,
            "--child",
            kind,
            "--child-out",
            path,
            "--peers",
            ",".join(peers),
            "--workers",
            str(opts.workers),
        ]
        if opts.quick:
            cmd.append("--quick")
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
        )
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace")[-3000:]
            raise RuntimeError(f"child {kind} {peers} exited {proc.returncode}:\n{tail}")
        with open(path) as f:
            return json.load(f)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ 3. CPU-bound scaling

CPU_TASK_S = 0.010


def calibrate() -> tuple[int, float]:
    """Rounds of :func:`spin` that take ~10 ms here, and what they measured."""
    pc = time.perf_counter

    def timed(k: int) -> float:
        t = pc()
        spin(k)
        return pc() - t

    probe = 20_000
    best = min(timed(probe) for _ in range(5))
    n = max(1, round(probe * CPU_TASK_S / best))
    return n, min(timed(n) for _ in range(3))


def cpu(opts: argparse.Namespace) -> Section:
    tasks_, n_rounds = (8, 2) if opts.quick else (40, 5)
    w = opts.workers
    peers, notes = skipped_ray(opts)
    n, took = calibrate()
    args = [n] * tasks_
    want = [spin(n)] * tasks_
    load = os.getloadavg()[0]
    busy: dict[str, list[float]] = {}  # per round: the workers' time in tasks ÷ (size x wall)
    with (
        ray_session(peers, w),
        started(peers, 1) as one_all,
        started(peers, w) as many_all,
    ):
        ones, f1 = live_and_failed(one_all)
        manys, f2 = live_and_failed(many_all)
        notes += f1 + f2
        names = [k for k in ones if k in manys]
        contenders: dict[str, tuple[int, Callable[[], list[Any]]]] = {
            "serial": (1, lambda: [(spin(x), 0.0) for x in args])
        }
        for k in names:
            contenders[f"{k}|1"] = (1, lambda p=ones[k]: p.map("spin_timed", args))
            contenders[f"{k}|{w}"] = (w, lambda p=manys[k]: p.map("spin_timed", args))
        for k, (_, c) in contenders.items():  # warm-up
            if k != "serial":
                c()

        def one(key: str) -> float:
            size, run_ = contenders[key]
            t = time.perf_counter()
            got = run_()
            s = time.perf_counter() - t
            _check(key, [x for x, _ in got], want)
            busy.setdefault(key, []).append(sum(b for _, b in got) / (size * s))
            return s

        secs = rounds(list(contenders), one, n_rounds)
    med = {k: statistics.median(v) for k, v in secs.items()}
    serial = med["serial"]
    speedup = {k: med[f"{k}|1"] / med[f"{k}|{w}"] for k in names}
    ref = speedup.get(REF)
    rows: list[list[Any]] = [
        [
            k,
            med[f"{k}|1"],
            med[f"{k}|{w}"],
            speedup[k],
            serial / med[f"{k}|{w}"],
            statistics.median(busy[f"{k}|{w}"]),
            ratio(speedup[k], ref),
        ]
        for k in names
    ]
    rows.append(["serial, in-process", serial, None, None, 1.0, None, None])
    return section(
        "cpu",
        f"CPU-bound tasks: 1 worker vs {w}",
        f"{tasks_} tasks of ~{took * 1e3:.0f} ms of pure-Python arithmetic each (calibrated "
        f"here), through each peer's map with chunksize 1, on a pool of 1 worker and on a pool "
        f"of {w}; every pool and the serial in-process run interleaved in {n_rounds} rounds; "
        "median wall time per round. Speed-up: 1-worker time ÷ "
        f"{w}-worker time; vs serial: the serial in-process time ÷ the {w}-worker time. The "
        f"machine has {os.cpu_count()} CPUs shared with other work (load average {load:.2f} "
        "at the start): a neighbour taking a CPU for a while hurts a parallel round more than "
        "a serial one, so the wall-clock speed-ups move by ± 0.3 from run to run. Busy share "
        "does not: the time the workers spent inside the tasks (measured in the worker) ÷ "
        f"({w} times the round's wall time), median over the rounds -- 1.0 means the pool kept "
        "every worker busy all the time; a neighbour slows the tasks and the round alike.",
        [
            "peer",
            "1 worker (s)",
            f"{w} workers (s)",
            "speed-up",
            "vs serial",
            f"busy share, {w} workers",
            f"speed-up ÷ {REF}",
        ],
        rows,
        notes=notes,
        plots=[
            plot(
                "cpu.png",
                "bar",
                f"CPU-bound speed-up, 1 → {w} workers ({os.cpu_count()} CPUs; higher is better)",
                "",
                "speed-up (times)",
                speedup,
            )
        ],
    )


# ------------------------------------------------------------------ 4. memory


def memory(opts: argparse.Namespace) -> Section:
    peers, notes = skipped_ray(opts)
    res: dict[str, dict[str, Any]] = {}
    for p in peers:
        try:
            res[p] = run_child("memory", opts, [p], timeout=300)
        except Exception as e:
            notes.append(f"{p}: {e}")
    ref = res.get(REF, {}).get("pss_mib")
    rows: list[list[Any]] = [
        [
            p,
            r["pss_mib"],
            r["rss_mib"],
            r["uss_mib"],
            r["workers_found"],
            r["helpers"],
            r["helpers_pss_mib"],
            r["host_growth_mib"],
            ratio(r["pss_mib"], ref),
        ]
        for p, r in res.items()
    ]
    how = {p: r["how"] for p, r in res.items()}
    notes += [f"{p}: {h}" for p, h in how.items()]
    return section(
        "memory",
        "Memory per worker",
        f"Each peer in a fresh process of its own, one after the other (memory does not drift "
        f"like time does): a pool of {opts.workers} workers, warmed up with 1,000 trivial "
        "tasks, then its workers' PSS, RSS and USS (private pages) read from "
        "/proc/PID/smaps_rollup, averaged over the workers, in MiB. PSS splits shared pages "
        "between the processes sharing them (forked workers share the parent's or the fork "
        "server's pages); RSS counts them in full. Helpers: the other processes the peer "
        "started below the host (fork servers, resource trackers, Ray's daemons and idle "
        "workers), with their total PSS. Host growth: the host process's RSS after the warm-up "
        "minus before the peer's library was imported (library, threads, buffers; RSS, as "
        "forking workers turns the host's pages into shared ones and lowers its PSS).",
        [
            "peer",
            "PSS/worker (MiB)",
            "RSS/worker (MiB)",
            "USS/worker (MiB)",
            "workers found",
            "helpers",
            "helpers' PSS (MiB)",
            "host growth (MiB)",
            f"PSS ÷ {REF}",
        ],
        rows,
        notes=notes,
        plots=[
            plot(
                "memory.png",
                "bar",
                "Memory per worker: PSS (lower is better)",
                "",
                "MiB per worker (PSS)",
                {p: r["pss_mib"] for p, r in res.items()},
            )
        ],
    )


def smaps(pid: int) -> dict[str, float]:
    """Pss, Rss and USS (Private_Clean + Private_Dirty) of ``pid``, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1]) / 1024
    return {
        "pss": out.get("Pss", 0.0),
        "rss": out.get("Rss", 0.0),
        "uss": out.get("Private_Clean", 0.0) + out.get("Private_Dirty", 0.0),
    }


def descendants() -> set[int]:
    import psutil

    out = set()
    for c in psutil.Process().children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                out.add(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def memory_child(opts: argparse.Namespace) -> dict[str, Any]:
    (name,) = opts.peers
    w = opts.workers
    before = smaps(os.getpid())["rss"]
    with ray_session([name], w), started([name], w) as all_:
        live, failed = live_and_failed(all_)
        if failed:
            raise RuntimeError(failed[0])
        p = live[name]
        items = list(range(1000))
        _check(name, p.map("echo", items), items)
        for i in range(20):
            p.call("echo", i)
        if name == "ray":
            pids = {p.ray.get(a.getpid.remote()) for a in p.actors}  # type: ignore[attr-defined]
            how = "the actors' pids, from a method returning os.getpid()"
        else:
            pids = set(p.map("getpid", list(range(4 * w))))
            how = (
                f"the pids returned by {4 * w} tasks through map, each sleeping 50 ms and "
                "returning os.getpid()"
            )
        host = smaps(os.getpid())["rss"]
        per = [smaps(pid) for pid in pids]
        others = descendants() - pids
        helpers_pss = 0.0
        for pid in others:
            try:
                helpers_pss += smaps(pid)["pss"]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass

    def mean(k: str) -> float:
        return statistics.fmean(x[k] for x in per)

    return {
        "pss_mib": mean("pss"),
        "rss_mib": mean("rss"),
        "uss_mib": mean("uss"),
        "workers_found": len(pids),
        "helpers": len(others),
        "helpers_pss_mib": helpers_pss,
        "host_growth_mib": host - before,
        "how": how,
    }


# ------------------------------------------------------------------ 5. concurrent callers


def waiters(opts: argparse.Namespace) -> list[Section]:
    sizes = [1, 10, 100] if opts.quick else [1, 10, 100, 1000, 10_000]
    modes = [m for m in ("threads", "asyncio") if f"waiters-{m}" in opts.only]
    peers, notes0 = skipped_ray(opts)
    ref = "pooly-lease"
    results: dict[str, dict[tuple[int, str], dict[str, Any]]] = {m: {} for m in modes}
    broken: dict[str, str] = {}  # peers whose callers failed in this mode: not run again
    wait = 20.0 if opts.quick else 30.0  # each caller's limit
    with ray_session(peers, opts.workers), started(peers, opts.workers) as all_:
        live, failed = live_and_failed(all_)
        notes0 += failed
        for p in live.values():
            for i in range(20):
                p.call("echo", i)
        for mode in modes:
            burst = burst_threads if mode == "threads" else burst_asyncio
            for name in list(broken):  # a fresh pool for the next mode
                live[name].stop()
                all_[name] = live[name] = adapters.CLASSES[name](opts.workers)
                notes0.append(f"{name}: {broken[name]}; a fresh pool was started after that.")
            broken.clear()
            for n in sizes:
                n_rounds = 2 if opts.quick else 3
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in live}

                reps = max(1, 100 // n)  # small bursts repeated: one sample is noise

                def one(
                    name: str,
                    n: int = n,
                    burst: Any = burst,
                    runs: Any = runs,
                    reps: int = reps,
                    mode: str = mode,
                ) -> None:
                    for _ in range(reps):
                        if name in broken:
                            runs[name].append(_not_run(broken[name]))
                            return
                        r = burst(live[name], n, wait)
                        runs[name].append(r)
                        if r["errors"]:
                            after = (
                                "it still answered a lone call"
                                if _healthy(live[name])
                                else "it no longer answered a lone call"
                            )
                            broken[name] = (
                                f"callers failed in a burst of {n:,} ({mode}), after which "
                                f"{after}; not run again with {mode}"
                            )

                rounds(list(live), one, n_rounds)  # type: ignore[arg-type]
                for k, rs in runs.items():
                    results[mode][(n, k)] = summarise(rs)
                print(f"  waiters {mode} {n}: done", flush=True)
    out: list[Section] = []
    for mode in modes:
        res = results[mode]
        rows: list[list[Any]] = []
        series: dict[str, list[list[float]]] = {}
        for n in sizes:
            r_ref = res.get((n, ref), {}).get("per_us")
            for k in live:
                r = res[(n, k)]
                rows.append(
                    [
                        n,
                        k,
                        r["per_us"],
                        r["best_us"],
                        r["p50_ms"],
                        r["p99_ms"],
                        ratio(r["per_us"], r_ref),
                        r["errors"],
                    ]
                )
                if r["per_us"] is not None:
                    series.setdefault(k, []).append([n, r["per_us"]])
        top = sizes[-1]
        spread = [
            res[(top, k)]["worst_us"] / res[(top, k)]["best_us"]
            for k in live
            if res[(top, k)]["best_us"]
        ]
        notes = list(notes0)
        if spread:
            notes.append(
                f"At {top:,} callers a peer's bursts varied by up to "
                f"{max(spread):.1f} times between its best and its worst (median spread "
                f"{statistics.median(spread):.1f} times)"
                + (
                    ": thousands of runnable threads contend for one GIL on a shared 2-CPU "
                    "machine, and a burst can stall for seconds -- read this column's larger "
                    "rows as orders of magnitude."
                    if mode == "threads" and top >= 1000
                    else "."
                )
            )
        what_peer = (
            "N threads, each (after all are started and waiting on one event) doing its one "
            "call: pooly-lease checks a worker out, calls it once, checks it in "
            "(`with pool.checkout() as w: w.echo(x)`); the peers, which have no checkout, do the "
            "closest equivalent: submit one trivial task and wait for its result "
            "(submit().result(), apply_async().get(), ray.get). Threads get a 256 KiB stack."
            if mode == "threads"
            else "N asyncio tasks on one event loop, each doing its one call: pooly-lease "
            "`async with pool.acheckout() as w: await w.echo(x)`; the peers, which have no "
            "checkout, the closest equivalent: one trivial task awaited through the peer's own "
            "asyncio API where it has one (pooly-executor asubmit, Ray's awaitable ObjectRef), "
            "else loop.run_in_executor (Executors), asyncio.wrap_future (pebble) or "
            "apply_async with a callback into the loop (multiprocessing.Pool, mpire)."
        )
        out.append(
            section(
                f"waiters-{mode}",
                f"Checkout cost with 1 to {sizes[-1]:,} waiters ({mode})",
                f"{what_peer} A pool of {opts.workers} workers; N = "
                f"{', '.join(f'{s:,}' for s in sizes)}. Per caller: the wall time from the "
                "release of all N until the last answer, ÷ N (µs). Wait: each caller's time "
                "from the release until its answer (p50, p99, ms; FIFO service makes the "
                "median about half the total). Peers interleaved in 3 rounds (in each round "
                "a burst of N < 100 callers is repeated 100 ÷ N times); medians over the "
                "bursts where every caller got its answer, and the best of them (— if none "
                "did). Errors: callers that failed (type: count), each waiting at most "
                f"{wait:.0f} s; a peer whose callers failed is not run again in that mode (the "
                "errors column says so), and gets a fresh pool for the next mode.",
                [
                    "N",
                    "peer",
                    "per caller (µs)",
                    "best burst (µs)",
                    "wait p50 (ms)",
                    "wait p99 (ms)",
                    f"÷ {ref}",
                    "errors",
                ],
                rows,
                notes=notes,
                plots=[
                    plot(
                        f"waiters-{mode}.png",
                        "line",
                        f"N concurrent callers ({mode}), {opts.workers} workers: wall ÷ N "
                        "(lower is better)",
                        "N concurrent callers",
                        "µs per caller",
                        series,
                        log_x=True,
                        log_y=True,
                    )
                ],
            )
        )
    return out


def _not_run(why: str) -> dict[str, Any]:
    return {"per_us": None, "p50_ms": None, "p99_ms": None, "errors": {f"not run: {why}": 1}}


def _healthy(p: Peer) -> bool:
    """Does ``p`` still answer a lone call within 10 s?"""
    try:
        return bool(p.call("echo", -1, timeout=10) == -1)
    except Exception:
        return False


def summarise(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the bursts where every caller got its answer; errors summed over all."""
    ok = [r for r in rs if r["per_us"] is not None and not r["errors"]]
    errors: dict[str, int] = {}
    for r in rs:
        for e, c in r["errors"].items():
            errors[e] = errors.get(e, 0) + c

    def med(k: str) -> float | None:
        return statistics.median(r[k] for r in ok) if ok else None

    return {
        "per_us": med("per_us"),
        "best_us": min(r["per_us"] for r in ok) if ok else None,
        "worst_us": max(r["per_us"] for r in ok) if ok else None,
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "errors": "; ".join(f"{e}: {c}" for e, c in errors.items()) or None,
    }


def _stats(n: int, wall: float, lat: list[float], errors: dict[str, int]) -> dict[str, Any]:
    lat.sort()
    if not lat:
        return {"per_us": None, "p50_ms": None, "p99_ms": None, "errors": errors}
    return {
        "per_us": wall / n * 1e6,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
        "errors": errors,
    }


def _err(errors: dict[str, int], e: BaseException, lock: threading.Lock) -> None:
    msg = str(e)[:80]
    k = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    with lock:
        errors[k] = errors.get(k, 0) + 1


def burst_threads(p: Peer, n: int, wait: float) -> dict[str, Any]:
    """``n`` threads released at once, each doing ``p.call("echo", i)``."""
    go = threading.Event()
    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    pc = time.perf_counter
    t0 = [0.0]

    def caller(i: int) -> None:
        go.wait()
        try:
            if p.call("echo", i, timeout=wait) != i:
                raise AssertionError("wrong result")
            d = pc() - t0[0]
            with lock:
                lat.append(d)
        except Exception as e:
            _err(errors, e, lock)

    old = threading.stack_size(256 * 1024)
    threads: list[threading.Thread] = []
    try:
        for i in range(n):
            t = threading.Thread(target=caller, args=(i,), daemon=True)
            try:
                t.start()
            except RuntimeError as e:  # can't start a new thread
                _err(errors, e, lock)
                break
            threads.append(t)
    finally:
        threading.stack_size(old)
        t0[0] = pc()
        go.set()
        for t in threads:
            t.join()
    wall = pc() - t0[0]
    return _stats(len(threads) or 1, wall, lat, errors)


def burst_asyncio(p: Peer, n: int, wait: float) -> dict[str, Any]:
    """``n`` asyncio tasks released at once, each awaiting ``p.acall("echo", i)``."""

    async def main() -> dict[str, Any]:
        go = asyncio.Event()
        lat: list[float] = []
        errors: dict[str, int] = {}
        lock = threading.Lock()
        pc = time.perf_counter
        t0 = [0.0]

        async def caller(i: int) -> None:
            await go.wait()
            try:
                r = await asyncio.wait_for(p.acall("echo", i), wait)
                if r != i:
                    raise AssertionError("wrong result")
                lat.append(pc() - t0[0])
            except Exception as e:
                _err(errors, e, lock)

        tasks_ = [asyncio.create_task(caller(i)) for i in range(n)]
        await asyncio.sleep(0)  # every task started and waiting on the event
        t0[0] = pc()
        go.set()
        await asyncio.gather(*tasks_)
        wall = pc() - t0[0]
        return _stats(n, wall, lat, errors)

    return asyncio.run(main())
