"""The workload of ``pooly demo``: consumers, the fault injector and the pools' checks.

One :class:`Demo` holds a run's pools, threads and counts (see :mod:`pooly.cli.demo` for the
picture and the tally); which thread runs each method is said in its section.
"""

from __future__ import annotations

import collections
import math
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import CheckoutTimeout, Lease, Pool, PoolFailed, Pooly, RayBackend, WorkerCrashed
from .._errors import describe_exit
from .common import Display, is_settled, kill_each_worker
from .demo_config import (
    CHECKOUT_TIMEOUT,
    EXIT_CODE,
    KINDS,
    MAX_SECONDS,
    OVERFLOW,
    POOLS,
    ROUNDS,
    FaultLog,
    Options,
    Order,
    Stats,
)
from .workers import PAYLOADS, Counter, Hasher, sha256_chain

__all__ = ("Demo",)

# ---------------------------------------------------------------------- the demo


class Demo:
    """One run: the pools, the threads and the counts. See the module docstring."""

    def __init__(
        self, sup: Pooly, opts: Options, display: Display, backend: RayBackend | None = None
    ) -> None:
        self.sup = sup
        self.opts = opts
        self.display = display
        # Where the workers run (None: processes of this host; pooly demo --ray: Ray
        # actors, whose replacement starts take a good part of a second, whose deaths
        # give no exit status).
        self.backend = backend
        self.heal_wait = 1.0 if backend is None else 5.0
        # Called once, halfway through the workload, from the main thread (--ray: a node
        # of the cluster is lost then).
        self.midway: Callable[[], None] | None = None
        self.seed = opts.seed if opts.seed is not None else secrets.randbelow(10**6)
        # Sized for the fault rate (~0.8 restarting faults per interval, shared by two pools,
        # with room for bursts) plus the final check's kills. The default, 3 in 5 s, is
        # meant to fail a pool whose workers keep dying; here they die on purpose.
        self.max_restarts = max(3, math.ceil(2 * MAX_SECONDS / opts.fault_interval)) + opts.size
        self.pools: dict[str, Pool] = {}
        self.stop = threading.Event()
        self.paused = threading.Event()  # no new fault while set
        self.t0 = 0.0
        self.workload_s = 0.0
        self.stats: list[Stats] = []
        self.faults = FaultLog()
        self.anomalies: list[str] = []
        self.problems: list[str] = []  # a variant's own reasons to fail the run (--ray)
        self.failed_pools: set[str] = set()
        self.hung: list[str] = []  # threads that did not finish in time
        self.broken: list[str] = []  # consumer threads that stopped on an exception
        self._orders: dict[str, collections.deque[Order]] = {
            name: collections.deque() for name in POOLS
        }
        self._leased: dict[str, tuple[str, int]] = {}  # consumer -> (pool, worker pid)
        self._in_call: dict[str, float] = {}  # consumer -> when its call went out
        self._totals: dict[str, int] = {}  # Counter token -> last total seen
        self._digests: dict[tuple[int, int], str] = {}
        self._killed: set[int] = set()
        self.final_heal_ms: list[float] = []
        self._threads: list[threading.Thread] = []  # the load's: consumers, then the injector
        self._calls_seen: dict[str, collections.deque[tuple[float, int]]] = {}  # for calls/s

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def anomaly(self, text: str) -> None:
        self.anomalies.append(f"{self.elapsed():5.1f}s  {text}")

    # -- set-up --------------------------------------------------------------------

    def start_pools(self) -> None:
        o = self.opts
        for name, cls in zip(POOLS, (Counter, Hasher), strict=True):
            self.pools[name] = self.sup.start_pool(
                name,
                cls,
                size=o.size,
                max_overflow=OVERFLOW[name],
                max_restarts=self.max_restarts,
                max_seconds=MAX_SECONDS,
                backend=self.backend,
            )

    # -- consumers (consumer threads) ------------------------------------------------

    def consume(self, who: str, rng: random.Random) -> None:
        """A consumer thread: lease a worker, make a few checked calls, give it back."""
        stats = Stats()
        self.stats.append(stats)
        try:
            self._consume(who, rng, stats)
        except Exception as e:  # a bug in the demo or the pool: report it, don't hide it
            self.broken.append(who)
            self.anomaly(f"{who} stopped on {type(e).__name__}: {e}")

    def _consume(self, who: str, rng: random.Random, stats: Stats) -> None:
        while not self.stop.is_set():
            choices = [n for n in POOLS if n not in self.failed_pools]
            if not choices:
                return
            name = rng.choice(choices)
            pool = self.pools[name]
            try:
                lease = pool.checkout(timeout=CHECKOUT_TIMEOUT)
            except CheckoutTimeout:
                stats.checkout_timeouts += 1
                continue
            except PoolFailed as e:
                if name not in self.failed_pools:
                    self.failed_pools.add(name)
                    self.anomaly(f"{who}: pool {name!r} refused a checkout: {e}")
                continue
            self._leased[who] = (name, lease.pid)
            try:
                for _ in range(rng.randint(1, 8)):
                    if self.stop.is_set() or not self.call(who, name, lease, stats, rng):
                        break
            finally:
                self._leased.pop(who, None)
                pool.checkin(lease)  # a quiet no-op if the worker died under us
            time.sleep(rng.random() * 0.002)  # think time; leaves some workers idle

    def call(self, who: str, name: str, lease: Lease, stats: Stats, rng: random.Random) -> bool:
        """One call through ``lease``, its outcome counted. False once the lease is over."""
        try:
            order: Order | None = self._orders[name].popleft()
        except IndexError:
            order = None
        stats.calls += 1
        stats.per_pool[name] += 1
        self._in_call[who] = time.monotonic()
        try:
            if order is not None:
                return self._carry_out(order, lease, stats)
            if name == "counters":
                k = rng.randint(1, 100)
                result: Any = lease.add(k)
                good = self._check_total(result, k)
            else:
                i, rounds = rng.randrange(len(PAYLOADS)), rng.choice(ROUNDS)
                result = lease.digest(PAYLOADS[i], rounds)
                good = result == self._expected_digest(i, rounds)
        except WorkerCrashed:
            stats.crashed += 1
            return False
        except Exception as e:
            stats.errors += 1
            self.anomaly(f"{who}: a call on {name} raised {type(e).__name__}: {e}")
            return False
        finally:
            self._in_call.pop(who, None)
        if good:
            stats.ok += 1
        else:
            stats.wrong += 1
            self.anomaly(f"{who}: wrong result from {name} worker pid {lease.pid}: {result!r}")
        return True

    def _carry_out(self, order: Order, lease: Lease, stats: Stats) -> bool:
        try:
            if order.kind == "segfault":
                lease.segfault()
            else:
                lease.exit(EXIT_CODE)
        except WorkerCrashed as e:
            stats.crashed += 1
            order.error = e
        except Exception as e:
            stats.errors += 1
            order.error = e
            self.anomaly(f"{order.kind} call raised {type(e).__name__}: {e}")
        else:
            stats.errors += 1
            self.anomaly(f"{order.kind} call on worker pid {lease.pid} returned normally")
        order.when = time.monotonic()
        order.done.set()
        return False

    def _check_total(self, result: Any, k: int) -> bool:
        if not (isinstance(result, tuple) and len(result) == 2):
            return False
        token, total = result
        # Only the lease holder touches its worker's token: no lock needed. A token never
        # seen before is a fresh worker, whose total starts at 0.
        expected = self._totals.get(token, 0) + k
        self._totals[token] = total
        return bool(total == expected)

    def _expected_digest(self, i: int, rounds: int) -> str:
        key = (i, rounds)
        if key not in self._digests:
            self._digests[key] = sha256_chain(PAYLOADS[i], rounds)
        return self._digests[key]

    # -- faults (fault injector thread) ------------------------------------------------

    def inject_faults(self) -> None:
        """The fault injector thread: one fault per interval, kinds and pools in rotation."""
        rng = random.Random(self.seed ^ 0xFA17)
        interval = self.opts.fault_interval
        due = self.t0 + interval
        n = 0
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            if self.paused.is_set():  # (--ray: while a lost node's workers are replaced)
                due = max(due + interval, time.monotonic())
                continue
            kind, name = KINDS[n % len(KINDS)], POOLS[n % len(POOLS)]
            if name not in self.failed_pools:
                self._inject(kind, name, rng)
            n += 1
            due = max(due + interval, time.monotonic())

    def _inject(self, kind: str, name: str, rng: random.Random) -> None:
        pool = self.pools[name]
        before = pool.status().replaced
        if kind in ("sigkill-busy", "sigkill-idle"):
            target = self._pick_target(kind, name, rng)
            if target is None:
                self.faults.skipped += 1
                return
            pid, holder = target
            self._killed.add(pid)
            t = time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                self.faults.skipped += 1
                return
            what = (
                f"SIGKILL to busy worker pid {pid} (leased by {holder})"
                if holder
                else f"SIGKILL to idle worker pid {pid}"
            )
        elif kind == "abandoned":
            result = self._abandon_lease(name)
            if result is None:
                self.faults.skipped += 1
                return
            pid, reclaimed = result
            t = time.monotonic()
            what = f"a consumer thread ended holding a lease on pid {pid}"
            if reclaimed:
                self.faults.confirmed[kind] += 1
                what += ": the pool reclaimed it"
            else:
                self.anomaly(f"a lease on {name} pid {pid} outlived its holder thread")
                what += ": the lease was NOT reclaimed"
        else:
            order = self._order(kind, name)
            if order is None:
                self.faults.skipped += 1
                return
            e = order.error
            expected = -signal.SIGSEGV if kind == "segfault" else EXIT_CODE
            if isinstance(e, WorkerCrashed) and e.exitcode not in (expected, None):
                return  # it ran on a worker that had just died of something else: no fault
            # (None: a Ray actor's death gives no exit status; taken as the fault's own.)
            t = order.when
            what = "segfault" if kind == "segfault" else f"os._exit({EXIT_CODE})"
            if isinstance(e, WorkerCrashed):
                self.faults.confirmed[kind] += 1
                what += (
                    f" inside a call on pid {e.pid}: the caller got WorkerCrashed "
                    f"({describe_exit(e.exitcode)})"
                )
            else:
                what += (
                    " inside a call: the caller got "
                    f"{type(e).__name__ if e else 'a normal return'}!"
                )
        self.faults.count[kind] += 1
        self.display.line(f"{self.elapsed():5.1f}s  {name + ':':<9} {what}")
        healed = self._await_replacement(kind, pool, before, t)
        self.display.line(f"{self.elapsed():5.1f}s  {name + ':':<9}   {healed}")

    def _pick_target(
        self, kind: str, name: str, rng: random.Random
    ) -> tuple[int, str | None] | None:
        """(pid, holder) of a busy (leased) or idle worker of pool ``name``, or None."""
        pool = self.pools[name]
        deadline = time.monotonic() + min(0.5, self.opts.fault_interval / 2)
        while not self.stop.is_set():
            busy = {pid: who for who, (p, pid) in list(self._leased.items()) if p == name}
            if kind == "sigkill-busy":
                targets = set(busy) - self._killed
            else:
                targets = set(pool.worker_pids()) - set(busy) - self._killed
            if targets:
                pid = rng.choice(sorted(targets))
                return pid, busy.get(pid)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)
        return None

    def _order(self, kind: str, name: str) -> Order | None:
        """Have a consumer make a crashing call on pool ``name``; None if none came by."""
        order = Order(kind)
        queue = self._orders[name]
        queue.append(order)
        if order.done.wait(max(1.0, self.opts.fault_interval)):
            return order
        try:
            queue.remove(order)
            return None
        except ValueError:  # a consumer claimed it just now: its call must end
            if not order.done.wait(30.0):
                self.anomaly(f"a {kind} call on {name} did not end within 30 s")
                return None
            return order

    def _abandon_lease(self, name: str) -> tuple[int, bool] | None:
        """Run a consumer thread that checks out, calls, and ends without checking in."""
        box: list[Lease] = []
        rng = random.Random(self.seed ^ len(self.stats))

        def doomed() -> None:
            stats = Stats()
            self.stats.append(stats)
            try:
                box.append(self.pools[name].checkout(timeout=CHECKOUT_TIMEOUT))
            except (CheckoutTimeout, PoolFailed):
                return
            self.call("doomed consumer", name, box[0], stats, rng)
            # ...and the thread ends here, still holding box[0].

        thread = threading.Thread(target=doomed, name=f"doomed-consumer-{name}", daemon=True)
        thread.start()
        thread.join(CHECKOUT_TIMEOUT + 30.0)
        if thread.is_alive():
            self.anomaly(f"a doomed consumer on {name} did not end")
            return None
        if not box:
            return None
        return box[0].pid, not box[0].active  # reclaimed before join() returned

    def _await_replacement(self, kind: str, pool: Pool, before: int, t: float) -> str:
        """Wait (briefly) for the pool to start a replacement; say how long it took."""
        deadline = time.monotonic() + self.heal_wait
        while time.monotonic() < deadline:
            if pool.status().replaced > before:
                ms = (time.monotonic() - t) * 1000
                self.faults.heal_ms.append(ms)
                if kind in ("sigkill-busy", "sigkill-idle"):
                    self.faults.confirmed[kind] += 1
                return f"... replaced by a new worker {ms:.0f} ms after the fault"
            time.sleep(0.001)
        self.faults.not_replaced += 1
        return f"... no replacement within {self.heal_wait:g} s (right for an overflow worker only)"

    # -- the run (main thread) -----------------------------------------------------------

    def run_workload(self) -> bool:
        """Run consumers and injector for the duration. False if interrupted (Ctrl-C)."""
        o = self.opts
        self.start_load()
        period = 0.1 if self.display.tty else (2.0 if o.duration >= 8 else 1.0)
        deadline = self.t0 + o.duration
        next_status = self.t0 + period
        midway = self.t0 + o.duration / 2
        completed = True
        try:
            while (now := time.monotonic()) < deadline:
                if self.midway is not None and now >= midway:
                    self.midway()
                    self.midway = None
                if now >= next_status:
                    self.display.status(self.status_line())
                    next_status = max(next_status + period, now)
                time.sleep(min(0.05, deadline - now))
        except KeyboardInterrupt:
            completed = False
            self.display.line("interrupted: stopping early")
        self.stop_load()
        self.display.clear_status()
        self.display.line(self.status_line())
        return completed

    def start_load(self) -> None:
        """Start the demo's load -- the consumer threads and the fault injector -- and return:
        it runs until :meth:`stop_load`. :meth:`run_workload` runs it for the duration; the
        benchmark runs it beside its own measurement (bench item 15)."""
        self.t0 = time.monotonic()
        self._threads = [
            threading.Thread(
                target=self.consume,
                args=(f"consumer-{i + 1}", random.Random(self.seed + i)),
                name=f"consumer-{i + 1}",
                daemon=True,
            )
            for i in range(self.opts.consumers)
        ]
        self._threads.append(
            threading.Thread(target=self.inject_faults, name="fault-injector", daemon=True)
        )
        for name, pool in self.pools.items():  # where the progress's calls/s start from
            self._calls_seen[name] = collections.deque([(self.t0, pool.stats().calls)])
        for th in self._threads:
            th.start()

    def stop_load(self) -> None:
        """Stop what :meth:`start_load` started; every call ends (a consumer finishes its
        current call, checks in and returns). A thread still running after the deadline is
        recorded in ``hung`` and as an anomaly."""
        self.workload_s = self.elapsed()
        self.stop.set()
        end = time.monotonic() + CHECKOUT_TIMEOUT + 10.0
        injector_first = [*self._threads[-1:], *self._threads[:-1]]
        for th in injector_first:
            th.join(max(0.0, end - time.monotonic()))
            if th.is_alive():
                self.hung.append(th.name)
                since = self._in_call.get(th.name)
                doing = (
                    f"in a call for {time.monotonic() - since:.1f} s" if since else "not in a call"
                )
                self.anomaly(f"thread {th.name} did not finish ({doing})")

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every live pool is back to ``size`` idle workers and nothing else."""
        deadline = time.monotonic() + timeout
        while True:
            if all(
                is_settled(p.status()) for n, p in self.pools.items() if n not in self.failed_pools
            ):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def final_check(self) -> tuple[int, int]:
        """SIGKILL each pool's workers once more, one at a time, and wait for each
        replacement. A worker the pool would not replace (one whose supervision was lost)
        shows up here. Returns (killed, replaced)."""
        killed = replaced = 0
        for name, pool in self.pools.items():
            if name in self.failed_pools:
                continue
            for pid, heal_ms in kill_each_worker(pool, timeout=2.0):
                killed += 1
                if heal_ms is None:
                    self.anomaly(f"final check: {name} worker pid {pid} was not replaced")
                else:
                    replaced += 1
                    self.final_heal_ms.append(heal_ms)
        return killed, replaced

    # -- reporting -----------------------------------------------------------------------

    def totals(self) -> Stats:
        t = Stats()
        for s in list(self.stats):
            t.calls += s.calls
            t.ok += s.ok
            t.crashed += s.crashed
            t.wrong += s.wrong
            t.errors += s.errors
            t.checkout_timeouts += s.checkout_timeouts
            t.per_pool.update(s.per_pool)
        return t

    def status_line(self) -> str:
        """The progress block: the demo's own counts, then a line per pool from its
        ``status()`` and ``stats()`` -- a compact live view of the tree."""
        t = self.totals()
        lines = [
            f"{self.elapsed():5.1f}s  calls {t.calls:,}: ok {t.ok:,}, WorkerCrashed "
            f"{t.crashed}, lost {t.wrong + t.errors} | faults {sum(self.faults.count.values())}"
        ]
        now = time.monotonic()
        for name, pool in self.pools.items():
            s, st = pool.status(), pool.stats()
            lines.append(
                f"       {name:<9} {s.state:<8} idle {s.idle} busy {s.busy} overflow "
                f"{s.overflow}/{s.max_overflow} waiting {s.waiting} | "
                f"{self._rate(name, now, st.calls):,.0f} calls/s | crashes "
                f"{sum(st.crashes.values())}, replaced {st.replacements} | restarts left "
                f"{st.restarts_left}/{pool.max_restarts}"
            )
        return "\n".join(lines)

    def _rate(self, name: str, now: float, calls: int) -> float:
        """Calls per second into pool ``name`` over about the last second (main thread)."""
        seen = self._calls_seen.setdefault(name, collections.deque())
        seen.append((now, calls))
        while len(seen) > 2 and now - seen[1][0] >= 1.0:
            seen.popleft()
        t0, c0 = seen[0]
        return (calls - c0) / (now - t0) if now > t0 else 0.0
