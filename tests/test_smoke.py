"""The SPEC §3 example, end to end."""

import pooly
from tests.workers import Counter


def test_spec_example(sup: pooly.Pooly) -> None:
    pool = sup.start_pool(
        "counters",
        Counter,
        args=(10,),
        kwargs={},
        size=3,
        max_overflow=2,
        strategy="lifo",
        max_restarts=3,
        max_seconds=5,
    )
    assert sup.pool("counters") is pool
    with pool.checkout(timeout=5) as w:
        assert w.incr(2) == 12
        assert isinstance(w.pid, int)
    w = pool.checkout(block=False)
    pool.checkin(w)
    assert pool.transaction(lambda w: w.incr()) in (11, 13)
    s = pool.status()
    assert (s.state, s.idle, s.busy, s.overflow, s.waiting) == ("ready", 3, 0, 0, 0)
    assert [p.name for p in sup.pools()] == ["counters"]
    sup.stop_pool("counters")
    assert sup.pools() == []
