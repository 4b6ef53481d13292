"""``pooly soak`` (issue 10's recycling bar), a short run end to end: three pools recycling
on ``max_calls``, ``max_age`` and ``max_memory`` (a worker leaking 5 MiB a call) under
load from threads, submit/map and asyncio tasks. No call fails, every pool recycles and
none crashes, the leaking workers' memory stays within the soak's bound, and nothing is
left running. ``make soak-recycle`` runs it for 2 minutes.

It runs as a user runs it, in its own process, with a marker in its environment
(inherited by every worker) so the test can find any process it left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pooly.cli.main import build_parser
from tests.conftest import left_with_env

MARKER = "POOLY_SOAK_TEST_MARKER"
MiB = 1 << 20


@pytest.mark.timeout(40)
def test_short_recycling_soak_fails_no_call_and_bounds_every_worker(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    figures = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pooly", "soak", "--duration", "10", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=35,
        env={**os.environ, MARKER: marker},
    )
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr}"
    assert left_with_env(MARKER, marker) == [], report
    data = json.loads(figures.read_text())
    assert data["failures"] == {} and data["wrong"] == 0, report
    status = {s["name"]: s for s in data["final_status"]}
    assert set(status) == {"calls", "age", "memory"}, report
    for name, s in status.items():
        assert s["recycled"] > 0 and s["crashed"] == 0, f"{name}\n{report}"
        assert data["calls"][name] > 0 and data["tasks"][name] > 0, f"{name}\n{report}"
        assert data["async_ops"][name] > 0, f"{name}\n{report}"
    # The load made bursts: an overflow worker was seen in each pool.
    assert all(n >= 1 for n in data["overflow_seen"].values()), report
    peak = max(data["max_rss"]["memory"], data["max_rss_reported"])
    assert data["max_memory"] < peak, report  # the leak did reach the limit
    assert data["rss_bound"] <= data["max_memory"] + 4 * 5 * MiB + 4 * MiB, report
    for name in ("calls", "age"):
        assert 0 < data["max_rss"][name] <= data["base_rss"] + 16 * MiB, f"{name}\n{report}"
    assert 1.5 <= data["max_age_seen"]["age"] <= 3.2, report  # aged, not churned
    assert data["settled"] and data["stragglers"] == [], report
    assert data["workers_alive_after"] == [], report
    assert data["leaked"]["processes"] == 0 and data["leaked"]["zombies"] == 0, report
    # The leaking workers' memory within the soak's bound: max_memory plus the calls of the
    # lease that crossed it (a worker past max_memory stops at once; see pooly.cli.soak).
    assert peak <= data["rss_bound"], report
    assert proc.returncode == 0 and "PASS" in proc.stdout, report


@pytest.mark.timeout(10)
def test_soak_options() -> None:
    args = build_parser().parse_args(["soak"])
    assert (args.duration, args.leak_mb, args.rss_allowance) == (120.0, 5, 4)
    args = build_parser().parse_args(["soak", "--duration", "3", "--overflow-ttl", "0"])
    assert (args.duration, args.overflow_ttl) == (3.0, 0.0)
    for bad in (["--duration", "0"], ["--overflow-ttl", "-1"], ["--consumers", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["soak", *bad])
