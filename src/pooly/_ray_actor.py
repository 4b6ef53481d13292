"""The worker inside a Ray actor (imported in the actor's process; no Ray import here).

:mod:`pooly._ray_backend` makes it a Ray actor class. The host's requests reach it as the
same bytes a local worker reads from its pipe (the pickled ``(method, args, kwargs)``), and
it answers with the same reply payloads (:func:`pooly._worker.answer`): Ray carries bytes,
pooly's own framing, errors and tracebacks do the rest.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

from ._worker import _PROTO, _pack_error, _public_methods, _rss, answer

__all__ = ("PoolyActor",)


class PoolyActor:
    """One pooly worker: its user object, made by :meth:`start`, serving :meth:`frame`."""

    def __init__(self) -> None:
        self._obj: Any = None
        self._pid = os.getpid()

    def hello(self, version: str) -> tuple[int, str, str, str]:
        """(pid, node id, node address, pooly's version here): the actor is up."""
        import ray  # (in the actor's process, Ray is there)

        import pooly

        ctx = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()
        return self._pid, ctx.get_node_id(), node_ip, pooly.__version__

    def start(self, payload: bytes) -> bytes:
        """Make the user's object from the pickled ``(class, args, kwargs)``; the reply a
        local worker gives at its start: ``("ready", pid, methods)`` or an error frame."""
        try:
            cls, args, kwargs = pickle.loads(payload)
            self._obj = cls(*args, **kwargs)
        except BaseException as e:  # SystemExit too: the host gets the traceback either way
            return _pack_error(e, "the worker constructor")
        return pickle.dumps(("ready", self._pid, _public_methods(self._obj)), _PROTO)

    def frame(self, data: bytes) -> tuple[bytes, int | None]:
        """One request: its reply payload, and this process's resident memory after it."""
        return answer(self._obj, data), _rss(self._pid)

    def watch(self) -> None:
        """Never returns: its result is the actor's death (run in its own group)."""
        threading.Event().wait()
