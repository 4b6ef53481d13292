"""``pooly chaos``'s harm: the fault injector, the helper threads it starts, the restarter.

The injector (one thread) draws a fault kind (weights in :mod:`pooly.cli.chaos_config`,
those of ``--faults`` only) and a pool every ``--fault-interval``. Call faults are orders a
consumer carries out (:mod:`pooly.cli.chaos_calls`); the rest it does itself or hands to a
helper thread whose check runs once the helper has ended.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable

from .. import Lease, Pooly, PoolyError
from .chaos_async import ChaosAsync
from .chaos_config import (
    CALL_FAULTS,
    CHECKOUT_TIMEOUT,
    EX_FAULTS,
    FORK_CHILD_BOUND,
    HEAL_BOUND,
    HUNG_AFTER,
    HUNG_CALL_TIMEOUT,
    MAX_DOOMED,
    MAX_PENDING_ORDERS,
    TINY_TIMEOUTS,
    WEIGHTS,
    ExShape,
    Shape,
)
from .chaos_proc import proc_stat
from .common import is_full
from .workers import ChaosWorker

__all__ = ("ChaosFaults",)


class ChaosFaults(ChaosAsync):
    """The harm: the fault injector thread and the helper threads it starts, and the
    restarter thread."""

    def inject_faults(self) -> None:
        """The fault injector thread: one fault per interval, kind and pool at random."""
        rng = random.Random(self.seed ^ 0xFA17)
        kinds = [k for k in WEIGHTS if k in self.opts.faults]
        weights = [WEIGHTS[k] for k in kinds]
        interval = self.opts.fault_interval
        due = self.t0 + interval
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            self._reap_helpers()
            if not kinds:  # --faults named only stop-restart: the restarter does the harm
                continue
            kind = rng.choices(kinds, weights)[0]
            ex = kind in EX_FAULTS
            up = [n for n in (self.ex_names if ex else self.names) if n not in self.down]
            if not up:  # (or no executors: --executor-threads 0)
                self.count(self.fig.skipped, kind)
            elif ex:
                self.inject_ex(kind, rng.choice(up), rng)
            else:
                self._inject(kind, rng.choice(up), rng)
            due = max(due + interval, time.monotonic())
        self._reap_helpers(wait=True)

    def _inject(self, kind: str, name: str, rng: random.Random) -> None:
        gen = self.gen[name]
        if kind in CALL_FAULTS or kind == "interrupted":
            orders = self.orders[name]
            if len(orders) >= MAX_PENDING_ORDERS:
                self.count(self.fig.skipped, kind)
            else:
                orders.append(kind)  # counted as injected when a consumer makes the call
        elif kind in ("sigkill-busy", "sigkill-idle"):
            pid = self._pick_target(kind, name, rng)
            if pid is None:
                self.count(self.fig.skipped, kind)
                return
            self._sigkill(name, pid, gen, kind)
        elif kind == "abandoned":
            if sum(th.name.startswith("doomed") for th, _ in self.helpers) >= MAX_DOOMED:
                self.count(self.fig.skipped, kind)
            else:
                self._abandon_lease(name, rng.randrange(1 << 30))
        elif kind == "burst":
            if name in self.bursting:
                self.count(self.fig.skipped, kind)
            else:
                self._burst(name, rng.randrange(1 << 30))
        elif kind == "slow-start":
            self._slow_start(name, rng)
        elif kind == "hung-call":
            if any(th.name == f"hung-call-{name}" for th, _ in self.helpers):
                self.count(self.fig.skipped, kind)  # one at a time per pool
            else:
                self._hung_call(name, rng.randrange(1 << 30))
        elif kind == "host-fork":
            if any(th.name.startswith("host-fork") for th, _ in self.helpers):
                self.count(self.fig.skipped, kind)  # one at a time
            else:
                self._host_fork(name, rng.random())
        elif kind == "interrupted-main":
            # The main thread makes this call (see Chaos.run_workload), if Ctrl-C would
            # raise KeyboardInterrupt there: Python's own SIGINT handler is in place.
            if (
                self.main_orders
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            ):
                self.count(self.fig.skipped, kind)
            else:
                self.main_orders.append(name)

    def _pick_target(self, kind: str, name: str, rng: random.Random) -> int | None:
        """A busy (leased) or idle worker of pool ``name`` not yet killed, or None."""
        busy = {pid for p, pid in list(self.leased.values()) if p == name}
        if kind == "sigkill-busy":
            targets = busy - self.killed
        else:
            targets = set(self.pools[name].worker_pids()) - busy - self.killed
        return rng.choice(sorted(targets)) if targets else None

    def _slow_start(self, name: str, rng: random.Random) -> None:
        """Raise pool ``name``'s slow flag and SIGKILL one of its workers: the replacement's
        constructor takes SLOW_START seconds, while the other faults go on around it."""
        flag = self.slow_flags[name]
        if name in self.slow_starting:  # one at a time, and the pool healed in between
            self.count(self.fig.skipped, "slow-start")
            return
        pid = self._pick_target("sigkill-idle", name, rng)
        if pid is None:
            pid = self._pick_target("sigkill-busy", name, rng)
        if pid is None:
            self.count(self.fig.skipped, "slow-start")
            return
        gen = self.gen[name]
        self.slow_starting.add(name)
        with open(flag, "w"):
            pass
        self.killed.add(pid)
        self.kill_times[pid] = time.time()  # (its WorkerExited: see check_events)
        t = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone already: not ours to check (its exit came first)
            del self.kill_times[pid]
            os.unlink(flag)
            self.slow_starting.discard(name)
            self.count(self.fig.skipped, "slow-start")
            return
        self.count(self.fig.faults, "slow-start")
        self.hit(name, pid, t, gen, "slow-start")

        def wait() -> None:  # until a constructor has taken the flag and the pool healed
            deadline = t + HEAL_BOUND
            while time.monotonic() < deadline and not self.stop.wait(0.01):
                pool = self.pools.get(name)
                if not os.path.exists(flag) and (
                    name in self.down or pool is None or is_full(pool.status())
                ):
                    break

        def check() -> None:
            self.slow_starting.discard(name)
            try:
                os.unlink(flag)  # nobody took it (an overflow worker is not replaced)
            except FileNotFoundError:
                self.count(self.fig.confirmed, "slow-start")

        self._helper(f"slow-start-{name}", wait, check)

    def _hung_call(self, name: str, seed: int) -> None:
        """A consumer thread checks out with a short ``call_timeout`` and makes a call that
        hangs in C code holding the worker's GIL: CallTimeout must come on time (counted in
        :meth:`call`), and the pool must heal as after any kill."""

        def hung() -> None:
            got = self.checkout(f"hung-call-{name}", name, call_timeout=HUNG_CALL_TIMEOUT)
            if got is None:
                return
            lease, holder = got
            try:
                self.call(holder, lease, random.Random(seed), kind="hung-call")
            finally:
                self.checkin(holder, lease)

        self._helper(f"hung-call-{name}", hung, lambda: None)

    def _host_fork(self, name: str, draw: float) -> None:
        """Fork the host, as a pre-fork server or a fork-context ``multiprocessing.Pool`` does,
        while everything else goes on: the child finds pool ``name`` inert (PoolyError at
        once), runs a pool of its own, lives on a moment (holding whatever it inherited, while
        the restarter may be stopping pools), then exits as a program does (atexit hooks,
        the inherited Pooly's included). It must exit in time and leave no process behind."""
        pool = self.pools[name]
        linger = 0.2 + 1.3 * draw
        self.count(self.fig.faults, "host-fork")
        result: list[str] = []

        def fork() -> None:
            r, w = os.pipe()
            with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: nothing of the soak's (its locks may be held), only pooly
                _forked_child(pool, w, linger)
            os.close(w)
            deadline = time.monotonic() + FORK_CHILD_BOUND
            while os.waitpid(pid, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    result.append(f"HUNG: forked child {pid} did not exit in {FORK_CHILD_BOUND:g}s")
                    break
                time.sleep(0.01)
            with os.fdopen(r, "rb") as f:
                report = f.read().decode()
            if result:
                return
            if not report.startswith("ok"):
                result.append(f"forked child {pid}: {report or 'died without a word'}")
                return
            pids = [int(x) for x in report.split()[1:]]
            while any(_running(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
            left = [p for p in pids if _running(p)]
            if left:
                result.append(f"forked child {pid} left its pool's processes {left} running")

        def check() -> None:
            if not result:
                self.count(self.fig.confirmed, "host-fork")
            elif result[0].startswith("HUNG"):
                self.hung(result[0])
            else:
                self.other(result[0], self.fig.checkouts)

        self._helper(f"host-fork-{name}", fork, check)

    def _helper(self, name: str, target: Callable[[], None], check: Callable[[], None]) -> None:
        th = self.thread(name, target)
        th.start()
        self.helpers.append((th, check))

    def _reap_helpers(self, wait: bool = False) -> None:
        """Join helper threads that have ended and run their checks (injector thread)."""
        deadline = time.monotonic() + CHECKOUT_TIMEOUT + HUNG_AFTER
        keep = []
        for th, check in self.helpers:
            if wait:
                th.join(max(0.0, deadline - time.monotonic()))
            if th.is_alive():
                keep.append((th, check))
                if wait:
                    self.hung(f"helper thread {th.name} did not finish")
            else:
                th.join()
                check()
        self.helpers = keep

    def _abandon_lease(self, name: str, seed: int) -> None:
        """Start a consumer thread that checks out, calls, and ends without checking in."""
        box: list[Lease] = []

        def doomed() -> None:
            got = self.checkout("doomed consumer", name)
            if got is None:
                return
            lease, holder = got
            self.call(holder, lease, random.Random(seed))
            self.leased.pop(threading.get_ident(), None)
            if lease.active:
                box.append(lease)
                self.count(self.fig.faults, "abandoned")
                self.hit(name, lease.pid, time.monotonic(), holder.gen, "abandoned")
            else:  # its worker died (or the pool stopped) under the call: nothing to leave
                self.checkin(holder, lease)
            # ...and the thread ends here, still holding box[0].

        def check() -> None:  # runs after join() returned
            if not box:
                return
            if box[0].active:
                self.other(
                    f"a lease on {name} pid {box[0].pid} outlived its holder thread",
                    self.fig.checkouts,
                )
            else:
                self.count(self.fig.confirmed, "abandoned")

        self._helper(f"doomed-{name}", doomed, check)

    def _burst(self, name: str, seed: int) -> None:
        """Start an overflow burst on pool ``name``: more simultaneous checkouts than it
        has workers, each holding its lease a little; once they have taken everything,
        tiny-timeout and non-blocking waiters that must time out or give up."""
        rng = random.Random(seed)
        shape = self.shapes[self.names.index(name)]
        n = shape.size + shape.max_overflow + rng.randint(2, 5)
        barrier = threading.Barrier(n + 1)
        self.bursting.add(name)
        self.count(self.fig.faults, "burst")

        def holder(i: int) -> None:
            r = random.Random(seed + i)
            try:
                barrier.wait(CHECKOUT_TIMEOUT)
            except threading.BrokenBarrierError:
                pass
            got = self.checkout(f"burst-{name}-{i}", name)
            if got is None:
                return
            lease, h = got
            try:
                for _ in range(r.randint(1, 2)):
                    if not self.call(h, lease, r):
                        break
                time.sleep(r.uniform(0.01, 0.04))  # hold it: the pool stays full a while
            finally:
                self.checkin(h, lease)

        def waiter(i: int, timeout: float | None) -> None:
            r = random.Random(seed - i)
            who = f"waiter-{name}-{i}"
            got = (
                self.checkout(who, name, block=False, deliberate=True)
                if timeout is None
                else self.checkout(who, name, timeout=timeout, deliberate=True)
            )
            if got is not None:  # served after all: use it properly
                lease, h = got
                try:
                    self.call(h, lease, r)
                finally:
                    self.checkin(h, lease)

        def coordinator() -> None:
            holders = [self.thread(f"burst-{name}-{i}", holder, i) for i in range(n)]
            for th in holders:
                th.start()
            try:
                barrier.wait(CHECKOUT_TIMEOUT)
            except threading.BrokenBarrierError:
                pass
            time.sleep(0.005)  # let the burst take every worker
            waiters = [
                self.thread(
                    f"waiter-{name}-{i}",
                    waiter,
                    i,
                    None if rng.random() < 0.3 else rng.choice(TINY_TIMEOUTS),
                )
                for i in range(rng.randint(2, 5))
            ]
            for th in waiters:
                th.start()
            for th in holders + waiters:
                th.join(CHECKOUT_TIMEOUT + HUNG_AFTER)
                if th.is_alive():
                    self.hung(f"burst thread {th.name} did not finish")

        def check() -> None:  # runs once the coordinator (which joined the rest) ended
            self.bursting.discard(name)
            self.count(self.fig.confirmed, "burst")

        self._helper(f"burst-{name}", coordinator, check)

    # -- stop and restart a pool under load (restarter thread) ----------------------

    def restart_pools(self) -> None:
        if "stop-restart" not in self.opts.faults:
            return
        # The executors early in the rotation (a short run restarts each kind of pool).
        shapes: list[Shape | ExShape] = list(self.shapes)
        for k, xs in enumerate(self.ex_shapes):
            shapes.insert(2 * k + 1, xs)
        rotation = itertools.cycle(shapes)
        while not self.stop.wait(self.restart_every):
            self._restart(next(rotation))

    def _restart(self, shape: Shape | ExShape) -> None:
        assert self.sup is not None
        name = shape.name
        # The generation changes before the stop and again once the pool is back, so any
        # checkout or lease begun in between sees a change, however late it looks.
        self.down.add(name)
        self.gen[name] += 1
        self.count(self.fig.faults, "stop-restart")
        op = self.begin_op(f"restarter: stop_pool + start_pool of {name}")
        t = time.monotonic()
        try:
            old = self.pools[name]
            self.sup.stop_pool(name)
            stopped = time.monotonic()
            self.replaced_before[name] += old.status().replaced
            self.pools[name] = self.start_any(shape)
        except Exception as e:
            self.anomaly(f"restart of {name} failed: {type(e).__name__}: {e}")
            self.fig.problems.append(f"stop/restart of pool {name!r} failed: {e}")
            return  # stays down: its consumers keep getting NoSuchPool (expected)
        finally:
            self.end_op(op)
        down_ms = (time.monotonic() - t) * 1000
        self.fig.restarts_down_ms.append(down_ms)
        self.gen[name] += 1
        self.down.discard(name)
        self.count(self.fig.confirmed, "stop-restart")
        self.display.line(
            f"{self.elapsed():6.1f}s  {name}: stopped under load in "
            f"{(stopped - t) * 1000:.0f} ms, serving again {down_ms:.0f} ms after the stop began"
        )


def _forked_child(parents_pool: object, w: int, linger: float) -> None:
    """The body of a child forked by the ``host-fork`` fault; always ends in ``os._exit``."""
    code, report = 1, "error"
    try:
        try:
            parents_pool.checkout(timeout=1)  # type: ignore[attr-defined]
            report = "the parent's pool served a checkout in its forked child"
        except PoolyError:
            mine = Pooly()
            pool = mine.start_pool("forked-child", ChaosWorker, size=1)
            pids = pool.worker_pids()
            with pool.checkout(timeout=CHECKOUT_TIMEOUT) as lease:
                echoed = lease.echo(linger)
            time.sleep(linger)
            mine.stop()
            if echoed == linger:
                code, report = 0, " ".join(["ok", *map(str, pids)])
            else:
                report = f"its own pool answered {echoed!r}, not {linger!r}"
        atexit._run_exitfuncs()  # exit as a program does (os._exit skips them)
    except BaseException as e:
        report = f"{type(e).__name__}: {e}"
    finally:
        try:
            os.write(w, report.encode()[:4000])
        finally:
            os._exit(code)


def _running(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")
