"""``pooly demo``'s configuration, and the records its threads keep (see :mod:`pooly.cli.demo`)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

__all__ = (
    "CHECKOUT_TIMEOUT",
    "CONFIRMED",
    "EXIT_CODE",
    "KINDS",
    "LABELS",
    "MAX_SECONDS",
    "OVERFLOW",
    "POOLS",
    "ROUNDS",
    "FaultLog",
    "Options",
    "Order",
    "Stats",
)

# ---------------------------------------------------------------------- configuration

POOLS: tuple[str, str] = ("counters", "hashers")
OVERFLOW = {"counters": 1, "hashers": 2}
CHECKOUT_TIMEOUT = 5.0  # seconds a consumer waits for a worker before giving up on that try
MAX_SECONDS = 5.0  # restart-intensity window of each pool
EXIT_CODE = 70  # what lease.exit() makes a worker exit with
ROUNDS = (1_000, 2_500, 5_000)  # roughly 0.5 to 2 ms of sha256 per call

KINDS = ("sigkill-busy", "segfault", "sigkill-idle", "os-exit", "abandoned")
LABELS = {
    "sigkill-busy": "SIGKILL of a busy worker",
    "segfault": "segfault inside a call",
    "sigkill-idle": "SIGKILL of an idle worker",
    "os-exit": "os._exit inside a call",
    "abandoned": "consumer died holding a lease",
}
CONFIRMED = {  # what "confirmed" means for each kind, in the tally
    "sigkill-busy": "replaced",
    "segfault": "raised WorkerCrashed",
    "sigkill-idle": "replaced",
    "os-exit": "raised WorkerCrashed",
    "abandoned": "reclaimed",
}


@dataclass(frozen=True)
class Options:
    duration: float = 15.0
    consumers: int = 6
    fault_interval: float = 1.0
    size: int = 2
    seed: int | None = None


# ---------------------------------------------------------------------- bookkeeping


@dataclass
class Stats:
    """One consumer thread's counts; only that thread writes them."""

    calls: int = 0  # every call attempted (incremented before the call goes out)
    ok: int = 0  # returned a result that checked out
    crashed: int = 0  # raised WorkerCrashed
    wrong: int = 0  # returned a wrong result (lost)
    errors: int = 0  # raised anything else (lost)
    checkout_timeouts: int = 0
    per_pool: collections.Counter[str] = field(default_factory=collections.Counter)


class Order:
    """A fault for the next consumer calling into a pool to carry out (segfault, _exit)."""

    __slots__ = ("done", "error", "kind", "when")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()
        self.error: BaseException | None = None  # what the call raised (None: it returned)
        self.when = 0.0


@dataclass
class FaultLog:
    """The injector's record (written by the injector thread only)."""

    count: collections.Counter[str] = field(default_factory=collections.Counter)
    confirmed: collections.Counter[str] = field(default_factory=collections.Counter)
    heal_ms: list[float] = field(default_factory=list)
    not_replaced: int = 0  # no replacement within 1 s: right for overflow workers only
    skipped: int = 0  # no target at that moment (e.g. no idle worker)
