"""Worker classes used by the tests (importable by worker processes: tests.workers)."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time

from pooly.cli.workers import (  # noqa: F401  (the poison objects, re-exported for the tests)
    ExitOnPickle,
    ExitOnUnpickle,
    FaultError,
    RaiseOnPickle,
    RaiseOnUnpickle,
    SegfaultOnPickle,
    SegfaultOnUnpickle,
)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def get(self) -> int:
        return self.n

    def echo(self, x: object) -> object:
        return x

    def pid(self) -> int:
        return os.getpid()

    def getpid(self) -> int:
        """Like pid(), but reachable through a lease (whose ``pid`` property shadows it)."""
        return os.getpid()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    def exit(self, code: int = 3) -> None:
        os._exit(code)

    def kill_self(self, sig: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), sig)

    def segfault(self) -> None:
        faulthandler.disable()  # keep the crash quiet in the test output
        faulthandler._sigsegv()  # type: ignore[attr-defined]

    def _private(self) -> str:
        return "never callable through a lease"


class FailingInit:
    def __init__(self, message: str = "constructor failed") -> None:
        raise RuntimeError(message)


class ExitingInit:
    def __init__(self, code: int = 7) -> None:
        os._exit(code)


class HangingInit:
    def __init__(self) -> None:
        time.sleep(3600)


# ---------------------------------------------------------------------- more worker classes


class Gated(Counter):
    """A Counter whose calls can be held inside the worker until the test lets them go."""

    def sleep_marked(self, marker: str, seconds: float) -> float:
        """Create ``marker`` (so the host knows the call is running), then sleep."""
        open(marker, "w").close()
        time.sleep(seconds)
        return seconds

    def gate(self, marker: str, fifo: str) -> bytes:
        """Create ``marker``, then block until the host writes to the named pipe ``fifo``."""
        open(marker, "w").close()
        with open(fifo, "rb") as f:
            return f.read()

    def fail_unrebuildable(self) -> None:
        """Raise an exception that pickles in the worker but can't be rebuilt in the host."""
        raise TwoArgError("needs two arguments", 2)

    def fail_unpicklable(self) -> None:
        """Raise an exception that can't even be pickled in the worker."""
        raise ValueError("carries a lock", threading.Lock())


class TwoArgError(Exception):
    """Pickles as ``TwoArgError(*args)`` with args=(message,): unpickling it fails."""

    def __init__(self, message: str, extra: int) -> None:
        super().__init__(message)
        self.extra = extra


class RecordingFailInit:
    """Appends its pid to ``path``, then fails: counts how often a constructor was tried."""

    def __init__(self, path: str) -> None:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        raise RuntimeError("recorded and failed")


class FlakyInit(Counter):
    """Starts normally until ``marker`` exists; from then on every constructor raises."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        if os.path.exists(marker):
            raise RuntimeError("flaky constructor: marker present")


class SlowInit(Counter):
    """Starts at once until ``marker`` exists; from then on each constructor takes ``delay`` s."""

    def __init__(self, marker: str, delay: float) -> None:
        super().__init__()
        if os.path.exists(marker):
            time.sleep(delay)


# ---------------------------------------------------------------------- fault injection
# Small objects whose pickling or unpickling does the harm in a worker (the fault matrix of
# STYLE.md, modelled on CPython's test_concurrent_futures/test_deadlock.py). They live once,
# in pooly.cli.workers (the chaos soak uses them too); in the host they only raise FaultError.


class Faulty(Gated):
    """A worker whose results do harm when the worker pickles them or the host unpickles them."""

    def result_exit(self, code: int) -> object:
        return ExitOnPickle(code)

    def result_segfault(self) -> object:
        return SegfaultOnPickle()

    def result_raise_on_pickle(self) -> object:
        return RaiseOnPickle()

    def result_raise_on_unpickle(self) -> object:
        return RaiseOnUnpickle()


class Stuck(Counter):
    """Methods that never return by themselves, some without ever releasing the GIL."""

    def c_sleep(self, seconds: float) -> float:
        """Sleep inside C code that holds the GIL: no Python-level timer or signal handler
        in this process can run meanwhile."""
        import ctypes

        ctypes.PyDLL(None).sleep(int(seconds))  # PyDLL: the call keeps the GIL
        return seconds

    def regex(self, n: int) -> bool:
        """Catastrophic backtracking in the re module's C engine (holds the GIL)."""
        import re

        return re.match(r"(a+)+$", "a" * n + "b") is not None


class Hoarder(Counter):
    """A worker that leaks: each ``hoard(mb)`` keeps ``mb`` MiB more (touched, so resident)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytearray] = []

    def hoard(self, mb: int) -> int:
        self.kept.append(bytearray(b"\x01") * (mb << 20))
        return len(self.kept)
