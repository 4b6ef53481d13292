"""Worker classes for the core-v2 defect regressions (importable by worker processes)."""

from __future__ import annotations

import os
import time

import pooly
from tests.workers import Counter


class NotAnException:
    """What a broken ``__reduce__`` rebuilds."""

    def __init__(self, text: str) -> None:
        self.text = text


class RebuildsAsNonException(Exception):
    """An exception whose pickle rebuilds a plain object (defect Q)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (NotAnException, (str(self),))


class InitRaisesRebuildsAsNonException:
    def __init__(self) -> None:
        raise RebuildsAsNonException("bad reduce in a constructor")


class Client(Counter):
    """A worker that is itself a client of something that can raise pooly's own errors."""

    def raise_crashed(self) -> None:
        raise pooly.WorkerCrashed("another pool's worker died", pid=1, exitcode=-9)

    def raise_system_exit(self, code: int = 2) -> None:
        raise SystemExit(code)  # e.g. argparse inside the worker

    def raise_keyboard_interrupt(self) -> None:
        raise KeyboardInterrupt

    def raise_bad_reduce(self) -> None:
        raise RebuildsAsNonException("bad reduce in a method")

    def sleep_marked(self, marker: str, seconds: float) -> int:
        """Create ``marker`` (so the host knows the call runs), sleep, return the pid."""
        with open(marker, "w"):
            pass
        time.sleep(seconds)
        return os.getpid()

    def size_of(self, data: bytes) -> int:
        return len(data)
