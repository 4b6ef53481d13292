#!/usr/bin/env python3
"""Issue 12's bars for pools on Ray (``make bench-ray``), side by side in one run.

    python bench/bench_ray.py [--quick] [--json PATH] [--check]

On a local Ray (started here, every address on 127.0.0.1):

1. round trip: ``lease.echo(msg)`` through a pooly pool on Ray against the same method
   called on a bare Ray actor (``ray.get(actor.echo.remote(msg))``), interleaved in rounds,
   median per call; the bar: pooly's within 1.5x the bare call;
2. SIGKILL of a leased worker's actor process mid-call: time until its holder gets
   ``WorkerCrashed`` (bar: <= 100 ms);
3. then until a checkout on the pool (of one worker) is served again: with a warm spare
   (bar: <= 50 ms) and without one (bar: <= 1.5 s).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
# Ray's workers start with this process's environment: they find _bench_workers by it.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (BENCH_DIR, os.environ.get("PYTHONPATH", "")) if p
)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import signal
    import statistics
    import threading
    import time

    import ray
    from _bench_workers import Echo

    import pooly

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    rounds, calls, kills = (3, 100, 3) if args.quick else (20, 500, 15)

    t0 = time.monotonic()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    init_s = time.monotonic() - t0
    msg = b"x" * 16
    pc = time.perf_counter_ns
    out: dict[str, object] = {"ray": ray.__version__, "ray_init_s": round(init_s, 2)}

    bare = ray.remote(num_cpus=1)(Echo).remote()
    ray.get(bare.echo.remote(msg))

    def run_bare(n: int, xs: list[int]) -> None:
        get, echo = ray.get, bare.echo.remote
        for _ in range(n):
            t = pc()
            get(echo(msg))
            xs.append(pc() - t)

    failures: list[str] = []
    with pooly.Pooly() as tree:
        pool = tree.start_pool("rt", Echo, size=1, backend=pooly.RayBackend())
        lease = pool.checkout()

        def run_pooly(n: int, xs: list[int]) -> None:
            echo = lease.echo
            for _ in range(n):
                t = pc()
                echo(msg)
                xs.append(pc() - t)

        samples: dict[str, list[int]] = {"bare": [], "pooly": []}
        contenders = [("bare", run_bare), ("pooly", run_pooly)]
        for _, run in contenders:
            run(calls // 5, [])
        for r in range(rounds):
            for name, run in contenders[r % 2 :] + contenders[: r % 2]:
                run(calls, samples[name])
        pool.checkin(lease)
        med = {k: statistics.median(v) / 1e6 for k, v in samples.items()}
        ratio = med["pooly"] / med["bare"]
        out["round_trip_ms"] = {k: round(v, 3) for k, v in med.items()}
        out["round_trip_ratio"] = round(ratio, 3)
        tree.stop_pool("rt")

        def kill_and_serve(spares: int) -> tuple[list[float], list[float]]:
            """SIGKILL a leased worker's actor 50 ms into a call, ``kills`` times: from the
            kill, until its holder gets WorkerCrashed and until the pool (of one worker)
            serves a checkout again."""
            name = f"kill{spares}"
            p = tree.start_pool(
                name, Echo, size=1, max_restarts=1000, backend=pooly.RayBackend(spares=spares)
            )
            seen, served = [], []
            for _ in range(kills):
                if spares:  # the spare refilled since the last kill
                    deadline = time.monotonic() + 30
                    while p.status().spares < spares and time.monotonic() < deadline:
                        time.sleep(0.01)
                lease = p.checkout(timeout=30)
                box: list[float] = []

                def kill(pid: int = lease.pid, box: list[float] = box) -> None:
                    box.append(time.perf_counter())
                    os.kill(pid, signal.SIGKILL)

                threading.Timer(0.05, kill).start()
                try:
                    lease.stuck(5)
                except pooly.WorkerCrashed:
                    seen.append(time.perf_counter() - box[0])
                else:
                    failures.append("a SIGKILLed call returned")
                with p.checkout(timeout=30) as w:
                    w.echo(msg)
                served.append(time.perf_counter() - box[0])
            tree.stop_pool(name)
            return seen, served

        lat, with_spare = kill_and_serve(1)
        lat0, without = kill_and_serve(0)
        lat += lat0

    def fig(xs: list[float]) -> dict[str, float]:
        return {"median_ms": statistics.median(xs) * 1e3, "max_ms": max(xs) * 1e3, "n": len(xs)}

    out["crash_seen"] = fig(lat)
    out["served_with_spare"] = fig(with_spare)
    out["served_without_spare"] = fig(without)
    bars = [
        ("lease call / bare actor call", ratio, 1.5, "x"),
        ("SIGKILL -> WorkerCrashed (max)", max(lat) * 1e3, 100, "ms"),
        ("served again with a spare (max)", max(with_spare) * 1e3, 50, "ms"),
        ("served again without a spare (max)", max(without) * 1e3, 1500, "ms"),
    ]
    print(f"pooly on Ray {ray.__version__} (local, ray.init {init_s:.1f} s), {kills} kills each")
    print(
        f"  round trip, median of {rounds} x {calls} interleaved: bare actor "
        f"{med['bare']:.3f} ms, pooly lease {med['pooly']:.3f} ms"
    )
    print(
        f"  SIGKILL -> WorkerCrashed: median {statistics.median(lat) * 1e3:.1f} ms"
        f"; served again: spare median {statistics.median(with_spare) * 1e3:.1f} ms,"
        f" no spare median {statistics.median(without) * 1e3:.1f} ms"
    )
    missed = 0
    for label, value, limit, unit in bars:
        ok = value <= limit
        missed += not ok
        print(
            f"  {label:<38} {value:10.2f} {unit:<3} <= {limit:g} {unit}: {'PASS' if ok else 'FAIL'}"
        )
    for f in failures:
        print("  problem:", f)
    out["bars_missed"] = missed
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    ray.shutdown()
    return 1 if args.check and (missed or failures) else 0


if __name__ == "__main__":
    sys.exit(main())
