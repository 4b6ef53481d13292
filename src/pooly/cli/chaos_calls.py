"""``pooly chaos``'s consumers: checkouts and checked calls, every outcome counted.

Run by consumer threads, and by the doomed, burst and waiter threads the fault injector
starts (:mod:`pooly.cli.chaos_faults`). An outcome is OK (a result that checks out), one of
the outcomes a deliberate fault calls for (labels in :mod:`pooly.cli.chaos_config`), or
OTHER -- which fails the soak.
"""

from __future__ import annotations

import ctypes
import random
import signal
import threading
import time
from typing import Any

from .. import (
    CallTimeout,
    CheckoutTimeout,
    Lease,
    NoSuchPool,
    PoolFailed,
    PoolFull,
    WorkerCrashed,
    WorkerStartError,
)
from .chaos_config import (
    CALL_FAULTS,
    CALL_STOPPED,
    CHECKOUT_ABSENT,
    CHECKOUT_STOPPED,
    CHECKOUT_TIMEOUT,
    CRASHED,
    HUNG_CALL_SLACK,
    INTERRUPT_CALLS,
    INTERRUPT_MISSED,
    INTERRUPT_NAP,
    INTERRUPT_NAP_MAIN,
    INTERRUPTED,
    LEASED,
    OK,
    ROUNDS,
    START_KILLED,
    TIMED_OUT,
    WAITER_FULL,
    WAITER_TIMEOUT,
    WRONG,
)
from .chaos_state import ChaosState, Holder
from .workers import MARK, PAYLOADS, FaultError, seal, sha256_chain

__all__ = ("ChaosCalls", "Interrupt", "is_deliberate")


class Interrupt:
    """A KeyboardInterrupt for one thread, delivered while that thread is inside a call.

    For the main thread, a real SIGINT (Ctrl-C): it cuts a blocking read short, so the call
    is interrupted mid-flight with the worker still in it. A thread other than the main one
    gets an asynchronous exception (``PyThreadState_SetAsyncExc``) instead, raised at its
    next bytecode boundary -- for a thread blocked reading a pipe, as soon as the read
    returns (the reply arrived, but the call never returns it). :meth:`fire` runs in a
    firing thread; the others in the target thread.
    """

    def __init__(self, ident: int, *, signal: bool = False) -> None:
        self.ident = ident
        self.signal = signal
        self.started = threading.Event()  # set just before the call goes out
        self._lock = threading.Lock()
        self._armed = True
        self.fired = False

    def fire(self, delay: float) -> None:
        """``delay`` seconds after the call went out, interrupt it (unless it is over)."""
        if not self.started.wait(CHECKOUT_TIMEOUT):
            return
        time.sleep(delay)
        with self._lock:
            if self._armed:
                self._armed = False
                if self.signal:
                    signal.pthread_kill(self.ident, signal.SIGINT)
                    self.fired = True
                else:
                    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.ident), ctypes.py_object(KeyboardInterrupt)
                    )
                    self.fired = done == 1

    def disarm(self) -> None:
        """The call is over: nothing may be fired from now on."""
        with self._lock:
            self._armed = False

    def land(self) -> None:
        """Give an interruption fired just before :meth:`disarm` that has not been raised
        yet its place to be raised: here, not in the caller's bookkeeping after the call.
        (Only for a call that ended without KeyboardInterrupt.)"""
        deadline = time.monotonic() + 5.0
        while self.fired and time.monotonic() < deadline:
            pass  # a loop's backward jump is a bytecode boundary: the exception lands here


class ChaosCalls(ChaosState):
    """Checkouts and calls with their outcomes counted (consumer, doomed, burst and waiter
    threads)."""

    def checkout(
        self,
        who: str,
        name: str,
        *,
        timeout: float = CHECKOUT_TIMEOUT,
        block: bool = True,
        deliberate: bool = False,
        call_timeout: float | None = None,
    ) -> tuple[Lease, Holder] | None:
        """Check out from pool ``name``, the outcome counted; None if nothing was leased.

        ``deliberate``: a waiter meant to time out or give up (its CheckoutTimeout/PoolFull
        are expected); for anyone else they are OTHER outcomes.
        """
        gen = self.gen[name]
        counts = self.fig.checkouts
        self.count(counts, "attempted")
        op = self.begin_op(f"{who}: checkout on {name} (timeout {timeout:g} s)")
        try:
            assert self.sup is not None
            pool = self.sup.pool(name)
            lease = pool.checkout(block=block, timeout=timeout, call_timeout=call_timeout)
        except NoSuchPool as e:
            if self.restarted(name, gen):
                self.count(counts, CHECKOUT_ABSENT)
            else:
                self.other(f"{who}: checkout on {name}: NoSuchPool: {e}", counts)
            return None
        except PoolFailed as e:
            if self.restarted(name, gen):
                self.count(counts, CHECKOUT_STOPPED)
            else:
                self.other(f"{who}: checkout on {name}: PoolFailed: {e}", counts)
            return None
        except CheckoutTimeout as e:
            if deliberate:
                self.count(counts, WAITER_TIMEOUT)
            else:
                self.other(f"{who}: checkout on {name}: CheckoutTimeout: {e}", counts)
            return None
        except PoolFull as e:
            if deliberate:
                self.count(counts, WAITER_FULL)
            else:
                self.other(f"{who}: checkout on {name}: PoolFull: {e}", counts)
            return None
        except WorkerStartError as e:
            if e.pid in self.killed:
                self.count(counts, START_KILLED)
            else:
                self.other(f"{who}: checkout on {name}: WorkerStartError: {e}", counts)
            return None
        except Exception as e:
            self.other(f"{who}: checkout on {name}: {type(e).__name__}: {e}", counts)
            return None
        finally:
            self.end_op(op)
        self.count(counts, LEASED)
        self.leased[threading.get_ident()] = (name, lease.pid)
        return lease, Holder(who, name, pool, gen)

    def checkin(self, holder: Holder, lease: Lease) -> None:
        self.leased.pop(threading.get_ident(), None)
        try:
            holder.pool.checkin(lease)  # a quiet no-op if the worker died or the pool stopped
        except Exception as e:
            self.other(
                f"{holder.who}: checkin on {holder.name}: {type(e).__name__}: {e}",
                self.fig.checkouts,
            )

    def call(
        self, holder: Holder, lease: Lease, rng: random.Random, kind: str | None = None
    ) -> bool:
        """One call through ``lease`` (or the fault call ``kind`` or an order names), the
        outcome counted. False once the lease is over."""
        orders = self.orders[holder.name]
        if kind is None and orders:
            try:
                kind = orders.popleft()
            except IndexError:  # another consumer took it
                pass
        counts = self.fig.calls
        pid = lease.pid
        what = f"{holder.who}: {kind or 'mix'}() on {holder.name} pid {pid}"
        self.count(counts, "attempted")
        op = self.begin_op(what)
        t = time.monotonic()
        k = i = rounds = 0
        try:
            if kind is None:
                k, i, rounds = rng.randint(1, 100), rng.randrange(len(PAYLOADS)), rng.choice(ROUNDS)
                result = lease.mix(k, i, rounds)
            elif kind in INTERRUPT_CALLS:
                self.count(self.fig.faults, kind)
                result = self._interrupted_nap(holder, lease, rng)
            elif kind == "hung-call":
                self.count(self.fig.faults, kind)
                result = lease.stuck(60)
            else:
                self.count(self.fig.faults, kind)
                result = CALL_FAULTS[kind].call(lease)
        except KeyboardInterrupt:
            if kind not in INTERRUPT_CALLS:
                raise
            self.count(counts, INTERRUPTED)
            self.count(self.fig.confirmed, kind)
            return False  # the lease is done with: the caller checks it in
        except WorkerCrashed as e:
            self.fig.crash_ms.append((time.monotonic() - t) * 1000)
            if e.exitcode is None:  # SPEC: the exit code, promptly (issue 6, defect D)
                with self.lock:
                    self.fig.crash_no_exitcode += 1
            fault = CALL_FAULTS.get(kind or "")
            deliberate = fault is not None and fault.expect is WorkerCrashed
            if fault is not None and deliberate:
                self.hit(holder.name, pid, t, holder.gen, kind or "")
                if e.exitcode == fault.exitcode:  # (else: SIGKILLed under the fault call)
                    self.count(self.fig.confirmed, kind or "")
                if e.exitcode == fault.exitcode and not self.restarted(holder.name, holder.gen):
                    # Its WorkerExited must say so (see check_events) -- unless its pool
                    # was stopped meanwhile: then the pool had asked it to end, and its
                    # exit is one the pool expected.
                    me = threading.current_thread().name
                    began = time.time() - (time.monotonic() - t)  # (wall time, as events)
                    self.crash_calls[(pid, began)] = (kind or "", e.exitcode, me)
            if deliberate or pid in self.killed or self.restarted(holder.name, holder.gen):
                self.count(counts, CRASHED)
            else:  # nobody harmed this worker on purpose
                self.other(f"{what}: WorkerCrashed of an unharmed worker: {e}", counts)
            return False
        except CallTimeout as e:
            took = time.monotonic() - t
            if kind == "hung-call" and e.timeout <= took < e.timeout + HUNG_CALL_SLACK:
                self.count(counts, TIMED_OUT)
                self.count(self.fig.confirmed, kind)
                self.hit(holder.name, pid, t + e.timeout, holder.gen, kind)
            else:
                self.other(f"{what}: CallTimeout after {took:.2f} s: {e}", counts)
            return False  # the lease has ended
        except PoolFailed as e:
            if self.restarted(holder.name, holder.gen):
                self.count(counts, CALL_STOPPED)
            else:
                self.other(f"{what}: PoolFailed: {e}", counts)
            return False
        except Exception as e:
            fault = CALL_FAULTS.get(kind or "")
            if fault is not None and type(e) is fault.expect and is_deliberate(e):
                self.count(counts, fault.outcome)
                self.count(self.fig.confirmed, kind or "")
                return True  # the lease is still good: the next call checks the state
            self.other(f"{what}: {type(e).__name__}: {e}", counts)
            return False
        finally:
            self.end_op(op)
        if kind in INTERRUPT_CALLS:  # the interruption came too late: a normal result
            if result == pid:
                self.count(counts, INTERRUPT_MISSED)
            else:
                self.count(counts, WRONG)
                self.anomaly(f"WRONG result: {what} -> {result!r}")
            return True
        if kind is not None:
            self.other(f"{what}: returned normally ({result!r})", counts)
            return True
        if self._check(result, pid, k, i, rounds):
            self.count(counts, OK)
        else:
            self.count(counts, WRONG)
            self.anomaly(f"WRONG result: {what}: mix({k}, {i}, {rounds}) -> {result!r}")
        return True

    def _check(self, result: Any, pid: int, k: int, i: int, rounds: int) -> bool:
        if not (isinstance(result, tuple) and len(result) == 4):
            return False
        got_pid, token, total, got_seal = result
        # Only the lease holder uses its worker's record: no lock needed. A worker never
        # seen before (or a new one on a reused pid: another token) starts at 0.
        last = self.totals.get(pid)
        expected = (last[1] if last is not None and last[0] == token else 0) + k
        self.totals[pid] = (token, total)
        chain = self.chains.get((i, rounds))
        if chain is None:
            chain = self.chains[(i, rounds)] = sha256_chain(PAYLOADS[i], rounds)
        return bool(got_pid == pid and total == expected and got_seal == seal(token, total, chain))

    def _interrupted_nap(self, holder: Holder, lease: Lease, rng: random.Random) -> Any:
        """A slow call that a firing thread interrupts mid-flight with KeyboardInterrupt, as
        Ctrl-C interrupts the main thread (this thread's caller counts the outcome)."""
        main = threading.current_thread() is threading.main_thread()
        nap = INTERRUPT_NAP_MAIN if main else INTERRUPT_NAP
        interrupt = Interrupt(threading.get_ident(), signal=main)
        delay = rng.uniform(0.02, nap / 2)
        self.thread(f"interrupter-{holder.who}", interrupt.fire, delay).start()
        try:
            try:
                interrupt.started.set()
                result = lease.nap(nap)
            finally:
                interrupt.disarm()
        except KeyboardInterrupt:
            raise  # it landed: the caller counts it
        except BaseException:
            interrupt.land()  # (if fired, it replaces this exception: the call was interrupted)
            raise
        interrupt.land()
        return result

    def consume(self, who: str, rng: random.Random) -> None:
        """A consumer thread: check out, make a few checked calls, check in; again."""
        while not self.stop.is_set():
            name = rng.choice(self.names)
            got = self.checkout(who, name)
            if got is None:
                self.stop.wait(0.005)  # e.g. the pool is restarting: try again shortly
                continue
            lease, holder = got
            try:
                for _ in range(rng.randint(1, 6)):
                    if self.stop.is_set() or not self.call(holder, lease, rng):
                        break
            finally:
                self.checkin(holder, lease)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.002)  # think time; leaves some workers idle


def is_deliberate(e: BaseException) -> bool:
    """True if ``e`` (or an exception in its chain) came from one of our poison objects."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, FaultError) or MARK in str(x):
            return True
        x = x.__cause__ or x.__context__
    return False
