"""Where a pool's workers run: the seam between the pool server and its worker processes.

The pool server (:mod:`pooly._pool`) keeps all the bookkeeping -- idle, leased, overflow,
waiters -- and sees each worker only through a :class:`WorkerHandle`; it starts them through
its :class:`WorkerBackend`. :class:`LocalBackend` runs them as OS processes on this host
(:class:`pooly._worker.WorkerProcess`); a Ray actor is another implementation of the same
handful of operations::

    Pool ----- start_worker(cancel) ------------> WorkerBackend  (open / close around them)
      |                                              `-> WorkerHandle
      |- handle.call / send / receive     the data path, from the lease holder's thread
      |- handle.looks_alive / exited      liveness, without a round trip
      `- (via the worker supervisor)      sentinel / terminate / kill / reap: its exit status

A backend is opened before the pool's first worker starts and closed after its last one has
ended (the worker supervisor does both), so it may hold what its workers share: for
``LocalBackend`` with the "forkserver" start method, the pool's own fork server
(:mod:`pooly._zygote`). Workers exit by themselves when the host dies: they watch the host's
alive pipe, one per host process for every pool (:func:`pooly._fds.alive_pipe`).
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Protocol

from ._errors import PoolyError, WorkerCrashed
from ._fds import alive_pipe, fd_usage, out_of_fds
from ._process import preload_forkserver
from ._supervisor import CancelToken, ExitReason
from ._worker import WorkerProcess
from ._zygote import SUPPORTED as ZYGOTE_SUPPORTED
from ._zygote import Zygote

__all__ = ("LocalBackend", "WorkerBackend", "WorkerHandle", "check_fds")


class WorkerHandle(Protocol):
    """The host's end of one worker, as the pool and its leases use it.

    Data path (the lease holder's thread, one call at a time): ``call``, ``send``,
    ``receive``; ``release`` once it is over for good. Liveness: ``looks_alive()`` (cheap,
    no round trip), ``exited`` (set once the exit status is known), ``exitcode``. A
    supervisor child too: ``sentinel``, ``terminate``, ``kill``, ``reap`` run on the worker
    supervisor's thread.
    """

    pid: int
    methods: frozenset[str]
    cls_name: str
    exitcode: int | None
    exited: threading.Event
    broken: bool  # a call was interrupted part-way: never to be used again
    stopping: bool  # asked to end (dismissed, retired, pool stopping): not a crash
    in_task: bool  # running an executor's task: a death now is the task's, not counted
    calls: int  # calls and tasks sent to it (max_calls, max_tasks_per_child)
    req_w: int  # the request pipe's write end (the executor's dispatcher writes it directly)
    rep_r: int  # the reply pipe's read end (the dispatcher polls and reads it)

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...
    def send(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int: ...
    def receive(self, rid: int, timeout: float | None = None) -> Any: ...
    def send_frame(self, frame: bytes, rid: int, name: str) -> None: ...
    def looks_alive(self) -> bool: ...
    def unread(self) -> int:
        """Bytes sent to the worker that it has not read, also once it is gone (0: none, or
        unknown); a request with any of them never started."""

    def rss(self) -> int | None:
        """Its resident memory in bytes (None: unknown); for ``max_memory`` and observers."""

    def crashed_error(self, during: str | None = None) -> WorkerCrashed: ...
    def release(self) -> None:
        """Free what the handle holds (fds), once reaped and no thread is in a call on it:
        the pool decides when. Idempotent; a later use fails as a dead channel."""

    @property
    def sentinel(self) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def reap(self) -> ExitReason: ...


class WorkerBackend(Protocol):
    """Starts a pool's workers. ``open`` before the first, ``close`` after the last ended."""

    def open(self) -> None: ...
    def start_worker(self, cancel: CancelToken | None = None) -> WorkerHandle: ...
    def close(self) -> None: ...


class LocalBackend:
    """Worker processes on this host, started by the pool's fork server, spawn or fork.

    ``payload`` is the pickled construction recipe (class, args, kwargs); ``preload`` the
    modules a fork server imports once before it forks workers. Holds no descriptor of its
    own until :meth:`open` (the host's alive pipe is shared, made on first use).
    """

    def __init__(
        self,
        *,
        pool_name: str,
        cls_name: str,
        module: str,
        payload: bytes,
        start_method: str,
        start_timeout: float,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.pool_name = pool_name
        self.cls_name = cls_name
        self.start_method = start_method
        self.start_timeout = start_timeout
        self._payload = payload
        self._ctx = multiprocessing.get_context(start_method)
        # "forkserver": a fork server of the pool's own (pooly._zygote), where pidfds exist.
        self._zygote_modules: tuple[str, ...] | None = None
        if start_method == "forkserver" and ZYGOTE_SUPPORTED:
            self._zygote_modules = (module, *preload)
        elif start_method == "forkserver":
            preload_forkserver(preload)
        self.zygote: Zygote | None = None

    @property
    def alive_r(self) -> int:
        """The read end of the host's alive pipe, which every worker watches."""
        return alive_pipe()

    def open(self) -> None:
        """Start the fork server, if any. Undone by :meth:`close`."""
        try:
            if self._zygote_modules is not None:
                self.zygote = Zygote(self.pool_name, self._zygote_modules, alive_pipe())
                self.zygote.start(self.start_timeout)
        except BaseException:
            self.close()
            raise

    def start_worker(self, cancel: CancelToken | None = None) -> WorkerProcess:
        """Start one worker and wait until its object is constructed (WorkerStartError if
        not, or if ``cancel`` fires first)."""
        return WorkerProcess.start(
            cancel=cancel,
            ctx=self._ctx,
            payload=self._payload,
            alive_fd=alive_pipe(),
            pool_name=self.pool_name,
            cls_name=self.cls_name,
            start_timeout=self.start_timeout,
            zygote=self.zygote,
        )

    def close(self) -> None:
        """Stop the fork server (idempotent)."""
        if self.zygote is not None:
            self.zygote.stop()


class PoolShape(Protocol):
    """What :func:`check_fds` needs to know of a pool."""

    size: int
    start_method: str


#: What pooly's fds cost in the host, for the message of a start refused for want of them:
#: a pool's own (its two supervisors' wake-up and sentinel, its server's sentinel; and a
#: forkserver pool's fork server: control socket and sentinel), and each worker's (its
#: channel's two ends, and its pidfd; or, started by multiprocessing, its sentinel and the
#: pipe multiprocessing keeps beside it). A start needs a few more for a moment.
POOL_FDS = 5
FORK_SERVER_FDS = 2
WORKER_FDS = 3
MP_WORKER_FDS = 4


def check_fds(what: str, error: BaseException, pool: PoolShape | None = None) -> None:
    """Raise a :class:`PoolyError` explaining the fd limit if ``error`` comes from running
    out of file descriptors (EMFILE/ENFILE); else return (the caller re-raises ``error``)."""
    if not out_of_fds(error):
        return
    open_fds, soft, hard = fd_usage()
    cost = ""
    if pool is not None:
        zygote = pool.start_method == "forkserver"
        fixed = POOL_FDS + (FORK_SERVER_FDS if zygote else 0)
        each = WORKER_FDS if zygote else MP_WORKER_FDS
        cost = (
            f" This pool ({pool.size} workers, {pool.start_method}) needs about "
            f"{fixed + each * pool.size} fds: {fixed} for the pool and {each} per worker."
        )
    raise PoolyError(
        f"{what}: this process is out of file descriptors ({error}); {open_fds} are open, "
        f"and the limit (RLIMIT_NOFILE) is {soft} (hard limit {hard}).{cost} Raise the "
        "limit (ulimit -n, or resource.setrlimit(resource.RLIMIT_NOFILE, ...)) or stop pools "
        "you no longer need. Running pools are not affected."
    ) from error
