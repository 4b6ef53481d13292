"""``pooly demo``'s closing tally (see :mod:`pooly.cli.demo`), and the record of the lifecycle
events it subscribes to.

The tally reads three witnesses and checks them against each other: the demo's own counts
(every call's outcome, checked by its caller), each pool's ``stats()`` and the events of the
tree (``Pooly.subscribe``)::

    pools (under their locks)  --events-->  "pooly-events" thread: EventLog(event) counts
    demo threads: their own counts          main thread, once the tree has stopped (every
    pool.stats() after the stop  ---------> event delivered): the tally and its checks

The events and the stats are counted by the same pool under the same lock, so once the tree
has stopped they must agree: unexpected ``WorkerExited`` events of a pool = the sum of its
``stats().crashes``. A mismatch (or an event dropped) fails the demo.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import PoolStats, PoolStatus
from .._errors import describe_exit
from ..events import CheckoutTimedOut, PoolStateChanged, WorkerExited, WorkerStarted
from .demo_config import CHECKOUT_TIMEOUT, CONFIRMED, KINDS, LABELS, POOLS
from .demo_executor import EX_TASKS, ExecutorRun
from .demo_workload import Demo

__all__ = ("EventLog", "Outcome", "describe", "tally")

W = 33  # the width of a row's label


class EventLog:
    """Counts of the tree's lifecycle events, as the demo's subscription received them.

    Its ``__call__`` is the subscriber callback: it runs on the tree's ``pooly-events``
    thread only; the main thread reads the counts once the tree has stopped (``stop()``
    delivers every queued event first)."""

    def __init__(self) -> None:
        self.total = 0
        self.started: collections.Counter[tuple[str, str]] = collections.Counter()  # reason
        self.exited: collections.Counter[tuple[str, bool]] = collections.Counter()  # expected
        self.crash_codes: collections.Counter[int | None] = collections.Counter()
        self.crash_methods: collections.Counter[str | None] = collections.Counter()
        self.crash_holders: collections.Counter[str | None] = collections.Counter()
        self.state_changes = 0
        self.checkout_timeouts = 0
        self.other: collections.Counter[str] = collections.Counter()

    def __call__(self, event: object) -> None:
        self.total += 1
        if isinstance(event, WorkerStarted):
            self.started[event.pool, event.reason] += 1
        elif isinstance(event, WorkerExited):
            self.exited[event.pool, event.expected] += 1
            if not event.expected:
                self.crash_codes[event.exitcode] += 1
                self.crash_methods[event.method] += 1
                self.crash_holders[event.holder] += 1
        elif isinstance(event, PoolStateChanged):
            self.state_changes += 1
        elif isinstance(event, CheckoutTimedOut):
            self.checkout_timeouts += 1
        else:
            self.other[type(event).__name__] += 1

    def crashes(self, pool: str) -> int:
        """Unexpected ``WorkerExited`` events of ``pool``."""
        return self.exited[pool, False]


@dataclass
class Outcome:
    """What the run left for the tally to read (gathered by :mod:`pooly.cli.demo`)."""

    during: list[PoolStatus]  # each pool's status after the workload, before the final check
    final: list[PoolStatus]  # ... after the final check
    stats: dict[str, PoolStats]  # every pool's stats() once the tree stopped (executor too)
    max_restarts: dict[str, int]
    check: tuple[int, int]  # the final check: (killed, replaced)
    settled: bool
    left: list[int]  # worker pids alive after the stop
    completed: bool
    wall: float
    runs: list[ExecutorRun] = field(default_factory=list)
    events: EventLog | None = None
    dropped: int = 0  # the subscription's dropped events


def describe(run: ExecutorRun) -> str:
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


def _exit_name(code: int | None) -> str:
    """``SIGKILL`` for -9, ``exit code 70`` for 70."""
    text = describe_exit(code)
    return text.removeprefix("signal ")


def _counts(counter: Mapping[Any, int], name: Callable[[Any], str] = str) -> str:
    """``a 3, b 1``: most frequent first."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], name(kv[0])))
    return ", ".join(f"{name(k)} {n:,}" for k, n in items if n)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def tally(demo: Demo, o: Outcome) -> int:
    """Print the tally; return the exit status."""
    d = demo.display
    t = demo.totals()
    f = demo.faults
    lost = t.calls - t.ok - t.crashed
    hung = lost - t.wrong - t.errors
    poisoned = f.count["segfault"] + f.count["os-exit"]
    failed = sorted(demo.failed_pools | {s.name for s in o.final if s.state == "failed"})

    def row(label: str, value: object, note: str = "") -> None:
        text = f"{value:,}" if isinstance(value, int) else str(value)
        d.line(f"  {label:<{W}} {text:>9}   {note}".rstrip())

    d.line()
    d.line(f"Tally after {demo.workload_s:.1f} s of workload ({o.wall:.1f} s in all)")
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
    row("workers replaced", sum(s.replaced for s in o.during), heal)
    for s in o.during:
        row(f"  {s.name}", s.replaced, f"({s.crashed} died unasked)")
    if f.not_replaced:
        row("deaths without a replacement", f.not_replaced, "(overflow workers are not replaced)")
    killed, replaced = o.check
    heal = (
        f", median {statistics.median(demo.final_heal_ms):.0f} ms with the pools idle"
        if demo.final_heal_ms
        else ""
    )
    row("final check: workers SIGKILLed", killed, f"({replaced} replaced{heal})")
    d.line("  final status of each pool:")
    for s in o.final:
        d.line(
            f"    {s.name:<9} {s.state:<8} size {s.size}  idle {s.idle}  busy {s.busy}  "
            f"overflow {s.overflow}/{s.max_overflow}  waiting {s.waiting}"
        )
    if o.runs:
        row("executor tasks (1 worker killed)", EX_TASKS, "(through pooly, then the stdlib)")
        for run in o.runs:
            short = run.label.split(".")[0] if run.label.startswith("pooly") else "stdlib"
            row(f"  {short}: succeeded, checked", run.ok)
            if run.label.startswith("pooly"):
                row("    failed with WorkerCrashed", run.crashed, "(the task it was running)")
            else:
                row("    failed with BrokenProcessPool", run.broken, "(every task not done yet)")
            row("    lost", run.lost)
            row("    one more submit", "", run.after)
    problems = _stats_and_events(demo, o, row)
    row("worker processes left after stop", len(o.left), f"(pids {o.left})" if o.left else "")
    if demo.anomalies:
        d.line("  anomalies:")
        for text in demo.anomalies[:10]:
            d.line(f"    {text}")
        if len(demo.anomalies) > 10:
            d.line(f"    ... and {len(demo.anomalies) - 10} more")

    if lost:
        problems.append(f"{lost} call{'' if lost == 1 else 's'} lost")
    if failed:
        problems.append(f"pool(s) failed: {', '.join(failed)} (raise --fault-interval)")
    if not o.settled:
        problems.append("a pool did not return to its size after the run")
    if killed > replaced:
        problems.append(f"final check: {killed - replaced} killed workers not replaced")
    if o.left:
        problems.append(f"{len(o.left)} worker processes outlived the pool")
    if demo.hung:
        problems.append(f"threads did not finish: {', '.join(demo.hung)}")
    if demo.broken:
        problems.append(f"consumers stopped on an error: {', '.join(demo.broken)}")
    problems.extend(demo.problems)
    for r in o.runs:
        if not r.label.startswith("pooly"):
            continue
        if r.lost or r.crashed > 1 or r.ok + r.crashed != EX_TASKS:
            problems.append(f"executor: {r.lost} task(s) lost, {r.crashed} crashed")
        if r.after != "served" or (r.killed is not None and r.heal_ms is None):
            problems.append(f"executor: not healed (one more submit {r.after})")
    d.line()
    if problems:
        d.line("FAILED: " + "; ".join(problems))
        return 1
    d.line(
        "OK: every call and executor task returned a correct result or raised "
        "WorkerCrashed; every pool healed; stats() and the events agree; no process left "
        "behind."
    )
    return 0 if o.completed else 130


def _stats_and_events(demo: Demo, o: Outcome, row: Callable[..., None]) -> list[str]:
    """The pools' ``stats()`` as a table, the events received, and the check that they
    agree. Returns the problems found."""
    d = demo.display
    names = list(o.stats)
    if not names:
        return []
    st = [o.stats[n] for n in names]
    crash_codes: collections.Counter[int | None] = collections.Counter()
    for s in st:
        crash_codes.update(s.crashes)
    d.line("  pool stats (stats() once the tree stopped: the whole run, final check included)")
    d.line(f"    {'':<{W - 2}}" + "".join(f" {n:>10}" for n in names))

    def cols(label: str, values: list[str]) -> None:
        d.line(f"    {label:<{W - 2}}" + "".join(f" {v:>10}" for v in values))

    cols("checkouts", [f"{s.checkouts:,}" for s in st])
    cols("calls", [f"{s.calls:,}" for s in st])
    cols("checkout timeouts", [f"{s.checkout_timeouts:,}" for s in st])
    cols("call timeouts", [f"{s.call_timeouts:,}" for s in st])
    cols("crashes", [f"{sum(s.crashes.values()):,}" for s in st])
    for code in sorted(
        crash_codes, key=lambda c: (c is None, c is not None and c >= 0, abs(c or 0))
    ):
        cols(f"  {_exit_name(code)}", [f"{s.crashes.get(code, 0):,}" for s in st])
    cols("replacements", [f"{s.replacements:,}" for s in st])
    cols("recycles", [f"{s.recycles:,}" for s in st])
    cols("overflow started/dismissed", [f"{s.overflow_started}/{s.overflow_dismissed}" for s in st])
    cols("wait p50/p99 (ms)", [f"{_ms(s.wait_p50)}/{_ms(s.wait_p99)}" for s in st])
    cols("hold p50/p99 (ms)", [f"{_ms(s.hold_p50)}/{_ms(s.hold_p99)}" for s in st])
    cols(
        "restarts left",
        [f"{s.restarts_left}/{o.max_restarts.get(s.name, s.restarts_left)}" for s in st],
    )
    ev = o.events
    if ev is None:
        return []
    problems = []
    row("events received (subscribe)", ev.total, f"(dropped {o.dropped})")
    reasons: collections.Counter[str] = collections.Counter()
    for (_, reason), count in ev.started.items():
        reasons[reason] += count
    row("  WorkerStarted", sum(reasons.values()), f"({_counts(reasons)})" if reasons else "")
    unexpected = sum(ev.crashes(n) for n in names)
    row(
        "  WorkerExited, unexpected",
        unexpected,
        f"({_counts(ev.crash_codes, _exit_name)})" if unexpected else "",
    )
    if unexpected:
        methods = _counts(ev.crash_methods, lambda m: "(idle)" if m is None else m)
        holders = _counts(ev.crash_holders, lambda h: "(not leased)" if h is None else h)
        d.line(f"  {'    in a call to':<{W}} {'':>9}   {methods}")
        d.line(f"  {'    held by':<{W}} {'':>9}   {holders}")
    expected = sum(count for (_, exp), count in ev.exited.items() if exp)
    row("  WorkerExited, expected", expected, "(dismissed, reclaimed, stopped with the tree)")
    row("  PoolStateChanged", ev.state_changes)
    row("  CheckoutTimedOut", ev.checkout_timeouts)
    for kind, count in sorted(ev.other.items()):
        row(f"  {kind}", count)
    crashes = {n: sum(o.stats[n].crashes.values()) for n in names}
    bad = [n for n in names if ev.crashes(n) != crashes[n]]
    d.line(f"  {'events vs stats()':<{W}} {'':>9}   unexpected WorkerExited = sum of crashes")
    for n in names:
        row(f"  {n}", f"{ev.crashes(n)} = {crashes[n]}", "MISMATCH" if n in bad else "")
    total = sum(crashes.values())
    row("  all pools", f"{unexpected} = {total}", "MISMATCH" if bad else "agree")
    if bad:
        text = ", ".join(f"{n}: {ev.crashes(n)} events, {crashes[n]} in stats()" for n in bad)
        d.line(f"  MISMATCH: unexpected WorkerExited events != stats().crashes ({text})")
        problems.append(f"events and stats() disagree on crashes ({text})")
    if o.dropped:
        problems.append(f"the event subscription dropped {o.dropped} events")
    return problems
