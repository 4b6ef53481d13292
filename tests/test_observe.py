"""Issue 11, parts 3 and 4 (SPEC 4.5): the observer endpoint of ``Pooly(observe=True)`` and
``pooly top``, over real processes: the socket's mode, place and name; a snapshot that
matches ``status()``, ``stats()`` and ``worker_pids()``; a SIGKILLed worker in the recent
events; nothing listening unless asked; an unknown request answered with an error and
changing nothing; the socket gone at stop; a client that connects and sends nothing never
blocking a pool or ``stop()``; and ``pooly top`` drawn in a real terminal (tmux).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pooly
import pooly.observe
from tests.conftest import in_forked_child, wait_for
from tests.workers import Counter

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private runtime directory of the test's own (XDG_RUNTIME_DIR), short enough for a
    socket path, removed after."""
    d = tempfile.mkdtemp(prefix="po-")  # (mode 0700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def raw_request(path: str, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    doc: dict[str, object] = json.loads(b"".join(chunks))
    return doc


def test_socket_mode_place_and_name(rundir: str) -> None:
    """The socket is in the runtime directory, named pooly-<pid>.sock, a socket of mode
    0600; find() with no pid finds it (the one program), and find(pid) too."""
    with pooly.Pooly(observe=True) as sup:
        path = sup.observe_path
        assert path == os.path.join(rundir, f"pooly-{os.getpid()}.sock")
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert pooly.observe.find() == path
        assert pooly.observe.find(os.getpid()) == path
    assert not os.path.lexists(path)


def test_fallback_runtime_dir_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a usable XDG_RUNTIME_DIR (unset, or open to others) the socket goes to
    /tmp/pooly-<uid>, a directory of mode 0700."""
    d = tempfile.mkdtemp(prefix="po-")
    try:
        os.chmod(d, 0o755)  # not private: not used
        monkeypatch.setenv("XDG_RUNTIME_DIR", d)
        with pooly.Pooly(observe=True) as sup:
            path = sup.observe_path
            assert path is not None
            parent = os.path.dirname(path)
            assert parent == f"/tmp/pooly-{os.getuid()}"
            assert stat.S_IMODE(os.lstat(parent).st_mode) == 0o700
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert not os.path.lexists(path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_snapshot_matches_the_pool(rundir: str) -> None:
    """The JSON snapshot lists the pools in start order with their status(), stats() (as
    plain numbers), options and workers -- the pids of worker_pids(), one busy with this
    thread's name as its holder, calls counted, RSS and age read."""
    with pooly.Pooly(observe=True) as sup:
        a = sup.start_pool("alpha", Counter, size=2, max_overflow=1, strategy="fifo")
        b = sup.start_pool("beta", Counter, size=1)
        with a.checkout() as w:
            w.incr()
            w.incr()
            doc = pooly.observe.snapshot(os.getpid())
            status, stats, pids, held = a.status(), a.stats(), a.worker_pids(), w.pid
        assert doc["protocol"] == 1 and doc["pid"] == os.getpid()
        assert [p["name"] for p in doc["pools"]] == ["alpha", "beta"]
        pa = doc["pools"][0]
        assert (
            pa["status"] == {k: getattr(status, k) for k in pa["status"]}
            and pa["status"]["busy"] == 1
        )
        assert set(pa["stats"]) >= {"checkouts", "calls", "crashes", "restarts_left"}
        for key in ("checkouts", "calls", "replacements", "restarts_left", "holds"):
            assert pa["stats"][key] == getattr(stats, key), key
        assert pa["stats"]["calls"] == 2
        assert pa["options"]["size"] == 2
        assert pa["options"]["max_overflow"] == 1
        assert pa["options"]["strategy"] == "fifo"
        assert pa["options"]["worker"] == "tests.workers.Counter"
        assert sorted(x["pid"] for x in pa["workers"]) == sorted(pids)
        by_pid = {x["pid"]: x for x in pa["workers"]}
        busy = by_pid[held]
        assert busy["state"] == "busy" and busy["leased"] is True
        assert busy["holder"] == "MainThread"
        assert busy["calls"] == 2
        for x in pa["workers"]:
            assert x["rss"] is not None and x["rss"] > 0
            assert 0 <= x["age"] < 60
        (idle,) = [x for x in pa["workers"] if x["pid"] != held]
        assert idle["state"] == "idle" and idle["holder"] is None
        assert [x["pid"] for x in doc["pools"][1]["workers"]] == b.worker_pids()
        json.dumps(doc, allow_nan=False)  # plain JSON, all of it


def test_sigkilled_worker_in_recent_events(rundir: str) -> None:
    """A worker SIGKILLed while leased shows in the recent events: its WorkerExited with
    exit code -9, not expected, the holder's name; then its replacement's WorkerStarted;
    and the crash is counted in the snapshot's stats (crashes keyed by "-9")."""
    with pooly.Pooly(observe=True) as sup:
        pool = sup.start_pool("p", Counter, size=1)
        w = pool.checkout()
        victim = w.pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(pooly.WorkerCrashed):
            w.sleep(5)
        pool.checkin(w)

        def exited() -> list[dict[str, object]]:
            return [
                e
                for e in pooly.observe.events()
                if e["type"] == "WorkerExited" and e["pid"] == victim
            ]

        assert wait_for(lambda: exited(), timeout=10)
        (ev,) = exited()
        assert ev["pool"] == "p" and ev["exitcode"] == -signal.SIGKILL
        assert ev["expected"] is False and ev["holder"] == "MainThread"
        assert wait_for(
            lambda: any(
                e["type"] == "WorkerStarted" and e["reason"] == "replacement"
                for e in pooly.observe.events()
            ),
            timeout=10,
        )
        doc = pooly.observe.snapshot()
        assert doc["pools"][0]["stats"]["crashes"] == {str(-signal.SIGKILL): 1}
        assert any(e["type"] == "WorkerExited" for e in doc["events"])


def test_nothing_listens_without_observe(rundir: str) -> None:
    """A Pooly made without observe opens no socket: the runtime directory stays empty,
    find() says how to enable it, and no thread named pooly-observe runs."""
    import threading

    with pooly.Pooly() as sup:
        sup.start_pool("p", Counter, size=1)
        assert sup.observe_path is None
        assert os.listdir(rundir) == []
        assert "pooly-observe" not in {t.name for t in threading.enumerate()}
        with pytest.raises(pooly.observe.NoEndpoint, match=r"Pooly\(observe=True\)"):
            pooly.observe.find(os.getpid())
        with pytest.raises(pooly.observe.NoEndpoint, match=r"observe=True"):
            pooly.observe.find()


def test_unknown_request_errors_and_changes_nothing(rundir: str) -> None:
    """Requests other than snapshot/events -- a would-be mutation, garbage, an overlong
    line -- get an error document, and the pool is as it was: same workers, status,
    counters."""
    with pooly.Pooly(observe=True) as sup:
        pool = sup.start_pool("p", Counter, size=2)
        path = sup.observe_path
        assert path is not None
        before = (pool.worker_pids(), pool.status(), pool.stats())
        for line in (b"stop_pool p\n", b"resize 0\n", b"\x00\xff\n", b"x" * 5000):
            doc = raw_request(path, line)
            assert "unknown request" in str(doc["error"]), doc
            assert "snapshot" in str(doc["error"])
        with pytest.raises(pooly.observe.NoEndpoint, match="unknown request 'kill'"):
            pooly.observe.request(path, "kill")
        assert (pool.worker_pids(), pool.status(), pool.stats()) == before
        assert pooly.observe.snapshot(path)["pools"][0]["status"]["idle"] == 2


def test_socket_removed_at_stop(rundir: str) -> None:
    """stop() removes the socket file; a client then hears that nothing listens."""
    sup = pooly.Pooly(observe=True)
    sup.start_pool("p", Counter, size=1)
    path = sup.observe_path
    assert path is not None and os.path.exists(path)
    sup.stop()
    assert not os.path.lexists(path)
    assert os.listdir(rundir) == []
    with pytest.raises(pooly.observe.NoEndpoint):
        pooly.observe.snapshot(path)


def test_silent_client_blocks_nothing(rundir: str) -> None:
    """Clients that connect and send nothing (or half a line, or never read) block neither
    the pool, nor other clients, nor stop(): calls go on, a snapshot is answered at once,
    stop() returns promptly and the socket goes."""
    sup = pooly.Pooly(observe=True)
    try:
        pool = sup.start_pool("p", Counter, size=1)
        path = sup.observe_path
        assert path is not None
        silent = []
        for data in (b"", b"snap", b"snapshot\n"):  # the last never reads its answer
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            if data:
                s.sendall(data)
            silent.append(s)
        t0 = time.monotonic()
        with pool.checkout(timeout=5) as w:
            assert w.incr() == 1
        doc = pooly.observe.snapshot(path)
        assert doc["pools"][0]["name"] == "p"
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        sup.stop()
        assert time.monotonic() - t0 < 5
        assert not os.path.lexists(path)
    finally:
        sup.stop()
        for s in silent:
            s.close()


def test_socket_is_reused_after_a_stale_one(rundir: str) -> None:
    """A socket file left by a program that died (nothing listens) is replaced; one a live
    Pooly listens on is not: a second observed Pooly of the process gets its own name."""
    stale = os.path.join(rundir, f"pooly-{os.getpid()}.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # bound, never listened: what a killed program leaves
    with pooly.Pooly(observe=True) as one, pooly.Pooly(observe=True) as two:
        assert one.observe_path == stale
        assert two.observe_path == os.path.join(rundir, f"pooly-{os.getpid()}-1.sock")
        assert pooly.observe.snapshot(two.observe_path)["pools"] == []
        assert pooly.observe.find() == stale  # (one program: its first endpoint)


def test_observe_path_given(rundir: str) -> None:
    """observe=<path> puts the socket there (os.PathLike too), mode 0600."""
    path = Path(rundir) / "mine.sock"
    with pooly.Pooly(observe=path) as sup:
        sup.start_pool("p", Counter, size=1)
        assert sup.observe_path == str(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert pooly.observe.snapshot(path)["pools"][0]["name"] == "p"
    assert not path.exists()


def test_bad_observe_values(rundir: str) -> None:
    """observe= of a wrong type, a path whose directory does not exist, a path too long
    for a Unix socket, or a file that is not a socket: clear errors naming what was wrong,
    before any pool starts."""
    with pytest.raises(TypeError, match=r"observe must be True, False or a socket path.*int"):
        pooly.Pooly(observe=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="observe"):
        pooly.Pooly(observe=["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"directory /nonexistent-po does not exist"):
        pooly.Pooly(observe="/nonexistent-po/x.sock")
    with pytest.raises(ValueError, match="at most 107 bytes"):
        pooly.Pooly(observe=os.path.join(rundir, "x" * 120))
    plain = os.path.join(rundir, "file")
    Path(plain).write_text("")
    with pytest.raises(ValueError, match="exists and is not a socket"):
        pooly.Pooly(observe=plain)
    with pytest.raises(TypeError, match="pid must be a positive int"):
        pooly.observe.find("12")  # type: ignore[arg-type]


def test_forked_child_keeps_no_socket(rundir: str) -> None:
    """A child forked from an observed host holds no copy of the listening socket (it is
    among the host fds closed at fork), and its exit leaves the parent's socket in place."""
    with pooly.Pooly(observe=True) as sup:
        path = sup.observe_path
        assert path is not None and sup._observer is not None
        ino = os.stat(path).st_ino
        listening = os.readlink(f"/proc/self/fd/{sup._observer._sock.fileno()}")
        assert listening.startswith("socket:")

        def child() -> object:
            links = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{fd}"))
                except OSError:
                    pass
            return links

        links = in_forked_child(child)
        assert isinstance(links, list) and listening not in links
        assert os.stat(path).st_ino == ino
        assert pooly.observe.snapshot(path)["pid"] == os.getpid()


# ---------------------------------------------------------------------- a program's exit


def test_socket_removed_at_exit(rundir: str) -> None:
    """A program that exits without stop() leaves no socket behind (the exit hook)."""
    code = (
        "import os, pooly\n"
        "if __name__ == '__main__':\n"
        "    sup = pooly.Pooly(observe=True)\n"
        "    print(sup.observe_path, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    path = out.stdout.strip()
    assert path.startswith(rundir)
    assert not os.path.lexists(path)


# ---------------------------------------------------------------------- pooly top

TMUX = shutil.which("tmux")


def _env() -> dict[str, str]:
    """Our environment, with the repository root importable (tests.workers) by the
    observed program and its fork server."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def program(rundir: str) -> Iterator[tuple[int, str]]:
    """tests/observed_program.py running (pid, its pool's name); ended after the test by
    closing its stdin (killed if it does not end)."""
    name = f"top{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "observed_program.py"), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # (the test's timeout bounds it)
        assert line.startswith("ready "), line
        assert line.split()[1].startswith(rundir)
        yield proc.pid, name
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _pooly(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooly", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
    )


def test_top_once_prints_the_tree(program: tuple[int, str]) -> None:
    """`pooly top --once PID` prints one frame: the pool's name and state, each worker's
    pid, the busy one's holder, the start events; with exactly one program running, no
    PID is needed."""
    pytest.importorskip("rich", reason="pooly top needs rich (pip install 'pooly[cli]')")
    pid, name = program
    pids = [w["pid"] for w in pooly.observe.snapshot(pid)["pools"][0]["workers"]]
    for args in (("top", "--once", str(pid)), ("top", "--once")):
        out = _pooly(*args)
        assert out.returncode == 0, out.stderr
        assert name in out.stdout and "ready" in out.stdout
        for w in pids:
            assert str(w) in out.stdout
        assert "MainThread" in out.stdout
        assert "WorkerStarted" in out.stdout


def test_top_of_a_pid_without_endpoint(rundir: str) -> None:
    """`pooly top PID` for a process with no endpoint (this one, which observes nothing)
    exits nonzero with a message saying how to enable it."""
    pytest.importorskip("rich", reason="pooly top needs rich (pip install 'pooly[cli]')")
    out = _pooly("top", "--once", str(os.getpid()))
    assert out.returncode == 1
    assert f"process {os.getpid()} has no observer endpoint" in out.stderr
    assert "Pooly(observe=True)" in out.stderr
    out = _pooly("top", "--once")  # none running at all
    assert out.returncode == 1 and "Pooly(observe=True)" in out.stderr


@pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed (make test installs it: apt-get install tmux)"
)
@pytest.mark.timeout(90)
def test_top_live_in_a_terminal(program: tuple[int, str]) -> None:
    """`pooly top PID` in a real terminal (a detached tmux session, 120x40): the pool's
    name and every worker's pid appear; `q` quits it with status 0; the terminal is
    restored after -- echo and canonical mode back on, the alternate screen left -- and
    the observed program's pool is as it was."""
    pytest.importorskip("rich", reason="pooly top needs rich (pip install 'pooly[cli]')")
    assert TMUX is not None
    pid, name = program
    before = pooly.observe.snapshot(pid)["pools"][0]
    pids = [w["pid"] for w in before["workers"]]
    server = f"pooly-test-{os.getpid()}"
    tmux = [TMUX, "-L", server, "-f", "/dev/null"]
    script = (
        f"{shlex.join([sys.executable, '-m', 'pooly', 'top', str(pid)])}; "
        "echo EXIT=$?; stty -a | tr '; ' '\\n\\n' "
        "| grep -x -- '-\\?\\(echo\\|icanon\\)' | tr '\\n' ' '; echo; echo DONE; sleep 60"
    )

    def screen() -> str:
        out = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "top"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    try:
        subprocess.run(
            [*tmux, "new-session", "-d", "-s", "top", "-x", "120", "-y", "40", "sh", "-c", script],
            check=True,
            timeout=10,
            env=_env(),
        )
        assert wait_for(
            lambda: name in (s := screen()) and all(str(p) in s for p in pids), timeout=30
        ), screen()
        shown = screen()
        assert "pooly top" in shown and "MainThread" in shown
        alt = subprocess.run(
            [*tmux, "display-message", "-p", "-t", "top", "#{alternate_on}"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        assert alt == "1"  # drawn on the alternate screen
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, timeout=10)
        assert wait_for(lambda: "DONE" in screen(), timeout=20), screen()
        after = screen()
        assert "EXIT=0" in after, after
        modes = after.split("EXIT=0", 1)[1].split("DONE", 1)[0].split()
        assert sorted(modes) == ["echo", "icanon"], after  # not -echo, -icanon: restored
        alt = subprocess.run(
            [*tmux, "display-message", "-p", "-t", "top", "#{alternate_on}"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        assert alt == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
    now = pooly.observe.snapshot(pid)["pools"][0]
    assert [w["pid"] for w in now["workers"]] == pids
    assert now["status"] == before["status"]
