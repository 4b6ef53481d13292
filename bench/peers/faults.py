"""Fault workloads of ``make bench-peers``: what each pool does when a worker dies or hangs.

For each peer and case, with real processes and real signals, on a fresh pool of
``opts.workers`` workers (2 by default), in rounds interleaved across the peers (the peer
order rotates round by round):

* ``busy-kill`` -- every worker runs a long task (``LONG`` s) and short tasks queue behind
  them; once every long task has started (each wrote its pid), the worker running the
  first one is SIGKILLed. What happens to its task, to the other long task(s) running on
  the other workers, and to the queued short tasks.
* ``idle-kill`` -- all workers but one run a long task; the last one is idle: the bench
  saw every worker's pid answer a warm-up task, submitted nothing since but the long
  tasks, saw each long task start on another pid, and checked in ``/proc`` that the
  victim is sleeping and used no CPU time over 50 ms. It is SIGKILLed, and short tasks
  are submitted right after the kill. What happens to the running long task(s) and to
  the short tasks.
* ``hang-py`` / ``hang-c`` / ``hang-c-lock`` -- a task hangs (a pure-Python loop of
  ``time.sleep``; C code holding the GIL: ``ctypes.PyDLL(None).sleep``, which a signal
  cuts short; or a deadlock on a pthread mutex in C holding the GIL, which no signal
  handler can end) with a deadline of ``DEADLINE`` s
  through the peer's own timeout where it has one (pooly ``call_timeout``, pebble
  ``schedule(timeout=)``, mpire ``task_timeout``, deadpool ``deadpool_timeout``); the
  stdlib, multiprocessing.Pool, loky and Ray have only a deadline on the wait
  (``result(timeout=)`` / ``get(timeout=)`` / ``ray.get(timeout=)``), which leaves the
  worker hung. Short tasks run meanwhile.

After each fault: one new task with a deadline (is the pool usable?), then ``workers``
simultaneous tasks of 0.3 s (how many distinct workers serve them: back at full capacity?),
and whether the hung worker is still alive ``HUNG_CHECK`` s after its task started.
Every pool is shut down (its own way, within a deadline) and any process it left behind
is recorded and killed by the bench.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The peer ids, in the order every table lists them (one list, the driver's).
from peers.adapters import PEER_IDS as ALL_PEERS

Section = dict[str, Any]

DEADLINE = 1.0  # the hung task's timeout
HUNG_CHECK = DEADLINE + 1.0  # when the hung worker is looked at (a kill on time is long done)
VICTIM_WAIT = 5.0  # how long past the deadline a peer's own timeout may take to fail the task
QUICK_PEERS = ("pooly-executor", "stdlib")  # a quick run's fault peers (the pair)
START_METHOD = "forkserver"  # for every peer that takes one (loky has its own: loky)

# --------------------------------------------------------------------------------------
# Adapters: one small interface over every peer, futures as concurrent.futures.Future.


@dataclass
class Work:
    """What the workers run: ``fn(*args)`` for the executors (after ``init(*initargs)``
    once per worker), ``cls(*cls_args).method(*args)`` for pooly leases and Ray actors,
    ``mpire_fn(state, *args)`` after ``mpire_init(state)`` for mpire's worker state."""

    fn: Callable[..., Any]
    cls: type
    method: str
    init: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    cls_args: tuple[Any, ...] = ()
    mpire_fn: Callable[..., Any] | None = None
    mpire_init: Callable[..., Any] | None = None


def _fault_work() -> Work:
    from peers import fault_tasks

    return Work(fn=fault_tasks.task, cls=fault_tasks.FaultWorker, method="task")


def _failed(exc: BaseException) -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    f.set_exception(exc)
    return f


class Peer:
    """A pool under test. ``timeout``: the hung-task deadline, given through the peer's
    own mechanism where it has one (``own_timeout``)."""

    id = ""
    own_timeout = True

    def __init__(self, workers: int, work: Work, timeout: float | None = None) -> None:
        self.workers = workers
        self.work = work
        self.timeout = timeout

    def start(self) -> None:
        raise NotImplementedError

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        raise NotImplementedError

    def submit(self, *args: Any) -> cf.Future[Any]:
        """A future for one task; a submit that raises gives a failed future."""
        try:
            return self._submit(args)
        except Exception as e:  # a broken pool refusing work is a fact, not a bench error
            return _failed(e)

    def close(self) -> None:
        raise NotImplementedError


class PoolyExecutor(Peer):
    id = "pooly-executor"

    def start(self) -> None:
        import pooly

        self.ex = pooly.ProcessPoolExecutor(
            self.workers,
            initializer=self.work.init,
            initargs=self.work.initargs,
            call_timeout=self.timeout,
        )

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.ex.submit(self.work.fn, *args)

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class PoolyLease(Peer):
    """pooly's own model: a pool of stateful workers; each task is a thread that checks a
    worker out, calls it, checks it in (the way a web handler would)."""

    id = "pooly-lease"

    def start(self) -> None:
        import pooly

        self.sup = pooly.Pooly()
        try:
            self.pool = self.sup.start_pool(
                "bench",
                self.work.cls,
                args=self.work.cls_args,
                size=self.workers,
                call_timeout=self.timeout,
                start_timeout=120,
            )
        except BaseException:
            self.sup.stop()
            raise
        self.threads = cf.ThreadPoolExecutor(64, thread_name_prefix="lease")

    def _call(self, args: tuple[Any, ...]) -> Any:
        with self.pool.checkout(timeout=60) as w:
            return w.call(self.work.method, *args)

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.threads.submit(self._call, args)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.sup.stop()


class Stdlib(Peer):
    id = "stdlib"
    own_timeout = False

    def start(self) -> None:
        import multiprocessing

        self.ex = cf.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(START_METHOD),
            initializer=self.work.init,
            initargs=self.work.initargs,
        )

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.ex.submit(self.work.fn, *args)

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class MpPool(Peer):
    id = "mp-pool"
    own_timeout = False

    def start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context(START_METHOD)
        self.pool = ctx.Pool(self.workers, initializer=self.work.init, initargs=self.work.initargs)

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        f: cf.Future[Any] = cf.Future()
        self.pool.apply_async(
            self.work.fn, args, callback=f.set_result, error_callback=f.set_exception
        )
        return f

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Pebble(Peer):
    id = "pebble"

    def start(self) -> None:
        import multiprocessing

        import pebble

        self.pool = pebble.ProcessPool(
            self.workers,
            initializer=self.work.init,
            initargs=self.work.initargs,
            context=multiprocessing.get_context(START_METHOD),
        )

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.pool.schedule(self.work.fn, args, timeout=self.timeout)

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)


class Loky(Peer):
    id = "loky"
    own_timeout = False

    def start(self) -> None:
        import loky

        self.ex = loky.ProcessPoolExecutor(
            self.workers, initializer=self.work.init, initargs=self.work.initargs
        )

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.ex.submit(self.work.fn, *args)

    def close(self) -> None:
        self.ex.shutdown(wait=True, kill_workers=True)


class Mpire(Peer):
    id = "mpire"

    def start(self) -> None:
        import mpire

        state = self.work.mpire_init is not None
        self.pool = mpire.WorkerPool(
            self.workers, start_method=START_METHOD, use_worker_state=state, keep_alive=True
        )
        self.fn = self.work.mpire_fn if state else self.work.fn

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        f: cf.Future[Any] = cf.Future()
        self.pool.apply_async(
            self.fn,
            args,
            callback=f.set_result,
            error_callback=f.set_exception,
            worker_init=self.work.mpire_init,
            task_timeout=self.timeout,
        )
        return f

    def close(self) -> None:
        self.pool.terminate()


class Deadpool(Peer):
    id = "deadpool"

    def start(self) -> None:
        import deadpool

        self.ex = deadpool.Deadpool(
            self.workers,
            mp_context=START_METHOD,
            initializer=self.work.init,
            initargs=self.work.initargs,
        )

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        return self.ex.submit(self.work.fn, *args, deadpool_timeout=self.timeout)

    def close(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)


class Ray(Peer):
    """``ray.util.ActorPool`` over ``workers`` actors of the work's class. ActorPool is
    driven by its caller (a task is sent to an actor when an earlier result is fetched);
    a thread here fetches results, each task's own ObjectRef completes its future."""

    id = "ray"
    own_timeout = False

    def start(self) -> None:
        import ray
        from ray.util import ActorPool

        actor = ray.remote(num_cpus=1, max_restarts=0)(self.work.cls)
        self.actors = [actor.remote(*self.work.cls_args) for _ in range(self.workers)]
        self.pool = ActorPool(self.actors)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.driver = threading.Thread(target=self._drive, name="actorpool", daemon=True)
        self.driver.start()

    def _drive(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                has = self.pool.has_next()
                if has:
                    with contextlib.suppress(Exception):  # each future has its own outcome
                        self.pool.get_next_unordered(timeout=0.02)
            if not has:
                time.sleep(0.005)

    def _submit(self, args: tuple[Any, ...]) -> cf.Future[Any]:
        f: cf.Future[Any] = cf.Future()
        method = self.work.method

        def send(actor: Any, v: tuple[Any, ...]) -> Any:
            ref = getattr(actor, method).remote(*v)
            ref.future().add_done_callback(lambda rf: _chain(rf, f))
            return ref

        with self.lock:
            self.pool.submit(send, args)
        return f

    def close(self) -> None:
        import ray

        self.stop.set()
        self.driver.join(5)
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)


def _chain(src: cf.Future[Any], dst: cf.Future[Any]) -> None:
    if dst.done():
        return
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


PEER_CLASSES: dict[str, type[Peer]] = {
    c.id: c for c in (PoolyExecutor, PoolyLease, Stdlib, MpPool, Pebble, Loky, Mpire, Deadpool, Ray)
}
MODULES = {
    "pebble": "pebble",
    "loky": "loky",
    "mpire": "mpire",
    "deadpool": "deadpool",
    "ray": "ray",
}
TIMEOUT_HOW = {
    "pooly-executor": "call_timeout=1 (pool option)",
    "pooly-lease": "call_timeout=1 (pool option)",
    "stdlib": "none: result(timeout=1)",
    "mp-pool": "none: get(timeout=1)",
    "pebble": "schedule(timeout=1)",
    "loky": "none: result(timeout=1)",
    "mpire": "apply_async(task_timeout=1)",
    "deadpool": "submit(deadpool_timeout=1)",
    "ray": "none: ray.get(timeout=1)",
}


def available(peers: list[str]) -> tuple[list[str], list[str]]:
    """The selected peers that can run here, and a note for each one that can't."""
    import importlib.util

    ok, notes = [], []
    for p in peers:
        if p not in PEER_CLASSES:
            notes.append(f"{p}: unknown peer id, skipped")
        elif p in MODULES and importlib.util.find_spec(MODULES[p]) is None:
            notes.append(f"{p}: skipped, `{MODULES[p]}` is not importable here")
        else:
            ok.append(p)
    return ok, notes


# --------------------------------------------------------------------------------------
# Ray: started once per run(), only when selected.


@contextlib.contextmanager
def ray_session(peers: list[str]) -> Iterator[None]:
    if "ray" not in peers:
        yield
        return
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's workers are started by its raylet, not by us: they get sys.path this way.
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


# --------------------------------------------------------------------------------------
# Process bookkeeping.


def _descendants() -> set[int]:
    import psutil

    out = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
    return out


def _infrastructure() -> set[int]:
    """Long-lived helpers shared by every pool of this process (multiprocessing's fork
    server and resource tracker, loky's resource tracker): not a pool's leftovers."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    if "loky" in sys.modules:
        with contextlib.suppress(Exception):
            from loky.backend import resource_tracker

            pids.add(resource_tracker._resource_tracker._pid)
    return {p for p in pids if p}


def alive(pid: int) -> bool:
    """The process is running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _cpu_ticks(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return rest[0], int(rest[11]) + int(rest[12])  # state, utime + stime


def idle_check(pid: int, tries: int = 20) -> bool:
    """The process sleeps and used no CPU time over a 50 ms window (up to ``tries``
    windows: a worker that just lost the race for a task settles in a moment)."""
    for _ in range(tries):
        s0, t0 = _cpu_ticks(pid)
        time.sleep(0.05)
        s1, t1 = _cpu_ticks(pid)
        if s0 == s1 == "S" and t0 == t1:
            return True
    return False


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _in_thread(fn: Callable[[], object], timeout: float) -> str | None:
    """Run ``fn`` in a thread with a deadline; None, or what went wrong."""
    err: list[str] = []

    def body() -> None:
        try:
            fn()
        except BaseException as e:
            err.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return f"did not return within {timeout:.0f} s"
    return err[0] if err else None


@contextlib.contextmanager
def started(peer: Peer, facts: dict[str, Any], shutdown_s: float = 20) -> Iterator[Peer]:
    """The peer started, and always shut down within a deadline; processes it leaves
    behind are recorded (``facts["left"]``) and killed."""
    before = _descendants()
    try:
        peer.start()
        yield peer
    finally:
        facts["shutdown"] = _in_thread(peer.close, shutdown_s) or "ok"
        deadline = time.monotonic() + 5
        left: set[int] = set()
        while time.monotonic() < deadline:
            left = _descendants() - before - _infrastructure()
            if peer.id == "ray" or facts.get("owned_only"):
                # Ray's own processes come and go, and pools running side by side (the
                # embedding workload) start processes meanwhile: only the workers this
                # peer's tasks ran in count.
                left &= facts.get("pids", set())
            if not left:
                break
            time.sleep(0.05)
        facts["left"] = len(left)
        facts["end"] = f"shutdown {facts['shutdown']}; {len(left)} left"
        for pid in left:
            kill(pid)


# --------------------------------------------------------------------------------------
# One case run.


class Tasks:
    """Tasks of one case run: their futures, completion times and pid files."""

    def __init__(self, peer: Peer, d: str) -> None:
        self.peer = peer
        self.d = d
        self.futs: dict[str, cf.Future[Any]] = {}
        self.done_at: dict[str, float] = {}

    def submit(self, tag: str, secs: float, kind: str = "sleep") -> cf.Future[Any]:
        f = self.peer.submit(tag, self.d, secs, kind)
        self.futs[tag] = f
        f.add_done_callback(lambda _f, tag=tag: self.done_at.setdefault(tag, time.monotonic()))
        return f

    def start_of(self, tag: str) -> tuple[int, float] | None:
        try:
            with open(os.path.join(self.d, tag)) as fh:
                pid, t = fh.read().split()
        except FileNotFoundError:
            return None
        return int(pid), float(t)

    def wait_started(self, tags: list[str], timeout: float) -> dict[str, tuple[int, float]]:
        deadline = time.monotonic() + timeout
        while True:
            got = {t: s for t in tags if (s := self.start_of(t)) is not None}
            if len(got) == len(tags) or time.monotonic() > deadline:
                return got
            time.sleep(0.002)

    def settle(self, tags: list[str], timeout: float) -> None:
        cf.wait([self.futs[t] for t in tags], timeout=timeout)

    def outcome(self, tag: str) -> str:
        f = self.futs[tag]
        if not f.done():
            return "pending"
        if f.cancelled():
            return "cancelled"
        e = f.exception()
        return "ok" if e is None else type(e).__name__

    def fate(self, tag: str) -> str:
        """:meth:`outcome`, and for a task that failed or is pending whether it ever
        started (a failure of a task that never ran is the pool's doing, not the task's)."""
        o = self.outcome(tag)
        if o != "ok" and self.start_of(tag) is None:
            o += " (never started)"
        return o

    def messages(self) -> dict[str, str]:
        """The first message of each exception type the futures failed with."""
        out: dict[str, str] = {}
        for f in self.futs.values():
            if f.done() and not f.cancelled() and (e := f.exception()) is not None:
                out.setdefault(type(e).__name__, " ".join(str(e).split())[:160])
        return out

    def pids(self) -> set[int]:
        out = set()
        for name in os.listdir(self.d):
            if not name.startswith("."):
                s = self.start_of(name)
                if s:
                    out.add(s[0])
        return out


def _tally(outcomes: list[str]) -> str:
    c = collections.Counter(outcomes)
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items(), key=lambda kv: (kv[0] != "ok", kv)))


def warmup(tasks: Tasks, workers: int) -> set[int]:
    """``workers`` simultaneous 0.2 s tasks until each ran on its own worker: every worker
    is started and answering; returns their pids."""
    for r in range(5):
        tags = [f"W{r}.{i}" for i in range(workers)]
        for t in tags:
            tasks.submit(t, 0.2)
        tasks.settle(tags, 120)
        got = [tasks.futs[t].result()[0] for t in tags if tasks.outcome(t) == "ok"]
        if len(set(got)) == workers:
            return set(got)
    raise RuntimeError(f"{tasks.peer.id}: warm-up never saw {workers} distinct workers")


def after(tasks: Tasks, facts: dict[str, Any], workers: int, grace: float) -> None:
    """Usable afterwards (one new task, ``grace`` s deadline), and how many workers serve
    ``workers`` simultaneous 0.3 s tasks (``grace`` s deadline)."""
    t = time.monotonic()
    p = tasks.submit("P", 0.0)
    with contextlib.suppress(Exception):
        p.result(timeout=grace)
    facts["usable"] = tasks.outcome("P")
    facts["probe_s"] = time.monotonic() - t if facts["usable"] == "ok" else None
    if facts["usable"] != "ok":
        facts["capacity"] = 0
        return
    tags = [f"C{i}" for i in range(workers)]
    for c in tags:
        tasks.submit(c, 0.3)
    tasks.settle(tags, grace)
    facts["capacity"] = len({tasks.futs[c].result()[0] for c in tags if tasks.outcome(c) == "ok"})


def _new_worker_s(tasks: Tasks, orig: set[int], since: float) -> float | None:
    """Seconds from ``since`` until a task first started on a worker that was not one of
    the original ones (a replacement serving)."""
    starts = [
        s[1]
        for name in os.listdir(tasks.d)
        if not name.startswith(".") and (s := tasks.start_of(name)) and s[0] not in orig
    ]
    return min(starts) - since if starts else None


def _first_ok_after(tasks: Tasks, tags: list[str], since: float) -> float | None:
    """Seconds from ``since`` until the first of ``tags`` that succeeded started running."""
    ts = [s[1] for t in tags if tasks.outcome(t) == "ok" and (s := tasks.start_of(t))]
    return min(ts) - since if ts else None


@dataclass
class Sizes:
    long: float  # the long tasks of the kill cases
    shorts: int  # short tasks queued in the kill cases
    short: float
    hang_shorts: int  # short tasks beside a hung task
    rounds: int
    grace: float  # how long past its due time a future may take before it counts as pending


def case_busy_kill(peer: Peer, sz: Sizes, d: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    w = peer.workers
    with started(peer, facts, 2 * sz.grace):
        tasks = Tasks(peer, d)
        orig = warmup(tasks, w)
        facts["pids"] = set(orig)
        longs = [f"L{i}" for i in range(w)]
        shorts = [f"S{i}" for i in range(sz.shorts)]
        for t in longs:
            tasks.submit(t, sz.long)
        for t in shorts:
            tasks.submit(t, sz.short)
        st = tasks.wait_started(longs, 30)
        if len(st) < w or len({p for p, _ in st.values()}) < w:
            raise RuntimeError(f"{peer.id}: the long tasks did not start on every worker")
        victim = st["L0"][0]
        t_kill = time.monotonic()
        kill(victim)
        tasks.settle(longs + shorts, sz.long + sz.shorts * sz.short + sz.grace)
        facts["victim"] = tasks.outcome("L0")
        facts["victim_s"] = (
            tasks.done_at["L0"] - t_kill if facts["victim"] not in ("ok", "pending") else None
        )
        facts["others"] = _tally([tasks.fate(t) for t in longs[1:] + shorts])
        facts["served_s"] = _first_ok_after(tasks, shorts, t_kill)
        facts["new_worker_s"] = _new_worker_s(tasks, orig, t_kill)
        after(tasks, facts, w, sz.grace)
        facts["pids"] |= tasks.pids()
        facts["messages"] = tasks.messages()
    return facts


def case_idle_kill(peer: Peer, sz: Sizes, d: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    w = peer.workers
    with started(peer, facts, 2 * sz.grace):
        tasks = Tasks(peer, d)
        orig = warmup(tasks, w)
        facts["pids"] = set(orig)
        longs = [f"L{i}" for i in range(w - 1)]
        for t in longs:
            tasks.submit(t, sz.long)
        st = tasks.wait_started(longs, 30)
        busy = {p for p, _ in st.values()}
        if len(st) < w - 1 or len(busy) < w - 1:
            raise RuntimeError(f"{peer.id}: the long tasks did not start on distinct workers")
        idle = sorted(orig - busy)
        if not idle:
            raise RuntimeError(f"{peer.id}: no idle worker left")
        victim = idle[0]
        facts["idle_verified"] = idle_check(victim)
        t_kill = time.monotonic()
        kill(victim)
        shorts = [f"S{i}" for i in range(sz.shorts)]
        for t in shorts:
            tasks.submit(t, sz.short)
        tasks.settle(longs + shorts, sz.long + sz.shorts * sz.short + sz.grace)
        facts["longs"] = _tally([tasks.fate(t) for t in longs])
        facts["others"] = _tally([tasks.fate(t) for t in shorts])
        facts["served_s"] = _first_ok_after(tasks, shorts, t_kill)
        facts["new_worker_s"] = _new_worker_s(tasks, orig, t_kill)
        after(tasks, facts, w, sz.grace)
        facts["pids"] |= tasks.pids()
        facts["messages"] = tasks.messages()
    return facts


def case_hang(peer: Peer, sz: Sizes, d: str, kind: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    w = peer.workers
    with started(peer, facts, 2 * sz.grace):
        tasks = Tasks(peer, d)
        orig = warmup(tasks, w)
        facts["pids"] = set(orig)
        h = tasks.submit("H", 30.0, kind)
        st = tasks.wait_started(["H"], 30)
        if not st:
            raise RuntimeError(f"{peer.id}: the hanging task never started")
        hung, t0 = st["H"]
        shorts = [f"S{i}" for i in range(sz.hang_shorts)]
        for t in shorts:
            tasks.submit(t, sz.short)

        def look() -> None:  # the hung worker, HUNG_CHECK s after its task started
            if not alive(hung):
                facts["hung"] = "killed"
                return
            served = [
                s
                for name in os.listdir(tasks.d)
                if not name.startswith(".")
                and (s := tasks.start_of(name))
                and s[0] == hung
                and s[1] > t0 + DEADLINE
            ]
            facts["hung"] = "alive, serving again" if served else "alive, still stuck"

        looker = threading.Timer(max(0.0, t0 + HUNG_CHECK - time.monotonic()), look)
        looker.start()
        if peer.own_timeout:
            cf.wait([h], timeout=t0 + DEADLINE + VICTIM_WAIT - time.monotonic())
            facts["victim"] = tasks.outcome("H")
            if facts["victim"] == "pending":
                facts["victim"] = f"pending at {DEADLINE + VICTIM_WAIT:.0f} s"
            facts["victim_s"] = (
                tasks.done_at["H"] - t0
                if not facts["victim"].startswith(("ok", "pending"))
                else None
            )
        else:  # the caller's deadline on the wait: the only one these peers have
            try:
                h.result(timeout=max(0.0, t0 + DEADLINE - time.monotonic()))
                facts["victim"] = "ok"
            except cf.TimeoutError:
                facts["victim"] = "still pending (wait timed out)"
                facts["victim_s"] = time.monotonic() - t0
            except Exception as e:
                facts["victim"] = type(e).__name__
                facts["victim_s"] = time.monotonic() - t0
        tasks.settle(shorts, sz.hang_shorts * sz.short + sz.grace)
        facts["others"] = _tally([tasks.fate(t) for t in shorts])
        after(tasks, facts, w, sz.grace)
        facts["new_worker_s"] = _new_worker_s(tasks, orig, t0 + DEADLINE)
        looker.join()
        if facts["hung"] != "killed" and not alive(hung):
            facts["hung"] += f"; killed by {time.monotonic() - t0:.0f} s"
        facts["pids"] |= tasks.pids()
        facts["messages"] = tasks.messages()
        kill(hung)  # the bench's own cleanup, after the facts were taken
    return facts


HANG_HOW = {
    "hang-py": "a pure-Python loop of time.sleep",
    "hang-c": (
        "C code holding the GIL: ctypes.PyDLL(None).sleep -- libc's sleep, which any signal "
        "ends early, after which a Python signal handler runs"
    ),
    "hang-c-lock": (
        "C code holding the GIL that signals do not end: pthread_mutex_timedlock on a mutex "
        "the thread already holds, called through ctypes.PyDLL -- a deadlocked C library; "
        "only a signal whose default action kills (SIGKILL, SIGTERM without a Python "
        "handler) stops it"
    ),
}

CASES: dict[str, tuple[str, Callable[[Peer, Sizes, str], dict[str, Any]]]] = {
    "busy-kill": ("SIGKILL of a busy worker, other tasks in flight", case_busy_kill),
    "idle-kill": ("SIGKILL of an idle worker, other tasks in flight", case_idle_kill),
    "hang-py": (
        "A task hung in Python (time.sleep loop), deadline 1 s",
        lambda p, s, d: case_hang(p, s, d, "pyhang"),
    ),
    "hang-c": (
        "A task stuck in C code holding the GIL (libc sleep), deadline 1 s",
        lambda p, s, d: case_hang(p, s, d, "chang"),
    ),
    "hang-c-lock": (
        "A task deadlocked in C code holding the GIL (a pthread mutex), deadline 1 s",
        lambda p, s, d: case_hang(p, s, d, "clock"),
    ),
}


def run_one(peer_id: str, case: str, workers: int, sz: Sizes) -> dict[str, Any]:
    """One fresh pool, one case; an error of the bench itself is reported, not raised."""
    timeout = DEADLINE if case.startswith("hang") else None
    peer = PEER_CLASSES[peer_id](workers, _fault_work(), timeout)
    d = tempfile.mkdtemp(prefix=f"pooly-faults-{peer_id}-")
    t = time.monotonic()
    try:
        facts = CASES[case][1](peer, sz, d)
    except Exception as e:
        facts = {"error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(d, ignore_errors=True)
    facts["secs"] = time.monotonic() - t
    return facts


# --------------------------------------------------------------------------------------
# Tables.


def _counts(vals: list[Any], n: int) -> str:
    c = collections.Counter("—" if v is None else str(v) for v in vals)
    if len(c) == 1:
        (k,) = c
        return f"{k} ({n}/{n})" if n > 1 else k
    return "; ".join(f"{k} ({m}/{n})" for k, m in c.most_common())


def _median_s(vals: list[float | None]) -> tuple[str, float | None]:
    got = [v for v in vals if v is not None]
    if not got:
        return "—", None
    m = statistics.median(got)
    s = f"{m * 1e3:.0f} ms" if m < 1 else f"{m:.2f} s"
    if len(got) < len(vals):
        s += f" ({len(got)}/{len(vals)} rounds)"
    return s, m


def _generic(msg: str) -> str:
    """A message with its pids and ids left out, so the rounds' messages collapse."""
    import re

    msg = re.sub(r"\b[0-9a-f]{16,}\b", "<id>", msg)
    msg = re.sub(r"namespace: \S+", "namespace: <id>", msg)
    return re.sub(r"\b\d{3,}\b", "<pid>", msg)


def _yes(v: Any) -> str:
    return "yes" if v is True else "no" if v is False else str(v)


def sections(results: dict[str, dict[str, list[dict[str, Any]]]], workers: int) -> list[Section]:
    out: list[Section] = []
    served_plot: dict[str, dict[str, float]] = {}
    for case, (title, _) in CASES.items():
        rows = []
        notes: list[str] = []
        hang = case.startswith("hang")
        for peer, rounds in results.get(case, {}).items():
            n = len(rounds)
            msgs = sorted(
                {f"{k}: {_generic(v)}" for r in rounds for k, v in r.get("messages", {}).items()}
            )
            if msgs:
                notes.append(f"{peer}: " + " | ".join(msgs))
            errs = [r["error"] for r in rounds if "error" in r]
            for e in sorted(set(errs)):
                notes.append(f"{peer}: bench error in {errs.count(e)}/{n} round(s): {e}")
            ok = [r for r in rounds if "error" not in r]
            if not ok:
                rows.append([peer, "bench error"] + [None] * (8 if hang else 7))
                continue
            k = len(ok)

            def col(key: str, rs: list[dict[str, Any]] = ok, k: int = k) -> str:
                return _counts([r.get(key) for r in rs], k)

            if case == "busy-kill":
                served, sm = _median_s([r["served_s"] for r in ok])
                rows.append(
                    [
                        peer,
                        col("victim"),
                        _median_s([r["victim_s"] for r in ok])[0],
                        col("others"),
                        served,
                        _median_s([r["new_worker_s"] for r in ok])[0],
                        _counts([r["usable"] for r in ok], k),
                        _counts([f"{r['capacity']}/{workers}" for r in ok], k),
                        col("end"),
                    ]
                )
            elif case == "idle-kill":
                served, sm = _median_s([r["served_s"] for r in ok])
                rows.append(
                    [
                        peer,
                        _counts([_yes(r["idle_verified"]) for r in ok], k),
                        col("longs"),
                        col("others"),
                        served,
                        _median_s([r["new_worker_s"] for r in ok])[0],
                        _counts([r["usable"] for r in ok], k),
                        _counts([f"{r['capacity']}/{workers}" for r in ok], k),
                        col("end"),
                    ]
                )
            else:
                sm = None
                rows.append(
                    [
                        peer,
                        TIMEOUT_HOW.get(peer, ""),
                        col("victim"),
                        _median_s([r.get("victim_s") for r in ok])[0],
                        col("others"),
                        col("hung"),
                        _median_s([r["new_worker_s"] for r in ok])[0],
                        _counts([r["usable"] for r in ok], k),
                        _counts([f"{r['capacity']}/{workers}" for r in ok], k),
                        col("end"),
                    ]
                )
            if sm is not None:
                served_plot.setdefault(case, {})[peer] = sm
        if case == "busy-kill":
            columns = [
                "peer",
                "killed task's future",
                "it failed after",
                "other in-flight tasks (per round)",
                "served again after (a queued task started)",
                "a new worker's first task after",
                "new task afterwards",
                "workers serving afterwards",
                "shutdown; processes left (the bench kills them)",
            ]
            what = (
                f"{workers} workers; each runs a long task and short tasks queue behind them. "
                "Once every long task has started (each wrote its pid and start time), the "
                "worker running the first is SIGKILLed. The killed task's future: its outcome "
                "and how long after the kill it failed; the other long task(s) and the queued "
                "short tasks: outcomes per round; 'served again': from the kill until the "
                "first queued short task started (and succeeded; the other workers are busy "
                "with their long tasks, so only a replacement can serve it early); "
                "'a new worker's first task': from the kill until a task started on a pid "
                "that was not an original worker. Afterwards one new task (with a deadline) and "
                f"{workers} simultaneous 0.3 s tasks (distinct workers serving them)."
            )
        elif case == "idle-kill":
            columns = [
                "peer",
                "victim verified idle",
                "running long task(s)",
                "short tasks submitted after the kill",
                "served again after (a queued task started)",
                "a new worker's first task after",
                "new task afterwards",
                "workers serving afterwards",
                "shutdown; processes left (the bench kills them)",
            ]
            what = (
                f"{workers} workers. Warm-up tasks show every worker's pid; then all workers "
                "but one get a long task, and the bench waits until each has started on its "
                "own pid. Nothing else was submitted, so the last worker is idle; the bench "
                "also checks in /proc that it sleeps and used no CPU over 50 ms ('verified "
                "idle'). It is SIGKILLed, and short tasks are submitted right after the kill. "
                "Outcomes of the running long task(s) and of the short tasks; 'served again': "
                "kill until the first short task started (and succeeded); then the same "
                "checks afterwards as for the busy kill."
            )
        else:
            columns = [
                "peer",
                "timeout mechanism",
                "hung task's future",
                "it failed after",
                "other tasks meanwhile",
                f"hung worker {HUNG_CHECK:.0f} s after its task started",
                "a new worker's first task after the deadline",
                "new task afterwards",
                "workers serving afterwards",
                "shutdown; processes left (the bench kills them)",
            ]
            what = (
                f"{workers} workers; a task hangs ("
                + HANG_HOW[case]
                + f") for 30 s, with a deadline of {DEADLINE:.0f} s through the peer's own "
                "timeout where it has one, else through the wait (result(timeout=1), which "
                "leaves the task running). Short tasks are submitted once it has started. "
                "'It failed after': from the hung task's start in its worker. 'Alive "
                f"afterwards': the hung worker process {HUNG_CHECK:.0f} s after its task "
                "started: killed, alive and still stuck, or alive and serving again (it "
                "started a task after the deadline); '; killed by N s': the peer killed it "
                "later, before the end of the case (the bench kills it itself after the "
                "checks). "
                "Afterwards one new task (with a deadline) and "
                f"{workers} simultaneous 0.3 s tasks."
            )
        out.append(
            {
                "id": f"faults-{case}",
                "title": title,
                "what": what,
                "columns": columns,
                "rows": rows,
                "notes": notes,
                "plots": [],
            }
        )
    for case in ("busy-kill", "idle-kill"):
        if served_plot.get(case):
            sec = next(s for s in out if s["id"] == f"faults-{case}")
            sec["plots"].append(
                {
                    "file": f"faults-{case}-served.png",
                    "kind": "bar",
                    "title": f"{CASES[case][0]}: time until a queued task was served",
                    "xlabel": "peer",
                    "ylabel": "seconds after the kill (median; missing: never)",
                    "series": served_plot[case],
                    "log_x": False,
                    "log_y": True,
                }
            )
    return out


def run(opts: argparse.Namespace) -> list[Section]:
    """The fault sections, for the peers selected in ``opts.peers``."""
    quick = bool(getattr(opts, "quick", False))
    workers = int(getattr(opts, "workers", 2) or 2)
    sz = (
        Sizes(long=0.6, shorts=6, short=0.05, hang_shorts=30, rounds=1, grace=2.0)
        if quick
        else Sizes(long=1.0, shorts=10, short=0.1, hang_shorts=15, rounds=3, grace=3.0)
    )
    rounds = int(getattr(opts, "fault_rounds", 0) or sz.rounds)
    peers, skipped = available(list(getattr(opts, "peers", None) or ALL_PEERS))
    if quick and len(peers) > len(QUICK_PEERS):
        keep = [p for p in peers if p in QUICK_PEERS] or peers[:2]
        skipped.append(
            f"quick run: only {', '.join(keep)}; left out: "
            + ", ".join(p for p in peers if p not in keep)
        )
        peers = keep
    cases = list(getattr(opts, "fault_cases", None) or CASES)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c: {p: [] for p in peers} for c in cases}
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    with ray_session(peers):
        for r in range(rounds):
            for case in cases:
                k = r % max(1, len(peers))
                for p in peers[k:] + peers[:k]:
                    results[case][p].append(run_one(p, case, workers, sz))
    secs = time.monotonic() - t0
    out = sections(results, workers)
    for s in out:
        s["notes"] += skipped
        s["notes"].append(
            f"{rounds} round(s), peers interleaved (order rotated each round); "
            f"start method {START_METHOD} where a peer takes one (loky: its own); "
            f"fault workloads took {secs:.0f} s in all; load average {load:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after (the machine is shared). 'pending': not done "
            f"when the bench stopped waiting ({sz.grace:.0f} s past when it was due)."
        )
    return out


# --------------------------------------------------------------------------------------
# Standalone.


def print_sections(out: list[Section], stream: Any = None) -> None:
    stream = stream or sys.stdout
    for s in out:
        print(f"\n## {s['title']}\n\n{s['what']}\n", file=stream)
        print("| " + " | ".join(s["columns"]) + " |", file=stream)
        print("|" + " --- |" * len(s["columns"]), file=stream)
        for row in s["rows"]:
            cells = [
                "" if c is None else f"{c:.3g}" if isinstance(c, float) else str(c) for c in row
            ]
            print("| " + " | ".join(cells) + " |", file=stream)
        for n in s["notes"]:
            print(f"\n- {n}", file=stream)
        for p in s["plots"]:
            print(f"\n(plot {p['file']}: {p['series']})", file=stream)


def cli(
    run_fn: Callable[[argparse.Namespace], list[Section]], argv: list[str] | None = None
) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peers", default=",".join(p for p in ALL_PEERS if p != "ray"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the sections here")
    ap.add_argument("--sentences", type=int, default=0, help="embed: sentences per pass")
    ap.add_argument("--fault-rounds", type=int, default=0, help="faults: rounds per case")
    opts = ap.parse_args(argv)
    opts.peers = [p for p in opts.peers.split(",") if p]
    t = time.monotonic()
    out = run_fn(opts)
    print_sections(out)
    print(f"\n({time.monotonic() - t:.0f} s)")
    if opts.json:
        import json

        with open(opts.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(cli(run))
