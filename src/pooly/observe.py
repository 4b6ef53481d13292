"""Reading a running program's tree through its observer endpoint (``Pooly(observe=True)``).

::

    import pooly.observe
    path = pooly.observe.find()             # the one program of this user with an endpoint
    doc = pooly.observe.snapshot(path)      # or snapshot(pid), or snapshot() for that one
    for pool in doc["pools"]:
        print(pool["name"], pool["status"]["state"], [w["pid"] for w in pool["workers"]])

The protocol (any client can speak it, e.g. ``printf 'snapshot\\n' | nc -U PATH``): connect
to the Unix socket, send one line -- ``snapshot`` or ``events`` -- and read one JSON
document until the server closes the connection. A line naming anything else gets a
document with an ``"error"``. No request changes anything in the program.

A snapshot document: ``protocol`` (1), ``pid``, ``argv``, ``time`` and ``started`` (wall
clock), ``events`` (the last 50 lifecycle events, oldest first: ``type`` -- the
:mod:`pooly.events` class name -- and its fields) and ``pools``, in start order, each with
``name``, ``status`` (``pool.status()``'s fields), ``stats`` (``pool.stats()``'s; the
``crashes`` keys are exit codes as strings), ``options`` (``size``, ``max_overflow``,
``strategy``, ...), ``workers`` (each ``pid``, ``wid``, ``state`` -- "idle", "busy",
"overflow", "retiring" --, ``leased``, ``overflow``, ``calls``, ``rss`` in bytes or null,
``age`` in seconds, ``holder``: the leasing thread's or task's name or null) and
``spares`` (pids). A non-finite float (an infinite ``max_seconds``) is the string "inf".
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from ._errors import PoolyError
from ._observer import CONN_TIMEOUT, PROTOCOL, REQUESTS, runtime_dir, socket_pid

__all__ = (
    "PROTOCOL",
    "REQUESTS",
    "Endpoint",
    "NoEndpoint",
    "endpoints",
    "events",
    "find",
    "request",
    "runtime_dir",
    "snapshot",
)


class NoEndpoint(PoolyError, LookupError):
    """No observer endpoint answers where one was looked for (no program with
    ``Pooly(observe=True)`` runs, the pid has none, or more than one runs and none was
    named), or one answered with an error. The message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An observer socket found in the runtime directory: its program's ``pid`` and
    ``path``."""

    pid: int
    path: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def endpoints() -> list[Endpoint]:
    """The observer sockets of this user's running programs (in the runtime directory,
    those of processes still alive), by pid."""
    try:
        d = runtime_dir()
        names = os.listdir(d)
    except OSError:
        return []
    found = []
    for name in names:
        pid = socket_pid(name)
        if pid is not None and _alive(pid):
            found.append(Endpoint(pid, os.path.join(d, name)))
    found.sort(key=lambda e: (e.pid, len(e.path), e.path))
    return found


def find(pid: int | None = None) -> str:
    """The socket path of program ``pid``'s endpoint (its first, if it observes more than
    one tree); with no pid, that of the one program running with an endpoint. Raises
    :class:`NoEndpoint` saying why not."""
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        raise TypeError(f"pid must be a positive int, got {pid!r}")
    found = endpoints()
    if pid is None:
        pids = sorted({e.pid for e in found})
        if len(pids) == 1:
            return found[0].path
        if not pids:
            raise NoEndpoint(
                f"no running program has an observer endpoint in {runtime_dir()}; "
                "start its tree with pooly.Pooly(observe=True)"
            )
        raise NoEndpoint(f"{len(pids)} programs have an observer endpoint: pids {pids}; name one")
    for e in found:
        if e.pid == pid:
            return e.path
    why = "is not running" if not _alive(pid) else "has no observer endpoint"
    raise NoEndpoint(
        f"process {pid} {why} (looked in {runtime_dir()}); a program opens one with "
        "pooly.Pooly(observe=True)"
    )


def _path(target: str | os.PathLike[str] | int | None) -> str:
    if target is None or (isinstance(target, int) and not isinstance(target, bool)):
        return find(target)
    if isinstance(target, str | os.PathLike):
        return os.fspath(target)
    raise TypeError(f"expected a socket path, a pid or None, got {target!r}")


def request(
    target: str | os.PathLike[str] | int | None, what: str, *, timeout: float = CONN_TIMEOUT
) -> dict[str, Any]:
    """Send request ``what`` (a line) to the endpoint at ``target`` (a socket path, a
    pid, or None: the one running) and return the JSON document it answers. A document
    with an ``"error"`` raises :class:`NoEndpoint` with it, as does a socket nothing
    listens on."""
    if not isinstance(what, str) or "\n" in what:
        raise ValueError(f"a request is one line of text, got {what!r}")
    path = _path(target)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoEndpoint(
                f"nothing listens on {path} ({e.strerror}): the program has ended or "
                "stopped its tree"
            ) from None
        s.sendall(what.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    doc: dict[str, Any] = json.loads(b"".join(chunks))
    if "error" in doc:
        raise NoEndpoint(f"{path}: {doc['error']}")
    return doc


def snapshot(
    target: str | os.PathLike[str] | int | None = None, *, timeout: float = CONN_TIMEOUT
) -> dict[str, Any]:
    """The tree of the program at ``target`` (a socket path, a pid, or None: the one
    running with an endpoint) now, as the module docstring describes."""
    return request(target, "snapshot", timeout=timeout)


def events(
    target: str | os.PathLike[str] | int | None = None, *, timeout: float = CONN_TIMEOUT
) -> list[dict[str, Any]]:
    """The last lifecycle events of the program at ``target``, oldest first."""
    events_: list[dict[str, Any]] = request(target, "events", timeout=timeout)["events"]
    return events_
