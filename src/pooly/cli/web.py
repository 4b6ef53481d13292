"""``pooly observe [PID|PATH] --http [HOST:]PORT``: a web page drawing a running program's
tree live, like Erlang's observer, read from its observer endpoint (``Pooly(observe=True)``;
see :mod:`pooly.observe`).

Standard library only (``http.server``). It binds a loopback address and nothing else: any
other host is refused before anything listens. Every route only reads::

    browser                    "pooly observe" (this process)            the program
    -------                    ------------------------------            -----------
    GET /                ----> the page (inline JS and CSS, nothing
                               fetched from anywhere else)
    GET /snapshot.json   ----> one "snapshot" request on its Unix  ---->  observer thread
      (about twice a      <--- socket, the document passed on     <----
       second)                 (503 + {"error": ...} if it is gone)
    GET /events.json     ----> one "events" request, likewise

The page draws the tree (Pooly -> pools -> workers) as SVG, each worker coloured by its state
and each pool by its own, a crash log (the ``WorkerExited`` events with ``expected`` false
seen so far) and a sparkline of calls per second per pool, computed in the page from
successive snapshots' ``stats.calls`` and ``time``. If the program goes away the page says
so and the server keeps running until Ctrl-C.

Stable hooks for tests and scripts: ``svg#tree``; ``g.pool[data-pool][data-state]``;
``g.worker[data-pid][data-pool][data-state]``; ``tr.crash[data-pid][data-pool]`` in
``table#crashes``; ``svg.spark[data-pool]`` in ``table#pools``; ``#status`` (class ``live``
or ``gone``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .. import observe
from .top import _path_of, _target

__all__ = ("COLORS", "WORKER_SIZE", "LoopbackOnly", "add_arguments", "main", "parse_http")

#: Fill colours of the nodes, by worker state and by pool state (exact sRGB: the test counts
#: pixels of them in a screenshot).
COLORS: dict[str, dict[str, str]] = {
    "worker": {
        "idle": "#22aa55",
        "busy": "#2277dd",
        "overflow": "#ee9922",
        "retiring": "#aa44cc",
    },
    "pool": {
        "ready": "#bfe8cc",
        "overflow": "#ffe0a0",
        "full": "#ff9c8c",
        "failed": "#d02020",
        "stopped": "#cccccc",
    },
}
#: A worker node's rectangle (width, height) in CSS pixels.
WORKER_SIZE = (76, 40)
#: How often the page asks for a snapshot (ms).
POLL_MS = 500
#: How long a proxied request to the program's socket may take (s).
REQUEST_TIMEOUT = 2.0


class LoopbackOnly(ValueError):
    """``--http`` named a host that is not a loopback address: the page shows a program's
    internals, so it is served to this machine only."""


def parse_http(value: str) -> tuple[str, int]:
    """``--http``'s ``[HOST:]PORT`` (``[::1]:PORT`` for IPv6) as (host, port); the host is
    127.0.0.1 when left out, ``localhost`` stands for 127.0.0.1. Raises
    :class:`LoopbackOnly` for any host that is not a loopback IP address, ``ValueError``
    for a malformed value."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"--http {value!r}: expected [IPV6]:PORT")
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif ":" not in text:
        host, port_s = "", text
    else:
        raise ValueError(f"--http {value!r}: write an IPv6 address as [::1]:PORT")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"--http {value!r}: the port must be 0-65535 (0: pick a free one)")
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise LoopbackOnly(
            f"--http {value!r}: {host!r} is not an IP address; pooly observe serves on a "
            "loopback address only (127.0.0.1, ::1 or localhost)"
        ) from None
    if not ip.is_loopback:
        raise LoopbackOnly(
            f"--http {value!r}: refusing to serve on {host}, which is not a loopback address: "
            "the page shows the program's internals, so it is served to this machine only "
            "(use 127.0.0.1, ::1 or localhost; reach it from elsewhere through an ssh tunnel)"
        )
    return str(ip), int(port_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="PID|PATH",
        help="the program's pid (or its socket's path); may be left out when exactly one "
        "program of yours runs with an endpoint",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:0",
        metavar="[HOST:]PORT",
        help="where to serve the page: a loopback address only (default: %(default)s; "
        "port 0 picks a free one, and the URL is printed)",
    )
    parser.add_argument("--verbose", action="store_true", help="log each HTTP request to stderr")


# ---------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: str
    pid: int
    page: bytes
    verbose: bool


def _allowed_host(header: str | None) -> bool:
    """Whether a request's Host header names a loopback address (a page of another site
    that rebinds its name to 127.0.0.1 sends its own name: it gets nothing)."""
    if not header:
        return False
    host = urlsplit(f"//{header}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    """One request (a thread of the server's own); every route only reads."""

    server: _Server
    server_version = "pooly-observe"

    def do_GET(self) -> None:
        if not _allowed_host(self.headers.get("Host")):
            self._json(HTTPStatus.FORBIDDEN, {"error": "the Host must be a loopback address"})
            return
        route = urlsplit(self.path).path
        if route == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.server.page)
        elif route == "/snapshot.json":
            self._proxy("snapshot")
        elif route == "/events.json":
            self._proxy("events")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})

    def _proxy(self, what: str) -> None:
        try:
            doc = observe.request(self.server.endpoint, what, timeout=REQUEST_TIMEOUT)
        except (observe.NoEndpoint, OSError, ValueError) as e:
            self._json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": f"program {self.server.pid} is gone or not answering: {e}"},
            )
            return
        self._json(HTTPStatus.OK, doc)

    def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, allow_nan=False).encode()
        self._send(status, "application/json", body)

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Nothing is loaded from anywhere but this server, whatever a snapshot contains.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:",
        )
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def serve(endpoint: str, pid: int, host: str, port: int, *, verbose: bool = False) -> _Server:
    """A server (bound, not yet serving) for the program ``pid`` whose observer socket is
    ``endpoint``, on loopback ``host``:``port``."""
    if not ipaddress.ip_address(host).is_loopback:  # (parse_http refuses it first)
        raise LoopbackOnly(f"refusing to serve on {host}: not a loopback address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    cls = type(f"_Server{family.name}", (_Server,), {"address_family": family})
    server: _Server = cls((host, port), _Handler)
    server.endpoint = endpoint
    server.pid = pid
    server.verbose = verbose
    server.page = page().encode()
    return server


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    assert isinstance(host, str)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def main(args: argparse.Namespace) -> int:
    try:
        host, port = parse_http(args.http)
    except ValueError as e:
        print(f"pooly observe: {e}", file=sys.stderr)
        return 2
    try:
        endpoint = observe.find(None) if args.target is None else _path_of(_target(args.target))
        pid = observe.snapshot(endpoint)["pid"]
    except (observe.NoEndpoint, OSError, ValueError) as e:
        print(f"pooly observe: {e}", file=sys.stderr)
        return 1
    try:
        server = serve(endpoint, pid, host, port, verbose=args.verbose)
    except OSError as e:
        print(f"pooly observe: cannot listen on {args.http}: {e}", file=sys.stderr)
        return 1
    # SIGTERM ends it as Ctrl-C does (the socket closed on the way out).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with server:
        print(f"pooly observe: program {pid} at {url_of(server)}  (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever(poll_interval=0.25)
        except KeyboardInterrupt:
            pass
    return 0


# ---------------------------------------------------------------------- the page


def page() -> str:
    """The one HTML page: inline CSS and JS, no external resource."""
    signals: dict[int, str] = {}
    for s in signal.Signals:
        signals.setdefault(int(s), s.name)
    return (
        _PAGE.replace("__COLORS__", json.dumps(COLORS))
        .replace("__SIGNALS__", json.dumps(signals))
        .replace("__WORKER_SIZE__", json.dumps(WORKER_SIZE))
        .replace("__POLL_MS__", str(POLL_MS))
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pooly observe</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:10px 14px;background:#fff;color:#222}
h1{font-size:17px;margin:0 0 4px} h2{font-size:14px;margin:14px 0 4px}
#status{display:inline-block;padding:2px 8px;border-radius:3px;background:#eef}
#status.live{background:#e6f4ea} #status.gone{background:#b00020;color:#fff;font-weight:bold}
#treebox{overflow-x:auto} #tree{display:block} #tree.gone{opacity:.35}
#tree text{font:11px monospace;text-anchor:middle;dominant-baseline:middle}
#tree .edge{stroke:#999;stroke-width:1.5}
.legend{margin:4px 0;color:#555} .legend b{font-weight:normal;color:#222}
.legend i{display:inline-block;width:9px;height:9px;
 margin:0 3px 0 10px;vertical-align:middle}
table{border-collapse:collapse} th,td{padding:1px 9px 1px 0;text-align:left;
 border-bottom:1px solid #eee;font-variant-numeric:tabular-nums} th{color:#666;font-weight:normal}
.spark polyline{fill:none;stroke:#2277dd;stroke-width:1.3}
</style></head><body>
<h1 id="title">pooly observe</h1>
<div><span id="status">connecting...</span> <span id="meta"></span></div>
<div class="legend" id="legend"></div>
<div id="treebox"><svg id="tree" xmlns="http://www.w3.org/2000/svg" width="300" height="40">
</svg></div>
<h2>Pools</h2>
<table id="pools"><thead><tr><th>pool</th><th>state</th><th>size</th><th>idle</th><th>busy</th>
<th>overflow</th><th>waiting</th><th>crashed</th><th>restarts left</th><th>calls</th>
<th>calls/s</th><th></th></tr></thead><tbody></tbody></table>
<h2>Crash log</h2>
<table id="crashes"><thead><tr><th>time</th><th>pool</th><th>pid</th><th>exit</th>
<th>method</th><th>holder</th></tr></thead><tbody></tbody></table>
<div id="nocrash">no crash seen</div>
<script>
"use strict";
const COLORS = __COLORS__, SIGNALS = __SIGNALS__, WSIZE = __WORKER_SIZE__, POLL = __POLL_MS__;
const SVG = "http://www.w3.org/2000/svg", HIST = 60, CRASHES = 100;
const rates = new Map(), last = new Map(), crashes = new Map();

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function h(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  return e;
}
function exitText(code) {
  if (typeof code !== "number") return String(code);
  return code < 0 ? (SIGNALS[-code] || "signal " + (-code)) : "exit " + code;
}
function clock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function node(g, x, y, w, hgt, fill, lines, dark) {
  g.appendChild(el("rect", {x: x, y: y, width: w, height: hgt, rx: 4, fill: fill,
                            stroke: "#555", "stroke-width": 1}));
  const step = 13, top = y + hgt / 2 - (lines.length - 1) * step / 2;
  lines.forEach((s, i) => g.appendChild(
    el("text", {x: x + w / 2, y: top + i * step, fill: dark ? "#fff" : "#222"}, s)));
}

function drawTree(doc) {
  const svg = document.getElementById("tree");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const [W, H] = WSIZE, GAP = 12, PGAP = 28, PW = 160, PH = 50, RW = 190, RH = 36;
  const rootY = 8, poolY = 80, workerY = 170;
  const pools = doc.pools || [];
  let x = 10;
  const spans = pools.map(p => {
    const n = Math.max(1, p.workers.length);
    const w = Math.max(PW, n * W + (n - 1) * GAP), s = {x: x, w: w};
    x += w + PGAP;
    return s;
  });
  const width = Math.max(x - PGAP + 10, RW + 20), rootX = width / 2 - RW / 2;
  svg.setAttribute("width", width);
  svg.setAttribute("height", workerY + H + 10);
  const edges = el("g", {class: "edges"});
  svg.appendChild(edges);
  const root = el("g", {class: "root", "data-pid": doc.pid});
  node(root, rootX, rootY, RW, RH, "#444444", ["Pooly", "pid " + doc.pid], true);
  svg.appendChild(root);
  pools.forEach((p, i) => {
    const st = p.status, s = spans[i], px = s.x + s.w / 2 - PW / 2;
    edges.appendChild(el("line", {class: "edge", x1: width / 2, y1: rootY + RH,
                                  x2: s.x + s.w / 2, y2: poolY}));
    const g = el("g", {class: "pool", "data-pool": p.name, "data-state": st.state});
    g.appendChild(el("title", {}, p.name + ": " + p.options.worker + ", " + p.options.strategy));
    node(g, px, poolY, PW, PH, COLORS.pool[st.state] || "#eeeeee",
         [p.name, st.state, "idle " + st.idle + " busy " + st.busy + " ovfl " + st.overflow],
         st.state === "failed");
    svg.appendChild(g);
    const n = p.workers.length, ww = n * W + Math.max(0, n - 1) * GAP;
    p.workers.forEach((w, j) => {
      const wx = s.x + s.w / 2 - ww / 2 + j * (W + GAP);
      edges.appendChild(el("line", {class: "edge", x1: s.x + s.w / 2, y1: poolY + PH,
                                    x2: wx + W / 2, y2: workerY}));
      const wg = el("g", {class: "worker", "data-pid": w.pid, "data-pool": p.name,
                          "data-state": w.state});
      wg.appendChild(el("title", {}, "pid " + w.pid + " (" + w.state + "), " + w.calls +
        " calls, age " + Math.round(w.age) + " s" + (w.rss ? ", RSS " +
        (w.rss / 1048576).toFixed(1) + " MiB" : "") + (w.holder ? ", held by " + w.holder : "")));
      node(wg, wx, workerY, W, H, COLORS.worker[w.state] || "#999999",
           [String(w.pid), w.state], true);
      svg.appendChild(wg);
    });
  });
}

function spark(name, values) {
  const w = 120, hgt = 22, s = el("svg", {class: "spark", "data-pool": name, width: w,
                                            height: hgt});
  const max = Math.max(1, ...values), pts = values.map((v, i) =>
    (w - (values.length - 1 - i) * (w / (HIST - 1))).toFixed(1) + "," +
    (hgt - 1 - v / max * (hgt - 3)).toFixed(1));
  s.appendChild(el("rect", {width: w, height: hgt, fill: "#f3f6fb"}));
  s.appendChild(el("polyline", {points: pts.join(" ")}));
  return s;
}

function drawPools(doc) {
  const body = document.querySelector("#pools tbody");
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const p of doc.pools || []) {
    const prev = last.get(p.name), calls = p.stats.calls;
    let hist = rates.get(p.name) || [];
    if (prev && doc.time > prev.time) {
      hist.push(Math.max(0, calls - prev.calls) / (doc.time - prev.time));
      if (hist.length > HIST) hist = hist.slice(-HIST);
    }
    rates.set(p.name, hist);
    last.set(p.name, {time: doc.time, calls: calls});
    const st = p.status, tr = h("tr", undefined, {"data-pool": p.name});
    const rate = hist.length ? hist[hist.length - 1] : 0;
    [p.name, st.state, st.size + "+" + st.max_overflow, st.idle, st.busy, st.overflow,
     st.waiting, st.crashed, p.stats.restarts_left, calls, rate.toFixed(1)]
      .forEach(v => tr.appendChild(h("td", String(v))));
    const td = h("td");
    td.appendChild(spark(p.name, hist));
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function drawCrashes(events) {
  for (const e of events || []) {
    if (e.type !== "WorkerExited" || e.expected) continue;
    crashes.set(e.pool + "/" + e.pid + "/" + e.time, e);
  }
  const all = [...crashes.values()].sort((a, b) => b.time - a.time).slice(0, CRASHES);
  const body = document.querySelector("#crashes tbody");
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const e of all) {
    const tr = h("tr", undefined, {class: "crash", "data-pid": e.pid, "data-pool": e.pool});
    [clock(e.time), e.pool, e.pid, exitText(e.exitcode), e.method || "-", e.holder || "-"]
      .forEach(v => tr.appendChild(h("td", String(v))));
    body.appendChild(tr);
  }
  document.getElementById("nocrash").style.display = all.length ? "none" : "";
}

function setStatus(live, text) {
  const s = document.getElementById("status");
  s.className = live ? "live" : "gone";
  s.textContent = text;
  document.getElementById("tree").setAttribute("class", live ? "" : "gone");
}

async function poll() {
  try {
    const r = await fetch("/snapshot.json", {cache: "no-store"});
    const doc = await r.json();
    if (!r.ok || doc.error) {
      setStatus(false, "the program is gone: " + (doc.error || r.status));
    } else {
      document.getElementById("title").textContent = "pooly observe: pid " + doc.pid;
      document.title = "pooly observe " + doc.pid;
      document.getElementById("meta").textContent = (doc.argv || []).join(" ");
      drawTree(doc);
      drawPools(doc);
      drawCrashes(doc.events);
      setStatus(true, "live, " + clock(doc.time));
    }
  } catch (err) {
    setStatus(false, "pooly observe is not answering: " + err);
  }
  setTimeout(poll, POLL);
}

(function legend() {
  const l = document.getElementById("legend");
  for (const kind of ["worker", "pool"]) {
    l.appendChild(h("b", (kind === "pool" ? "\u2003" : "") + kind + "s:"));
    for (const st in COLORS[kind]) {
      const i = h("i");
      i.style.background = COLORS[kind][st];
      l.appendChild(i);
      l.appendChild(document.createTextNode(st));
    }
  }
})();
poll();
</script></body></html>
"""
