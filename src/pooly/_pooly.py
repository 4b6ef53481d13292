"""The top of the tree: :class:`Pooly`, its pool registry and the pools supervisor.

::

    Pooly (top-level supervisor, one_for_all, no restarts: a failure is reported, never fatal)
    |-- "server": _Registry          name -> Pool, guarded by a lock
    `-- "pools": PoolsSupervisor     (one_for_one; each pool a temporary child)
        `-- PoolSupervisor "<name>"  (see pooly._pool)

A pool is a *temporary* child of the pools supervisor: when it fails it is not restarted
behind the user's back; it stays in the registry, marked failed (``checkout`` raises
:class:`PoolFailed`), until ``stop_pool`` and ``start_pool`` are called again.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from ._backend import check_fds
from ._bus import EventBus, Subscription
from ._errors import NoSuchPool, PoolyError
from ._fds import HOST
from ._observer import Observer, check_observe
from ._pool import Pool, forked_error
from ._supervisor import Child, ChildSpec, ExitReason, PassiveChild, Supervisor, SupervisorListener
from ._tree import pool_shutdown, start_pool_tree

if TYPE_CHECKING:
    from ._executor import ProcessPoolExecutor
    from ._ray import RayBackend

__all__ = ("Pooly",)

log = logging.getLogger("pooly")
log.addHandler(logging.NullHandler())  # a library logs; the application decides where to


class _Registry(PassiveChild, SupervisorListener):
    """Pooly.Server: which pools exist, by name. Also hears of pools that fail."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.pools: dict[str, Pool] = {}
        self.starting: set[str] = set()

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        if not reason.normal:
            log.error("pool %r stopped after a failure: %s", child_id, reason)


class Pooly:
    """The top-level supervisor: starts, finds and stops named pools.

    Use as a context manager (``stop()`` on exit). ``start_method`` is the default for pools
    that don't name one (``None``: forkserver where available, else spawn). ``clock`` feeds
    every pool's restart-intensity window (inject one to test in virtual time).

    ``preload`` names modules for each "forkserver" pool's own fork server to import once,
    when the pool starts, so each of its workers (and each replacement) is forked with them
    loaded. The worker class's module is always imported there. Don't preload modules that
    start threads or open resources at import time: they are forked into every worker.

    ``observe`` (default False: nothing listens): True serves read-only snapshots of the
    tree -- pools, workers, recent lifecycle events -- on a Unix socket (mode 0600) in the
    user's runtime directory, ``pooly-<pid>.sock``, for ``pooly top`` and
    :mod:`pooly.observe`; a path (str or ``os.PathLike``) puts the socket there instead.
    The socket is removed by :meth:`stop` and at exit. Nothing sent on it can change a
    pool. ``observe_path`` says where it is (None when not observed).
    """

    def __init__(
        self,
        *,
        start_method: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        preload: Iterable[str] = (),
        observe: bool | str | os.PathLike[str] = False,
    ) -> None:
        observe_at = check_observe(observe)
        preload = tuple(preload)
        if not all(isinstance(m, str) and m for m in preload):
            raise TypeError(f"preload must be module names (str), got {preload!r}")
        self._preload = preload
        self._start_method = start_method
        self._clock = clock
        self._bus = EventBus()  # (its thread starts with the first subscriber)
        try:
            self._registry = _Registry()
            self._pools_sup = Supervisor(
                strategy="one_for_one", name="pools", listener=self._registry
            )
            self._top = Supervisor(
                [
                    ChildSpec("server", functools.partial(_itself, self._registry), shutdown=1.0),
                    # Bounded by the pools supervisor's own shutdown_bound(): its pools' ones.
                    ChildSpec("pools", self._pools_sup.start, shutdown=math.inf),
                ],
                strategy="one_for_all",
                max_restarts=0,
                name="pooly",
            )
            self._top.start()
        except Exception as e:  # (what was made is released with it: its fds' finalizers)
            check_fds("cannot create a Pooly", e)  # out of fds: a PoolyError saying so
            raise
        self._observer: Observer | None = None
        if observe_at is not None:
            try:
                self._observer = Observer(
                    observe_at,
                    functools.partial(_pools_of, self._registry),
                    functools.partial(self._bus.subscribe, maxsize=1_000),
                )
            except BaseException as e:
                _shutdown(self._registry, self._top, self._bus, None)
                if isinstance(e, OSError):
                    raise PoolyError(f"cannot open the observer endpoint: {e}") from e
                raise
        self._gen = HOST.gen
        # Stops the tree if this Pooly is dropped without stop() -- on a thread of its own,
        # never the one the garbage collector happens to run on. Interpreter exit is
        # _stop_all_at_exit's business, not weakref's (whose exit order is newest first).
        self._finalizer = weakref.finalize(
            self, _collected, self._registry, self._top, self._gen, self._bus, self._observer
        )
        self._finalizer.atexit = False
        _LIVE[self._finalizer] = self._gen

    # ------------------------------------------------------------------ pools

    def start_pool(
        self,
        name: str,
        worker: type,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        size: int | None = None,
        max_overflow: int = 0,
        strategy: str = "lifo",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        start_method: str | None = None,
        start_timeout: float = 30.0,
        shutdown_timeout: float = 5.0,
        restart_on_reclaim: bool = True,
        call_timeout: float | None = None,
        max_waiting: int | None = None,
        max_calls: int | None = None,
        max_age: float | None = None,
        max_age_jitter: float = 0.1,
        max_memory: int | None = None,
        overflow_ttl: float = 0.0,
        spares: int = 0,
        backend: RayBackend | None = None,
    ) -> Pool:
        """Start a named pool of ``size`` workers, each ``worker(*args, **kwargs)`` in its own
        process, and return it once every worker is ready.

        Options are checked before any process starts (``ValueError``/``TypeError`` naming
        the option). A worker that can't start fails the call with
        :class:`WorkerStartError` carrying its traceback, and nothing is left running.
        ``size`` defaults to the number of CPUs. A duplicate name raises ``ValueError``.
        ``call_timeout`` (seconds, default ``None``: no limit) bounds each call through a
        lease (``checkout(call_timeout=...)`` overrides it): see :class:`CallTimeout`.
        ``max_waiting`` (default ``None``: unbounded) is admission control: a checkout
        (``checkout``, ``acheckout``) that would have to wait while that many already wait
        raises :class:`PoolFull` at once, naming the limit; so does a ``submit``,
        ``asubmit`` or ``map`` that finds no worker free and that many tasks queued.

        Recycling (all default ``None``: never): a worker that has served ``max_calls`` calls
        (and tasks), lived ``max_age`` seconds (each worker's age spread by
        ``max_age_jitter``, a fraction, so a pool started at once does not recycle at once),
        or whose resident memory exceeds ``max_memory`` bytes (read from ``/proc`` at
        checkin), is retired at checkin -- never in the middle of a lease -- and replaced;
        an idle worker is retired when its age is up. The replacement starts first; where
        no other worker is idle, a worker past its age serves on until it is up, so no one
        waits for a start (past max_calls or max_memory, it stops at once). Recycling is
        counted in ``status().recycled``, never as a crash.
        ``overflow_ttl`` (seconds, default 0: at once): how long an overflow worker stays
        idle, for the next burst, before it is stopped. ``spares`` (default 0): workers
        started ahead and kept ready, out of the pool's count; one takes a dead (or
        replaced) core worker's place at once, with no wait for a start, and the dead
        worker's restart becomes a spare in turn.
        ``backend`` (default ``None``: processes of this host): a :class:`pooly.RayBackend`
        runs the workers as Ray actors (SPEC 4.6), with the same API and semantics;
        ``start_method`` does not apply then.
        """
        self._check_running()
        reg = self._registry
        with reg.lock:  # before the Pool exists: a refused name must cost no descriptor
            if name in reg.pools or name in reg.starting:
                raise ValueError(f"a pool named {name!r} already exists")
        pool = Pool(
            name,
            worker,
            args,
            kwargs,
            size=os.cpu_count() or 1 if size is None else size,
            max_overflow=max_overflow,
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            start_method=(
                start_method
                if backend is not None or start_method is not None
                else self._start_method
            ),
            start_timeout=start_timeout,
            shutdown_timeout=shutdown_timeout,
            restart_on_reclaim=restart_on_reclaim,
            call_timeout=call_timeout,
            max_waiting=max_waiting,
            max_calls=max_calls,
            max_age=max_age,
            max_age_jitter=max_age_jitter,
            max_memory=max_memory,
            overflow_ttl=overflow_ttl,
            spares=spares,
            clock=self._clock,
            preload=self._preload,
            backend=backend,
        )
        pool._observe(self._bus)
        with reg.lock:
            if name in reg.pools or name in reg.starting:
                pool.discard()
                raise ValueError(f"a pool named {name!r} already exists")
            reg.starting.add(name)
        try:
            self._pools_sup.start_child(
                ChildSpec(
                    name,
                    functools.partial(start_pool_tree, pool),
                    restart="temporary",
                    shutdown=pool_shutdown(pool),  # its workers' shutdown_timeout, and graces
                    cancellable=True,  # a stop during start_pool cuts the workers' starts
                )
            )
        except RuntimeError as e:
            pool.discard()
            raise PoolyError(f"cannot start pool {name!r}: {e}") from e
        except BaseException:
            pool.discard()
            raise
        finally:
            with reg.lock:
                reg.starting.discard(name)
        with reg.lock:
            reg.pools[name] = pool
        return pool

    def start_executor(
        self,
        name: str,
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
    ) -> ProcessPoolExecutor:
        """A :class:`pooly.ProcessPoolExecutor` whose pool is the named pool ``name`` of
        this tree (``pool(name)`` finds it; ``stop_pool(name)`` stops it, as does the
        executor's ``shutdown``). Options as the executor's."""
        from ._executor import ProcessPoolExecutor

        self._check_running()
        return ProcessPoolExecutor(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child,
            call_timeout=call_timeout,
            retries=retries,
            max_overflow=max_overflow,
            max_age=max_age,
            max_memory=max_memory,
            max_waiting=max_waiting,
            overflow_ttl=overflow_ttl,
            _tree=self,
            _name=name,
        )

    def pool(self, name: str) -> Pool:
        """The pool of that name (also a failed one, until it is stopped)."""
        self._check_here()
        with self._registry.lock:
            try:
                return self._registry.pools[name]
            except KeyError:
                raise NoSuchPool(
                    f"no pool named {name!r}; running: {sorted(self._registry.pools)}"
                ) from None

    def pools(self) -> list[Pool]:
        """Every registered pool, in start order."""
        self._check_here()
        with self._registry.lock:
            return list(self._registry.pools.values())

    def stop_pool(self, name: str) -> None:
        """Stop a pool: fail its waiters, stop its workers (graceful, then kill), forget it."""
        self._check_here()
        if not self._stop_pool(name):
            raise NoSuchPool(f"no pool named {name!r}")

    def _stop_pool(self, name: str, only: Pool | None = None) -> bool:
        """Stop the pool ``name`` (if it is ``only``, when given); False if there is none."""
        with self._registry.lock:
            pool = self._registry.pools.get(name)
            if pool is None or (only is not None and pool is not only):
                return False
            del self._registry.pools[name]
        pool._close_for_stop()
        try:
            self._pools_sup.terminate_child(name)
        except RuntimeError:  # Pooly itself is stopping: it stops the pool too
            pass
        return True

    # ------------------------------------------------------------------ events

    def subscribe(
        self, callback: Callable[[Any], object], *, maxsize: int = 10_000
    ) -> Subscription:
        """Call ``callback(event)`` for every lifecycle event of this tree's pools (see
        :mod:`pooly.events`) from now on, until the returned subscription's ``close()`` (or
        the end of its ``with`` block).

        Callbacks run on the tree's one event thread (``pooly-events``, started by the first
        subscribe, stopped with the tree), each subscription's events in order. A pool never
        waits for a subscriber: each has a queue of ``maxsize`` events, and what arrives
        while it is full is dropped and counted (``subscription.dropped``). A callback that
        raises is logged (logger ``pooly.events``) and called again for the next event.
        """
        self._check_running()
        sub = self._bus.subscribe(callback, maxsize)
        for pool in self.pools():
            pool._prime()
        return sub

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop every pool and the tree. Idempotent; leaves no worker process behind.

        In a child forked from the process that made this Pooly it does nothing: the tree
        belongs to the parent (so a forked child that exits a ``with Pooly()`` block it
        inherited, or runs inherited clean-up code, never touches the parent's workers).
        """
        found = self._finalizer.detach()
        _LIVE.pop(self._finalizer, None)
        if found is not None and self._gen == HOST.gen:
            _shutdown(self._registry, self._top, self._bus, self._observer)

    @property
    def observe_path(self) -> str | None:
        """The observer endpoint's socket path (``Pooly(observe=...)``), or None."""
        return None if self._observer is None else self._observer.path

    def _check_here(self) -> None:
        if self._gen != HOST.gen:
            raise forked_error("this Pooly")

    def _check_running(self) -> None:
        self._check_here()
        if not self._finalizer.alive:
            raise PoolyError("this Pooly has been stopped; create a new one")
        failure = self._top.failure
        if failure is not None:
            raise PoolyError(f"this Pooly's supervision tree failed: {failure}")

    def __enter__(self) -> Pooly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._gen != HOST.gen:
            return "<Pooly of another process (this one was forked from it)>"
        names = [p.name for p in self.pools()]
        return f"<Pooly pools={names}{'' if self._finalizer.alive else ' stopped'}>"


def _pools_of(registry: _Registry) -> list[Pool]:
    """The registry's pools in start order (the observer's view: no strong ref to Pooly)."""
    with registry.lock:
        return list(registry.pools.values())


def _itself(child: _Registry) -> _Registry:
    # Not a lambda over self: the supervisor thread holds its specs, and a Pooly must stay
    # collectable (its finalizer then stops the tree).
    return child


#: This process's running Poolys' finalizers (-> the fork generation that made each), oldest
#: first. A dict: ordered, and the finalizers hold no reference to their Pooly.
_LIVE: dict[weakref.finalize[Any, Any], int] = {}
#: Stops begun by the garbage collector, still running on their own threads.
_STOPPING: dict[threading.Thread, None] = {}
_EXIT_JOIN = 30.0  # seconds to wait at exit for such stops to finish


def _collected(
    registry: _Registry, top: Supervisor, gen: int, bus: EventBus, observer: Observer | None
) -> None:
    """A Pooly was garbage-collected without stop(): stop its tree on a thread of its own.

    The collector runs on whichever thread happens to allocate -- possibly one of this very
    tree's supervisor threads, which stopping the tree waits for: done in place, it would
    wait for itself forever. A finalizer must never block the thread it runs on.
    """
    for fin in [f for f in _LIVE if not f.alive]:  # (this one's among them)
        _LIVE.pop(fin, None)
    if gen != HOST.gen:  # a forked child's copy: the tree is the parent's
        return
    t = threading.Thread(
        target=_stop_collected, args=(registry, top, bus, observer), name="pooly-stop"
    )
    t.daemon = True  # _stop_all_at_exit waits for it (with a deadline), not threading
    _STOPPING[t] = None
    t.start()


def _stop_collected(
    registry: _Registry, top: Supervisor, bus: EventBus, observer: Observer | None
) -> None:
    try:
        _shutdown(registry, top, bus, observer)
    except Exception:
        log.exception("stopping a Pooly that was garbage-collected without stop()")
    finally:
        _STOPPING.pop(threading.current_thread(), None)


@atexit.register
def _stop_all_at_exit() -> None:
    """At interpreter exit, stop every Pooly this process made and did not stop, newest first.

    Registered when pooly is imported, so it runs after the program's own later ``atexit``
    hooks (which may still use pools) and before multiprocessing's. Each Pooly stops as a
    whole, top-down, as ``stop()`` does: its pools refuse new work, then each worker is
    stopped (graceful, then kill) and reaped before anything it depends on closes, so an
    exit without ``stop()`` is quiet -- no worker's end is taken for a crash. Nothing is
    done for Poolys inherited from a parent process (a forked child's exit).
    """
    for fin, gen in reversed(list(_LIVE.items())):
        _LIVE.pop(fin, None)
        found = fin.detach()
        if found is None or gen != HOST.gen:
            continue
        _obj, _func, args, _kwargs = found
        try:
            _shutdown(args[0], args[1], args[3], args[4])
        except Exception:
            log.exception("stopping a Pooly at interpreter exit")
    deadline = time.monotonic() + _EXIT_JOIN
    for t in list(_STOPPING):
        t.join(max(0.0, deadline - time.monotonic()))


def _shutdown(
    registry: _Registry, top: Supervisor, bus: EventBus, observer: Observer | None
) -> None:
    """Close the observer endpoint (its socket file goes), close every pool to new
    checkouts, then stop the whole tree (graceful, then kill), then the event thread, once
    it has delivered the tree's last events."""
    if observer is not None:
        try:
            observer.close()
        except Exception:
            log.exception("closing the observer endpoint")
    with registry.lock:
        pools = list(registry.pools.values())
    for pool in pools:
        pool._close_for_stop()
    try:
        top.stop()
    finally:
        bus.stop()
