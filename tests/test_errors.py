"""The errors of SPEC §3: what is raised, its type, its message, and that nothing leaked."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

import pooly
from tests.conftest import live_children
from tests.workers import (
    Counter,
    ExitingInit,
    FailingInit,
    Gated,
    HangingInit,
    RecordingFailInit,
    TwoArgError,
)

pytestmark = pytest.mark.timeout(15)


# ====================================================================== worker-method errors


def test_method_exception_comes_back_as_its_own_type(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout() as w:
        w.incr(4)
        with pytest.raises(ValueError, match=r"^kaboom$") as ei:
            w.fail("kaboom")
        cause = ei.value.__cause__
        assert isinstance(cause, pooly.RemoteTraceback)
        assert "ValueError: kaboom" in cause.tb and "in fail" in cause.tb  # worker-side frames
        assert not isinstance(ei.value, pooly.PoolyError)
        # the worker stays alive, state intact
        assert w.active and w.getpid() == w.pid and w.get() == 4
    s = pool.status()
    assert (s.crashed, s.replaced, s.idle) == (0, 0, 1)


def test_exception_that_cannot_be_rebuilt_is_a_pooly_error(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Gated, size=1)
    with pool.checkout() as w:
        with pytest.raises(pooly.PoolyError) as ei:
            w.fail_unrebuildable()  # TwoArgError pickles but can't be unpickled
        assert TwoArgError.__name__ in str(ei.value) and "fail_unrebuildable" in str(ei.value)
        with pytest.raises(pooly.PoolyError) as ei:
            w.fail_unpicklable()  # can't even be pickled in the worker
        assert "ValueError" in str(ei.value)
        assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
        assert w.incr() == 1  # the lease and the worker are fine
    assert pool.status().crashed == 0


def test_private_and_unknown_names_are_refused_locally(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout() as w:
        for name in ("_private", "_Counter__x", "no_such_method", "n"):
            with pytest.raises(AttributeError):
                getattr(w, name)
        with pytest.raises(AttributeError, match="_private"):
            w._private()
        # refused in the host: nothing was sent, the channel is still in step
        assert w.incr() == 1 and w.get() == 1
    # a lease on a dead worker still refuses locally (no round trip could have answered)
    lease = pool.checkout()
    with pytest.raises(pooly.WorkerCrashed):
        lease.exit(1)
    with pytest.raises(AttributeError):
        lease._private()


# ====================================================================== pools by name


def test_duplicate_pool_name(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    pids = pool.worker_pids()
    before = live_children()
    with pytest.raises(ValueError, match="'p'"):
        sup.start_pool("p", Counter, size=1)
    assert live_children() == before
    assert sup.pool("p") is pool and pool.worker_pids() == pids
    assert [p.name for p in sup.pools()] == ["p"]
    assert pool.transaction(lambda w: w.incr()) == 1


def test_unknown_pool(sup: pooly.Pooly) -> None:
    sup.start_pool("known", Counter, size=1)
    with pytest.raises(pooly.NoSuchPool, match="nope") as ei:
        sup.pool("nope")
    assert isinstance(ei.value, LookupError) and isinstance(ei.value, pooly.PoolyError)
    with pytest.raises(pooly.NoSuchPool):
        sup.stop_pool("nope")
    assert [p.name for p in sup.pools()] == ["known"]


# ====================================================================== invalid options


def _local_class() -> type:
    class Local:
        def ping(self) -> str:
            return "pong"

    return Local


_ghost = types.ModuleType("pooly_test_ghost_module")


class Ghost:
    """Importable in the host only: its module exists in sys.modules here, nowhere else."""


Ghost.__module__ = _ghost.__name__
_ghost.Ghost = Ghost  # type: ignore[attr-defined]


BAD_OPTIONS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("size negative", {"size": -1}, ValueError, "size"),
    ("size str", {"size": "2"}, TypeError, "size"),
    ("size float", {"size": 1.5}, TypeError, "size"),
    ("size bool", {"size": True}, TypeError, "size"),
    ("max_overflow negative", {"max_overflow": -1}, ValueError, "max_overflow"),
    ("max_overflow str", {"max_overflow": "1"}, TypeError, "max_overflow"),
    ("strategy unknown", {"strategy": "random"}, ValueError, "strategy"),
    ("strategy case", {"strategy": "LIFO"}, ValueError, "strategy"),
    ("max_restarts negative", {"max_restarts": -1}, ValueError, "max_restarts"),
    ("max_restarts float", {"max_restarts": 2.0}, TypeError, "max_restarts"),
    ("max_seconds zero", {"max_seconds": 0}, ValueError, "max_seconds"),
    ("max_seconds str", {"max_seconds": "5"}, TypeError, "max_seconds"),
    ("start_method bogus", {"start_method": "bogus"}, ValueError, "start_method"),
    ("start_timeout zero", {"start_timeout": 0}, ValueError, "start_timeout"),
    ("start_timeout negative", {"start_timeout": -1}, ValueError, "start_timeout"),
    ("shutdown_timeout negative", {"shutdown_timeout": -0.5}, ValueError, "shutdown_timeout"),
    ("shutdown_timeout nan", {"shutdown_timeout": float("nan")}, ValueError, "shutdown_timeout"),
    ("restart_on_reclaim str", {"restart_on_reclaim": "yes"}, TypeError, "restart_on_reclaim"),
    ("worker instance", {"worker": Counter()}, TypeError, "worker"),
    ("worker function", {"worker": len}, TypeError, "worker"),
    ("worker local class", {"worker": _local_class()}, TypeError, "Local"),
    ("args not a tuple", {"args": 5}, TypeError, "args"),
    ("kwargs not a dict", {"kwargs": [("start", 1)]}, TypeError, "kwargs"),
    ("args unpicklable", {"args": (lambda: 1,)}, TypeError, "picklable"),
    ("name empty", {"name": ""}, TypeError, "name"),
    ("name not str", {"name": 5}, TypeError, "name"),
]


@pytest.mark.parametrize(
    ("option", "exc", "names"), [b[1:] for b in BAD_OPTIONS], ids=[b[0] for b in BAD_OPTIONS]
)
def test_invalid_option_is_refused_before_any_process(
    sup: pooly.Pooly, option: dict[str, Any], exc: type[Exception], names: str
) -> None:
    sup.start_pool("warm", Counter, size=1)  # the forkserver is up: any new process is ours
    before = live_children()
    kw: dict[str, Any] = {"name": "bad", "worker": Counter, "size": 1, **option}
    name, worker = kw.pop("name"), kw.pop("worker")
    with pytest.raises(exc, match=names):
        sup.start_pool(name, worker, **kw)
    assert live_children() == before, "a process was started for an invalid pool"
    assert [p.name for p in sup.pools()] == ["warm"]
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("bad")
    # the name is still free
    assert sup.start_pool("bad", Counter, size=1).transaction(lambda w: w.incr()) == 1


def test_invalid_pooly_start_method() -> None:
    before = live_children()
    with pytest.raises(ValueError, match="start_method"), pooly.Pooly(start_method="bogus") as sup:
        sup.start_pool("p", Counter, size=1)
    assert live_children() == before


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_invalid_checkout_timeout(sup: pooly.Pooly, timeout: object, exc: type) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pytest.raises(exc, match="timeout"):
        pool.checkout(timeout=timeout)  # type: ignore[arg-type]
    s = pool.status()
    assert (s.idle, s.busy, s.waiting) == (1, 0, 0)


def test_unpicklable_call_arguments_are_a_type_error(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout() as w:
        with pytest.raises(TypeError, match="echo"):
            w.echo(lambda: None)
        with pytest.raises(TypeError):
            w.echo(x=iter(lambda: 1, 2))  # callable_iterator can't be pickled
        assert w.echo([1, "two"]) == [1, "two"]  # nothing was sent: still in step
    assert pool.status().crashed == 0


# ====================================================================== worker start errors


def test_failing_constructor(sup: pooly.Pooly, tmp_path: Path) -> None:
    record = tmp_path / "attempts"
    before = live_children()
    with pytest.raises(pooly.WorkerStartError) as ei:
        sup.start_pool("p", RecordingFailInit, args=(str(record),), size=3)
    err = ei.value
    assert isinstance(err, pooly.PoolyError)
    assert isinstance(err.__cause__, pooly.RemoteTraceback)
    assert "RuntimeError: recorded and failed" in err.__cause__.tb
    assert "recorded and failed" in str(err) and "'p'" in str(err)
    attempts = record.read_text().split()
    assert 1 <= len(attempts) <= 3  # tried once per slot at most: no respawn loop
    assert err.pid is not None and str(err.pid) in attempts
    assert live_children() == before  # nothing left running, at once
    assert sup.pools() == []
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("p")
    # the name is free again, and the Pooly works
    assert sup.start_pool("p", Counter, size=1).transaction(lambda w: w.incr()) == 1
    assert len(record.read_text().split()) == len(attempts)


def test_failing_constructor_message(sup: pooly.Pooly) -> None:
    with pytest.raises(pooly.WorkerStartError) as ei:
        sup.start_pool("p", FailingInit, args=("no database",), size=1)
    assert "no database" in ei.value.__cause__.tb  # type: ignore[union-attr]
    assert "FailingInit" in str(ei.value)


def test_exiting_constructor(sup: pooly.Pooly) -> None:
    before = live_children()
    with pytest.raises(pooly.WorkerStartError) as ei:
        sup.start_pool("p", ExitingInit, args=(7,), size=2)
    assert ei.value.exitcode == 7
    assert "7" in str(ei.value)
    assert isinstance(ei.value.pid, int)
    assert live_children() == before
    assert sup.pools() == []


@pytest.mark.timeout(10)
def test_hanging_constructor(sup: pooly.Pooly) -> None:
    before = live_children()
    t0 = time.monotonic()
    with pytest.raises(pooly.WorkerStartError, match="start_timeout") as ei:
        sup.start_pool("p", HangingInit, size=1, start_timeout=0.3)
    assert time.monotonic() - t0 < 0.3 + 2.0
    assert isinstance(ei.value.pid, int)
    assert live_children() == before  # the hung worker was killed
    assert sup.pools() == []


def test_class_not_importable_in_the_worker(sup: pooly.Pooly) -> None:
    """Pickles in the host (its module is in sys.modules) but the worker can't import it."""
    sys.modules[_ghost.__name__] = _ghost
    try:
        before = live_children()
        with pytest.raises(pooly.WorkerStartError) as ei:
            sup.start_pool("p", Ghost, size=1)
        assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
        assert _ghost.__name__ in ei.value.__cause__.tb
        assert live_children() == before
        assert sup.pools() == []
    finally:
        del sys.modules[_ghost.__name__]


def test_start_error_of_an_overflow_worker(sup: pooly.Pooly, tmp_path: Path) -> None:
    """A checkout that needs an overflow worker reports its start failure; nothing leaks."""
    from tests.workers import FlakyInit

    marker = tmp_path / "broken"
    pool = sup.start_pool("p", FlakyInit, args=(str(marker),), size=1, max_overflow=1)
    held = pool.checkout()
    marker.touch()
    with pytest.raises(pooly.WorkerStartError) as ei:
        pool.checkout(block=False)
    assert "marker present" in ei.value.__cause__.tb  # type: ignore[union-attr]
    s = pool.status()
    assert (s.state, s.idle, s.busy, s.overflow, s.waiting) == ("overflow", 0, 1, 0, 0)
    assert pool.worker_pids() == [held.pid]
    assert held.incr() == 1
    pool.checkin(held)
    assert pool.status().state == "ready"


def test_stopped_pooly_refuses_new_pools() -> None:
    sup = pooly.Pooly()
    sup.stop()
    with pytest.raises(pooly.PoolyError):
        sup.start_pool("p", Counter, size=1)
