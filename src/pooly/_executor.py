"""``pooly.ProcessPoolExecutor``: the stdlib's executor interface on a pooly pool (SPEC 4.2).

A drop-in for :class:`concurrent.futures.ProcessPoolExecutor` -- same constructor, same
``submit`` / ``map`` / ``shutdown`` -- that never breaks: a worker killed, segfaulted or
stuck past ``call_timeout`` fails the one task it was running (or re-runs it, ``retries``),
the pool replaces it, and every other task runs. Underneath is an ordinary pool
(:attr:`ProcessPoolExecutor.pool`) of :class:`_Runner` workers, whose one method runs the
function it is sent; its tasks go through the pool's dispatcher (:mod:`pooly._dispatch`).

Made standalone (its own private :class:`~pooly.Pooly`, stopped by ``shutdown``) or as a
named pool of a tree with :meth:`pooly.Pooly.start_executor` (``shutdown`` stops that pool).
"""

from __future__ import annotations

import atexit
import os
import pickle
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from ._fds import HOST
from ._pool import Pool, _await_task, _check_int

# Imported first, so that pooly's exit hook (stopping every tree) is registered before this
# module's (finishing executors' tasks), and runs after it (atexit runs hooks newest first).
from ._pooly import Pooly
from ._worker import _CALL, function_of

__all__ = ("ProcessPoolExecutor",)

#: Executors not shut down yet: at interpreter exit, their submitted tasks finish first
#: (as the stdlib's do), before pooly's own exit hook stops the trees.
_LIVE: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_EXITING = False


class _Runner:
    """The worker of an executor's pool: runs the initializer once, then the functions it
    is sent."""

    def __init__(
        self, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
    ) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fn(*args, **kwargs)

    def run_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
        """A chunk of ``map``: ``fn`` over each arguments tuple (a chunk fails as a whole)."""
        return [fn(*args) for args in chunk]

    def call_chunk(self, ref: bytes, chunk: list[tuple[Any, ...]]) -> list[Any]:
        """``run_chunk`` for a plain function sent as its pickle (see ``_CALL``)."""
        fn = function_of(ref)
        return [fn(*args) for args in chunk]

    def run_chunk1(self, fn: Callable[..., Any], chunk: list[Any]) -> list[Any]:
        """A chunk of ``map`` over one iterable: ``fn`` of each item."""
        return list(map(fn, chunk))

    def call_chunk1(self, ref: bytes, chunk: list[Any]) -> list[Any]:
        return list(map(function_of(ref), chunk))


#: Plain functions, pickled once: a function's pickle is its module and name, and looking
#: them up costs more than the rest of a small task's pickle. Bounded (cleared when full).
_FN_REFS: dict[Callable[..., Any], bytes] = {}
_REFS = 512
_PLAIN = (types.FunctionType, types.BuiltinFunctionType)


def _ref(fn: Callable[..., Any]) -> bytes | None:
    """A plain function's pickle (a reference by name, cached), sent for it with
    :data:`~pooly._worker._CALL`; None for any other callable, which travels as itself with
    each task (a lambda or a nested function then fails with its task, as usual)."""
    if type(fn) not in _PLAIN:
        return None
    ref = _FN_REFS.get(fn)
    if ref is None:
        try:
            ref = pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
        except Exception:
            return None
        if len(_FN_REFS) >= _REFS:
            _FN_REFS.clear()
        _FN_REFS[fn] = ref
    return ref


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)  # (3.13: the usable CPUs)
    return count() or 1


class ProcessPoolExecutor(Executor):
    """A :class:`concurrent.futures.Executor` running module-level functions in a pooly
    pool of ``max_workers`` processes.

    The stdlib's constructor (``max_workers``, ``mp_context`` -- its start method is used,
    ``initializer``/``initargs``, ``max_tasks_per_child``) plus ``call_timeout`` (seconds a
    task may run before its worker is killed: :class:`CallTimeout`), ``retries`` (re-runs
    of a task whose worker died under it, for idempotent work) and ``max_overflow`` (extra
    workers started for a burst and stopped after it; ``overflow_ttl`` keeps them that many
    seconds for the next one), and the pool's guards (SPEC 4.4): ``max_tasks_per_child``
    is the pool's ``max_calls``, and ``max_age``, ``max_memory`` recycle a worker between
    tasks the same way; ``max_waiting`` refuses a ``submit`` (:class:`PoolFull`) that finds
    no worker free and that many tasks queued. The workers start in the
    constructor: a failing initializer raises :class:`WorkerStartError` there, with its
    traceback, and nothing is left running.

    Never raises ``BrokenProcessPool``: see :meth:`submit` for what each fault does.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        *,
        call_timeout: float | None = None,
        retries: int = 0,
        max_overflow: int = 0,
        max_age: float | None = None,
        max_memory: int | None = None,
        max_waiting: int | None = None,
        overflow_ttl: float = 0.0,
        _tree: Pooly | None = None,
        _name: str = "executor",
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(
                f"max_workers must be an int, got {type(max_workers).__name__} {max_workers!r}"
            )
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple | list):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError(
                    f"max_tasks_per_child must be an int or None, got {max_tasks_per_child!r}"
                )
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._retries = _check_int("retries", retries, 0)
        start_method = None
        if mp_context is not None:
            get = getattr(mp_context, "get_start_method", None)
            if get is None:
                raise TypeError(f"mp_context must be a multiprocessing context, got {mp_context!r}")
            start_method = get()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._own = _tree is None
        self._tree = Pooly() if _tree is None else _tree
        self._name = _name
        try:
            self._pool: Pool = self._tree.start_pool(
                _name,
                _Runner,
                args=(initializer, tuple(initargs)),
                size=max_workers,
                max_overflow=max_overflow,
                start_method=start_method,
                call_timeout=call_timeout,
                max_calls=max_tasks_per_child,
                max_age=max_age,
                max_memory=max_memory,
                max_waiting=max_waiting,
                overflow_ttl=overflow_ttl,
            )
        except BaseException:
            if self._own:
                self._tree.stop()
            raise
        self._tasks = self._pool._tasks()
        if self._own:  # kept alive by the dispatcher while it has tasks (stdlib semantics)
            self._tasks.anchor = weakref.ref(self._tree)
        self._max_workers = max_workers
        _LIVE.add(self)

    @property
    def pool(self) -> Pool:
        """The :class:`pooly.Pool` underneath: ``status()``, ``worker_pids()``, ..."""
        return self._pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; its :class:`~concurrent.futures.Future`.

        Its outcome: ``fn``'s result or exception (``SystemExit`` included: the task's own,
        not a crash), with the worker's traceback as ``__cause__``;
        :class:`WorkerCrashed` (``.pid``, ``.exitcode``) if the worker died running it
        (after ``retries`` re-runs) -- tasks queued or sent ahead to that worker run
        elsewhere, untouched; :class:`CallTimeout` if it ran past ``call_timeout`` (its
        worker is killed and replaced); ``TypeError`` if its arguments or result can't be
        pickled. ``RuntimeError`` after :meth:`shutdown`.
        """
        return self._submit(fn, args, kwargs)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        direct: bool = True,
    ) -> Future[Any]:
        # (After shutdown the dispatcher refuses it, under its own lock: see shutdown.)
        ref = _ref(fn)
        t = self._pool.call_timeout
        if ref is not None:
            return self._tasks.submit(_CALL, (ref, args), kwargs, fn, t, self._retries, direct)
        return self._tasks.submit("run", (fn, args, kwargs), {}, fn, t, self._retries, direct)

    async def asubmit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``submit`` for an asyncio task: ``await`` the outcome of ``fn(*args, **kwargs)``,
        without a thread of its own (the pool's dispatcher wakes the loop). Cancelled
        before it started, the call never runs; once started, its worker is killed and
        replaced (its state is unknown), not counted as a crash."""
        return await _await_task(self._tasks, self._submit(fn, args, kwargs, direct=False))

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """As :meth:`concurrent.futures.Executor.map`: every call is queued now, results
        come in order, ``timeout`` counts from this call, and the first exception (or
        ``TimeoutError``) ends the iterator, cancelling the calls it did not reach.
        ``chunksize`` sends the calls in chunks of that many (a chunk fails as a whole)."""
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        return self._pool._map(fn, iterables, timeout, chunksize, self._retries)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more tasks; ``cancel_futures`` cancels those not started (queued, or sent
        ahead to a worker). With ``wait``, returns once the others have finished and the
        workers are stopped; else at once, and the pool stops when they have finished."""
        if self._pool._gen != HOST.gen:
            return  # a copy inherited through a fork: the executor is the parent's
        with self._shutdown_lock:
            self._shutdown = True
            # From now on the dispatcher refuses tasks, atomically with their queueing:
            # none slips in behind shutdown's wait.
            self._tasks.refuse(_after_shutdown)
        _LIVE.discard(self)
        if cancel_futures:
            self._tasks.cancel_pending()
        if wait and threading.current_thread() is self._tasks._thread:
            # A done-callback (they run on the dispatcher's thread) can't wait for the very
            # thread that must finish the tasks: the pool stops once they are done.
            wait = False
        if wait:
            self._tasks.wait_idle()
            self._stop()
        else:
            threading.Thread(
                target=self._stop_when_idle, name="pooly-executor-shutdown", daemon=True
            ).start()

    def _stop_when_idle(self) -> None:
        self._tasks.wait_idle()
        self._stop()

    def _stop(self) -> None:
        if self._own:
            self._tree.stop()
        else:  # its own pool only: not a newer one started under the same name since
            self._tree._stop_pool(self._name, only=self._pool)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<pooly.ProcessPoolExecutor max_workers={self._max_workers} {state} {self._pool!r}>"


def _after_shutdown() -> RuntimeError:
    """The error of a submit to an executor that was shut down (the stdlib's words)."""
    if _EXITING:
        return RuntimeError("cannot schedule new futures after interpreter shutdown")
    return RuntimeError("cannot schedule new futures after shutdown")


@atexit.register
def _finish_at_exit() -> None:
    """Interpreter exit: each executor not shut down finishes its submitted tasks (as the
    stdlib's does) before pooly's own hook -- registered before this one, so run after
    it -- stops every tree."""
    global _EXITING
    _EXITING = True
    for ex in list(_LIVE):
        if ex._pool._gen != HOST.gen:
            continue  # inherited through a fork: the parent's to finish, not ours
        try:
            ex.shutdown(wait=True)
        except Exception:  # (its tree may have been stopped by other means)
            pass
