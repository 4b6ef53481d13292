#!/usr/bin/env python3
"""Restart intensity under fire (issue 3, part 2): do neighbour pools slow down while a pool
crash-loops to "failed"?

    python bench/intensity.py [--rounds 7] [--consumers 4] [--restarts 10] [--size 2]
                              [--delay 0.05] [--window 0.5] [--quick]

Two healthy pools ("n1", "n2", Counter workers) serve ``--consumers`` threads, each making
back-to-back ``pool.transaction(lambda w: w.incr())`` calls (checkout + one round trip +
checkin) whose results are checked. Each round then has three windows, side by side in the
same run, with the same consumers running throughout:

  before  ``--window`` seconds with nothing else going on;
  during  from the moment a pool of ``tests.chaos_workers.CrashLoop`` workers (each dies by
          itself ``--delay`` s after it starts) is let loose, until that pool is "failed";
  after   ``--window`` seconds once the failed pool has been stopped (a second baseline:
          after/before shows the run's noise).

Rounds are interleaved (before, during, after, before, ...) so drift on the shared machine
hits every window alike; the figures quoted are medians over rounds. Per round it also prints
the crash loop's time to "failed" and the deaths counted by the workers themselves (each
records its pid before dying), which must be exactly ``--restarts`` + 1.

Kept tiny at module level (only ``os``/``sys``): on CPython 3.11 the forkserver re-runs the
main script in every worker it starts (see bench/bench.py), which the crash loop does often.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # tests.chaos_workers / tests.workers, also in worker processes


def main(argv: "list[str] | None" = None) -> int:
    import argparse
    import platform
    import statistics
    import tempfile
    import threading
    import time
    from collections.abc import Callable

    from tests.chaos_workers import CrashLoop, recorded
    from tests.workers import Counter

    import pooly

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--consumers", type=int, default=4, help="threads calling the neighbours")
    ap.add_argument("--restarts", type=int, default=10, help="max_restarts of the failing pool")
    ap.add_argument("--size", type=int, default=2, help="size of the failing pool")
    ap.add_argument("--delay", type=float, default=0.05, help="each crash-looping worker's life")
    ap.add_argument("--window", type=float, default=0.5, help="before/after window, seconds")
    ap.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 2

    stop = threading.Event()
    done: list[list[tuple[float, float]]] = []  # per consumer: (end time, call duration)
    errors: list[BaseException] = []

    def consume(pool: pooly.Pool, log: list[tuple[float, float]]) -> None:
        clock = time.perf_counter
        last: dict[int, int] = {}  # worker pid -> the last count this thread saw from it
        while not stop.is_set():
            t0 = clock()
            try:
                pid, got = pool.transaction(lambda w: (w.pid, w.incr()), timeout=30)
            except BaseException as e:  # any error is a failed promise: counted, reported
                errors.append(e)
                return
            t1 = clock()
            log.append((t1, t1 - t0))
            if got <= last.get(pid, 0):  # each worker's count only grows
                errors.append(AssertionError(f"worker {pid}: {last[pid]} then {got}"))
                return
            last[pid] = got

    def watch(done_when: "Callable[[], bool]", until: float) -> float:
        """The main thread's loop in every window alike: poll a pool's status each ms."""
        clock = time.perf_counter
        while True:
            now = clock()
            if now >= until or done_when():
                return now
            time.sleep(0.001)

    def window(a: float, b: float) -> tuple[int, list[float]]:
        calls = [d for log in done for (t, d) in log if a <= t < b]
        return len(calls), calls

    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    rows = []
    with pooly.Pooly(preload=["tests.chaos_workers", "tests.workers"]) as sup:
        neighbours = [sup.start_pool(n, Counter, size=2) for n in ("n1", "n2")]
        threads = []
        for i in range(args.consumers):
            log: list[tuple[float, float]] = []
            done.append(log)
            t = threading.Thread(target=consume, args=(neighbours[i % 2], log), daemon=True)
            threads.append(t)
            t.start()
        watch(lambda: False, time.perf_counter() + args.window)  # warm-up, not measured

        for r in range(args.rounds):
            clock = time.perf_counter
            b0 = clock()
            b1 = watch(lambda: neighbours[0].status().state == "failed", b0 + args.window)

            with tempfile.TemporaryDirectory() as records:
                gate = os.path.join(records, "go")
                bad = sup.start_pool(
                    "bad",
                    CrashLoop,
                    args=(records, args.delay, "kill", gate),
                    size=args.size,
                    max_restarts=args.restarts,
                    max_seconds=60,
                    shutdown_timeout=0.1,
                )
                d0 = clock()
                open(gate, "w").close()  # the crash loop starts now
                d1 = watch(lambda bad=bad: bad.status().state == "failed", d0 + 60)
                if bad.status().state != "failed":
                    raise SystemExit(f"round {r + 1}: pool never failed: {bad.status()}")
                s = bad.status()
                sup.stop_pool("bad")
                started = len(recorded(records, "started"))
                crashed = len(recorded(records, "crashed"))

            a0 = clock()
            a1 = watch(lambda: neighbours[0].status().state == "failed", a0 + args.window)

            nb, lb = window(b0, b1)
            nd, ld = window(d0, d1)
            na, la = window(a0, a1)
            rows.append(
                {
                    "before": nb / (b1 - b0),
                    "during": nd / (d1 - d0),
                    "after": na / (a1 - a0),
                    "to_failed": d1 - d0,
                    "crashed": crashed,
                    "pool_crashed": s.crashed,
                    "started": started,
                    "p50": (pct(lb, 0.5), pct(ld, 0.5), pct(la, 0.5)),
                    "p99": (pct(lb, 0.99), pct(ld, 0.99), pct(la, 0.99)),
                    "during_calls": nd,
                }
            )

        stop.set()
        for t in threads:
            t.join(30)
        total = sum(len(log) for log in done)

    print(
        f"pooly restart intensity under fire -- Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, start method forkserver"
    )
    print(
        f"failing pool: size {args.size}, max_restarts {args.restarts} in 60 s, each worker "
        f"SIGKILLs itself {args.delay * 1000:.0f} ms after it starts; "
        f"{args.consumers} consumer threads on 2 neighbour pools of 2 workers"
    )
    print()
    hdr = (
        f"{'round':>5} {'before/s':>9} {'during/s':>9} {'after/s':>9} {'dur/bef':>8} "
        f"{'aft/bef':>8} {'p99 bef/dur ms':>15} {'to failed':>10} {'deaths':>7} {'started':>8}"
    )
    print(hdr)
    for i, row in enumerate(rows, 1):
        print(
            f"{i:>5} {row['before']:>9.0f} {row['during']:>9.0f} {row['after']:>9.0f} "
            f"{row['during'] / row['before']:>8.2f} {row['after'] / row['before']:>8.2f} "
            f"{row['p99'][0] * 1e3:>7.2f}/{row['p99'][1] * 1e3:<7.2f} "
            f"{row['to_failed'] * 1e3:>8.0f}ms {row['crashed']:>7} {row['started']:>8}"
        )

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    ratio = statistics.median(row["during"] / row["before"] for row in rows)
    noise = statistics.median(abs(row["after"] / row["before"] - 1) for row in rows)
    print()
    print(
        f"median: neighbours {med('before'):.0f} calls/s before, {med('during'):.0f} during "
        f"the crash loop -> ratio {ratio:.2f} (noise: after vs before differ by "
        f"{noise * 100:.0f}%)"
    )
    p99 = [statistics.median(row["p99"][k] for row in rows) * 1e3 for k in range(3)]
    print(
        f"median p99 call latency: {p99[0]:.2f} ms before, {p99[1]:.2f} ms during, "
        f"{p99[2]:.2f} ms after"
    )
    print(
        f"median time to 'failed': {med('to_failed') * 1e3:.0f} ms; deaths per loop: "
        f"{sorted({row['crashed'] for row in rows})} (expected exactly {args.restarts + 1}); "
        f"the pool counted {sorted({row['pool_crashed'] for row in rows})}"
    )
    ok = not errors and all(row["crashed"] == args.restarts + 1 for row in rows)
    ok = ok and all(row["during_calls"] > 0 for row in rows)
    print(
        f"neighbour calls: {total} made, {len(errors)} failed"
        + (f" (first: {errors[0]!r})" if errors else "")
        + f"; every round's crash loop saw neighbour calls: "
        f"{all(row['during_calls'] > 0 for row in rows)}"
    )
    print("OK" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
