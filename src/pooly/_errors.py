"""Every error Pooly raises, under one root: :class:`PoolyError`.

Who raises what, and how neighbours differ:

* :class:`PoolFull` -- ``checkout(block=False)`` found nothing idle and no room to overflow.
  Nothing was waited for.
* :class:`CheckoutTimeout` -- a blocking ``checkout(timeout=...)`` waited its whole timeout in
  the queue. The waiter has left the queue; no worker will ever be handed to it.
* :class:`WorkerCrashed` -- the worker *process* behind a lease ended (signal, ``os._exit``,
  segfault, OOM kill) while leased. Only the lease holder sees it; the pool replaces the
  worker by itself. Contrast with an exception raised by a worker *method*, which is re-raised
  as its own type and leaves the worker alive.
* :class:`WorkerStartError` -- a worker could not be started: its class could not be imported
  or its constructor raised, hung or exited. Carries the worker-side traceback.
* :class:`LeaseError` -- a lease was misused: called after checkin, checked in twice, checked
  in to the wrong pool, used from two threads at once; or called after a call through it was
  interrupted (Ctrl-C), which ended it.
* :class:`PoolFailed` -- the pool gave up after exceeding its restart intensity (or was
  stopped). It stays failed until stopped and started again.
* :class:`NoSuchPool` -- no pool of that name is running.
"""

from __future__ import annotations

import signal

__all__ = (
    "CallTimeout",
    "CheckoutTimeout",
    "LeaseError",
    "NoSuchPool",
    "PoolFailed",
    "PoolFull",
    "PoolyError",
    "RemoteTraceback",
    "WorkerCrashed",
    "WorkerStartError",
)


class PoolyError(Exception):
    """Root of every error raised by Pooly itself (not of errors raised by worker methods)."""


class PoolFull(PoolyError):
    """Raised by ``checkout(block=False)`` when no worker is idle and overflow is exhausted."""


class CheckoutTimeout(PoolyError, TimeoutError):
    """Raised by a blocking ``checkout`` whose ``timeout`` passed before a worker was free.

    The waiter has already left the queue when this is raised: no worker can be handed to it
    afterwards, so nothing leaks.
    """


class LeaseError(PoolyError):
    """Raised when a lease is used outside its validity: after checkin, twice, or elsewhere,
    or after a call through it was interrupted part-way (its message then says so: the
    worker was killed and is being replaced).

    The operation changed nothing: a stale lease can never reach a worker that someone else
    now holds.
    """


class PoolFailed(PoolyError):
    """Raised by ``checkout`` (and to queued waiters) of a pool that has given up.

    A pool fails when its workers crash more than ``max_restarts`` times within
    ``max_seconds``; it is then stopped and stays failed until ``stop_pool`` and
    ``start_pool`` are called again. Also raised to waiters of a pool being stopped.
    """


class NoSuchPool(PoolyError, LookupError):
    """Raised by ``Pooly.pool``/``stop_pool`` for a name that no running pool has."""


class WorkerStartError(PoolyError):
    """A worker process could not be started.

    Raised by ``start_pool`` (and by a ``checkout`` that needed an overflow worker) when the
    worker class can't be imported in the worker process, its constructor raises, exits, or
    does not finish within ``start_timeout``. ``__cause__`` carries the worker-side traceback
    when there is one.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


def describe_exit(exitcode: int | None) -> str:
    """Say in words how a process ended: ``exit code 3`` or ``signal SIGKILL``."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"signal {name}"
    return f"exit code {exitcode}"


class WorkerCrashed(PoolyError):
    """The worker process behind a lease ended while the lease was held.

    ``pid`` is the dead worker's process id; ``exitcode`` is its exit status as
    :attr:`multiprocessing.Process.exitcode` reports it (negative: killed by that signal;
    ``None`` if it could not be read). The lease is over; the pool replaces the worker.
    """

    def __init__(self, message: str, *, pid: int, exitcode: int | None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crashed, (str(self), self.pid, self.exitcode))


def _rebuild_crashed(message: str, pid: int, exitcode: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode)


class CallTimeout(PoolyError, TimeoutError):
    """A call through a lease ran longer than its ``call_timeout``.

    Enforced from the host, whatever the worker is doing (even stuck in C code holding the
    GIL): the worker was killed and is being replaced, not counted as a crash toward restart
    intensity. The lease has ended (checking it in is a quiet no-op). ``pid``: the killed
    worker's process id; ``timeout``: the limit, in seconds.
    """

    def __init__(self, message: str, *, pid: int, timeout: float):
        super().__init__(message)
        self.pid = pid
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_call_timeout, (str(self), self.pid, self.timeout))


def _rebuild_call_timeout(message: str, pid: int, timeout: float) -> CallTimeout:
    return CallTimeout(message, pid=pid, timeout=timeout)


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from a worker: its traceback text."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
