"""The Ray cluster the tests in tests/ray share, and their process checks.

``ray_cluster`` (session scope) is a simulated Ray cluster on this machine: a head node with
no CPUs (so nothing is scheduled on it; the driver connects to it) and three worker nodes of
2 CPUs each, told apart by a custom resource of their own::

    node_a: {"node_a": 1}    node_b: {"node_b": 1}    node_c: {"node_c": 1, "accel": 1}

An actor made with ``resources={"node_b": 0.01}`` runs on node_b. Every Ray process listens
and dials on 127.0.0.1 only (see RAY_ENV in tests/ray/__init__.py; test_traffic_stays_on_loopback
checks it). If Ray cannot start here, the tests that use the cluster skip with Ray's message.

This file imports no Ray at module level: in the main venv (no Ray) it must load, and each
test module then skips itself (``require_ray``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from pooly.cli.demo_ray import HEAD_NODE_ARGS as DEMO_HEAD_NODE_ARGS
from tests.conftest import fail_on_leftovers, infrastructure_pids, live_descendants, wait_for
from tests.ray import set_ray_env

set_ray_env()  # before anything imports ray

# The head: no CPUs, 127.0.0.1, no dashboard, fast health checks (a killed node is noticed in
# ~1.5 s instead of Ray's default ~30 s) -- as pooly demo --ray's.
HEAD_NODE_ARGS = DEMO_HEAD_NODE_ARGS

# Worker nodes: name -> the custom resources that tell it apart.
NODE_RESOURCES: dict[str, dict[str, float]] = {
    "node_a": {"node_a": 1},
    "node_b": {"node_b": 1},
    "node_c": {"node_c": 1, "accel": 1},
}
NODE_CPUS = 2

# A process whose title (Ray sets ``ray::<Class>.<method>``) contains this is a pooly actor:
# none may outlive the test that made it.
ACTOR_TITLE = "PoolyActor"

# Pids of the processes Ray's nodes started (raylets, GCS, agents, ...): the roots of Ray's own
# process trees, filled in by the cluster. Their descendants (Ray's workers) are Ray's too.
_ray_daemons: set[int] = set()


def _node_pids(node: Any) -> set[int]:
    """Pids of the processes a ``ray._private.node.Node`` started."""
    pids = set()
    for infos in node.all_processes.values():
        for info in infos:
            if info.process is not None:
                pids.add(info.process.pid)
    return pids


@dataclass
class RayCluster:
    """What ``ray_cluster`` yields: the running cluster, its worker nodes by name.

    ``nodes["node_b"]`` is a ``ray._private.node.Node``; ``node_id("node_b")`` its Ray node id
    (hex, as ``ray.get_runtime_context().get_node_id()`` and ``ray.nodes()`` give it).
    """

    cluster: Any  # ray.cluster_utils.Cluster
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:port``) to give ``ray.init(address=...)``."""
        return str(self.cluster.address)

    @property
    def head(self) -> Any:
        """The head node (0 CPUs; the driver's node: it cannot be removed)."""
        return self.cluster.head_node

    def node_id(self, name: str) -> str:
        """The Ray node id (hex) of worker node ``name``."""
        return str(self.nodes[name].node_id)

    def name_of(self, node_id: str) -> str | None:
        """The name of the worker node with Ray node id ``node_id``; None if none is."""
        for name, node in self.nodes.items():
            if node.node_id == node_id:
                return name
        return None

    def add_node(self, name: str) -> Any:
        """Start worker node ``name`` (one of NODE_RESOURCES), e.g. again after remove_node."""
        assert name not in self.nodes, f"{name} is already running"
        node = self.cluster.add_node(
            num_cpus=NODE_CPUS,
            resources=dict(NODE_RESOURCES[name]),
            node_ip_address="127.0.0.1",
        )
        self.nodes[name] = node
        _ray_daemons.update(_node_pids(node))
        return node

    def remove_node(self, name: str, allow_graceful: bool = False) -> None:
        """Kill worker node ``name`` (by default abruptly, like a lost host)."""
        node = self.nodes.pop(name)
        pids = _node_pids(node)
        self.cluster.remove_node(node, allow_graceful=allow_graceful)
        _ray_daemons.difference_update(pids)  # a reused pid is not Ray's

    def restore(self) -> None:
        """Start again any worker node a test removed."""
        for name in NODE_RESOURCES:
            if name not in self.nodes:
                self.add_node(name)


def start_cluster() -> RayCluster:
    """Start the head and the three worker nodes, and connect this process as the driver.

    Raises whatever Ray raises if it cannot start; the cluster is shut down then.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(HEAD_NODE_ARGS))
    rc = RayCluster(cluster)
    try:
        _ray_daemons.update(_node_pids(cluster.head_node))
        for name in NODE_RESOURCES:
            rc.add_node(name)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
    except BaseException:
        stop_cluster(rc)
        raise
    return rc


def stop_cluster(rc: RayCluster) -> None:
    """Disconnect the driver and stop every node."""
    import ray

    try:
        ray.shutdown()
    finally:
        rc.cluster.shutdown()
        _ray_daemons.clear()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """The session's Ray cluster (see the module docstring); a test that removes a node must
    call ``restore()`` before it ends."""
    try:
        rc = start_cluster()
    except Exception as e:
        pytest.skip(f"Ray could not start a local cluster here: {type(e).__name__}: {e}")
    try:
        yield rc
    finally:
        stop_cluster(rc)


def ray_processes() -> set[int]:
    """Pids of Ray's own processes: the nodes' daemons and everything under them (workers)."""
    pids = set()
    for pid in list(_ray_daemons):
        try:
            p = psutil.Process(pid)
            pids.add(pid)
            pids.update(c.pid for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return pids


def actor_processes() -> dict[int, str]:
    """Our live descendants titled like a pooly actor: pid -> title."""
    return {pid: cmd for pid, cmd in live_descendants().items() if ACTOR_TITLE in cmd}


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Overrides tests/conftest.py's: Ray's own processes (raylets, GCS, agents, idle workers,
    started by the session's cluster) are infrastructure, not leftovers. Still fails a test
    that leaves a pooly actor process (``ray::PoolyActor...``) or any other process running."""
    before = set(live_descendants())
    yield
    # Ray ends an actor's process asynchronously after ray.kill or its last handle goes.
    wait_for(lambda: not actor_processes(), timeout=15, interval=0.02)
    actors = actor_processes()
    deadline = time.monotonic() + 5
    while True:
        ray_pids = ray_processes() | infrastructure_pids()
        others = {
            pid: cmd
            for pid, cmd in live_descendants().items()
            if pid not in before and pid not in ray_pids and pid not in actors
        }
        if not others or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    fail_on_leftovers(actors | others)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark these tests ``ray``; and as the suite turns warnings into errors, ignore here, and
    only here, the warnings Ray's own modules raise (DeprecationWarnings about its internals
    and the like; Ray 2.60 raised none in these tests, but a Ray upgrade must not turn the
    suite red). A warning Ray attributes to our code (stacklevel) still fails the test."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.filterwarnings("ignore::Warning:ray"))
            item.add_marker(pytest.mark.ray)
