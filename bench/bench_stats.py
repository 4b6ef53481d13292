#!/usr/bin/env python3
"""Issue 11's bar: what observing a pool costs (``python bench/bench_stats.py [--quick]
[--baseline REV]``).

Three contenders, each a fresh process pinned to the same CPU (started before any thread,
so its workers inherit it), run in rotating order (A B C, B C A, ...) for several rounds:

- ``off``: the code at ``--baseline`` (default :data:`BASELINE`, the last commit before
  stats and events existed -- "off", as pools ran before), extracted with ``git archive``;
- ``stats``: this code, no subscriber (stats are always on);
- ``stats+sub``: this code, stats and one subscriber (a callback counting events).

Each measures, on its own tree:

1. a call through a checked-out worker, ``lease.echo(msg)`` (16 bytes), per-call samples;
2. uncontended ``checkout()`` + ``checkin()`` on a pool of two, batches of 1000, per-op
   time: a worker stays idle, so the pool's state never changes;
3. the same on a pool of one: each checkout makes the pool "full", each checkin "ready"
   again -- 2 state changes per op, noted for the subscriber and summed up per delivery
   (see ``StateNote``): the worst case, shown for information, not judged.

A round's figure is the median call, and the best batch of 1000 checkouts (the one the
machine's other work disturbed least: at ~4 us an op, a batch is 4 ms, a scheduler tick);
the table shows the median over the rounds. The bar: stats+sub / off <= 1.1 for 1 and 2.
Exits 1 if missed. Also printed: stats / off (what counting costs).

Kept tiny at module level (only ``os``/``sys``): on CPython 3.11/3.12 the forkserver
re-runs the main script in every worker it forks (see bench.py's docstring).
"""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

BAR = 1.1
#: The last commit before pool.stats() and events (42d7f83 added them).
BASELINE = "fa808bc"
SIDES = ("off", "stats", "stats+sub")
#: (key, label, judged): the size-1 row is the worst case, shown for information -- every
#: checkout and checkin there changes the pool's state, so with a subscriber each op notes
#: two state changes the subscriber asked to hear about, which "off" never makes.
ROWS = (
    ("call", "call round trip (us)", True),
    ("co2", "checkout+checkin, size 2 (us)", True),
    ("co1", "checkout+checkin, size 1 (us)", False),
)


def child(side: str, quick: bool, cpu: int) -> None:
    """One contender's round: print its medians (ns) as JSON on stdout."""
    import json
    import statistics
    import time

    from _bench_workers import Echo

    import pooly

    os.sched_setaffinity(0, {cpu})
    calls = 500 if quick else 2000
    batches = 3 if quick else 10
    batch = 1000
    pc = time.perf_counter_ns
    msg = b"x" * 16
    seen = [0]

    def count(event: object) -> None:
        seen[0] += 1

    out: dict[str, float] = {}
    with pooly.Pooly() as sup:
        sub = sup.subscribe(count) if side == "stats+sub" else None
        two = sup.start_pool("bench-2", Echo, size=2)
        one = sup.start_pool("bench-1", Echo, size=1)
        samples: list[float] = []
        with two.checkout() as lease:
            echo = lease.echo
            for _ in range(100):  # (warm-up)
                echo(msg)
            for _ in range(calls):
                t = pc()
                echo(msg)
                samples.append(pc() - t)
        out["call"] = statistics.median(samples)
        for key, pool in (("co2", two), ("co1", one)):
            checkout, checkin = pool.checkout, pool.checkin
            per_op: list[float] = []
            for _ in range(batches + 1):
                t = pc()
                for _ in range(batch):
                    checkin(checkout())
                per_op.append((pc() - t) / batch)
            out[key] = min(per_op[1:])  # (the best batch: the least disturbed; 1st warms up)
        if sub is not None:
            out["dropped"] = sub.dropped
        out["version"] = pooly.__file__
    if sub is not None:
        out["events"] = seen[0]
    print(json.dumps(out))


def main(argv: list[str]) -> int:
    import json
    import shutil
    import statistics
    import subprocess
    import tempfile

    if "--child" in argv:
        i = argv.index("--child")
        child(argv[i + 1], "--quick" in argv, int(argv[i + 2]))
        return 0
    quick = "--quick" in argv
    rounds = 2 if quick else 9
    base = argv[argv.index("--baseline") + 1] if "--baseline" in argv else BASELINE
    here = os.path.dirname(BENCH_DIR)
    cpu = max(os.sched_getaffinity(0))
    tmp = tempfile.mkdtemp(prefix="pooly-bench-stats-")
    try:
        try:
            archive = subprocess.run(
                ["git", "-C", here, "archive", base, "src"],
                check=True,
                capture_output=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            err = getattr(e, "stderr", b"") or b""
            print(f"bench_stats: cannot read the baseline {base!r} from git: {e} {err!r}")
            return 2
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        ours = os.path.join(here, "src")
        srcs = {"off": os.path.join(tmp, "src"), "stats": ours, "stats+sub": ours}
        got: dict[str, dict[str, list[float]]] = {s: {k: [] for k, _, _ in ROWS} for s in SIDES}
        extra: dict[str, float] = {"events": 0, "dropped": 0}
        for r in range(rounds):
            order = SIDES[r % 3 :] + SIDES[: r % 3]
            for side in order:
                env = dict(os.environ, PYTHONPATH=srcs[side])
                args = [sys.executable, __file__, "--child", side, str(cpu)]
                proc = subprocess.run(
                    args + (["--quick"] if quick else []),
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if proc.returncode != 0:
                    print(f"bench_stats: the {side!r} round failed:\n{proc.stderr}")
                    return 2
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                if not res["version"].startswith(srcs[side]):
                    print(f"bench_stats: {side!r} ran {res['version']}, not {srcs[side]}")
                    return 2
                for k, _, _ in ROWS:
                    got[side][k].append(res[k])
                for k in extra:
                    extra[k] += res.get(k, 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"bench_stats: {rounds} rounds, a process per contender per round, rotating order, "
        f"all pinned to CPU {cpu}; median over rounds; off = {base}"
    )
    print(
        f"{'':32}{'off':>10}{'stats':>10}{'stats+sub':>11}"
        f"{'stats/off':>11}{'sub/off':>9}  bar {BAR}x (sub/off)"
    )
    ok = True
    for key, label, judged in ROWS:
        a, b, c = (statistics.median(got[s][key]) / 1e3 for s in SIDES)
        verdict = ("PASS" if c / a <= BAR else "FAIL") if judged else "(info: 2 changes/op)"
        ok &= c / a <= BAR or not judged
        print(f"{label:32}{a:10.2f}{b:10.2f}{c:11.2f}{b / a:11.3f}{c / a:9.3f}  {verdict}")
    n, dropped = extra["events"], extra["dropped"]
    print(f"events delivered to the subscriber {n:.0f}, dropped {dropped:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
