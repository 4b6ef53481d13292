"""``pooly chaos``'s watchers and its run: the monitor, the watchdog, and the main thread's
part (run the workload, settle, sweep).

:class:`Chaos` is the whole soak: state (:mod:`~pooly.cli.chaos_state`), consumers
(:mod:`~pooly.cli.chaos_calls`), faults (:mod:`~pooly.cli.chaos_faults`), and this.
"""

from __future__ import annotations

import collections
import gc
import random
import statistics
import sys
import threading
import time

from .chaos_config import (
    AIO_CANCELLED,
    AIO_TIMED_OUT,
    CHECKOUT_TIMEOUT,
    CRASHED,
    EX_SUBMITTED,
    EX_TIMED_OUT,
    FORGET_AFTER,
    HEAL_BOUND,
    HUNG_AFTER,
    OK,
    OTHER,
    WRONG,
)
from .chaos_faults import ChaosFaults
from .chaos_proc import fd_count, start_time, status_field
from .chaos_state import Hit
from .common import is_full, is_settled, kill_each_worker

__all__ = ("Chaos",)


class Chaos(ChaosFaults):
    """One soak: the pools, the threads and the counts. See :mod:`pooly.cli.chaos`."""

    # -- watching (monitor and watchdog threads) --------------------------------------

    def monitor(self, done: threading.Event) -> None:
        """Poll every pool's status: heal times, worker pids seen, a pool that failed."""
        while not done.wait(0.002):
            self._poll()
        self._poll()  # a last look: a fault of the last milliseconds may have healed since

    def _poll(self) -> None:
        """One look at every pool (monitor thread)."""
        now = time.monotonic()
        with self.hits_lock:
            hits = list(self.hits)
        pending: dict[str, list[Hit]] = collections.defaultdict(list)
        for h in hits:
            pending[h.name].append(h)
        resolved: list[Hit] = []
        listed: set[int] = set()
        for name in self.all_names:
            pool = self.pools.get(name)
            if pool is None or name in self.down:
                continue
            s = pool.status()
            if s.waiting > self.fig.peak_waiting.get(name, 0):
                self.fig.peak_waiting[name] = s.waiting
            pids = pool.worker_pids()
            listed.update(pids)
            for pid in pids:
                if pid not in self.seen:
                    self.seen[pid] = start_time(pid)
            if s.state == "failed" and name not in self.failed:
                self.failed.add(name)
                self.fig.problems.append(f"pool {name!r} failed (raise the restart intensity?)")
                self.anomaly(f"pool {name} failed")
            full = s.state not in ("failed", "stopped") and is_full(s)
            for h in pending[name]:
                if not h.late and now - h.t > HEAL_BOUND:
                    h.late = True
                    self.fig.heal_late += 1
                    self.anomaly(
                        f"{h.kind} on {name} pid {h.pid}: not back at full size "
                        f"{HEAL_BOUND:g} s later (pid {'gone' if h.noticed else 'still listed'}, "
                        f"{s})"
                    )
                if h.gen != self.gen[name]:
                    self.fig.heal_cancelled += 1  # the pool was stopped and started anew
                    self.fig.heal_cancelled_ms.append((now - h.t) * 1000)
                    resolved.append(h)
                    continue
                if not h.noticed and h.pid not in pids:
                    h.noticed = True
                    if h.kind in ("sigkill-busy", "sigkill-idle", "ex-sigkill"):
                        self.count(self.fig.confirmed, h.kind)
                if h.noticed and not full:
                    h.dipped = True
                elif h.noticed:
                    resolved.append(h)
                    if h.dipped:
                        self.fig.heal_ms.append((now - h.t) * 1000)
                    else:
                        self.fig.heal_no_dip += 1
        self.listed = listed
        if resolved:
            with self.hits_lock:
                gone = {id(h) for h in resolved}
                self.hits = [h for h in self.hits if id(h) not in gone]

    def _forget_dead(self) -> None:
        """Drop the records of workers dead for FORGET_AFTER s (watchdog thread). None of
        their calls can still be in flight: it would have been counted hung by then."""
        now = time.monotonic()
        listed = self.listed
        for pid, started in list(self.seen.items()):
            if pid in listed:
                continue
            since = self.dead_since.get(pid)
            if since is None:
                if started is None or start_time(pid) != started:
                    self.dead_since[pid] = now
            elif now - since > FORGET_AFTER:
                for records in (self.seen, self.dead_since, self.totals):
                    records.pop(pid, None)
                with self.hits_lock:
                    self.hit_pids.discard(pid)
                self.killed.discard(pid)
                self.forgotten += 1

    def watchdog(self, done: threading.Event) -> None:
        """Count every checkout or call that stays in flight longer than HUNG_AFTER."""
        while not done.wait(0.25):
            self._forget_dead()
            fds = fd_count()
            if fds > self.fig.fds_during.get("peak", 0):
                self.fig.fds_during["peak"] = fds
            threads = threading.active_count()
            if threads > self.fig.threads_during.get("peak", 0):
                self.fig.threads_during["peak"] = threads
            now = time.monotonic()
            for op, (since, what) in self.inflight.copy().items():
                if now - since > HUNG_AFTER and op not in self.hung_ops:
                    self.hung_ops.add(op)
                    self.hung(f"{what} in flight for over {HUNG_AFTER:g} s")

    # -- the run (main thread) --------------------------------------------------------

    def run_workload(self) -> bool:
        """Consumers, injector and restarter for the duration. False if interrupted."""
        o = self.opts
        self.t0 = time.monotonic()
        workers = [
            self.thread(
                f"consumer-{i + 1}", self.consume, f"consumer-{i + 1}", random.Random(self.seed + i)
            )
            for i in range(o.consumers)
        ]
        workers += [
            self.thread(
                f"feeder-{i + 1}", self.feed, f"feeder-{i + 1}", random.Random(~self.seed - i)
            )
            for i in range(o.executor_threads if self.ex_names else 0)
        ]
        workers += self.aio_threads()
        self.fig.threads_during["start"] = threading.active_count()
        workers.append(self.thread("injector", self.inject_faults))
        workers.append(self.thread("restarter", self.restart_pools))
        for th in workers:
            th.start()
        period = 0.25 if self.display.tty else (2.0 if o.duration < 60 else 10.0)
        deadline = self.t0 + o.duration
        next_status = self.t0 + period
        shown = 0
        completed = True
        rng = random.Random(self.seed ^ 0x5161)  # for the main thread's own calls
        try:
            while (now := time.monotonic()) < deadline:
                while shown < len(self.fig.anomalies) and shown < 30:
                    self.display.line(self.fig.anomalies[shown])
                    shown += 1
                if now >= next_status:
                    self.display.status(self.status_line())
                    next_status = max(next_status + period, now)
                if self.main_orders:
                    self._main_call(self.main_orders.popleft(), rng)
                time.sleep(max(0.0, min(0.05, deadline - time.monotonic())))
        except KeyboardInterrupt:
            completed = False
            self.display.line("interrupted: stopping early")
        self.fig.duration = self.elapsed()
        self.fig.rss_kb["end"] = status_field("VmRSS")
        self.fig.fds_during["end"] = fd_count()
        self.fig.threads_during["end"] = threading.active_count()
        gc.collect()
        self.fig.heap_blocks["end"] = sys.getallocatedblocks()
        self.stop.set()
        # Every checkout and call must end: each thread finishes its call, checks in, returns.
        end = time.monotonic() + CHECKOUT_TIMEOUT + HUNG_AFTER + 5.0
        for th in workers:
            th.join(max(0.0, end - time.monotonic()))
            if th.is_alive():
                self.hung(f"thread {th.name} did not finish")
        self.display.clear_status()
        self.display.line(self.status_line())
        return completed

    def _main_call(self, name: str, rng: random.Random) -> None:
        """The main thread's interrupted call (its SIGINT is Ctrl-C's), then its checkin."""
        if name in self.down:
            self.count(self.fig.skipped, "interrupted-main")
            return
        got = self.checkout("main thread", name)
        if got is None:
            return
        lease, holder = got
        try:
            self.call(holder, lease, rng, kind="interrupted-main")
        finally:
            self.checkin(holder, lease)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every pool is back to ``size`` idle workers and nothing else."""
        deadline = time.monotonic() + timeout
        while True:
            if all(
                is_settled(self.pools[n].status()) for n in self.all_names if n not in self.down
            ):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def final_sweep(self) -> None:
        """SIGKILL every worker once more, one at a time, and time each replacement."""
        for name in self.all_names:
            if name in self.down:
                continue
            pool = self.pools[name]
            for pid, heal_ms in kill_each_worker(pool, timeout=5.0):
                self.fig.final_killed += 1
                if heal_ms is None:
                    self.anomaly(f"final sweep: {name} worker pid {pid} was not replaced")
                else:
                    self.fig.final_replaced += 1
                    self.fig.final_heal_ms.append(heal_ms)

    def status_line(self) -> str:
        with self.lock:
            c, f = self.fig.calls.copy(), sum(self.fig.faults.values())
        expected = sum(v for k, v in c.items() if k not in (OK, WRONG, CRASHED, OTHER, "attempted"))
        rate = c["attempted"] / max(self.elapsed(), 1e-9)
        parts = [
            f"{self.elapsed():6.1f}s  calls {c['attempted']:,} ({rate:,.0f}/s): ok {c[OK]:,}, "
            f"crashed {c[CRASHED]:,}, expected errors {expected:,}, OTHER "
            f"{c[OTHER] + self.fig.checkouts[OTHER]}, wrong {c[WRONG]}, hung {self.fig.hung}",
            f"faults {f:,}",
        ]
        heal = self.fig.heal_ms[-200:]
        if heal:
            parts.append(f"heal p50 {statistics.median(heal):.0f} ms")
        fu = self.fig.futures
        if fu[EX_SUBMITTED]:
            parts.insert(
                1,
                f"futures {fu[EX_SUBMITTED]:,}: ok {fu[OK]:,}, crashed {fu[CRASHED]:,}, "
                f"timed out {fu[EX_TIMED_OUT]:,}, OTHER {fu[OTHER]}, wrong {fu[WRONG]}",
            )
        a = self.fig.aio
        if a["attempted"]:
            parts.insert(
                2 if fu[EX_SUBMITTED] else 1,
                f"async ops {a['attempted']:,}: ok {a[OK]:,}, cancelled "
                f"{a[AIO_CANCELLED] + a[AIO_TIMED_OUT]:,}, OTHER {a[OTHER]}, wrong {a[WRONG]}",
            )
        for name in self.all_names:
            if name in self.down:
                parts.append(f"{name} restarting")
                continue
            s = self.pools[name].status()
            parts.append(f"{name} {s.idle}i/{s.busy}b/{s.overflow}o")
        parts.append(f"rss {status_field('VmRSS') / 1024:.0f} MB")
        return " | ".join(parts)

    def replaced(self) -> dict[str, int]:
        return {
            n: self.replaced_before[n] + self.pools[n].status().replaced
            for n in self.all_names
            if n in self.pools
        }

    def late_hits(self) -> int:
        """Faults after which the pool was never seen back at full size (each described)."""
        with self.hits_lock:
            hits = [h for h in self.hits if not h.late]  # (the late ones are counted)
        for h in hits:
            pool = self.pools.get(h.name)
            listed = pool is not None and h.pid in pool.worker_pids()
            self.anomaly(
                f"{h.kind} on {h.name} pid {h.pid} at {h.t - self.t0:.1f}s: pool never seen "
                f"back at full size (gen {h.gen}/{self.gen[h.name]}, pid "
                f"{'still listed' if listed else 'gone'}, alive {start_time(h.pid) is not None}, "
                f"dipped {h.dipped}; status {pool.status() if pool else None})"
            )
        return len(hits)
