"""Process targets for the supervisor tests (importable by child processes: tests.sup_children).

Each runs as ``target(*args)`` in a :class:`pooly.ProcessChild`. Exit code 0 is a normal exit,
anything else (or a signal) an abnormal one.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection


def run_forever() -> None:
    """Run until terminated (SIGTERM's default action ends it at once)."""
    while True:
        signal.pause()


def exit_now(code: int) -> None:
    """Exit at once with ``code``."""
    os._exit(code)


def exit_on_command(conn: Connection) -> None:
    """Wait for an exit code on ``conn`` (shared by every restart of the child), exit with it.

    Announces itself first by sending its pid, so the test knows this incarnation is the one
    reading the pipe.
    """
    conn.send(("ready", os.getpid()))
    code = conn.recv()
    os._exit(code)


def ignore_sigterm(conn: Connection) -> None:
    """Ignore SIGTERM, say so on ``conn``, then run until killed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    while True:
        signal.pause()
