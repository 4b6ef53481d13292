"""Worker processes: one OS process per worker, each with its own channel.

The parent side (:class:`WorkerProcess`) is a supervisor :class:`~pooly._supervisor.Child`;
the child side (:func:`_worker_core`, on the worker's three fds) constructs the user's object
and serves calls on it. The process is forked by the pool's own fork server for the
"forkserver" start method (:mod:`pooly._zygote`; its handle's sentinel is a pidfd), or made by
multiprocessing for "spawn" and "fork" (:func:`_start_process` is where they part). A call
goes from the consumer's thread straight down the worker's own pipes and back; no relay
thread stands in between::

    consumer thread                        worker process (main thread)
    ---------------                        ----------------------------
    dumps((method, args, kwargs))
    write(req_w) --------------------->    read(req_r) -> loads -> obj.method(...)
    read(rep_r) <----------------------    write(rep_w) <- dumps((OK, result) | (ERR, ...))
    loads -> result, or re-raise exc

    supervisor loop thread                 worker watchdog thread
    ----------------------                 ----------------------
    wait(sentinel) -> reap(): SIGKILL      read(alive pipe) -> EOF (host died)
      its group, exitcode; the channel       -> SIGKILL its own group: no orphan, nor
      fds are pointed at dead pipes          any process it started, outlives its host
      (numbers stay valid)

Frames are an 8-byte little-endian length and a pickle. Two pipes rather than a socketpair:
a round trip over pipes measured ~2.7 us cheaper here. A worker's death is seen two ways,
both event-driven: EOF on its reply pipe (the consumer's read returns at once) and the process
sentinel (the supervisor's wait wakes; with a fork server, a pidfd of the worker itself, so
that server's death is no worker's). EOF needs the worker to be the only writer of its
reply pipe, so no other process may keep a copy: pipes are close-on-exec, the host closes
its channel fds in any child it forks (and a worker in any child *it* forks), and a child
forked while another worker is being started closes that worker's ends too.

A worker's process tree goes with it (issue 7, defect 4). Every worker leads its own process
group, and whatever it starts (``subprocess.Popen`` & co.) joins that group; the group is
SIGKILLed when the worker ends, however it ends::

    how the worker ends            who kills its group            when
    -------------------            -------------------            ----
    crash, kill, stop, timeout     its parent, before reaping it  leader exited, not yet reaped
      (parent = the pool's fork      (pooly._zygote_proc, or        (the zombie pins the group id:
      server, or this host)          WorkerProcess.reap)             no other group can have it)
    host death                     its own watchdog thread,       EOF on the alive pipe
                                   and the pool's fork server     (even if the worker is stuck
                                                                    holding the GIL)
                                   or (fork, spawn) the worker    its last act, if the request
                                   itself on its way out            pipe's EOF came first

A graceful stop stays graceful: the worker reads EOF, returns, and may end its own children
on the way out (when its object is released); only what is left of its group then is
killed (a worker started by multiprocessing does it itself as ``_worker_main`` returns,
before multiprocessing's exit hooks; see :func:`_end_group_on_the_way_out`). A descendant
that leaves the group itself (``setsid``, ``start_new_session=True``) is on its own.

Being its own group, a worker no longer gets what the terminal sends to the foreground group
(Ctrl-C's SIGINT, SIGQUIT, SIGTSTP, a hangup): deciding what to stop is the host's business,
and a host that goes takes its workers with it. It ignores SIGINT all the same (a
``kill -INT`` of a whole tree). As a background group it would be *stopped* by the terminal
if it (or a child) read it, or wrote to it under ``stty tostop``: its stdin is /dev/null (fd 0
too, which children inherit), and it ignores SIGTTIN and SIGTTOU, so terminal I/O behaves as
it did in the foreground group (a read of /dev/tty fails with EIO instead of hanging).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import _thread
import array
import collections
import contextlib
import fcntl
import functools
import inspect
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import select
import signal
import struct
import termios
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from ._errors import (
    PoolyError,
    RemoteTraceback,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._fds import (
    _FDS_LOCK,
    _HOST_FDS,
    _STARTING_FDS,
    HOST,
    _dead_pipe,
    close_process,
    process_fds,
    release,
)
from ._pgroup import (
    _end_group_on_the_way_out,
    _end_own_group,
    _join_tree,
    _lead_own_group,
    _quiet_terminal,
)
from ._process import _START_LOCK
from ._supervisor import KILL_GRACE, CancelToken, ExitReason

if TYPE_CHECKING:
    from ._zygote import Zygote

__all__ = ("ChannelClosed", "ReplyTimeout", "WorkerProcess", "make_payload")

log = logging.getLogger("pooly.worker")

_HDR = struct.Struct("<QQ")  # payload length, request id (echoed in the reply)
_HDR_SIZE = _HDR.size
_PROTO = pickle.HIGHEST_PROTOCOL
_OK, _ERR = 0, 1
_READ_CHUNK = 1 << 16
_MAX_POLL = (2**31 - 1) // 1000  # seconds: poll(2) takes a C int of milliseconds
_CHUNK = "*"  # the method name of a chunk of map() (pooly._dispatch.CHUNK)
#: The method name of a plain function's call by reference (an executor's task): its
#: arguments are the function's pickle and its positional arguments. Not an identifier,
#: so no worker method can be called by it.
_CALL = "!"
#: Functions by their pickle (a module and a name), unpickled once per worker process:
#: looking them up costs more than the rest of a small task's unpickling. Bounded.
_FNS: dict[bytes, Any] = {}
_FNS_MAX = 512


def function_of(ref: bytes) -> Any:
    """The function whose pickle is ``ref`` (cached)."""
    fn = _FNS.get(ref)
    if fn is None:
        if len(_FNS) >= _FNS_MAX:
            _FNS.clear()
        fn = _FNS[ref] = pickle.loads(ref)
    return fn


def make_payload(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle the worker's construction recipe once, in the host, so errors surface early."""
    try:
        return pickle.dumps((cls, args, kwargs), _PROTO)
    except Exception as e:
        raise TypeError(
            f"cannot send worker class {cls.__module__}.{cls.__qualname__} and its "
            f"constructor arguments to a worker process: {e}. The class must be importable "
            "by its module and name (not defined inside a function or interactively), and "
            "its args/kwargs picklable."
        ) from e


class ReplyTimeout(Exception):
    """Internal: :meth:`WorkerProcess.receive` waited its whole timeout; nothing was read."""


class ChannelClosed(Exception):
    """Internal: the worker's channel reached EOF or EPIPE, i.e. the worker process is gone.

    Raised by :meth:`WorkerProcess.call` only, and never reaches users: the lease turns it
    into :class:`WorkerCrashed`. A distinct type, so that a ``WorkerCrashed`` raised *by a
    worker method* (a client of another pool) is never taken for this worker's own death.
    """


# ---------------------------------------------------------------------- framing


# The C functions: signal.getsignal wraps its answer in an enum, ~0.6 us of every call.
_SIGPIPE, _SIG_IGN, _getsignal = int(signal.SIGPIPE), _signal.SIG_IGN, _signal.getsignal
_pdumps, _ploads = pickle.dumps, pickle.loads  # module globals: cheaper than pickle.x

Payload = bytes | bytearray | memoryview
Frame = tuple[int, Payload]  # (request id, pickled payload)


@contextlib.contextmanager
def _no_sigpipe() -> Iterator[None]:
    """Writes inside may meet EPIPE (the reader is gone): ``BrokenPipeError``, never death.

    Python ignores SIGPIPE, but a host may have restored its default (CLI tools do, so
    that ``| head`` ends them quietly): then a write to a dead worker's pipe would kill the
    whole host with exit 141. In that case the writes run with SIGPIPE blocked in this
    thread, and the signal the kernel queued for it is taken off again.
    """
    if _getsignal(_SIGPIPE) is _SIG_IGN:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {_SIGPIPE})
    try:
        yield
    except BrokenPipeError:
        signal.sigtimedwait({_SIGPIPE}, 0)  # the SIGPIPE sent to this thread, if any
        raise
    finally:
        if _SIGPIPE not in old:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _send(fd: int, data: bytes, rid: int = 0) -> None:
    """Write one frame; ``BrokenPipeError`` if the reader is gone (see :func:`_no_sigpipe`)."""
    n = len(data)
    if _getsignal(_SIGPIPE) is not _SIG_IGN:
        with _no_sigpipe():
            _write_all(fd, memoryview(_HDR.pack(n, rid) + data))
    elif n <= _READ_CHUNK:
        buf = _HDR.pack(n, rid) + data
        sent = os.write(fd, buf)  # a pipe takes up to 64 KiB in one write
        if sent != len(buf):
            _write_all(fd, memoryview(buf)[sent:])
    else:
        _write_all(fd, memoryview(_HDR.pack(n, rid)))
        _write_all(fd, memoryview(data))


def _send_within(fd: int, data: bytes, deadline: float, sentinel: int, cancel_fd: int = -1) -> bool:
    """Write one frame (request id 0) by ``deadline`` (monotonic); False if it passed, or
    if ``cancel_fd`` became readable first.

    Gives up with ``BrokenPipeError`` if ``sentinel`` (the peer's) shows it has ended.
    The fd is non-blocking meanwhile, so no write can outlast the deadline.
    """
    view = memoryview(_HDR.pack(len(data), 0) + data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.register(sentinel, select.POLLIN)
    if cancel_fd >= 0:
        poller.register(cancel_fd, select.POLLIN)
    os.set_blocking(fd, False)
    try:
        with _no_sigpipe():
            while view:
                try:
                    view = view[os.write(fd, view) :]
                    continue
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                for ready, _ in poller.poll(math.ceil(left * 1000)):
                    if ready == sentinel:
                        raise BrokenPipeError(f"the reader of fd {fd} has ended")
                    if ready == cancel_fd:
                        return False
            return True
    finally:
        os.set_blocking(fd, True)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _recv(fd: int) -> Frame | None:
    """Read one frame; None on EOF (the peer is gone). Only where one frame is expected."""
    got = _recv_rest(fd, os.read(fd, _READ_CHUNK))
    return None if got is None else (got[0], got[1])


def _recv_rest(fd: int, chunk: bytes) -> tuple[int, Payload, bytes] | None:
    """Finish reading a frame whose first read returned ``chunk``: (request id, payload,
    the bytes read past it -- the start of the next frame, when requests or replies were
    pipelined). None on EOF. Never reads past the frame once its header is in.
    """
    while len(chunk) < _HDR_SIZE:
        if not chunk:
            return None
        more = os.read(fd, _READ_CHUNK)
        if not more:
            return None
        chunk += more
    n, rid = _HDR.unpack_from(chunk)
    end = _HDR_SIZE + n
    if len(chunk) >= end:
        return rid, memoryview(chunk)[_HDR_SIZE:end], chunk[end:]
    have = len(chunk) - _HDR_SIZE
    buf = bytearray(n)
    buf[:have] = memoryview(chunk)[_HDR_SIZE:]
    view = memoryview(buf)[have:]
    while view:
        k = os.readv(fd, [view])  # into the frame's own buffer: never past its end
        if k == 0:
            return None
        view = view[k:]
    return rid, buf, b""


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int) -> int | None:
    """Resident memory (bytes) of process ``pid``, from ``/proc``; None if it can't be
    read (the process is gone, or there is no ``/proc``)."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return None
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- child side


def _public_methods(obj: object) -> list[str]:
    names = []
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            attr = inspect.getattr_static(obj, name)
        except AttributeError:
            continue
        if callable(attr) or isinstance(attr, classmethod | staticmethod):
            names.append(name)
    return names


def _pack_error(e: BaseException, what: str) -> bytes:
    """An error frame: (ERR, pickled exception or None, traceback text, summary).

    The exception travels as its own pickle, so the traceback and a summary reach the host
    even when the exception can't be pickled here or rebuilt there.
    """
    tb = "".join(traceback.format_exception(e))
    summary = f"{what} raised {type(e).__module__}.{type(e).__qualname__}: {e}"
    try:
        exc: bytes | None = pickle.dumps(e, _PROTO)
    except Exception as pe:
        exc, summary = None, f"{summary} (the exception could not be pickled: {pe})"
    return pickle.dumps((_ERR, exc, tb, summary), _PROTO)


def _unpack_error(msg: tuple[Any, ...]) -> BaseException:
    """The exception of an error frame, with its worker-side traceback as ``__cause__``."""
    _, exc_bytes, tb, summary = msg
    exc: BaseException
    try:
        rebuilt = pickle.loads(exc_bytes) if exc_bytes is not None else PoolyError(summary)
    except Exception as e:
        exc = PoolyError(f"{summary} (the exception could not be rebuilt here: {e!r})")
    else:
        if isinstance(rebuilt, BaseException):
            exc = rebuilt
        else:  # its __reduce__ rebuilds something else: say so rather than fail on it
            exc = PoolyError(
                f"{summary} (the exception was rebuilt here as a non-exception "
                f"{type(rebuilt).__module__}.{type(rebuilt).__qualname__}; its __reduce__ "
                "is broken)"
            )
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _watch_host(alive_fd: int) -> None:
    """Worker watchdog thread: the host holds the write end; EOF means the host is gone.

    Then the worker's whole group goes, the worker included (issue 7, defect 4): the
    processes it started must not outlive the host either. A worker stuck in C code that
    holds the GIL can't run this thread; its fork server, which sees the host go too, kills
    the group then (pooly._zygote_proc).
    """
    while True:
        if not os.read(alive_fd, 1):
            _end_own_group()


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _worker_main(
    req: multiprocessing.connection.Connection,
    rep: multiprocessing.connection.Connection,
    alive: multiprocessing.connection.Connection,
) -> None:
    """Entry point of a worker process started by multiprocessing (spawn, fork, and its
    forkserver where the pool has no fork server of its own)."""
    _lead_own_group()
    try:
        _worker_core(req.fileno(), rep.fileno(), alive.fileno())
    finally:
        _end_group_on_the_way_out()


def _worker_core(rfd: int, wfd: int, afd: int) -> None:
    """A worker's life on its request, reply and alive fds (the worker's main thread).

    Shared by every start method: a pool's fork server (pooly._zygote) runs it in the child
    of each fork. The process already leads its own group (see the module docstring).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_terminal()
    # A host gone mid-reply must not kill us silently with SIGPIPE (a fork-started worker
    # inherits the host's disposition): the write fails, and the next read sees EOF.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A child this worker forks must not keep the channel open (it would hide our death).
    os.register_at_fork(after_in_child=functools.partial(_close_fds, (rfd, wfd, afd)))
    # _thread, not threading: a Thread.start() waits for the new thread to be scheduled,
    # which cost ~1 ms of every worker start here.
    _thread.start_new_thread(_watch_host, (afd,))
    init = _recv(rfd)
    if init is None:
        return
    try:
        cls, args, kwargs = pickle.loads(init[1])
        obj = cls(*args, **kwargs)
    except BaseException as e:  # SystemExit too: the host gets the traceback either way
        _send(wfd, _pack_error(e, "the worker constructor"))
        if isinstance(e, Exception):
            return
        raise  # and the exit status it asked for
    _send(wfd, pickle.dumps(("ready", os.getpid(), _public_methods(obj)), _PROTO))
    del init
    _serve(obj, rfd, wfd)


def answer(obj: object, data: Payload) -> bytes:
    """The reply payload to one request (the pickled ``(method, args, kwargs)``): the
    pickled ``(OK, result)``, or an error frame (:func:`_pack_error`). Never raises.

    The whole of a worker's work on a request, wherever the request came from: a worker
    process's loop (:func:`_serve`), or a worker in a Ray actor (:mod:`pooly._ray_actor`).
    """
    name = "?"
    try:
        name, args, kwargs = pickle.loads(data)
        if name[0] == "_":
            raise AttributeError(f"{name!r} is private; only public methods are callable")
        if name == _CALL:  # an executor's task: a function by reference
            name = "task"  # (for messages, then its function's name)
            ref, args = args
            fn = _FNS.get(ref) or function_of(ref)
            name = getattr(fn, "__qualname__", name)
            result = fn(*args, **kwargs)
        elif name == _CHUNK:  # a chunk of map(): one method over many arguments
            name, items = args
            if name[:1] == "_":
                raise AttributeError(f"{name!r} is private; only public methods are callable")
            fn = getattr(obj, name)
            result = [fn(*a) for a in items]
        else:
            result = getattr(obj, name)(*args, **kwargs)
    except BaseException as e:  # SystemExit (argparse!) too: the caller's, not a crash
        return _pack_error(e, f"method {name}()")
    try:
        return pickle.dumps((_OK, result), _PROTO)
    except BaseException as e:  # (SystemExit from a __reduce__ too: not a crash)
        # The pickling error itself, as the stdlib's executor reports it.
        e.add_note(f"(pooly: the result of {name}() could not be pickled in the worker)")
        return _pack_error(e, f"pickling the result of method {name}()")


def _serve(obj: object, rfd: int, wfd: int) -> None:
    """The worker's loop: one frame in, one frame out, until the host closes the channel.

    Requests are served one at a time, in the order they arrive; each reply carries its
    request's id. So a request queued behind one still running has provably not started.
    The common case (a small frame read in one go) is inlined: each Python call saved here
    is paid on every round trip.
    """
    read, write, answer_ = os.read, os.write, answer
    pack, unpack_from, hdr_size, chunk_size = _HDR.pack, _HDR.unpack_from, _HDR_SIZE, _READ_CHUNK
    ahead = b""  # bytes of the next request(s), read with the last one (pipelining)
    while True:
        chunk = ahead or read(rfd, chunk_size)
        n, rid = unpack_from(chunk) if len(chunk) >= hdr_size else (-hdr_size - 1, 0)
        if n == len(chunk) - hdr_size:
            data: Payload = memoryview(chunk)[hdr_size:]
            ahead = b""
        else:
            frame = _recv_rest(rfd, chunk)
            if frame is None:
                return  # the host closed our channel: a graceful stop
            rid, data, ahead = frame
        out = answer_(obj, data)
        del data, chunk  # nothing of this request outlives it while the worker waits
        n = len(out)
        if n <= chunk_size:
            buf = pack(n, rid) + out
            sent = write(wfd, buf)
            if sent != len(buf):  # a signal interrupted a large write part-way
                _write_all(wfd, memoryview(buf)[sent:])
        else:
            _send(wfd, out, rid)


# ---------------------------------------------------------------------- parent side


def _unread(fd: int) -> int:
    """Bytes in the pipe ``fd`` (either end) that its reader has not read (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


class WorkerProcess:
    """The host's end of one worker process; a supervisor child.

    ``call`` runs in the consumer's thread (one at a time: the lease serialises calls);
    ``terminate``/``kill``/``reap`` run in the supervisor's loop thread. Stopping and reaping
    point the channel fds at dead pipes (see :func:`_dead_pipe`), so their numbers stay valid
    for a consumer thread still in a call; :meth:`release` closes them once the pool knows no
    thread can use them any more (reaped, and no call in flight), else the object's collection
    does.
    """

    __slots__ = (
        "__weakref__",
        "_ahead",
        "_fds_finalizer",
        "_left_unread",
        "_pending",
        "_poll",
        "_rid",
        "broken",
        "calls",
        "cls_name",
        "exitcode",
        "exited",
        "in_task",
        "lease",
        "methods",
        "overflow",
        "pid",
        "pool_name",
        "proc",
        "rep_r",
        "req_w",
        "stopping",
        "wid",
    )

    def __init__(
        self,
        proc: Any,  # a multiprocessing process, or a ZygoteProcess
        req_w: int,
        rep_r: int,
        pid: int,
        methods: frozenset[str],
        pool_name: str,
        cls_name: str,
    ) -> None:
        self.proc = proc
        self.req_w = req_w
        self.rep_r = rep_r
        self.pid = pid
        self.methods = methods
        self.pool_name = pool_name
        self.cls_name = cls_name
        self.exitcode: int | None = None
        self.exited = threading.Event()
        self._left_unread: int | None = None  # unread() when it was reaped
        self.stopping = False
        self.broken = False  # a call was interrupted part-way: the channel can't be trusted
        # An executor's task is running in it (pooly._dispatch sets it): a death now is
        # blamed on the task and not counted toward restart intensity (SPEC 4.2).
        self.in_task = False
        self.calls = 0  # calls and tasks sent to it (max_calls recycles it at checkin)
        self._rid = 0  # the last request id sent (0 is the start handshake)
        self._pending: collections.deque[tuple[int, str]] = collections.deque()
        self._ahead = b""  # bytes of the next reply(s), read with the last (pipelining)
        # Owned by the pool (under its lock): its child id, current lease, overflow or core.
        self.wid: Any = None
        self.lease: Any = None
        self.overflow = False
        self._poll = select.poll()
        self._poll.register(rep_r, select.POLLIN)
        # (owner: in a forked child these numbers are closed already, maybe reused)
        self._fds_finalizer = weakref.finalize(self, release, (req_w, rep_r), HOST.gen)
        self._fds_finalizer.atexit = False  # at exit, the Pooly's hook stops workers first

    def release(self) -> None:
        """Close the channel fds now (idempotent). Only once reaped, and once no thread can
        be in a call, send or receive on them (the pool decides: the worker is unleased, or
        its lease has ended and no call through it is in flight); a use after this fails as
        a dead channel, never on a recycled fd number."""
        if not self._fds_finalizer.alive:
            return
        dead = select.poll()
        dead.register(_dead_pipe()[0], select.POLLIN)  # reads EOF: not alive
        self._poll = dead
        self.req_w = self.rep_r = -1  # EBADF (a dead channel) for any stray use
        self._fds_finalizer()

    # -- starting ------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        ctx: BaseContext,
        payload: bytes,
        alive_fd: int,
        pool_name: str,
        cls_name: str,
        start_timeout: float,
        zygote: Zygote | None = None,
        cancel: CancelToken | None = None,
    ) -> WorkerProcess:
        """Start a worker process (forked by ``zygote`` if given, else by ``ctx``) and wait
        until its object is constructed.

        Raises :class:`WorkerStartError` (with the worker-side traceback as cause) if the
        class can't be imported, the constructor raises or exits, it takes longer than
        ``start_timeout`` seconds, or ``cancel`` fires first (its pool is stopping); the
        process is gone by then.
        """
        what = f"worker {cls_name} of pool {pool_name!r}"
        try:
            _dead_pipe()  # made now, not at the first stop: a host out of fds still stops
            # No fork (another thread starting a worker) between making the ends and
            # registering them: a child that kept this worker's reply end would hide its
            # death. The host's ends close in every child; the worker's own in every child
            # but the one this thread forks.
            with _FDS_LOCK:
                req_r, req_w = os.pipe()  # host -> worker
                try:
                    rep_r, rep_w = os.pipe()  # worker -> host
                except BaseException:
                    _close_fds((req_r, req_w))
                    raise
                _HOST_FDS.update((req_w, rep_r))
                me = threading.get_ident()
                _STARTING_FDS[req_r] = _STARTING_FDS[rep_w] = me
        except OSError as e:
            raise WorkerStartError(f"could not start {what}: {e}") from e
        try:
            proc = _start_process(ctx, zygote, (req_r, rep_w), alive_fd, pool_name, start_timeout)
        except OSError as e:
            _release_fds((req_w, rep_r))
            raise WorkerStartError(f"could not start {what}: {e}") from e
        except BaseException:
            _release_fds((req_w, rep_r))
            raise
        try:
            return cls._handshake(
                proc, req_w, rep_r, payload, pool_name, cls_name, start_timeout, cancel
            )
        except OSError as e:
            _release_fds((req_w, rep_r))
            raise WorkerStartError(f"could not start {what}: {e}") from e
        except BaseException:
            _release_fds((req_w, rep_r))
            raise

    @classmethod
    def _handshake(
        cls,
        proc: Any,
        req_w: int,
        rep_r: int,
        payload: bytes,
        pool_name: str,
        cls_name: str,
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> WorkerProcess:
        pid = proc.pid
        what = f"worker {cls_name} (pid {pid}) of pool {pool_name!r}"
        reply: bytes | bytearray | memoryview | None = None
        try:
            deadline = time.monotonic() + min(timeout, _MAX_POLL)
            # (Out of it, out of fds: an OSError for start() to report, not a worker's death.)
            cancel_fd = cancel.fileno() if cancel is not None else -1
            try:
                # A worker stuck while bootstrapping never reads: a payload over what a pipe
                # holds must not block us past start_timeout (nor past a cancel).
                sent = _send_within(req_w, payload, deadline, proc.sentinel, cancel_fd)
                watch: list[Any] = [rep_r, proc.sentinel]
                if cancel is not None:
                    watch.append(cancel)
                left = max(0.0, deadline - time.monotonic())
                ready: list[Any] = multiprocessing.connection.wait(watch, left) if sent else []
                if cancel is not None and cancel.cancelled and rep_r not in ready:
                    raise WorkerStartError(
                        f"{what}: its start was cancelled (the pool is stopping); it was killed",
                        pid=pid,
                    )
                if ready:
                    frame = _recv(rep_r)
                    reply = None if frame is None else frame[1]
                else:
                    raise WorkerStartError(
                        f"{what} did not finish starting within start_timeout={timeout:g}s; "
                        "it was killed",
                        pid=pid,
                    )
            except OSError:
                reply = None
            if reply is None:
                code = _end_process(proc, kill=False)
                raise WorkerStartError(
                    f"{what} exited during start with {describe_exit(code)} (see its stderr)",
                    pid=pid,
                    exitcode=code,
                )
            msg = pickle.loads(reply)
            if msg[0] == "ready":
                return cls(proc, req_w, rep_r, msg[1], frozenset(msg[2]), pool_name, cls_name)
            error = _unpack_error(msg)
            code = _end_process(proc, kill=False)
            raise WorkerStartError(
                f"{what} failed to start: {type(error).__name__}: {error}",
                pid=pid,
                exitcode=code,
            ) from error.__cause__
        except BaseException:
            _end_process(proc, kill=True)  # whatever went wrong, no process is left behind
            raise

    # -- the data path (consumer's thread) -----------------------------------------
    #
    # A call is a send and a receive. Requests carry ids and are served one at a time, in
    # order: several may be sent ahead (pipelined), and a reply nobody waits for any more
    # (its caller gave up at a deadline) is read and dropped by the next receive. A call
    # interrupted part-way (KeyboardInterrupt, an async exception) may have left half a
    # frame on either pipe: the channel is then ``broken`` and the worker must not be used
    # again (the lease kills it).

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``name(*args, **kwargs)`` in the worker and return its result.

        Raises the worker method's own exception (cause: :class:`RemoteTraceback`),
        :class:`ChannelClosed` if the worker died, ``TypeError`` if the arguments can't be
        pickled (nothing was sent), :class:`PoolyError` if the result can't be unpickled.
        """
        if self._pending:
            return self.receive(self.send(name, args, kwargs))
        try:  # inlined, as the rest of this fast path: each Python call costs ~0.1 us here
            data = _pdumps((name, args, kwargs), _PROTO)
        except Exception:
            data = self._dumps(name, args, kwargs)  # raises the explanatory TypeError
        rid = self._rid + 1
        self._rid = rid
        try:
            n = len(data)
            if n <= _READ_CHUNK and _getsignal(_SIGPIPE) is _SIG_IGN:  # common case, inlined
                buf = _HDR.pack(n, rid) + data
                sent = os.write(self.req_w, buf)
                if sent != len(buf):  # a signal interrupted a large write part-way
                    _write_all(self.req_w, memoryview(buf)[sent:])
            else:
                _send(self.req_w, data, rid)
            chunk = os.read(self.rep_r, _READ_CHUNK)
            size = len(chunk) - _HDR_SIZE
            if size >= 0 and _HDR.unpack_from(chunk) == (size, rid):
                frame: Frame | None = (rid, memoryview(chunk)[_HDR_SIZE:])
            else:  # (nothing else is pending: no other reply can follow this one)
                got = _recv_rest(self.rep_r, chunk)
                frame = None if got is None else (got[0], got[1])
        except OSError:
            frame = None
        except BaseException:
            self.broken = True  # e.g. KeyboardInterrupt while the worker still works
            raise
        if frame is None:
            raise ChannelClosed(name)
        if frame[0] != rid:
            raise self._out_of_step(frame[0], rid)
        try:
            msg = _ploads(frame[1])
        except Exception:
            return self._decode(name, frame[1])  # raises the explanatory PoolyError
        if msg[0] == _OK:
            return msg[1]
        raise _unpack_error(msg)

    def send(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """Send one request without waiting for its reply; return its request id.

        ``TypeError`` if the arguments can't be pickled (nothing was sent);
        :class:`ChannelClosed` if the worker is gone.
        """
        data = self._dumps(name, args, kwargs)
        self._rid = rid = self._rid + 1
        try:
            self._pending.append((rid, name))
            _send(self.req_w, data, rid)
        except OSError:
            raise ChannelClosed(name) from None
        except BaseException:
            self.broken = True
            raise
        return rid

    def send_frame(self, frame: bytes, rid: int, name: str) -> None:
        """Send a request already framed (header with ``rid``, then the pickle), as
        :meth:`send` does; the task dispatcher frames its tasks once, when submitted."""
        try:
            self._pending.append((rid, name))
            if _getsignal(_SIGPIPE) is _SIG_IGN and len(frame) <= _READ_CHUNK:
                sent = os.write(self.req_w, frame)
                if sent != len(frame):
                    _write_all(self.req_w, memoryview(frame)[sent:])
            else:
                with _no_sigpipe():
                    _write_all(self.req_w, memoryview(frame))
        except OSError:
            raise ChannelClosed(name) from None
        except BaseException:
            self.broken = True
            raise

    def receive(self, rid: int, timeout: float | None = None) -> Any:
        """The outcome of request ``rid``: its result, or its exception raised here.

        Replies to requests sent before it that nobody waits for are read and dropped.
        ``timeout``: seconds to wait; :class:`ReplyTimeout` if the reply did not come (then
        nothing was read: the request stays pending, a later receive drops its reply).
        """
        if timeout is None and not self._ahead and len(self._pending) == 1:
            want, name = self._pending[0]  # the common case (one request out), inlined
            if want == rid:
                try:
                    chunk = os.read(self.rep_r, _READ_CHUNK)
                except OSError:
                    chunk = b""
                except BaseException:
                    self.broken = True
                    raise
                size = len(chunk) - _HDR_SIZE
                if size >= 0 and _HDR.unpack_from(chunk) == (size, rid):
                    self._pending.popleft()
                    try:
                        msg = _ploads(memoryview(chunk)[_HDR_SIZE:])
                    except Exception:  # (_decode raises the explanatory PoolyError)
                        return self._decode(name, memoryview(chunk)[_HDR_SIZE:])
                    if msg[0] == _OK:
                        return msg[1]
                    raise _unpack_error(msg)
                self._ahead = chunk
                if not chunk:
                    raise ChannelClosed(name)
        deadline = None if timeout is None or timeout > _MAX_POLL else time.monotonic() + timeout
        while True:
            p = self._pending
            if not p or (p[0][0] != rid and not any(r == rid for r, _ in p)):
                raise ValueError(f"request {rid} is not pending on worker pid {self.pid}")
            if deadline is not None and not self._ahead:
                left = deadline - time.monotonic()
                if not self._poll.poll(max(0, math.ceil(left * 1000)) if left > 0 else 0):
                    raise ReplyTimeout(f"no reply from worker pid {self.pid} within {timeout}s")
            try:
                frame = self._read_frame()
            except OSError:
                frame = None
            except BaseException:
                self.broken = True
                raise
            want, name = self._pending[0]
            if frame is None:
                raise ChannelClosed(name)
            if frame[0] != want:
                raise self._out_of_step(frame[0], want)
            self._pending.popleft()
            if want == rid:
                return self._decode(name, frame[1])
            # else: a reply its caller gave up on; dropped

    def _read_frame(self) -> Frame | None:
        """The next reply, starting with bytes read ahead with the last one."""
        chunk, self._ahead = self._ahead, b""
        got = _recv_rest(self.rep_r, chunk or os.read(self.rep_r, _READ_CHUNK))
        if got is None:
            return None
        rid, payload, self._ahead = got
        return rid, payload

    def _out_of_step(self, got: int, want: int) -> PoolyError:
        self.broken = True  # never to be trusted again
        return PoolyError(
            f"worker pid {self.pid} of pool {self.pool_name!r} answered request {got} where "
            f"{want} was expected; its channel is out of step"
        )

    @property
    def pending(self) -> int:
        """How many requests were sent whose replies have not been read yet."""
        return len(self._pending)

    def _dumps(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            return pickle.dumps((name, args, kwargs), _PROTO)
        except Exception as e:
            raise TypeError(
                f"cannot send the arguments of {self.cls_name}.{name}() to worker pid "
                f"{self.pid}: {e}"
            ) from e

    def _decode(self, name: str, payload: bytes | bytearray | memoryview) -> Any:
        try:
            msg = pickle.loads(payload)
        except Exception as e:
            raise PoolyError(
                f"cannot unpickle the result of {self.cls_name}.{name}() from worker pid "
                f"{self.pid}: {e!r}; the worker is fine and the lease still valid"
            ) from e
        if msg[0] == _OK:
            return msg[1]
        raise _unpack_error(msg)

    def crashed_error(self, during: str | None = None) -> WorkerCrashed:
        """The WorkerCrashed for this worker, waiting (briefly) for its exit status."""
        self.exited.wait(5.0)
        where = f" during {during}" if during else ""
        if during and self.unread():  # (the call is the last request sent: a lease's)
            where = f" before it read {during}, which never started"
        if self.stopping:
            cause = "was stopped (its pool is shutting down or dismissed it)"
            advice = "check out a worker again if the pool is still running"
        else:
            cause = f"died with {self._exit_words()}"
            advice = "the pool replaces it; check out a worker again to continue"
        return WorkerCrashed(
            f"worker {self.cls_name} (pid {self.pid}) of pool {self.pool_name!r} {cause}"
            f"{where}; {advice}",
            pid=self.pid,
            exitcode=self.exitcode,
        )

    def rss(self) -> int | None:
        """The worker's resident memory in bytes (None if it can't be read)."""
        return _rss(self.pid)

    def _exit_words(self) -> str:
        """How it ended, in words (once reaped): ``signal SIGKILL``, ``exit code 3``."""
        return describe_exit(self.exitcode)

    def unread(self) -> int:
        """How many bytes sent to the worker it has not read: they are still in the request
        pipe, which keeps them after the worker is gone (our end holds it open). A request
        with a byte among them never started: a worker reads a whole request before it runs
        it. 0 if that can't be told (an fd already closed)."""
        try:
            now = _unread(self.req_w)
        except OSError:
            now = 0
        # Once reaped, req_w is a dead pipe's (reap): what was left is what reap saw. (Read
        # after the pipe: reap sets it before it swaps the pipe.)
        left = self._left_unread
        return now if left is None else left

    def looks_alive(self) -> bool:
        """False if the reply pipe shows EOF: the process has exited (or is exiting).

        An idle worker never writes, so any readiness on its reply pipe means it is gone.
        """
        return not self._poll.poll(0)

    # -- supervisor child protocol (supervisor loop thread) --------------------------

    @property
    def sentinel(self) -> int:
        sentinel: int = self.proc.sentinel
        return sentinel

    def terminate(self) -> None:
        """Drop our end of the request pipe: the worker reads EOF after its current call."""
        self.stopping = True
        os.dup2(_dead_pipe()[1], self.req_w)

    def kill(self) -> None:
        self.stopping = True
        if not multiprocessing.connection.wait([self.proc.sentinel], 0):
            self.proc.kill()

    def reap(self) -> ExitReason:
        """Wait for the process to end (it has: the sentinel fired), kill what is left of
        its group (issue 7, defect 4), reap it."""
        _join_tree(self.proc)
        self.exitcode = code = self.proc.exitcode
        # Read before ``exited`` is set: whoever reads the task's reply wakes on it and
        # clears ``in_task`` as it gives the worker back.
        in_task = self.in_task
        if self.stopping and code in (0, -signal.SIGKILL, -signal.SIGTERM):
            reason = ExitReason(True, f"worker pid {self.pid} stopped", code)
        elif in_task:  # killed by the task it ran: the task's failure, not the pool's
            reason = ExitReason(
                False,
                f"worker pid {self.pid} exited with {self._exit_words()} while running a task",
                code,
                counted=False,
            )
        else:
            reason = ExitReason(
                code == 0, f"worker pid {self.pid} exited with {self._exit_words()}", code
            )
        dead_r, dead_w = _dead_pipe()
        if not self.stopping:  # (terminate() swapped the pipe already)
            with contextlib.suppress(OSError):
                self._left_unread = _unread(self.req_w)
        os.dup2(dead_w, self.req_w)
        if not in_task:  # (else the task's reader still reads its last replies)
            os.dup2(dead_r, self.rep_r)
        self.exited.set()
        close_process(self.proc)
        return reason

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.cls_name} pid={self.pid} pool={self.pool_name!r}>"


def _start_process(
    ctx: BaseContext,
    zygote: Zygote | None,
    channel: tuple[int, int],
    alive_fd: int,
    pool_name: str,
    timeout: float,
) -> Any:
    """Start the process of a worker on its ends of the ``channel`` (req_r, rep_w), closed
    here whatever happens; return its handle (``pid``, ``sentinel``, ``exitcode``, ``join``,
    ``kill``, ``close``: a multiprocessing process, or a ZygoteProcess)."""
    me = threading.get_ident()
    ends: tuple[int, ...] = channel
    with _FDS_LOCK:  # a child forked meanwhile by another thread must not keep them
        try:
            ends += (os.dup(alive_fd),)
        except BaseException:
            for fd in ends:
                _STARTING_FDS.pop(fd, None)  # (registered by the caller)
            _close_fds(ends)
            raise
        for fd in ends:
            _STARTING_FDS[fd] = me
    if zygote is not None:
        try:
            return zygote.spawn(ends, timeout)
        finally:
            with _FDS_LOCK:  # no fork between unlisting and closing them (numbers are reused)
                for fd in ends:
                    _STARTING_FDS.pop(fd, None)
                _close_fds(ends)
    conns = [
        multiprocessing.connection.Connection(ends[0], writable=False),
        multiprocessing.connection.Connection(ends[1], readable=False),
        multiprocessing.connection.Connection(ends[2], writable=False),
    ]
    try:
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=tuple(conns), name=f"pooly:{pool_name}", daemon=False
        )
        # _START_LOCK: Popen makes pipes around its fork, one start at a time. _FDS_LOCK: no
        # fork (the user's, in another thread) between making its pipes and listing them.
        with _START_LOCK, _FDS_LOCK:
            proc.start()
            # Both listed, not trimmed (as the fork server's are): the worker's user code
            # may ask multiprocessing.parent_process().is_alive(), which reads the other.
            _HOST_FDS.update(process_fds(proc))
    finally:
        with _FDS_LOCK:  # no fork between unlisting and closing them (numbers are reused)
            for c in conns:
                _STARTING_FDS.pop(c.fileno(), None)
                c.close()
    # Pooly reaps its own workers; multiprocessing's global bookkeeping would poll
    # their sentinels from other threads (and race with our reaping) otherwise.
    multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
    return proc


def _release_fds(fds: tuple[int, ...]) -> None:
    with _FDS_LOCK:  # no fork between unlisting and closing them (numbers are reused)
        for fd in fds:
            _HOST_FDS.discard(fd)
        _close_fds(fds)


def _trim_process_fds(proc: Any) -> list[int]:
    """Right after a spawn ``proc.start()`` of pooly's own process (a fork server; under
    ``_FDS_LOCK``): close the fd multiprocessing keeps beside the sentinel -- the
    preparation data pipe's write end, written in full by then, which the child goes on to
    watch as its parent sentinel (a fork server watches the alive pipe instead) -- one fd
    less per process; return the fds left, to be listed."""
    finalizer = getattr(getattr(proc, "_popen", None), "finalizer", None)
    fds = process_fds(proc)
    if finalizer is None or len(fds) != 2 or fds[0] != proc.sentinel:
        return fds  # not the shape we know: leave it to multiprocessing
    finalizer._args = (proc.sentinel,)
    _close_fds((fds[1],))
    return [proc.sentinel]


def _end_process(proc: Any, *, kill: bool) -> int | None:
    """Make sure a worker that failed to start is gone and reaped; return its exit code.

    Idempotent: a second call on the same (closed) process returns None.
    """
    try:
        # (Not proc.exitcode to ask: multiprocessing's reaps the worker, group left alive.)
        if kill or not _join_tree(proc, 5):
            proc.kill()
            _join_tree(proc, KILL_GRACE)
        code: int | None = proc.exitcode
    except ValueError:  # already closed by an earlier call
        return None
    if code is None:  # not even a SIGKILL ended it in time: no wait without a deadline
        log.error("worker pid %s did not end within %gs of being killed", proc.pid, KILL_GRACE)
        return None
    close_process(proc)
    return code
