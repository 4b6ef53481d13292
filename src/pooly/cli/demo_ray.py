"""``pooly demo --ray``: the demo's workload on pools whose workers are Ray actors, over a
simulated Ray cluster on this machine, and a node lost midway.

The cluster (:class:`SimulatedCluster`): a head node with no CPUs (the driver's; nothing
runs there) and three worker nodes of 2 CPUs, ``node_a``, ``node_b``, ``node_c``, each
with a custom resource of its name; every Ray process on 127.0.0.1 (the environment is set
before Ray is imported: no usage stats, and Ray keeps the loopback address instead of
swapping in the host's interface address), fast health checks so a lost node is noticed in
about 1.5 s. The pools run their workers SPREAD over the nodes (a quarter of a CPU each).

Halfway through the workload -- consumers making checked calls, faults in rotation as in
``pooly demo`` -- the node that holds the most workers is removed abruptly (its raylet and
every process on it killed, as a lost host). Its workers' holders get ``WorkerCrashed``;
the pools replace the workers on the surviving nodes. The demo reports what was on the
node, how long until each pool was at full size again with no worker there, and where the
workers run now; the usual tally follows (every call a correct result or WorkerCrashed).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .. import Pool, RayBackend
from .common import Display
from .demo_config import Options
from .demo_workload import Demo

__all__ = ("HEAD_NODE_ARGS", "NODES", "OnRay", "SimulatedCluster", "run_on_ray")

NODES = ("node_a", "node_b", "node_c")
NODE_CPUS = 2
#: How long the pools may take to be whole again, off the lost node.
HEAL_DEADLINE = 30.0

#: The head node: no CPUs (the driver's; nothing is placed there), on 127.0.0.1, no
#: dashboard, and health checks that notice a lost node in about 1.5 s (Ray's default:
#: about 30 s).
HEAD_NODE_ARGS: dict[str, Any] = {
    "num_cpus": 0,
    "node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "_system_config": {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 500,
        "health_check_failure_threshold": 3,
    },
}

#: Set before Ray is imported (it reads them then, and passes them to every process it
#: starts): no usage statistics sent anywhere; 127.0.0.1 kept as every node's address.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class SimulatedCluster:
    """A head and three nodes on this machine (see the module docstring); the driver
    (this process) connected to it. A context manager: shut down on exit."""

    def __init__(self) -> None:
        for name, value in RAY_ENV.items():
            os.environ.setdefault(name, value)
        import ray

        if ray.is_initialized():
            raise RuntimeError("this process is connected to Ray already")
        from ray.cluster_utils import Cluster

        self._ray = ray
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(HEAD_NODE_ARGS))
        self.nodes: dict[str, Any] = {}
        try:
            for name in NODES:
                self.nodes[name] = self.cluster.add_node(
                    num_cpus=NODE_CPUS, resources={name: 1}, node_ip_address="127.0.0.1"
                )
            self.cluster.wait_for_nodes()
            ray.init(address=self.cluster.address, log_to_driver=False)
        except BaseException:
            self.cluster.shutdown()
            raise
        self.ids = {str(node.node_id): name for name, node in self.nodes.items()}

    def name_of(self, node_id: str | None) -> str:
        return self.ids.get(node_id or "", "?")

    def lose(self, name: str) -> None:
        """Remove node ``name`` abruptly: its raylet and every process on it killed."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def __enter__(self) -> SimulatedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._ray.shutdown()
        finally:
            self.cluster.shutdown()


def _where(demo: Demo, cluster: SimulatedCluster) -> dict[str, Counter[str]]:
    """Pool name -> how many of its workers run on each node."""
    out = {}
    for name, pool in demo.pools.items():
        rows, _ = pool._observed()
        out[name] = Counter(cluster.name_of(r["node"]) for r in rows)
    return out


def _whole(pool: Pool, cluster: SimulatedCluster, lost: str | None = None) -> bool:
    """The pool serves with every core worker up (overflow workers aside), none of its
    workers on node ``lost``."""
    if pool.status().state not in ("ready", "full", "overflow"):
        return False
    rows, _ = pool._observed()
    core = [r for r in rows if not r["overflow"]]
    return len(core) >= pool.size and all(cluster.name_of(r["node"]) != lost for r in rows)


def _show(where: dict[str, Counter[str]]) -> str:
    return "; ".join(
        f"{pool}: " + ", ".join(f"{node} {n}" for node, n in sorted(by.items()))
        for pool, by in where.items()
    )


class OnRay:
    """What ``pooly demo``'s run does differently on Ray: the pools' backend, and the
    node lost midway (set up once the pools are up)."""

    def __init__(self, cluster: SimulatedCluster, display: Display) -> None:
        self.cluster = cluster
        self.display = display
        self.backend = RayBackend(actor_options={"num_cpus": 0.25, "scheduling_strategy": "SPREAD"})

    def started(self, demo: Demo) -> None:
        where = _where(demo, self.cluster)
        self.display.line(f"  workers by node: {_show(where)}")

        def lose_a_node() -> None:
            self._lose_a_node(demo)

        demo.midway = lose_a_node

    def _lose_a_node(self, demo: Demo) -> None:
        # The other faults pause meanwhile, and the pools heal from them first (the
        # consumers' load goes on): the time measured is the node loss's alone.
        demo.paused.set()
        deadline = time.monotonic() + HEAL_DEADLINE
        while time.monotonic() < deadline and not all(
            _whole(p, self.cluster) for p in demo.pools.values()
        ):
            time.sleep(0.01)
        where = _where(demo, self.cluster)
        load: Counter[str] = Counter()
        for by in where.values():
            load.update(by)
        lost = max(self.cluster.nodes, key=lambda n: (load[n], n))
        d = self.display
        d.clear_status()
        d.line(
            f"{demo.elapsed():5.1f}s  NODE LOST: {lost} removed abruptly, with "
            f"{load[lost]} worker(s) on it ({_show(where)})"
        )
        t = time.monotonic()
        self.cluster.lose(lost)
        healed: dict[str, float] = {}
        while time.monotonic() - t < HEAL_DEADLINE and len(healed) < len(demo.pools):
            for name, pool in demo.pools.items():
                if name in healed or name in demo.failed_pools:
                    continue
                if _whole(pool, self.cluster, lost):
                    healed[name] = time.monotonic() - t
            time.sleep(0.01)
        for name in demo.pools:
            if name in healed:
                d.line(
                    f"{demo.elapsed():5.1f}s  {name + ':':<9}   back at full size on the "
                    f"surviving nodes {healed[name]:.2f} s after the node was lost "
                    f"({where[name][lost]} worker(s) replaced)"
                )
            else:
                text = f"{name} was not back at full size off {lost} within {HEAL_DEADLINE:g} s"
                demo.anomaly(text)
                demo.problems.append(text)
        d.line(f"{demo.elapsed():5.1f}s  workers by node now: {_show(_where(demo, self.cluster))}")
        demo.paused.clear()


def run_on_ray(
    opts: Options, display: Display, run: Callable[[Options, Display, OnRay], int]
) -> int:
    """Start the simulated cluster, run the demo (``run``) on it, shut it down."""
    for name, value in RAY_ENV.items():  # (before Ray is imported: it reads them then)
        os.environ.setdefault(name, value)
    try:
        import ray  # noqa: F401
    except ImportError as e:
        display.line(f"pooly demo --ray needs Ray ({e}): pip install 'pooly[ray]'")
        return 2
    display.line(
        f"starting a simulated Ray cluster on 127.0.0.1: a head (0 CPUs) and {len(NODES)} "
        f"nodes of {NODE_CPUS} CPUs ({', '.join(NODES)}) ..."
    )
    t = time.monotonic()
    with SimulatedCluster() as cluster:
        display.line(f"  up in {time.monotonic() - t:.1f} s")
        return run(opts, display, OnRay(cluster, display))
