"""``pooly demo``: two supervised pools under a concurrent workload while real faults hit them.

It shows SPEC's promise -- a crash hits only the call it was serving, the pool heals itself
within milliseconds, nothing leaks, nothing hangs -- and makes it checkable: every call has a
result its caller verifies, so the closing tally is evidence rather than a claim::

    consumer threads (--consumers)                      worker processes
    ------------------------------                      ----------------
    checkout(timeout) -> lease  ---- lease.add(k) ---->  "counters": Counter (running total)
    verify every result   <-------- lease.digest() --->  "hashers":  Hasher  (sha256 chains)
    WorkerCrashed -> checkin (a no-op), check out again
    a fault order waiting? -> lease.segfault() / lease.exit(70) instead of a normal call

    fault injector thread, one fault every --fault-interval seconds, in rotation:
      SIGKILL a busy worker (lease.pid) | SIGKILL an idle one (pool.worker_pids())
      order a segfault / an os._exit inside a call | run a consumer thread that ends holding
      a lease; then it times how long the pool takes to replace the worker

    main thread: progress while it runs -- the demo's counts and each pool's live state from
    its status() and stats() (idle/busy/overflow/waiting, calls/s, crashes, replacements,
    restarts left) --, then the tally; exit status 1 if a call was lost (neither a correct
    result nor WorkerCrashed), a pool failed, a worker outlived it, or the pools' stats()
    and the lifecycle events disagree.

The tree is observed (``Pooly(observe=True)``): ``pooly top <pid>`` in another terminal
shows it live while the faults land. The demo subscribes to the tree's lifecycle events
before its pools start, and the tally (:mod:`pooly.cli.demo_tally`) reads every pool's
``stats()`` and those events once the tree has stopped, and checks one against the other.

Then the executor section (:mod:`pooly.cli.demo_executor`): CPU tasks submitted to
``Pooly.start_executor`` with a busy worker SIGKILLed mid-run -- only the task it ran fails,
the pool heals, the next submit is served -- and the same through the stdlib's
``concurrent.futures.ProcessPoolExecutor``, where every pending future and every later submit
fail with ``BrokenProcessPool``.

The worker classes live in :mod:`pooly.cli.workers` (preloaded into the forkserver: workers
import their class by module path), the workload in :mod:`pooly.cli.demo_workload`, the
configuration in :mod:`pooly.cli.demo_config`, the tally in :mod:`pooly.cli.demo_tally`;
this module parses the options and runs the demo.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from .. import Pool, Pooly, PoolyError
from . import workers
from .common import Display, alive, pooly_errors_to, positive_float, positive_int
from .demo_config import MAX_SECONDS, OVERFLOW, Options
from .demo_executor import EX_KILL_AFTER, EX_TASKS, EX_WORKERS, ExecutorRun, run_pooly, run_stdlib
from .demo_tally import EventLog, Outcome, describe, tally
from .demo_workload import Demo

if TYPE_CHECKING:
    from .demo_ray import OnRay

__all__ = ("Options", "add_arguments", "main", "run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pooly demo``."""
    d = Options()
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=d.duration,
        metavar="SECONDS",
        help="how long to run the workload (default: %(default)s)",
    )
    parser.add_argument(
        "--consumers",
        type=positive_int,
        default=d.consumers,
        metavar="N",
        help="consumer threads driving calls (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-interval",
        type=positive_float,
        default=d.fault_interval,
        metavar="SECONDS",
        help="time between injected faults (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=d.size,
        metavar="N",
        help="workers kept in each pool (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for the workload's random choices (default: random)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="run the pools' workers as Ray actors on a simulated 3-node Ray cluster on "
        "this machine (every address 127.0.0.1), and lose a node midway (needs: pip "
        "install 'pooly[ray]')",
    )


def run(opts: Options, out: TextIO | None = None, ray: bool = False) -> int:
    """Run the demo; print progress and the tally to ``out``. Returns the exit status.
    ``ray``: on a simulated Ray cluster (:mod:`pooly.cli.demo_ray`)."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        if ray:
            from .demo_ray import run_on_ray

            return run_on_ray(opts, display, _run)
        return _run(opts, display)


def _tree(display: Display) -> Pooly:
    """The demo's tree, observed (for ``pooly top``) if its endpoint can be opened."""
    # The forkserver imports the worker classes' module once, so replacements start fast.
    try:
        return Pooly(preload=[workers.__name__], observe=True)
    except PoolyError as e:
        display.line(f"(no observer endpoint, so pooly top can't watch this run: {e})")
        return Pooly(preload=[workers.__name__])


def _run(opts: Options, display: Display, on_ray: OnRay | None = None) -> int:
    """The demo; ``on_ray``: its pools' workers are Ray actors (``pooly demo --ray``)."""
    started = time.monotonic()
    sup = _tree(display)
    events = EventLog()
    try:
        # Subscribed before any pool starts: every worker's life is seen, start to end.
        sub = sup.subscribe(events)
        demo = Demo(sup, opts, display, None if on_ray is None else on_ray.backend)
        display.line(
            f"pooly demo: 2 pools, {opts.consumers} consumer threads, a fault every "
            f"{opts.fault_interval:g} s for {opts.duration:g} s (seed {demo.seed})"
        )
        display.line(
            f"  counters  Counter: a running total per worker   size {opts.size}, "
            f"max_overflow {OVERFLOW['counters']}"
        )
        display.line(
            f"  hashers   Hasher: sha256 chains (CPU work)     size {opts.size}, "
            f"max_overflow {OVERFLOW['hashers']}"
        )
        display.line(
            f"  restart intensity: {demo.max_restarts} restarts in {MAX_SECONDS:g} s "
            "per pool (sized for the fault rate)"
        )
        if sup.observe_path is not None:
            hint = "" if importlib.util.find_spec("rich") else "  (needs: pip install 'pooly[cli]')"
            display.line(
                f"  watch the tree live from another terminal: pooly top {os.getpid()}{hint}"
            )
        t = time.monotonic()
        demo.start_pools()
        display.line(
            f"  started {2 * opts.size} worker processes in "
            f"{time.monotonic() - t:.2f} s ({demo.pools['counters'].start_method})"
        )
        if on_ray is not None:
            on_ray.started(demo)
        display.line()
        completed = demo.run_workload()
        settled = demo.settle()
        during = [p.status() for p in demo.pools.values()]
        display.line("final check: SIGKILL every worker once more, one at a time ...")
        check = demo.final_check()
        settled = demo.settle() and settled
        final = [p.status() for p in demo.pools.values()]
        pools: dict[str, Pool] = dict(demo.pools)
        pids = [pid for p in pools.values() for pid in p.worker_pids()]
        runs: list[ExecutorRun] = []
        if completed and on_ray is None:
            display.line()
            display.line(
                f"executor: {EX_TASKS} CPU tasks (sha256 chains) submitted to {EX_WORKERS} "
                f"workers; once {EX_KILL_AFTER} results are in, the worker that answered last "
                "(busy with its next task) is SIGKILLed"
            )
            run, ex_pids, ex_pool = run_pooly(sup)
            pools[ex_pool.name] = ex_pool
            pids += ex_pids
            demo.anomalies.extend(run.anomalies)
            display.line(f"  {describe(run)}")
            runs.append(run)
    finally:
        # stop() delivers every event queued before it returns: after it, the events and
        # the pools' stats() are final, and must agree.
        sup.stop()
    stats = {name: p.stats() for name, p in pools.items()}
    if on_ray is not None:  # (Ray ends an actor's process a moment after it is reported)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    if runs:
        run = run_stdlib()
        demo.display.line(f"  {describe(run)}")
        runs.append(run)
    outcome = Outcome(
        during=during,
        final=final,
        stats=stats,
        max_restarts={name: p.max_restarts for name, p in pools.items()},
        check=check,
        settled=settled,
        left=[pid for pid in pids if alive(pid)],
        completed=completed,
        wall=time.monotonic() - started,
        runs=runs,
        events=events,
        dropped=sub.dropped,
    )
    return tally(demo, outcome)


def main(args: argparse.Namespace) -> int:
    """``pooly demo`` with parsed arguments."""
    opts = Options(
        duration=args.duration,
        consumers=args.consumers,
        fault_interval=args.fault_interval,
        size=args.size,
        seed=args.seed,
    )
    try:
        return run(opts, ray=args.ray)
    except KeyboardInterrupt:  # a second Ctrl-C, after the workload (the first ends it)
        print("\ninterrupted", file=sys.stderr)
        return 130
