"""``pooly.RayBackend``: where a pool's workers run when they are Ray actors (SPEC 4.6).

This module is only the configuration, checked when it is made; it never imports Ray, so
``import pooly`` stays free of it. A pool given one (``start_pool(..., backend=...)``) binds
it through :meth:`RayBackend._bind`, which imports :mod:`pooly._ray_backend` (and Ray) then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ("RayBackend", "shared_pool")

#: Actor options pooly sets itself: a worker is restarted by pooly alone (never by Ray), its
#: calls run at most once, one at a time, and it lives and dies with its pool.
_OWNED = (
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "concurrency_groups",
    "lifetime",
    "name",
    "namespace",
    "get_if_exists",
)


class RayBackend:
    """Run a pool's workers as Ray actors, supervised by pooly (SPEC 4.6).

    ``start_pool(name, Worker, backend=pooly.RayBackend(...))`` gives a pool with the same
    API and semantics as a local one -- exclusive leases, FIFO waiters with timeouts,
    overflow, restart intensity, ``status()``/``stats()``, events, ``submit``/``map``,
    asyncio -- whose workers are Ray actors placed by Ray's scheduler (``lease.pid`` is the
    actor process's pid). Each actor is made with ``max_restarts=0, max_task_retries=0``:
    pooly alone replaces a dead worker, and a call runs at most once.

    ``address``: the Ray cluster to connect to (``"ray://..."`` or ``"host:port"``); None
    connects to the one ``RAY_ADDRESS`` names, else starts a local Ray. If Ray is already
    initialised in this process, that connection is used as it is.
    ``actor_options``: what Ray's ``.options()`` takes for an actor -- ``num_cpus``,
    ``num_gpus``, ``resources``, ``memory``, ``scheduling_strategy``, ``runtime_env``, ...;
    checked against Ray when the pool starts. The options pooly owns (``max_restarts``,
    ``max_task_retries``, ``max_concurrency``, ``concurrency_groups``, ``lifetime``,
    ``name``, ``namespace``, ``get_if_exists``) are refused.
    ``spares``: warm actors kept ready to take a dead worker's place (the pool's own
    ``spares`` option, which it sets).
    ``init_options``: more keyword arguments for ``ray.init`` when pooly makes the
    connection (``include_dashboard`` defaults to False).

    Needs the ``ray`` extra (``pip install 'pooly[ray]'``); without Ray, a pool given a
    RayBackend fails to start with an ImportError saying so.
    """

    kind = "ray"  # the pool's start_method, as status() and the observers show it

    __slots__ = ("actor_options", "address", "init_options", "spares")

    def __init__(
        self,
        address: str | None = None,
        actor_options: Mapping[str, Any] | None = None,
        spares: int = 0,
        *,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            raise TypeError(f"RayBackend address must be a non-empty str or None, got {address!r}")
        self.address = address
        self.actor_options = _options("actor_options", actor_options)
        owned = sorted(k for k in self.actor_options if k in _OWNED)
        if owned:
            raise ValueError(
                f"RayBackend actor_options: {', '.join(owned)} "
                f"{'is' if len(owned) == 1 else 'are'} set by pooly (a worker is restarted "
                "by pooly alone, runs one call at a time, at most once, and lives with its "
                "pool); leave "
                f"{'it' if len(owned) == 1 else 'them'} out"
            )
        if isinstance(spares, bool) or not isinstance(spares, int) or spares < 0:
            raise ValueError(f"RayBackend spares must be an int >= 0, got {spares!r}")
        self.spares = spares
        self.init_options = _options("init_options", init_options)
        if "address" in self.init_options:
            raise ValueError("RayBackend init_options: give the address as address=, not there")

    def _bind(self, **pool: Any) -> Any:
        """The pool's worker backend (imports Ray). ``pool``: what a backend is made of
        (pool_name, cls_name, module, payload, start_timeout, preload)."""
        try:
            from . import _ray_backend
        except ImportError as e:
            raise ImportError(
                f"pooly.RayBackend needs Ray, which could not be imported here ({e}); "
                "install it with: pip install 'pooly[ray]'"
            ) from e
        return _ray_backend.RayPoolBackend(self, **pool)

    def __repr__(self) -> str:
        return (
            f"RayBackend(address={self.address!r}, actor_options={self.actor_options!r}, "
            f"spares={self.spares})"
        )


def _options(what: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"RayBackend {what} must be a dict, got {type(options).__name__}")
    bad = [k for k in options if not isinstance(k, str)]
    if bad:
        raise TypeError(f"RayBackend {what}: option names must be str, got {bad!r}")
    return dict(options)


def shared_pool(
    name: str,
    worker: type | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    backend: RayBackend | None = None,
    lease_ttl: float = 30.0,
    namespace: str = "pooly",
    **options: Any,
) -> Any:
    """A pool on Ray shared by several drivers: its :class:`SharedPool` handle.

    The pool runs in a detached named Ray actor (``pooly:<name>`` in Ray namespace
    ``namespace``), its workers Ray actors it supervises (``backend``'s actor options and
    spares; its address is where this driver connects). With ``worker``, the pool is made if
    no driver made it yet (``start_pool``'s ``options`` apply: ``size``, ``max_overflow``,
    ``call_timeout``, ...; the first driver's win); without, an existing one is found
    (:class:`NoSuchPool` if none runs). ``handle.checkout(timeout)`` leases a worker as a
    local pool does; a driver renews its leases by itself, and a lease not renewed for
    ``lease_ttl`` seconds (its driver died) is reclaimed by the pool (the TTL the pool was
    made with applies to every driver). ``handle.stop()``
    ends the pool for every driver. See :mod:`pooly._ray_shared` for what holds and what
    does not. Needs the ``ray`` extra.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"shared pool name must be a non-empty str, got {name!r}")
    if worker is not None and not isinstance(worker, type):
        raise TypeError(f"shared pool {name!r}: worker must be a class, got {worker!r}")
    if worker is None and (args or kwargs or options):
        raise TypeError(
            f"shared pool {name!r}: args, kwargs and pool options need the worker class "
            "(they make the pool; without it, a running pool is found)"
        )
    if backend is None:
        backend = RayBackend()
    elif not isinstance(backend, RayBackend):
        raise TypeError(f"shared pool {name!r}: backend must be a RayBackend, got {backend!r}")
    if (
        isinstance(lease_ttl, bool)
        or not isinstance(lease_ttl, int | float)
        or not 0 < lease_ttl < float("inf")
    ):
        raise ValueError(f"lease_ttl must be a number of seconds > 0, got {lease_ttl!r}")
    bad = sorted(set(options) & {"backend", "start_method"})
    if bad:
        raise TypeError(f"shared pool {name!r}: {', '.join(bad)} can't be given here")
    if not isinstance(namespace, str) or not namespace:
        raise TypeError(f"namespace must be a non-empty str, got {namespace!r}")
    try:
        from . import _ray_shared
    except ImportError as e:
        raise ImportError(
            f"pooly.shared_pool needs Ray, which could not be imported here ({e}); "
            "install it with: pip install 'pooly[ray]'"
        ) from e
    return _ray_shared.open_shared_pool(
        name, worker, args, kwargs, backend, float(lease_ttl), namespace, options
    )
