"""A pool's own subtree: :class:`PoolSupervisor` over the pool server and its workers.

::

    PoolSupervisor "pool:<name>"  (one_for_all, no restarts: a failing child fails the pool)
    |-- "server": the Pool          idle workers, leases, overflow, waiters (pooly._pool)
    `-- "workers": WorkerSupervisor "workers:<name>"  (one_for_one, max_restarts/max_seconds)
        `-- one WorkerHandle per worker (core: permanent, overflow: temporary)

The server starts first and stops last, so the pool refuses checkouts before its workers go.
The worker supervisor opens the pool's backend before its first worker and closes it after
the last has ended; its listener is the pool, which hears every worker's end, and the pool
supervisor's listener fails the pool when the worker supervisor gives up.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from ._backend import check_fds
from ._fds import out_of_fds
from ._supervisor import (
    KILL_GRACE,
    CancelToken,
    Child,
    ChildSpec,
    ExitReason,
    Supervisor,
    SupervisorListener,
)

if TYPE_CHECKING:
    from ._backend import WorkerBackend
    from ._pool import Pool

__all__ = (
    "PoolSupervisor",
    "WorkerSupervisor",
    "pool_shutdown",
    "start_pool_tree",
)


def workers_shutdown(pool: Pool) -> float:
    """The deadline of a pool's worker supervisor, as its pool supervisor's child: each worker
    gets the pool's ``shutdown_timeout`` and then a kill's grace; one more grace of margin, so
    that it ends by itself before this deadline cuts it short."""
    return pool.shutdown_timeout + 2 * KILL_GRACE


def pool_shutdown(pool: Pool) -> float:
    """The deadline of a pool's subtree as a child of the pools supervisor (what ``stop_pool``
    may take at most): its worker supervisor's, that one's kill grace, and a margin. Finite,
    so a cancelled pool start is waited for with a bound too."""
    return workers_shutdown(pool) + 2 * KILL_GRACE


def start_pool_tree(pool: Pool, cancel: CancelToken | None = None) -> Supervisor:
    """Make and start ``pool``'s subtree (the pool's child start in the pools supervisor).

    The supervisor is made only here, so a pool whose start is refused holds no descriptor.
    ``cancel``: the pools supervisor is stopping (cuts the workers' starts short). A start
    that ran out of file descriptors raises a :class:`PoolyError` saying so (see
    :func:`check_fds`), with nothing of the pool left behind.
    """
    try:
        return PoolSupervisor(pool).start(cancel)
    except Exception as e:
        check_fds(f"cannot start pool {pool.name!r}", e, pool)
        raise


class WorkerSupervisor(Supervisor):
    """Supervises a pool's workers; opens its backend first and closes it last."""

    def __init__(self, pool: Pool, backend: WorkerBackend) -> None:
        super().__init__(
            [pool._spec(f"w{i}", "permanent") for i in range(pool.size)]
            + [pool._spec(f"s{i}", "permanent") for i in range(pool.spares)],
            strategy="one_for_one",
            max_restarts=pool.max_restarts,
            max_seconds=pool.max_seconds,
            name=f"workers:{pool.name}",
            clock=pool._clock,
            listener=pool,
            # A replacement refused for want of fds is not the worker's fault: retried on a
            # timer, never counted toward the pool's restart intensity (never failing it).
            retry_later=out_of_fds,
        )
        self.backend = backend

    def start(self, cancel: CancelToken | None = None) -> Supervisor:
        self.backend.open()
        try:
            return super().start(cancel)
        except BaseException:
            self.backend.close()
            raise

    def reap(self) -> ExitReason:
        reason = super().reap()
        self.backend.close()
        return reason


class PoolSupervisor(Supervisor):
    """The supervisor of one pool: its server, then its worker supervisor.

    Started by the pools supervisor as the pool's (temporary) child; ``start`` returns once
    every core worker is ready, or raises (nothing left running) if they can't start.
    """

    def __init__(self, pool: Pool) -> None:
        super().__init__(
            [
                ChildSpec("server", lambda: pool, restart="permanent", shutdown=1.0),
                # Each worker has the pool's shutdown_timeout; this deadline comes after it.
                ChildSpec(
                    "workers",
                    self._start_workers,
                    restart="permanent",
                    shutdown=workers_shutdown(pool),
                    cancellable=True,
                ),
            ],
            strategy="one_for_all",
            max_restarts=0,
            name=f"pool:{pool.name}",
            listener=_FailPoolOnWorkersFailure(pool),
        )
        self.pool = pool

    def _start_workers(self, cancel: CancelToken | None = None) -> Supervisor:
        sup = WorkerSupervisor(self.pool, self.pool._backend)
        self.pool._workers_sup = sup
        return sup.start(cancel)


class _FailPoolOnWorkersFailure(SupervisorListener):
    """A worker supervisor that gives up fails its pool (the pool supervisor's listener)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        if child_id == "workers" and not reason.normal:
            self.pool._fail(reason)
