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
        # Issue 8: the executor.
        "pooly executor: submit(echo, msg).result()",
        "stdlib executor round trip (3) / pooly executor's",
        "pooly map(chunksize=1)",
        "multiprocessing.Pool imap(chunksize=1), fork",
        "pooly map / stdlib executor map",
        "pooly map / multiprocessing.Pool imap",
        "pooly map(chunksize=100)",
        "pooly map / multiprocessing.Pool map",
        "CPU-bound",
        "pooly: workers busy in tasks, less host CPU",
        "hung task in C, call_timeout=1s: CallTimeout after",
        "then the executor's pool back at full size after",
        # Issue 9: asyncio.
        "await lease.echo(msg), AsyncLease (pinned)",
        "async call / thread call (2)",
        "await loop.run_in_executor(stdlib ex, echo, msg)",
        "run_in_executor / await lease.echo",
        "tasks wait on 2 workers: out of order",
        "10 ms ticker: worst stall",
        "per waiting task: memory",
        "cancels racing checkins: workers lost",
        # Issue 10, part 5: healing, idle and under the demo's load, every path.
        "15 idle: spares=1",
        "idle: pool's fork server, no spare",
        "idle: old path: mp forkserver",
        "under the demo's load: spares=1",
        "under the demo's load: pool's fork server, no spare",
        "under the demo's load: old path: mp forkserver",
        "the demo's load meanwhile",
    ):
        assert row in out, out
    # Every judged row ends with its judgement.
    judged = [line for line in out.splitlines() if ">= " in line or "<= " in line]
    assert len(judged) == 20, out
    assert all(line.endswith(("PASS", "PASS (aim met)", "FAIL")) for line in judged), out

    figures = json.loads(out_json.read_text())
    assert set(figures["targets"]) == {
        "call_over_pipe",
        "ppe_over_call",
        "checkout_checkin",
        "kill_to_answer",
        "hung_fail",
        "hung_back",
        "ex_submit",
        "ex_map_over_stdlib",
        "ex_map_over_imap",
        "ex_chunked_over_map",
        "ex_cpu_speedup",
        "ex_hung_fail",
        "ex_hung_back",
        "aio_over_call",
        "aio_ppe",
        "aio_fifo",
        "aio_stall",
        "aio_lost",
        "heal_idle",
        "heal_load",
    }
    counts = {"aio_fifo", "aio_lost"}  # (0 is the bar)
    for key, t in figures["targets"].items():
        assert t["result"] in ("PASS", "PASS (aim met)", "FAIL"), t
        assert isinstance(t["value"], float), t
        assert t["value"] >= 0 if key in counts else t["value"] > 0, t
    ex = figures["executor"]
    assert ex["workers"] == 2 and ex["start_method"] in ("forkserver", "fork", "spawn")
    for name in ("pooly", "stdlib", "mp_imap"):
        assert ex["trivial"][name]["median"] > 0, ex
    for name in ("pooly", "mp_map", "stdlib"):
        assert ex["chunked"][name]["median"] > 0, ex
    assert ex["cpu"]["speedup"] > 0 and ex["cpu"]["task_ms"] > 0, ex
    # The hung task failed with CallTimeout (how fast is the benchmark's business).
    assert ex["hung"]["errors"] == [], ex["hung"]
    # asyncio: every waiter was served (or the script fails), the memory figure is there.
    aio = figures["aio"]
    assert aio["waiters"]["bytes_per_waiter"] > 0, aio
    assert aio["cancel"]["cancelled"] > 0, aio
    # Healing: every path timed in both phases; the demo's load ran and lost no call.
    heal = figures["heal_ms"]
    for phase in ("idle", "load"):
        for path in ("spares", "template", "old"):
            assert heal[phase][path]["n"] > 0 and heal[phase][path]["median"] > 0, heal
    assert heal["load_info"]["calls_per_s"] > 0 and heal["load_info"]["lost"] == 0, heal
    assert heal["log_errors"] == [] and heal["load_info"]["anomalies"] == [], heal

    # The fork server and resource tracker end when the script does; give them a moment.
    left = left_with_env("POOLY_BENCH_SMOKE", token)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"the benchmark left processes behind: {left}"


@pytest.mark.timeout(180)
def test_bench_stats_quick_runs_and_prints_its_table() -> None:
    """bench/bench_stats.py --quick: the three contenders (the code before stats, read from
    git; stats; stats and a subscriber) each run in a process of their own, and the table
    has its three rows, the judged ones ending in a verdict (timings not asserted: exit 0 or
    1). Skipped where git cannot give the baseline (a shallow clone)."""
    script = BENCH.parent / "bench_stats.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    if proc.returncode == 2 and "cannot read the baseline" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode in (0, 1), f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for row, end in (
        ("call round trip (us)", ("PASS", "FAIL")),
        ("checkout+checkin, size 2 (us)", ("PASS", "FAIL")),
        ("checkout+checkin, size 1 (us)", ("(info: 2 changes/op)",)),
    ):
        line = next((x for x in lines if x.startswith(row)), "")
        assert line.endswith(end), proc.stdout
        figures = [float(v) for v in line[len(row) :].split()[:5]]
        assert all(v > 0 for v in figures), line
    assert "dropped 0" in proc.stdout, proc.stdout
