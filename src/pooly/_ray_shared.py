"""Shared named pools on Ray (issue 12, part 6): one pool, checked out from several drivers.

A pool server is a **detached named Ray actor** (``pooly:<name>`` in a Ray namespace) that
runs a pooly tree with one pool on a :class:`~pooly.RayBackend`: its workers are actors it
owns and supervises, as a local pool's are. Any driver connected to the cluster finds the
server by name (``get_if_exists``) and checks workers out of it::

    driver A ---- checkout(timeout) ----\\
    driver B ---- lease.method(...) ------>  pool server (detached actor)  --> worker actors
    driver C ---- renew(leases), checkin --/   pooly tree, one pool; leases by id, with TTLs

A lease is an id the server hands out; every call through it goes to the server, which
makes it on the real lease (a second hop: ~2x a local Ray pool's call). A driver's
:class:`SharedPool` renews its live leases every ``lease_ttl / 3`` seconds from a thread of
its own; a lease not renewed (nor used) for ``lease_ttl`` seconds -- its driver died, or is
cut off -- is reclaimed by the server as a dead holder's lease is in a local pool (its worker
restarted, unless ``restart_on_reclaim=False``; a call still running through it first ends).

What holds: exclusive leases, FIFO waiters with timeouts, supervision and restart intensity,
a worker's death failing only its holder's call (``WorkerCrashed``), method exceptions as
their own type with the worker's traceback. What does not: the server is detached, so it
outlives the driver that made it -- ``SharedPool.stop()`` (or ``ray.kill``) ends it, and
with it its workers; if the server itself dies, its pool and leases are gone (every driver's
next call raises :class:`~pooly.PoolyError`); a dead driver's lease is held until its TTL
runs out; the first driver to create a name chooses the pool's options (later ones get the
running server; their options are ignored).
"""

from __future__ import annotations

import logging
import pickle
import secrets
import threading
import time
import weakref
from typing import Any

import ray
import ray.exceptions

from ._errors import LeaseError, NoSuchPool, PoolyError
from ._ray import RayBackend
from ._ray_backend import connect
from ._worker import _pack_error, _unpack_error

__all__ = ("SharedLease", "SharedPool", "open_shared_pool")

log = logging.getLogger("pooly")

#: Checkouts that may wait in the server at once (its threads).
SERVER_THREADS = 256
_OK, _ERR = 0, 1


class _PoolServer:
    """The detached actor holding the pool (see the module docstring)."""

    def __init__(
        self,
        name: str,
        worker: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        backend: RayBackend,
        lease_ttl: float,
        options: dict[str, Any],
    ) -> None:
        import pooly

        self._tree = pooly.Pooly()
        self._pool = self._tree.start_pool(name, worker, args, kwargs, backend=backend, **options)
        self._ttl = lease_ttl
        self._lock = threading.Lock()
        # id -> [Lease, renewal deadline, its keeper's end, checked in, the keeper]
        self._leases: dict[str, list[Any]] = {}
        self._stopped = threading.Event()
        threading.Thread(target=self._reap, name="pooly-shared-reaper", daemon=True).start()

    def ping(self) -> tuple[str, float]:
        """(the pool's name, its lease TTL: what every driver renews by)."""
        return self._pool.name, self._ttl

    def checkout(self, timeout: float | None) -> tuple[int, Any]:
        """A lease: (OK, (id, pid, node)) or (ERR, the error's frame).

        Each lease is held by a keeper thread of its own, made here and alive until the
        lease is checked in or expires: the pool sees that thread as the holder. (Not the
        thread of this call: Ray runs an actor's calls on threads whose Python state may
        be torn down between calls, which the pool would take for its holder's death.)
        An expired lease's keeper just ends, and the pool reclaims the lease as a dead
        holder's -- a call still running through it ends first."""
        box: dict[str, Any] = {}
        ready = threading.Event()
        threading.Thread(
            target=self._keep, args=(timeout, box, ready), name="pooly-shared-lease", daemon=True
        ).start()
        ready.wait()
        if "error" in box:
            return _ERR, _pack_error(box["error"], "checkout")
        return _OK, box["lease"]

    def _keep(self, timeout: float | None, box: dict[str, Any], ready: threading.Event) -> None:
        try:
            lease = self._pool.checkout(timeout=timeout)
        except BaseException as e:
            box["error"] = e
            ready.set()
            return
        lid = secrets.token_hex(16)
        end = threading.Event()
        entry = [lease, time.monotonic() + self._ttl, end, False, threading.current_thread()]
        with self._lock:
            self._leases[lid] = entry
        box["lease"] = (lid, lease.pid, getattr(lease._worker, "node", None))
        ready.set()
        end.wait()
        if entry[3]:
            self._pool.checkin(lease)
        # (else: expired; this thread's end hands the lease back as a dead holder's)

    def call(
        self, lid: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, Any]:
        """A call through lease ``lid``: (OK, result) or (ERR, the error's frame)."""
        with self._lock:
            entry = self._leases.get(lid)
            if entry is not None:
                entry[1] = time.monotonic() + self._ttl
        if entry is None:
            return _ERR, _pack_error(_gone(lid), f"{name}()")
        lease = entry[0]
        try:
            result = getattr(lease, name)(*args, **kwargs)
        except BaseException as e:
            if lease._ended is not None:  # its worker died, or timed out: the lease is over
                with self._lock:
                    self._leases.pop(lid, None)
            return _ERR, _pack_error(e, f"method {name}()")
        return _OK, result

    def renew(self, lids: list[str]) -> list[bool]:
        """Extend each lease's TTL; False for one the server no longer has."""
        deadline = time.monotonic() + self._ttl
        out = []
        with self._lock:
            for lid in lids:
                entry = self._leases.get(lid)
                if entry is not None:
                    entry[1] = deadline
                out.append(entry is not None)
        return out

    def checkin(self, lid: str) -> None:
        with self._lock:
            entry = self._leases.pop(lid, None)
        if entry is not None:
            entry[3] = True
            entry[2].set()
            entry[4].join(30)  # (its keeper checks it in: back in the pool on return)

    def status(self) -> Any:
        return self._pool.status()

    def stats(self) -> Any:
        return self._pool.stats()

    def leases(self) -> int:
        with self._lock:
            return len(self._leases)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            held = list(self._leases.values())
            self._leases.clear()
        for entry in held:
            entry[2].set()
        self._tree.stop()

    def _reap(self) -> None:
        """Reclaim the leases whose TTL ran out (their drivers stopped renewing)."""
        while not self._stopped.wait(min(1.0, self._ttl / 4)):
            now = time.monotonic()
            with self._lock:
                expired = [lid for lid, entry in self._leases.items() if entry[1] < now]
                gone = [self._leases.pop(lid) for lid in expired]
            for lease, _, end, _, _ in gone:
                log.warning(
                    "pooly: shared pool %r: a lease on worker pid %s was not renewed within "
                    "%gs (its driver is gone?): reclaimed",
                    self._pool.name,
                    lease.pid,
                    self._ttl,
                )
                end.set()


def _gone(lid: str) -> LeaseError:
    return LeaseError(
        f"lease {lid[:8]}... is no longer held: it was checked in, its worker died, or it was "
        "not renewed within the pool's lease_ttl and was reclaimed; check out a worker again"
    )


_Server = ray.remote(_PoolServer)


def _server_name(name: str) -> str:
    return f"pooly:{name}"


def open_shared_pool(
    name: str,
    worker: type | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    backend: RayBackend,
    lease_ttl: float,
    namespace: str,
    options: dict[str, Any],
) -> SharedPool:
    """See :func:`pooly.shared_pool`."""
    connect(backend)
    if worker is None:
        try:
            server = ray.get_actor(_server_name(name), namespace=namespace)
        except ValueError:
            raise NoSuchPool(
                f"no shared pool named {name!r} runs in Ray namespace {namespace!r}; "
                "give its worker class to create it"
            ) from None
    else:
        server = _Server.options(
            name=_server_name(name),
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=SERVER_THREADS,
            max_restarts=0,
        ).remote(name, worker, tuple(args), dict(kwargs or {}), backend, lease_ttl, options)
    try:
        got, ttl = ray.get(server.ping.remote())
    except ray.exceptions.RayActorError as e:
        raise PoolyError(f"the server of shared pool {name!r} could not start: {e}") from e
    if got != name:  # (never: the actor's name is the pool's)
        raise PoolyError(f"shared pool {name!r}: its server serves {got!r}")
    return SharedPool(name, server, ttl, namespace)  # (the server's TTL: its maker's)


class SharedPool:
    """A driver's handle on a shared named pool (:func:`pooly.shared_pool`)."""

    def __init__(self, name: str, server: Any, lease_ttl: float, namespace: str) -> None:
        self.name = name
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self._server = server
        self._held: weakref.WeakValueDictionary[str, SharedLease] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _ask(self, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise PoolyError(
                f"the server of shared pool {self.name!r} is gone ({type(e).__name__}); its "
                "pool and leases with it"
            ) from e

    def checkout(self, timeout: float | None = None) -> SharedLease:
        """Lease a worker (waits up to ``timeout`` seconds: CheckoutTimeout, as locally)."""
        tag, got = self._ask(self._server.checkout.remote(timeout))
        if tag == _ERR:
            raise _unpack_error(pickle.loads(got))
        lid, pid, node = got
        lease = SharedLease(self, lid, pid, node)
        with self._lock:
            self._held[lid] = lease
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew, name=f"pooly-shared-{self.name}", daemon=True
                )
                self._renewer.start()
        return lease

    def checkin(self, lease: SharedLease) -> None:
        lease.checkin()

    def status(self) -> Any:
        """The pool's :class:`~pooly.PoolStatus`, from its server."""
        return self._ask(self._server.status.remote())

    def stats(self) -> Any:
        return self._ask(self._server.stats.remote())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the pool and end its server (for every driver); returns once the server is
        gone and its name free (or ``timeout`` seconds passed)."""
        try:
            ray.get(self._server.stop.remote())
        except ray.exceptions.RayActorError:
            pass
        ray.kill(self._server, no_restart=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # (ray.kill returns before the actor is gone)
            try:
                ray.get_actor(_server_name(self.name), namespace=self.namespace)
            except ValueError:
                return
            time.sleep(0.05)

    def _renew(self) -> None:
        """Keep this driver's leases alive: the server reclaims one not renewed in time."""
        while True:
            time.sleep(self.lease_ttl / 3)
            with self._lock:
                lids = list(self._held.keys())
            if not lids:
                continue
            try:
                ray.get(self._server.renew.remote(lids))
            except Exception as e:  # the server gone: the next call says so
                log.debug("pooly: renewing leases of shared pool %r: %s", self.name, e)

    def __repr__(self) -> str:
        return f"<SharedPool {self.name!r} (Ray actor pooly:{self.name})>"


class SharedLease:
    """A lease on a worker of a shared pool: ``lease.method(*args, **kwargs)`` runs it in
    the worker, through the pool's server; ``checkin()`` (or ``with``) gives it back."""

    def __init__(self, pool: SharedPool, lid: str, pid: int, node: str | None) -> None:
        self._pool = pool
        self._lid = lid
        self.pid = pid
        self.node = node
        self._done = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            if self._done:
                raise _gone(self._lid)
            tag, got = self._pool._ask(
                self._pool._server.call.remote(self._lid, name, args, kwargs)
            )
            if tag == _ERR:
                raise _unpack_error(pickle.loads(got))
            return got

        method.__name__ = name
        return method

    def checkin(self) -> None:
        if not self._done:
            self._done = True
            self._pool._ask(self._pool._server.checkin.remote(self._lid))

    def __enter__(self) -> SharedLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.checkin()

    def __repr__(self) -> str:
        return f"<SharedLease pool={self._pool.name!r} pid={self.pid}>"
