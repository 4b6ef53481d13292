"""Tasks for tests/test_executor.py: module-level functions (an executor's tasks) and a worker
class (a pool's ``submit``/``map``), importable by worker processes as tests.executor_tasks.
"""

from __future__ import annotations

import os
import time

from tests.workers import Counter

#: Set by :func:`init_set` (an executor's initializer) in each worker process.
INIT_VALUE: object = None


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def identity(x: object) -> object:
    return x


def pid_of(x: object) -> tuple[int, object]:
    """The worker's pid with the argument: which worker ran which task."""
    return os.getpid(), x


def sleep_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def raise_system_exit(code: int) -> None:
    raise SystemExit(code)


def touch(path: str, value: object = None) -> object:
    """A visible side effect: ``path`` exists once the task has run."""
    open(path, "w").close()
    return value


def step(i: int, fail_at: int, seconds: float, marker_dir: str) -> int:
    """Mark that task ``i`` ran, take ``seconds``, then return ``i`` (``ValueError`` at
    ``fail_at``)."""
    open(os.path.join(marker_dir, str(i)), "w").close()
    time.sleep(seconds)
    if i == fail_at:
        raise ValueError(f"step {i} failed")
    return i


def init_set(value: object, record: str | None = None) -> None:
    """An initializer: sets :data:`INIT_VALUE`; appends this worker's pid to ``record``."""
    global INIT_VALUE
    INIT_VALUE = value
    if record is not None:
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")


def get_init() -> tuple[int, object]:
    return os.getpid(), INIT_VALUE


def failing_init(message: str) -> None:
    raise RuntimeError(message)


class Calc(Counter):
    """A worker class for ``pool.submit`` / ``pool.map`` (a Counter with a few more methods)."""

    def add(self, x: int, y: int) -> int:
        return x + y

    def scaled(self, x: int, *, factor: int = 1) -> int:
        return x * factor

    def raise_exit(self, code: int) -> None:
        raise SystemExit(code)

    def touch(self, path: str) -> str:
        open(path, "w").close()
        return path

    def step(self, i: int, fail_at: int, seconds: float, marker_dir: str) -> int:
        return step(i, fail_at, seconds, marker_dir)


def kwargs_of(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    """What it was called with (``fn=`` and ``method=`` included)."""
    return args, kwargs


def exiting_init(code: int) -> None:
    raise SystemExit(code)
