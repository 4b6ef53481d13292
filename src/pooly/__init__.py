"""Pooly: Erlang/OTP-style supervised pools of worker processes.

Re-exports only; the implementation lives in the private modules:
``_supervisor`` (the reusable supervisor), ``_process`` (start methods, fd hygiene,
``ProcessChild``), ``_worker`` (worker processes and their channel),
``_pool`` (the pool server and leases), ``_dispatch`` (its tasks: submit/map),
``_executor`` (``ProcessPoolExecutor``), ``_pooly`` (the top of the tree), ``_errors``,
``_stats`` (``PoolStats``), ``_bus`` (event delivery), ``_observer`` (the
``Pooly(observe=True)`` endpoint). Public modules: ``pooly.events``, ``pooly.observe``
(reading a running program's endpoint), ``pooly.prometheus`` (the ``prometheus`` extra;
never imported by ``import pooly``).
"""

from ._aio import AsyncLease
from ._bus import Subscription
from ._errors import (
    CallTimeout,
    CheckoutTimeout,
    LeaseError,
    NoSuchPool,
    PoolFailed,
    PoolFull,
    PoolyError,
    RemoteTraceback,
    WorkerCrashed,
    WorkerStartError,
)
from ._executor import ProcessPoolExecutor
from ._pool import Lease, Pool, PoolStatus
from ._pooly import Pooly
from ._process import ProcessChild
from ._ray import RayBackend, shared_pool
from ._stats import PoolStats
from ._supervisor import (
    Child,
    ChildSpec,
    ExitReason,
    PassiveChild,
    Supervisor,
    SupervisorListener,
)

__all__ = (
    "AsyncLease",
    "CallTimeout",
    "CheckoutTimeout",
    "Child",
    "ChildSpec",
    "ExitReason",
    "Lease",
    "LeaseError",
    "NoSuchPool",
    "PassiveChild",
    "Pool",
    "PoolFailed",
    "PoolFull",
    "PoolStats",
    "PoolStatus",
    "Pooly",
    "PoolyError",
    "ProcessChild",
    "ProcessPoolExecutor",
    "RayBackend",
    "RemoteTraceback",
    "Subscription",
    "Supervisor",
    "SupervisorListener",
    "WorkerCrashed",
    "WorkerStartError",
    "shared_pool",
)

__version__ = "0.2.0"
