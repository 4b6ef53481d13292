"""Shared named pools on Ray (issue 12, part 6): a pool served by a detached named actor,
made by one driver, checked out from others; a dead driver's lease reclaimed after its TTL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import pooly
from tests.ray import require_ray
from tests.ray.conftest import RayCluster
from tests.ray.ray_workers import Stateful

ray = require_ray()

TTL = 2.0


def _driver(cluster: RayCluster, body: str) -> subprocess.Popen[str]:
    """Another Ray driver: a Python process connected to the cluster, running ``body``."""
    code = (
        "import sys, time, ray, pooly\n"
        "from tests.ray.ray_workers import Stateful\n"
        f"ray.init(address={cluster.address!r})\n" + body
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def shared(ray_cluster: RayCluster) -> Iterator[str]:
    """A shared pool "shared" made by a driver that has exited since (its server is
    detached: it outlives its maker); stopped at the end if the test did not."""
    maker = _driver(
        ray_cluster,
        "pooly.shared_pool('shared', Stateful, (100,), size=1, lease_ttl="
        f"{TTL}, backend=pooly.RayBackend(actor_options={{'num_cpus': 0.5}}))\n"
        "print('made')\n",
    )
    out, err = maker.communicate(timeout=120)
    assert maker.returncode == 0 and "made" in out, err[-3000:]
    yield "shared"
    try:
        pooly.shared_pool("shared").stop()
    except pooly.NoSuchPool:
        pass


def test_a_shared_pool_outlives_its_maker_and_serves_another_driver(shared: str) -> None:
    """The pool made by a driver that has exited serves this one: a lease keeps the
    worker's state, a method's exception arrives as its own type with the worker's
    traceback, status() comes from the server."""
    sp = pooly.shared_pool(shared)
    with sp.checkout(timeout=30) as w:
        assert (w.incr(), w.incr(5)) == (101, 106)
        assert w.getpid() == w.pid
        with pytest.raises(ValueError, match="nope") as e:
            w.boom("nope")
        assert isinstance(e.value.__cause__, pooly.RemoteTraceback)
    st = sp.status()
    assert st.size == 1 and st.idle == 1
    with pytest.raises(pooly.CheckoutTimeout), sp.checkout(timeout=30):
        sp.checkout(timeout=0.2)


def test_a_dead_drivers_lease_is_reclaimed_after_its_ttl(
    shared: str, ray_cluster: RayCluster
) -> None:
    """A driver SIGKILLed holding the only worker: its lease is not renewed, the server
    reclaims it after lease_ttl (the worker restarted: its state was the dead driver's),
    and a checkout waiting here is served."""
    holder = _driver(
        ray_cluster,
        "sp = pooly.shared_pool('shared')\n"
        "w = sp.checkout(timeout=30)\n"
        "w.incr(1000)\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(600)\n",
    )
    assert holder.stdout is not None
    pid = int(holder.stdout.readline())
    sp = pooly.shared_pool(shared)
    with pytest.raises(pooly.CheckoutTimeout):  # held, and renewed while its driver lives
        sp.checkout(timeout=TTL * 2)
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=30)
    t = time.monotonic()
    with sp.checkout(timeout=30) as w:
        waited = time.monotonic() - t
        assert w.incr() == 101  # a fresh worker: the dead driver's state is gone
        assert w.pid != pid
    assert waited < TTL + 3, waited


def test_stop_ends_the_pool_for_every_driver(shared: str) -> None:
    """stop() ends the server and its workers: a lease held elsewhere fails with a
    PoolyError naming the server, and the name is free again."""
    sp = pooly.shared_pool(shared)
    lease = sp.checkout(timeout=30)
    pooly.shared_pool(shared).stop()
    # (Its server gone, or -- a call that reached it while it stopped -- its leases.)
    with pytest.raises(pooly.PoolyError, match=r"server of shared pool 'shared' is gone|no longer"):
        lease.incr()
    with pytest.raises(pooly.NoSuchPool):
        pooly.shared_pool(shared)


def test_shared_pool_arguments_are_checked(ray_cluster: RayCluster) -> None:
    """Bad arguments are refused by name before anything starts."""
    with pytest.raises(TypeError, match="need the worker class"):
        pooly.shared_pool("x", size=2)
    with pytest.raises(ValueError, match="lease_ttl"):
        pooly.shared_pool("x", Stateful, lease_ttl=0)
    with pytest.raises(TypeError, match="start_method"):
        pooly.shared_pool("x", Stateful, start_method="fork")
    with pytest.raises(pooly.NoSuchPool, match="no shared pool named 'nothing'"):
        pooly.shared_pool("nothing")
