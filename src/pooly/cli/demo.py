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

    main thread: a progress line while it runs, then the tally; exit status 1 if a call was
    lost (neither a correct result nor WorkerCrashed), a pool failed or a worker outlived it.

Then the executor section (:mod:`pooly.cli.demo_executor`): CPU tasks submitted to
``Pooly.start_executor`` with a busy worker SIGKILLed mid-run -- only the task it ran fails,
the pool heals, the next submit is served -- and the same through the stdlib's
``concurrent.futures.ProcessPoolExecutor``, where every pending future and every later submit
fail with ``BrokenProcessPool``.

The worker classes live in :mod:`pooly.cli.workers` (preloaded into the forkserver: workers
import their class by module path), the workload in :mod:`pooly.cli.demo_workload`, the
configuration in :mod:`pooly.cli.demo_config`; this module parses the options, runs the demo
and prints the tally.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import TextIO

from .. import PoolStatus, Pooly
from . import workers
from .common import Display, alive, pooly_errors_to, positive_float, positive_int
from .demo_config import (
    CHECKOUT_TIMEOUT,
    CONFIRMED,
    KINDS,
    LABELS,
    MAX_SECONDS,
    OVERFLOW,
    POOLS,
    Options,
)
from .demo_executor import EX_KILL_AFTER, EX_TASKS, EX_WORKERS, ExecutorRun, run_pooly, run_stdlib
from .demo_workload import Demo

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


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run the demo; print progress and the tally to ``out``. Returns the exit status."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        return _run(opts, display)


def _run(opts: Options, display: Display) -> int:
    started = time.monotonic()
    # The forkserver imports the worker classes' module once, so replacements start fast.
    sup = Pooly(preload=[workers.__name__])
    try:
        demo = Demo(sup, opts, display)
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
        t = time.monotonic()
        demo.start_pools()
        display.line(
            f"  started {2 * opts.size} worker processes in "
            f"{time.monotonic() - t:.2f} s ({demo.pools['counters'].start_method})"
        )
        display.line()
        completed = demo.run_workload()
        settled = demo.settle()
        during = [p.status() for p in demo.pools.values()]
        display.line("final check: SIGKILL every worker once more, one at a time ...")
        check = demo.final_check()
        settled = demo.settle() and settled
        final = [p.status() for p in demo.pools.values()]
        pids = [pid for p in demo.pools.values() for pid in p.worker_pids()]
        runs: list[ExecutorRun] = []
        if completed:
            display.line()
            display.line(
                f"executor: {EX_TASKS} CPU tasks (sha256 chains) submitted to {EX_WORKERS} "
                f"workers; once {EX_KILL_AFTER} results are in, the worker that answered last "
                "(busy with its next task) is SIGKILLed"
            )
            run, ex_pids = run_pooly(sup)
            pids += ex_pids
            demo.anomalies.extend(run.anomalies)
            display.line(f"  {_describe(run)}")
            runs.append(run)
    finally:
        sup.stop()
    if runs:
        run = run_stdlib()
        demo.display.line(f"  {_describe(run)}")
        runs.append(run)
    left = [pid for pid in pids if alive(pid)]
    return _tally(
        demo, during, final, check, settled, left, completed, time.monotonic() - started, runs
    )


def _describe(run: ExecutorRun) -> str:
    """One executor's run, in a line."""
    text = f"{run.label}: {run.ok} ok (checked)"
    if run.crashed:
        text += f", {run.crashed} WorkerCrashed ({run.crash_note})"
    if run.broken:
        text += f", {run.broken} BrokenProcessPool"
    if run.lost:
        text += f", {run.lost} lost"
    if run.heal_ms is not None:
        text += f"; worker replaced {run.heal_ms:.0f} ms after the kill"
    return text + f"; one more submit: {run.after}"


def _tally(
    demo: Demo,
    during: list[PoolStatus],
    final: list[PoolStatus],
    check: tuple[int, int],
    settled: bool,
    left: list[int],
    completed: bool,
    wall: float,
    runs: list[ExecutorRun],
) -> int:
    t = demo.totals()
    f = demo.faults
    lost = t.calls - t.ok - t.crashed
    hung = lost - t.wrong - t.errors
    poisoned = f.count["segfault"] + f.count["os-exit"]
    failed = sorted(demo.failed_pools | {s.name for s in final if s.state == "failed"})
    w = 33

    def row(label: str, value: object, note: str = "") -> None:
        text = f"{value:,}" if isinstance(value, int) else str(value)
        demo.display.line(f"  {label:<{w}} {text:>9}   {note}".rstrip())

    demo.display.line()
    demo.display.line(f"Tally after {demo.workload_s:.1f} s of workload ({wall:.1f} s in all)")
    per_pool = ", ".join(f"{n} {t.per_pool[n]:,}" for n in POOLS)
    row("calls made", t.calls, f"({per_pool})")
    row("  succeeded, result checked", t.ok)
    row(
        "  failed with WorkerCrashed",
        t.crashed,
        f"({poisoned} of them the segfault/os._exit calls)" if poisoned else "",
    )
    row("  lost", lost, f"(wrong result {t.wrong}, other error {t.errors}, hung {hung})")
    row("checkout timeouts", t.checkout_timeouts, f"(checkout waits up to {CHECKOUT_TIMEOUT:g} s)")
    row("faults injected", sum(f.count.values()))
    for kind in KINDS:
        row(
            f"  {LABELS[kind]}",
            f.count[kind],
            f"({f.confirmed[kind]} {CONFIRMED[kind]})" if f.count[kind] else "",
        )
    if f.skipped:
        row("  skipped (no target right then)", f.skipped)
    heal = (
        f"(median {statistics.median(f.heal_ms):.0f} ms, max {max(f.heal_ms):.0f} ms after "
        "the fault)"
        if f.heal_ms
        else ""
    )
    row("workers replaced", sum(s.replaced for s in during), heal)
    for s in during:
        row(f"  {s.name}", s.replaced, f"({s.crashed} died unasked)")
    if f.not_replaced:
        row("deaths without a replacement", f.not_replaced, "(overflow workers are not replaced)")
    killed, replaced = check
    heal = (
        f", median {statistics.median(demo.final_heal_ms):.0f} ms with the pools idle"
        if demo.final_heal_ms
        else ""
    )
    row("final check: workers SIGKILLed", killed, f"({replaced} replaced{heal})")
    demo.display.line("  final status of each pool:")
    for s in final:
        demo.display.line(
            f"    {s.name:<9} {s.state:<8} size {s.size}  idle {s.idle}  busy {s.busy}  "
            f"overflow {s.overflow}/{s.max_overflow}  waiting {s.waiting}"
        )
    if runs:
        row("executor tasks (1 worker killed)", EX_TASKS, "(through pooly, then the stdlib)")
        for run in runs:
            short = run.label.split(".")[0] if run.label.startswith("pooly") else "stdlib"
            row(f"  {short}: succeeded, checked", run.ok)
            if run.label.startswith("pooly"):
                row("    failed with WorkerCrashed", run.crashed, "(the task it was running)")
            else:
                row("    failed with BrokenProcessPool", run.broken, "(every task not done yet)")
            row("    lost", run.lost)
            row("    one more submit", "", run.after)
    row("worker processes left after stop", len(left), f"(pids {left})" if left else "")
    if demo.anomalies:
        demo.display.line("  anomalies:")
        for text in demo.anomalies[:10]:
            demo.display.line(f"    {text}")
        if len(demo.anomalies) > 10:
            demo.display.line(f"    ... and {len(demo.anomalies) - 10} more")

    problems = []
    if lost:
        problems.append(f"{lost} call{'' if lost == 1 else 's'} lost")
    if failed:
        problems.append(f"pool(s) failed: {', '.join(failed)} (raise --fault-interval)")
    if not settled:
        problems.append("a pool did not return to its size after the run")
    if check[1] < check[0]:
        problems.append(f"final check: {check[0] - check[1]} killed workers not replaced")
    if left:
        problems.append(f"{len(left)} worker processes outlived the pool")
    if demo.hung:
        problems.append(f"threads did not finish: {', '.join(demo.hung)}")
    if demo.broken:
        problems.append(f"consumers stopped on an error: {', '.join(demo.broken)}")
    mine = [r for r in runs if r.label.startswith("pooly")]
    for r in mine:
        if r.lost or r.crashed > 1 or r.ok + r.crashed != EX_TASKS:
            problems.append(f"executor: {r.lost} task(s) lost, {r.crashed} crashed")
        if r.after != "served" or (r.killed is not None and r.heal_ms is None):
            problems.append(f"executor: not healed (one more submit {r.after})")
    demo.display.line()
    if problems:
        demo.display.line("FAILED: " + "; ".join(problems))
        return 1
    demo.display.line(
        "OK: every call and executor task returned a correct result or raised "
        "WorkerCrashed; every pool healed; no process left behind."
    )
    return 0 if completed else 130


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
        return run(opts)
    except KeyboardInterrupt:  # a second Ctrl-C, after the workload (the first ends it)
        print("\ninterrupted", file=sys.stderr)
        return 130
