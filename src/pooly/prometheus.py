"""Prometheus metrics for a :class:`pooly.Pooly` tree (SPEC 4.5), through the optional
``prometheus`` extra (``pip install 'pooly[prometheus]'``, which brings
``prometheus_client``). Importing :mod:`pooly` never imports this module; importing it
without ``prometheus_client`` raises an :class:`ImportError` saying what to install.

::

    from prometheus_client import start_http_server
    import pooly.prometheus

    with pooly.Pooly() as tree:
        pool = tree.start_pool("db", DbWorker, size=4)
        pooly.prometheus.register(tree)       # on prometheus_client's default REGISTRY
        start_http_server(9100, addr="127.0.0.1")
        ...

:class:`PoolyCollector` is a custom collector: nothing is counted twice and nothing runs
between scrapes. Each scrape reads ``pool.status()`` and ``pool.stats()`` of every pool the
tree has then (two short holds of each pool's lock; they are two reads, not one snapshot), so
a pool appears once started and disappears once stopped (``stop_pool`` or the tree's
``stop``); a failed pool stays, ``state="failed"``, until ``stop_pool``. A pool that stops
or fails while it is read is left out or reported as far as it could be read: a scrape
never fails because of a pool. In a child forked from the tree's process the tree is not
this process's: the scrape has no pool samples.

Every sample has the label ``pool`` (the pool's name). The metrics:

=================================== ======= ==============================================
metric                              type    what it reports
=================================== ======= ==============================================
``pooly_pool_state{state}``         gauge   1 for the pool's state (``ready``,
                                            ``overflow``, ``full``, ``failed``; see
                                            :class:`pooly.PoolStatus`), 0 for the others
``pooly_pool_size``                 gauge   core workers (``size``)
``pooly_pool_max_overflow``         gauge   ``max_overflow``
``pooly_idle_workers``              gauge   ``status().idle``
``pooly_busy_workers``              gauge   ``status().busy``
``pooly_overflow_workers``          gauge   ``status().overflow``
``pooly_spare_workers``             gauge   ``status().spares``
``pooly_waiting_checkouts``         gauge   ``status().waiting``
``pooly_restarts_left``             gauge   ``stats().restarts_left``
``pooly_checkouts_total``           counter ``stats().checkouts``
``pooly_checkout_timeouts_total``   counter ``stats().checkout_timeouts``
``pooly_calls_total``               counter ``stats().calls``
``pooly_call_timeouts_total``       counter ``stats().call_timeouts``
``pooly_crashes_total``             counter ``stats().crashes``, labels ``exitcode``
                                            (negative: the signal) and ``signal`` (its
                                            name, e.g. ``SIGKILL``; "" for an exit code)
``pooly_replacements_total``        counter ``stats().replacements``
``pooly_recycles_total``            counter ``stats().recycles``
``pooly_overflow_started_total``    counter ``stats().overflow_started``
``pooly_overflow_dismissed_total``  counter ``stats().overflow_dismissed``
``pooly_holds_total``               counter ``stats().holds``
``pooly_checkout_wait_seconds``     gauge   label ``quantile``: "0.5", "0.9", "0.99"
                                            (``stats().wait_p50`` ...) and "1"
                                            (``wait_max``)
``pooly_lease_hold_seconds``        gauge   the same for ``hold_p50`` ... ``hold_max``
=================================== ======= ==============================================

The wait and hold times are gauges with a ``quantile`` label, not summaries: the pool keeps
percentiles from a fixed log-bucket histogram (see :class:`pooly.PoolStats`), with no sum
of samples, and ``prometheus_client``'s ``SummaryMetricFamily`` carries only a count and a
sum. They are percentiles since the pool started (not over a recent window) and can't be
averaged across pools or processes; their counts are ``pooly_checkouts_total`` and
``pooly_holds_total``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, get_args

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ModuleNotFoundError as e:  # (only a missing prometheus_client, nothing else)
    if (e.name or "").partition(".")[0] != "prometheus_client":
        raise
    raise ImportError(
        "pooly.prometheus needs prometheus_client: pip install 'pooly[prometheus]'",
        name=e.name,
    ) from e

from ._errors import PoolyError
from ._pool import PoolStatus, State
from ._stats import PoolStats

if TYPE_CHECKING:
    from ._pool import Pool
    from ._pooly import Pooly

__all__ = ("PoolyCollector", "register")

log = logging.getLogger("pooly.prometheus")
log.addHandler(logging.NullHandler())

#: A live pool's states (a stopped pool is left out of the metrics).
_STATES: tuple[str, ...] = tuple(s for s in get_args(State) if s != "stopped")

#: (metric name, help, PoolStatus attribute): gauges read from ``status()``.
_STATUS_GAUGES = (
    ("pooly_pool_size", "Core workers the pool keeps (its size).", "size"),
    ("pooly_pool_max_overflow", "Overflow workers the pool may start.", "max_overflow"),
    ("pooly_idle_workers", "Workers idle, ready for a checkout or a task.", "idle"),
    ("pooly_busy_workers", "Workers leased or running a task.", "busy"),
    ("pooly_overflow_workers", "Overflow workers running.", "overflow"),
    ("pooly_spare_workers", "Warm spare workers ready to replace a dead one.", "spares"),
    ("pooly_waiting_checkouts", "Checkouts waiting for a worker.", "waiting"),
)

#: (metric name without _total, help, PoolStats attribute): counters read from ``stats()``.
_COUNTERS = (
    ("pooly_checkouts", "Leases granted to checkouts since the pool started.", "checkouts"),
    ("pooly_checkout_timeouts", "Checkouts that timed out.", "checkout_timeouts"),
    ("pooly_calls", "Calls and tasks sent to workers.", "calls"),
    (
        "pooly_call_timeouts",
        "Calls and tasks that ran past their call_timeout (their worker was killed).",
        "call_timeouts",
    ),
    ("pooly_replacements", "Workers started to replace a dead or reclaimed one.", "replacements"),
    ("pooly_recycles", "Workers retired on reaching a limit and replaced.", "recycles"),
    ("pooly_overflow_started", "Overflow workers started.", "overflow_started"),
    (
        "pooly_overflow_dismissed",
        "Overflow workers stopped as no longer needed.",
        "overflow_dismissed",
    ),
    ("pooly_holds", "Leases checked in alive (the samples of pooly_lease_hold_seconds).", "holds"),
)

#: (metric name, help, PoolStats attribute prefix): quantile gauges of the time histograms.
_TIMES = (
    (
        "pooly_checkout_wait_seconds",
        "Time from a checkout's call to its lease, percentiles since the pool started "
        '(quantile="1": the largest).',
        "wait",
    ),
    (
        "pooly_lease_hold_seconds",
        "Time from a lease to its checkin, percentiles since the pool started "
        '(quantile="1": the largest).',
        "hold",
    ),
)
_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"), ("1", "max"))


def _signal_name(exitcode: int | None) -> str:
    """The name of the signal an exit code stands for (negative), or ""."""
    if exitcode is None or exitcode >= 0:
        return ""
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return ""


def _by_code(item: tuple[int | None, int]) -> tuple[bool, int]:
    return item[0] is None, item[0] or 0


class _Families:
    """One scrape's metric families, filled pool by pool."""

    def __init__(self) -> None:
        self.state = GaugeMetricFamily(
            "pooly_pool_state",
            "The pool's state: 1 for its state, 0 for the others.",
            labels=("pool", "state"),
        )
        self.gauges = [
            (GaugeMetricFamily(name, doc, labels=("pool",)), attr)
            for name, doc, attr in _STATUS_GAUGES
        ]
        self.restarts_left = GaugeMetricFamily(
            "pooly_restarts_left",
            "Crash restarts the pool may still make within max_seconds before it fails.",
            labels=("pool",),
        )
        self.counters = [
            (CounterMetricFamily(name, doc, labels=("pool",)), attr)
            for name, doc, attr in _COUNTERS
        ]
        self.crashes = CounterMetricFamily(
            "pooly_crashes",
            "Workers that died unasked, by exit code (negative: the signal, named by signal).",
            labels=("pool", "exitcode", "signal"),
        )
        self.times = [
            (GaugeMetricFamily(name, doc, labels=("pool", "quantile")), prefix)
            for name, doc, prefix in _TIMES
        ]

    def add_status(self, s: PoolStatus) -> None:
        for state in _STATES:
            self.state.add_metric((s.name, state), 1.0 if s.state == state else 0.0)
        for family, attr in self.gauges:
            family.add_metric((s.name,), getattr(s, attr))

    def add_stats(self, s: PoolStats) -> None:
        self.restarts_left.add_metric((s.name,), s.restarts_left)
        for counter, attr in self.counters:
            counter.add_metric((s.name,), getattr(s, attr))
        for code, n in sorted(s.crashes.items(), key=_by_code):
            label = "unknown" if code is None else str(code)
            self.crashes.add_metric((s.name, label, _signal_name(code)), n)
        for family, prefix in self.times:
            for q, suffix in _QUANTILES:
                family.add_metric((s.name, q), getattr(s, f"{prefix}_{suffix}"))

    def __iter__(self) -> Iterator[Metric]:
        yield self.state
        for family, _ in self.gauges:
            yield family
        yield self.restarts_left
        for counter, _ in self.counters:
            yield counter
        yield self.crashes
        for family, _ in self.times:
            yield family


class PoolyCollector(Collector):
    """A ``prometheus_client`` collector of the metrics of every pool of ``tree`` (see
    :mod:`pooly.prometheus` for the list), read at each scrape.

    Register it on a registry (``registry.register(PoolyCollector(tree))``, or
    :func:`register`); one per tree and registry. It keeps ``tree`` alive while it is
    registered: ``registry.unregister(collector)`` when done with the tree (a stopped
    tree's collector reports no pool).
    """

    def __init__(self, tree: Pooly) -> None:
        self._tree = tree

    def _pools(self) -> list[Pool]:
        tree = self._tree
        if not tree._finalizer.alive:  # stopped: its pools too (a failed one stays failed)
            return []
        try:
            return tree.pools()
        except PoolyError:  # a forked child's copy of the tree: not this process's pools
            return []

    def collect(self) -> Iterable[Metric]:
        """The metric families, with a sample set for each pool the tree has now."""
        families = _Families()
        for pool in self._pools():
            try:
                status = pool.status()
            except Exception:  # (a pool never breaks a scrape)
                log.debug("pool %r: status() failed during a scrape", pool.name, exc_info=True)
                continue
            if status.state == "stopped":  # (the tree is stopping, or has stopped)
                continue
            families.add_status(status)
            try:
                stats = pool.stats()
            except Exception:
                log.debug("pool %r: stats() failed during a scrape", pool.name, exc_info=True)
                continue
            families.add_stats(stats)
        return families

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: what a registry checks names with
        (without reading any pool)."""
        return _Families()


def register(tree: Pooly, registry: CollectorRegistry = REGISTRY) -> PoolyCollector:
    """Register a :class:`PoolyCollector` of ``tree`` on ``registry`` (by default
    ``prometheus_client``'s global one) and return it (for ``registry.unregister``)."""
    collector = PoolyCollector(tree)
    registry.register(collector)
    return collector
