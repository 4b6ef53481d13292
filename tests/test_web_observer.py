"""Issue 11, part 5 (SPEC 4.5): ``pooly observe --http``, the web page that draws a running
program's tree like Erlang's observer, over real processes: the server only ever binds a
loopback address; ``/snapshot.json`` passes the endpoint's snapshot on unchanged and turns
into a 503 saying so once the program is gone, while the server keeps running; no route
changes anything; and the page, run in headless Chromium, draws a node per pool and per
worker, the crash log and a sparkline (its DOM after the scripts ran) and the nodes in
their state's colours (pixels of a screenshot, decoded here with zlib and struct).

Chromium only ever talks to 127.0.0.1: no proxy, every host name resolves to nothing, no
background networking; it runs in its own process group, killed with everything in it.
Even so it opens a UDP socket to a public IPv6 address (its reachability probe), so it
and the server it loads the page from run in a network namespace of their own that has
nothing but loopback (``netns``); where none can be made, the Chromium test is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html.parser
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

import pooly.observe
from pooly.cli.web import COLORS, WORKER_SIZE, LoopbackOnly, parse_http
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _env(**extra: str) -> dict[str, str]:
    """Our environment with the repository root importable (tests.workers) by the observed
    program and its fork server."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private runtime directory of the test's own (XDG_RUNTIME_DIR), removed after."""
    d = tempfile.mkdtemp(prefix="po-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _readline(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """A line of ``proc``'s stdout, waiting at most ``timeout`` seconds for it."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from {proc.args} in {timeout}s"
    return proc.stdout.readline()


def _end(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int | None:
    """Stop ``proc`` with ``sig`` (killed if it takes over 20 s); its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return proc.returncode


@pytest.fixture
def program(rundir: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """tests/observed_program.py running (its process, its pool's name: 2 workers, one
    busy); ended after the test by closing its stdin (killed if it does not end)."""
    name = f"web{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "observed_program.py"), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        line = _readline(proc)
        assert line.startswith("ready "), line
        yield proc, name
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
            proc.stdin = None
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _end(proc)


@contextlib.contextmanager
def _serve(pid: int, enter: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``pooly observe PID --http 127.0.0.1:0`` serving program ``pid``, run by the command
    prefix ``enter`` (none: here); yields the server's process and the URL it printed, and
    stops it with SIGTERM after."""
    proc = subprocess.Popen(
        [*enter, sys.executable, "-m", "pooly", "observe", str(pid), "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = _readline(proc)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        yield proc, m.group(0)
    finally:
        _end(proc)


@pytest.fixture
def web(program: tuple[subprocess.Popen[str], str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The program served on our own loopback (the server's process, its URL)."""
    with _serve(program[0].pid) as served:
        yield served


# ---------------------------------------------------------------------- a loopback-only network


def _tool(name: str) -> str | None:
    """Where program ``name`` is (ip lives in /usr/sbin, often not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


# Ways to make a network namespace (unshare's options) and to join it (nsenter's), tried in
# this order: as root, directly; otherwise inside a user namespace of our own, where we are
# root, if the kernel lets unprivileged users make one.
_Way = tuple[tuple[str, ...], tuple[str, ...]]
_NETNS_WAYS: tuple[_Way, ...] = (
    (("--net",), ("--net",)),
    (("--user", "--map-root-user", "--net"), ("--user", "--net", "--preserve-credentials")),
)


@dataclasses.dataclass(frozen=True)
class Netns:
    """A network namespace with only the loopback interface (up), kept by a holder process."""

    holder: int
    ns: str  # its /proc/PID/ns/net link, "net:[inode]"
    enter: tuple[str, ...]  # a command prefix that runs a program in it (nsenter execs it)


def _netns_of(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.fixture(scope="session")
def netns_way() -> _Way | str:
    """How to make a network namespace here (unshare's and nsenter's options), found once
    per session by trying each way for real; or, if none works, why (a skip reason)."""
    tools = {name: _tool(name) for name in ("unshare", "nsenter", "ip")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        return f"cannot make a network namespace: {', '.join(missing)} not installed"
    unshare, ip = str(tools["unshare"]), str(tools["ip"])
    failed = []
    for make, join in _NETNS_WAYS:
        out = subprocess.run(
            [unshare, *make, "--", ip, "link", "set", "lo", "up"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0:
            return make, join
        why = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        failed.append(f"unshare {' '.join(make)}: {why[0]}")
    return "no network namespace can be made here (" + "; ".join(failed) + ")"


@pytest.fixture
def netns(netns_way: _Way | str) -> Iterator[Netns]:
    """A fresh network namespace whose only interface up is loopback (checked by the holder
    inside it); skipped if the machine cannot make one. After the test every process in it
    is killed, and then its holder, which ends it."""
    if isinstance(netns_way, str):
        pytest.skip(netns_way)
    make, join = netns_way
    # The holder brings lo up, lists the links (JSON, one line) and sleeps: once it printed
    # them, the namespace is made and configured, and nsenter can join it by the holder's pid.
    holder = subprocess.Popen(
        [
            str(_tool("unshare")),
            *make,
            "--",
            "sh",
            "-c",
            '"$0" link set lo up && "$0" -json link && exec sleep infinity',
            str(_tool("ip")),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ns = None
    try:
        line = _readline(holder)
        assert line, f"the namespace's holder ended with status {holder.wait(10)}"
        # lo up, and nothing else up: a kernel with the sit/ipip/gre modules loaded puts
        # their fallback tunnels (down, with no address) in every new namespace.
        up = [link["ifname"] for link in json.loads(line) if "UP" in link["flags"]]
        assert up == ["lo"], line
        ns = _netns_of(holder.pid)
        assert ns != _netns_of("self"), ns
        nsenter = str(_tool("nsenter"))
        yield Netns(holder.pid, ns, (nsenter, "--target", str(holder.pid), *join, "--"))
    finally:
        # Whatever is still in the namespace (while the holder keeps its inode from being
        # reused), then the holder, which ends it.
        for p in psutil.process_iter() if ns else ():
            try:
                if p.pid != holder.pid and _netns_of(p.pid) == ns:
                    p.kill()
            except (OSError, psutil.Error):
                continue
        _end(holder, signal.SIGKILL)


@pytest.fixture
def web_in_netns(
    program: tuple[subprocess.Popen[str], str], netns: Netns
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The program served on the loopback of ``netns`` (the server's process, its URL): the
    observer endpoint is a Unix socket in the file system, reached from any namespace."""
    with _serve(program[0].pid, netns.enter) as served:
        yield served


# Never a proxy, whatever the environment says: every request here goes to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return e.code, dict(e.headers), body


# ---------------------------------------------------------------------- loopback only


def test_non_loopback_host_refused() -> None:
    """`--http` with a host that is not a loopback address (the wildcard, a LAN address,
    a host name, IPv6's wildcard) is refused before anything listens: exit status 2 and a
    message saying why and what to use; loopback forms are accepted (127.0.0.1 when the
    host is left out, localhost, any 127/8, ::1)."""
    for bad in ("0.0.0.0:8080", "192.168.1.10:0", "example.com:80", "[::]:0"):
        out = subprocess.run(
            [sys.executable, "-m", "pooly", "observe", "--http", bad],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
        assert out.returncode == 2, (bad, out.stderr)
        assert "loopback" in out.stderr and "127.0.0.1" in out.stderr, out.stderr
        assert "http://" not in out.stdout
        with pytest.raises(LoopbackOnly):
            parse_http(bad)
    assert parse_http("8080") == parse_http(":8080") == ("127.0.0.1", 8080)
    assert parse_http("localhost:0") == ("127.0.0.1", 0)
    assert parse_http("127.0.0.2:5") == ("127.0.0.2", 5)
    assert parse_http("[::1]:0") == ("::1", 0)
    for malformed in ("127.0.0.1:99999", "127.0.0.1:x", "::1:80"):
        with pytest.raises(ValueError):
            parse_http(malformed)


# ---------------------------------------------------------------------- the routes


def test_routes_read_only_and_gone(
    program: tuple[subprocess.Popen[str], str], web: tuple[subprocess.Popen[str], str]
) -> None:
    """`/snapshot.json` is the endpoint's snapshot (same program, pools, workers, status);
    `/events.json` its events; `/` the page, inline only (no external resource, a CSP
    that allows none); any other path 404, other methods refused, a foreign Host header
    403; the pool unchanged by all of it. Once the program ends, the JSON routes answer
    503 saying it is gone, the page is still served, and SIGTERM ends the server with
    status 0."""
    proc, name = program
    server, url = web
    direct = pooly.observe.snapshot(proc.pid)
    status, headers, body = _get(url + "snapshot.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["pid"] == direct["pid"] == proc.pid
    assert [p["name"] for p in doc["pools"]] == [p["name"] for p in direct["pools"]] == [name]
    for got, want in zip(doc["pools"], direct["pools"], strict=True):
        assert got["status"] == want["status"]
        assert got["options"] == want["options"]
        assert [(w["pid"], w["state"]) for w in got["workers"]] == [
            (w["pid"], w["state"]) for w in want["workers"]
        ]
        assert got["stats"]["calls"] == want["stats"]["calls"]
    assert doc["events"][: len(direct["events"])] == direct["events"]

    status, _, body = _get(url + "events.json")
    events = json.loads(body)["events"]
    assert status == 200 and {"WorkerStarted"} <= {e["type"] for e in events}

    status, headers, body = _get(url)
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert re.findall(r"https?://[^\s\"'<]+", page) == ["http://www.w3.org/2000/svg"] * 2

    assert _get(url + "nope")[0] == 404
    assert _get(url + "snapshot.json/x")[0] == 404
    assert _get(url + "snapshot.json", Host="evil.example:80")[0] == 403
    req = urllib.request.Request(url + "snapshot.json", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        _OPENER.open(req, timeout=10)
    assert err.value.code == 501
    err.value.close()
    after = pooly.observe.snapshot(proc.pid)["pools"][0]
    assert after["status"] == direct["pools"][0]["status"]

    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdin = None
    proc.wait(timeout=20)
    status, _, body = _get(url + "snapshot.json")
    assert status == 503
    assert f"program {proc.pid} is gone" in json.loads(body)["error"]
    assert _get(url + "events.json")[0] == 503
    assert _get(url)[0] == 200
    assert server.poll() is None  # still serving
    assert _end(server) == 0


# ---------------------------------------------------------------------- in Chromium


class _Dom(html.parser.HTMLParser):
    """The start tags of a dumped DOM (tag, attributes), and each crash row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.crashes: list[tuple[dict[str, str], list[str]]] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "tr" and a.get("class") == "crash":
            self._row = []
            self.crashes.append((a, self._row))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self._row.append(data.strip())

    def find(self, tag: str, **want: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in want.items())
        ]


def _chromium(tmp: str, netns: Netns, *args: str, timeout: float = 60.0) -> str:
    """Run headless Chromium on 127.0.0.1 only, in network namespace ``netns`` (checked: a
    shell records the namespace it is in, then execs Chromium) and its own process group,
    with a profile, home and caches in ``tmp``; its stdout. Whatever it started is killed
    after."""
    profile = os.path.join(tmp, "profile")
    ran_in = os.path.join(tmp, "netns")
    cmd = [
        *netns.enter,
        "sh",
        "-c",
        'readlink /proc/self/ns/net >"$0" && exec "$@"',
        ran_in,
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # (no name resolves)
        "--force-color-profile=srgb",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        *args,
    ]
    env = _env(HOME=tmp, XDG_CONFIG_HOME=tmp, XDG_CACHE_HOME=tmp)
    out_path = os.path.join(tmp, "stdout")
    with open(out_path, "wb") as out, open(os.path.join(tmp, "stderr"), "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        assert rc == 0, Path(tmp, "stderr").read_text(errors="replace")[-2000:]
        assert Path(ran_in).read_text().strip() == netns.ns, "Chromium ran outside netns"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        # (anything of it that left the group: found by its profile directory)
        for p in psutil.process_iter():
            try:
                if any(profile in a for a in p.cmdline()):
                    p.kill()
            except psutil.Error:
                continue
    return Path(out_path).read_text(errors="replace")


def _png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG: (width, height, bytes per pixel,
    the unfiltered rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = depth = ctype = interlace = -1
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind_ = raw[start]
        cur = bytearray(raw[start + 1 : start + 1 + stride])
        if kind_ == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif kind_ == 2:
            cur = bytearray((a + b) & 0xFF for a, b in zip(cur, prev, strict=True))
        elif kind_ == 3:
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind_ == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (cur[i] + pred) & 0xFF
        else:
            assert kind_ == 0, f"unknown PNG filter {kind_}"
        rows.append(bytes(cur))
        prev = cur
    return width, height, bpp, rows


def _color_counts(png: bytes) -> dict[tuple[int, int, int], int]:
    """How many pixels of the screenshot have each (opaque) colour."""
    _, _, bpp, rows = _png_rows(png)
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for i in range(0, len(row), bpp):
            rgb = (row[i], row[i + 1], row[i + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
    return counts


def _rgb(hex_color: str) -> tuple[int, int, int]:
    v = int(hex_color.lstrip("#"), 16)
    return (v >> 16, (v >> 8) & 0xFF, v & 0xFF)


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is not installed (make test installs it: apt-get install chromium)",
)
@pytest.mark.timeout(180)
def test_page_draws_the_tree_in_chromium(
    netns: Netns,
    program: tuple[subprocess.Popen[str], str],
    web_in_netns: tuple[subprocess.Popen[str], str],
) -> None:
    """After one of its workers is SIGKILLed and replaced, the page in headless Chromium
    draws (its DOM once the scripts ran) the Pooly node, a node for the pool in its state
    and one per worker pid in that worker's state, the kill in the crash log (pid and
    SIGKILL), the pool's calls/s sparkline, and says it is live; and a 1200x800 screenshot
    shows the worker nodes: at least half a node's area of exactly the idle colour per
    idle worker, likewise the busy colour, and the pool's ready colour. Chromium and the
    server run in a loopback-only network namespace, not ours (checked for both)."""
    proc, name = program
    server, url = web_in_netns
    assert _netns_of(server.pid) == netns.ns != _netns_of("self")
    before = pooly.observe.snapshot(proc.pid)["pools"][0]
    victim = next(w["pid"] for w in before["workers"] if w["state"] == "idle")
    os.kill(victim, signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        p: dict[str, Any] = pooly.observe.snapshot(proc.pid)["pools"][0]
        pids = [w["pid"] for w in p["workers"]]
        return p if victim not in pids and len(pids) == 2 and p["status"]["idle"] == 1 else None

    assert wait_for(replaced, timeout=20, interval=0.05)
    pool = replaced()
    assert pool is not None
    workers = {w["pid"]: w["state"] for w in pool["workers"]}

    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        dom = _Dom()
        text = _chromium(tmp, netns, "--dump-dom", url)
        dom.feed(text)
        assert "pooly observe" in text, text
        assert dom.find("g", **{"class": "root", "data_pid": str(proc.pid)})
        assert dom.find("g", **{"class": "pool", "data_pool": name, "data_state": "ready"})
        drawn = {a["data-pid"]: a for a in dom.find("g", **{"class": "worker"})}
        assert set(drawn) == {str(p) for p in workers}, drawn
        for pid, state in workers.items():
            assert drawn[str(pid)]["data-state"] == state
            assert drawn[str(pid)]["data-pool"] == name
        rows = [(a, cells) for a, cells in dom.crashes if a.get("data-pid") == str(victim)]
        assert len(rows) == 1, dom.crashes
        assert rows[0][0]["data-pool"] == name and "SIGKILL" in rows[0][1]
        assert dom.find("svg", **{"class": "spark", "data_pool": name})
        assert dom.find("span", id="status", **{"class": "live"})

        shot = os.path.join(tmp, "shot.png")
        _chromium(tmp, netns, f"--screenshot={shot}", "--window-size=1200,800", url)
        png = Path(shot).read_bytes()
        if os.environ.get("POOLY_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["POOLY_KEEP_SCREENSHOT"])
    width, height, _, _ = _png_rows(png)
    assert (width, height) == (1200, 800)
    counts = _color_counts(png)
    area = WORKER_SIZE[0] * WORKER_SIZE[1]
    for state in ("idle", "busy"):
        n = sum(1 for s in workers.values() if s == state)
        got = counts.get(_rgb(COLORS["worker"][state]), 0)
        assert n >= 1 and got >= n * area // 2, (state, n, got)
    assert counts.get(_rgb(COLORS["pool"]["ready"]), 0) >= area // 2
