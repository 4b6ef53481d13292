"""Worker processes: one OS process per worker, each with its own channel.

The parent side (:class:`WorkerProcess`) is a supervisor :class:`~pooly._supervisor.Child`;
the child side (:func:`_worker_main`) constructs the user's object and serves calls on it.
A call goes from the consumer's thread straight down the worker's own pipes and back; no
relay thread stands in between::

    consumer thread                        worker process (main thread)
    ---------------                        ----------------------------
    dumps((method, args, kwargs))
    write(req_w) --------------------->    read(req_r) -> loads -> obj.method(...)
    read(rep_r) <----------------------    write(rep_w) <- dumps((OK, result) | (ERR, ...))
    loads -> result, or re-raise exc

    supervisor loop thread                 worker watchdog thread
    ----------------------                 ----------------------
    wait(sentinel) -> reap(): exitcode;    read(alive pipe) -> EOF (host died)
      the channel fds are pointed at         -> os._exit: no orphan outlives its host
      dead pipes (numbers stay valid)

Frames are an 8-byte little-endian length and a pickle. Two pipes rather than a socketpair:
a round trip over pipes measured ~2.7 us cheaper here. A worker's death is seen two ways,
both event-driven: EOF on its reply pipe (the consumer's read returns at once) and the process
sentinel (the supervisor's wait wakes). EOF needs the worker to be the only writer of its
reply pipe, so no other process may keep a copy: pipes are close-on-exec, the host closes
its channel fds in any child it forks (and a worker in any child *it* forks), and a child
forked while another worker is being started closes that worker's ends too.

A worker ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and deciding
what to stop is the host's business.
"""

from __future__ import annotations

import _thread
import functools
import inspect
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import select
import signal
import struct
import threading
import traceback
import weakref
from multiprocessing.context import BaseContext
from typing import Any

from ._errors import (
    PoolyError,
    RemoteTraceback,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._process import (
    _FDS_LOCK,
    _HOST_FDS,
    _START_LOCK,
    _STARTING_FDS,
    _dead_pipe,
)
from ._supervisor import CancelToken, ExitReason, wait_timeout

__all__ = ("WorkerProcess", "make_payload")

_HDR = struct.Struct("<Q")
_HDR_SIZE = _HDR.size
_PROTO = pickle.HIGHEST_PROTOCOL
_OK, _ERR = 0, 1
_READ_CHUNK = 1 << 16


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


# ---------------------------------------------------------------------- framing


def _send(fd: int, data: bytes) -> None:
    n = len(data)
    if n <= _READ_CHUNK:
        buf = _HDR.pack(n) + data
        sent = os.write(fd, buf)  # a pipe takes up to 64 KiB in one write
        if sent != len(buf):
            _write_all(fd, memoryview(buf)[sent:])
    else:
        _write_all(fd, memoryview(_HDR.pack(n)))
        _write_all(fd, memoryview(data))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _recv(fd: int) -> bytes | bytearray | memoryview | None:
    """Read one frame; None on EOF (the peer is gone)."""
    return _recv_rest(fd, os.read(fd, _READ_CHUNK))


def _recv_rest(fd: int, chunk: bytes) -> bytes | bytearray | memoryview | None:
    """Finish reading a frame whose first read returned ``chunk``."""
    while len(chunk) < _HDR_SIZE:
        if not chunk:
            return None
        more = os.read(fd, _READ_CHUNK)
        if not more:
            return None
        chunk += more
    (n,) = _HDR.unpack_from(chunk)
    have = len(chunk) - _HDR_SIZE
    if have == n:
        return memoryview(chunk)[_HDR_SIZE:]
    buf = bytearray(n)
    buf[:have] = memoryview(chunk)[_HDR_SIZE:]
    view = memoryview(buf)[have:]
    while view:
        k = os.readv(fd, [view])
        if k == 0:
            return None
        view = view[k:]
    return buf


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
        exc = pickle.loads(exc_bytes) if exc_bytes is not None else PoolyError(summary)
    except Exception as e:
        exc = PoolyError(f"{summary} (the exception could not be rebuilt here: {e!r})")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _watch_host(alive_fd: int) -> None:
    """Worker watchdog thread: the host holds the write end; EOF means the host is gone."""
    while True:
        if not os.read(alive_fd, 1):
            os._exit(0)


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
    """Entry point of a worker process (runs in the worker's main thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rfd, wfd, afd = req.fileno(), rep.fileno(), alive.fileno()
    # A child this worker forks must not keep the channel open (it would hide our death).
    os.register_at_fork(after_in_child=functools.partial(_close_fds, (rfd, wfd, afd)))
    # _thread, not threading: a Thread.start() waits for the new thread to be scheduled,
    # which cost ~1 ms of every worker start here.
    _thread.start_new_thread(_watch_host, (afd,))
    init = _recv(rfd)
    if init is None:
        return
    try:
        cls, args, kwargs = pickle.loads(init)
        obj = cls(*args, **kwargs)
    except Exception as e:
        _send(wfd, _pack_error(e, "the worker constructor"))
        return
    _send(wfd, pickle.dumps(("ready", os.getpid(), _public_methods(obj)), _PROTO))
    del init
    _serve(obj, rfd, wfd)


def _serve(obj: object, rfd: int, wfd: int) -> None:
    """The worker's loop: one frame in, one frame out, until the host closes the channel.

    The common case (a small frame read in one go) is inlined: each Python call saved here
    is paid on every round trip.
    """
    loads, dumps, read, write = pickle.loads, pickle.dumps, os.read, os.write
    pack, unpack_from, hdr_size, chunk_size = _HDR.pack, _HDR.unpack_from, _HDR_SIZE, _READ_CHUNK
    while True:
        chunk = read(rfd, chunk_size)
        if len(chunk) > hdr_size and unpack_from(chunk)[0] == len(chunk) - hdr_size:
            data: bytes | bytearray | memoryview = memoryview(chunk)[hdr_size:]
        else:
            rest = _recv_rest(rfd, chunk)
            if rest is None:
                return  # the host closed our channel: a graceful stop
            data = rest
        name = "?"
        try:
            name, args, kwargs = loads(data)
            if name[0] == "_":
                raise AttributeError(f"{name!r} is private; only public methods are callable")
            result = getattr(obj, name)(*args, **kwargs)
        except Exception as e:
            out = _pack_error(e, f"method {name}()")
        else:
            try:
                out = dumps((_OK, result), _PROTO)
            except Exception as e:
                err = TypeError(f"the result of {name}() could not be pickled: {e}")
                err.__cause__ = e
                out = _pack_error(err, f"method {name}()")
        del data, chunk
        n = len(out)
        if n <= chunk_size:
            buf = pack(n) + out
            sent = write(wfd, buf)
            if sent != len(buf):  # a signal interrupted a large write part-way
                _write_all(wfd, memoryview(buf)[sent:])
        else:
            _send(wfd, out)


# ---------------------------------------------------------------------- parent side


class WorkerProcess:
    """The host's end of one worker process; a supervisor child.

    ``call`` runs in the consumer's thread (one at a time: the lease serialises calls);
    ``terminate``/``kill``/``reap`` run in the supervisor's loop thread. The channel fds are
    never closed while the object lives: stopping and reaping point them at dead pipes
    instead (see :func:`_dead_pipe`); they are closed when the object is collected.
    """

    __slots__ = (
        "__weakref__",
        "_poll",
        "cls_name",
        "desynced",
        "exitcode",
        "exited",
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
        proc: multiprocessing.process.BaseProcess,
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
        self.stopping = False
        self.desynced = False  # a call was interrupted mid-flight: a reply may be pending
        # Owned by the pool (under its lock): its child id, current lease, overflow or core.
        self.wid: Any = None
        self.lease: Any = None
        self.overflow = False
        self._poll = select.poll()
        self._poll.register(rep_r, select.POLLIN)
        weakref.finalize(self, _release_fds, (req_w, rep_r))

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
        cancel: CancelToken | None = None,
    ) -> WorkerProcess:
        """Start a worker process and wait until its object is constructed.

        Raises :class:`WorkerStartError` (with the worker-side traceback as cause) if the
        class can't be imported, the constructor raises or exits, it takes longer than
        ``start_timeout`` seconds, or ``cancel`` fires first (its pool is stopping); the
        process is gone by then.
        """
        me = threading.get_ident()
        with _FDS_LOCK:
            req_r, req_w = os.pipe()  # host -> worker
            rep_r, rep_w = os.pipe()  # worker -> host
            _HOST_FDS.update((req_w, rep_r))
            alive_dup = os.dup(alive_fd)
            for fd in (req_r, rep_w, alive_dup):
                _STARTING_FDS[fd] = me
        ends = [
            multiprocessing.connection.Connection(req_r, writable=False),
            multiprocessing.connection.Connection(rep_w, readable=False),
            multiprocessing.connection.Connection(alive_dup, writable=False),
        ]
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=tuple(ends), name=f"pooly:{pool_name}", daemon=False
        )
        try:
            with _START_LOCK:
                proc.start()
        except BaseException:
            _release_fds((req_w, rep_r))
            raise
        finally:
            for c in ends:
                _STARTING_FDS.pop(c.fileno(), None)
                c.close()
        # Pooly reaps its own workers; multiprocessing's global bookkeeping would poll
        # their sentinels from other threads (and race with our reaping) otherwise.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        try:
            return cls._handshake(
                proc, req_w, rep_r, payload, pool_name, cls_name, start_timeout, cancel
            )
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
            try:
                _send(req_w, payload)
                watch: list[Any] = [rep_r, proc.sentinel]
                if cancel is not None:
                    watch.append(cancel)
                ready: list[Any] = multiprocessing.connection.wait(watch, wait_timeout(timeout))
                if cancel is not None and cancel in ready and rep_r not in ready:
                    raise WorkerStartError(
                        f"{what}: its start was cancelled (the pool is stopping); it was killed",
                        pid=pid,
                    )
                if ready:
                    reply = _recv(rep_r)
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

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``name(*args, **kwargs)`` in the worker and return its result.

        Raises the worker method's own exception (cause: :class:`RemoteTraceback`),
        :class:`WorkerCrashed` if the worker died, ``TypeError`` if the arguments can't be
        pickled (nothing was sent), :class:`PoolyError` if the result can't be unpickled.
        """
        try:
            data = pickle.dumps((name, args, kwargs), _PROTO)
        except Exception as e:
            raise TypeError(
                f"cannot send the arguments of {self.cls_name}.{name}() to worker pid "
                f"{self.pid}: {e}"
            ) from e
        try:
            n = len(data)
            if n <= _READ_CHUNK:  # the common case, inlined (see _serve)
                buf = _HDR.pack(n) + data
                sent = os.write(self.req_w, buf)
                if sent != len(buf):  # a signal interrupted a large write part-way
                    _write_all(self.req_w, memoryview(buf)[sent:])
            else:
                _send(self.req_w, data)
            chunk = os.read(self.rep_r, _READ_CHUNK)
            if len(chunk) > _HDR_SIZE and _HDR.unpack_from(chunk)[0] == len(chunk) - _HDR_SIZE:
                reply: bytes | bytearray | memoryview | None = memoryview(chunk)[_HDR_SIZE:]
            else:
                reply = _recv_rest(self.rep_r, chunk)
        except OSError:
            reply = None
        except BaseException:
            self.desynced = True  # e.g. KeyboardInterrupt while the worker still works
            raise
        if reply is None:
            raise self.crashed_error(during=f"{name}()")
        try:
            msg = pickle.loads(reply)
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
        if self.stopping:
            cause = "was stopped (its pool is shutting down or dismissed it)"
            advice = "check out a worker again if the pool is still running"
        else:
            cause = f"died with {describe_exit(self.exitcode)}"
            advice = "the pool replaces it; check out a worker again to continue"
        return WorkerCrashed(
            f"worker {self.cls_name} (pid {self.pid}) of pool {self.pool_name!r} {cause}"
            f"{where}; {advice}",
            pid=self.pid,
            exitcode=self.exitcode,
        )

    def looks_alive(self) -> bool:
        """False if the reply pipe shows EOF: the process has exited (or is exiting).

        An idle worker never writes, so any readiness on its reply pipe means it is gone.
        """
        return not self._poll.poll(0)

    # -- supervisor child protocol (supervisor loop thread) --------------------------

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel

    def terminate(self) -> None:
        """Drop our end of the request pipe: the worker reads EOF after its current call."""
        self.stopping = True
        os.dup2(_dead_pipe()[1], self.req_w)

    def kill(self) -> None:
        self.stopping = True
        if not multiprocessing.connection.wait([self.proc.sentinel], 0):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> ExitReason:
        self.proc.join()
        self.exitcode = code = self.proc.exitcode
        self.exited.set()
        dead_r, dead_w = _dead_pipe()
        os.dup2(dead_w, self.req_w)
        os.dup2(dead_r, self.rep_r)
        self.proc.close()
        if self.stopping and code in (0, -signal.SIGKILL, -signal.SIGTERM):
            return ExitReason(True, f"worker pid {self.pid} stopped", code)
        return ExitReason(
            code == 0, f"worker pid {self.pid} exited with {describe_exit(code)}", code
        )

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.cls_name} pid={self.pid} pool={self.pool_name!r}>"


def _release_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        _HOST_FDS.discard(fd)
    _close_fds(fds)


def _end_process(proc: Any, *, kill: bool) -> int | None:
    """Make sure a worker that failed to start is gone and reaped; return its exit code.

    Idempotent: a second call on the same (closed) process returns None.
    """
    try:
        if not kill:
            proc.join(5)
        if proc.exitcode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.join()
        code: int | None = proc.exitcode
    except ValueError:  # already closed by an earlier call
        return None
    proc.close()
    return code
