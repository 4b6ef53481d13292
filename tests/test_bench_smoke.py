"""Smoke test of the benchmark script: it runs, prints its table, writes its JSON, cleans up.

Timings are deliberately not asserted: speed is the benchmark's business (``make bench``),
and a shared CI machine would make such a test flaky.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"


def _tagged(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``token`` (the bench run and its children)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.environ().get("POOLY_BENCH_SMOKE") == token
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


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
    ):
        assert row in out, out

    figures = json.loads(out_json.read_text())
    assert set(figures["targets"]) == {
        "call_over_pipe",
        "ppe_over_call",
        "checkout_checkin",
        "kill_to_answer",
    }
    assert all(
        t["result"] in ("PASS", "PASS (aim met)", "FAIL") for t in figures["targets"].values()
    )

    # The fork server and resource tracker end when the script does; give them a moment.
    deadline = time.monotonic() + 10
    while (left := _tagged(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in left:
        p.kill()
    assert not left, f"the benchmark left processes behind: {[p.cmdline() for p in left]}"
