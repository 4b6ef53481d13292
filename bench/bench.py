#!/usr/bin/env python3
"""Pooly benchmark (``make bench``): latencies side by side, in one run, with ratios.

    python bench/bench.py [--quick] [--json PATH] [--check]

Measures (details in ``_bench_impl.py``): the raw ``os.pipe`` round trip between two
processes (the floor), a call through a checked-out pooly worker, a ``ProcessPoolExecutor``
single-task round trip, uncontended ``checkout()`` + ``checkin()``, and the time from SIGKILL
of a worker until its replacement answers (also under ``pooly demo``'s load, beside
multiprocessing's forkserver). Prints a table with ratios and the issue's
targets (PASS/FAIL); ``--json`` also writes the figures; ``--check`` exits 1 if a target is
missed; ``--quick`` is a few-second smoke run with rough figures.

This file is deliberately tiny and imports nothing at module level but ``os``/``sys``:
on CPython 3.11 and 3.12 the forkserver never preloads ``__main__`` (gh-126631 /
gh-137996, fixed in 3.13 and 3.14), so every worker it forks re-runs the main script -- and
everything the script imports at top level -- before it can start. A heavy main module would
be timed as part of each worker's (re)start; see /work/notes/perf.md for how much that costs.
"""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    # Worker processes (forkserver, spawn) receive this process's sys.path, so they can
    # import _bench_workers from here.
    sys.path.insert(0, BENCH_DIR)

if __name__ == "__main__":
    from _bench_impl import main

    sys.exit(main())
