"""Pools whose workers are Ray actors (issue 12, SPEC 4.6), on the simulated cluster of
tests/ray/conftest.py: the same API and semantics as local pools, pooly (not Ray)
restarting the workers, and a lost node taken as a crash of every worker on it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pooly
from tests.conftest import wait_for
from tests.ray import require_ray
from tests.ray.conftest import RayCluster
from tests.ray.ray_workers import Blob, FailsToStart, Stateful

ray = require_ray()

#: Half a CPU per worker: a node (2 CPUs) holds 4 of them.
HALF = {"num_cpus": 0.5}


@pytest.fixture
def tree(ray_cluster: RayCluster) -> Iterator[pooly.Pooly]:
    with pooly.Pooly() as t:
        yield t


def on(node: str, **more: Any) -> pooly.RayBackend:
    """Workers placed on one node of the cluster, by its custom resource."""
    return pooly.RayBackend(actor_options={**HALF, "resources": {node: 0.01}}, **more)


def test_calls_results_and_exceptions_as_local(tree: pooly.Pooly) -> None:
    """A leased Ray worker keeps its state between calls; a method's exception arrives as
    its own type with the worker's traceback as cause; SystemExit in a method is the
    caller's, and the worker lives on; an unpicklable result fails that call only."""
    pool = tree.start_pool("calc", Stateful, (10,), size=1, backend=on("node_a"))
    assert pool.start_method == "ray"
    with pool.checkout() as w:
        assert (w.incr(), w.incr(5)) == (11, 16)
        assert w.getpid() == w.pid
        with pytest.raises(ValueError, match="bad input") as e:
            w.boom("bad input")
        assert isinstance(e.value.__cause__, pooly.RemoteTraceback)
        assert "in boom" in str(e.value.__cause__)
        with pytest.raises(SystemExit) as ex:
            w.exit(3)
        assert ex.value.code == 3
        with pytest.raises(TypeError, match="could not be pickled"):
            w.unpicklable()
        assert w.incr() == 17 and w.getpid() == w.pid  # the same worker, its state kept
    st = pool.stats()
    assert st.crashes == {} and st.calls >= 7


def test_placement_by_resource(tree: pooly.Pooly, ray_cluster: RayCluster) -> None:
    """actor_options place the workers: by a node's custom resource, and SPREAD."""
    pool = tree.start_pool("on-b", Stateful, size=3, backend=on("node_b"))
    where = set()
    for _ in range(3):
        with pool.checkout() as w:
            where.add(w.node_id())
    assert where == {ray_cluster.node_id("node_b")}
    spread = tree.start_pool(
        "spread",
        Stateful,
        size=3,
        backend=pooly.RayBackend(actor_options={**HALF, "scheduling_strategy": "SPREAD"}),
    )
    leases = [spread.checkout() for _ in range(3)]
    nodes = {ray_cluster.name_of(w.node_id()) for w in leases}
    for w in leases:
        spread.checkin(w)
    assert len(nodes) >= 2 and None not in nodes, nodes


def test_sigkill_fails_only_its_holder_and_the_pool_heals(tree: pooly.Pooly) -> None:
    """SIGKILL of a leased worker's actor process mid-call: its holder gets WorkerCrashed
    (fast), the other holder's calls go on, a blocked waiter is served by the
    replacement, which is a new process; the pool is back at full size."""
    pool = tree.start_pool("kill", Stateful, size=2, max_restarts=5, backend=on("node_a"))
    a, b = pool.checkout(), pool.checkout()
    served: list[tuple[int, int]] = []

    def wait_and_use() -> None:
        with pool.checkout(timeout=30) as w:  # (a lease lives as long as its thread)
            served.append((w.pid, w.incr()))

    waiter = threading.Thread(target=wait_and_use)
    waiter.start()
    assert wait_for(lambda: pool.status().waiting == 1)
    box: list[float] = []

    def kill() -> None:
        box.append(time.monotonic())
        os.kill(a.pid, signal.SIGKILL)

    threading.Timer(0.2, kill).start()
    with pytest.raises(pooly.WorkerCrashed) as e:
        a.sleep(10)
    seen = time.monotonic() - box[0]
    assert e.value.pid == a.pid
    assert "ActorDiedError" in str(e.value), e.value
    assert seen < 1.0, seen  # (the bar, 100 ms, is checked by bench/bench_ray.py)
    assert b.incr() == 1  # the other holder never noticed
    waiter.join(30)
    assert served and served[0][0] not in (a.pid, b.pid)
    assert served[0][1] == 1  # a fresh worker
    pool.checkin(b)
    assert wait_for(lambda: pool.status().crashed == 1, timeout=10)
    st = pool.stats()
    assert st.crashes == {None: 1}, st.crashes
    assert a.pid not in pool.worker_pids()


def test_an_idle_worker_that_dies_is_replaced_not_handed_out(tree: pooly.Pooly) -> None:
    """An idle actor SIGKILLed is seen dead (its watch call fails) and replaced; no checkout
    gets it."""
    pool = tree.start_pool("idle", Stateful, size=1, max_restarts=5, backend=on("node_c"))
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pool.worker_pids() not in ([], [pid]), timeout=20)
    with pool.checkout(timeout=20) as w:
        assert w.pid != pid and w.incr() == 1
    assert pool.status().crashed == 1


def test_a_warm_spare_takes_a_dead_workers_place(tree: pooly.Pooly) -> None:
    """With spares=1 a killed worker's place is taken by the warm spare: a checkout is
    served again within a fraction of an actor's start; the spare is refilled."""
    pool = tree.start_pool(
        "spare", Stateful, size=1, max_restarts=5, backend=on("node_a", spares=1)
    )
    assert pool.status().spares == 1
    lease = pool.checkout()
    os.kill(lease.pid, signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(pooly.WorkerCrashed):
        lease.sleep(10)
    with pool.checkout(timeout=20) as w:
        w.incr()
    served = time.monotonic() - t
    assert served < 0.5, served  # an actor's start takes ~0.5-1 s here; the bar is bench's
    assert wait_for(lambda: pool.status().spares == 1, timeout=30)


@pytest.mark.parametrize("method", ["sleep", "stuck"])
def test_call_timeout_kills_the_actor(tree: pooly.Pooly, method: str) -> None:
    """A call past its call_timeout fails with CallTimeout -- for a worker sleeping and for
    one stuck in C code holding the GIL; the actor process is killed and replaced; counted
    as a call timeout, not a crash."""
    pool = tree.start_pool("slow", Stateful, size=1, call_timeout=0.5, backend=on("node_b"))
    with pool.checkout() as w:
        pid = w.pid
        t = time.monotonic()
        with pytest.raises(pooly.CallTimeout):
            getattr(w, method)(30)
        took = time.monotonic() - t
    assert 0.45 < took < 2.0, took
    with pool.checkout(timeout=20) as w2:
        assert w2.pid != pid and w2.incr() == 1
    st = pool.stats()
    assert st.call_timeouts == 1 and st.crashes == {}


def test_restart_intensity_fails_the_pool_alone(tree: pooly.Pooly) -> None:
    """A worker that keeps dying (os._exit in a call) uses up the pool's restart intensity:
    the pool fails, its waiters get PoolFailed; another Ray pool and a local pool serve on."""
    pool = tree.start_pool(
        "doomed", Stateful, size=1, max_restarts=2, max_seconds=60, backend=on("node_c")
    )
    other = tree.start_pool("other", Stateful, size=1, backend=on("node_a"))
    local = tree.start_pool("local", Stateful, size=1)
    for _ in range(3):
        try:
            with pool.checkout(timeout=20) as w:
                w.die(5)
        except (pooly.WorkerCrashed, pooly.PoolFailed):
            pass
    assert wait_for(lambda: pool.status().state == "failed", timeout=20)
    with pytest.raises(pooly.PoolFailed):
        pool.checkout(timeout=5)
    with other.checkout() as w, local.checkout() as lw:
        assert w.incr() == 1 and lw.incr() == 1


def test_a_constructor_that_fails_is_a_worker_start_error(tree: pooly.Pooly) -> None:
    """A worker whose constructor raises fails start_pool with WorkerStartError carrying
    the actor's traceback; no actor is left (the autouse check)."""
    with pytest.raises(pooly.WorkerStartError, match="no model file here") as e:
        tree.start_pool("bad", FailsToStart, size=1, backend=on("node_a"))
    assert isinstance(e.value.__cause__, pooly.RemoteTraceback)
    assert tree.pools() == []


def test_an_unplaceable_worker_times_out_its_start(tree: pooly.Pooly) -> None:
    """A worker Ray can't place (no node has the resource) fails its start at
    start_timeout, saying why, and no actor is left waiting in Ray's queue."""
    backend = pooly.RayBackend(actor_options={"resources": {"no_such_node": 1}})
    t = time.monotonic()
    with pytest.raises(pooly.WorkerStartError, match="Ray could not place it"):
        tree.start_pool("nowhere", Stateful, size=1, start_timeout=2, backend=backend)
    assert time.monotonic() - t < 10


def test_tasks_on_ray_and_a_death_mid_map(tree: pooly.Pooly) -> None:
    """submit/map on a Ray pool; a task that kills its worker fails alone
    (WorkerCrashed), the others complete."""
    pool = tree.start_pool("tasks", Stateful, size=2, max_restarts=5, backend=on("node_b"))
    assert pool.submit("incr", 2).result(timeout=30) == 2
    futs = [pool.submit("die", 9) if i == 3 else pool.submit("sleep", 0.01) for i in range(8)]
    outcomes = []
    for f in futs:
        try:
            outcomes.append(f.result(timeout=60))
        except pooly.WorkerCrashed:
            outcomes.append("crashed")
    assert outcomes.count("crashed") == 1 and outcomes[3] == "crashed", outcomes
    assert [r for r in outcomes if r != "crashed"] == [0.01] * 7


def test_asyncio_on_ray(tree: pooly.Pooly) -> None:
    """acheckout and awaited calls on a Ray pool; a call cancelled mid-way kills its
    worker (its state is unknown), which is replaced."""
    pool = tree.start_pool("aio", Stateful, size=1, max_restarts=5, backend=on("node_a"))

    async def main() -> int:
        async with pool.acheckout() as w:
            assert await w.incr(2) == 2
            pid = w.pid
            task = asyncio.ensure_future(w.sleep(30))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with pool.acheckout(timeout=20) as w2:
            assert w2.pid != pid
            return await w2.incr()

    assert asyncio.run(main()) == 1


def test_node_loss_under_load(tree: pooly.Pooly, ray_cluster: RayCluster) -> None:
    """A node lost under load (its raylet and every process on it killed): the holders
    on it get WorkerCrashed, no call hangs, every other outcome is a result; the pool is
    back at full size on the surviving nodes."""
    pool = tree.start_pool(
        "spread6",
        Stateful,
        size=6,
        max_restarts=20,
        max_seconds=60,
        backend=pooly.RayBackend(actor_options={**HALF, "scheduling_strategy": "SPREAD"}),
    )
    b = ray_cluster.node_id("node_b")
    stop = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def consumer() -> None:
        while not stop.is_set():
            try:
                with pool.checkout(timeout=30) as w:
                    w.sleep(0.05)
                    out = "ok"
            except pooly.WorkerCrashed:
                out = "crashed"
            except Exception as e:  # anything else is a failure of the test
                out = f"{type(e).__name__}: {e}"
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=consumer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: len(outcomes) > 30, timeout=30)
        ray_cluster.remove_node("node_b")
        lost_at = time.monotonic()

        # Back at full size, on A and C only.
        def healed() -> bool:
            st = pool.status()
            return st.crashed >= 1 and st.idle + st.busy == 6

        assert wait_for(healed, timeout=60)
        healed_after = time.monotonic() - lost_at
        time.sleep(0.5)  # (more load on the healed pool: every call still completes)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        ray_cluster.restore()
    assert not any(t.is_alive() for t in threads), "a consumer hung"
    bad = [o for o in outcomes if o not in ("ok", "crashed")]
    assert not bad, bad
    assert "crashed" in outcomes
    leases = [pool.checkout(timeout=30) for _ in range(6)]
    nodes = {w.node_id() for w in leases}
    for w in leases:
        pool.checkin(w)
    assert b not in nodes
    print(
        f"node loss: {outcomes.count('crashed')} crashed, {outcomes.count('ok')} ok; "
        f"healed after {healed_after:.2f} s; stats {pool.stats().crashes}"
    )


def test_an_interrupted_call_kills_its_actor(tree: pooly.Pooly) -> None:
    """KeyboardInterrupt while a lease call waits for its actor (the direct path, no
    pipes): the call may be half done, so the lease ends and the actor is killed and
    replaced -- never handed out again with the call still running in it."""
    import _thread

    pool = tree.start_pool("ki", Stateful, size=1, max_restarts=5, backend=on("node_a"))
    lease = pool.checkout()
    pid = lease.pid
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        lease.sleep(30)
    with pytest.raises(pooly.LeaseError, match="interrupted"):
        lease.incr()
    with pool.checkout(timeout=20) as w:
        assert w.pid != pid and w.incr() == 1
    assert pool.stats().crashes == {}


def test_pooly_demo_on_ray_loses_a_node_and_heals(ray_cluster: RayCluster) -> None:
    """``pooly demo --ray`` (its own simulated cluster, in a process of its own): the
    workload's faults and a node lost midway; every call a correct result or
    WorkerCrashed, both pools back at full size off the lost node; exit status 0."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pooly", "demo", "--ray", "--duration", "8"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-2000:]
    assert "NODE LOST" in text
    assert text.count("back at full size on the surviving nodes") == 2, text[-4000:]
    assert "lost                                    0" in text
    assert "\nOK: " in text


def test_large_arguments_and_results_through_the_pump_and_direct(tree: pooly.Pooly) -> None:
    """Megabytes each way, through the pump's pipes (tasks, and calls with a deadline:
    frames read and written in pieces, a reply larger than a pipe holds) and through a
    lease's direct call; every byte comes back."""
    pool = tree.start_pool("blob", Blob, size=1, call_timeout=60, backend=on("node_c"))
    big = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB
    with pool.checkout() as w:  # (call_timeout: the pipes)
        assert w.echo(big) == big
        assert w.make(len(big)) == big
    with pool.checkout(call_timeout=None) as w:  # the direct path
        assert w.echo(big) == big
    futs = [pool.submit("echo", big[: (i + 1) * 1_000_000]) for i in range(3)]
    for i, f in enumerate(futs):
        assert f.result(timeout=120) == big[: (i + 1) * 1_000_000]


def test_the_observer_shows_each_workers_node(ray_cluster: RayCluster) -> None:
    """An observed tree's snapshot gives each Ray worker's node id; pooly top's frame has
    a node column for that pool (pids repeat across machines)."""
    pytest.importorskip("rich")
    from rich.console import Console

    from pooly import observe
    from pooly.cli.top import render

    with pooly.Pooly(observe=True) as t:
        t.start_pool("seen", Stateful, size=2, backend=on("node_b"))
        assert t.observe_path is not None
        doc = observe.snapshot(t.observe_path)
    (pool,) = doc["pools"]
    assert [w["node"] for w in pool["workers"]] == [ray_cluster.node_id("node_b")] * 2
    console = Console(width=160, record=True)
    console.print(render(doc))
    frame = console.export_text()
    assert " node" in frame and ray_cluster.node_id("node_b")[:12] in frame, frame


def test_lifecycle_events_of_a_ray_pool(tree: pooly.Pooly) -> None:
    """subscribe() tells a Ray pool's workers' lives as a local pool's: WorkerStarted for
    each, and for a worker SIGKILLed mid-call a WorkerExited that is unexpected, names the
    method and holder, and has no exit code (Ray gives none); a call timeout's kill is
    expected, with a CallTimedOut."""
    from pooly.events import CallTimedOut, WorkerExited, WorkerStarted

    seen: list[object] = []
    with tree.subscribe(seen.append):
        pool = tree.start_pool("told", Stateful, size=1, max_restarts=5, backend=on("node_a"))
        with pool.checkout() as w:
            pid = w.pid
            threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            with pytest.raises(pooly.WorkerCrashed):
                w.sleep(10)
        with pool.checkout(timeout=20, call_timeout=0.3) as w2:
            pid2 = w2.pid
            with pytest.raises(pooly.CallTimeout):
                w2.sleep(10)
        assert wait_for(lambda: sum(isinstance(e, WorkerStarted) for e in seen) >= 3, timeout=20)
        assert wait_for(lambda: sum(isinstance(e, WorkerExited) for e in seen) >= 2, timeout=20)
    exits = {e.pid: e for e in seen if isinstance(e, WorkerExited)}
    crash = exits[pid]
    assert (crash.expected, crash.exitcode, crash.method) == (False, None, "sleep")
    assert crash.holder == threading.current_thread().name
    assert exits[pid2].expected is True
    assert any(isinstance(e, CallTimedOut) and e.pid == pid2 for e in seen)
    starts = [e for e in seen if isinstance(e, WorkerStarted)]
    assert [e.reason for e in starts][:3] == ["initial", "replacement", "replacement"]
