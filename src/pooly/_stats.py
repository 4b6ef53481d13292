"""A pool's statistics (SPEC 4.5): :class:`PoolStats`, and the fixed-size histogram of
wait and hold times it reads its percentiles from.

The pool keeps its counters and two :class:`Histogram` objects under its own lock, updated
where its state changes anyway, with stores only (see "Interrupt safety" in
:mod:`pooly._pool`): the caller works out a sample's bucket (:func:`bucket`, a call) before
its commit, and the commit adds it with item and attribute stores (:meth:`Histogram.add`
inlined). ``pool.stats()`` copies them under the lock and computes the percentiles outside.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ("BUCKETS", "Histogram", "PoolStats", "bucket")

#: Bucket 0 holds samples of 0 (or less: a clock that stood still, virtual time), bucket 1
#: those up to _LOW seconds, bucket i > 1 those up to _LOW * 2**((i-1)/_PER) (a bucket is
#: ~19% wide); the last one everything above (from ~1.7 days).
_LOW = 1e-6
_PER = 4
BUCKETS = 2 + 4 * 37
_BOUNDS = (0.0, *(_LOW * 2 ** (i / _PER) for i in range(BUCKETS - 2)), math.inf)


#: ``bucket(seconds)``: the bucket of a sample, the first whose upper bound is at least
#: ``seconds`` (0, negative or NaN: bucket 0; infinite: the last). A binary search of
#: ``_BOUNDS`` in C: no Python frame, cheaper than a logarithm, and exactly the bounds the
#: percentiles report.
bucket = functools.partial(bisect.bisect_left, _BOUNDS)


class Histogram:
    """Counts of samples in fixed logarithmic buckets, and the largest sample: a fixed size,
    however much traffic. Changed under its owner's lock (stores only: see ``add``); ``n``,
    the number of samples, is their sum (worked out when asked, not kept up per sample)."""

    __slots__ = ("counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.max = 0.0

    @property
    def n(self) -> int:
        return sum(self.counts)

    def add(self, i: int, seconds: float) -> None:
        """Add a sample of ``seconds`` whose bucket is ``i``. (The pool inlines these
        stores in its commits; this is for everyone else.)"""
        self.counts[i] += 1
        if seconds > self.max:
            self.max = seconds

    def copy(self) -> Histogram:
        h = Histogram()
        h.counts, h.max = list(self.counts), self.max
        return h

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0 < p <= 100) in seconds: the upper bound of the bucket
        it falls in, capped at the largest sample; 0.0 with no samples."""
        n = self.n
        if not n:
            return 0.0
        rank = max(1, math.ceil(n * p / 100))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(_BOUNDS[i], self.max)
        return self.max


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What a pool has done since it started (``pool.stats()``); :class:`PoolStatus` is
    the cheap snapshot of what it is doing now.

    Counters: ``checkouts`` (leases granted to ``checkout``, ``acheckout``,
    ``transaction``, ``atransaction`` -- not the pool's own for ``submit``/``map``),
    ``checkout_timeouts``, ``calls`` (calls through leases and tasks sent to workers, those
    of workers since ended included), ``call_timeouts`` (calls and tasks that ran past
    their ``call_timeout``: their worker was killed -- never also a crash), ``crashes``
    (workers that died unasked, by exit code, negative: the signal, None: not known -- a
    Ray actor's death gives none; their sum is
    ``status().crashed``), ``replacements``, ``recycles`` (``status().replaced``,
    ``status().recycled``), ``overflow_started``, ``overflow_dismissed`` (overflow
    workers stopped as no longer needed: at checkin, after ``overflow_ttl``, by a
    ``resize``, or promoted in a core worker's place).

    Times, in seconds on the pool's clock, as percentiles (p50, p90, p99) of a fixed-size
    log-bucket histogram (each is the upper bound of its ~19%-wide bucket, capped at the
    largest sample; 0.0 before any sample): ``wait_*`` from a checkout's call to its lease
    (every granted checkout; one an idle worker served at once waited 0), ``hold_*`` from
    the checkout's call (if served at once; else from the lease) to its checkin (leases
    checked in alive). ``wait_max``, ``hold_max``: the largest samples; ``holds``: how many.

    ``restarts_left``: crash restarts the pool may still make within its ``max_seconds``
    window before it fails (``max_restarts`` minus those in the window now).
    """

    name: str
    checkouts: int
    checkout_timeouts: int
    calls: int
    call_timeouts: int
    crashes: Mapping[int | None, int]
    replacements: int
    recycles: int
    overflow_started: int
    overflow_dismissed: int
    wait_p50: float
    wait_p90: float
    wait_p99: float
    wait_max: float
    hold_p50: float
    hold_p90: float
    hold_p99: float
    hold_max: float
    holds: int
    restarts_left: int
