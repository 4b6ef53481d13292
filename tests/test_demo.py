"""``pooly demo`` end to end (its executor section included), run as a user runs it: in its
own process.

A worker that outlived the demo would be re-parented away from pytest, out of reach of the
conftest fixture that checks descendants; so the demo runs with a marker in its environment
(inherited by the forkserver and every worker) and the test looks for any process carrying it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from pooly.cli.main import main
from tests.conftest import left_with_env

MARKER = "POOLY_DEMO_TEST_MARKER"


def _run(*args: str, timeout: float = 50.0) -> tuple[subprocess.CompletedProcess[str], str]:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker}
    proc = subprocess.run(
        [sys.executable, "-m", "pooly", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc, marker


def _number(label: str, out: str) -> int:
    m = re.search(rf"^\s*{re.escape(label)}\s+([\d,]+)", out, re.MULTILINE)
    assert m, f"no {label!r} line in the tally:\n{out}"
    return int(m.group(1).replace(",", ""))


@pytest.mark.timeout(60)
def test_demo_short_run_loses_no_call_and_leaves_no_process() -> None:
    proc, marker = _run("demo", "--duration", "3", "--fault-interval", "0.5", "--seed", "7")
    out = proc.stdout
    report = f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    made = _number("calls made", out)
    ok = _number("succeeded, result checked", out)
    crashed = _number("failed with WorkerCrashed", out)
    assert _number("lost", out) == 0, report
    assert made > 0 and ok > 0, report
    assert made == ok + crashed, report  # the tally adds up
    assert _number("faults injected", out) > 0, report
    assert _number("worker processes left after stop", out) == 0, report
    # The executor section (issue 8): a busy worker SIGKILLed under pooly's executor fails
    # the one task it ran, the rest are checked results, the pool serves on; the stdlib's
    # executor breaks (every pending future, and the next submit).
    tasks = _number("executor tasks (1 worker killed)", out)
    ours, theirs = out.split("executor tasks (1 worker killed)")[1].split("stdlib:")
    ok, crashed = (
        _number("pooly: succeeded, checked", ours),
        _number("failed with WorkerCrashed", ours),
    )
    assert tasks == 40 and ok + crashed == tasks and crashed <= 1 and ok >= tasks - 1, report
    assert _number("lost", ours) == 0, report
    assert re.search(r"one more submit\s+served", ours), report
    assert _number("failed with BrokenProcessPool", "stdlib:" + theirs) > 0, report
    assert "raised BrokenProcessPool" in theirs, report
    assert "OK:" in out, report
    left = left_with_env(MARKER, marker)
    assert not left, f"processes left behind by the demo: {left}\n{report}"


@pytest.mark.timeout(60)
def test_help_lists_the_demo_and_its_options() -> None:
    proc, _ = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout
    proc, _ = _run("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--duration", "--consumers", "--fault-interval", "--size", "--seed"):
        assert option in proc.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args", [["--duration", "0"], ["--consumers", "0"], ["--fault-interval", "-1"], ["--size", "x"]]
)
def test_demo_rejects_bad_options(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args])
    assert exc.value.code == 2


@pytest.mark.timeout(60)
def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
