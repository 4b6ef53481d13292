"""A fork server per pool (a *zygote*): the pool's workers are forked from it.

Used for the ``"forkserver"`` start method. multiprocessing's forkserver is one process for
the whole host, and each worker's death sentinel was its status socket to it: when it died
(killed, or out of file descriptors) every worker of every pool was reported dead; and it
fixed every worker's environment at its first start. A zygote belongs to one pool:

* it is started with the pool, by multiprocessing's *spawn* (so ``sys.path`` and the main
  module, as ``__mp_main__``, are prepared as multiprocessing does -- once per pool, not per
  worker), with ``os.environ`` as it was when the pool started, even when restarted later;
* it imports the worker class's module and ``Pooly(preload=...)`` once, then forks a worker
  per request: a replacement costs a fork of a warm, small, single-threaded process;
* a worker's death is seen from the worker itself: the host holds a *pidfd* of it (readable
  when it exits, whoever its parent is; signals through it can't hit a recycled pid), so the
  zygote dying is not a worker dying. Its workers keep serving; the next start makes a new
  zygote. Only their exit status is lost (``exitcode`` is then None, and said so).

::

    host: Zygote (per pool) / _Server (one zygote process)      zygote process (one thread)
    ------------------------------------------------------      ---------------------------
    WorkerProcess.start: pipes, then spawn(req_r, rep_w, alive)
      sendmsg("fork", SCM_RIGHTS: the 3 fds) ---- control -->  poll([control, alive, SIGCHLD])
                                                  socketpair   fork() -> child: close the
                                                  (SEQPACKET)    zygote's fds, reset signals,
                                                                 setpgid: its own group,
                                                                 _worker_core(req_r, rep_w, alive)
      ZygoteProcess(pid, pidfd) <--- ("forked", pid) + pidfd   parent: setpgid too, close the
        sentinel = the pidfd                                     3 fds, open the child's pidfd,
        kill() = pidfd_send_signal                               send it
                                                               SIGCHLD -> waitid(WNOWAIT),
                                                                 killpg(pid): its tree, waitpid
        join(): bounded wait for <---------- ("exit", pid, code)  (code: -signal or status)
                                                               EOF on alive (host died) or on
                                                               control (pool stopped) -> killpg
                                                                 each live worker's group, exit

This module is the host's side; the zygote's own is :mod:`pooly._zygote_proc`. The host
reads the control socket only when it waits for something (a fork's reply, an exit report):
no thread of its own; whoever waits reads, under a lock, and files what it reads for the
others. Every wait has a deadline.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import select
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import WorkerStartError, describe_exit
from ._fds import _FDS_LOCK, _HOST_FDS, _STARTING_FDS, HOST, close_process
from ._supervisor import KILL_GRACE
from ._worker import _close_fds, _trim_process_fds
from ._zygote_proc import EMFILE, recv, send, zygote_main

__all__ = ("SUPPORTED", "Zygote", "ZygoteProcess")

log = logging.getLogger("pooly.zygote")

#: Linux only: pidfds are what make a worker's death independent of its parent.
SUPPORTED = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")

#: How long a handle waits for its worker's exit report once the worker is gone, and how long
#: a stopping zygote gets before it is killed. A live zygote answers in microseconds.
REPORT_WAIT = 5.0
STOP_WAIT = 5.0

_FORK = pickle.dumps(("fork",))


# ---------------------------------------------------------------------- host side


class _Gone(Exception):
    """The zygote was found gone before it got the request: a new one may be asked."""


class _Server:
    """One zygote process, and the host's end of its control socket (host, any thread)."""

    def __init__(
        self,
        pool_name: str,
        env: dict[str, str],
        modules: tuple[str, ...],
        alive_fd: int,
        deadline: float,
    ) -> None:
        self.pool_name = pool_name
        self.dead = False  # EOF seen on the control socket (or we gave up on it)
        # It missed an exit report's deadline (stopped? starved?): later reaps don't wait on
        # it, so one hung fork server can't hold its pool's supervisor for long.
        self.silent = False
        self.broken = False  # it can't take requests any more (send failed, or it was killed)
        self._req_lock = threading.Lock()  # one request at a time: replies come in order
        self._read_lock = threading.Lock()  # one reader at a time, filing for everyone
        self._replies: collections.deque[tuple[tuple[Any, ...], list[int]]] = collections.deque()
        self._exits: dict[int, int] = {}
        self._live: set[int] = set()  # forked, handle not closed: their exits are kept
        me = threading.get_ident()
        with _FDS_LOCK:  # no fork (another pool's start) between making and listing them
            ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            _HOST_FDS.add(ctl.fileno())
            _STARTING_FDS[theirs.fileno()] = me
        self.ctl = ctl
        alive = None
        try:
            with _FDS_LOCK:
                alive = multiprocessing.connection.Connection(os.dup(alive_fd), writable=False)
                _STARTING_FDS[alive.fileno()] = me  # a fork by another thread must not keep it
            proc = multiprocessing.get_context("spawn").Process(
                target=zygote_main,
                args=(theirs, alive, env, modules, pool_name),
                name=f"pooly-zygote:{pool_name}",
                daemon=False,
            )
            with _FDS_LOCK:  # no fork between making its pipes (in start) and listing them
                proc.start()
                _HOST_FDS.update(_trim_process_fds(proc))
        except BaseException:
            with _FDS_LOCK:
                _HOST_FDS.discard(ctl.fileno())
                ctl.close()
            raise
        finally:
            with _FDS_LOCK:  # no fork between unlisting and closing them (numbers are reused)
                for fd in (theirs.fileno(), -1 if alive is None else alive.fileno()):
                    _STARTING_FDS.pop(fd, None)
                theirs.close()
                if alive is not None:
                    alive.close()
        # We reap it ourselves; multiprocessing's sweep of its children would race with us.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        self.proc = proc
        self.pid: int = proc.pid  # type: ignore[assignment]
        try:
            self._ready(deadline)
        except BaseException:
            self.stop(0)
            raise

    def _ready(self, deadline: float) -> None:
        what = f"the fork server (pid {self.pid}) of pool {self.pool_name!r}"
        if not self._wait_for(lambda: bool(self._replies), deadline):
            if self.dead:
                self.proc.join(REPORT_WAIT)
                code = self.proc.exitcode
                raise WorkerStartError(
                    f"{what} exited while starting, with {describe_exit(code)} (see its stderr)",
                    pid=self.pid,
                    exitcode=code,
                )
            raise WorkerStartError(
                f"{what} did not finish starting (importing the worker's module and the "
                "preloaded ones) within start_timeout; it was killed",
                pid=self.pid,
            )
        msg, _ = self._replies.popleft()
        for name, error in msg[2]:
            log.warning(
                "pool %r: its fork server could not import %r (%s); each worker imports it itself",
                self.pool_name,
                name,
                error,
            )

    # -- reading -----------------------------------------------------------------------

    def _wait_for(self, ready: Callable[[], bool], deadline: float) -> bool:
        """Read and file messages until ``ready()`` or the deadline; ``ready()`` at the end."""
        while not ready():
            remaining = deadline - time.monotonic()
            if self.dead or remaining <= 0:
                return ready()
            if not self._read_lock.acquire(timeout=_lock_timeout(deadline)):
                return ready()
            try:
                if not ready() and not self.dead:
                    self._read_one(deadline)
            finally:
                self._read_lock.release()
        return True

    def _read_one(self, deadline: float) -> None:
        """Wait (until the deadline) for one message and file it. Holds the read lock."""
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        if not poller.poll(_ms(deadline - time.monotonic())):
            return
        try:
            data, fds, truncated = recv(self.ctl, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds, truncated = b"", [], False
        if not data:
            self.dead = True
            return
        self.silent = False
        msg = pickle.loads(data)
        if msg[0] == "exit":
            if msg[1] in self._live:
                self._exits[msg[1]] = msg[2]
            return
        if msg[0] == "forked":
            if fds and not truncated:
                self._live.add(msg[1])
            else:
                msg = (
                    "emfile",
                    f"started worker pid {msg[1]}, but its pidfd could not be received here: "
                    f"the kernel dropped it ({EMFILE}?); the worker exits by itself",
                )
                _close_fds(tuple(fds))
                fds = []
        self._replies.append((msg, fds))

    # -- requests ------------------------------------------------------------------------

    def running(self) -> bool:
        return not (
            self.dead or self.broken or multiprocessing.connection.wait([self.proc.sentinel], 0)
        )

    def fork(self, fds: Sequence[int], deadline: float) -> tuple[int, int]:
        """Have the zygote fork a worker on ``fds``; (pid, pidfd). Raises _Gone or
        WorkerStartError."""
        what = f"the fork server (pid {self.pid}) of pool {self.pool_name!r}"
        if not self._req_lock.acquire(timeout=_lock_timeout(deadline)):
            raise WorkerStartError(f"{what} was busy with other starts until start_timeout")
        try:
            if self.dead or self.broken:
                raise _Gone()
            try:
                send(self.ctl, _FORK, fds)
            except OSError as e:
                self.broken = True
                raise _Gone() from e
            if not self._wait_for(lambda: bool(self._replies), deadline):
                if self.dead:
                    raise WorkerStartError(f"{what} died while forking a worker")
                self.broken = True  # a late reply would answer the next request
                self.proc.kill()
                raise WorkerStartError(
                    f"{what} did not fork a worker within start_timeout; it was killed "
                    "(the workers it started keep running)"
                )
            msg, got = self._replies.popleft()
        finally:
            self._req_lock.release()
        if msg[0] == "emfile":  # we are out of fds (an OSError: see pooly._fds.out_of_fds)
            raise WorkerStartError(f"{what} could not start a worker: {msg[1]}") from OSError(
                errno.EMFILE, EMFILE
            )
        if msg[0] != "forked":
            raise WorkerStartError(f"{what} could not start a worker: {msg[1]}")
        return msg[1], got[0]

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The exit status the zygote reported for ``pid`` (which has exited); None if it
        died before reporting or didn't report in time."""
        if self.silent:  # it missed a deadline already: read what is there, don't wait again
            timeout = 0.0
        got = self._wait_for(lambda: pid in self._exits, time.monotonic() + timeout)
        if not got and not self.dead and not self.silent:
            self.silent = True
            log.warning(
                "pool %r: its fork server (pid %d) did not report the exit status of "
                "worker pid %d within %gs; exit statuses are unknown until it answers again",
                self.pool_name,
                self.pid,
                pid,
                timeout,
            )
        return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        self._live.discard(pid)
        self._exits.pop(pid, None)

    def stop(self, timeout: float) -> int | None:
        """Stop the zygote (EOF on its control socket), reap it; its exit code.

        What it sent before it went (exit reports of its last workers) is still filed.
        """
        try:
            self.ctl.shutdown(socket.SHUT_WR)  # the zygote reads EOF and exits
        except OSError:
            pass
        proc = self.proc
        try:
            proc.join(timeout)
            if proc.exitcode is None:
                proc.kill()
                proc.join(KILL_GRACE)
        except ValueError:  # closed by an earlier stop
            return None
        code: int | None = proc.exitcode
        if code is None:  # no wait without a deadline: leave it, and its fds, be
            log.error(
                "pool %r: its fork server (pid %d) did not end within %gs of being killed",
                self.pool_name,
                self.pid,
                KILL_GRACE,
            )
            self.dead = True
            return None
        self._wait_for(lambda: False, time.monotonic() + 1.0)  # read up to its EOF
        self.dead = True
        with self._req_lock, self._read_lock, _FDS_LOCK:  # nobody reads or asks: free it
            _HOST_FDS.discard(self.ctl.fileno())
            self.ctl.close()
        close_process(proc)
        return code


class ZygoteProcess:
    """The host's handle of a worker forked by a zygote, shaped like multiprocessing's.

    ``sentinel`` is a pidfd: readable once the worker has exited, whoever its parent is.
    ``exitcode`` follows multiprocessing (negative: killed by that signal; None: running, or
    its status was lost with its zygote). After :meth:`close`, everything but ``pid`` raises
    ``ValueError``, as for a closed multiprocessing process.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_done",
        "_exitcode",
        "_finalizer",
        "_server",
        "pid",
        "sentinel",
    )

    def __init__(self, server: _Server, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.sentinel = pidfd
        self._server = server
        self._exitcode: int | None = None
        self._done = False
        self._closed = False
        _HOST_FDS.add(pidfd)
        self._finalizer = weakref.finalize(self, _close_pidfd, pidfd, server, pid, HOST.gen)
        self._finalizer.atexit = False  # the Pooly's exit hook stops workers first

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"process object of worker pid {self.pid} is closed")

    @property
    def exitcode(self) -> int | None:
        self._check_closed()
        if not self._done:
            self.join(0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to exit (up to ``timeout``), then (bounded) for its status."""
        self._check_closed()
        if self._done or not _readable(self.sentinel, timeout):
            return
        self._exitcode = self._server.wait_exit(self.pid, REPORT_WAIT)
        self._done = True

    def _signal(self, sig: int) -> None:
        self._check_closed()
        if self._done:
            return
        try:
            signal.pidfd_send_signal(self.sentinel, sig)
        except ProcessLookupError:
            pass  # it has exited already

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self._closed:
            return
        if not self._done:
            raise ValueError(
                f"cannot close the process object of worker pid {self.pid} "
                "while it is still running"
            )
        self._closed = True
        self._finalizer()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._done:
            state = f"exited with {describe_exit(self._exitcode)}"
        else:
            state = "started"
        return f"<ZygoteProcess pid={self.pid} {state}>"


def _close_pidfd(pidfd: int, server: _Server, pid: int, gen: int) -> None:
    if gen != HOST.gen:  # a forked child: closed at the fork, the number maybe reused
        return
    with _FDS_LOCK:  # no fork between unlisting and closing it (numbers are reused)
        _HOST_FDS.discard(pidfd)
        _close_fds((pidfd,))
    server.forget(pid)


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else _ms(timeout)))


def _lock_timeout(deadline: float) -> float:
    return max(0.0, min(deadline - time.monotonic(), threading.TIMEOUT_MAX))


def _ms(seconds: float) -> int:
    """A poll(2) timeout: milliseconds, rounded up, capped at what a C int holds (inf too)."""
    if not seconds > 0:
        return 0
    return math.ceil(seconds * 1000) if seconds < 2_000_000 else 2**31 - 1


class Zygote:
    """A pool's fork server, from the host's side: started with the pool, started again
    (lazily, with a log line) by the first worker start after it died, stopped with the pool.

    ``spawn`` runs in whichever thread starts a worker; starts share the zygote (one fork
    round trip at a time) but not their handshakes.
    """

    def __init__(self, pool_name: str, modules: Sequence[str], alive_fd: int) -> None:
        self.pool_name = pool_name
        self._modules = tuple(dict.fromkeys(m for m in modules if m != "__main__"))
        self._alive_fd = alive_fd
        self._env = dict(os.environ)  # the pool's environment: as it was at its start
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._stopped = False

    def start(self, timeout: float) -> None:
        """Start the zygote (at pool start): raises WorkerStartError if it can't start."""
        with self._lock:
            if self._server is None:
                self._server = self._new_server(time.monotonic() + timeout)

    def _new_server(self, deadline: float) -> _Server:
        try:
            return _Server(self.pool_name, self._env, self._modules, self._alive_fd, deadline)
        except OSError as e:
            raise WorkerStartError(
                f"pool {self.pool_name!r}: could not start its fork server: {e}"
            ) from e

    def spawn(self, fds: Sequence[int], timeout: float) -> ZygoteProcess:
        """Fork a worker on its ends of the channel ``fds`` (req_r, rep_w, alive); the caller
        keeps and closes them. Raises WorkerStartError naming why it could not."""
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            with self._lock:
                if self._stopped:
                    raise WorkerStartError(f"pool {self.pool_name!r}: its fork server has stopped")
                server = self._server
                if server is None or not server.running():
                    if server is not None:
                        code = server.stop(0)
                        log.warning(
                            "pool %r: its fork server (pid %d) is gone (%s); starting a new "
                            "one (the workers it started keep running)",
                            self.pool_name,
                            server.pid,
                            describe_exit(code),
                        )
                    self._server = None
                    server = self._server = self._new_server(deadline)
            try:
                pid, pidfd = server.fork(fds, deadline)
            except _Gone as e:
                if attempt:
                    raise WorkerStartError(
                        f"pool {self.pool_name!r}: its fork server died before it could fork a "
                        "worker"
                    ) from e.__cause__
                continue
            return ZygoteProcess(server, pid, pidfd)
        raise AssertionError("unreachable")

    def host_fds(self) -> list[int]:
        """The host's fds of the current zygote (its control socket, its sentinel)."""
        server = self._server
        if server is None or server.dead:
            return []
        return [server.ctl.fileno(), server.proc.sentinel]

    @property
    def pid(self) -> int | None:
        server = self._server
        return None if server is None else server.pid

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Stop the zygote and reap it (after the pool's workers). Idempotent."""
        with self._lock:
            self._stopped = True
            server, self._server = self._server, None
        if server is not None:
            server.stop(timeout)
