"""The benchmark behind bench/bench.py (kept out of the main script: see its docstring).

What is measured, and how (/work/shared/BENCHMARKING.md says why it is done this way):

1. raw ``os.pipe`` round trip between two processes -- the floor: a child forked before
   anything else echoes 16-byte messages over two pipes;
2. a call through a checked-out pooly worker: ``lease.echo(msg)``, the same 16 bytes, default
   start method (plus, for information, the same call pre-bound, and through a worker
   started with ``fork``);
3. ``ProcessPoolExecutor`` single-task round trip: ``submit(echo, msg).result()`` one at a
   time, ``max_workers=1``, same start method as the pool;
4. uncontended ``pool.checkout()`` + ``pool.checkin(lease)``: batches of 1000, median of the
   per-op time over the batches;
5. time from ``os.kill(pid, SIGKILL)`` of an idle worker of a size-1 pool until a call
   succeeds on a worker with another pid (checkout blocks, event-driven, for the
   replacement; no sleeps in the measured window), per start method;
6. a lease call stuck in C code holding its worker's GIL under ``call_timeout=1``;
7. ``pooly.ProcessPoolExecutor`` single-task round trip: ``submit(echo, msg).result()`` one
   at a time, ``max_workers=1``, default start method, beside 2 and 3;

and the executor's throughput, CPU-bound speed-up and hung task (8-11, ``_bench_executor``),
and asyncio (12-14, ``_bench_asyncio``): ``await lease.echo(msg)`` beside 2 and
``run_in_executor`` (pinned), 10,000 tasks waiting on a pool of 2, 1,000 cancellations
racing checkins; and healing (15, ``_bench_heal``): SIGKILL -> replacement answering for
the pool's own fork server beside multiprocessing's forkserver (the old path), idle and under
``pooly demo``'s load.

The round trips (1-3, 7, 12) run in a separate process (``--pinned-part``) pinned, with every
process it starts, to ONE CPU: a cross-CPU wake-up costs far more than anything Pooly does and would
drown the comparison. The contenders run interleaved in rounds (A B C D, B C D A, ...) and
each figure is the median of all its samples, so drift on the shared machine hits all of
them alike. 4-6, 8-11 and 13-15 run unpinned, in the main process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from _bench_asyncio import (
    aexecutor_timer,
    alease_timer,
    cancellations,
    uvloop_new_loop,
    waiters,
)
from _bench_executor import executor_hung, throughput
from _bench_heal import LABELS as HEAL_LABELS
from _bench_heal import PATHS as HEAL_PATHS
from _bench_heal import heal, kill_once, settle
from _bench_workers import Echo, echo, pipe_echo_loop

import pooly

BENCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
MSG = b"0123456789abcdef"  # 16 bytes: the payload of every round trip


@dataclass(frozen=True)
class Params:
    rounds: int  # interleaved rounds of the pinned round trips
    calls: int  # pipe / pooly samples per contender per round
    ppe_calls: int  # ProcessPoolExecutor samples per round (each ~10x slower)
    co_batches: int  # checkout+checkin batches (after a tenth more as warm-up)
    co_batch: int  # operations per batch
    kills: dict[str, int]  # SIGKILL repetitions per start method
    hangs: int  # hung calls stopped by call_timeout
    tp_tasks: int  # trivial tasks per contender per round (executor throughput)
    tp_rounds: int
    chunk_tasks: int  # the same with a chunksize
    chunk_rounds: int
    chunksize: int
    cpu_tasks: int  # ~10 ms CPU-bound tasks per contender per round
    cpu_rounds: int
    ex_hangs: int  # hung executor tasks stopped by call_timeout
    aio_waiters: int  # tasks waiting at once on a pool of 2 (asyncio)
    aio_cancels: int  # cancellations of waiting tasks racing checkins (asyncio)
    heal_idle: int  # item 15: SIGKILLs per path, idle host
    heal_load: int  # item 15: SIGKILLs per path under the demo's load
    heal_warmup: float  # seconds of the demo's load before its first kill


FULL = Params(
    rounds=40,
    calls=2000,
    ppe_calls=200,
    co_batches=300,
    co_batch=1000,
    kills={"forkserver": 20, "fork": 20, "spawn": 8},
    hangs=5,
    tp_tasks=100_000,
    tp_rounds=3,
    chunk_tasks=500_000,
    chunk_rounds=5,
    chunksize=100,
    cpu_tasks=100,
    cpu_rounds=9,
    ex_hangs=5,
    aio_waiters=10_000,
    aio_cancels=1_000,
    heal_idle=30,
    heal_load=60,
    heal_warmup=1.0,
)
QUICK = Params(
    rounds=4,
    calls=300,
    ppe_calls=30,
    co_batches=20,
    co_batch=1000,
    kills={"forkserver": 3, "fork": 3},
    hangs=1,
    tp_tasks=2000,
    tp_rounds=1,
    chunk_tasks=20_000,
    chunk_rounds=1,
    chunksize=100,
    cpu_tasks=10,
    cpu_rounds=1,
    ex_hangs=1,
    aio_waiters=2_000,
    aio_cancels=200,
    heal_idle=3,
    heal_load=4,
    heal_warmup=0.3,
)


@dataclass(frozen=True)
class Target:
    """One target of an issue: ``limit`` must hold (PASS/FAIL); ``aim``, if any, is the
    stretch goal."""

    name: str
    unit: str
    limit: float
    aim: float | None
    higher_is_better: bool = False
    of: str = ""  # what the value is, if not the median: "max "

    def meets(self, value: float, bound: float) -> bool:
        return value >= bound if self.higher_is_better else value <= bound

    def judge(self, value: float) -> dict[str, Any]:
        ok = self.meets(value, self.limit)
        aim_met = self.aim is not None and self.meets(value, self.aim)
        op = ">=" if self.higher_is_better else "<="
        aim = "" if self.aim is None else f" (aim {self.aim:g}{self.unit})"
        return {
            "name": self.name,
            "value": value,
            "unit": self.unit,
            "limit": self.limit,
            "aim": self.aim,
            "text": f"{self.of}{op} {self.limit:g}{self.unit}{aim}",
            "ok": ok,
            "aim_met": aim_met,
            "result": ("PASS (aim met)" if aim_met else "PASS") if ok else "FAIL",
        }


CALL_OVER_PIPE = Target("call round trip / pipe floor", "x", 3.0, 1.5)
PPE_OVER_CALL = Target("ProcessPoolExecutor / call", "x", 4.0, 10.0, higher_is_better=True)
CHECKOUT_US = Target("checkout+checkin", " µs", 10.0, 3.0)
KILL_MS = Target("SIGKILL -> replacement answering", " ms", 100.0, 10.0)
CALL_TIMEOUT = 1.0  # the hung-call figure's call_timeout (issue 8's bar)
HUNG_FAIL_S = Target("hung call -> CallTimeout", " s", 1.5, 1.1)
HUNG_BACK_MS = Target("CallTimeout -> pool at full size", " ms", 100.0, 20.0)
# Issue 8's bars (the executor).
EX_SUBMIT = Target("stdlib executor round trip / pooly's", "x", 10.0, None, True)
EX_MAP_OVER_STD = Target("pooly map / stdlib executor map", "x", 4.0, 10.0, True)
EX_MAP_OVER_IMAP = Target("pooly map / mp.Pool.imap (fork)", "x", 1.0, 2.0, True)
EX_CHUNK_OVER_MAP = Target("pooly map / mp.Pool.map, chunked", "x", 1.0, None, True)
EX_CPU_SPEEDUP = Target("CPU-bound speed-up on 2 workers (pool overhead)", "x", 1.8, None, True)
# The hung task's bars hold for every repetition: judged on the worst.
EX_HUNG_FAIL_S = Target("hung task -> CallTimeout", " s", 1.5, 1.1, of="max ")
EX_HUNG_BACK_MS = Target("CallTimeout -> executor pool full", " ms", 100.0, 20.0, of="max ")
# Issue 9's bars (asyncio).
AIO_OVER_CALL = Target("await lease.echo / lease.echo (thread)", "x", 2.0, None)
AIO_PPE = Target("run_in_executor(stdlib executor) / await lease.echo", "x", 10.0, None, True)
AIO_FIFO = Target("waiters served out of FIFO order", "", 0, None)
AIO_STALL_MS = Target("10 ms ticker's worst stall", " ms", 50.0, None, of="max ")
AIO_LOST = Target("workers lost + waiters left after cancellations", "", 0, None)
# Issue 10, part 5 (healing), judged on the pool's own fork server (the default path).
HEAL_IDLE_MS = Target("SIGKILL -> replacement answering, idle", " ms", 5.0, None)
HEAL_LOAD_MS = Target("SIGKILL -> replacement answering, demo's load", " ms", 10.0, None)


def summary(samples: list[int] | list[float], scale: float = 1e-3) -> dict[str, Any]:
    """Median, p10, p90, min, max of samples, scaled (default: ns -> µs)."""
    s = sorted(samples)
    n = len(s)
    return {
        "median": statistics.median(s) * scale,
        "p10": s[n // 10] * scale,
        "p90": s[min(n - 1, (n * 9) // 10)] * scale,
        "min": s[0] * scale,
        "max": s[-1] * scale,
        "n": n,
    }


# ============================================================== pinned part (own process)

Timer = Callable[[int, list[int]], None]


def pinned_part(p: Params) -> dict[str, Any]:
    """Round trips 1-3, every process on one CPU. Runs as ``bench.py --pinned-part PATH``."""
    # Pin first, while this process has one thread: everything started from here on (the
    # floor's child, the fork server, the workers, the executor's process) inherits it.
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    # The floor's child is forked now, before any thread exists.
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            pipe_echo_loop(to_child_r, from_child_w, len(MSG))
        finally:
            os._exit(0)
    os.close(to_child_r)
    os.close(from_child_w)

    import multiprocessing
    from concurrent.futures import Executor, ProcessPoolExecutor

    pc = time.perf_counter_ns
    msg, size = MSG, len(MSG)

    def run_pipe(n: int, out: list[int]) -> None:
        write, read, w, r = os.write, os.read, to_child_w, from_child_r
        for _ in range(n):
            t = pc()
            write(w, msg)
            read(r, size)
            out.append(pc() - t)

    def lease_timer(lease: Any) -> Timer:
        def run(n: int, out: list[int]) -> None:
            for _ in range(n):
                t = pc()
                lease.echo(msg)
                out.append(pc() - t)

        return run

    def bound_timer(fn: Callable[[bytes], Any]) -> Timer:
        def run(n: int, out: list[int]) -> None:
            for _ in range(n):
                t = pc()
                fn(msg)
                out.append(pc() - t)

        return run

    def ppe_timer(ex: Executor) -> Timer:
        def run(n: int, out: list[int]) -> None:
            submit = ex.submit
            for _ in range(n):
                t = pc()
                submit(echo, msg).result()
                out.append(pc() - t)

        return run

    try:
        with pooly.Pooly() as top:
            pool = top.start_pool("bench", Echo, size=1)
            start_method = pool.start_method
            # 12: the same call from a task, through a pool of its own (its lease is taken
            # by each run's task), on the default asyncio loop and, if installed, uvloop.
            apool = top.start_pool("bench-aio", Echo, size=1)
            aloop = asyncio.new_event_loop()
            uvloop = uvloop_new_loop()
            # For information: the same call to a worker forked from this process.
            fork_pool = top.start_pool("bench-fork", Echo, size=1, start_method="fork")
            ctx = multiprocessing.get_context(start_method)
            # pex: the drop-in, standalone (its own tree), one worker, default start method.
            with (
                pooly.ProcessPoolExecutor(max_workers=1) as pex,
                ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex,
            ):
                if pex.pool.start_method != start_method:
                    raise AssertionError("bench: the executor's start method is not the pool's")
                lease = pool.checkout(timeout=30)
                fork_lease = fork_pool.checkout(timeout=30)
                contenders: list[tuple[str, Timer, int]] = [
                    ("pipe", run_pipe, p.calls),
                    ("call", lease_timer(lease), p.calls),
                    ("call_bound", bound_timer(lease.echo), p.calls),
                    ("call_fork", lease_timer(fork_lease), p.calls),
                    ("ppe", ppe_timer(ex), p.ppe_calls),
                    ("ex_submit", ppe_timer(pex), p.calls),
                    ("acall", alease_timer(aloop, apool, msg), p.calls),
                    ("appe", aexecutor_timer(aloop, ex, msg), p.ppe_calls),
                ]
                if uvloop is not None:
                    contenders.append(("acall_uvloop", alease_timer(uvloop, apool, msg), p.calls))
                samples: dict[str, list[int]] = {name: [] for name, _, _ in contenders}
                for _, run, n in contenders:  # warm up (and start the executor's process)
                    run(max(n // 4, 10), [])
                for r in range(p.rounds):
                    k = r % len(contenders)
                    for name, run, n in contenders[k:] + contenders[:k]:
                        run(n, samples[name])
                if lease.echo(msg) != msg:
                    raise AssertionError("the worker echoed something else")
                pool.checkin(lease)
                fork_pool.checkin(fork_lease)
                aloop.close()
                if uvloop is not None:
                    uvloop.close()
    finally:
        os.close(to_child_w)  # the floor's child reads EOF and exits
        os.close(from_child_r)
        os.waitpid(child, 0)

    out: dict[str, Any] = {"cpu": cpu, "start_method": start_method, "rounds": p.rounds}
    for name, s in samples.items():
        out[name] = summary(s)
    return out


def run_pinned_subprocess(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pooly-bench-") as d:
        path = os.path.join(d, "pinned.json")
        cmd = [sys.executable, BENCH_SCRIPT, "--pinned-part", path]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout.decode(errors="replace"))
            raise SystemExit(f"bench: the pinned part failed with exit code {proc.returncode}")
        with open(path) as f:
            result: dict[str, Any] = json.load(f)
            return result


# ============================================================== unpinned part (main process)


def checkout_checkin(top: pooly.Pooly, p: Params) -> dict[str, Any]:
    """Uncontended checkout()+checkin(): median over batches of the per-op time."""
    pool = top.start_pool("bench-checkout", Echo, size=1)
    checkout, checkin = pool.checkout, pool.checkin
    pc = time.perf_counter_ns
    warmup = p.co_batches // 10
    per_op: list[float] = []
    for i in range(warmup + p.co_batches):
        t = pc()
        for _ in range(p.co_batch):
            checkin(checkout())
        dt = pc() - t
        if i >= warmup:
            per_op.append(dt / p.co_batch)
    top.stop_pool("bench-checkout")
    return {"start_method": pool.start_method, "batch": p.co_batch, **summary(per_op)}


def kill_to_answer(top: pooly.Pooly, method: str, reps: int) -> dict[str, Any]:
    """SIGKILL an idle worker of a size-1 pool; time until a replacement answers a call."""
    name = f"bench-kill-{method}"
    # Intensity high enough that back-to-back kills never fail the pool.
    pool = top.start_pool(
        name, Echo, size=1, start_method=method, max_restarts=10**6, max_seconds=1.0
    )
    answer_ms: list[float] = []
    lease_ms: list[float] = []
    try:
        for _ in range(reps):
            answer, lease = kill_once(pool)
            answer_ms.append(answer)
            lease_ms.append(lease)
            settle(pool)
    finally:
        top.stop_pool(name)
    return {
        "start_method": method,
        **summary(answer_ms, 1.0),
        "checkout_median": statistics.median(lease_ms),
        "samples": [round(x, 3) for x in answer_ms],
    }


def _hang(lease: pooly.Lease, took: list[float], done: threading.Event) -> None:
    """A hung call (its own thread): how long until its CallTimeout."""
    t0 = time.perf_counter()
    try:
        lease.stuck(60)
    except pooly.CallTimeout:
        took.append(time.perf_counter() - t0)
    finally:
        done.set()


def hung_call(top: pooly.Pooly, reps: int) -> dict[str, Any]:
    """A call stuck in C code holding the GIL, in a pool of 2 with ``call_timeout=1``: time
    until its caller gets CallTimeout, then until the pool is back at full size (both
    workers idle), and how many calls the other worker served meanwhile."""
    pool = top.start_pool("bench-hung", Echo, size=2, call_timeout=CALL_TIMEOUT)
    fail_s: list[float] = []
    back_ms: list[float] = []
    served: list[int] = []
    pc = time.perf_counter
    try:
        for _ in range(reps):
            other = pool.checkout(timeout=30)
            stuck = pool.checkout(timeout=30)
            done = threading.Event()
            took: list[float] = []

            th = threading.Thread(target=_hang, args=(stuck, took, done))
            th.start()
            n = 0
            while not done.is_set():
                other.echo(n)
                n += 1
            t_fail = pc()
            th.join()
            pool.checkin(stuck)
            pool.checkin(other)
            while pool.status().idle < 2:  # (a benchmark may poll)
                time.sleep(0.0002)
            back_ms.append((pc() - t_fail) * 1e3)
            fail_s.append(took[0] if took else math.inf)
            served.append(n)
            settle(pool)
    finally:
        top.stop_pool("bench-hung")
    return {
        "call_timeout": CALL_TIMEOUT,
        "fail_s": summary(fail_s, 1.0),
        "back_ms": summary(back_ms, 1.0),
        "served_by_other_median": statistics.median(served),
    }


def unpinned_part(p: Params) -> dict[str, Any]:
    import multiprocessing

    available = multiprocessing.get_all_start_methods()
    out: dict[str, Any] = {}
    # Item 15's old path runs on multiprocessing's forkserver: preloaded as pooly preloaded it
    # (the worker code and the class's module), before the stdlib executor below starts it.
    from pooly._process import preload_forkserver

    preload_forkserver(("_bench_workers",))
    # First: its multiprocessing.Pool forks this process, better before it has threads.
    out["executor"] = throughput(
        p.tp_tasks,
        p.tp_rounds,
        p.chunk_tasks,
        p.chunk_rounds,
        p.chunksize,
        p.cpu_tasks,
        p.cpu_rounds,
    )
    with pooly.Pooly() as top:
        out["checkout"] = checkout_checkin(top, p)
        out["kill"] = {m: kill_to_answer(top, m, n) for m, n in p.kills.items() if m in available}
        out["hung"] = hung_call(top, p.hangs)
        out["heal"] = heal(top, p.heal_idle, p.heal_load, p.heal_warmup)
        out["aio"] = {
            "waiters": waiters(top, p.aio_waiters),
            "cancel": cancellations(top, p.aio_cancels),
        }
    hung = executor_hung(p.ex_hangs)
    out["executor"]["hung"] = {
        **hung,
        "fail_s": summary(hung["fail_s"], 1.0),
        "back_ms": summary(hung["back_ms"], 1.0),
        "served_by_other_median": statistics.median(hung["served_by_other"]),
        "other_worst_ms_max": max(hung["other_worst_ms"]),
    }
    return out


def live_children() -> dict[int, str]:
    """Our child processes still running, except multiprocessing's own helpers (the fork
    server and resource tracker, which end with this process)."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    helpers = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(x) for x in f.read().split())
        except OSError:
            pass
    out = {}
    for pid in pids - helpers:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return out


# ============================================================== report


def _heal_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Item 15's samples -> per phase and path: median, p10, p90, min, max, n, samples."""
    out: dict[str, Any] = {"paths": HEAL_LABELS}
    for phase in ("idle", "load"):
        out[phase] = {
            path: {
                **summary(raw[phase][path], 1.0),
                "samples": [round(x, 3) for x in raw[phase][path]],
            }
            for path in HEAL_PATHS
        }
        out[phase]["old_over_template"] = (
            out[phase]["old"]["median"] / out[phase]["template"]["median"]
        )
        out[phase]["old_over_spares"] = out[phase]["old"]["median"] / out[phase]["spares"]["median"]
    out["load_info"] = raw["load_info"]
    out["log_errors"] = raw["log_errors"]
    return out


def build_report(
    pinned: dict[str, Any], unpinned: dict[str, Any], p: Params, quick: bool
) -> dict[str, Any]:
    names = ("pipe", "call", "call_bound", "call_fork", "ppe", "ex_submit", "acall", "appe")
    rt = {k: pinned[k] for k in (*names, "acall_uvloop") if k in pinned}
    co = unpinned["checkout"]
    kills = unpinned["kill"]
    default = co["start_method"]
    call_over_pipe = rt["call"]["median"] / rt["pipe"]["median"]
    ppe_over_call = rt["ppe"]["median"] / rt["call"]["median"]
    targets = {
        "call_over_pipe": CALL_OVER_PIPE.judge(call_over_pipe),
        "ppe_over_call": PPE_OVER_CALL.judge(ppe_over_call),
        "checkout_checkin": CHECKOUT_US.judge(co["median"]),
    }
    if default in kills:
        targets["kill_to_answer"] = KILL_MS.judge(kills[default]["median"])
    hung = unpinned["hung"]
    targets["hung_fail"] = HUNG_FAIL_S.judge(hung["fail_s"]["median"])
    targets["hung_back"] = HUNG_BACK_MS.judge(hung["back_ms"]["median"])
    ex = unpinned["executor"]
    tr, ch, cpu, exh = ex["trivial"], ex["chunked"], ex["cpu"], ex["hung"]
    ex_ratios = {
        "stdlib_submit_over_pooly": rt["ppe"]["median"] / rt["ex_submit"]["median"],
        "submit_over_lease_call": rt["ex_submit"]["median"] / rt["call"]["median"],
        "map_over_stdlib": tr["pooly"]["median"] / tr["stdlib"]["median"],
        "map_over_mp_imap": tr["pooly"]["median"] / tr["mp_imap"]["median"],
        "chunked_over_mp_map": ch["pooly"]["median"] / ch["mp_map"]["median"],
        "chunked_over_stdlib": ch["pooly"]["median"] / ch["stdlib"]["median"],
        "cpu_speedup": cpu["speedup"],
        "cpu_speedup_stdlib": cpu["speedup_stdlib"],
    }
    targets["ex_submit"] = EX_SUBMIT.judge(ex_ratios["stdlib_submit_over_pooly"])
    targets["ex_map_over_stdlib"] = EX_MAP_OVER_STD.judge(ex_ratios["map_over_stdlib"])
    targets["ex_map_over_imap"] = EX_MAP_OVER_IMAP.judge(ex_ratios["map_over_mp_imap"])
    targets["ex_chunked_over_map"] = EX_CHUNK_OVER_MAP.judge(ex_ratios["chunked_over_mp_map"])
    targets["ex_cpu_speedup"] = EX_CPU_SPEEDUP.judge(cpu["speedup"])
    targets["ex_hung_fail"] = EX_HUNG_FAIL_S.judge(exh["fail_s"]["max"])
    targets["ex_hung_back"] = EX_HUNG_BACK_MS.judge(exh["back_ms"]["max"])
    aio = unpinned["aio"]
    aio_ratios = {
        "acall_over_call": rt["acall"]["median"] / rt["call"]["median"],
        "appe_over_acall": rt["appe"]["median"] / rt["acall"]["median"],
    }
    if "acall_uvloop" in rt:
        aio_ratios["acall_uvloop_over_call"] = rt["acall_uvloop"]["median"] / rt["call"]["median"]
    targets["aio_over_call"] = AIO_OVER_CALL.judge(aio_ratios["acall_over_call"])
    targets["aio_ppe"] = AIO_PPE.judge(aio_ratios["appe_over_acall"])
    targets["aio_fifo"] = AIO_FIFO.judge(aio["waiters"]["out_of_order"])
    targets["aio_stall"] = AIO_STALL_MS.judge(aio["waiters"]["worst_stall_ms"])
    targets["aio_lost"] = AIO_LOST.judge(aio["cancel"]["lost"])
    heal = _heal_summary(unpinned["heal"])
    targets["heal_idle"] = HEAL_IDLE_MS.judge(heal["idle"]["spares"]["median"])
    targets["heal_load"] = HEAL_LOAD_MS.judge(heal["load"]["spares"]["median"])
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(terse=True),
            "start_method": default,
            "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": quick,
        "params": asdict(p),
        "pinned_cpu": pinned["cpu"],
        "round_trips_us": rt,
        "checkout_checkin_us": co,
        "kill_to_answer_ms": kills,
        "hung_call": hung,
        "executor": ex,
        "aio": aio,
        "heal_ms": heal,
        "ratios": {
            "call_over_pipe": call_over_pipe,
            "ppe_over_call": ppe_over_call,
            **ex_ratios,
            **aio_ratios,
        },
        "targets": targets,
    }


HEADER = ("metric", "median", "p10-p90|max", "ratio", "target", "result")
WIDTHS = (54, 10, 13, 12, 25)


def _row(*cells: str) -> str:
    label, med, spread, ratio, target, result = (*cells, "", "", "", "", "")[:6]
    w = WIDTHS
    line = (
        f"{label:<{w[0]}} {med:>{w[1]}} {spread:>{w[2]}} {ratio:>{w[3]}}   "
        f"{target:<{w[4]}} {result}"
    )
    return line.rstrip()


def print_report(rep: dict[str, Any]) -> None:
    m = rep["machine"]
    rt = rep["round_trips_us"]
    co = rep["checkout_checkin_us"]
    kills = rep["kill_to_answer_ms"]
    t = rep["targets"]
    floor = rt["pipe"]["median"]

    def us(name: str) -> tuple[str, str, str]:
        d = rt[name]
        return (
            f"{d['median']:.1f} µs",
            f"{d['p10']:.1f}-{d['p90']:.1f}",
            f"{d['median'] / floor:.2f}x floor",
        )

    def judged(key: str) -> tuple[str, str]:
        return (t[key]["text"], t[key]["result"]) if key in t else ("", "")

    lines = [
        "",
        "Pooly benchmark" + ("  (--quick: rough figures)" if rep["quick"] else ""),
        f"machine: {m['cpu_count']} CPUs ({m['usable_cpus']} usable), {m['python']}, "
        f"{m['platform']}, load avg {m['loadavg'][0]:.2f}",
        f"pooly default start method: {m['start_method']}"
        + ("; PYTHONDONTWRITEBYTECODE is set" if m["pythondontwritebytecode"] else ""),
        f"round trips 1-3, 7 and 12: all processes pinned to CPU {rep['pinned_cpu']}, "
        f"{rep['params']['rounds']} interleaved rounds, 16-byte payload, median per call",
        "",
        _row(*HEADER),
    ]
    lines.append("-" * len(lines[-1]))
    lines += [
        _row("1 raw os.pipe round trip (floor)", *us("pipe")),
        _row("2 pooly call: lease.echo(msg)", *us("call"), *judged("call_over_pipe")),
        _row("  same, method pre-bound: f = lease.echo (info)", *us("call_bound")),
        _row("  same, worker started with fork (info)", *us("call_fork")),
        _row("3 ProcessPoolExecutor: submit(echo, msg).result()", *us("ppe")),
        _row(
            "  pooly call speed-up over ProcessPoolExecutor",
            "",
            "",
            f"{t['ppe_over_call']['value']:.1f}x",
            *judged("ppe_over_call"),
        ),
        _row(
            "4 checkout()+checkin(), uncontended (unpinned)",
            f"{co['median']:.2f} µs",
            f"{co['p10']:.2f}-{co['p90']:.2f}",
            "",
            *judged("checkout_checkin"),
        ),
    ]
    for method, k in kills.items():
        default = method == m["start_method"]
        lines.append(
            _row(
                f"5 SIGKILL -> replacement answers: {method}"
                + (" (default)" if default else " (info)"),
                f"{k['median']:.1f} ms",
                f"max {k['max']:.1f}",
                f"n={k['n']}",
                *(judged("kill_to_answer") if default else ()),
            )
        )
    h = rep["hung_call"]
    lines += [
        _row(
            f"6 hung call in C, call_timeout={h['call_timeout']:g}s: CallTimeout after",
            f"{h['fail_s']['median']:.3f} s",
            f"max {h['fail_s']['max']:.3f}",
            f"n={h['fail_s']['n']}",
            *judged("hung_fail"),
        ),
        _row(
            "  then the pool back at full size (2 idle) after",
            f"{h['back_ms']['median']:.1f} ms",
            f"max {h['back_ms']['max']:.1f}",
            "",
            *judged("hung_back"),
        ),
        _row(
            "  calls the other worker served meanwhile (info)",
            f"{h['served_by_other_median']:,.0f}",
        ),
    ]
    lines += _executor_rows(rep, judged, us)
    lines += _aio_rows(rep, judged, us)
    lines += _heal_rows(rep, judged)
    print("\n".join(lines) + "\n")


def _k(x: float) -> str:
    return f"{x / 1e3:,.0f}k" if x >= 1e5 else f"{x / 1e3:,.1f}k"


def _rate(d: dict[str, Any]) -> tuple[str, str]:
    return f"{_k(d['median'])}/s", f"{_k(d['min'])}-{_k(d['max'])}"


def _executor_rows(
    rep: dict[str, Any],
    judged: Callable[[str], tuple[str, str]],
    us: Callable[[str], tuple[str, str, str]],
) -> list[str]:
    """Issue 8's rows: the executor (7-11)."""
    ex, r = rep["executor"], rep["ratios"]
    tr, ch, cpu, h = ex["trivial"], ex["chunked"], ex["cpu"], ex["hung"]
    sm = ex["start_method"]
    secs = cpu["seconds"]
    rows = [
        "",
        f"executor (issue 8): pooly.ProcessPoolExecutor; stdlib executor with {sm} (pooly's "
        f"default); multiprocessing.Pool with fork; 8-10 unpinned, {ex['workers']} workers, "
        "interleaved rounds, median over rounds (spread: slowest-fastest round)",
        "",
        _row("7 pooly executor: submit(echo, msg).result() (pinned)", *us("ex_submit")),
        _row(
            "  stdlib executor round trip (3) / pooly executor's",
            "",
            "",
            f"{r['stdlib_submit_over_pooly']:.1f}x",
            *judged("ex_submit"),
        ),
        _row(
            "  pooly executor round trip / lease call (2) (info)",
            "",
            "",
            f"{r['submit_over_lease_call']:.2f}x",
        ),
        _row(f"8 trivial tasks x {tr['tasks']:,}: pooly map(chunksize=1)", *_rate(tr["pooly"])),
        _row("  stdlib executor map", *_rate(tr["stdlib"])),
        _row("  multiprocessing.Pool imap(chunksize=1), fork", *_rate(tr["mp_imap"])),
        _row(
            "  pooly map / stdlib executor map",
            "",
            "",
            f"{r['map_over_stdlib']:.1f}x",
            *judged("ex_map_over_stdlib"),
        ),
        _row(
            "  pooly map / multiprocessing.Pool imap",
            "",
            "",
            f"{r['map_over_mp_imap']:.2f}x",
            *judged("ex_map_over_imap"),
        ),
        _row(
            f"9 trivial tasks x {ch['tasks']:,}: pooly map(chunksize={ch['chunksize']})",
            *_rate(ch["pooly"]),
        ),
        _row(
            f"  multiprocessing.Pool map(chunksize={ch['chunksize']}), fork", *_rate(ch["mp_map"])
        ),
        _row(f"  stdlib executor map(chunksize={ch['chunksize']}) (info)", *_rate(ch["stdlib"])),
        _row(
            "  pooly map / multiprocessing.Pool map",
            "",
            "",
            f"{r['chunked_over_mp_map']:.2f}x",
            *judged("ex_chunked_over_map"),
        ),
        _row(
            f"10 CPU-bound x {cpu['tasks']} ({cpu['task_ms']:.1f} ms each), "
            f"{cpu.get('rounds', 1)} rounds: serial, in-process (best, median)",
            f"{secs['serial']['best']:.3f} s",
            f"{secs['serial']['median']:.3f} s",
        ),
        _row(
            "  pooly map(chunksize=1)",
            f"{secs['pooly']['best']:.3f} s",
            f"{secs['pooly']['median']:.3f} s",
        ),
        _row(
            "  stdlib executor map (info)",
            f"{secs['stdlib']['best']:.3f} s",
            f"{secs['stdlib']['median']:.3f} s",
        ),
        _row(
            f"  pooly: workers busy in tasks, less host CPU ({cpu['host_cpu_s']['pooly'] * 1e3:.0f}"
            " ms a round), of 2 x wall: x 2 =",
            f"{cpu['efficiency']:.1%}",
            "",
            f"{cpu['speedup']:.2f}x",
            *judged("ex_cpu_speedup"),
        ),
        _row(
            f"  stdlib executor: the same (info; host CPU {cpu['host_cpu_s']['stdlib'] * 1e3:.0f}"
            " ms a round)",
            f"{cpu['efficiency_stdlib']:.1%}",
            "",
            f"{cpu['speedup_stdlib']:.2f}x",
        ),
        _row(
            f"  wall-clock speed-up over serial, best (median) rounds, load avg "
            f"{cpu['loadavg_before']:.2f} (info): pooly",
            "",
            "",
            f"{cpu['speedup_wall']:.2f}x ({cpu['speedup_wall_median']:.2f}x)",
        ),
        _row(
            "  the same, stdlib executor (info)",
            "",
            "",
            f"{cpu['speedup_wall_stdlib']:.2f}x ({cpu['speedup_wall_stdlib_median']:.2f}x)",
        ),
        _row(
            f"11 hung task in C, call_timeout={h['call_timeout']:g}s: CallTimeout after",
            f"{h['fail_s']['median']:.3f} s",
            f"max {h['fail_s']['max']:.3f}",
            f"n={h['fail_s']['n']}",
            *judged("ex_hung_fail"),
        ),
        _row(
            "  then the executor's pool back at full size after",
            f"{h['back_ms']['median']:.1f} ms",
            f"max {h['back_ms']['max']:.1f}",
            "",
            *judged("ex_hung_back"),
        ),
        _row(
            "  tasks the other worker served meanwhile (info)",
            f"{h['served_by_other_median']:,.0f}",
            f"worst {h['other_worst_ms_max']:.1f}ms",
        ),
    ]
    if h["errors"]:
        rows.append(f"  the hung task failed otherwise than with CallTimeout: {h['errors']}")
    return rows


def _aio_rows(
    rep: dict[str, Any],
    judged: Callable[[str], tuple[str, str]],
    us: Callable[[str], tuple[str, str, str]],
) -> list[str]:
    """Issue 9's rows: asyncio (12-14)."""
    rt, r = rep["round_trips_us"], rep["ratios"]
    w, c = rep["aio"]["waiters"], rep["aio"]["cancel"]
    rows = [
        "",
        "asyncio (issue 9): 12 pinned, interleaved with 1-3 and 7, default asyncio loop; "
        "13-14 unpinned, a pool of 2, default loop; 13's ticker ticks every 10 ms",
        "",
        _row("12 await lease.echo(msg), AsyncLease (pinned)", *us("acall")),
        _row(
            "  async call / thread call (2)",
            "",
            "",
            f"{r['acall_over_call']:.2f}x",
            *judged("aio_over_call"),
        ),
    ]
    if "acall_uvloop" in rt:
        rows += [
            _row("  same on uvloop (info)", *us("acall_uvloop")),
            _row(
                "  uvloop async call / thread call (2) (info)",
                "",
                "",
                f"{r['acall_uvloop_over_call']:.2f}x",
            ),
        ]
    else:
        rows.append("  uvloop: not installed, no figure")
    rows += [
        _row("  await loop.run_in_executor(stdlib ex, echo, msg)", *us("appe")),
        _row(
            "  run_in_executor / await lease.echo",
            "",
            "",
            f"{r['appe_over_acall']:.1f}x",
            *judged("aio_ppe"),
        ),
        _row(
            f"13 {w['waiters']:,} tasks wait on 2 workers: out of order",
            f"{w['out_of_order']:.0f}",
            "",
            "",
            *judged("aio_fifo"),
        ),
        _row(
            "  10 ms ticker: worst stall (median)",
            f"{w['worst_stall_ms']:.1f} ms",
            f"med {w['median_stall_ms']:.2f}",
            f"n={w['ticks']}",
            *judged("aio_stall"),
        ),
        _row(
            "  worst stall while queueing (info)",
            f"{w['worst_stall_queueing_ms']:.1f} ms",
        ),
        _row(
            f"  worst GC pause meanwhile, {w['gc_full_passes']} full passes (info)",
            f"{w['gc_worst_pause_ms']:.1f} ms",
        ),
        _row(
            f"  {w['waiters']:,} bare tasks on futures: worst stall (info)",
            f"{w['bare_worst_stall_ms']:.1f} ms",
            f"gc {w['bare_gc_worst_pause_ms']:.1f}",
        ),
        _row(
            "  queued, per waiter / served per second (info)",
            f"{w['queue_us_per_waiter']:.1f} µs",
            f"{_k(w['serve_rate'])}/s",
        ),
        _row(
            "  per waiting task: memory (tracemalloc), GC objects (info)",
            f"{w['bytes_per_waiter']:,.0f} B",
            f"{w['gc_objects_per_waiter']:.1f} obj",
            f"bare task: {w['bytes_per_bare_task']:,.0f} B, "
            f"{w['gc_objects_per_bare_task']:.1f} obj",
        ),
        _row(
            f"14 {c['cancelled']:,} cancels racing checkins: workers lost",
            f"{c['lost']:.0f}",
            f"idle {c['idle']}/{c['size']}",
            f"busy {c['busy']} wait {c['waiting']}",
            *judged("aio_lost"),
        ),
        _row(
            f"  ({c['rounds']} rounds, {c['served']:,} served, "
            f"{c['cancelled_mid_call']} cancelled mid-call) (info)",
            f"{c['seconds']:.2f} s",
        ),
    ]
    return rows


def _heal_rows(rep: dict[str, Any], judged: Callable[[str], tuple[str, str]]) -> list[str]:
    """Issue 10, part 5's rows: healing, idle and under the demo's load (15)."""
    h = rep["heal_ms"]
    info = h["load_info"]
    rows = [
        "",
        "healing (issue 10, part 5): SIGKILL of a size-1 pool's idle worker until a new one "
        "answers (unpinned), for three pools started with forkserver, kills interleaved: "
        f"{h['paths']['spares']}, {h['paths']['template']} and {h['paths']['old']} (one per "
        "host, preloaded);",
        "first idle, then beside `pooly demo`'s load in this process "
        f"({info['consumers']} consumer threads, 2 pools of {info['pool_size']}, a fault every "
        f"{info['fault_interval_s']:g} s); spread: p90|max; ratio: old path / this path; "
        "judged: spares",
        "",
    ]
    for phase, label, key in (
        ("idle", "idle", "heal_idle"),
        ("load", "under the demo's load", "heal_load"),
    ):
        d = h[phase]
        for path in HEAL_PATHS:
            k = d[path]
            first = path == "spares"
            name = {
                "spares": "spares=1",
                "template": "pool's fork server, no spare",
                "old": "old path: mp forkserver",
            }[path]
            ratio = {"spares": d["old_over_spares"], "template": d["old_over_template"]}
            rows.append(
                _row(
                    (f"15 {label}: " if phase == "idle" and first else f"   {label}: ") + name,
                    f"{k['median']:.1f} ms",
                    f"{k['p90']:.1f}|{k['max']:.1f}",
                    f"{ratio[path]:.2f}x, n={k['n']}" if path in ratio else f"n={k['n']}",
                    *(judged(key) if first else ()),
                )
            )
    rows.append(
        _row(
            "   the demo's load meanwhile: calls/s, faults, lost (info)",
            f"{_k(info['calls_per_s'])}/s",
            f"{info['faults']} faults",
            f"{info['lost']} lost",
            f"{info['seconds']:.1f} s, load avg {info['loadavg_after']:.2f}",
        )
    )
    for text in [*h["log_errors"], *info["anomalies"]]:
        rows.append(f"   !! {text}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench.py", description="Pooly benchmark: latencies side by side, with ratios."
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--pinned-part", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL

    if args.pinned_part:
        res = pinned_part(p)
        with open(args.pinned_part, "w") as f:
            json.dump(res, f)
        return 0

    t_start = time.monotonic()
    print(f"bench: round trips, pinned to one CPU ({p.rounds} rounds) ...", flush=True)
    pinned = run_pinned_subprocess(args.quick)
    print(
        "bench: executor throughput and CPU-bound speed-up, checkout+checkin, "
        "SIGKILL -> replacement, hung calls, asyncio waiters and cancellations (unpinned) ...",
        flush=True,
    )
    unpinned = unpinned_part(p)
    rep = build_report(pinned, unpinned, p, args.quick)
    rep["elapsed_s"] = round(time.monotonic() - t_start, 2)
    print_report(rep)
    print(f"bench: done in {rep['elapsed_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
            f.write("\n")
        print(f"bench: figures written to {args.json}")
    leftovers = live_children()
    if leftovers:
        print(f"bench: processes left behind: {leftovers}", file=sys.stderr)
        return 2
    if args.check and not all(x["ok"] for x in rep["targets"].values()):
        return 1
    return 0
