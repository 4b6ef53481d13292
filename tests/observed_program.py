"""A small program for tests/test_observe.py's ``pooly top`` test: a tree observed at the
default place (``Pooly(observe=True)``) with one pool named by argv[1], waiting until its
stdin closes (or it is killed). Prints "ready <pid>" once its pool is up."""

from __future__ import annotations

import sys

import pooly
from tests.workers import Counter

if __name__ == "__main__":  # (the fork server re-imports __main__)
    name = sys.argv[1] if len(sys.argv) > 1 else "observed"
    with pooly.Pooly(observe=True) as sup:
        pool = sup.start_pool(name, Counter, size=2, max_overflow=1)
        lease = pool.checkout()  # one worker busy, held by the main thread
        lease.incr()
        print("ready", sup.observe_path, flush=True)
        sys.stdin.read()  # until the test closes our stdin
        pool.checkin(lease)
