#!/usr/bin/env python3
"""Issue 11's bar: what observing a pool costs (``python bench/bench_stats.py [--quick]``).

Two trees side by side in one run, each with a pool of one worker: one with no subscriber,
one with a subscriber (a callback counting events) -- stats are always on. Measured, as in
bench.py (see _bench_impl.py and /work/shared/BENCHMARKING.md):

1. a call through a checked-out worker, ``lease.echo(msg)`` (16 bytes), per-call samples;
2. uncontended ``checkout()`` + ``checkin()`` on a pool of two, batches of 1000, per-op
   time: a worker stays idle, so the pool's state does not change and nothing is published
   -- what observing costs a pool that runs as usual (judged);
3. the same on a pool of one -- the worst case, for information: each checkout and each
   checkin changes the pool's state (ready -> full -> ready), so every op publishes two
   events, and the subscriber's deliveries share the GIL with the loop measured.

Everything runs pinned to one CPU (started before any thread, so the workers inherit it),
the two contenders interleaved in rounds (A B, B A, ...); each figure is the median of all
its samples. The bar: subscribed / unsubscribed <= 1.1 for 1 and 2. Exits 1 if missed.

Kept tiny at module level (only ``os``/``sys``): on CPython 3.11/3.12 the forkserver
re-runs the main script in every worker it forks (see bench.py's docstring).
"""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

BAR = 1.1


def main(argv: list[str]) -> int:
    import statistics
    import time

    from _bench_workers import Echo

    import pooly

    quick = "--quick" in argv
    rounds = 4 if quick else 20
    calls = 500 if quick else 2000
    batches = 2 if quick else 10
    batch = 1000

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    pc = time.perf_counter_ns
    msg = b"x" * 16
    seen = [0]

    def count(event: object) -> None:
        seen[0] += 1

    with pooly.Pooly() as plain, pooly.Pooly() as observed:
        sub = observed.subscribe(count)
        pools = {
            "no subscriber": plain.start_pool("bench-plain", Echo, size=2),
            "one subscriber": observed.start_pool("bench-observed", Echo, size=2),
        }
        ones = {
            "no subscriber": plain.start_pool("bench-plain-1", Echo, size=1),
            "one subscriber": observed.start_pool("bench-observed-1", Echo, size=1),
        }
        call_ns: dict[str, list[int]] = {k: [] for k in pools}
        co_ns: dict[str, list[float]] = {k: [] for k in pools}
        co1_ns: dict[str, list[float]] = {k: [] for k in pools}
        order = list(pools)

        def checkouts(pool: pooly.Pool, out: list[float]) -> None:
            checkout, checkin = pool.checkout, pool.checkin
            for _ in range(batches):
                t = pc()
                for _ in range(batch):
                    checkin(checkout())
                out.append((pc() - t) / batch)

        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                pool = pools[name]
                with pool.checkout() as lease:
                    echo, out = lease.echo, call_ns[name]
                    for _ in range(calls):
                        t = pc()
                        echo(msg)
                        out.append(pc() - t)
                checkouts(pool, co_ns[name])
                checkouts(ones[name], co1_ns[name])
        stats = {name: pool.stats() for name, pool in pools.items()}
        dropped = sub.dropped
    print(f"bench_stats: {rounds} interleaved rounds, pinned to one CPU, median per op")
    print(f"{'':32}{'no subscriber':>16}{'one subscriber':>16}{'ratio':>8}  bar {BAR}x")
    ok = True
    for label, data, judged in (
        ("call round trip (us)", call_ns, True),
        ("checkout+checkin, size 2 (us)", co_ns, True),
        ("checkout+checkin, size 1 (us)", co1_ns, False),
    ):
        a = statistics.median(data["no subscriber"]) / 1e3
        b = statistics.median(data["one subscriber"]) / 1e3
        ratio = b / a
        if judged:
            ok &= ratio <= BAR
            verdict = "PASS" if ratio <= BAR else "FAIL"
        else:
            verdict = "(info: 2 events per op)"
        print(f"{label:32}{a:16.2f}{b:16.2f}{ratio:8.3f}  {verdict}")
    s = stats["one subscriber"]
    print(
        f"events delivered {seen[0]}, dropped {dropped}; observed pool: {s.checkouts} "
        f"checkouts, {s.calls} calls, hold p50 {s.hold_p50 * 1e6:.1f} us"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
