"""The wire (issue 6, seam 2): frames carry request ids; a call is a send and a receive.

White-box tests of the host's side of a worker's channel (``lease._worker``, a
:class:`pooly._worker.WorkerProcess`), on real worker processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pooly
from pooly._worker import ReplyTimeout
from tests.defect_workers import Client


@pytest.fixture
def worker(sup: pooly.Pooly):  # type: ignore[no-untyped-def]
    pool = sup.start_pool("wire", Client, size=1)
    with pool.checkout(timeout=10) as lease:
        yield lease._worker
        assert not lease._worker.broken


def test_pipelined_requests_are_answered_in_order(worker) -> None:  # type: ignore[no-untyped-def]
    rids = [worker.send("incr", (k,), {}) for k in (1, 10, 100)]
    assert rids == sorted(rids) and len(set(rids)) == 3
    assert worker.pending == 3
    assert [worker.receive(r) for r in rids] == [1, 11, 111]
    assert worker.pending == 0
    assert worker.call("get", (), {}) == 111  # the fast path is in step afterwards


def test_receiving_a_later_reply_drops_earlier_ones(worker) -> None:  # type: ignore[no-untyped-def]
    first = worker.send("incr", (1,), {})
    second = worker.send("incr", (2,), {})
    assert worker.receive(second) == 3  # the first's reply was read and dropped
    assert worker.pending == 0
    with pytest.raises(ValueError, match="not pending"):
        worker.receive(first)


def test_receive_deadline_reads_nothing_and_late_reply_is_drained(
    worker,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    marker, behind = tmp_path / "running", tmp_path / "behind"
    slow = worker.send("sleep_marked", (str(marker), 0.5), {})
    queued = worker.send("sleep_marked", (str(behind), 0.0), {})
    with pytest.raises(ReplyTimeout):
        worker.receive(slow, timeout=0.05)
    # The worker serves one request at a time, in order: the one queued behind the running
    # one has provably not started.
    assert marker.exists() and not behind.exists()
    assert worker.pending == 2
    assert worker.receive(queued, timeout=10) == worker.pid  # drops the slow one's reply
    assert behind.exists() and worker.pending == 0
    assert worker.call("echo", ("in step",), {}) == "in step"


def test_method_errors_come_back_through_receive(worker) -> None:  # type: ignore[no-untyped-def]
    rid = worker.send("fail", ("pipelined",), {})
    ok = worker.send("echo", (7,), {})
    with pytest.raises(ValueError, match="pipelined"):
        worker.receive(rid)
    assert worker.receive(ok) == 7
