"""The reusable supervisor with real child processes: restart types, strategies, restart
intensity in virtual time, escalation up a tree, listener hooks, dynamic children, shutdown.

Every child is a real OS process (:class:`pooly.ProcessChild`, forkserver by default) running a
target from ``tests.sup_children``; crashes are real ``SIGKILL``s. States are awaited on pipes,
listener events or polled with a deadline, never with a bare sleep.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from multiprocessing.connection import Connection

import psutil
import pytest

import pooly
from pooly import ChildSpec, ExitReason, ProcessChild, Supervisor, SupervisorListener
from pooly import _supervisor as pooly_sup
from pooly._clock import VirtualClock
from tests.conftest import gone, wait_for
from tests.sup_children import exit_now, exit_on_command, ignore_sigterm, run_forever

pytestmark = pytest.mark.timeout(20)


# ---------------------------------------------------------------------- helpers


class FakeClock:
    """Virtual time for restart intensity: only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(SupervisorListener):
    """Records every hook call (they run on the supervisor's loop thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exits: list[tuple[Hashable, int | None, ExitReason, bool]] = []
        self.failures: list[ExitReason] = []

    def child_exited(
        self, child_id: Hashable, child: pooly.Child, reason: ExitReason, restarting: bool
    ) -> None:
        with self.lock:
            self.exits.append((child_id, getattr(child, "pid", None), reason, restarting))

    def supervisor_failed(self, reason: ExitReason) -> None:
        with self.lock:
            self.failures.append(reason)

    def exits_of(self, child_id: Hashable) -> list[tuple[int | None, ExitReason, bool]]:
        with self.lock:
            return [
                (pid, r, restarting) for cid, pid, r, restarting in self.exits if cid == child_id
            ]


@pytest.fixture(scope="module", autouse=True)
def _forkserver_preloads_pooly() -> None:
    """Let Pooly configure the process-wide forkserver before a bare ProcessChild starts it.

    Pooly() asks the not-yet-started forkserver to preload its worker code. Were the forkserver
    first started here by a ProcessChild, every pool worker later in the session would import
    pooly after fork: replacements ~5x slower, and the model test with them.
    """
    pooly.Pooly().stop()


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Supervisors a test starts; any still running at the end are stopped (before the
    leftover-process check runs)."""
    started: list[Supervisor] = []
    yield started
    for s in reversed(started):
        s.stop(timeout=5)


@pytest.fixture
def start(supervisors: list[Supervisor]) -> Callable[..., Supervisor]:
    def start(children: list[ChildSpec], **kw: object) -> Supervisor:
        sup = Supervisor(children, **kw)  # type: ignore[arg-type]
        supervisors.append(sup)
        return sup.start()

    return start


def pids(sup: Supervisor) -> dict[Hashable, int]:
    """Pid of every running process child, by id."""
    return {
        cid: child.pid for cid, child, _ in sup.which_children() if isinstance(child, ProcessChild)
    }


def all_gone(pids_: object, timeout: float = 5.0) -> bool:
    return wait_for(lambda: all(gone(p) for p in pids_), timeout)  # type: ignore[attr-defined]


def alive(pid: int) -> bool:
    return not gone(pid)


def wait_new_pid(sup: Supervisor, cid: Hashable, old: int, timeout: float = 5.0) -> int:
    assert wait_for(lambda: pids(sup).get(cid, old) != old, timeout), (
        f"child {cid!r} (pid {old}) was not restarted: {sup.which_children()}"
    )
    return pids(sup)[cid]


def crash(sup: Supervisor, cid: Hashable) -> int:
    """SIGKILL a running child and wait until it has a new pid; returns that pid."""
    old = pids(sup)[cid]
    os.kill(old, signal.SIGKILL)
    return wait_new_pid(sup, cid, old)


def expect_ready(conn: Connection, timeout: float = 5.0) -> int:
    """The pid of the child incarnation that just announced itself on ``conn``."""
    assert conn.poll(timeout), "child did not announce itself"
    tag, pid = conn.recv()
    assert tag == "ready"
    return pid  # type: ignore[no-any-return]


def wait_exit_recorded(rec: Recorder, cid: Hashable, n: int, timeout: float = 5.0) -> None:
    assert wait_for(lambda: len(rec.exits_of(cid)) >= n, timeout), rec.exits


# ---------------------------------------------------------------------- restart types


def test_permanent_child_is_restarted_after_every_kind_of_exit(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    rec = Recorder()
    sup = start(
        [ProcessChild.spec("p", exit_on_command, (child_end,), restart="permanent")],
        max_restarts=10,
        clock=FakeClock(),
        listener=rec,
    )
    pid1 = expect_ready(parent)
    parent.send(0)  # normal exit
    pid2 = expect_ready(parent)
    parent.send(1)  # abnormal exit
    pid3 = expect_ready(parent)
    os.kill(pid3, signal.SIGKILL)  # killed
    pid4 = expect_ready(parent)
    assert len({pid1, pid2, pid3, pid4}) == 4
    assert wait_for(lambda: pids(sup) == {"p": pid4})
    assert all_gone([pid1, pid2, pid3])
    exits = rec.exits_of("p")
    assert [(pid, r.exitcode, r.normal, restarting) for pid, r, restarting in exits] == [
        (pid1, 0, True, True),
        (pid2, 1, False, True),
        (pid3, -signal.SIGKILL, False, True),
    ]
    assert sup.running and sup.failure is None


def test_transient_child_is_restarted_only_after_an_abnormal_exit(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    rec = Recorder()
    sup = start(
        [
            ProcessChild.spec("t", exit_on_command, (child_end,), restart="transient"),
            ProcessChild.spec("other", run_forever),
        ],
        max_restarts=10,
        clock=FakeClock(),
        listener=rec,
    )
    other = pids(sup)["other"]
    pid1 = expect_ready(parent)
    parent.send(1)  # abnormal: restarted
    pid2 = expect_ready(parent)
    assert pid2 != pid1
    os.kill(pid2, signal.SIGKILL)  # abnormal (signal): restarted
    pid3 = expect_ready(parent)
    assert pid3 not in (pid1, pid2)
    parent.send(0)  # normal: not restarted
    wait_exit_recorded(rec, "t", 3)
    (_, r1, again1), (_, r2, again2), (last_pid, r3, again3) = rec.exits_of("t")
    assert (r1.exitcode, again1) == (1, True)
    assert (r2.exitcode, again2) == (-signal.SIGKILL, True)
    assert (last_pid, r3.exitcode, r3.normal, again3) == (pid3, 0, True, False)
    assert "t" not in pids(sup)
    assert all_gone([pid1, pid2, pid3])
    assert wait_for(lambda: pids(sup) == {"other": other})
    assert not parent.poll(0), "a transient child that exited normally was restarted"
    assert sup.running and sup.failure is None


def test_transient_exit_0_at_once_is_not_restarted(start) -> None:
    rec = Recorder()
    sup = start(
        [
            ProcessChild.spec("t", exit_now, (0,), restart="transient"),
            ProcessChild.spec("other", run_forever),
        ],
        listener=rec,
    )
    wait_exit_recorded(rec, "t", 1)
    [(_, reason, restarting)] = rec.exits_of("t")
    assert (reason.normal, reason.exitcode, restarting) == (True, 0, False)
    assert set(pids(sup)) == {"other"}
    assert sup.running and sup.failure is None


def test_transient_exit_1_at_once_is_restarted_until_intensity_is_exceeded(start) -> None:
    """Restarted after each abnormal exit; max_restarts=2 in a frozen virtual window: the third
    exit fails the supervisor, which stops its other child too."""
    rec = Recorder()
    sup = start(
        [
            ProcessChild.spec("other", run_forever),
            ProcessChild.spec("t", exit_now, (1,), restart="transient"),
        ],
        max_restarts=2,
        max_seconds=5,
        clock=FakeClock(),
        listener=rec,
    )
    other = pids(sup)["other"]
    assert sup.wait(10)
    assert [(r.exitcode, again) for _, r, again in rec.exits_of("t")] == [
        (1, True),
        (1, True),
        (1, False),
    ]
    assert sup.failure is not None and not sup.running
    assert all_gone([other])


@pytest.mark.parametrize("how", ["sigkill", "exit 1", "exit 0"])
def test_temporary_child_is_never_restarted(start, how: str) -> None:
    rec = Recorder()
    if how == "sigkill":
        spec = ProcessChild.spec("tmp", run_forever, restart="temporary")
    else:
        spec = ProcessChild.spec("tmp", exit_now, (int(how[-1]),), restart="temporary")
    sup = start(
        [spec, ProcessChild.spec("other", run_forever)],
        max_restarts=0,
        clock=FakeClock(),
        listener=rec,
    )
    if how == "sigkill":
        os.kill(pids(sup)["tmp"], signal.SIGKILL)
    wait_exit_recorded(rec, "tmp", 1)
    [(_, reason, restarting)] = rec.exits_of("tmp")
    assert restarting is False
    assert reason.exitcode == {"sigkill": -signal.SIGKILL, "exit 1": 1, "exit 0": 0}[how]
    # Like OTP, a temporary child that ended is forgotten; its exit is not a restart, so even
    # max_restarts=0 does not fail the supervisor.
    assert [cid for cid, _, _ in sup.which_children()] == ["other"]
    assert sup.running and sup.failure is None


# ---------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    ("strategy", "victim", "changed"),
    [
        ("one_for_one", "b", {"b"}),
        ("one_for_all", "b", {"a", "b", "c"}),
        ("rest_for_one", "b", {"b", "c"}),
        ("rest_for_one", "a", {"a", "b", "c"}),
        ("rest_for_one", "c", {"c"}),
    ],
)
def test_strategy_restarts_the_right_children(
    start, strategy: str, victim: str, changed: set[str]
) -> None:
    sup = start(
        [ProcessChild.spec(c, run_forever) for c in "abc"], strategy=strategy, clock=FakeClock()
    )
    before = pids(sup)
    os.kill(before[victim], signal.SIGKILL)
    assert wait_for(
        lambda: (
            {c for c, p in pids(sup).items() if p != before[c]} == changed and len(pids(sup)) == 3
        )
    ), (before, pids(sup))
    after = pids(sup)
    for c in "abc":
        if c in changed:
            assert after[c] != before[c] and alive(after[c])
        else:
            assert after[c] == before[c] and alive(after[c]), f"{c} should have kept its pid"
    assert all_gone([before[c] for c in changed])
    assert sup.running and sup.failure is None


# ---------------------------------------------------------------------- intensity (virtual time)


def test_max_restarts_within_max_seconds_are_tolerated_one_more_fails(start) -> None:
    clock = FakeClock()
    rec = Recorder()
    sup = start(
        [ProcessChild.spec("victim", run_forever), ProcessChild.spec("b", run_forever)],
        max_restarts=3,
        max_seconds=5,
        clock=clock,
        listener=rec,
    )
    for _ in range(3):
        crash(sup, "victim")
        clock.advance(1.0)  # virtual t = 0, 1, 2: all within the 5 s window
        assert sup.running and sup.failure is None
    last = pids(sup)
    os.kill(last["victim"], signal.SIGKILL)  # 4th restart within 5 virtual seconds
    assert sup.wait(5), "supervisor did not fail past its restart intensity"
    assert sup.failure is not None and not sup.failure.normal
    assert "more than 3 restarts within 5s" in sup.failure.detail
    assert not sup.running
    assert rec.failures == [sup.failure]
    assert all_gone(last.values())
    with pytest.raises(RuntimeError):
        sup.start_child(ProcessChild.spec("late", run_forever))


def test_same_crashes_spaced_apart_in_virtual_time_never_fail(start) -> None:
    """Real time barely moves here; only the injected clock can tell the crashes apart."""
    clock = FakeClock()
    sup = start(
        [ProcessChild.spec("victim", run_forever)], max_restarts=2, max_seconds=5, clock=clock
    )
    for _ in range(7):
        crash(sup, "victim")
        clock.advance(5.5)
        assert sup.running and sup.failure is None
    assert sup.failure is None


def test_a_frozen_virtual_clock_counts_crashes_real_time_would_forget(start) -> None:
    """max_seconds is a nanosecond: by the real clock no two crashes share a window, so the
    supervisor would never fail; by the frozen injected clock they all do."""
    sup = start(
        [ProcessChild.spec("victim", run_forever)],
        max_restarts=1,
        max_seconds=1e-9,
        clock=FakeClock(),
    )
    crash(sup, "victim")
    assert sup.running
    os.kill(pids(sup)["victim"], signal.SIGKILL)
    assert sup.wait(5) and sup.failure is not None


# ---------------------------------------------------------------------- escalation


def test_escalation_restarts_the_subtree_then_fails_the_top_but_never_the_host(start) -> None:
    clock = FakeClock()
    subs: list[Supervisor] = []

    def start_sub() -> Supervisor:
        # Each (re)start of the child builds a NEW supervisor: a stopped one can't restart.
        sub = Supervisor(
            [ProcessChild.spec("leaf", run_forever)],
            strategy="one_for_one",
            max_restarts=0,
            name=f"sub{len(subs)}",
            clock=clock,
        )
        subs.append(sub)
        return sub.start()

    rec = Recorder()
    top = start(
        [ChildSpec("sub", start_sub), ProcessChild.spec("sibling", run_forever)],
        strategy="one_for_all",
        max_restarts=1,
        max_seconds=5,
        clock=clock,
        listener=rec,
        name="top",
    )
    sub1 = subs[0]
    leaf1, sibling1 = pids(sub1)["leaf"], pids(top)["sibling"]

    # The leaf dies; its supervisor (max_restarts=0) gives up; the top restarts everything.
    os.kill(leaf1, signal.SIGKILL)
    assert wait_for(
        lambda: (
            len(subs) == 2
            and dict((cid, c) for cid, c, _ in top.which_children()).get("sub") is subs[1]
            and pids(top).get("sibling", sibling1) != sibling1
        )
    )
    sub2 = subs[1]
    assert sub1.failure is not None and sub1.wait(0)
    assert wait_for(lambda: "leaf" in pids(sub2))
    leaf2, sibling2 = pids(sub2)["leaf"], pids(top)["sibling"]
    assert leaf2 != leaf1 and sibling2 != sibling1
    assert all_gone([leaf1, sibling1])
    assert top.running and top.failure is None
    [(_, reason, restarting)] = rec.exits_of("sub")
    assert not reason.normal and restarting

    # Again, within the top's window: the top exceeds its own intensity and fails.
    os.kill(leaf2, signal.SIGKILL)
    assert top.wait(5), "the top supervisor did not fail"
    assert top.failure is not None and not top.running
    assert len(rec.failures) == 1
    assert sub2.failure is not None
    assert len(subs) == 2, "a failed top must not restart its subtree again"
    assert all_gone([leaf2, sibling2])
    # Escalation stops at the top: this (host) process is alive and keeps working.
    assert alive(os.getpid())
    again = start([ProcessChild.spec("x", run_forever)])
    assert alive(pids(again)["x"])


def test_nested_supervisor_failure_under_one_for_one_leaves_siblings_alone(start) -> None:
    clock = FakeClock()

    def start_sub() -> Supervisor:
        return Supervisor(
            [ProcessChild.spec("leaf", run_forever)], max_restarts=0, clock=clock
        ).start()

    top = start(
        [ProcessChild.spec("sibling", run_forever), ChildSpec("sub", start_sub)],
        strategy="one_for_one",
        max_restarts=5,
        clock=clock,
    )
    sibling = pids(top)["sibling"]
    sub1 = dict((c, ch) for c, ch, _ in top.which_children())["sub"]
    assert isinstance(sub1, Supervisor)
    os.kill(pids(sub1)["leaf"], signal.SIGKILL)

    def new_sub() -> Supervisor | None:
        ch = dict((c, ch) for c, ch, _ in top.which_children())["sub"]
        return ch if isinstance(ch, Supervisor) and ch is not sub1 and pids(ch) else None

    assert wait_for(lambda: new_sub() is not None)
    assert pids(top)["sibling"] == sibling
    assert sub1.failure is not None and top.failure is None


# ---------------------------------------------------------------------- listener


def test_listener_hears_crashes_stops_and_failure(start) -> None:
    rec = Recorder()
    sup = start(
        [ProcessChild.spec("a", run_forever), ProcessChild.spec("b", run_forever)],
        max_restarts=1,
        clock=FakeClock(),
        listener=rec,
    )
    a1 = pids(sup)["a"]
    a2 = crash(sup, "a")
    [(pid, reason, restarting)] = rec.exits_of("a")
    assert (pid, reason.normal, reason.exitcode, restarting) == (a1, False, -signal.SIGKILL, True)
    assert str(a1) in str(reason) and "SIGKILL" in str(reason)
    assert rec.failures == []
    b = pids(sup)["b"]
    os.kill(a2, signal.SIGKILL)  # second restart > max_restarts=1
    assert sup.wait(5)
    assert len(rec.failures) == 1 and rec.failures[0] == sup.failure
    assert not rec.failures[0].normal
    # The crash that broke the camel is reported as not restarting; then b is stopped.
    assert [(p, again) for p, _, again in rec.exits_of("a")] == [(a1, True), (a2, False)]
    assert [(p, again) for p, _, again in rec.exits_of("b")] == [(b, False)]


def test_listener_hears_each_child_on_stop(start) -> None:
    rec = Recorder()
    sup = start([ProcessChild.spec(c, run_forever) for c in "abc"], listener=rec)
    before = pids(sup)
    reason = sup.stop()
    assert reason.normal and sup.failure is None
    assert sorted(cid for cid, _, _, _ in rec.exits) == ["a", "b", "c"]
    assert all(not restarting for _, _, _, restarting in rec.exits)
    assert {cid: pid for cid, pid, _, _ in rec.exits} == before
    assert rec.failures == []


# ---------------------------------------------------------------------- start failure


@pytest.mark.parametrize("strategy", ["one_for_all", "one_for_one"])
@pytest.mark.parametrize("failure", ["start raises", "target not picklable"])
def test_start_failure_stops_the_children_already_started(
    supervisors, failure: str, strategy: str
) -> None:
    """In order (one_for_all/rest_for_one) the children after the failing one never start;
    concurrently (one_for_one) they may have: every child started is stopped either way."""
    lock = threading.Lock()
    started: list[ProcessChild] = []
    later_calls: list[str] = []

    def first() -> ProcessChild:
        child = ProcessChild(run_forever)
        with lock:
            started.append(child)
        return child

    def boom() -> pooly.Child:
        raise RuntimeError("cannot start b")

    def local() -> None:
        pass

    if failure == "start raises":
        bad = ChildSpec("b", boom)
        expected: tuple[type[BaseException], ...] = (RuntimeError,)
    else:
        bad = ProcessChild.spec("b", local)  # a local function can't be pickled
        expected = (AttributeError, pickle.PicklingError, TypeError)

    def later() -> pooly.Child:
        child = ProcessChild(run_forever)
        with lock:
            later_calls.append("c")
            started.append(child)
        return child

    sup = Supervisor(
        [ChildSpec("a", first), ChildSpec("a2", first), bad, ChildSpec("c", later)],
        strategy=strategy,  # type: ignore[arg-type]
    )
    supervisors.append(sup)
    with pytest.raises(expected):
        sup.start()
    assert all_gone([c.pid for c in started])
    if strategy == "one_for_all":
        assert len(started) == 2
        assert later_calls == [], "children after the failing one must not start"
    assert not sup.running
    with pytest.raises(RuntimeError):
        sup.start_child(ProcessChild.spec("x", run_forever))


# ---------------------------------------------------------------------- dynamic children


def test_start_child_terminate_child_and_which_children(start) -> None:
    rec = Recorder()
    sup = start([ProcessChild.spec("a", run_forever)], listener=rec)
    a = pids(sup)["a"]
    child = sup.start_child(ProcessChild.spec("x", run_forever, restart="transient"))
    assert isinstance(child, ProcessChild) and alive(child.pid)
    [(a_id, a_child, a_restart), x_entry] = sup.which_children()
    assert (a_id, a_child.pid, a_restart) == ("a", a, "permanent")  # type: ignore[union-attr]
    assert x_entry == ("x", child, "transient")
    with pytest.raises(ValueError):
        sup.start_child(ProcessChild.spec("x", run_forever))
    assert wait_for(lambda: pids(sup) == {"a": a, "x": child.pid})

    # A dynamically started child is supervised like the others.
    x2 = crash(sup, "x")
    assert x2 != child.pid

    sup.terminate_child("x")
    assert gone(x2)
    assert [cid for cid, _, _ in sup.which_children()] == ["a"]
    assert rec.exits_of("x")[-1][0] == x2 and rec.exits_of("x")[-1][2] is False
    assert wait_for(lambda: pids(sup) == {"a": a})
    sup.terminate_child("no such child")  # unknown id: nothing to do
    assert sup.running and sup.failure is None


def test_restart_child_gives_a_new_pid_and_is_not_counted_against_intensity(start) -> None:
    sup = start(
        [ProcessChild.spec("a", run_forever), ProcessChild.spec("b", run_forever)],
        max_restarts=0,
        clock=FakeClock(),
    )
    b = pids(sup)["b"]
    seen = [pids(sup)["a"]]
    for _ in range(3):
        sup.restart_child("a")
        new = pids(sup)["a"]
        assert new not in seen and alive(new)
        assert gone(seen[-1])
        seen.append(new)
    assert sup.running and sup.failure is None  # max_restarts=0, yet three restarts
    assert wait_for(lambda: pids(sup).get("b") == b)
    with pytest.raises(KeyError):
        sup.restart_child("no such child")
    # A real crash *is* counted: with max_restarts=0 it fails the supervisor.
    os.kill(seen[-1], signal.SIGKILL)
    assert sup.wait(5) and sup.failure is not None
    assert all_gone([seen[-1], b])


def test_restart_child_without_waiting(start) -> None:
    sup = start([ProcessChild.spec("a", run_forever)])
    old = pids(sup)["a"]
    sup.restart_child("a", wait=False)
    wait_new_pid(sup, "a", old)
    assert all_gone([old])


# ---------------------------------------------------------------------- stopping


def test_stop_is_prompt_for_children_that_honour_sigterm(start) -> None:
    # A deadline far beyond the bound, so a loaded machine can't blur the two.
    sup = start([ProcessChild.spec(c, run_forever, shutdown=30.0) for c in "abcd"])
    before = pids(sup)
    t0 = time.monotonic()
    reason = sup.stop()
    assert time.monotonic() - t0 < 10.0, "graceful stop waited for the shutdown deadline"
    assert reason.normal and sup.failure is None and not sup.running and sup.wait(0)
    assert all_gone(before.values(), timeout=0.5)
    assert sup.stop().normal  # idempotent


def test_stop_kills_a_child_that_ignores_sigterm_after_its_shutdown_time(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    rec = Recorder()
    sup = start(
        [
            ProcessChild.spec("polite", run_forever, shutdown=30.0),
            ProcessChild.spec("stubborn", ignore_sigterm, (child_end,), shutdown=0.5),
        ],
        listener=rec,
    )
    stubborn = expect_ready(parent)  # its SIGTERM handler is in place
    polite = pids(sup)["polite"]
    t0 = time.monotonic()
    sup.stop()
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 10.0, elapsed  # not polite's 30 s
    assert all_gone([stubborn, polite], timeout=0.5)
    [(_, reason, _)] = rec.exits_of("stubborn")
    assert reason.exitcode == -signal.SIGKILL
    [(_, reason, _)] = rec.exits_of("polite")
    assert reason.exitcode == -signal.SIGTERM


@pytest.mark.timeout(15)
def test_stop_timeout_kills_children_whose_shutdown_is_longer(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    sup = start([ProcessChild.spec("stubborn", ignore_sigterm, (child_end,), shutdown=10.0)])
    pid = expect_ready(parent)
    t0 = time.monotonic()
    sup.stop(timeout=0.3)
    assert time.monotonic() - t0 < 3.0
    assert all_gone([pid], timeout=0.5)


def test_terminate_child_kills_a_stubborn_child_after_its_shutdown_time(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    sup = start([ProcessChild.spec("stubborn", ignore_sigterm, (child_end,), shutdown=0.3)])
    pid = expect_ready(parent)
    t0 = time.monotonic()
    sup.terminate_child("stubborn")
    assert 0.25 <= time.monotonic() - t0 < 3.0
    assert gone(pid)
    assert sup.which_children() == []


# ---------------------------------------------------------------------- misc


def test_children_start_with_forkserver_by_default(start) -> None:
    sup = start(
        [
            ProcessChild.spec("a", run_forever),
            ProcessChild.spec("forked", run_forever, start_method="fork"),
        ]
    )
    me = os.getpid()
    assert psutil.Process(pids(sup)["forked"]).ppid() == me
    # The default child is not forked from this (threaded) process but from the forkserver.
    server = psutil.Process(pids(sup)["a"]).parent()
    assert server is not None and server.pid != me
    assert "forkserver" in " ".join(server.cmdline())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"strategy": "one_for_some"}, ValueError),
        ({"max_restarts": -1}, ValueError),
        ({"max_restarts": 1.5}, TypeError),
        ({"max_restarts": True}, TypeError),
        ({"max_restarts": "3"}, TypeError),
        ({"max_seconds": 0}, ValueError),
        ({"max_seconds": -5}, ValueError),
        ({"max_seconds": "5"}, TypeError),
    ],
)
def test_invalid_supervisor_options(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Supervisor([ProcessChild.spec("a", run_forever)], **kwargs)  # type: ignore[arg-type]


def test_invalid_child_specs() -> None:
    with pytest.raises(ValueError):
        ChildSpec("a", lambda: ProcessChild(run_forever), restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChildSpec("a", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChildSpec("a", lambda: ProcessChild(run_forever), shutdown=-1)
    with pytest.raises(ValueError):
        ProcessChild.spec("a", run_forever, restart="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Supervisor([ProcessChild.spec("a", run_forever), ProcessChild.spec("a", exit_now)])


def test_a_supervisor_starts_only_once(start) -> None:
    sup = start([ProcessChild.spec("a", run_forever)])
    with pytest.raises(RuntimeError):
        sup.start()
    assert len(pids(sup)) == 1


# ---------------------------------------------------------------------- listeners (issue 6)


class Raising(Recorder):
    """Records like a Recorder, then raises from the hooks named in ``bad``."""

    def __init__(self, *bad: str, exc: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.bad = set(bad)
        self.exc = exc

    def child_exited(
        self, child_id: Hashable, child: pooly.Child, reason: ExitReason, restarting: bool
    ) -> None:
        super().child_exited(child_id, child, reason, restarting)
        if "child_exited" in self.bad:
            raise self.exc("listener bug in child_exited")

    def supervisor_failed(self, reason: ExitReason) -> None:
        super().supervisor_failed(reason)
        if "supervisor_failed" in self.bad:
            raise self.exc("listener bug in supervisor_failed")


def stop_within(sup: Supervisor, seconds: float) -> ExitReason:
    """sup.stop() from another thread; fails (instead of hanging the test) past ``seconds``."""
    out: list[ExitReason] = []
    th = threading.Thread(target=lambda: out.append(sup.stop()), daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"stop() still blocked after {seconds}s"
    return out[0]


def test_a_raising_listener_is_logged_and_removed_and_the_loop_lives_on(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect I of issue 6: an exception raised by a listener hook killed the supervisor's loop
    thread; crashes were no longer handled and stop() then hung forever."""
    bad, good = Raising("child_exited"), Recorder()
    sup = start(
        [ProcessChild.spec("a", run_forever)],
        listeners=[bad, good],
        max_restarts=10,
        clock=FakeClock(),
    )
    a1 = pids(sup)["a"]
    with caplog.at_level("ERROR", logger="pooly.supervisor"):
        a2 = crash(sup, "a")  # the loop still restarts after the hook raised
        a3 = crash(sup, "a")
    assert len({a1, a2, a3}) == 3
    assert [p for p, _, _ in bad.exits_of("a")] == [a1], "a raising listener must be removed"
    assert [p for p, _, _ in good.exits_of("a")] == [a1, a2], "other listeners keep hearing"
    [record] = [r for r in caplog.records if r.name == "pooly.supervisor"]
    assert (
        record.exc_info is not None
        and "listener bug in child_exited" in record.getMessage() + str(record.exc_info[1])
    )
    assert "child_exited" in record.getMessage() and "removed" in record.getMessage()
    assert sup.running and sup.failure is None
    assert stop_within(sup, 10).normal
    assert all_gone([a3])


def test_a_listener_raising_while_the_supervisor_stops_does_not_hang_stop(start) -> None:
    """Defect I of issue 6: the stop path notifies listeners too; one that raises there must
    not leave stop() waiting forever or a child running."""
    sup = start([ProcessChild.spec(c, run_forever) for c in "ab"], listener=Raising("child_exited"))
    before = pids(sup)
    assert stop_within(sup, 10).normal
    assert all_gone(before.values())


def test_a_listener_raising_in_supervisor_failed_still_lets_the_supervisor_fail_cleanly(
    start,
) -> None:
    bad, good = Raising("supervisor_failed"), Recorder()
    sup = start(
        [ProcessChild.spec("a", run_forever), ProcessChild.spec("b", run_forever)],
        listeners=[bad, good],
        max_restarts=0,
        clock=FakeClock(),
    )
    b = pids(sup)["b"]
    os.kill(pids(sup)["a"], signal.SIGKILL)
    assert sup.wait(10), "the supervisor did not end after exceeding its intensity"
    assert sup.failure is not None
    assert good.failures == [sup.failure] and bad.failures == [sup.failure]
    assert [cid for cid, _, _, _ in good.exits] == ["a", "b"]
    assert all_gone([b])


def test_a_listener_raising_system_exit_fails_the_supervisor_without_hanging(start) -> None:
    """Not an Exception: it is not swallowed; the loop ends the supervisor (failed, children
    killed) and stop() still returns."""
    sup = start(
        [ProcessChild.spec("a", run_forever), ProcessChild.spec("b", run_forever)],
        listener=Raising("child_exited", exc=SystemExit),
    )
    b = pids(sup)["b"]
    os.kill(pids(sup)["a"], signal.SIGKILL)
    assert sup.wait(10)
    assert sup.failure is not None and "SystemExit" in sup.failure.detail
    stop_within(sup, 10)
    assert all_gone([b])


def test_listeners_can_be_added_and_removed_while_running(start) -> None:
    first, late = Recorder(), Recorder()
    sup = start([ProcessChild.spec("a", run_forever)], listener=first, clock=FakeClock())
    a1 = pids(sup)["a"]
    sup.add_listener(late)
    a2 = crash(sup, "a")
    sup.remove_listener(first)
    crash(sup, "a")
    assert [p for p, _, _ in first.exits_of("a")] == [a1]
    assert [p for p, _, _ in late.exits_of("a")] == [a1, a2]
    with pytest.raises(ValueError, match="not a listener"):
        sup.remove_listener(first)
    with pytest.raises(TypeError, match="listener"):
        sup.add_listener(object())  # type: ignore[arg-type]


def test_listener_options_are_checked() -> None:
    with pytest.raises(TypeError, match="listeners"):
        Supervisor(listeners=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="listener"):
        Supervisor(listener=42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- no deadline from above


class EndsLater(pooly.PassiveChild):
    """A child that takes ``linger`` seconds to end after terminate (a thread ends it); kill
    ends it at once. ``how`` says which happened."""

    def __init__(self, linger: float) -> None:
        super().__init__()
        self.linger = linger
        self.how: str | None = None

    def terminate(self) -> None:
        threading.Timer(self.linger, self._end, ("terminated",)).start()

    def kill(self) -> None:
        self._end("killed")

    def _end(self, how: str) -> None:
        if self.how is None:
            self.how = how
        super().terminate()


@pytest.mark.parametrize(("cap", "expected"), [(0.1, "killed"), (math.inf, "terminated")])
def test_a_supervisor_child_with_no_shutdown_deadline_lets_its_children_take_theirs(
    start, cap: float, expected: str
) -> None:
    """Defect P of issue 6 (the mechanism): a finite shutdown on a supervisor child cuts its own
    children's longer graceful stops short; math.inf leaves each child its own deadline."""
    leaf = EndsLater(0.4)

    def start_sub() -> Supervisor:
        return Supervisor([ChildSpec("leaf", lambda: leaf, shutdown=2.0)], name="sub").start()

    top = start([ChildSpec("sub", start_sub, shutdown=cap)], name="top")
    t0 = time.monotonic()
    assert stop_within(top, 10).normal
    elapsed = time.monotonic() - t0
    assert leaf.how == expected
    if expected == "terminated":
        assert 0.35 <= elapsed < 2.0, elapsed


def test_child_spec_shutdown_none_means_no_limit() -> None:
    assert ChildSpec("a", lambda: EndsLater(0), shutdown=None).shutdown == math.inf  # type: ignore[arg-type]
    assert ChildSpec("a", lambda: EndsLater(0), shutdown=math.inf).shutdown == math.inf
    for bad in (math.nan, -0.5, "5", True):
        with pytest.raises(ValueError, match="shutdown"):
            ChildSpec("a", lambda: EndsLater(0), shutdown=bad)  # type: ignore[arg-type]


def _tree_specs(p: pooly.Pooly, name: str) -> dict[str, float]:
    """The shutdown deadline of each level on the way from the top to a pool's worker w0."""
    top = p._top
    pools = top.which_children()[1][1]
    assert isinstance(pools, Supervisor)
    tree = dict((cid, c) for cid, c, _ in pools.which_children())[name]
    assert isinstance(tree, Supervisor)
    workers = dict((cid, c) for cid, c, _ in tree.which_children())["workers"]
    assert isinstance(workers, Supervisor)
    return {
        "pools": top.child_spec("pools").shutdown,
        "pool": pools.child_spec(name).shutdown,
        "workers": tree.child_spec("workers").shutdown,
        "w0": workers.child_spec("w0").shutdown,
    }


def test_pooly_puts_no_deadline_above_a_pools_own_shutdown_timeout() -> None:
    """Defect P of issue 6: the top supervisor gave its "pools" child a fixed 60 s shutdown, so a
    66 s call under shutdown_timeout=90 was killed at 60 s. The workers carry the deadlines;
    each supervisor level above them (issue 7, defect 1: no wait without a deadline) has a
    deadline past the one below it, so it never cuts their graceful stop short."""
    from tests.workers import Counter

    with pooly.Pooly() as p:
        p.start_pool("long", Counter, size=1, shutdown_timeout=90)
        specs = _tree_specs(p, "long")
        assert specs["w0"] == 90
        assert 90 < specs["workers"] < specs["pool"] < math.inf
        assert specs["pools"] == math.inf  # bounded by the pools supervisor's own bound:
        assert specs["pool"] < p._pools_sup.shutdown_bound() < math.inf


@pytest.mark.timeout(30)
def test_pooly_stop_lets_a_call_finish_within_the_pools_shutdown_timeout_then_kills(
    tmp_path,
) -> None:
    """Defect P of issue 6, end to end with small numbers: stop() waits out the pool's own
    shutdown_timeout (a call shorter than it completes; a longer one is killed at it)."""
    from tests.workers import Gated

    p = pooly.Pooly()
    pool = p.start_pool("p", Gated, size=2, shutdown_timeout=1.5)
    results: dict[str, object] = {}

    def call(key: str, seconds: float) -> None:
        lease = pool.checkout()
        try:
            results[key] = lease.sleep_marked(str(tmp_path / key), seconds)
        except Exception as e:
            results[key] = e

    threads = [
        threading.Thread(target=call, args=("short", 1.0)),
        threading.Thread(target=call, args=("long", 30.0)),
    ]
    for th in threads:
        th.start()
    assert wait_for(lambda: all((tmp_path / k).exists() for k in ("short", "long")))
    t0 = time.monotonic()
    p.stop()
    elapsed = time.monotonic() - t0
    for th in threads:
        th.join(10)
    assert results["short"] == 1.0, results
    assert isinstance(results["long"], pooly.WorkerCrashed), results
    assert 1.4 <= elapsed < 4.0, elapsed


# ---------------------------------------------------------------------- timers, one clock


class Calls:
    """Records timer calls: (tag, clock time, thread name)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float, str]] = []

    def __call__(self, tag: str) -> None:
        with self.lock:
            self.calls.append((tag, self.clock(), threading.current_thread().name))

    def tags(self) -> list[str]:
        with self.lock:
            return [t for t, _, _ in self.calls]


def test_timers_run_on_the_loop_thread_in_virtual_time_in_order(start) -> None:
    clock = VirtualClock(100.0)
    calls = Calls(clock)
    sup = start([ProcessChild.spec("a", run_forever)], clock=clock, name="timers")
    late = sup.call_later(10, calls, "late")
    sup.call_at(105, calls, "early")
    sup.call_at(105, calls, "early-2")  # same time: in the order scheduled
    dropped = sup.call_later(7, calls, "dropped")
    assert (late.when, late.cancelled) == (110, False)
    dropped.cancel()
    clock.advance(5)
    assert wait_for(lambda: calls.tags() == ["early", "early-2"])
    clock.advance(4.9)  # 109.9: nothing due; a timer at 109.9 shows the loop has looked
    sup.call_at(109.9, calls, "probe")
    assert wait_for(lambda: "probe" in calls.tags())
    assert "late" not in calls.tags() and "dropped" not in calls.tags()
    clock.advance(0.1)
    assert wait_for(lambda: "late" in calls.tags())
    assert calls.calls == [
        ("early", 105, "pooly-timers"),
        ("early-2", 105, "pooly-timers"),
        ("probe", 109.9, "pooly-timers"),
        ("late", 110, "pooly-timers"),
    ]
    assert dropped.cancelled


def test_autojump_runs_a_timer_an_hour_away_at_once(start) -> None:
    clock = VirtualClock(0.0)
    calls = Calls(clock)
    sup = start([ProcessChild.spec("a", run_forever)], clock=clock)
    t0 = time.monotonic()
    sup.call_later(3600, calls, "hour")
    sup.call_later(60, calls, "minute")
    clock.autojump_threshold = 0  # from now on (both timers are set)
    assert wait_for(lambda: len(calls.tags()) == 2)
    assert time.monotonic() - t0 < 2.0
    assert [(t, when) for t, when, _ in calls.calls] == [("minute", 60), ("hour", 3600)]


def test_autojump_goes_to_the_earliest_deadline_of_every_supervisor_on_the_clock(start) -> None:
    clock = VirtualClock(0.0)
    calls = Calls(clock)
    one = start([ProcessChild.spec("a", run_forever)], clock=clock, name="one")
    two = start([ProcessChild.spec("a", run_forever)], clock=clock, name="two")
    for i in range(1, 6):
        one.call_at(100 * i, calls, f"one@{100 * i}")
        two.call_at(100 * i + 50, calls, f"two@{100 * i + 50}")
    clock.autojump_threshold = 0.02
    assert wait_for(lambda: len(calls.tags()) == 10)
    # Never skipped past: each ran at its own time, whichever loop made time jump.
    assert all(when == float(tag.split("@")[1]) for tag, when, _ in calls.calls), calls.calls


def test_a_timer_that_raises_is_logged_and_later_timers_still_run(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    calls = Calls(clock)
    sup = start([ProcessChild.spec("a", run_forever)], clock=clock)

    def boom() -> None:
        raise RuntimeError("timer bug")

    with caplog.at_level("ERROR", logger="pooly.supervisor"):
        sup.call_later(1, boom)
        sup.call_later(2, calls, "after")
        clock.advance(2)
        assert wait_for(lambda: calls.tags() == ["after"])
    [record] = [r for r in caplog.records if "timer" in r.getMessage()]
    assert record.exc_info is not None and "timer bug" in str(record.exc_info[1])
    assert sup.running and sup.failure is None


def test_timers_can_schedule_timers_and_act_on_the_supervisor(start) -> None:
    """A timer runs on the loop thread, so it may call the supervisor (here restart_child)."""
    clock = VirtualClock(autojump_threshold=0)
    sup = start([ProcessChild.spec("a", run_forever)], clock=clock)
    a1 = pids(sup)["a"]
    sup.call_later(30, lambda: sup.call_later(30, sup.restart_child, "a"))
    new = wait_new_pid(sup, "a", a1)
    assert new != a1 and all_gone([a1])
    assert clock() >= 60


def test_timers_of_a_stopped_supervisor_never_run(start) -> None:
    clock = VirtualClock()
    calls = Calls(clock)
    sup = start([ProcessChild.spec("a", run_forever)], clock=clock)
    pending = sup.call_later(5, calls, "pending")
    sup.stop()
    assert pending.cancelled
    late = sup.call_later(0, calls, "late")
    assert late.cancelled
    clock.advance(10)
    assert calls.tags() == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1, print), ValueError),
        ((math.nan, print), ValueError),
        (("1", print), ValueError),
        ((1, "not callable"), TypeError),
    ],
)
def test_call_later_refuses_bad_input(start, args: tuple[object, object], error: type) -> None:
    sup = start([ProcessChild.spec("a", run_forever)])
    with pytest.raises(error):
        sup.call_later(*args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="when"):
        sup.call_at(math.nan, print)


def test_shutdown_deadlines_read_the_supervisors_clock(start) -> None:
    """A child that ignores SIGTERM with an hour's shutdown time: killed when the *virtual*
    hour has passed (at once, with autojump), not after a real one."""
    parent, child_end = multiprocessing.Pipe()
    clock = VirtualClock(0.0, autojump_threshold=0.05)
    rec = Recorder()
    sup = start(
        [ProcessChild.spec("stubborn", ignore_sigterm, (child_end,), shutdown=3600)],
        clock=clock,
        listener=rec,
    )
    pid = expect_ready(parent)
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 3.0
    assert clock() == 3600
    [(_, reason, _)] = rec.exits_of("stubborn")
    assert reason.exitcode == -signal.SIGKILL and gone(pid)


def test_shutdown_deadline_waits_for_the_clock_to_move(start) -> None:
    parent, child_end = multiprocessing.Pipe()
    clock = VirtualClock(0.0)
    sup = start(
        [ProcessChild.spec("stubborn", ignore_sigterm, (child_end,), shutdown=30)], clock=clock
    )
    pid = expect_ready(parent)
    th = threading.Thread(target=sup.stop)
    th.start()
    assert wait_for(lambda: clock.deadlines() == [30])  # the stop is waiting for its deadline
    clock.advance(29.9)
    th.join(0.3)  # bounded: the stop must still be waiting for virtual time
    assert th.is_alive() and alive(pid)
    clock.advance(0.1)
    th.join(5)
    assert not th.is_alive() and all_gone([pid])


def test_virtual_clock_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="start"):
        VirtualClock(math.inf)
    with pytest.raises(ValueError, match="autojump_threshold"):
        VirtualClock(autojump_threshold=-1)
    clock = VirtualClock(5)
    with pytest.raises(ValueError, match="advance"):
        clock.advance(-1)
    clock.jump_to(3)  # never backwards
    assert clock() == 5


# ---------------------------------------------------------------------- starts off the loop


class Gate:
    """A start that blocks until the test opens the gate; counts how many run at once."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.entered = 0
        self.cancelled: list[bool] = []

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.entered += 1
            self.most = max(self.most, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1

    def start(self) -> ProcessChild:
        """Not cancellable: ignores a stop, returns once the gate opens."""
        self.enter()
        try:
            assert self.opened.wait(20)
            return ProcessChild(run_forever)
        finally:
            self.leave()

    def start_cancellable(self, cancel: pooly_sup.CancelToken) -> ProcessChild:
        """Waits for the gate or the cancel, whichever first (a handshake would do this)."""
        self.enter()
        try:
            ready = multiprocessing.connection.wait([cancel, self._gate_fd()], 20)
            with self.lock:
                self.cancelled.append(cancel.cancelled)
            if cancel.cancelled:
                raise pooly_sup.StartCancelled("gate start cancelled")
            assert ready
            return ProcessChild(run_forever)
        finally:
            self.leave()

    def _gate_fd(self) -> int:
        with self.lock:
            if not hasattr(self, "_r"):
                self._r, self._w = os.pipe()
            return self._r

    def open(self) -> None:
        self.opened.set()
        self._gate_fd()
        os.write(self._w, b"x")


def test_other_exits_are_handled_while_a_restart_is_starting(start) -> None:
    """Seam 1 of issue 6: the loop only waits and decides. A start that hangs (a slow worker
    constructor) no longer keeps the supervisor from reaping and restarting another child."""
    gate, rec = Gate(), Recorder()
    first = [True]

    def slow_on_restart() -> ProcessChild:
        if first[0]:
            first[0] = False
            return ProcessChild(run_forever)
        return gate.start()

    sup = start(
        [ChildSpec("slow", slow_on_restart), ProcessChild.spec("other", run_forever)],
        listener=rec,
        max_restarts=10,
        clock=FakeClock(),
    )
    before = pids(sup)
    os.kill(before["slow"], signal.SIGKILL)
    assert wait_for(lambda: gate.entered == 1)  # the restart is stuck in its start
    t0 = time.monotonic()
    other2 = crash(sup, "other")
    assert time.monotonic() - t0 < 2.0
    [(pid, reason, again)] = rec.exits_of("other")
    assert (pid, reason.exitcode, again) == (before["other"], -signal.SIGKILL, True)
    assert "slow" not in pids(sup)
    gate.open()
    wait_new_pid(sup, "slow", before["slow"])
    assert wait_for(lambda: pids(sup).get("other") == other2)


def test_stop_cuts_a_cancellable_start_short(start) -> None:
    gate = Gate()
    first = [True]

    def start_fn(cancel: pooly_sup.CancelToken) -> ProcessChild:
        if first[0]:
            first[0] = False
            return ProcessChild(run_forever)
        return gate.start_cancellable(cancel)

    sup = start([ChildSpec("c", start_fn, cancellable=True, shutdown=30)], clock=FakeClock())
    os.kill(pids(sup)["c"], signal.SIGKILL)
    assert wait_for(lambda: gate.entered == 1)
    t0 = time.monotonic()
    assert stop_within(sup, 10).normal
    assert time.monotonic() - t0 < 2.0, "stop waited for the start instead of cancelling it"
    assert gate.cancelled == [True] and gate.running == 0


def test_stop_abandons_a_start_that_ignores_the_cancel_after_its_shutdown_time(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    """The start is left to its thread; when it returns a child after all, that thread stops
    the child: nothing is left running."""
    gate = Gate()
    started: list[ProcessChild] = []
    first = [True]

    def start_fn() -> ProcessChild:
        if first[0]:
            first[0] = False
            return ProcessChild(run_forever)
        child = gate.start()
        started.append(child)
        return child

    sup = start([ChildSpec("c", start_fn, shutdown=0.3)])  # real time: the deadline must pass
    os.kill(pids(sup)["c"], signal.SIGKILL)
    assert wait_for(lambda: gate.entered == 1)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="pooly.supervisor"):
        stop_within(sup, 10)
        assert 0.25 <= time.monotonic() - t0 < 3.0
        gate.open()
        assert wait_for(lambda: started and gone(started[0].pid))
        assert wait_for(lambda: "stopping it" in caplog.text)
    assert "did not return within 0.3s" in caplog.text


@pytest.mark.parametrize("how", ["terminate_child", "restart_child"])
def test_terminating_or_restarting_a_child_cancels_its_start(start, how: str) -> None:
    gate = Gate()
    calls = [0]

    def start_fn(cancel: pooly_sup.CancelToken) -> ProcessChild:
        calls[0] += 1
        if calls[0] == 2:  # only the restart after the crash is slow
            return gate.start_cancellable(cancel)
        return ProcessChild(run_forever)

    sup = start([ChildSpec("c", start_fn, cancellable=True)], clock=FakeClock())
    c1 = pids(sup)["c"]
    os.kill(c1, signal.SIGKILL)
    assert wait_for(lambda: gate.entered == 1)
    t0 = time.monotonic()
    getattr(sup, how)("c")
    assert time.monotonic() - t0 < 2.0
    assert gate.cancelled == [True]
    if how == "terminate_child":
        assert sup.which_children() == []
    else:
        assert calls[0] == 3 and alive(pids(sup)["c"])


def test_one_for_one_starts_its_children_concurrently(start) -> None:
    """Seam 1 of issue 6: a pool of size 2 with a 3 s constructor started in 6 s. All three
    starts must be running at once to pass the barrier."""
    barrier = threading.Barrier(3, timeout=10)

    def together() -> ProcessChild:
        barrier.wait()
        return ProcessChild(run_forever)

    sup = start([ChildSpec(c, together) for c in "abc"])
    assert len(pids(sup)) == 3


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_ordered_strategies_start_one_child_after_another(start, strategy: str) -> None:
    gate, order = Gate(), []

    def in_order(cid: str) -> ProcessChild:
        gate.enter()
        try:
            order.append(cid)
            return ProcessChild(run_forever)
        finally:
            gate.leave()

    sup = start([ChildSpec(c, functools.partial(in_order, c)) for c in "abcd"], strategy=strategy)
    assert order == list("abcd") and gate.most == 1
    # A restart of the group keeps the order too.
    os.kill(pids(sup)["b"], signal.SIGKILL)
    assert wait_for(lambda: len(order) >= 7 and len(pids(sup)) == 4)
    assert order[4:] == (list("abcd") if strategy == "one_for_all" else list("bcd"))
    assert gate.most == 1


def test_replacements_after_a_burst_of_crashes_start_concurrently(start) -> None:
    barrier = threading.Barrier(3, timeout=10)
    calls = {c: 0 for c in "abc"}

    def start_fn(cid: str) -> ProcessChild:
        calls[cid] += 1
        if calls[cid] == 2:
            barrier.wait()  # passes only if the three replacements start at once
        return ProcessChild(run_forever)

    sup = start(
        [ChildSpec(c, functools.partial(start_fn, c)) for c in "abc"],
        max_restarts=5,
        clock=FakeClock(),
    )
    before = pids(sup)
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    assert wait_for(
        lambda: len(pids(sup)) == 3 and not set(pids(sup).values()) & set(before.values())
    )
    assert sup.running and not barrier.broken


def test_a_failed_restart_counts_against_intensity(start) -> None:
    rec = Recorder()
    calls = [0]

    def flaky() -> ProcessChild:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("cannot start again")
        return ProcessChild(run_forever)

    sup = start(
        [ChildSpec("f", flaky), ProcessChild.spec("other", run_forever)],
        max_restarts=3,
        clock=FakeClock(),
        listener=rec,
    )
    other = pids(sup)["other"]
    os.kill(pids(sup)["f"], signal.SIGKILL)  # restart 1; then 3 failed starts: 4 > 3
    assert sup.wait(10)
    assert calls[0] == 4
    assert sup.failure is not None and "cannot start again" in sup.failure.detail
    assert all_gone([other])


def test_a_request_about_a_child_still_being_adopted_is_not_lost(start) -> None:
    """A start may hand its child out before it returns (a pool makes a new worker available
    from inside its start). A request bound to that instance (only_if) that reaches the loop
    before the child is adopted waits for the start, instead of being dropped as stale."""
    made: list[ProcessChild] = []

    def start_fn() -> ProcessChild:
        child = ProcessChild(run_forever)
        made.append(child)
        if len(made) == 2:  # the restart: ask for it to be restarted again, before returning
            sup.restart_child("c", wait=False, only_if=child)
        return child

    sup = start([ChildSpec("c", start_fn)], max_restarts=5, clock=FakeClock())
    os.kill(made[0].pid, signal.SIGKILL)
    assert wait_for(lambda: len(made) == 3 and pids(sup).get("c") == made[2].pid)
    assert all_gone([made[0].pid, made[1].pid])


def test_a_cancelled_supervisor_start_stops_what_it_started(supervisors) -> None:
    gate = Gate()
    token = pooly_sup.CancelToken()
    sup = Supervisor(
        [
            ProcessChild.spec("fast", run_forever),
            ChildSpec("slow", gate.start_cancellable, cancellable=True),
        ]
    )
    supervisors.append(sup)
    out: list[BaseException] = []

    def run() -> None:
        try:
            sup.start(token)
        except BaseException as e:
            out.append(e)

    th = threading.Thread(target=run)
    th.start()
    assert wait_for(lambda: gate.entered == 1 and "fast" in pids(sup))
    fast = pids(sup)["fast"]
    token.cancel()
    th.join(10)
    assert len(out) == 1 and isinstance(out[0], pooly_sup.StartCancelled)
    assert gate.cancelled == [True] and all_gone([fast])
    assert not sup.running


def test_cancel_token() -> None:
    token = pooly_sup.CancelToken()
    assert not token.cancelled
    fd = token.fileno()
    assert multiprocessing.connection.wait([fd], 0) == []
    token.cancel()
    token.cancel()
    assert token.cancelled and multiprocessing.connection.wait([token], 0) == [token]
    late = pooly_sup.CancelToken()
    late.cancel()  # cancelled before anyone asked for the fd: readable all the same
    assert multiprocessing.connection.wait([late], 0) == [late]
    token._close()
    with pytest.raises(ValueError, match="closed"):
        token.fileno()
    with pytest.raises(TypeError, match="cancellable"):
        ChildSpec("x", lambda: None, cancellable=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- pools: slow starts


@pytest.mark.timeout(40)
def test_a_crash_reaches_its_holder_at_once_while_a_replacement_starts_slowly(
    sup: pooly.Pooly, tmp_path
) -> None:
    """Defect D of issue 6: while a replacement ran a slow constructor (on the supervisor's
    loop), another worker's death reached its holder only after 5 s, with exitcode None."""
    from tests.workers import SlowInit

    marker = tmp_path / "slow"
    pool = sup.start_pool("d", SlowInit, args=(str(marker), 30.0), size=2, max_restarts=5)
    a, b = pool.checkout(), pool.checkout()
    marker.touch()  # from now on every constructor takes 30 s
    os.kill(a.pid, signal.SIGKILL)
    assert wait_for(lambda: pool.status().crashed == 1)  # its replacement is starting now
    t0 = time.monotonic()
    with pytest.raises(pooly.WorkerCrashed) as ei:
        b.kill_self()
    elapsed = time.monotonic() - t0
    assert (ei.value.pid, ei.value.exitcode) == (b.pid, -signal.SIGKILL)
    assert elapsed < 1.5, elapsed


@pytest.mark.timeout(40)
def test_stop_pool_cuts_a_slow_replacement_start_short(sup: pooly.Pooly, tmp_path) -> None:
    """Defect H of issue 6: stop_pool during a slow start waited out the constructor (19.5 s
    with shutdown_timeout=1)."""
    from tests.workers import SlowInit

    marker = tmp_path / "slow"
    pool = sup.start_pool(
        "h", SlowInit, args=(str(marker), 60.0), size=1, shutdown_timeout=1, max_restarts=5
    )
    (pid,) = pool.worker_pids()
    marker.touch()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pool.status().crashed == 1)  # the replacement is starting
    t0 = time.monotonic()
    sup.stop_pool("h")
    assert time.monotonic() - t0 < 1 + 2.0
    # (the leftover-process check after the test proves the slow worker is gone)


@pytest.mark.timeout(40)
def test_pooly_stop_cuts_a_start_pool_in_progress_short(tmp_path) -> None:
    from tests.chaos_workers import RecordedSlowInit, recorded

    p = pooly.Pooly()
    out: list[BaseException | str] = []

    def starter() -> None:
        try:
            p.start_pool("s", RecordedSlowInit, args=(str(tmp_path), "", 60.0), size=2)
            out.append("started")
        except BaseException as e:
            out.append(e)

    th = threading.Thread(target=starter)
    th.start()
    assert wait_for(lambda: len(recorded(str(tmp_path), "started")) == 2, 10)
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 5.0
    th.join(10)
    assert len(out) == 1 and isinstance(out[0], pooly.PoolyError), out


@pytest.mark.timeout(40)
def test_a_pools_workers_start_concurrently(sup: pooly.Pooly, tmp_path) -> None:
    """Seam 1 of issue 6: start_pool(size=2) with a slow constructor cost two constructors
    (16.6 s with a 3 s model load); it must cost about one."""
    from tests.workers import SlowInit

    marker = tmp_path / "slow"
    marker.touch()
    t0 = time.monotonic()
    pool = sup.start_pool("c", SlowInit, args=(str(marker), 2.0), size=2)
    elapsed = time.monotonic() - t0
    assert len(pool.worker_pids()) == 2
    assert 2.0 <= elapsed < 1.5 * 2.0, elapsed


class _SlowToEnd(pooly_sup.PassiveChild):
    """Asked to stop, it only notes the request; it ends when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()

    def terminate(self) -> None:
        self.asked.set()

    def end(self) -> None:
        super().terminate()


@pytest.mark.timeout(30)
def test_a_request_posted_while_a_deferred_stop_waits_is_not_lost() -> None:
    """Issue 10 (found by recycling under load): a stop requested for a child whose start
    had not returned yet is deferred, and runs when the start is adopted; while it waited
    for the child to end, it drained the loop's wake-up -- so a request posted meanwhile
    (here add_child) sat in the mailbox with the loop asleep, for good (a recycled worker's
    replacement never started; a pool was left a worker short and a map hung)."""
    gate = threading.Event()
    made: list[_SlowToEnd] = []

    def start_a() -> _SlowToEnd:
        made.append(_SlowToEnd())
        gate.wait(10)  # handed out (as a pool's worker is) before its start returns
        return made[0]

    sup = Supervisor([], name="deferred").start()
    try:
        sup.add_child(ChildSpec("a", start_a, shutdown=10.0))
        assert wait_for(lambda: made)
        sup.terminate_child("a", wait=False, only_if=made[0])  # deferred: a is starting
        assert wait_for(lambda: sup._entries["a"].start.deferred)  # type: ignore[union-attr]
        gate.set()  # adopted; the deferred stop runs and waits for a to end
        assert made[0].asked.wait(10)
        b = pooly_sup.PassiveChild()
        sup.add_child(ChildSpec("b", lambda: b))  # posted while that stop waits
        made[0].end()
        assert wait_for(lambda: [c for i, c, _ in sup.which_children() if i == "b"] == [b], 5)
    finally:
        gate.set()
        sup.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("returned", [False, True], ids=["starting", "returned"])
def test_set_restart_reaches_a_child_handed_out_before_its_start_returned(returned) -> None:
    """Issue 10 (the model test, after pool.resize; and a chaos soak's pool left a worker
    short): a pool hands a new worker out from inside its start, before the supervisor has
    adopted it. set_restart(only_if=that child) found no child under the id yet and said
    False ("it died just now") -- so resizing a pool down left a busy worker unmarked (it
    never stopped, and the pool believed a restart was under way), and a checkin could not
    promote an overflow worker. Whether the start is still running or has returned but is
    not yet adopted, the change is made, and holds once the child is adopted."""
    gate = threading.Event()
    made: list[pooly_sup.PassiveChild] = []

    def start_c() -> pooly_sup.PassiveChild:
        made.append(pooly_sup.PassiveChild())
        gate.wait(10)  # handed out (as a pool's worker is) before its start returns
        return made[0]

    sup = Supervisor([], name="handed-out").start()
    try:
        hold = threading.Event()
        sup.add_child(ChildSpec("c", start_c))
        assert wait_for(lambda: made)
        if returned:  # keep the loop busy, so that the finished start waits to be adopted
            sup._call(lambda: hold.wait(10), wait=False)
            gate.set()
            assert wait_for(lambda: sup._entries["c"].start.done)  # type: ignore[union-attr]
        if returned:  # its child is known: another is refused
            assert not sup.set_restart("c", "permanent", only_if=pooly_sup.PassiveChild())
        assert sup.set_restart("c", "temporary", only_if=made[0])
        gate.set()
        hold.set()
        assert wait_for(lambda: [c for i, c, _ in sup.which_children() if i == "c"] == made, 5)
        assert sup.which_children() == [("c", made[0], "temporary")]
        made[0].terminate()  # ends; temporary: not restarted, its spec gone
        assert wait_for(lambda: sup.which_children() == [], 5)
        assert len(made) == 1
    finally:
        gate.set()
        sup.stop()


@pytest.mark.timeout(30)
def test_set_restart_naming_another_child_than_the_start_returns_is_undone() -> None:
    """The other side of the test above: set_restart(only_if=X) while a start is in flight
    takes X for the child being started; if the start returns another, nothing changes."""
    gate = threading.Event()
    made: list[pooly_sup.PassiveChild] = []

    def start_c() -> pooly_sup.PassiveChild:
        made.append(pooly_sup.PassiveChild())
        gate.wait(10)
        return made[-1]

    sup = Supervisor([], name="another").start()
    try:
        sup.add_child(ChildSpec("c", start_c))
        assert wait_for(lambda: made)
        stranger = pooly_sup.PassiveChild()
        assert sup.set_restart("c", "temporary", only_if=stranger)  # (taken on trust)
        gate.set()
        assert wait_for(lambda: sup.which_children() == [("c", made[0], "permanent")], 5)
        made[0].terminate()  # still permanent: restarted
        assert wait_for(lambda: len(made) == 2 and sup.which_children()[0][1] is made[1], 5)
        stranger.discard()
    finally:
        gate.set()
        sup.stop()
