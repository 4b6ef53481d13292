"""What ``pooly demo`` and ``pooly chaos`` share: option types, the display, log redirection,
pool checks and the final kill sweep (run in the host, by the CLI's main thread unless said).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from .. import Pool, PoolStatus

__all__ = (
    "Display",
    "LogToDisplay",
    "alive",
    "is_full",
    "is_settled",
    "kill_each_worker",
    "non_negative_int",
    "pooly_errors_to",
    "positive_float",
    "positive_int",
)

# ---------------------------------------------------------------------- option types


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


# ---------------------------------------------------------------------- output


class Display:
    """Permanent lines, plus one status: redrawn in place on a terminal, printed as plain
    periodic lines otherwise. The status may have several lines (``\\n``): on a terminal
    each is cut to its width and the block is redrawn with ANSI cursor moves. Called from
    any thread."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._status = ""

    def _erase(self) -> str:
        """What erases the status drawn now (the cursor is at the end of its last line)."""
        if not self._status:
            return ""
        up = self._status.count("\n")
        if not up:  # one line: blanks, which any terminal understands
            return "\r" + " " * len(self._status) + "\r"
        return f"\r\x1b[{up}A\x1b[J"  # up to its first line, erase to the end of the screen

    def line(self, text: str = "") -> None:
        with self._lock:
            self.out.write(self._erase() + text + "\n" + self._status)
            self.out.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if not self.tty:
                self.out.write(text + "\n")
            else:
                size = shutil.get_terminal_size()
                width = max(20, size.columns - 1)
                lines = [s[:width] for s in text.split("\n")][: max(1, size.lines - 1)]
                text = "\n".join(lines)
                if "\n" in text or "\n" in self._status:
                    self.out.write(self._erase() + text)
                else:
                    self.out.write("\r" + text.ljust(len(self._status)))
                self._status = text
            self.out.flush()

    def clear_status(self) -> None:
        with self._lock:
            if self._status:
                self.out.write(self._erase())
                self.out.flush()
                self._status = ""


class LogToDisplay(logging.Handler):
    """Shows pooly's ERROR records (a pool failing) without breaking the status line."""

    def __init__(self, display: Display) -> None:
        super().__init__(logging.ERROR)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"  [pooly log] {record.levelname}: {record.getMessage()}"
            if record.exc_info:  # (a bug in pooly: its traceback is the report's best clue)
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.display.line(text)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def pooly_errors_to(display: Display) -> Iterator[None]:
    """For the block, show pooly's log records on ``display``, ERROR and up only.

    Crash warnings (one per injected fault) would bury the progress line; the tally
    reports every crash anyway, while a pool failing still shows.
    """
    logger = logging.getLogger("pooly")
    handler = LogToDisplay(display)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def kill_each_worker(pool: Pool, timeout: float) -> Iterator[tuple[int, float | None]]:
    """SIGKILL the pool's workers one at a time; for each, yield (pid, ms until the pool
    counted its replacement, or None if it did not within ``timeout`` seconds)."""
    for pid in pool.worker_pids():
        before = pool.status().replaced
        t = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        while time.monotonic() - t < timeout:
            if pool.status().replaced > before:
                yield pid, (time.monotonic() - t) * 1000
                break
            time.sleep(0.001)
        else:
            yield pid, None


# ---------------------------------------------------------------------- pools and processes


def is_settled(s: PoolStatus) -> bool:
    """A pool at rest: ready, ``size`` idle workers and nothing else."""
    return (
        s.state == "ready"
        and s.idle == s.size
        and s.busy == 0
        and s.overflow == 0
        and s.waiting == 0
    )


def is_full(s: PoolStatus) -> bool:
    """Every core worker alive and the pool's: idle + busy, less overflow workers, >= size.

    (An overflow worker still starting counts in ``overflow`` but not in ``busy``, so while
    one starts this errs on the side of "not yet full".)
    """
    return s.idle + s.busy - s.overflow >= s.size


def alive(pid: int) -> bool:
    """Process ``pid`` exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
