#!/usr/bin/env python3
"""Pooly beside the pools users would pick instead (``make bench-peers``, issue 13).

    python bench/bench_peers.py [--quick] [--peers a,b,c] [--only SECTION[,..]]
                                [--out DIR] [--workers N]

Writes DIR/peers.md (the generated page), DIR/peers.json (raw results), DIR/headline.md (the
table for the README) and the plots (DIR/*.png); prints each table as it goes. The driver is
``peers/driver.py``; the workloads are ``peers/speed.py`` (throughput, latency, CPU scaling,
memory, concurrent callers) and, when present, ``peers/faults.py`` and ``peers/embed.py``.

Deliberately tiny at module level, like bench.py: on CPython 3.11 and 3.12 the forkserver
re-runs the main script in every worker it forks (gh-126631), so nothing heavy is imported
here.
"""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    # Worker processes (forkserver, spawn) receive this process's sys.path, so they can
    # import peers.tasks from here.
    sys.path.insert(0, BENCH_DIR)

if __name__ == "__main__":
    from peers.driver import main

    sys.exit(main())
