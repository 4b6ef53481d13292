"""Healing (issue 10, part 5): SIGKILL -> replacement answering, idle and under the demo's load.

Item 5 times the kill of an idle worker on an idle host, per start method. Item 15 times the
same kill (:func:`kill_once`, shared with item 5) for two size-1 pools side by side, kills
interleaved between them (A B C, C B A, ...):

* **spares**: the template path with ``spares=1``: a warm worker, started ahead, takes the
  dead one's place at once, and the dead one's restart becomes the next spare;
* **template**: pooly's path for ``"forkserver"`` -- the pool's own fork server
  (:mod:`pooly._zygote`), which forks the replacement from a warm, single-threaded process;
* **old**: what ``"forkserver"`` meant before pools had fork servers of their own (and still
  means where pidfds are missing): multiprocessing's forkserver, one per host, shared by every
  pool, preloaded with pooly's worker code and the worker class's module (the benchmark
  preloads it before anything starts it). The issue's "~9 ms idle, a median 24 ms under the
  demo's load" were measured on this path. (fork and spawn, also multiprocessing's, are in
  item 5.)

first with nothing else running in this process, then while the load of ``pooly demo`` runs
in this process -- its two pools (counters, hashers: sha256 chains that keep both CPUs
busy), its consumer threads and its fault injector (a fault a second), started through
:meth:`pooly.cli.demo_workload.Demo.start_load`, the very code the demo runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from _bench_workers import Echo

import pooly
import pooly._backend
from pooly.cli import workers as demo_workers
from pooly.cli.common import Display, pooly_errors_to
from pooly.cli.demo_config import Options
from pooly.cli.demo_workload import Demo

PATHS = ("spares", "template", "old")
LABELS = {
    "spares": "the pool's fork server with spares=1 (a warm worker handed over)",
    "template": "the pool's own fork server (template)",
    "old": "multiprocessing's forkserver (old path)",
}
DEMO_SEED = 10  # the load's random choices: the same in every run


def kill_once(pool: pooly.Pool) -> tuple[float, float]:
    """SIGKILL the idle worker of the size-1 ``pool``; wait (event-driven: checkout blocks
    for the replacement, no sleeps in the measured window) until a worker with another pid
    answers a call. Returns (ms until it answered, ms until its checkout returned)."""
    pc = time.perf_counter
    with pool.checkout(timeout=30) as lease:  # idle and answering before the kill
        old = lease.pid
        lease.echo(0)
    t0 = pc()
    os.kill(old, signal.SIGKILL)
    while True:
        lease = pool.checkout(timeout=30)
        try:
            if lease.pid == old:
                # Checked out before the kill took effect: the call fails with
                # WorkerCrashed (once the supervisor has reaped it); go round again.
                try:
                    lease.echo(0)
                except pooly.WorkerCrashed:
                    pass
                continue
            t_lease = pc()
            lease.echo(0)
            t1 = pc()
            break
        finally:
            pool.checkin(lease)
    return (t1 - t0) * 1e3, (t_lease - t0) * 1e3


def settle(pool: pooly.Pool) -> None:
    """Between kills, outside the measured window: let the supervisor finish its books."""
    deadline = time.monotonic() + 10
    while (
        pool.status().idle < 1 or pool.status().spares < pool.spares
    ) and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)


@contextlib.contextmanager
def _multiprocessing_forkserver() -> Iterator[None]:
    """Pools started in the block use multiprocessing's forkserver, as where pooly has no
    fork server of its own (no pidfds): the backend decides when the pool is made."""
    saved = pooly._backend.ZYGOTE_SUPPORTED  # type: ignore[attr-defined]
    pooly._backend.ZYGOTE_SUPPORTED = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        pooly._backend.ZYGOTE_SUPPORTED = saved  # type: ignore[attr-defined]


def _interleaved(pools: dict[str, pooly.Pool], reps: int) -> dict[str, list[float]]:
    """``reps`` kills per pool, alternating which pool goes first in each round."""
    out: dict[str, list[float]] = {name: [] for name in pools}
    order = list(pools)
    for r in range(reps):
        for name in order if r % 2 == 0 else order[::-1]:
            ms, _ = kill_once(pools[name])
            out[name].append(ms)
            settle(pools[name])
    return out


def heal(top: pooly.Pooly, reps_idle: int, reps_load: int, warmup_s: float) -> dict[str, Any]:
    """Item 15: kill -> answer for both paths, idle, then under the demo's load. Returns the
    raw samples (ms) and what the load did meanwhile."""
    kw: dict[str, Any] = {"size": 1, "start_method": "forkserver", "max_restarts": 10**6}
    kw["max_seconds"] = 1.0  # intensity high enough that back-to-back kills never fail a pool
    pools = {
        "spares": top.start_pool("bench-heal-spares", Echo, spares=1, **kw),
        "template": top.start_pool("bench-heal-template", Echo, **kw),
    }
    with _multiprocessing_forkserver():
        pools["old"] = top.start_pool("bench-heal-old", Echo, **kw)
    if pools["template"]._backend.zygote is None or pools["old"]._backend.zygote is not None:  # type: ignore[attr-defined]
        raise AssertionError("bench: the two pools do not start workers the two ways")
    # As the demo does: crash warnings (one per kill) are not printed, errors are (below).
    log = io.StringIO()
    display = Display(log, tty=False)
    try:
        with pooly_errors_to(display):
            idle = _interleaved(pools, reps_idle)
            load, info = _under_demo_load(pools, reps_load, warmup_s, display)
    finally:
        for pool in pools.values():
            top.stop_pool(pool.name)
    errors = [line for line in log.getvalue().splitlines() if "[pooly log]" in line]
    return {"idle": idle, "load": load, "load_info": info, "log_errors": errors}


def _under_demo_load(
    pools: dict[str, pooly.Pool], reps: int, warmup_s: float, display: Display
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    # The demo's defaults (6 consumers, pools of 2, a fault a second), a fixed seed.
    opts = Options(seed=DEMO_SEED)
    # As `pooly demo` does: its own supervisor, the worker classes' module preloaded.
    with pooly.Pooly(preload=[demo_workers.__name__]) as sup:
        demo = Demo(sup, opts, display)
        demo.start_pools()
        demo.start_load()
        try:
            time.sleep(warmup_s)  # the consumers up to speed before the first kill
            calls0, t0 = demo.totals().calls, time.monotonic()
            load = _interleaved(pools, reps)
            calls, secs = demo.totals().calls - calls0, time.monotonic() - t0
        finally:
            demo.stop_load()
        totals = demo.totals()
        info = {
            "consumers": opts.consumers,
            "pool_size": opts.size,
            "fault_interval_s": opts.fault_interval,
            "seconds": secs,
            "calls_per_s": calls / secs if secs > 0 else 0.0,
            "faults": sum(demo.faults.count.values()),
            "lost": totals.calls - totals.ok - totals.crashed,
            "anomalies": demo.anomalies[:5],
            "loadavg_after": os.getloadavg()[0],
        }
    return load, info
