"""Readings from Linux ``/proc`` for ``pooly chaos``: this process's descendants (zombies
included), file descriptors, threads and memory, and a snapshot to compare before/after.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

__all__ = ("Snapshot", "descendants", "fd_count", "proc_stat", "start_time", "status_field")


def proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def start_time(pid: int) -> str | None:
    """A live (non-zombie) process's start time (clock ticks since boot), else None."""
    fields = proc_stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return fields[19]


def descendants() -> dict[int, str]:
    """Every descendant of this process: pid -> state letter (Z = zombie)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    state: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = proc_stat(entry.name)
        if fields is not None:
            pid = int(entry.name)
            state[pid] = fields[0]
            children[int(fields[1])].append(pid)
    out: dict[int, str] = {}
    todo = [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in out:
                out[pid] = state[pid]
                todo.append(pid)
    return out


def status_field(name: str) -> int:
    """An integer field of /proc/self/status (VmRSS in kB, Threads)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(name)


def fd_count() -> int:
    """File descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Snapshot:
    """What the host holds: descendant processes, zombies, fds, OS threads."""

    processes: dict[int, str]
    fds: int
    threads: int

    @staticmethod
    def take() -> Snapshot:
        return Snapshot(descendants(), fd_count(), status_field("Threads"))

    def zombies(self) -> list[int]:
        return sorted(pid for pid, s in self.processes.items() if s == "Z")

    def extra_over(self, base: Snapshot) -> dict[str, int]:
        live = {p for p, s in self.processes.items() if s != "Z"}
        base_live = {p for p, s in base.processes.items() if s != "Z"}
        return {
            "processes": len(live - base_live),
            "zombies": len(set(self.zombies()) - set(base.zombies())),
            "fds": self.fds - base.fds,
            "threads": self.threads - base.threads,
        }
