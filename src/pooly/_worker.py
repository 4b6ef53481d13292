"""Worker processes: one OS process per worker, each with its own channel.

The parent side (:class:`WorkerProcess`) is a supervisor :class:`~pooly._supervisor.Child`;
the child side (:func:`_worker_main`) constructs the user's object and serves calls on it.
A call goes from the consumer's thread straight down the worker's own socket and back; no
relay thread stands in between::

    consumer thread                        worker process (main thread)
    ---------------                        ----------------------------
    dumps((method, args, kwargs))
    write(sock) ---------------------->    read -> loads -> obj.method(*args, **kwargs)
    read(sock)  <----------------------    write <- dumps((OK, result) | (ERR, exc, tb))
    loads -> result, or re-raise exc

    supervisor loop thread                 worker watchdog thread
    ----------------------                 ----------------------
    wait(sentinel) -> reap():              read(alive pipe) -> EOF (host died)
      exitcode; shutdown(sock) wakes a       -> os._exit: no orphan outlives its host
      consumer blocked in read

Frames are an 8-byte little-endian length and a pickle. Worker exit is seen two ways, both
event-driven: EOF on the socket (the consumer's read returns at once) and the process
sentinel (the supervisor's wait wakes). A worker ignores SIGINT: Ctrl-C in a terminal reaches
the whole process group, and deciding what to stop is the host's business.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import select
import signal
import socket
import struct
import threading
import traceback
from multiprocessing.context import BaseContext
from typing import Any

from ._errors import (
    PoolyError,
    RemoteTraceback,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._supervisor import ExitReason

__all__ = ("WorkerProcess", "default_start_method", "make_payload", "preload_forkserver")

_HDR = struct.Struct("<Q")
_HDR_SIZE = _HDR.size
_PROTO = pickle.HIGHEST_PROTOCOL
_OK, _ERR = 0, 1
_READ_CHUNK = 1 << 16

#: File descriptors the host holds for its workers (socket ends, alive pipes). A process forked
#: from the host (the "fork" start method, or the user's own os.fork) closes them at once, so
#: that no other process keeps a worker's channel or a pool's alive pipe open. Process-wide
#: by nature, like fork itself; set add/discard are atomic under the GIL, so the at-fork hook
#: needs no lock (a lock held by another thread at fork time would deadlock the child).
_HOST_FDS: set[int] = set()


def _close_host_fds_after_fork() -> None:
    for fd in list(_HOST_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HOST_FDS.clear()


os.register_at_fork(after_in_child=_close_host_fds_after_fork)


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
        view = memoryview(_HDR.pack(n) + data)
    else:
        _write_all(fd, memoryview(_HDR.pack(n)))
        view = memoryview(data)
    _write_all(fd, view)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _recv(fd: int) -> bytes | bytearray | None:
    """Read one frame; None on EOF (the peer is gone)."""
    chunk = os.read(fd, _READ_CHUNK)
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
        return chunk[_HDR_SIZE:]
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
    tb = "".join(traceback.format_exception(e))
    try:
        return pickle.dumps((_ERR, e, tb), _PROTO)
    except Exception as pe:
        err = PoolyError(
            f"{what} raised {type(e).__module__}.{type(e).__qualname__}: {e} "
            f"(the exception itself could not be pickled: {pe})"
        )
        return pickle.dumps((_ERR, err, tb), _PROTO)


def _watch_host(alive_fd: int) -> None:
    """Worker watchdog thread: the host holds the write end; EOF means the host is gone."""
    while True:
        if not os.read(alive_fd, 1):
            os._exit(0)


def _worker_main(sock: socket.socket, alive: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process (runs in the worker's main thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_watch_host, args=(alive.fileno(),), daemon=True, name="pooly-watchdog"
    ).start()
    fd = sock.fileno()
    init = _recv(fd)
    if init is None:
        return
    try:
        cls, args, kwargs = pickle.loads(init)
        obj = cls(*args, **kwargs)
    except Exception as e:
        _send(fd, _pack_error(e, "the worker constructor"))
        return
    _send(fd, pickle.dumps(("ready", os.getpid(), _public_methods(obj)), _PROTO))
    del init
    _serve(obj, fd)


def _serve(obj: object, fd: int) -> None:
    loads, dumps = pickle.loads, pickle.dumps
    while True:
        data = _recv(fd)
        if data is None:
            return  # the host closed our channel: a graceful stop
        name = "?"
        try:
            name, args, kwargs = loads(data)
            if name.startswith("_"):
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
        del data
        _send(fd, out)


# ---------------------------------------------------------------------- parent side


class WorkerProcess:
    """The host's end of one worker process; a supervisor child.

    ``call`` runs in the consumer's thread; ``terminate``/``kill``/``reap`` in the
    supervisor's loop thread. ``call_lock`` serialises use of the channel: a call holds it,
    and ``reap`` takes it before closing the socket, so a consumer never reads from a
    recycled fd.
    """

    __slots__ = (
        "_poll",
        "call_lock",
        "cls_name",
        "desynced",
        "exitcode",
        "exited",
        "fd",
        "lease",
        "methods",
        "overflow",
        "pid",
        "pool_name",
        "proc",
        "sock",
        "stopping",
        "wid",
    )

    def __init__(
        self,
        proc: multiprocessing.process.BaseProcess,
        sock: socket.socket,
        pid: int,
        methods: frozenset[str],
        pool_name: str,
        cls_name: str,
    ) -> None:
        self.proc = proc
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.methods = methods
        self.pool_name = pool_name
        self.cls_name = cls_name
        self.exitcode: int | None = None
        self.exited = threading.Event()
        self.call_lock = threading.Lock()
        self.stopping = False
        self.desynced = False  # a call was interrupted mid-flight: a reply may be pending
        # Owned by the pool (under its lock): its child id, current lease, overflow or core.
        self.wid: Any = None
        self.lease: Any = None
        self.overflow = False
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

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
    ) -> WorkerProcess:
        """Start a worker process and wait until its object is constructed.

        Raises :class:`WorkerStartError` (with the worker-side traceback as cause) if the
        class can't be imported, the constructor raises or exits, or it takes longer than
        ``start_timeout`` seconds; the process is gone by then.
        """
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _HOST_FDS.add(parent_sock.fileno())
        alive = multiprocessing.connection.Connection(os.dup(alive_fd), writable=False)
        proc = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child_sock, alive),
            name=f"pooly:{pool_name}",
            daemon=False,
        )
        try:
            proc.start()
        except BaseException:
            _HOST_FDS.discard(parent_sock.fileno())
            parent_sock.close()
            raise
        finally:
            child_sock.close()
            alive.close()
        # Pooly reaps its own workers; multiprocessing's global bookkeeping would poll
        # their sentinels from other threads (and race with our reaping) otherwise.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        try:
            return cls._handshake(proc, parent_sock, payload, pool_name, cls_name, start_timeout)
        except BaseException:
            _HOST_FDS.discard(parent_sock.fileno())
            parent_sock.close()
            raise

    @classmethod
    def _handshake(
        cls,
        proc: Any,
        sock: socket.socket,
        payload: bytes,
        pool_name: str,
        cls_name: str,
        start_timeout: float,
    ) -> WorkerProcess:
        fd = sock.fileno()
        pid = proc.pid
        what = f"worker {cls_name} (pid {pid}) of pool {pool_name!r}"
        reply: bytes | bytearray | None = None
        try:
            _send(fd, payload)
            if multiprocessing.connection.wait([fd, proc.sentinel], start_timeout):
                reply = _recv(fd)
            else:
                _end_process(proc, kill=True)
                raise WorkerStartError(
                    f"{what} did not finish starting within start_timeout={start_timeout:g}s; "
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
            return cls(proc, sock, msg[1], frozenset(msg[2]), pool_name, cls_name)
        _, exc, tb = msg
        code = _end_process(proc, kill=False)
        raise WorkerStartError(
            f"{what} failed to start: {type(exc).__name__}: {exc}", pid=pid, exitcode=code
        ) from RemoteTraceback(tb)

    # -- the data path (consumer's thread) -----------------------------------------

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``name(*args, **kwargs)`` in the worker; the caller must hold ``call_lock``."""
        try:
            data = pickle.dumps((name, args, kwargs), _PROTO)
        except Exception as e:
            raise TypeError(
                f"cannot send the arguments of {self.cls_name}.{name}() to worker pid "
                f"{self.pid}: {e}"
            ) from e
        try:
            _send(self.fd, data)
            reply = _recv(self.fd)
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
        exc = msg[1]
        raise exc from RemoteTraceback(msg[2])

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
        """False if the channel shows EOF/hang-up: the process has exited (or is exiting).

        An idle worker never writes, so any readiness on its socket means it is gone.
        """
        return not self._poll.poll(0)

    # -- supervisor child protocol (supervisor loop thread) --------------------------

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel

    def terminate(self) -> None:
        """Close our sending side: the worker reads EOF after its current call and exits."""
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

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
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a consumer blocked in read
        except OSError:
            pass
        with self.call_lock:
            _HOST_FDS.discard(self.fd)
            self.sock.close()
            self.fd = -1
        self.proc.close()
        if self.stopping and code in (0, -signal.SIGKILL, -signal.SIGTERM):
            return ExitReason(True, f"worker pid {self.pid} stopped", code)
        return ExitReason(
            code == 0, f"worker pid {self.pid} exited with {describe_exit(code)}", code
        )

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.cls_name} pid={self.pid} pool={self.pool_name!r}>"


def _end_process(proc: Any, *, kill: bool) -> int | None:
    """Make sure a worker that failed to start is gone and reaped; return its exit code."""
    if not kill:
        proc.join(5)
    if proc.exitcode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.join()
    code: int | None = proc.exitcode
    proc.close()
    return code
