"""A pool's fork server, its own side: the process that forks the pool's workers.

Runs in the process :mod:`pooly._zygote` starts for a pool (see the sketch there): one
thread, one poll loop on the control socket, the host's alive pipe and a SIGCHLD wakeup
pipe. Also the message helpers both sides use (one SEQPACKET message per request, reply or
exit report; fds ride along with SCM_RIGHTS).

Being the workers' parent, it is also what ends each worker's process tree (issue 7,
defect 4; see :mod:`pooly._worker`). A worker leads its own process group, made from both
sides of the fork before the host hears of the pid. When a worker exits, the zygote SIGKILLs
its group *before* reaping it: ``waitid(WNOWAIT)`` finds the exited child and leaves it a
zombie, whose pid pins the group id (no other group can have it); then ``killpg``; then
``waitpid`` and the exit report. When the zygote itself exits -- its host died (EOF on the
alive pipe), or its pool stopped (EOF on the control socket; every worker has ended by then)
-- it SIGKILLs the groups of all the workers it still has: a worker stuck in C code that
holds the GIL can't run its own watchdog. A zygote that is killed does none of this: its
workers keep serving, and when one of them ends its host kills the group as best it can
(:func:`pooly._pgroup._kill_group_after_reap`).
"""

from __future__ import annotations

import array
import collections
import errno
import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import socket
from collections.abc import Sequence

from ._pgroup import _kill_group, _lead_own_group
from ._worker import _close_fds, _worker_core

_MSG_MAX = 1 << 16
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
#: Why the kernel drops fds passed with a message, in practice: "Too many open files".
EMFILE = os.strerror(errno.EMFILE)


def send(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """One message (with ``fds`` attached); MSG_NOSIGNAL: a host whose SIGPIPE is at its
    default must get EPIPE, not die, if the other side is gone."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([data], anc if fds else [], socket.MSG_NOSIGNAL)


def recv(sock: socket.socket, maxfds: int) -> tuple[bytes, list[int], bool]:
    """One message: (data, fds, truncated). b"" is EOF. ``truncated``: the kernel dropped
    attached fds (this process is out of file descriptors)."""
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(_MSG_MAX, socket.CMSG_SPACE(maxfds * fds.itemsize), _CLOEXEC)
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), bool(flags & socket.MSG_CTRUNC)


# ---------------------------------------------------------------------- the zygote process


def zygote_main(
    ctl: socket.socket,
    alive: multiprocessing.connection.Connection,
    env: dict[str, str],
    modules: tuple[str, ...],
    pool_name: str,
) -> None:
    """Entry point of a pool's fork server (its main and only thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle
    os.environ.clear()
    os.environ.update(env)
    from multiprocessing import resource_tracker

    keep = {0, 1, 2, ctl.fileno(), alive.fileno(), resource_tracker._resource_tracker._fd}  # type: ignore[attr-defined]
    # Whatever else spawn left us (its sentinel pipe's write end, above all) is ours alone:
    # a worker keeping it would keep the host from seeing this process exit.
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]
    private = [fd for fd in listed if fd not in keep and _is_open(fd)]  # not listdir's own
    failures = []
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:  # reported to the host; a worker then shows the traceback
            failures.append((name, f"{type(e).__name__}: {e}"))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    private += [wake_r, wake_w]
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _no_op)  # a handler, not SIG_DFL: the wakeup fd then fires
    ctl.setblocking(False)
    server = _ZygoteLoop(ctl, alive, wake_r, private, pool_name)
    server.outbox.append((pickle.dumps(("ready", os.getpid(), failures)), []))
    server.run()


def _no_op(signum: int, frame: object) -> None:
    pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class _ZygoteLoop:
    """The zygote's select loop (zygote process, main thread)."""

    def __init__(
        self,
        ctl: socket.socket,
        alive: multiprocessing.connection.Connection,
        wake_r: int,
        private: list[int],
        pool_name: str,
    ) -> None:
        self.ctl = ctl
        self.alive = alive
        self.wake_r = wake_r
        self.private = private
        self.pool_name = pool_name
        #: Forked and not reaped yet: each leads a process group whose id is its pid.
        self.workers: set[int] = set()
        # Replies and exit reports not sent yet, each with fds to send and then close. Sent
        # as the socket takes them: this process never blocks on a busy host.
        self.outbox: collections.deque[tuple[bytes, list[int]]] = collections.deque()

    def run(self) -> None:
        ctl_fd, alive_fd = self.ctl.fileno(), self.alive.fileno()
        poller = select.poll()
        poller.register(alive_fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        poller.register(ctl_fd, select.POLLIN)
        while True:
            poller.modify(ctl_fd, select.POLLIN | (select.POLLOUT if self.outbox else 0))
            for fd, events in poller.poll():
                if fd == alive_fd:
                    return self._end_workers()  # the host never writes: readable, it's gone
                if fd == self.wake_r:
                    self._reap()
                elif events & select.POLLOUT and not self._flush():
                    return self._end_workers()
                elif events & (select.POLLIN | select.POLLHUP | select.POLLERR) and not (
                    self._request()
                ):
                    return self._end_workers()  # the host closed the control socket

    def _end_workers(self) -> None:
        """On the way out: reap (and report) the workers that have exited, SIGKILL the
        groups of the others (unreaped: their ids are pinned). Not waited for: whoever
        inherits them reaps them."""
        self._reap()
        for pid in self.workers:
            _kill_group(pid)

    def _flush(self) -> bool:
        while self.outbox:
            data, fds = self.outbox[0]
            try:
                send(self.ctl, data, fds)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self.outbox.popleft()
            _close_fds(tuple(fds))
        return True

    def _reap(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                # WNOWAIT: the exited child stays a zombie, so its pid -- its group's id --
                # can't be reused by an unrelated process while we kill the group.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if pid in self.workers:
                self.workers.discard(pid)
                _kill_group(pid)  # what the worker started and left behind
            _, status = os.waitpid(pid, 0)  # it has exited: returns at once
            code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
            self.outbox.append((pickle.dumps(("exit", pid, code)), []))
            self._flush()

    def _request(self) -> bool:
        try:
            data, fds, truncated = recv(self.ctl, 3)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            _close_fds(tuple(fds))
            return False
        if len(fds) != 3 or truncated:
            _close_fds(tuple(fds))
            reply = ("error", f"received {len(fds)} of the worker's 3 fds ({EMFILE}?)")
            self.outbox.append((pickle.dumps(reply), []))
        else:
            self.outbox.append(self._fork(fds))
        return self._flush()

    def _fork(self, fds: list[int]) -> tuple[bytes, list[int]]:
        # Made before the fork, as multiprocessing's fork start does: the child bootstraps
        # through it (exit status from SystemExit, finalizers, flushing streams).
        proc = multiprocessing.Process(
            target=_worker_core, args=tuple(fds), name=f"pooly:{self.pool_name}"
        )
        try:
            pid = os.fork()
        except OSError as e:
            _close_fds(tuple(fds))
            return pickle.dumps(("error", f"fork() failed: {e}")), []
        if pid == 0:
            code = 1
            try:
                _lead_own_group()  # first: see below
                self._become_worker()
                code = proc._bootstrap()  # type: ignore[attr-defined]
            finally:
                os._exit(code)
        _close_fds(tuple(fds))
        # The worker's own process group, made from this side too: it exists before the host
        # hears of the pid (nothing kills a group not made yet), whichever process runs first.
        try:
            os.setpgid(pid, pid)
        except OSError:  # (the child did it; or it has exited already)
            pass
        self.workers.add(pid)
        try:
            # Race-free: only this process reaps the child, and it has not yet.
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid is its own
            return pickle.dumps(("error", f"pidfd_open() failed: {e}")), []
        return pickle.dumps(("forked", pid)), [pidfd]

    def _become_worker(self) -> None:
        """In the forked child: drop everything of the zygote's, restore signal dispositions."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for _, fds in self.outbox:
            _close_fds(tuple(fds))
        self.outbox.clear()
        self.ctl.close()
        self.alive.close()
        _close_fds(tuple(self.private))
