"""Smoke test of the benchmark script: it runs, prints its table, writes its JSON, cleans up.

Timings are deliberately not asserted: speed is the benchmark's business (``make bench``),
and a shared CI machine would make such a test flaky.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import left_with_env

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"


@pytest.mark.timeout(120)
def test_bench_quick_runs_and_prints_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    # Every process the benchmark starts inherits this variable, even once re-parented to
    # init: that is how the test finds any it left behind.
    token = uuid.uuid4().hex
    env = {**os.environ, "POOLY_BENCH_SMOKE": token}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert "Pooly benchmark" in out
    header = next((line for line in out.splitlines() if line.startswith("metric")), "")
    for column in ("median", "ratio", "target", "result"):
        assert column in header, out
    for row in (
        "raw os.pipe round trip",
        "pooly call",
        "ProcessPoolExecutor",
        "checkout()+checkin()",
        "SIGKILL -> replacement answers",
        "hung call in C, call_timeout=1s: CallTimeout after",
    ):
        assert row in out, out

    figures = json.loads(out_json.read_text())
    assert set(figures["targets"]) == {
        "call_over_pipe",
        "ppe_over_call",
        "checkout_checkin",
        "kill_to_answer",
        "hung_fail",
        "hung_back",
    }
    assert all(
        t["result"] in ("PASS", "PASS (aim met)", "FAIL") for t in figures["targets"].values()
    )

    # The fork server and resource tracker end when the script does; give them a moment.
    left = left_with_env("POOLY_BENCH_SMOKE", token)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"the benchmark left processes behind: {left}"
