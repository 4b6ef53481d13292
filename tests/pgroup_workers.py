"""Worker classes for tests/test_process_groups.py: workers that start processes of their own.

``tree()`` starts a child, which starts a grandchild; both sleep for minutes, so the tests
can see whether a worker's end takes its whole process tree with it (issue 7, defect 4).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The child a worker starts: it starts the grandchild, reports its pid, then sleeps.
_CHILD = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(g.pid, flush=True)
time.sleep(300)
"""


class TreeMaker:
    """A worker whose methods start subprocesses, crash, hang or hold the GIL."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[str]] = []  # kept: no ResourceWarning

    def pid(self) -> int:
        return os.getpid()

    def tree(self) -> tuple[int, int]:
        """Start a child that starts a grandchild: (child pid, grandchild pid)."""
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
        self._children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        child.stdout.close()
        return child.pid, int(line)

    def crash(self) -> None:
        os._exit(3)

    def hang(self) -> None:
        """Ignore SIGTERM and never return: only a SIGKILL ends this worker."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)

    def hold_gil(self, marker: str) -> None:
        """Sleep in C code that holds the GIL (so the watchdog thread can't run), after
        creating ``marker``."""
        Path(marker).touch()
        ctypes.PyDLL(None).sleep(3600)  # PyDLL: the call keeps the GIL


class TerminalUser:
    """A worker that writes to its terminal and has children that use it."""

    def use_terminal(self) -> dict[str, str]:
        print("the worker writes to its terminal", flush=True)
        # A child inherits fd 0 (and the worker's signal dispositions): it writes to the
        # terminal, and reads its stdin.
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, sys; print('its child writes too', flush=True); "
                "print(os.readlink('/proc/self/fd/0') + ' ' + repr(sys.stdin.read()))",
            ],
            stdout=None,
            check=True,
            timeout=20,
        )
        return {"child": str(child.returncode), "stdin": os.readlink("/proc/self/fd/0")}


class FailsAfterTree:
    """A worker whose constructor starts a tree, records its pids in ``path``, then fails."""

    def __init__(self, path: str) -> None:
        pids = TreeMaker().tree()
        Path(path).write_text(f"{os.getpid()} {pids[0]} {pids[1]}")
        raise RuntimeError("the constructor fails after starting processes")


def tree_then_sleep(report: str) -> None:
    """A ProcessChild target: start a child (which starts a grandchild), write both pids to
    ``report`` (a line), then sleep until stopped."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    Path(report).write_text(f"{child.pid} {grandchild}\n")
    time.sleep(3600)
