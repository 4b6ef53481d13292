"""The worker classes of ``pooly demo`` and ``pooly chaos``, and the soak's poison objects.

They run in worker processes, which import them by module path; the CLI preloads this module
into the forkserver, so it imports nothing heavier than the standard library (not the rest
of the CLI). The poison objects do their harm while they are pickled or unpickled -- in a
worker; in the host they only raise :class:`FaultError`.
"""

from __future__ import annotations

import faulthandler
import hashlib
import multiprocessing
import os
import secrets
import time
from typing import Any

__all__ = (
    "EXIT_CODES",
    "MARK",
    "PAYLOADS",
    "SLOW_START",
    "ChaosWorker",
    "Counter",
    "Crashable",
    "ExitOnPickle",
    "ExitOnUnpickle",
    "FaultError",
    "Hasher",
    "Leaker",
    "RaiseOnPickle",
    "RaiseOnUnpickle",
    "SegfaultOnPickle",
    "SegfaultOnUnpickle",
    "digest_task",
    "ex_task",
    "in_worker",
    "seal",
    "sha256_chain",
    "stuck_in_c",
)

PAYLOADS = tuple(f"payload #{i}".encode() * 4 for i in range(32))
MARK = "deliberate chaos fault"  # in the message of every error a poison object causes
EXIT_CODES = {"os-exit": 70, "arg-unpickle-exit": 71, "result-pickle-exit": 72, "ex-exit": 73}
SLOW_START = 1.5  # seconds a ChaosWorker's constructor sleeps when it claims its slow flag


# ---------------------------------------------------------------------- the demo's workers


class Crashable:
    """Ways for a worker to die inside a call (run in the worker process)."""

    def segfault(self) -> None:
        """Crash the worker process with SIGSEGV, as a buggy C extension would."""
        faulthandler.disable()  # no traceback dump on the terminal; the tally reports it
        faulthandler._sigsegv()  # type: ignore[attr-defined]  # also disables core dumps

    def exit(self, code: int) -> None:
        """End the worker process at once, skipping all cleanup (a library calling _exit)."""
        os._exit(code)


class Counter(Crashable):
    """A stateful worker: a running total, plus a token naming this very instance.

    The token lets a consumer check every result: for one instance, each ``add(k)`` must
    return the previous total plus ``k``. Were a worker ever used by two consumers at once,
    or a stale handle to reach someone else's worker, the totals would not add up.
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.total = 0

    def add(self, k: int) -> tuple[str, int]:
        self.total += k
        return self.token, self.total


class Leaker(Counter):
    """``pooly soak``'s worker: a :class:`Counter` whose ``leak(mb)`` keeps ``mb`` MiB more
    each call (touched, so resident), as a worker with a real leak would."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytearray] = []

    def leak(self, mb: int) -> tuple[str, int, int]:
        """Keep ``mb`` MiB more; return (token, calls so far, resident bytes now)."""
        self.kept.append(bytearray(b"\x01") * (mb << 20))
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return self.token, len(self.kept), rss

    def echo(self, x: Any) -> Any:
        return x


def sha256_chain(payload: bytes, rounds: int) -> str:
    """sha256 applied ``rounds`` times (a little real CPU work with a checkable answer)."""
    digest = payload
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class Hasher(Crashable):
    """A CPU-bound worker: sha256 chains of a payload."""

    def digest(self, payload: bytes, rounds: int) -> str:
        return sha256_chain(payload, rounds)


def digest_task(i: int, rounds: int) -> tuple[int, str]:
    """The demo executor's task (a plain function, as executors run): the sha256 chain of
    payload ``i``, and the pid of the worker that computed it."""
    return os.getpid(), sha256_chain(PAYLOADS[i % len(PAYLOADS)], rounds)


def stuck_in_c(seconds: int) -> None:
    """Hang in C code that holds the GIL (a hung C extension): only the host can stop it
    (a ``call_timeout``); nothing in this process runs meanwhile."""
    import ctypes

    ctypes.PyDLL(None).sleep(seconds)  # PyDLL: the call keeps the GIL


# ---------------------------------------------------------------------- poison objects


class FaultError(Exception):
    """Raised on purpose by the poison objects below, and by nothing else."""


def in_worker() -> bool:
    """True in a worker process (a multiprocessing child), False in the host."""
    return multiprocessing.parent_process() is not None


class RaiseOnPickle:
    """Pickling it raises FaultError (its ``__reduce__``), wherever that happens."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise FaultError(f"{MARK}: RaiseOnPickle.__reduce__")


class ExitOnPickle:
    """Pickling it in a worker ends the worker with ``os._exit`` (its ``__reduce__``)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __reduce__(self) -> str | tuple[Any, ...]:
        if in_worker():
            os._exit(self.code)
        raise FaultError(f"{MARK}: ExitOnPickle will not end the host process")


class SegfaultOnPickle:
    """Pickling it in a worker crashes the worker with SIGSEGV (its ``__reduce__``)."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        if in_worker():
            Crashable().segfault()
        raise FaultError(f"{MARK}: SegfaultOnPickle will not crash the host process")


class SegfaultOnUnpickle:
    """Pickles fine; unpickling it in a worker crashes the worker (its ``__setstate__``)."""

    def __getstate__(self) -> dict[str, int]:
        return {"armed": 1}

    def __setstate__(self, state: dict[str, int]) -> None:
        if in_worker():
            Crashable().segfault()
        raise FaultError(f"{MARK}: SegfaultOnUnpickle will not crash the host process")


class RaiseOnUnpickle:
    """Pickles fine; unpickling it raises FaultError (its ``__setstate__``)."""

    def __getstate__(self) -> dict[str, int]:
        return {"armed": 1}

    def __setstate__(self, state: dict[str, int]) -> None:
        raise FaultError(f"{MARK}: RaiseOnUnpickle.__setstate__")


class ExitOnUnpickle:
    """Pickles fine; unpickling it in a worker ends the worker (its ``__setstate__``)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __getstate__(self) -> dict[str, int]:
        return {"code": self.code}

    def __setstate__(self, state: dict[str, int]) -> None:
        if in_worker():
            os._exit(state["code"])
        raise FaultError(f"{MARK}: ExitOnUnpickle will not end the host process")


# ---------------------------------------------------------------------- the soak's worker


def seal(token: str, total: int, chain: str) -> str:
    """What a ChaosWorker returns with each total; the consumer recomputes it."""
    return hashlib.blake2b(f"{token}:{total}:{chain}".encode(), digest_size=8).hexdigest()


class ChaosWorker(Counter):
    """The soak's worker (runs in the worker process): a running total plus a little CPU
    work, every result a function of the arguments and the worker's own state; and
    methods that carry a poison object across the pipe.

    ``slow_flag`` names a file: the constructor that manages to delete it (exactly one, if
    several start at once) sleeps :data:`SLOW_START` seconds first -- a replacement that is
    slow to start, as one loading a model is, while the soak goes on harming the others.
    """

    def __init__(self, slow_flag: str = "") -> None:
        super().__init__()
        if slow_flag:
            try:
                os.unlink(slow_flag)
            except FileNotFoundError:
                pass
            else:
                time.sleep(SLOW_START)

    def mix(self, k: int, i: int, rounds: int) -> tuple[int, str, int, str]:
        self.total += k
        chain = sha256_chain(PAYLOADS[i], rounds)
        return os.getpid(), self.token, self.total, seal(self.token, self.total, chain)

    def echo(self, obj: object) -> object:
        return obj

    def stuck(self, seconds: int) -> None:
        """Hang in C code that holds the GIL (see :func:`stuck_in_c`)."""
        stuck_in_c(seconds)

    def nap(self, seconds: float) -> int:
        """A slow call (the one the soak interrupts in its caller); returns the pid."""
        time.sleep(seconds)
        return os.getpid()

    def poison(self, how: str) -> object:
        """A result that does harm while it is pickled (here) or unpickled (in the host)."""
        if how == "raise-on-pickle":
            return RaiseOnPickle()
        if how == "exit-on-pickle":
            return ExitOnPickle(EXIT_CODES["result-pickle-exit"])
        if how == "segfault-on-pickle":
            return SegfaultOnPickle()
        if how == "raise-on-unpickle":
            return RaiseOnUnpickle()
        raise ValueError(f"unknown poison {how!r}")


# ---------------------------------------------------------------------- the soak's executor task


def ex_task(kind: str, x: int, i: int, rounds: int) -> tuple[int, str]:
    """The task the soak's executors run (a plain function): ``(x, sha256 chain of payload
    i)`` -- a result its submitter recomputes -- unless ``kind`` names a fault: the task
    segfaults, calls ``os._exit``, hangs in C code holding the GIL, or raises FaultError."""
    if kind == "segfault":
        Crashable().segfault()
    elif kind == "exit":
        os._exit(EXIT_CODES["ex-exit"])
    elif kind == "stuck":
        stuck_in_c(60)
    elif kind == "raise":
        raise FaultError(f"{MARK}: ex_task raised on purpose")
    elif kind:
        raise ValueError(f"unknown ex_task kind {kind!r}")
    return x, sha256_chain(PAYLOADS[i], rounds)
