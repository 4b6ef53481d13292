"""Issue 11, part 6 (SPEC 4.5): Prometheus metrics through the ``prometheus`` extra.

A real tree with real pools, registered on a fresh ``CollectorRegistry``: after checkouts,
calls, a checkout timeout, a call timeout and a real SIGKILL, the exposition text (parsed
back with ``prometheus_client``'s own parser) carries exactly ``pool.stats()`` and
``pool.status()``; pools appear and disappear with ``start_pool`` / ``stop_pool``; a failed
pool is reported failed; pools stopping during scrapes never break one; one real scrape over
HTTP on 127.0.0.1. And the core never imports ``prometheus_client``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus_client not installed (pip install 'pooly[prometheus]')"
)

from prometheus_client import CollectorRegistry, generate_latest, start_http_server  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import pooly  # noqa: E402
import pooly.prometheus  # noqa: E402
from tests.conftest import gone, wait_for  # noqa: E402
from tests.workers import Counter  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Exposition text -> ({(sample name, labels): value}, {family name: type})."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, types


def scrape(registry: CollectorRegistry) -> tuple[Samples, dict[str, str]]:
    return parse(generate_latest(registry).decode())


def of_pool(samples: Samples, pool: str) -> Samples:
    return {k: v for k, v in samples.items() if ("pool", pool) in k[1]}


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


#: Every sample name a pool with no crash has.
ALL_SERIES = {
    "pooly_pool_state",
    "pooly_pool_size",
    "pooly_pool_max_overflow",
    "pooly_idle_workers",
    "pooly_busy_workers",
    "pooly_overflow_workers",
    "pooly_spare_workers",
    "pooly_waiting_checkouts",
    "pooly_restarts_left",
    "pooly_checkouts_total",
    "pooly_checkout_timeouts_total",
    "pooly_calls_total",
    "pooly_call_timeouts_total",
    "pooly_replacements_total",
    "pooly_recycles_total",
    "pooly_overflow_started_total",
    "pooly_overflow_dismissed_total",
    "pooly_holds_total",
    "pooly_checkout_wait_seconds",
    "pooly_lease_hold_seconds",
}


def settled(pool: pooly.Pool, idle: int) -> bool:
    s = pool.status()
    return s.idle == idle and s.busy == 0 and s.overflow == 0 and len(pool.worker_pids()) == idle


def expected(status: pooly.PoolStatus, stats: pooly.PoolStats) -> Samples:
    """Every series the collector should report for a pool, from its status and stats."""
    p = ("pool", status.name)
    out: Samples = {}
    for state in ("ready", "overflow", "full", "failed"):
        out[("pooly_pool_state", frozenset({p, ("state", state)}))] = float(status.state == state)
    for name, value in [
        ("pooly_pool_size", status.size),
        ("pooly_pool_max_overflow", status.max_overflow),
        ("pooly_idle_workers", status.idle),
        ("pooly_busy_workers", status.busy),
        ("pooly_overflow_workers", status.overflow),
        ("pooly_spare_workers", status.spares),
        ("pooly_waiting_checkouts", status.waiting),
        ("pooly_restarts_left", stats.restarts_left),
        ("pooly_checkouts_total", stats.checkouts),
        ("pooly_checkout_timeouts_total", stats.checkout_timeouts),
        ("pooly_calls_total", stats.calls),
        ("pooly_call_timeouts_total", stats.call_timeouts),
        ("pooly_replacements_total", stats.replacements),
        ("pooly_recycles_total", stats.recycles),
        ("pooly_overflow_started_total", stats.overflow_started),
        ("pooly_overflow_dismissed_total", stats.overflow_dismissed),
        ("pooly_holds_total", stats.holds),
    ]:
        out[(name, frozenset({p}))] = float(value)
    for code, n in stats.crashes.items():
        sig = signal.Signals(-code).name if code < 0 else ""
        labels = frozenset({p, ("exitcode", str(code)), ("signal", sig)})
        out[("pooly_crashes_total", labels)] = float(n)
    for name, prefix in [
        ("pooly_checkout_wait_seconds", "wait"),
        ("pooly_lease_hold_seconds", "hold"),
    ]:
        for q, suffix in [("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"), ("1", "max")]:
            out[(name, frozenset({p, ("quantile", q)}))] = getattr(stats, f"{prefix}_{suffix}")
    return out


def test_metrics_equal_stats_and_status(sup: pooly.Pooly) -> None:
    """After checkouts, calls, an overflow worker, a checkout timeout, a call timeout and a
    real SIGKILL mid-lease, every series of the scrape equals ``pool.stats()`` /
    ``pool.status()`` (floats exactly), with the conventional types (``_total`` counters,
    gauges), the crash labelled ``exitcode="-9", signal="SIGKILL"``, and one state at 1."""
    pool = sup.start_pool("p", Counter, size=2, max_overflow=1, max_restarts=10, max_seconds=3600)
    registry = CollectorRegistry()
    collector = pooly.prometheus.register(sup, registry)
    assert isinstance(collector, pooly.prometheus.PoolyCollector)
    a, b = pool.checkout(timeout=5), pool.checkout(timeout=5)
    with pool.checkout(timeout=10) as c:  # an overflow worker
        c.incr()
        with pytest.raises(pooly.CheckoutTimeout):
            pool.checkout(timeout=0.05)
        # Mid-scrape state: all three busy, full.
        samples, _ = scrape(registry)
        assert one(samples, "pooly_pool_state", pool="p", state="full") == 1.0
        assert one(samples, "pooly_busy_workers", pool="p") == 3.0
        assert one(samples, "pooly_overflow_workers", pool="p") == 1.0
    a.incr(), b.incr(5)
    pool.checkin(a), pool.checkin(b)
    assert wait_for(lambda: settled(pool, 2), 10)
    with pool.checkout(timeout=5) as w:
        victim = w.pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(pooly.WorkerCrashed):
            w.incr()
    with pool.checkout(timeout=5, call_timeout=0.3) as w, pytest.raises(pooly.CallTimeout):
        w.sleep(30)
    assert wait_for(lambda: gone(victim), 10)
    assert wait_for(lambda: settled(pool, 2), 10)

    text = generate_latest(registry).decode()
    stats, status = pool.stats(), pool.status()
    samples, types = parse(text)
    assert samples == expected(status, stats), text
    # What the sequence did, as the scrape says it.
    assert one(samples, "pooly_crashes_total", pool="p", exitcode="-9", signal="SIGKILL") == 1
    assert one(samples, "pooly_checkout_timeouts_total", pool="p") == 1
    assert one(samples, "pooly_call_timeouts_total", pool="p") == 1
    assert one(samples, "pooly_overflow_started_total", pool="p") == 1
    assert one(samples, "pooly_checkouts_total", pool="p") == 5
    assert one(samples, "pooly_pool_state", pool="p", state="ready") == 1
    assert types["pooly_checkouts"] == "counter" and types["pooly_crashes"] == "counter"
    assert types["pooly_idle_workers"] == "gauge"
    assert types["pooly_checkout_wait_seconds"] == "gauge"
    assert "# TYPE pooly_calls_total counter" in text


def test_pools_appear_and_disappear_between_scrapes(sup: pooly.Pooly) -> None:
    """A pool started between scrapes appears in the next; one stopped (``stop_pool``)
    disappears; a failed pool stays, reported ``state="failed"``; after the tree's stop no
    pool is reported, and the families are still described (no sample)."""
    registry = CollectorRegistry()
    pooly.prometheus.register(sup, registry)
    samples, types = scrape(registry)
    assert samples == {} and "pooly_pool_state" in types
    sup.start_pool("a", Counter, size=1)
    samples, _ = scrape(registry)
    assert of_pool(samples, "a") and samples == of_pool(samples, "a")
    bad = sup.start_pool("b", Counter, size=1, max_restarts=0)
    samples, _ = scrape(registry)
    assert of_pool(samples, "a") and of_pool(samples, "b")
    sup.stop_pool("a")
    samples, _ = scrape(registry)
    assert not of_pool(samples, "a") and of_pool(samples, "b")
    # A crash beyond max_restarts=0 fails "b": still reported, as failed.
    (pid,) = bad.worker_pids()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: bad.status().state == "failed", 10)
    samples, _ = scrape(registry)
    assert one(samples, "pooly_pool_state", pool="b", state="failed") == 1.0
    assert one(samples, "pooly_pool_state", pool="b", state="ready") == 0.0
    assert one(samples, "pooly_crashes_total", pool="b", exitcode="-9", signal="SIGKILL") == 1
    assert samples == expected(bad.status(), bad.stats())
    sup.stop()
    samples, types = scrape(registry)
    assert samples == {} and "pooly_calls" in types


def test_pools_stopping_during_scrapes_never_break_one(sup: pooly.Pooly) -> None:
    """Pools started and stopped by another thread while scrapes run: every scrape parses,
    reports only whole pools (a pool's series all there or none) and never raises."""
    registry = CollectorRegistry()
    pooly.prometheus.register(sup, registry)
    sup.start_pool("steady", Counter, size=1)
    done = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(6):
                pool = sup.start_pool(f"churn{i}", Counter, size=1)
                pool.transaction(lambda w: w.incr())
                sup.stop_pool(f"churn{i}")
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=churn, name="churn")
    t.start()
    scrapes = 0
    seen_churn = set()
    try:
        while not done.is_set() or scrapes < 3:
            samples, _ = scrape(registry)
            scrapes += 1
            assert one(samples, "pooly_pool_size", pool="steady") == 1.0
            pools = {dict(k[1])["pool"] for k in samples}
            for name in pools - {"steady"}:
                seen_churn.add(name)
                assert {k[0] for k in of_pool(samples, name)} == ALL_SERIES, name
    finally:
        t.join(50)
    assert not errors, errors
    assert not t.is_alive()
    assert scrapes >= 3
    samples, _ = scrape(registry)
    assert {dict(k[1])["pool"] for k in samples} == {"steady"}


def test_one_scrape_over_http_on_loopback(sup: pooly.Pooly) -> None:
    """``prometheus_client.start_http_server`` on 127.0.0.1 (an ephemeral port) serves the
    collector's metrics: one real HTTP scrape with urllib gets the pool's series, equal to
    its stats; the server is shut down and its thread ended."""
    pool = sup.start_pool("web", Counter, size=1)
    assert pool.transaction(lambda w: w.incr(3)) == 3
    registry = CollectorRegistry()
    pooly.prometheus.register(sup, registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not thread.is_alive()
    samples, _ = parse(text)
    assert samples == expected(pool.status(), pool.stats())
    assert one(samples, "pooly_calls_total", pool="web") == 1.0


def test_collector_in_a_forked_child_reports_no_pool(sup: pooly.Pooly) -> None:
    """In a child forked from the tree's process the tree is not its own: a scrape there
    reports no pool (and does not raise), while the parent's still does."""
    from tests.conftest import in_forked_child

    sup.start_pool("p", Counter, size=1)
    registry = CollectorRegistry()
    pooly.prometheus.register(sup, registry)

    def child() -> object:
        return sorted({dict(k[1])["pool"] for k in scrape(registry)[0]})

    assert in_forked_child(child) == []
    assert of_pool(scrape(registry)[0], "p")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env
    )


def test_import_without_prometheus_client_says_what_to_install() -> None:
    """With prometheus_client not importable, ``import pooly.prometheus`` raises an
    ImportError naming the extra to install; ``import pooly`` still works."""
    r = run_python(
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import pooly\n"
        "try:\n"
        "    import pooly.prometheus\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'pooly[prometheus]'" in r.stdout, r.stdout


def test_the_core_does_not_import_prometheus_client() -> None:
    """``import pooly`` (and its public modules) leave prometheus_client unimported: the
    core keeps no runtime dependency."""
    r = run_python("import sys, pooly, pooly.events\nprint('prometheus_client' in sys.modules)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
