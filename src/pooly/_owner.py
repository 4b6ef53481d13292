"""Who holds a lease, and noticing -- at once, without polling -- when that holder ends.

A holder is the asyncio task that checked a worker out, when the checkout ran inside one;
otherwise the thread. A task's leases are handed back from its done-callback, which the
event loop runs as soon as the task finishes -- or, for a task that never finishes (its
loop closed while it was pending), when it is collected.

Each thread gets, on its first checkout, a
set of its leases stored in a :class:`threading.local` next to a token object. CPython clears
a thread's locals as the thread state is torn down (before ``Thread.join`` returns), which
drops the token and fires its :func:`weakref.finalize` callback *in the dying thread*. The
callback hands every lease still in the set back to its pool.

The callback must stay small: it runs during thread teardown, so it only does bookkeeping
under the pool's lock and leaves any slow work (restarting a worker) to the supervisor.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ("LeaseSet", "current_holder", "current_leases")

#: A holder's live leases. A dict used as a set: adding and removing are item stores, which
#: no asynchronous exception can interrupt half-way (see "Interrupt safety" in _pool).
LeaseSet = dict[Any, None]


class _Token:
    __slots__ = ("__weakref__",)


_local = threading.local()

#: Lease sets of tasks that hold leases. Weak: an entry lives only as long as its task.
_task_leases: weakref.WeakKeyDictionary[asyncio.Task[Any], LeaseSet] = weakref.WeakKeyDictionary()
_running_loop = asyncio._get_running_loop  # C-accelerated; None outside a running loop


def current_leases() -> LeaseSet:
    """The calling task's or thread's set of live leases (created, and monitored, on first use)."""
    if _running_loop() is not None:
        task = asyncio.current_task()
        if task is not None:
            return _leases_of_task(task)
    d = _local.__dict__
    leases: LeaseSet | None = d.get("leases")
    if leases is None:
        leases = {}
        token = _Token()
        fin = weakref.finalize(token, _holder_ended, leases, os.getpid())
        fin.atexit = False  # at interpreter exit Pooly.stop() does the cleaning
        d["token"] = token
        d["leases"] = leases
    return leases


def current_holder() -> tuple[LeaseSet, object]:
    """``current_leases()``, and whose they are: the calling task, or thread (kept per
    thread: a checkout asks for both, and the thread's name is read only when shown)."""
    if _running_loop() is not None:
        task = asyncio.current_task()
        if task is not None:
            return _leases_of_task(task), task
    d = _local.__dict__
    held: tuple[LeaseSet, object] | None = d.get("held")
    if held is None:
        held = d["held"] = (current_leases(), threading.current_thread())
    return held


def _leases_of_task(task: asyncio.Task[Any]) -> LeaseSet:
    leases = _task_leases.get(task)
    if leases is None:
        leases = _task_leases[task] = {}
        # A task that never finishes -- destroyed pending, its loop closed under it -- runs
        # no done-callback: its leases go back when it is collected (the weak reference's
        # callback). One that finishes drops that reference from its done-callback.
        ref = weakref.ref(task, _task_collected)
        _task_refs[ref] = (leases, os.getpid())
        task.add_done_callback(functools.partial(_task_done, ref))
    return leases


#: Lease sets of the tasks that hold them, by a weak reference to the task.
_task_refs: dict[weakref.ref[asyncio.Task[Any]], tuple[LeaseSet, int]] = {}


def _task_done(ref: weakref.ref[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    """Runs in the event loop's thread once the task has finished. A lease the task
    returned is not reclaimed: it was handed on, to whoever awaits the task (as a task
    that ``asyncio.wait_for`` or ``gather`` makes around ``pool.acheckout()`` does). Its
    holder is the loop's thread from then on."""
    entry = _task_refs.pop(ref, None)
    if entry is None:
        return
    leases = entry[0]
    if leases and not task.cancelled() and task.exception() is None:
        result = task.result()
        lease = getattr(result, "_lease", result)  # (an AsyncLease's Lease)
        for held in leases:
            if held is lease:  # (by identity: nothing of the result's own is called)
                lease._pool._hold(lease, current_leases())  # (no task runs callbacks)
                break
    _holder_ended(*entry)


def _task_collected(ref: weakref.ref[asyncio.Task[Any]]) -> None:
    """A task holding leases was collected without finishing. This runs inside the cyclic
    GC, on whatever thread it ran -- perhaps one holding a pool's lock: the leases go back
    from a thread of their own."""
    entry = _task_refs.pop(ref, None)
    if entry is not None and entry[0] and os.getpid() == entry[1]:
        threading.Thread(
            target=_holder_ended, args=entry, name="pooly-reclaim", daemon=True
        ).start()


def _holder_ended(leases: LeaseSet, pid: int) -> None:
    """Runs in the ending thread during its teardown: give back what it still holds.

    In a child forked from the host, CPython tears down every other thread's state, which
    fires these finalizers there too. The leases belong to the host: touching them from the
    child would shut down sockets it shares with the host's workers. So: host only -- by
    pid, not by pooly's fork count (``_fds.HOST``): this may run in the child before the
    at-fork hook that counts the fork.
    """
    if os.getpid() != pid:
        return
    for lease in list(leases):
        reclaim: Callable[[Any], None] = lease._pool._reclaim
        reclaim(lease)
