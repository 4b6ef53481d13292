"""The ``pooly`` command: parses arguments and dispatches to a subcommand's module.

``pooly demo`` runs :mod:`pooly.cli.demo`, ``pooly chaos`` runs :mod:`pooly.cli.chaos`,
``pooly soak`` runs :mod:`pooly.cli.soak`, ``pooly top`` runs :mod:`pooly.cli.top`,
``pooly observe`` runs :mod:`pooly.cli.web`; the
console script and ``python -m pooly`` both call :func:`main`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import __version__
from . import chaos, demo, soak, top, web

__all__ = ("build_parser", "main")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pooly",
        description="Pooly: Erlang/OTP-style supervised pools of worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"pooly {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_cmd = commands.add_parser(
        "demo",
        help="run two pools under a concurrent workload while injecting real faults "
        "(SIGKILL, segfault, os._exit, a consumer dying with a lease), then print a "
        "tally: every call must succeed or raise WorkerCrashed; then an executor (and the "
        "stdlib's) with a busy worker SIGKILLed",
        description="Start two supervised pools, drive checked calls through them from "
        "several threads while killing workers in every way a process can die, "
        "and print a tally; then submit CPU tasks to pooly's executor and to the stdlib's, "
        "SIGKILL a busy worker of each, and compare. Exit status 1 if any call was lost.",
    )
    demo.add_arguments(demo_cmd)
    demo_cmd.set_defaults(func=demo.main)
    chaos_cmd = commands.add_parser(
        "chaos",
        help="soak several pools under a fault every --fault-interval (SIGKILL, segfault, "
        "os._exit, poisoned arguments and results, dying consumers, waiters giving up, "
        "overflow bursts, pool restarts; executors fed futures while their tasks crash and "
        "hang) and check that nothing is lost, hung or leaked",
        description="Run several supervised pools under many consumer threads for "
        "--duration seconds while a fault injector does real harm at random; then check and "
        "print the figures: every outcome explained, no wrong result, no hung call, every "
        "pool healed, no process, zombie, fd or thread left. Exit status 1 if any fails.",
    )
    chaos.add_arguments(chaos_cmd)
    chaos_cmd.set_defaults(func=chaos.main)
    soak_cmd = commands.add_parser(
        "soak",
        help="run three recycling pools (max_calls=50, max_age=2 s, a worker leaking 5 MiB "
        "a call under max_memory) under load and check that no call failed, every worker's "
        "memory stayed bounded, recycles were counted and nothing was left",
        description="Drive three pools that recycle their workers (on max_calls, max_age "
        "and max_memory) from consumer threads, submit/map and asyncio tasks for --duration "
        "seconds, sampling every worker's RSS; then print the figures and a verdict. Exit "
        "status 1 if any check fails.",
    )
    soak.add_arguments(soak_cmd)
    soak_cmd.set_defaults(func=soak.main)
    top_cmd = commands.add_parser(
        "top",
        help="a live view of a running program's pools and workers, read from its "
        "observer endpoint (Pooly(observe=True)); q or Ctrl-C quits",
        description="Draw the supervision tree of a running program -- pools with their "
        "state and counts, workers with pid, state, calls, RSS and age, the last crashes "
        "and events -- refreshed about four times a second. The program must have started "
        "its tree with pooly.Pooly(observe=True). Needs rich: pip install 'pooly[cli]'.",
    )
    top.add_arguments(top_cmd)
    top_cmd.set_defaults(func=top.main)
    observe_cmd = commands.add_parser(
        "observe",
        help="serve a web page drawing a running program's tree live (like Erlang's "
        "observer), on a loopback address only; Ctrl-C stops",
        description="Serve, on 127.0.0.1 (or another loopback address) only, a page that "
        "draws the supervision tree of a running program -- the pools and their workers "
        "coloured by state, a crash log, calls per second per pool -- from its observer "
        "endpoint (the program must start its tree with pooly.Pooly(observe=True)). Prints "
        "the URL; runs until Ctrl-C. Standard library only.",
    )
    web.add_arguments(observe_cmd)
    observe_cmd.set_defaults(func=web.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pooly`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    status: int = args.func(args)
    return status
