"""``pooly chaos``: a snapshot of a pool's insides and of every thread's stack, written once,
at the first OTHER outcome -- so that a soak that fails says what the pool was doing.

It reads the pool's and its supervisor's private state: a diagnosis, not an API.
"""

from __future__ import annotations

import sys
import threading
import traceback

from .. import Pool, _owner

__all__ = ("describe_pool", "thread_stacks")


def _holder(pool: Pool, lease: object) -> str:
    """Who holds ``lease``: an asyncio task (with where it is), the task dispatcher, or a
    thread (which one can't be told from outside)."""
    tasks = pool._dispatcher
    if tasks is not None and any(s.lease is lease for s in list(tasks._slots.values())):
        return "the task dispatcher"
    for task, leases in list(_owner._task_leases.items()):
        if lease in leases:
            stack = task.get_stack(limit=3)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in stack)
            return f"task {task.get_name()} done={task.done()} at {where}"
    n = len(lease._leases)  # type: ignore[attr-defined]
    return f"a thread (or no one: its holder set has {n} lease(s))"


def describe_pool(pool: Pool) -> str:
    """The pool's bookkeeping (workers, leases, slots) and its worker supervisor's entries."""
    out = [f"pool {pool.name!r}: {pool.status()}"]
    with pool._lock:
        idle = {id(w) for w in pool._idle}
        for wid, w in pool._workers.items():
            h = w.handle
            state = "idle" if id(w) in idle else "leased" if w.lease is not None else "NEITHER"
            out.append(
                f"  {wid}: pid {h.pid} {state} overflow={w.overflow} retire={w.retire!r} "
                f"exited={h.exited.is_set()} stopping={h.stopping} calls={h.calls}"
                + ("" if w.lease is None else f" held by {_holder(pool, w.lease)}")
            )
        out.append(
            f"  busy={pool._busy} overflow={pool._overflow} core={list(pool._core)} "
            f"reserved={list(pool._reserved)} heirs={list(pool._heirs)} "
            f"waiters={len(pool._waiters)} gone={len(pool._gone)} closed={pool._closed!r}"
        )
    sup = pool._workers_sup
    if sup is not None:
        with sup._lock:
            entries = [(cid, e.child, e.start, e.spec.restart) for cid, e in sup._entries.items()]
            mailbox = len(sup._mailbox)
        loop = sup._thread
        out.append(
            f"  supervisor {sup.name!r}: running={sup._running} mailbox={mailbox} "
            f"loop thread {loop.name if loop else None} (ident {loop.ident if loop else None})"
        )
        for cid, child, st, restart in entries:
            pid = getattr(child, "pid", None)
            start = "" if st is None else f" start in flight (done={st.done})"
            out.append(f"    {cid}: {restart} child pid {pid}{start}")
    return "\n".join(out)


def thread_stacks() -> str:
    """Every thread's current stack, by name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"--- thread {names.get(ident, '?')} ({ident})")
        out.append("".join(traceback.format_stack(frame)).rstrip())
    return "\n".join(out)
