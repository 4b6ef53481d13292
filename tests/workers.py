"""Worker classes used by the tests (importable by worker processes: tests.workers)."""

from __future__ import annotations

import faulthandler
import os
import signal
import time


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
