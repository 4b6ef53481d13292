"""Worker classes for the reliability suite (importable by worker processes: tests.chaos_workers).

Used by tests/test_intensity_under_fire.py, tests/test_bad_input.py, tests/test_host_failure.py
and bench/intensity.py. Classes that must be counted from the outside record their pid in a
file *from inside the worker*: the host may be dead (test_host_failure) or the pool may have
given up (test_intensity_under_fire) before it could tell anyone which processes it started.
"""

from __future__ import annotations

import os
import threading
import time

from tests.workers import Counter, TwoArgError


def record(directory: str, kind: str) -> None:
    """Create ``<directory>/<kind>-<pid>``: one file per event, so concurrent writers never mix."""
    with open(os.path.join(directory, f"{kind}-{os.getpid()}"), "w") as f:
        f.write(f"{time.monotonic()!r}\n")  # CLOCK_MONOTONIC is system-wide on Linux


def recorded(directory: str, kind: str) -> dict[int, float]:
    """pid -> monotonic time of every ``record(directory, kind)`` so far."""
    out = {}
    for name in os.listdir(directory):
        k, _, pid = name.rpartition("-")
        if k == kind:
            try:
                with open(os.path.join(directory, name)) as f:
                    out[int(pid)] = float(f.read() or "nan")
            except (FileNotFoundError, ValueError):
                continue  # being written right now: counted on the next look
    return out


# ---------------------------------------------------------------------- crash loop


class CrashLoop(Counter):
    """Dies by itself ``delay`` seconds after its constructor ran, whatever it is doing.

    A pool of these crash-loops with nobody's help: every replacement dies too. If ``gate``
    names a file, the countdown starts only once that file exists. Records
    ``started-<pid>`` when constructed and ``crashed-<pid>`` just before dying, so the test
    counts the deaths the pool caused itself, independently of the pool's own counters.
    """

    def __init__(self, directory: str, delay: float, how: str = "exit", gate: str = "") -> None:
        super().__init__()
        record(directory, "started")

        def die() -> None:
            while gate and not os.path.exists(gate):  # the loop starts when the test says so
                time.sleep(0.005)
            time.sleep(delay)
            record(directory, "crashed")
            self.crash(how)

        threading.Thread(target=die, daemon=True).start()

    def crash(self, how: str) -> None:
        """Die now: ``exit`` (os._exit(13)), ``kill`` (SIGKILL) or ``segv`` (segfault)."""
        if how == "exit":
            self.exit(13)
        elif how == "kill":
            self.kill_self()
        elif how == "segv":
            self.segfault()
        raise ValueError(f"unknown crash {how!r}")

    def hold(self, seconds: float = 3600.0) -> None:
        """A long call: the holder sits in it until the worker dies (or is stopped)."""
        time.sleep(seconds)


# ---------------------------------------------------------------------- slow starts


class RecordedSlowInit(Counter):
    """Records ``started-<pid>`` as soon as its constructor runs; then, if ``marker`` exists
    (or is empty: always), sleeps ``delay`` seconds before it is ready."""

    def __init__(self, directory: str, marker: str = "", delay: float = 3600.0) -> None:
        super().__init__()
        record(directory, "started")
        if not marker or os.path.exists(marker):
            time.sleep(delay)


# ---------------------------------------------------------------------- constructors that fail


class InitRaisesUnpicklable:
    """The constructor raises an exception that can't be pickled (it carries a lock)."""

    def __init__(self) -> None:
        raise ValueError("constructor error carrying a lock", threading.Lock())


class InitRaisesUnrebuildable:
    """The constructor raises an exception that pickles in the worker but can't be rebuilt
    in the host (its __init__ needs two arguments, its args hold one)."""

    def __init__(self) -> None:
        raise TwoArgError("constructor error that can't be unpickled", 2)


class InitRaisesSystemExit:
    def __init__(self, code: int = 5) -> None:
        raise SystemExit(code)


class InitRaisesKeyboardInterrupt:
    def __init__(self) -> None:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------- odd results


class Deep(Counter):
    def nest(self, depth: int) -> object:
        """A list nested ``depth`` deep: too deep to pickle for a large depth."""
        x: list[object] = []
        for _ in range(depth):
            x = [x]
        return x

    def size_of(self, x: bytes) -> int:
        return len(x)
