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

The worker classes live here, in an importable module, because workers run under forkserver
and import their class by module path.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import hashlib
import logging
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._errors import CheckoutTimeout, PoolFailed, WorkerCrashed, describe_exit
from ._pool import Lease, Pool, PoolStatus
from ._pooly import Pooly

__all__ = ("Counter", "Hasher", "Options", "add_arguments", "run", "sha256_chain")

# ---------------------------------------------------------------------- worker classes


class Crashable:
    """Ways for a worker to die inside a call (run in the worker process)."""

    def segfault(self) -> None:
        """Crash the worker process with SIGSEGV, as a buggy C extension would."""
        faulthandler.disable()  # no traceback dump on the terminal; the tally reports it
        faulthandler._sigsegv()  # type: ignore[attr-defined]  # also disables core dumps

    def exit(self, code: int) -> None:
        """End the worker process at once, skipping all cleanup (a library calling _exit)."""
        os._exit(code)


class Counter(Crashable):
    """A stateful worker: a running total, plus a token naming this very instance.

    The token lets a consumer check every result: for one instance, each ``add(k)`` must
    return the previous total plus ``k``. Were a worker ever used by two consumers at once,
    or a stale handle to reach someone else's worker, the totals would not add up.
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.total = 0

    def add(self, k: int) -> tuple[str, int]:
        self.total += k
        return self.token, self.total


def sha256_chain(payload: bytes, rounds: int) -> str:
    """sha256 applied ``rounds`` times (a little real CPU work with a checkable answer)."""
    digest = payload
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class Hasher(Crashable):
    """A CPU-bound worker: sha256 chains of a payload."""

    def digest(self, payload: bytes, rounds: int) -> str:
        return sha256_chain(payload, rounds)


# ---------------------------------------------------------------------- configuration

POOLS: tuple[str, str] = ("counters", "hashers")
OVERFLOW = {"counters": 1, "hashers": 2}
CHECKOUT_TIMEOUT = 5.0  # seconds a consumer waits for a worker before giving up on that try
MAX_SECONDS = 5.0  # restart-intensity window of each pool
EXIT_CODE = 70  # what lease.exit() makes a worker exit with
PAYLOADS = tuple(f"payload #{i}".encode() * 4 for i in range(32))
ROUNDS = (1_000, 2_500, 5_000)  # roughly 0.5 to 2 ms of sha256 per call

KINDS = ("sigkill-busy", "segfault", "sigkill-idle", "os-exit", "abandoned")
LABELS = {
    "sigkill-busy": "SIGKILL of a busy worker",
    "segfault": "segfault inside a call",
    "sigkill-idle": "SIGKILL of an idle worker",
    "os-exit": "os._exit inside a call",
    "abandoned": "consumer died holding a lease",
}
CONFIRMED = {  # what "confirmed" means for each kind, in the tally
    "sigkill-busy": "replaced",
    "segfault": "raised WorkerCrashed",
    "sigkill-idle": "replaced",
    "os-exit": "raised WorkerCrashed",
    "abandoned": "reclaimed",
}


@dataclass(frozen=True)
class Options:
    duration: float = 15.0
    consumers: int = 6
    fault_interval: float = 1.0
    size: int = 2
    seed: int | None = None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pooly demo``."""
    d = Options()
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=d.duration,
        metavar="SECONDS",
        help="how long to run the workload (default: %(default)s)",
    )
    parser.add_argument(
        "--consumers",
        type=_positive_int,
        default=d.consumers,
        metavar="N",
        help="consumer threads driving calls (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-interval",
        type=_positive_float,
        default=d.fault_interval,
        metavar="SECONDS",
        help="time between injected faults (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=_positive_int,
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


# ---------------------------------------------------------------------- output


class Display:
    """Permanent lines, plus one status line: redrawn in place (\\r) on a terminal, printed
    as plain periodic lines otherwise. Called from any thread."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._status = ""

    def line(self, text: str = "") -> None:
        with self._lock:
            if self._status:
                self.out.write("\r" + " " * len(self._status) + "\r")
            self.out.write(text + "\n")
            if self._status:
                self.out.write(self._status)
            self.out.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if not self.tty:
                self.out.write(text + "\n")
            else:
                text = text[: max(20, shutil.get_terminal_size().columns - 1)]
                self.out.write("\r" + text.ljust(len(self._status)))
                self._status = text
            self.out.flush()

    def clear_status(self) -> None:
        with self._lock:
            if self._status:
                self.out.write("\r" + " " * len(self._status) + "\r")
                self.out.flush()
                self._status = ""


class _LogToDisplay(logging.Handler):
    """Shows pooly's ERROR records (a pool failing) without breaking the status line."""

    def __init__(self, display: Display) -> None:
        super().__init__(logging.ERROR)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.line(f"  [pooly log] {record.levelname}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


# ---------------------------------------------------------------------- bookkeeping


@dataclass
class _Stats:
    """One consumer thread's counts; only that thread writes them."""

    calls: int = 0  # every call attempted (incremented before the call goes out)
    ok: int = 0  # returned a result that checked out
    crashed: int = 0  # raised WorkerCrashed
    wrong: int = 0  # returned a wrong result (lost)
    errors: int = 0  # raised anything else (lost)
    checkout_timeouts: int = 0
    per_pool: collections.Counter[str] = field(default_factory=collections.Counter)


class _Order:
    """A fault for the next consumer calling into a pool to carry out (segfault, _exit)."""

    __slots__ = ("done", "error", "kind", "when")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()
        self.error: BaseException | None = None  # what the call raised (None: it returned)
        self.when = 0.0


@dataclass
class _Faults:
    """The injector's record (written by the injector thread only)."""

    count: collections.Counter[str] = field(default_factory=collections.Counter)
    confirmed: collections.Counter[str] = field(default_factory=collections.Counter)
    heal_ms: list[float] = field(default_factory=list)
    not_replaced: int = 0  # no replacement within 1 s: right for overflow workers only
    skipped: int = 0  # no target at that moment (e.g. no idle worker)


# ---------------------------------------------------------------------- the demo


class Demo:
    """One run: the pools, the threads and the counts. See the module docstring."""

    def __init__(self, sup: Pooly, opts: Options, display: Display) -> None:
        self.sup = sup
        self.opts = opts
        self.display = display
        self.seed = opts.seed if opts.seed is not None else secrets.randbelow(10**6)
        # Sized for the fault rate (~0.8 restarting faults per interval, shared by two pools,
        # with room for bursts) plus the final check's kills. The default, 3 in 5 s, is
        # meant to fail a pool whose workers keep dying; here they die on purpose.
        self.max_restarts = max(3, math.ceil(2 * MAX_SECONDS / opts.fault_interval)) + opts.size
        self.pools: dict[str, Pool] = {}
        self.stop = threading.Event()
        self.t0 = 0.0
        self.workload_s = 0.0
        self.stats: list[_Stats] = []
        self.faults = _Faults()
        self.anomalies: list[str] = []
        self.failed_pools: set[str] = set()
        self.hung: list[str] = []  # threads that did not finish in time
        self.broken: list[str] = []  # consumer threads that stopped on an exception
        self._orders: dict[str, collections.deque[_Order]] = {
            name: collections.deque() for name in POOLS
        }
        self._leased: dict[str, tuple[str, int]] = {}  # consumer -> (pool, worker pid)
        self._in_call: dict[str, float] = {}  # consumer -> when its call went out
        self._totals: dict[str, int] = {}  # Counter token -> last total seen
        self._digests: dict[tuple[int, int], str] = {}
        self._killed: set[int] = set()
        self.final_heal_ms: list[float] = []

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
            )

    # -- consumers (consumer threads) ------------------------------------------------

    def consume(self, who: str, rng: random.Random) -> None:
        """A consumer thread: lease a worker, make a few checked calls, give it back."""
        stats = _Stats()
        self.stats.append(stats)
        try:
            self._consume(who, rng, stats)
        except Exception as e:  # a bug in the demo or the pool: report it, don't hide it
            self.broken.append(who)
            self.anomaly(f"{who} stopped on {type(e).__name__}: {e}")

    def _consume(self, who: str, rng: random.Random, stats: _Stats) -> None:
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

    def call(self, who: str, name: str, lease: Lease, stats: _Stats, rng: random.Random) -> bool:
        """One call through ``lease``, its outcome counted. False once the lease is over."""
        try:
            order: _Order | None = self._orders[name].popleft()
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

    def _carry_out(self, order: _Order, lease: Lease, stats: _Stats) -> bool:
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
            if isinstance(e, WorkerCrashed) and e.exitcode != expected:
                return  # it ran on a worker that had just died of something else: no fault
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

    def _order(self, kind: str, name: str) -> _Order | None:
        """Have a consumer make a crashing call on pool ``name``; None if none came by."""
        order = _Order(kind)
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
            stats = _Stats()
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
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if pool.status().replaced > before:
                ms = (time.monotonic() - t) * 1000
                self.faults.heal_ms.append(ms)
                if kind in ("sigkill-busy", "sigkill-idle"):
                    self.faults.confirmed[kind] += 1
                return f"... replaced by a new worker {ms:.0f} ms after the fault"
            time.sleep(0.001)
        self.faults.not_replaced += 1
        return "... no replacement within 1 s (right for an overflow worker only)"

    # -- the run (main thread) -----------------------------------------------------------

    def run_workload(self) -> bool:
        """Run consumers and injector for the duration. False if interrupted (Ctrl-C)."""
        o = self.opts
        self.t0 = time.monotonic()
        consumers = [
            threading.Thread(
                target=self.consume,
                args=(f"consumer-{i + 1}", random.Random(self.seed + i)),
                name=f"consumer-{i + 1}",
                daemon=True,
            )
            for i in range(o.consumers)
        ]
        injector = threading.Thread(target=self.inject_faults, name="fault-injector", daemon=True)
        for th in [*consumers, injector]:
            th.start()
        period = 0.1 if self.display.tty else (2.0 if o.duration >= 8 else 1.0)
        deadline = self.t0 + o.duration
        next_status = self.t0 + period
        completed = True
        try:
            while (now := time.monotonic()) < deadline:
                if now >= next_status:
                    self.display.status(self.status_line())
                    next_status = max(next_status + period, now)
                time.sleep(min(0.05, deadline - now))
        except KeyboardInterrupt:
            completed = False
            self.display.line("interrupted: stopping early")
        self.workload_s = self.elapsed()
        self.stop.set()
        # Every call must end: a consumer finishes its current call, checks in and returns.
        end = time.monotonic() + CHECKOUT_TIMEOUT + 10.0
        for th in [injector, *consumers]:
            th.join(max(0.0, end - time.monotonic()))
            if th.is_alive():
                self.hung.append(th.name)
                since = self._in_call.get(th.name)
                doing = (
                    f"in a call for {time.monotonic() - since:.1f} s" if since else "not in a call"
                )
                self.anomaly(f"thread {th.name} did not finish ({doing})")
        self.display.clear_status()
        self.display.line(self.status_line())
        return completed

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every live pool is back to ``size`` idle workers and nothing else."""
        deadline = time.monotonic() + timeout
        while True:
            if all(
                self._settled(p.status())
                for n, p in self.pools.items()
                if n not in self.failed_pools
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

    @staticmethod
    def _settled(s: PoolStatus) -> bool:
        return (
            s.state == "ready"
            and s.idle == s.size
            and s.busy == 0
            and s.overflow == 0
            and s.waiting == 0
        )

    # -- reporting -----------------------------------------------------------------------

    def totals(self) -> _Stats:
        t = _Stats()
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
        t = self.totals()
        parts = [
            f"{self.elapsed():5.1f}s  calls {t.calls:,}: ok {t.ok:,}, WorkerCrashed "
            f"{t.crashed}, lost {t.wrong + t.errors}",
            f"faults {sum(self.faults.count.values())}",
        ]
        for name, pool in self.pools.items():
            s = pool.status()
            text = f"{name} {s.idle} idle, {s.busy} busy"
            if s.overflow:
                text += f", {s.overflow} overflow"
            if s.state in ("failed", "stopped"):
                text += f" ({s.state})"
            parts.append(text)
        return " | ".join(parts)


# ---------------------------------------------------------------------- entry point


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run the demo; print progress and the tally to ``out``. Returns the exit status."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        return _run(opts, display)


@contextlib.contextmanager
def pooly_errors_to(display: Display) -> Iterator[None]:
    """For the block, show pooly's log records on ``display``, ERROR and up only.

    Crash warnings (one per injected fault) would bury the progress line; the tally
    reports every crash anyway, while a pool failing still shows.
    """
    logger = logging.getLogger("pooly")
    handler = _LogToDisplay(display)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def kill_each_worker(pool: Pool, timeout: float) -> Iterator[tuple[int, float | None]]:
    """SIGKILL the pool's workers one at a time; for each, yield (pid, ms until the pool
    counted its replacement, or None if it did not within ``timeout`` seconds)."""
    for pid in pool.worker_pids():
        before = pool.status().replaced
        t = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        while time.monotonic() - t < timeout:
            if pool.status().replaced > before:
                yield pid, (time.monotonic() - t) * 1000
                break
            time.sleep(0.001)
        else:
            yield pid, None


def _run(opts: Options, display: Display) -> int:
    started = time.monotonic()
    # The forkserver imports the worker classes' module once, so replacements start fast.
    sup = Pooly(preload=[__name__])
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
    finally:
        sup.stop()
    left = [pid for pid in pids if _alive(pid)]
    return _tally(demo, during, final, check, settled, left, completed, time.monotonic() - started)


def _tally(
    demo: Demo,
    during: list[PoolStatus],
    final: list[PoolStatus],
    check: tuple[int, int],
    settled: bool,
    left: list[int],
    completed: bool,
    wall: float,
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
    demo.display.line()
    if problems:
        demo.display.line("FAILED: " + "; ".join(problems))
        return 1
    demo.display.line(
        "OK: every call returned a correct result or raised WorkerCrashed; every "
        "pool healed; no process left behind."
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
