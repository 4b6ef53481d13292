"""The observer endpoint of a ``Pooly(observe=...)`` (SPEC 4.5): read-only snapshots of the
tree on a local Unix socket, for ``pooly top`` and :mod:`pooly.observe`.

One :class:`Observer` per observed ``Pooly``: a listening socket (mode 0600, in the user's
runtime directory, named after the host pid), a subscription to the tree's events keeping
the last :data:`RECENT` of them, and one daemon thread serving every connection from a
selector -- never blocking on a client::

    client                         "pooly-observe" thread                 the pools
    ------                         ----------------------                 ---------
    connect, "snapshot\\n" ----->  read one line (deadline, size cap)
                                   status(), stats(), workers -------->   each under its
                                   (RSS read, JSON made: outside) <----   lock, briefly
    <----- one JSON document ----  write it (non-blocking), close

The protocol: a client sends one line naming a request (``snapshot`` or ``events``), gets
one JSON document (UTF-8) and the connection is closed. Any other line gets
``{"error": ...}``. Nothing sent on the socket changes anything: every request only reads.
A client that sends nothing, too much, or reads too slowly is dropped at its deadline
(:data:`CONN_TIMEOUT`); at most :data:`MAX_CONNS` are served at once.

Paths: ``$XDG_RUNTIME_DIR`` when it is set and is a directory of this user's that only they
can enter, else ``/tmp/pooly-<uid>`` (made 0700; refused if it is anyone else's or open to
others). Socket ``pooly-<pid>.sock`` (``pooly-<pid>-<n>.sock`` for a second observed
Pooly of the same process). Removed by ``Pooly.stop()`` and at interpreter exit; one left
by a killed process is stale (nothing listens) and skipped by :func:`pooly.observe.find`.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import math
import os
import selectors
import socket
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._fds import _FDS_LOCK, _HOST_FDS, HOST, Signal

if TYPE_CHECKING:
    from ._bus import Subscription
    from ._pool import Pool

__all__ = (
    "CONN_TIMEOUT",
    "PROTOCOL",
    "RECENT",
    "Observer",
    "check_observe",
    "runtime_dir",
    "socket_pid",
)

log = logging.getLogger("pooly.observe")

#: The snapshot format's version (``"protocol"`` in every document).
PROTOCOL = 1
#: How many of the latest lifecycle events an observer keeps.
RECENT = 50
#: Seconds a connection may take from accept to its last byte written.
CONN_TIMEOUT = 2.0
#: Connections served at once; more are closed at once.
MAX_CONNS = 16
#: The longest request line read (bytes).
MAX_LINE = 256
#: The requests there are (each only reads).
REQUESTS = ("snapshot", "events")

_PREFIX = "pooly-"
_SUFFIX = ".sock"
_SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less its terminating NUL (Linux)


# ---------------------------------------------------------------------- paths


def _private_dir(path: str) -> bool:
    """Whether ``path`` is a real directory of this user's that no one else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o077
        and os.access(path, os.W_OK | os.X_OK)
    )


def runtime_dir(create: bool = False) -> str:
    """The directory observer sockets live in: ``$XDG_RUNTIME_DIR`` if usable (see the
    module docstring), else ``/tmp/pooly-<uid>``, made (0700) when ``create``. Raises
    ``PermissionError`` if the fallback exists but is not this user's private directory."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _private_dir(xdg):
        return xdg
    path = os.path.join("/tmp", f"pooly-{os.getuid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    if (create or os.path.lexists(path)) and not _private_dir(path):
        raise PermissionError(
            f"{path} is not a private directory of uid {os.getuid()} (it must be a real "
            "directory, owned by this user, mode 0700); remove it or set XDG_RUNTIME_DIR"
        )
    return path


def socket_pid(name: str) -> int | None:
    """The host pid in an observer socket's file name (``pooly-<pid>[-<n>].sock``)."""
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    stem = name[len(_PREFIX) : -len(_SUFFIX)]
    head = stem.split("-", 1)[0]
    return int(head) if head.isdigit() and stem.replace("-", "").isdigit() else None


def check_observe(observe: object) -> str | None:
    """``Pooly(observe=...)`` checked: None (off), "" (the default path, picked at start), or
    the socket path asked for. Raises ``TypeError``/``ValueError`` naming what is wrong."""
    if observe is None or observe is False:
        return None
    if observe is True:
        return ""
    if not isinstance(observe, str | os.PathLike):
        raise TypeError(
            "observe must be True, False or a socket path (str or os.PathLike), "
            f"got {type(observe).__name__}: {observe!r}"
        )
    path = os.fspath(observe)
    if not isinstance(path, str) or not path:
        raise TypeError(f"observe must be a non-empty str path, got {observe!r}")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError(f"observe={observe!r}: its directory {parent} does not exist")
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(
            f"observe={observe!r}: a Unix socket path is at most {_SUN_PATH_MAX} bytes, "
            f"this one is {len(os.fsencode(path))}"
        )
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ValueError(f"observe={observe!r}: {path} exists and is not a socket")
    return path


def _listening(path: str) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        s.close()


# ---------------------------------------------------------------------- JSON


def _plain(value: Any) -> Any:
    """``value`` as JSON takes it: mappings with str keys, lists, finite numbers (a
    non-finite float becomes the string "inf", "-inf" or "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _event_dict(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(event).__name__}
    for f in dataclasses.fields(event):
        out[f.name] = getattr(event, f.name)
    return out


def _options(pool: Pool) -> dict[str, Any]:
    w = pool.worker
    return {
        "worker": f"{w.__module__}.{w.__qualname__}",
        "size": pool.size,
        "max_overflow": pool.max_overflow,
        "strategy": pool.strategy,
        "max_restarts": pool.max_restarts,
        "max_seconds": pool.max_seconds,
        "start_method": pool.start_method,
        "call_timeout": pool.call_timeout,
        "max_waiting": pool.max_waiting,
        "max_calls": pool.max_calls,
        "max_age": pool.max_age,
        "max_memory": pool.max_memory,
        "overflow_ttl": pool.overflow_ttl,
        "spares": pool.spares,
    }


# ---------------------------------------------------------------------- the server


class _Conn:
    __slots__ = ("deadline", "inbuf", "out", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.out: memoryview | None = None


#: Observers of this process, to let go of their sockets in a forked child (see _forked).
_OBSERVERS: weakref.WeakSet[Observer] = weakref.WeakSet()


class Observer:
    """Serves read-only snapshots of one tree (see the module docstring).

    ``pools``: returns the tree's pools in start order (any thread). Made by ``Pooly``
    after its tree started; :meth:`close` by ``Pooly.stop()`` (and at exit)."""

    def __init__(
        self,
        path: str,
        pools: Callable[[], list[Pool]],
        subscribe: Callable[[Callable[[Any], object]], Subscription],
    ) -> None:
        self._pools = pools
        self._gen = HOST.gen
        self._pid = os.getpid()
        self._started = time.time()
        self._recent: collections.deque[Any] = collections.deque(maxlen=RECENT)
        self._closed = False
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self.path = path or self._default_path()
        self._sock = self._bind(self.path)
        try:
            self._ino = os.stat(self.path).st_ino
            self._wake = Signal()
            self._sub = subscribe(self._recent.append)
            self._thread = threading.Thread(target=self._run, name="pooly-observe", daemon=True)
            _OBSERVERS.add(self)
            self._thread.start()
        except BaseException:
            self._release_socket()
            raise
        log.info("observer endpoint at %s", self.path)

    # -- paths

    def _default_path(self) -> str:
        d = runtime_dir(create=True)
        n = 0
        while True:
            name = f"{_PREFIX}{self._pid}{'' if n == 0 else f'-{n}'}{_SUFFIX}"
            path = os.path.join(d, name)
            if not os.path.lexists(path) or not _listening(path):
                return path  # (one left by a dead process of the same pid is replaced)
            n += 1

    def _bind(self, path: str) -> socket.socket:
        """Listen at ``path``, mode 0600 from the start: bound under a temporary name in the
        same directory, made 0600, then renamed into place (so no one can connect in
        between, whatever the directory's mode). A live socket already there is refused."""
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ValueError(f"observe: {path} exists and is not a socket")
            if _listening(path):
                raise OSError(errno.EADDRINUSE, f"observe: another program listens on {path}")
        tmp = os.path.join(os.path.dirname(path), f".{_PREFIX}{self._pid}-{id(self):x}.tmp")
        with _FDS_LOCK:  # no fork between making it and listing it (see pooly._fds)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _HOST_FDS.add(sock.fileno())
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            try:
                os.chmod(tmp, 0o600)
                sock.listen(MAX_CONNS)
                sock.setblocking(False)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except BaseException:
            self._close_sock(sock)
            raise
        return sock

    # -- lifecycle

    def close(self) -> None:
        """Stop serving, close the socket and remove its file (any thread but its own;
        idempotent). Returns within about a second even if a client misbehaves."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._gen != HOST.gen:  # a forked child's copy: the socket is the parent's
            return
        try:
            self._sub.close()
        finally:
            self._wake.set()
            if self._thread is not threading.current_thread():
                self._thread.join(CONN_TIMEOUT)
            self._release_socket()
            self._wake.close()

    def _release_socket(self) -> None:
        try:
            if os.stat(self.path).st_ino == getattr(self, "_ino", None):
                os.unlink(self.path)  # (only ours: not one another program put there since)
        except OSError:
            pass
        self._close_sock(self._sock)

    @staticmethod
    def _close_sock(sock: socket.socket) -> None:
        with _FDS_LOCK:
            _HOST_FDS.discard(sock.fileno())
            sock.close()

    def _forked(self) -> None:
        """In a forked child: the fds are closed already (pooly._fds); let go of the
        numbers so that no socket object closes someone else's later."""
        self._closed = True
        for c in list(self._conns.values()):
            c.sock.detach()
        self._conns.clear()
        self._sock.detach()

    # -- the thread

    def _run(self) -> None:
        """The observer thread: accept, read a line, answer, close; until closed."""
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._sock, selectors.EVENT_READ, None)
            sel.register(self._wake.fileno(), selectors.EVENT_READ, "wake")
            while not self._closed:
                now = time.monotonic()
                timeout = min((c.deadline for c in self._conns.values()), default=now + 1.0)
                for key, mask in sel.select(max(0.0, min(timeout - now, 1.0))):
                    if key.data == "wake":
                        continue
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._serve(sel, key.data, mask)
                now = time.monotonic()
                for c in [c for c in self._conns.values() if c.deadline <= now]:
                    self._drop(sel, c)
        except Exception:
            log.exception("pooly observer: serving failed; the endpoint is closed")
        finally:
            for c in list(self._conns.values()):
                self._drop(sel, c)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                with _FDS_LOCK:
                    sock, _ = self._sock.accept()
                    _HOST_FDS.add(sock.fileno())
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of fds, say: try again at the next wake-up
                log.warning("pooly observer: accept failed: %s", e)
                return
            if len(self._conns) >= MAX_CONNS:
                self._close_sock(sock)
                continue
            sock.setblocking(False)
            c = _Conn(sock, time.monotonic() + CONN_TIMEOUT)
            self._conns[sock.fileno()] = c
            sel.register(sock, selectors.EVENT_READ, c)

    def _serve(self, sel: selectors.BaseSelector, c: _Conn, mask: int) -> None:
        try:
            if c.out is None:
                data = c.sock.recv(MAX_LINE + 1)
                if not data:  # closed before a whole line: nothing to answer
                    self._drop(sel, c)
                    return
                c.inbuf += data
                if b"\n" not in c.inbuf and len(c.inbuf) <= MAX_LINE:
                    return
                line = c.inbuf.split(b"\n", 1)[0]
                c.out = memoryview(self._answer(line))
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
            sent = c.sock.send(c.out)
            c.out = c.out[sent:]
            if not c.out:
                self._finish(c.sock)
                self._drop(sel, c)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the client went away
            self._drop(sel, c)

    @staticmethod
    def _finish(sock: socket.socket) -> None:
        """The answer is written: end it, and read what the client sent past its line
        (an overlong one), so that closing does not reset the connection under the
        answer."""
        try:
            sock.shutdown(socket.SHUT_WR)
            for _ in range(64):
                if not sock.recv(1 << 16):
                    break
        except OSError:  # (BlockingIOError: nothing more is there)
            pass

    def _drop(self, sel: selectors.BaseSelector, c: _Conn) -> None:
        self._conns.pop(c.sock.fileno(), None)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self._close_sock(c.sock)

    # -- the answers (observer thread; each only reads)

    def _answer(self, line: bytes) -> bytes:
        request = line.strip().decode("utf-8", "replace")
        try:
            if request == "snapshot":
                doc = self.snapshot()
            elif request == "events":
                doc = self._head()
                doc["events"] = self._events()
            else:
                shown = request if len(line) <= MAX_LINE else request[:40] + "..."
                doc = self._head()
                doc["error"] = f"unknown request {shown!r}; the requests are: {', '.join(REQUESTS)}"
        except Exception as e:  # a pool mid-stop, say: the client hears why
            log.debug("pooly observer: %r failed", request, exc_info=True)
            doc = self._head()
            doc["error"] = f"{request} failed: {type(e).__name__}: {e}"
        return (json.dumps(_plain(doc), allow_nan=False) + "\n").encode()

    def _head(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "pid": self._pid,
            "argv": list(sys.argv),
            "time": time.time(),
            "started": self._started,
        }

    def _events(self) -> list[dict[str, Any]]:
        return [_event_dict(e) for e in list(self._recent)]

    def snapshot(self) -> dict[str, Any]:
        """The tree now: each pool's status, stats, options, workers (see the README's
        "Observing a running program" for the fields), and the recent events."""
        doc = self._head()
        pools = []
        for pool in self._pools():
            status = pool.status()
            stats = pool.stats()
            workers, spares = pool._observed()
            pools.append(
                {
                    "name": pool.name,
                    "status": dataclasses.asdict(status),
                    "stats": {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)},
                    "options": _options(pool),
                    "workers": workers,
                    "spares": spares,
                }
            )
        doc["pools"] = pools
        doc["events"] = self._events()
        return doc


def _forked_child() -> None:
    for obs in list(_OBSERVERS):
        obs._forked()
    _OBSERVERS.clear()


os.register_at_fork(after_in_child=_forked_child)
