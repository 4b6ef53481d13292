"""Host processes: start methods, the forkserver, fd hygiene across forks, ProcessChild.

What every process pooly starts needs from the host, whoever starts it (a pool's worker, or
a :class:`ProcessChild` under a plain :class:`~pooly._supervisor.Supervisor`):

- the start method (forkserver where available, never fork by default) and a preloaded
  forkserver, so a new process starts with pooly's worker code already imported;
- fd hygiene (the registry itself is :mod:`pooly._fds`): process creation is serialised
  (``_START_LOCK``) because ``Popen`` makes pipes around a fork out of our sight, and a
  freshly forked worker gets fresh std streams;

The supervisor (``_supervisor``) knows nothing of this; ``_worker`` and ``_pool`` build on it::

    _supervisor  <--  _process  <--  _worker  <--  _pool  <--  _pooly
    (generic)         (host OS)      (one worker)  (pool)      (tree top)
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from . import _fds
from ._errors import describe_exit
from ._fds import _FDS_LOCK, _HOST_FDS
from ._pgroup import _join_tree, _lead_own_group, _quiet_terminal
from ._supervisor import Child, ChildSpec, ExitReason, Restart

__all__ = ("ProcessChild", "default_start_method", "preload_forkserver")


def _fresh_std_streams() -> None:
    """Give a freshly forked worker its own sys.stdin/stdout/stderr objects.

    Another host thread may have held one of the host's stream locks at the fork (say, the
    main thread blocked in ``input()``); the child inherits that lock held forever, and
    multiprocessing's bootstrap (which closes stdin and flushes stdout/stderr) would hang
    before the worker even starts. New objects on the same fds have fresh locks.
    """
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 -- lives as long as the worker
    for name, fd in (("stdout", 1), ("stderr", 2)):
        try:
            stream = open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        except OSError:
            continue
        stream.reconfigure(line_buffering=True)
        setattr(sys, name, stream)


def _after_fork_in_child() -> None:
    # pooly._fds's hook (registered first, so run first) has closed the host's fds already.
    # (It has also counted the fork in HOST.)
    if _fds.forked_for_worker:
        _fresh_std_streams()
    # Locks another thread of the parent may have held at the fork would stay held forever
    # here (their owners don't exist in the child): a fresh Pooly could never start a pool.
    _START_LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    _forget_parents_forkserver()


def _forget_parents_forkserver() -> None:
    """Make multiprocessing start a forkserver of this child's own when it needs one.

    Forked after the parent started multiprocessing's forkserver, a child inherits its
    address and pid, and its next "forkserver" start calls ``waitpid`` on a process that is
    not its child: a bare ``ChildProcessError`` (CPython does not reset this at fork). The
    parent's server stays the parent's; the child's copy of its alive fd is closed so the
    parent's server still exits with the parent.
    """
    fs = sys.modules.get("multiprocessing.forkserver")
    server = getattr(fs, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        try:
            os.close(alive)
        except OSError:
            pass
    for attr in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid"):
        setattr(server, attr, None)
    if hasattr(server, "_forkserver_authkey"):  # 3.13.x+
        server._forkserver_authkey = None
    if hasattr(server, "_inherited_fds"):
        server._inherited_fds = None
    lock = getattr(server, "_lock", None)
    if lock is not None and hasattr(lock, "_at_fork_reinit"):
        lock._at_fork_reinit()


#: Held around each worker's process start. With "fork", Popen makes the new process's
#: sentinel pipe and closes its child end around the fork, out of our sight: a concurrent
#: start in another thread would fork a worker holding a copy, which hides the first one's
#: death. Only the process creation is serialised; constructors still run concurrently.
_START_LOCK = threading.Lock()

os.register_at_fork(after_in_child=_after_fork_in_child)


def default_start_method() -> str:
    """forkserver where available (safe in a threaded host), else spawn. Never fork."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def preload_forkserver(modules: tuple[str, ...] = ()) -> bool:
    """Have the forkserver import pooly's worker code (and ``modules``) once, up front.

    Every worker forked from it then starts with them already imported: without this each
    new worker imports pooly itself, which made a SIGKILLed worker's replacement ~5x slower
    here. Takes effect only if the forkserver is not running yet (it is process-wide and
    started on first use); returns whether it did.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        return False
    current = list(getattr(server, "_preload_modules", []))
    wanted = [m for m in ("pooly._worker", *modules) if m not in current]
    if wanted:
        multiprocessing.get_context("forkserver").set_forkserver_preload(current + wanted)
    return True


def _process_child_main(target: Callable[..., object], args: tuple[Any, ...]) -> None:
    """A :class:`ProcessChild`'s first code: lead a process group of its own (so whatever it
    starts goes with it when it is reaped), keep the terminal from stopping it, then run."""
    _lead_own_group()
    _quiet_terminal()
    target(*args)


class ProcessChild:
    """A supervisor child that runs ``target(*args)`` in its own OS process.

    For supervising your own processes with :class:`Supervisor`::

        sup = Supervisor([ProcessChild.spec("ticker", tick, (1.0,))]).start()

    Exit code 0 is a normal exit (not restarted when ``transient``); anything else, or a
    signal, is abnormal. ``terminate`` sends SIGTERM, ``kill`` SIGKILL. The process leads a
    process group of its own: whatever it started and left running is SIGKILLed when it has
    ended (crashed, stopped or killed), before it is reaped.
    """

    def __init__(
        self,
        target: Callable[..., object],
        args: Sequence[object] = (),
        *,
        start_method: str | None = None,
        name: str | None = None,
    ) -> None:
        method = start_method or default_start_method()
        if method == "forkserver":
            preload_forkserver()  # the same server serves pools: keep it warm for them too
        ctx = multiprocessing.get_context(method)
        self.proc = ctx.Process(  # type: ignore[attr-defined]
            target=_process_child_main, args=(target, tuple(args)), name=name
        )
        with _START_LOCK, _FDS_LOCK:  # see there: concurrent fork starts would share pipes
            self.proc.start()
            _HOST_FDS.update(_fds.process_fds(self.proc))  # no fork of the host keeps them
        # Reaped by our supervisor only; multiprocessing's own sweep would race with it.
        multiprocessing.process._children.discard(self.proc)  # type: ignore[attr-defined]
        self.pid: int = self.proc.pid

    @classmethod
    def spec(
        cls,
        child_id: Hashable,
        target: Callable[..., object],
        args: Sequence[object] = (),
        *,
        restart: Restart = "permanent",
        shutdown: float = 5.0,
        start_method: str | None = None,
    ) -> ChildSpec:
        """A :class:`ChildSpec` that starts a fresh process for every (re)start."""

        def start() -> Child:
            return cls(target, args, start_method=start_method, name=str(child_id))

        return ChildSpec(child_id, start, restart, shutdown)

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel  # type: ignore[no-any-return]

    def terminate(self) -> None:
        if self.proc.exitcode is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()

    def reap(self) -> ExitReason:
        _join_tree(self.proc)  # (what it started dies with it: its group is killed first)
        code = self.proc.exitcode
        _fds.close_process(self.proc)
        return ExitReason(code == 0, f"process {self.pid} exited with {describe_exit(code)}", code)
