"""``pooly chaos``'s report: the figures, the invariants checked, the verdict (main thread)."""

from __future__ import annotations

import collections
import statistics
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .. import WorkerCrashed
from .chaos_config import (
    AIO_CANCELLED,
    AIO_CHECKOUT_TIMEOUT,
    AIO_TIMED_OUT,
    CALL_FAULTS,
    CONFIRMED,
    CRASHED,
    EX_FAULTS,
    EX_NEVER,
    EX_NOT_REACHED,
    EX_RAISED,
    EX_STOPPED,
    EX_SUBMITTED,
    EX_TIMED_OUT,
    EX_WITH_CHUNK,
    FAULT_LABELS,
    HEAL_BOUND,
    HUNG_AFTER,
    LEASED,
    OK,
    OTHER,
    WRONG,
)
from .chaos_state import Figures

if TYPE_CHECKING:
    from .chaos_soak import Chaos

__all__ = ("jsonable", "report")


def jsonable(fig: Figures, status: int) -> dict[str, Any]:
    # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
    data = {f.name: getattr(fig, f.name) for f in fields(fig)}
    data["exit_status"] = status
    data["ok"] = status == 0
    data["other_outcomes"] = (
        fig.calls[OTHER] + fig.checkouts[OTHER] + fig.futures[OTHER] + fig.aio[OTHER]
    )
    data["wrong"] = fig.calls[WRONG] + fig.futures[WRONG] + fig.aio[WRONG]
    return data


def _ms(values: Iterable[float]) -> str:
    v = sorted(values)
    if not v:
        return "n/a"
    return f"median {statistics.median(v):.0f} ms, longest {v[-1]:.0f} ms"


def _outcomes(c: collections.Counter[str], total: str = EX_SUBMITTED) -> str:
    """A counter of task outcomes, short: "(ok 3, WorkerCrashed 1)"."""
    parts = [f"{_SHORT.get(k, k)} {v:,}" for k, v in c.most_common() if k != total]
    return f"({', '.join(parts)})" if parts else ""


_SHORT = {
    EX_TIMED_OUT: "CallTimeout",
    EX_RAISED: "own exception",
    EX_STOPPED: "PoolFailed (restart)",
    EX_WITH_CHUNK: "with its chunk",
    EX_NOT_REACHED: "not reached",
    AIO_CANCELLED: "task.cancel()",
    AIO_TIMED_OUT: "asyncio.timeout()",
    AIO_CHECKOUT_TIMEOUT: "CheckoutTimeout",
}


def report(chaos: Chaos, completed: bool) -> int:
    """Print the figures, check the invariants; return the exit status."""
    fig = chaos.fig
    calls, outs, faults = fig.calls, fig.checkouts, fig.faults
    w = 56
    line = chaos.display.line

    def row(label: str, value: object, note: str = "") -> None:
        text = f"{value:,}" if isinstance(value, int) else str(value)
        line(f"  {label:<{w}} {text:>10}   {note}".rstrip())

    line()
    line(f"Report after {fig.duration:.1f} s of chaos ({fig.wall:.1f} s in all, seed {fig.seed})")
    deliberate_crashes = sum(
        fig.confirmed[k] for k, f in CALL_FAULTS.items() if f.expect is WorkerCrashed
    )
    expected_calls = [k for k in calls if k not in (OK, WRONG, CRASHED, OTHER, "attempted")]
    settled_calls = sum(v for k, v in calls.items() if k != "attempted")
    in_flight = calls["attempted"] - settled_calls
    row("calls attempted", calls["attempted"])
    row("  succeeded, result checked", calls[OK])
    row(
        "  failed with WorkerCrashed",
        calls[CRASHED],
        f"({deliberate_crashes:,} of them the deliberate crash calls)",
    )
    row("  expected errors, by kind", sum(calls[k] for k in expected_calls))
    for k in sorted(expected_calls):
        row(f"    {k}", calls[k])
    row("  OTHER outcome", calls[OTHER], "(must be 0)")
    row("  wrong result", calls[WRONG], "(must be 0)")
    row(f"  hung (in flight > {HUNG_AFTER:g} s)", fig.hung, "(must be 0; checkouts included)")
    if in_flight:
        row("  never finished", in_flight)
    fu = fig.futures
    ex_unsettled = fu[EX_SUBMITTED] - sum(v for k, v in fu.items() if k != EX_SUBMITTED)
    if fu[EX_SUBMITTED] or chaos.ex_names:
        row("executor tasks submitted (futures and map items)", fu[EX_SUBMITTED])
        for label, key in (
            ("  succeeded, result checked", OK),
            ("  failed with WorkerCrashed", CRASHED),
            ("  CallTimeout (stuck in C, stopped from the host)", EX_TIMED_OUT),
            ("  raised the task's own exception", EX_RAISED),
            ("  PoolFailed: its executor was restarted", EX_STOPPED),
            ("  map: failed with its chunk", EX_WITH_CHUNK),
            ("  map: not reached (stopped at a failure)", EX_NOT_REACHED),
        ):
            row(label, fu[key])
        row("  OTHER outcome", fu[OTHER], "(must be 0)")
        row("  wrong result", fu[WRONG], "(must be 0)")
        row("  never completed", fu[EX_NEVER] + ex_unsettled, "(must be 0)")
        row("  done-callbacks run twice", fig.ex_done_twice, "(must be 0)")
        for mode in sorted(fig.futures_by):
            c = fig.futures_by[mode]
            row(f"  sent by {mode}", c[EX_SUBMITTED], _outcomes(c))
        line("    executor faults (injected), and the outcomes of the tasks they hit:")
        for kind in EX_FAULTS:
            c = fig.ex_outcomes.get(kind, collections.Counter())
            row(f"    {kind}", faults[kind], _outcomes(c))
        row(
            "  stuck task: submit -> CallTimeout",
            len(fig.ex_timeout_ms),
            f"({_ms(fig.ex_timeout_ms)})",
        )
        row(
            "  crashing task: submit -> WorkerCrashed",
            len(fig.ex_crash_ms),
            f"({_ms(fig.ex_crash_ms)})",
        )
    a = fig.aio
    aio_unsettled = a["attempted"] - sum(v for k, v in a.items() if k != "attempted")
    if a["attempted"] or chaos.opts.async_tasks:
        row(
            "asyncio operations (acheckout, call, asubmit, atransaction)",
            a["attempted"],
            f"({chaos.opts.async_tasks:,} tasks on {chaos.opts.async_loops} loops; "
            f"{fig.aio_notes['waves']:,} waves)",
        )
        row("  succeeded, result checked", a[OK])
        row("  leased (acheckout)", a[LEASED])
        row("  CancelledError: task.cancel() on purpose", a[AIO_CANCELLED])
        row("  TimeoutError: asyncio.timeout() on purpose", a[AIO_TIMED_OUT])
        row("  CheckoutTimeout: a wave's short timeout, on time", a[AIO_CHECKOUT_TIMEOUT])
        row("  failed with WorkerCrashed", a[CRASHED])
        listed = (OK, LEASED, AIO_CANCELLED, AIO_TIMED_OUT, AIO_CHECKOUT_TIMEOUT, CRASHED)
        for k in sorted(k for k in a if k not in (*listed, OTHER, WRONG, "attempted")):
            row(f"  {k}", a[k])
        row("  OTHER outcome", a[OTHER], "(must be 0)")
        row("  wrong result", a[WRONG], "(must be 0)")
        row("  never ended", aio_unsettled, "(must be 0)")
        for kind in sorted(fig.aio_by):
            c = fig.aio_by[kind]
            row(f"  {kind}", c["attempted"], _outcomes(c, "attempted"))
        line("    where the soak's cancellations landed (operation: the await it cut):")
        for k, v in sorted(fig.aio_cut.items()):
            row(f"    {k}", v)
        faulty = sum(v for k, v in fig.aio_notes.items() if k.startswith("ordered fault"))
        row("  ordered faulty calls made by tasks", faulty)
        row(
            "  peak waiting in a pool's queue (monitor)",
            max(fig.peak_waiting.values(), default=0),
            "(" + ", ".join(f"{n} {v:,}" for n, v in fig.peak_waiting.items()) + ")",
        )
        t = fig.threads_during
        row(
            "  threads at start / peak / end of the workload",
            t.get("start", 0),
            f"/ {t.get('peak', 0)} / {t.get('end', 0)} (no thread per waiting task or call)",
        )
    row("checkouts attempted", outs["attempted"])
    for k in sorted(k for k in outs if k not in ("attempted", OTHER)):
        row(f"  {k}", outs[k])
    row("  OTHER outcome", outs[OTHER], "(must be 0)")
    row("faults injected", sum(faults.values()))
    for kind, label in FAULT_LABELS.items():
        row(f"  {label}", faults[kind], f"({fig.confirmed[kind]:,} {CONFIRMED[kind]})")
    line(
        "    (confirmed < injected: that fault met a worker another fault had just killed, "
        "or a pool being restarted)"
    )
    skipped = sum(fig.skipped.values())
    if skipped:
        row("  skipped (no target, or still pending)", skipped)
    row(
        "workers replaced (sum of status().replaced)",
        sum(fig.replaced.values()),
        "(" + ", ".join(f"{n} {v:,}" for n, v in fig.replaced.items()) + ")",
    )
    row(
        "call -> WorkerCrashed raised in its caller",
        len(fig.crash_ms),
        f"({_ms(fig.crash_ms)})",
    )
    row("  WorkerCrashed without an exit code", fig.crash_no_exitcode)
    row(
        "fault -> pool back at full size",
        len(fig.heal_ms),
        f"({_ms(fig.heal_ms)}; monitor polls status() ~every 2 ms)",
    )
    row("  faults that never took the pool below size", fig.heal_no_dip, "(overflow workers)")
    if fig.heal_cancelled:
        row(
            "  superseded by a stop/restart of the pool",
            fig.heal_cancelled,
            f"(had waited: {_ms(fig.heal_cancelled_ms)})",
        )
    row(f"  not back within {HEAL_BOUND:g} s", fig.heal_late, "(must be 0)")
    row(
        "stop + start of a pool under load",
        len(fig.restarts_down_ms),
        f"(serving again: {_ms(fig.restarts_down_ms)})",
    )
    ev = fig.events
    if ev:
        row(
            "lifecycle events (subscribe): workers started",
            ev["workers_started"],
            f"({ev['workers_exited']:,} exited, {ev['unexpected_exits']:,} of them unexpected)",
        )
        row("  a worker with two starts or two exits", ev["exited_twice"], "(must be 0)")
        row(
            "  started, no WorkerExited / exited, no start",
            f"{ev['started_never_exited']} / {ev['exited_never_started']}",
            "(must be 0 / 0)",
        )
        row(
            "  SIGKILLs: exit -9 in their WorkerExited",
            ev["sigkills_checked"],
            f"(of {ev['sigkills_sent']:,} sent; {ev['sigkills_wrong']} wrong or missing, "
            "must be 0)",
        )
        row(
            "  crashes in calls: exit code, method, holder",
            ev["crash_calls_checked"],
            f"({ev['crash_calls_wrong']} wrong or missing, must be 0)",
        )
        row("  events dropped", ev["dropped"], "(must be 0)")
    row(
        "final sweep: workers SIGKILLed",
        fig.final_killed,
        f"({fig.final_replaced} replaced, {_ms(fig.final_heal_ms)}, pools idle)",
    )
    line("  final status of each pool:")
    for s in fig.final_status:
        line(
            f"    {s['name']:<8} {s['state']:<8} size {s['size']}  idle {s['idle']}  busy "
            f"{s['busy']}  overflow {s['overflow']}/{s['max_overflow']}  waiting {s['waiting']}"
        )
    line("  after shutdown, compared with before the run (multiprocessing's helpers included):")
    for key in ("processes", "zombies", "fds", "threads"):
        row(
            f"    extra {key}",
            fig.leaked.get(key, 0),
            f"(before {fig.before.get(key)}, after {fig.after.get(key)}; must be 0)",
        )
    row(
        "    worker processes still alive",
        len(fig.workers_alive_after),
        f"(of {fig.workers_seen:,} seen; must be 0)",
    )
    rss = fig.rss_kb
    row(
        "parent RSS at start / end of the soak",
        f"{rss.get('start', 0) / 1024:.1f} MB",
        f"-> {rss.get('end', 0) / 1024:.1f} MB "
        f"({(rss.get('end', 0) - rss.get('start', 0)) / 1024:+.1f} MB)",
    )
    blocks = fig.heap_blocks
    row(
        "  Python heap blocks at start / end",
        blocks.get("start", 0),
        f"-> {blocks.get('end', 0):,} ({blocks.get('end', 0) - blocks.get('start', 0):+,}; "
        "after gc; RSS beyond it is the allocator's and thread stacks')",
    )
    row(
        "parent fds at start / end of the soak",
        fig.fds_during.get("start", 0),
        f"-> {fig.fds_during.get('end', 0)} (peak {fig.fds_during.get('peak', 0)}; a dead "
        "worker's fds close once it is reaped and its last call ended)",
    )
    if fig.anomalies:
        line("  anomalies:")
        for text in fig.anomalies[:20]:
            line(f"    {text}")
        if len(fig.anomalies) + fig.anomalies_dropped > 20:
            line(f"    ... and {len(fig.anomalies) + fig.anomalies_dropped - 20} more")

    problems = list(fig.problems)
    other = calls[OTHER] + outs[OTHER] + fu[OTHER] + a[OTHER]
    if other:
        problems.append(f"{other} OTHER outcome(s)")
    if calls[WRONG] + fu[WRONG] + a[WRONG]:
        problems.append(f"{calls[WRONG] + fu[WRONG] + a[WRONG]} wrong result(s)")
    if aio_unsettled:
        problems.append(f"{aio_unsettled} asyncio operation(s) never ended")
    waiting = [s["name"] for s in fig.final_status if s["waiting"]]
    if waiting:
        problems.append(f"waiters left in the queue of {', '.join(waiting)}")
    peak_waiting = max(fig.peak_waiting.values(), default=0)
    peak_threads = fig.threads_during.get("peak", 0)
    if peak_waiting >= 200 and peak_threads >= peak_waiting:
        problems.append(
            f"{peak_threads} threads at the peak, for {peak_waiting} waiting: a thread per waiter?"
        )
    if fu[EX_NEVER] or ex_unsettled:
        problems.append(f"{fu[EX_NEVER] + ex_unsettled} executor task(s) never completed")
    if fig.ex_done_twice:
        problems.append(f"{fig.ex_done_twice} future(s) completed twice")
    if fig.hung or in_flight:
        problems.append(f"{fig.hung} hung checkout(s)/call(s)/thread(s), {in_flight} unfinished")
    if fig.heal_late:
        problems.append(f"{fig.heal_late} fault(s) after which a pool was not back at full size")
    if not fig.settled:
        problems.append("a pool did not settle back to its size after the run")
    if fig.final_replaced < fig.final_killed:
        problems.append(f"final sweep: {fig.final_killed - fig.final_replaced} not replaced")
    leaked = {k: v for k, v in fig.leaked.items() if v}
    if leaked:
        problems.append("left after shutdown: " + ", ".join(f"{v} {k}" for k, v in leaked.items()))
    if fig.workers_alive_after:
        problems.append(f"worker processes still alive: {fig.workers_alive_after[:10]}")
    ev = fig.events
    bad = {
        k: ev.get(k, 0)
        for k in (
            "exited_twice",
            "started_never_exited",
            "exited_never_started",
            "sigkills_wrong",
            "crash_calls_wrong",
            "dropped",
        )
    }
    if any(bad.values()):
        problems.append(
            "lifecycle events disagree with the soak: "
            + ", ".join(f"{k} {v}" for k, v in bad.items() if v)
        )
        for what in fig.events_wrong:
            line("  events: " + what)
    fig.problems = problems
    line()
    if problems:
        line("FAILED: " + "; ".join(problems))
        return 1
    line(
        "OK: every call, every executor task and every asyncio operation returned a checked "
        "result, WorkerCrashed of a worker harmed on purpose, or the error its fault or "
        "cancellation calls for; nothing hung; every pool healed; nothing leaked."
    )
    return 0 if completed else 130
