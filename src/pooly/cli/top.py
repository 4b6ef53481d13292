"""``pooly top [PID]``: a live terminal view of a running program's tree, read from its
observer endpoint (``Pooly(observe=True)``; see :mod:`pooly.observe`).

Pools with their state and counts, each pool's workers (pid, state, calls, RSS, age,
holder) and the last lifecycle events, redrawn about four times a second until ``q`` or
Ctrl-C. Keys are read without echo (cbreak mode); the terminal is restored on the way
out, however it ends. ``--once`` prints one frame and exits (for scripts and tests).

Needs ``rich`` (the ``cli`` extra: ``pip install 'pooly[cli]'``), imported only here: the
core package has no runtime dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import observe

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ("add_arguments", "main", "render")

INSTALL_HINT = "pooly top needs the 'rich' package: pip install 'pooly[cli]' (or: pip install rich)"
#: Events shown under the pools.
EVENTS_SHOWN = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="PID",
        help="the program's pid (or its socket's path); may be left out when exactly one "
        "program of yours runs with an endpoint",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame and exit (no keys read)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="time between refreshes (default: %(default)s)",
    )


def _target(raw: str | None) -> str | int | None:
    if raw is None:
        return None
    return int(raw) if raw.isdigit() else raw


def main(args: argparse.Namespace) -> int:
    try:
        import rich  # noqa: F401  (only to say how to install it when it is missing)
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if not args.interval > 0:
        print(f"pooly top: --interval must be > 0, got {args.interval}", file=sys.stderr)
        return 2
    try:
        path = observe.find(None) if args.target is None else _path_of(_target(args.target))
        doc = observe.snapshot(path)
    except (observe.NoEndpoint, OSError, ValueError) as e:
        print(f"pooly top: {e}", file=sys.stderr)
        return 1
    if args.once:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 120)
        console.print(render(doc))
        return 0
    return _live(path, doc, args.interval)


def _path_of(target: str | int | None) -> str:
    if isinstance(target, int):
        return observe.find(target)
    assert target is not None
    if not os.path.exists(target):
        raise observe.NoEndpoint(
            f"{target} is neither a pid nor an observer socket; a program opens one with "
            "pooly.Pooly(observe=True)"
        )
    return target


@contextlib.contextmanager
def _cbreak() -> Iterator[int | None]:
    """Keys one at a time, not echoed, while in the block; the terminal as it was after.
    Yields stdin's fd, or None when stdin is not a terminal (only Ctrl-C ends it then)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _live(path: str, doc: dict[str, Any], interval: float) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    ended: str | None = None
    try:
        with (
            _cbreak() as keys,
            Live(render(doc), console=console, screen=True, auto_refresh=False) as live,
        ):
            live.refresh()
            next_at = time.monotonic() + interval
            while True:
                wait = max(0.0, next_at - time.monotonic())
                if keys is not None:
                    ready, _, _ = select.select([keys], [], [], wait)
                    if ready and b"q" in os.read(keys, 64).lower():
                        break
                else:
                    time.sleep(wait)
                if time.monotonic() < next_at:
                    continue
                next_at = time.monotonic() + interval
                try:
                    doc = observe.snapshot(path)
                except (observe.NoEndpoint, OSError, ValueError) as e:
                    ended = str(e)
                    break
                live.update(render(doc), refresh=True)
    except KeyboardInterrupt:
        pass
    if ended is not None:
        print(f"pooly top: the program is gone: {ended}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- drawing

_STATE_STYLE = {
    "ready": "green",
    "overflow": "yellow",
    "full": "bold red",
    "failed": "bold white on red",
    "stopped": "dim",
    "idle": "green",
    "busy": "cyan",
    "retiring": "magenta",
}


def _mib(n: object) -> str:
    return "-" if not isinstance(n, int) else f"{n / (1 << 20):.1f}M"


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _ms(seconds: object) -> str:
    return "-" if not isinstance(seconds, int | float) else f"{seconds * 1000:.1f}ms"


def _event_text(e: dict[str, Any]) -> str:
    kind = e.get("type")
    if kind == "WorkerExited":
        how = "crashed" if not e.get("expected") else "stopped"
        parts = [f"pid {e.get('pid')} {how}, exit {e.get('exitcode')}"]
        if e.get("method"):
            parts.append(f"in {e['method']}()")
        if e.get("holder"):
            parts.append(f"held by {e['holder']}")
        return " ".join(parts)
    if kind == "WorkerStarted":
        return f"pid {e.get('pid')} started ({e.get('reason')})"
    if kind == "PoolStateChanged":
        return f"{e.get('old')} -> {e.get('new')}"
    if kind == "CallTimedOut":
        return f"pid {e.get('pid')}: {e.get('method')}() ran past {e.get('timeout')}s"
    if kind == "WorkerRecycled":
        return f"pid {e.get('pid')} recycled: {e.get('why')}"
    if kind == "CheckoutTimedOut":
        return f"a checkout gave up after {e.get('waited')}s"
    return ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("type", "pool", "time"))


def render(doc: dict[str, Any]) -> RenderableType:
    """One frame of the view of snapshot ``doc`` (a :func:`pooly.observe.snapshot`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = doc.get("time", time.time())
    up = _age(now - doc.get("started", now))
    argv = " ".join(doc.get("argv", []))
    head = Text.assemble(
        ("pooly top", "bold"),
        f"  pid {doc.get('pid')}  up {up}  ",
        (argv[:80], "dim"),
        ("   q: quit", "dim"),
    )
    pools = Table(title=None, expand=False, box=None, header_style="bold", pad_edge=False)
    # (short headers: the row must fit 100 columns)
    for col in (
        "pool",
        "state",
        "size",
        "idle",
        "busy",
        "ovfl",
        "wait",
        "crash",
        "repl",
        "recyc",
        "rst.left",
        "leases",
        "calls",
        "wait99",
        "hold99",
    ):
        pools.add_column(col, justify="left" if col in ("pool", "state") else "right")
    parts: list[RenderableType] = [head, Text(""), pools]
    for p in doc.get("pools", []):
        st, sx = p["status"], p["stats"]
        state = st["state"]
        pools.add_row(
            p["name"],
            Text(state, style=_STATE_STYLE.get(state, "")),
            f"{st['size']}+{st['max_overflow']}",
            str(st["idle"]),
            str(st["busy"]),
            str(st["overflow"]),
            str(st["waiting"]),
            str(st["crashed"]),
            str(st["replaced"]),
            str(st["recycled"]),
            str(sx["restarts_left"]),
            str(sx["checkouts"]),
            str(sx["calls"]),
            _ms(sx["wait_p99"]),
            _ms(sx["hold_p99"]),
        )
        workers = Table(
            title=f"{p['name']}: workers ({p['options']['worker']}, {p['options']['strategy']})",
            title_justify="left",
            title_style="bold",
            box=None,
            header_style="dim",
            pad_edge=False,
        )
        # A pool on Ray: the node each worker (actor) runs on (pids repeat across nodes).
        on_nodes = any(w.get("node") for w in p["workers"])
        cols = ("pid", "wid", "state", "calls", "rss", "age", "holder")
        for col in cols + (("node",) if on_nodes else ()):
            workers.add_column(col, justify="right" if col in ("pid", "calls", "rss") else "left")
        for w in p["workers"]:
            row = [
                str(w["pid"]),
                str(w["wid"]),
                Text(w["state"], style=_STATE_STYLE.get(w["state"], "")),
                str(w["calls"]),
                _mib(w["rss"]),
                _age(w["age"]),
                w["holder"] or "",
            ]
            if on_nodes:
                row.append((w.get("node") or "")[:12])
            workers.add_row(*row)
        notes = []
        if p.get("spares"):
            notes.append(f"spares: {', '.join(map(str, p['spares']))}")
        crashes = sx.get("crashes") or {}
        if crashes:
            by_code = ", ".join(f"exit {k}: {v}" for k, v in sorted(crashes.items()))
            notes.append(f"crashes by exit code: {by_code}")
        if notes:
            workers.caption = "  ".join(notes)
            workers.caption_justify = "left"
        parts += [Text(""), workers]
    if not doc.get("pools"):
        parts.append(Text("(no pools)", style="dim"))
    events = Table(
        title="recent events", title_justify="left", title_style="bold", box=None, pad_edge=False
    )
    for col in ("time", "pool", "event", ""):
        events.add_column(col, header_style="dim")
    for e in doc.get("events", [])[-EVENTS_SHOWN:]:
        when = datetime.datetime.fromtimestamp(e.get("time", 0)).strftime("%H:%M:%S.%f")[:-3]
        crash = e.get("type") == "WorkerExited" and not e.get("expected")
        events.add_row(
            when,
            str(e.get("pool", "")),
            Text(str(e.get("type")), style="bold red" if crash else ""),
            _event_text(e),
        )
    parts += [Text(""), events]
    return Group(*parts)
