"""``pooly chaos``: a bounded soak that does real harm to several pools, then checks every promise.

``pooly demo`` shows the idea on two pools with a fault a second; this runs long and hard:
a fault every ``--fault-interval`` (default 50 ms), drawn at random from every way a worker,
a call or a consumer can go wrong, and an accounting in which every outcome must be
explained -- a correct result, ``WorkerCrashed`` of a worker that was harmed on purpose, or
the error a deliberate fault calls for. Anything else is counted as an OTHER outcome::

    consumer threads (--consumers)     pools (--pools, each its own shape)     workers
    ------------------------------     -----------------------------------     -------
    sup.pool(name).checkout(5 s) --->  alpha (3+2 lifo) beta (2+3 fifo) ... -> ChaosWorker
    lease.mix(k, i, rounds) ----------------------------------------------->  total += k,
    check (pid, token, total, seal) <--------------------------------------   sha256 work
    an order queued for that pool? make the faulty call it names instead

    feeder threads (--executor-threads)  executors (start_executor on the same tree)
    submit() windows, map() (chunked) -> exec (2 workers, retries 0), exec-r (1, retries 1)
    check every task's outcome <------    ex_task: (x, sha256 chain), or an ordered fault

    fault injector thread, one fault every --fault-interval, kind and pool at random:
      SIGKILL a busy / an idle worker       order a segfault or os._exit inside a call
      order an argument or result whose     start a consumer thread that ends holding
        __reduce__/__setstate__ raises,       a lease; start an overflow burst (more
        exits or segfaults                    checkouts than workers) plus tiny-timeout
      order a slow call, interrupted in       and non-blocking waiters
        its caller by KeyboardInterrupt     SIGKILL a worker whose replacement's
        (the caller then checks in)           constructor is slow (1.5 s)
      SIGKILL an executor's busy worker     order an executor task that segfaults, calls
                                              os._exit, hangs in C code past call_timeout,
                                              or raises (a feeder submits it, or maps it)
    event-loop threads (--async-loops), --async-tasks tasks among them, on the pools above:
      async with pool.acheckout(timeout) as w: await w.mix(..)   await pool.asubmit(..)
      await pool.atransaction(fn, ..)    a few tasks all the time, the rest in waves (all
      at one pool at once); task.cancel() and asyncio.timeout() cut them short at random
    main thread: the progress line; and the calls the injector orders interrupted by SIGINT
    restarter thread: every few seconds, stop_pool + start_pool (or start_executor) of one
      pool under load
    monitor thread: polls status() every ~2 ms; times each fault until the pool is back
      at full size (idle + busy - overflow >= size: every core worker alive again)
    watchdog thread: a checkout or call in flight for more than 10 s counts as hung

Before the run it starts multiprocessing's process-wide helpers (forkserver, resource
tracker) with a tiny pool and takes a baseline; after it (settle, SIGKILL every worker once
more, stop) it compares child processes, zombies, file descriptors and threads with that
baseline. Exit status 1 if any invariant fails; each failure is named.

``--faults`` picks the kinds (default: all of them, the interrupted call and the slow
replacement included; ``stop-restart`` is the restarter).

The soak is one :class:`~pooly.cli.chaos_soak.Chaos`, built in layers: state and counting
(``chaos_state``), consumers (``chaos_calls``), executors and their feeders
(``chaos_exec``: every task's outcome counted, see there), asyncio tasks (``chaos_async``),
faults (``chaos_faults``),
watchers and the run (``chaos_soak``); its figures are printed by ``chaos_report``, and its
configuration is ``chaos_config``. The worker class and the poison objects live in
:mod:`pooly.cli.workers` (worker processes import them by module path; the forkserver
preloads that module). This module parses the options, takes the before/after snapshots
and runs it all.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import TextIO

from .. import Pooly
from . import workers
from .chaos_config import EX_CALL_TIMEOUT, FAULT_KINDS, MAX_SECONDS, SHAPES, Options
from .chaos_proc import Snapshot, fd_count, start_time, status_field
from .chaos_report import jsonable, report
from .chaos_soak import Chaos
from .common import Display, non_negative_int, pooly_errors_to, positive_float, positive_int
from .workers import ChaosWorker

__all__ = ("Options", "add_arguments", "fault_kinds", "main", "run")


def fault_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: comma-separated fault kinds, or ``all``."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if kinds == ("all",):
        return FAULT_KINDS
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from all, {', '.join(FAULT_KINDS)}"
        )
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pooly chaos``."""
    d = Options()
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=d.duration,
        metavar="SECONDS",
        help="how long to inject faults (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-interval",
        type=positive_float,
        default=d.fault_interval,
        metavar="SECONDS",
        help="time between injected faults (default: %(default)s)",
    )
    parser.add_argument(
        "--pools",
        type=positive_int,
        choices=range(1, len(SHAPES) + 1),
        default=d.pools,
        metavar="N",
        help=f"pools under test, 1-{len(SHAPES)}, each its own size/overflow/strategy "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--consumers",
        type=positive_int,
        default=d.consumers,
        metavar="N",
        help="consumer threads making checked calls (default: %(default)s)",
    )
    parser.add_argument(
        "--executor-threads",
        type=non_negative_int,
        default=d.executor_threads,
        metavar="N",
        help="threads feeding futures to the executors (submit and map); 0: no executors "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--async-tasks",
        type=non_negative_int,
        default=d.async_tasks,
        metavar="N",
        help="asyncio tasks using the pools (acheckout, asubmit, atransaction), cancelled "
        "and timed out at random; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--async-loops",
        type=positive_int,
        default=d.async_loops,
        metavar="N",
        help="threads running an event loop each, the asyncio tasks spread over them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for every random choice (default: random)"
    )
    parser.add_argument(
        "--faults",
        type=fault_kinds,
        default=d.faults,
        metavar="KIND,...",
        help="the fault kinds to inject, comma-separated, or 'all' (default: all); "
        "--fault-interval stays, so fewer kinds means each one more often: "
        + ", ".join(FAULT_KINDS),
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the figures and the verdict to PATH as JSON",
    )


def _warm_up() -> None:
    """Start what lives as long as the process -- multiprocessing's forkserver (preloading
    pooly.cli.workers) and resource tracker, pooly's shared dead pipe -- so the baseline has
    them."""
    with Pooly(preload=[workers.__name__]) as sup:
        pool = sup.start_pool("warm-up", ChaosWorker, size=1)
        with pool.checkout(timeout=30) as lease:
            lease.mix(1, 0, 1)


def _settle_leaks(base: Snapshot, timeout: float = 10.0) -> Snapshot:
    """Take the after-snapshot once nothing extra is left, or when the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()  # a worker's channel fds close when its WorkerProcess is collected
        snap = Snapshot.take()
        if not any(snap.extra_over(base).values()) or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run the soak; print progress and the report to ``out``. Returns the exit status."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        return _run(opts, display)


def _run(opts: Options, display: Display) -> int:
    started = time.monotonic()
    if not os.path.isdir("/proc/self/fd"):
        display.line("pooly chaos needs Linux /proc to count processes, fds and threads")
        return 2
    _warm_up()
    gc.collect()
    base = Snapshot.take()
    chaos = Chaos(opts, display)
    fig = chaos.fig
    fig.before = {
        "processes": len(base.processes),
        "zombies": len(base.zombies()),
        "fds": base.fds,
        "threads": base.threads,
    }
    display.line(
        f"pooly chaos: {opts.pools} pools, {opts.consumers} consumer threads, a fault every "
        f"{opts.fault_interval:g} s for {opts.duration:g} s (seed {chaos.seed})"
    )
    for s in chaos.shapes:
        display.line(
            f"  {s.name:<8} ChaosWorker  size {s.size}  max_overflow {s.max_overflow}  {s.strategy}"
        )
    for x in chaos.ex_shapes:
        display.line(
            f"  {x.name:<8} executor     max_workers {x.max_workers}  max_overflow "
            f"{x.max_overflow}  retries {x.retries}  call_timeout {EX_CALL_TIMEOUT:g} s "
            f"(start_executor; fed by {opts.executor_threads} threads)"
        )
    if opts.async_tasks:
        display.line(
            f"  asyncio  {opts.async_tasks} tasks on {min(opts.async_loops, opts.async_tasks)} "
            f"event-loop threads, on the pools above (acheckout, asubmit, atransaction; "
            f"task.cancel() and asyncio.timeout() at random; waves of the sleeping tasks)"
        )
    display.line(
        f"  restart intensity {chaos.max_restarts} in {MAX_SECONDS:g} s per pool (sized for "
        f"the fault rate); a pool stopped and restarted every {chaos.restart_every:g} s"
    )
    display.line(
        f"  baseline after warm-up: {len(base.processes)} child processes (forkserver, "
        f"resource tracker), {base.fds} fds, {base.threads} threads"
    )
    completed = False
    sup = chaos.sup = Pooly()
    # Every lifecycle event, checked against what the soak did once the tree has stopped
    # (a queue deep enough never to drop: dropping is itself a failure).
    events = sup.subscribe(chaos.on_event, maxsize=10_000_000)
    done = threading.Event()
    watchers = [
        chaos.thread("monitor", chaos.monitor, done),
        chaos.thread("watchdog", chaos.watchdog, done),
    ]
    try:
        t = time.monotonic()
        for shape in chaos.shapes:
            chaos.pools[shape.name] = chaos.start_pool(shape)
        for xs in chaos.ex_shapes:
            chaos.pools[xs.name] = chaos.start_executor(xs).pool
        n = sum(s.size for s in chaos.shapes) + sum(x.max_workers for x in chaos.ex_shapes)
        display.line(f"  started {n} worker processes in {time.monotonic() - t:.2f} s")
        display.line()
        fig.rss_kb["start"] = status_field("VmRSS")
        fig.fds_during["start"] = fd_count()
        gc.collect()
        fig.heap_blocks["start"] = sys.getallocatedblocks()
        for th in watchers:
            th.start()
        completed = chaos.run_workload()
        fig.settled = chaos.settle()
        fig.replaced = chaos.replaced()
        done.set()  # the monitor's last poll resolves what healed during settle
        for th in watchers:
            th.join(5.0)
        fig.heal_late += chaos.late_hits()  # never seen back at full size
        display.line("final sweep: SIGKILL every worker once more, one at a time ...")
        chaos.final_sweep()
        fig.settled = chaos.settle() and fig.settled
        fig.final_status = [
            asdict(chaos.pools[n].status()) for n in chaos.all_names if n in chaos.pools
        ]
        fig.rss_kb["after sweep"] = status_field("VmRSS")
    finally:
        done.set()
        for ex in chaos.executors.values():
            ex.shutdown(wait=True)  # as its user would; its tree stops the rest
        sup.stop()  # (delivers every queued event first)
        chaos.cleanup()
    chaos.check_events(events.dropped)
    seen = chaos.seen  # those not yet forgotten (the rest were seen dead)
    fig.workers_seen = len(seen) + chaos.forgotten
    chaos.sup = None
    chaos.pools.clear()
    chaos.executors.clear()
    del sup
    after = _settle_leaks(base)
    fig.after = {
        "processes": len(after.processes),
        "zombies": len(after.zombies()),
        "fds": after.fds,
        "threads": after.threads,
    }
    fig.leaked = after.extra_over(base)
    fig.workers_alive_after = sorted(
        pid for pid, st in seen.items() if st is not None and start_time(pid) == st
    )
    fig.wall = time.monotonic() - started
    status = report(chaos, completed)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(jsonable(fig, status), f, indent=2)
    return status


def main(args: argparse.Namespace) -> int:
    """``pooly chaos`` with parsed arguments."""
    opts = Options(
        duration=args.duration,
        fault_interval=args.fault_interval,
        pools=args.pools,
        consumers=args.consumers,
        executor_threads=args.executor_threads,
        async_tasks=args.async_tasks,
        async_loops=args.async_loops,
        seed=args.seed,
        json=args.json,
        faults=args.faults,
    )
    try:
        return run(opts)
    except KeyboardInterrupt:  # a second Ctrl-C, after the workload (the first ends it)
        print("\ninterrupted", file=sys.stderr)
        return 130
