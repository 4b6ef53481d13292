"""The Ray test cluster itself, with bare Ray (no pooly): its nodes and their resources, that
all its traffic stays on this machine's loopback, and how a SIGKILLed actor shows to a caller.
These pin down what pooly's Ray backend (issue 12) builds on."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import gone, wait_for
from tests.ray import require_ray
from tests.ray.conftest import NODE_CPUS, NODE_RESOURCES, RayCluster

ray = require_ray()


@ray.remote
class PoolyActorProbe:
    """A bare actor (titled like pooly's, so the leftover check covers it)."""

    def where(self) -> tuple[int, str]:
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def echo(self, x: Any) -> Any:
        return x

    def block(self, started: str, seconds: float) -> None:
        """Mark ``started`` (a file path), then run for ``seconds``: a call in flight."""
        Path(started).touch()
        time.sleep(seconds)


def _kill_actor(actor: Any) -> None:
    ray.kill(actor, no_restart=True)


def test_cluster_has_three_nodes_with_their_resources(ray_cluster: RayCluster) -> None:
    """The fixture's three worker nodes are alive with 2 CPUs and their own resource, the
    driver is on the 0-CPU head, and an actor asking for a sliver of ``node_b`` runs on B."""
    alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert set(ray_cluster.nodes) == set(NODE_RESOURCES)
    for name, resources in NODE_RESOURCES.items():
        info = alive.get(ray_cluster.node_id(name))
        assert info is not None, f"{name} is not alive: {ray.nodes()}"
        assert info["NodeManagerAddress"] == "127.0.0.1"
        assert info["Resources"].get("CPU") == NODE_CPUS
        for key, amount in resources.items():
            assert info["Resources"].get(key) == amount, (name, info["Resources"])
    assert ray.get_runtime_context().get_node_id() == ray_cluster.head.node_id
    assert alive[ray_cluster.head.node_id]["Resources"].get("CPU", 0) == 0

    actor = PoolyActorProbe.options(resources={"node_b": 0.01}).remote()  # type: ignore[attr-defined]
    try:
        _pid, node_id = ray.get(actor.where.remote(), timeout=60)
        assert ray_cluster.name_of(node_id) == "node_b"
    finally:
        _kill_actor(actor)


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _our_processes(session_name: str) -> dict[int, psutil.Process]:
    """This process, its descendants (every Ray process the cluster started), and any process
    whose command line names the cluster's session (in case one left our tree)."""
    me = psutil.Process()
    procs = {me.pid: me}
    procs.update((p.pid, p) for p in me.children(recursive=True))
    for p in psutil.process_iter():
        try:
            if session_name in " ".join(p.cmdline()):
                procs[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return procs


def _off_loopback(procs: dict[int, psutil.Process]) -> tuple[list[str], int]:
    """Every inet socket of ``procs`` bound, listening or connected off loopback (as text),
    and how many sockets were looked at."""
    bad, seen = [], 0
    for pid, p in procs.items():
        try:
            name = " ".join(p.cmdline()[:3]) or p.name()
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            seen += 1
            laddr, raddr = c.laddr, c.raddr
            # Unbound (nothing, or port 0) is fine; anything bound must be on loopback, and a
            # socket with a peer must have it on loopback.
            bound_off = bool(laddr) and laddr.port != 0 and not _is_loopback(laddr.ip)
            peer_off = bool(raddr) and not _is_loopback(raddr.ip)
            if bound_off or peer_off:
                bad.append(f"pid {pid} ({name}): {c.type.name} {laddr} -> {raddr} {c.status}")
    return bad, seen


def test_traffic_stays_on_loopback(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """With the cluster up and an actor call in flight on each node, every inet socket (TCP
    and UDP) of the driver and of every Ray process is on 127.0.0.0/8 or ::1 (or unbound):
    nothing listens on, or talks to, an address another machine could reach."""
    actors = [
        PoolyActorProbe.options(resources={name: 0.01}).remote()  # type: ignore[attr-defined]
        for name in NODE_RESOURCES
    ]
    try:
        assert ray.get([a.echo.remote(i) for i, a in enumerate(actors)], timeout=60) == [0, 1, 2]
        marks = [tmp_path / f"started-{i}" for i in range(len(actors))]
        refs = [a.block.remote(str(m), 1.0) for a, m in zip(actors, marks, strict=True)]
        assert wait_for(lambda: all(m.exists() for m in marks), timeout=30)
        procs = _our_processes(ray_cluster.head.session_name)
        bad, seen = _off_loopback(procs)
        ray.get(refs, timeout=60)
    finally:
        for a in actors:
            _kill_actor(a)
    print(f"{len(procs)} processes, {seen} inet sockets looked at")
    assert len(procs) > 5 and seen > 10, (procs, seen)  # the check saw Ray at work
    assert not bad, "sockets off loopback:\n" + "\n".join(bad)


def test_sigkilled_actor_fails_in_flight_call(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """An actor (max_restarts=0) SIGKILLed during a call: that call fails with
    ActorDiedError (a RayActorError) promptly, and so does the next one. Prints the latency."""
    actor = PoolyActorProbe.options(  # type: ignore[attr-defined]
        resources={"node_a": 0.01}, max_restarts=0
    ).remote()
    try:
        pid, _node = ray.get(actor.where.remote(), timeout=60)
        mark = tmp_path / "started"
        ref = actor.block.remote(str(mark), 120.0)
        assert wait_for(mark.exists, timeout=30)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        try:
            ray.get(ref, timeout=30)
        except ray.exceptions.RayActorError as e:
            latency = time.monotonic() - t0
            error = e
        else:
            raise AssertionError("the call on a SIGKILLed actor returned")
        print(f"SIGKILL -> {type(error).__name__} in {latency * 1000:.1f} ms")
        assert isinstance(error, ray.exceptions.ActorDiedError), repr(error)
        assert latency < 10, latency
        try:
            ray.get(actor.echo.remote(1), timeout=30)
        except ray.exceptions.RayActorError:
            pass
        else:
            raise AssertionError("a dead actor (max_restarts=0) answered")
        assert wait_for(lambda: gone(pid), timeout=10)
    finally:
        _kill_actor(actor)
