"""File-descriptor hygiene for the host: which of pooly's fds a forked child must not keep.

A leaf module (it imports nothing of pooly): the supervisor, the worker channels, the fork
servers and the alive pipe all register their fds here.

- ``_HOST_FDS``: every fd pooly holds in the host (worker channel ends, pidfds, fork-server
  sockets, the alive pipe, supervisors' and children's :class:`Signal` fds). A process
  forked from the host -- the user's ``os.fork``, a ``multiprocessing`` fork, a fork-started
  worker of a pool -- closes them all at once (an at-fork hook), so no other process can keep
  a worker's channel open, hide an EOF, or write into a signal.
- ``_STARTING_FDS``: a worker's own channel ends, held by the host only while that worker is
  being started, mapped to the starting thread: a child forked by *another* thread meanwhile
  closes them too; the starting thread's own fork (the worker itself) keeps them.
- ``_FDS_LOCK``: held while fds are made and listed (and unlisted and closed), and across
  every fork, so a fork can never copy an fd not listed yet, nor one whose number is about to
  be reused.
- :class:`Signal`: a one-fd wake-up (an eventfd on Linux, a pipe elsewhere) that becomes
  readable when *written to*, never by EOF: a forked copy can't hide it.
- :func:`_dead_pipe`: fds to ``dup2`` over a finished channel, so its numbers stay valid.
- :func:`alive_pipe`: the host's one alive pipe (per process, made on first use, made again
  in a forked child): every worker and fork server reads it and exits at EOF, i.e. when the
  host process is gone.
- :func:`process_fds` / :func:`close_process`: the fds multiprocessing keeps for a process
  it started (listed like ours), and closing them.
- :func:`out_of_fds` / :func:`fd_usage`: telling an EMFILE/ENFILE failure, and the numbers
  (fds open, RLIMIT_NOFILE) for the error that reports it.

:data:`HOST` counts forks: every object that owns fds (or more) records ``HOST.gen`` when it
is made, and in a forked child -- where the numbers were closed at the fork and may be
someone else's by now -- an inherited object sees a different ``gen`` and does nothing.

::

    host thread making fds --(under _FDS_LOCK)--> _HOST_FDS / _STARTING_FDS
    os.fork() (any thread) --holds _FDS_LOCK-->   child: close them all, clear the registry
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
import weakref
from typing import Any

__all__ = (
    "HOST",
    "Signal",
    "alive_pipe",
    "close_process",
    "fd_usage",
    "host_fds",
    "out_of_fds",
    "process_fds",
    "release",
)


class _Host:
    """This process as pooly sees it: its pid, and how many forks it is from where it began.

    Every pooly object made here records ``gen``; a child forked from this process (by
    anyone: ``os.fork``, a fork-context ``multiprocessing.Pool``, a pre-fork server) gets a
    new ``gen`` (this module's at-fork hook, the first of pooly's), so the parent's objects
    can tell in O(1) -- no ``getpid`` syscall -- that they are copies: their threads, locks'
    owners and descriptors stayed with the parent. They then refuse to act.
    """

    __slots__ = ("gen", "pid")

    def __init__(self) -> None:
        self.gen = 0
        self.pid = os.getpid()


HOST = _Host()

#: File descriptors the host holds for pooly. Process-wide by nature, like fork itself.
#: Updated under _FDS_LOCK where fds are created (so a fork can't copy one not listed yet).
_HOST_FDS: set[int] = set()
#: A worker's own ends of its channel, held by the host only while that worker starts,
#: mapped to the starting thread. A child forked meanwhile by *another* thread closes them.
_STARTING_FDS: dict[int, int] = {}

#: Held while host fds are created and listed above (and unlisted and closed), and across
#: every fork: a fork from another thread (pool workers start concurrently) can't copy an fd
#: not yet listed, or one whose number is about to be reused. Re-entrant: a garbage
#: collection inside a locked section may run a finalizer that closes fds under it too.
_FDS_LOCK = threading.RLock()

#: Set in a forked child when the fork was a pooly worker start by the forking thread (read
#: by pooly._process's own after-fork hook, which runs after ours).
forked_for_worker = False


def out_of_fds(error: BaseException | None) -> bool:
    """Whether ``error``, or an exception it was raised from, is EMFILE or ENFILE."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
            return True
        error = error.__cause__ or error.__context__
    return False


def fd_usage() -> tuple[int, int, int]:
    """(fds open in this process, RLIMIT_NOFILE soft limit, hard limit); -1 if unknown."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        soft = hard = -1
    try:
        count = len(os.listdir("/proc/self/fd")) - 1  # (listdir's own)
    except OSError:  # no /proc, or no fd left to read it with: probe each number
        limit = soft if 0 < soft <= 1 << 16 else 1 << 12
        count = 0
        for fd in range(limit):
            try:
                os.fstat(fd)
            except OSError:
                continue
            count += 1
    return count, soft, hard


def host_fds() -> frozenset[int]:
    """The fds pooly holds in this process now (for tests and diagnostics)."""
    with _FDS_LOCK:
        return frozenset(_HOST_FDS)


def release(fds: tuple[int, ...] | list[int], gen: int | None = None) -> None:
    """Unlist and close ``fds`` (errors ignored), with no fork in between.

    ``gen``: the fork generation (:data:`HOST`) that made them. In any other (a forked
    child, where a finalizer of an inherited object runs) they were closed at the fork, and
    their numbers may belong to someone else by now: nothing is closed.
    """
    if gen is not None and gen != HOST.gen:
        return
    with _FDS_LOCK:  # no fork between unlisting and closing them (numbers are reused)
        for fd in fds:
            _HOST_FDS.discard(fd)
            try:
                os.close(fd)
            except OSError:
                pass


def close_host_fds_in_child() -> None:
    """In a freshly forked child (its only thread): close every fd the host listed.

    Sets :data:`forked_for_worker` if this fork was the forking thread's own pooly worker
    start (whose starting fds it keeps). Clears the registry: nothing of the parent's is ours.
    """
    global forked_for_worker, _alive, _dead_fds
    me = threading.get_ident()  # the forking thread is the child's only thread
    worker_start = me in _STARTING_FDS.values()
    doomed = list(_HOST_FDS) + [fd for fd, tid in list(_STARTING_FDS.items()) if tid != me]
    for fd in doomed:
        try:
            os.close(fd)
        except OSError:
            pass
    _HOST_FDS.clear()
    _STARTING_FDS.clear()
    _alive = None  # the parent's alive pipe is closed here: a first use makes our own
    _dead_fds = None  # (closed too: listed)
    forked_for_worker = worker_start


def _after_fork_in_child() -> None:
    # Taken by the forking thread (the child's only thread), maybe more than once (a fork
    # made by a process start under the lock): a fresh lock, not a release, so that the
    # child's later threads can take it too.
    _FDS_LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    HOST.gen += 1
    HOST.pid = os.getpid()
    close_host_fds_in_child()


os.register_at_fork(
    before=_FDS_LOCK.acquire, after_in_parent=_FDS_LOCK.release, after_in_child=_after_fork_in_child
)


# ---------------------------------------------------------------------- Signal

_EVENTFD = sys.platform == "linux" and hasattr(os, "eventfd")


class Signal:
    """A one-fd wake-up: :meth:`fileno` becomes readable once :meth:`set` has been called.

    An eventfd (Linux) or a non-blocking pipe (elsewhere: two fds, only the read end is
    ``fileno()``). Readiness comes from a *write*, never an EOF, so a process that holds a
    copy (forked meanwhile) can't hide it; and the fds are listed in the host registry, so a
    forked child doesn't keep them anyway. :meth:`drain` makes it unready again (a wake-up
    pipe); without it, it stays readable for good (a "has ended" sentinel).

    Thread-safe: ``set`` and ``close`` may race (a set after close is a no-op, never a write
    to a recycled fd number). Raises ``OSError`` (EMFILE...) from the constructor only.
    """

    __slots__ = ("__weakref__", "_finalizer", "_gen", "_lock", "_r", "_w")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # In a forked child the fds are closed and their numbers may be reused: an inherited
        # Signal then does nothing (a write would land in someone else's file).
        self._gen = HOST.gen
        with _FDS_LOCK:  # no fork between making and listing it
            if _EVENTFD:
                self._r = self._w = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                fds = [self._r]
            else:
                self._r, self._w = os.pipe()
                fds = [self._r, self._w]
            _HOST_FDS.update(fds)
        # close(), or the object's collection (one never closed: a supervisor never started)
        self._finalizer = weakref.finalize(self, release, fds, self._gen)
        # Never at interpreter exit: pooly's exit hook stops each Pooly first, and a tree
        # whose wake-ups were closed under it could not stop in order.
        self._finalizer.atexit = False
        if not _EVENTFD:
            os.set_blocking(self._r, False)
            os.set_blocking(self._w, False)

    def fileno(self) -> int:
        """The fd to wait on (readable once set); -1 once closed."""
        return self._r

    def set(self) -> None:
        """Make :meth:`fileno` readable (any thread; idempotent; no-op once closed, or in a
        forked child)."""
        with self._lock:
            if self._w < 0 or self._gen != HOST.gen:
                return
            try:
                if _EVENTFD:
                    os.eventfd_write(self._w, 1)
                else:
                    os.write(self._w, b"!")
            except BlockingIOError:
                pass  # full: it is readable already

    def is_set(self) -> bool:
        """Whether it is readable now (no wait)."""
        with self._lock:
            if self._r < 0 or self._gen != HOST.gen:
                return False
            p = select.poll()
            p.register(self._r, select.POLLIN)
            return bool(p.poll(0))

    def drain(self) -> None:
        """Make it unready again (reads what was written). Never blocks."""
        with self._lock:
            if self._r < 0 or self._gen != HOST.gen:
                return
            try:
                while os.read(self._r, 4096):
                    if _EVENTFD:
                        break  # one read resets an eventfd's counter
            except BlockingIOError:
                pass

    def close(self) -> None:
        """Release the fd(s) (idempotent)."""
        with self._lock:
            self._r = self._w = -1
        self._finalizer()

    def __repr__(self) -> str:
        return f"<Signal fd={self._r}>"


# ---------------------------------------------------------------------- processes


def process_fds(proc: Any) -> list[int]:
    """The host's fds that multiprocessing keeps for a started ``proc`` until it is closed:
    its sentinel, and the write end of the pipe that carried its preparation data (spawn) or
    serves as its parent sentinel (fork). Listed so that no fork of the host keeps them."""
    finalizer = getattr(getattr(proc, "_popen", None), "finalizer", None)
    fds = [fd for fd in getattr(finalizer, "_args", None) or () if isinstance(fd, int)]
    return fds if proc.sentinel in fds else [proc.sentinel, *fds]


def close_process(proc: Any) -> None:
    """``proc.close()`` (ValueError while it runs), unlisting the fds it closes."""
    with _FDS_LOCK:  # no fork between closing them and unlisting them (numbers are reused)
        try:
            fds = process_fds(proc)
        except ValueError:  # closed already
            fds = []
        proc.close()
        _HOST_FDS.difference_update(fds)


# ---------------------------------------------------------------------- the dead pipe

_dead_fds: tuple[int, int] | None = None


def _dead_pipe() -> tuple[int, int]:
    """(r, w): r reads EOF forever, w fails with EPIPE forever. Shared, never closed.

    ``os.dup2`` of these over a worker's channel fds releases the channel at once while
    the fd *numbers* stay valid, so a consumer thread racing with us can never read or
    write a recycled descriptor. Listed (a forked child closes them and makes its own).
    """
    global _dead_fds
    with _FDS_LOCK:
        if _dead_fds is None:
            r, w_closed = os.pipe()
            os.close(w_closed)
            r_closed, w = os.pipe()
            os.close(r_closed)
            _dead_fds = (r, w)
            _HOST_FDS.update(_dead_fds)
        return _dead_fds


# ---------------------------------------------------------------------- the alive pipe

_alive: tuple[int, int] | None = None


def alive_pipe() -> int:
    """The read end of this process's alive pipe (made on first use; raises OSError).

    One per host process, shared by every pool: its write end is never closed while the
    process lives, so every worker and fork server reading it sees EOF exactly when the host
    is gone. A forked child closes its parent's copy (it is listed) and makes its own on
    first use, so its own workers watch *it*.
    """
    global _alive
    with _FDS_LOCK:
        if _alive is None:  # (None again in a forked child: see close_host_fds_in_child)
            r, w = os.pipe()
            _HOST_FDS.update((r, w))
            _alive = (r, w)
        return _alive[0]
