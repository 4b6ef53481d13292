"""Worker classes for the Ray-backed pools of tests/ray (imported by the actors too: the
cluster's processes have the repository on their PYTHONPATH, see tests/ray/__init__.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


class Stateful:
    """A worker with state, a few ways to fail, and a way to say where it runs."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def getpid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def boom(self, text: str) -> None:
        raise ValueError(text)

    def exit(self, code: int) -> None:
        raise SystemExit(code)

    def die(self, code: int) -> None:
        os._exit(code)

    def unpicklable(self) -> Any:
        return threading.Lock()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def stuck(self, seconds: int) -> None:
        """Hang in C code that holds the GIL (a hung C extension)."""
        import ctypes

        ctypes.PyDLL(None).sleep(seconds)


class FailsToStart:
    def __init__(self) -> None:
        raise RuntimeError("no model file here")


class Blob:
    """Large arguments and results (the pump's partial reads and writes)."""

    def echo(self, data: bytes) -> bytes:
        return data

    def make(self, n: int) -> bytes:
        return bytes(range(256)) * (n // 256)
