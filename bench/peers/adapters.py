"""One adapter per peer: the same few operations through each pool's own natural API.

Every adapter starts its pool in ``__init__`` (``workers`` worker processes) and offers:

- ``map(name, items)``: the peer's bulk API with chunksize 1 where it has one, in order;
- ``rtt()``: a context manager giving ``f(x)``, one lone round trip of ``echo`` (latency);
- ``call(name, x)``: what one of many concurrent callers does (threads);
- ``acall(name, x)``: the same from an asyncio task;
- ``close()``: shut the pool down, waiting for its processes (also after an error).

``name`` is a function of :mod:`peers.tasks` (``echo``, ``spin``, ``getpid``); pooly's lease
and Ray's actors call the method of the same name on :class:`peers.tasks.Echo`. ``API`` says,
per peer, which calls are used: the generated page prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from peers import tasks

PEER_IDS = (
    "pooly-executor",
    "pooly-lease",
    "stdlib",
    "mp-pool",
    "pebble",
    "loky",
    "mpire",
    "deadpool",
    "ray",
)
POOLY = ("pooly-executor", "pooly-lease")
#: Peers that fork from this process: started first in every workload (before this
#: process has threads of its own from the other pools).
FORKING_FIRST = ("mp-pool", "mpire", "pebble")
TIMEOUT = 300.0  # any single wait: a hung peer fails that call instead of the whole run

MP_DEFAULT = multiprocessing.get_start_method(allow_none=False)

API = {
    "pooly-executor": "pooly.ProcessPoolExecutor (forkserver): map(chunksize=1), "
    "submit().result(), await asubmit()",
    "pooly-lease": "sup.start_pool(Echo): leases held by one thread per worker (map), "
    "a held lease's lease.echo(x) (latency), checkout → call → checkin per caller "
    "(with pool.checkout() / async with pool.acheckout())",
    "stdlib": "concurrent.futures.ProcessPoolExecutor(mp_context=forkserver): map, "
    "submit().result(), loop.run_in_executor",
    "mp-pool": f"multiprocessing.Pool ({MP_DEFAULT}, its default here): imap(chunksize=1), "
    "apply_async().get(), apply_async(callback → loop.call_soon_threadsafe)",
    "pebble": "pebble.ProcessPool (multiprocessing's default context, "
    f"{MP_DEFAULT}): map(chunksize=1), schedule().result(), asyncio.wrap_future(schedule())",
    "loky": "loky.ProcessPoolExecutor (loky's own spawn-based context): map(chunksize=1), "
    "submit().result(), loop.run_in_executor",
    "mpire": "mpire.WorkerPool(keep_alive=True, start_method=fork, its default): "
    "map(chunk_size=1), apply_async().get(), apply_async(callback → call_soon_threadsafe)",
    "deadpool": "deadpool.Deadpool (forkserver, its default): Executor.map (a submit per "
    "task), submit().result(), loop.run_in_executor",
    "ray": "ray.util.ActorPool of ray.remote(Echo) actors (local ray.init, 127.0.0.1): "
    "ActorPool.map, ActorPool.submit + get_next; concurrent callers (ActorPool is not "
    "thread-safe) call the actors round-robin: ray.get(a.echo.remote(x)) / await a.echo.remote(x)",
}


def fn(name: str) -> Callable[[Any], Any]:
    return getattr(tasks, name)  # type: ignore[no-any-return]


class Peer:
    id = ""

    def map(self, name: str, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        """``map`` with ``chunksize`` tasks sent together, or None if the peer can't."""
        return None

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        raise NotImplementedError

    async def acall(self, name: str, x: Any) -> Any:
        raise NotImplementedError

    @contextlib.contextmanager
    def rtt(self) -> Iterator[Callable[[Any], Any]]:
        yield lambda x: self.call("echo", x)

    def close(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """:meth:`close`, once (later calls do nothing)."""
        if not getattr(self, "_stopped", False):
            self._stopped = True
            self.close()


class _Executor(Peer):
    """Anything that is a concurrent.futures.Executor."""

    ex: Any

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.ex.map(fn(name), items, chunksize=1))

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        return list(self.ex.map(fn(name), items, chunksize=chunksize))

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        return self.ex.submit(fn(name), x).result(timeout)

    async def acall(self, name: str, x: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.ex, fn(name), x)

    def close(self) -> None:
        self.ex.shutdown(wait=True)


class PoolyExecutor(_Executor):
    id = "pooly-executor"

    def __init__(self, workers: int) -> None:
        import pooly

        self.ex = pooly.ProcessPoolExecutor(max_workers=workers)

    async def acall(self, name: str, x: Any) -> Any:
        return await self.ex.asubmit(fn(name), x)


class PoolyLease(Peer):
    id = "pooly-lease"

    def __init__(self, workers: int) -> None:
        import pooly

        self.workers = workers
        self.sup = pooly.Pooly()
        try:
            self.pool = self.sup.start_pool("bench", tasks.Echo, size=workers)
        except BaseException:
            self.sup.stop()
            raise

    def map(self, name: str, items: list[Any]) -> list[Any]:
        """One thread per worker, each holding a lease for its share (every w-th item)."""
        w = self.workers
        out: list[Any] = [None] * len(items)
        errors: list[BaseException] = []

        def part(k: int) -> None:
            try:
                with self.pool.checkout(timeout=TIMEOUT) as lease:
                    f = getattr(lease, name)
                    for i in range(k, len(items), w):
                        out[i] = f(items[i])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=part, args=(k,)) for k in range(w)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    @contextlib.contextmanager
    def rtt(self) -> Iterator[Callable[[Any], Any]]:
        with self.pool.checkout(timeout=TIMEOUT) as lease:
            yield lease.echo

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        with self.pool.checkout(timeout=timeout) as lease:
            return lease.call(name, x)

    async def acall(self, name: str, x: Any) -> Any:
        async with self.pool.acheckout(timeout=TIMEOUT) as lease:
            return await lease.call(name, x)

    def close(self) -> None:
        self.sup.stop()


class Stdlib(_Executor):
    id = "stdlib"

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("forkserver")
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


class Loky(_Executor):
    id = "loky"

    def __init__(self, workers: int) -> None:
        import loky

        self.ex = loky.ProcessPoolExecutor(max_workers=workers)


class Deadpool(_Executor):
    id = "deadpool"

    def __init__(self, workers: int) -> None:
        import deadpool

        self.ex = deadpool.Deadpool(max_workers=workers)

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.ex.map(fn(name), items))  # Executor.map: no chunksize in deadpool

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        return None  # Executor.map's chunksize is ignored by deadpool


class _ApplyAsync(Peer):
    """Peers whose call is ``pool.apply_async(fn, args)`` with an AsyncResult and callbacks
    (multiprocessing.Pool, mpire): one call path for both."""

    pool: Any

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        return self.pool.apply_async(fn(name), (x,)).get(timeout)

    async def acall(self, name: str, x: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def ok(v: Any) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(v))

        def err(e: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(e))

        self.pool.apply_async(fn(name), (x,), callback=ok, error_callback=err)
        return await fut


class MpPool(_ApplyAsync):
    id = "mp-pool"

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.Pool(workers)

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.pool.imap(fn(name), items, chunksize=1))

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        return self.pool.map(fn(name), items, chunksize=chunksize)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Pebble(Peer):
    id = "pebble"

    def __init__(self, workers: int) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=workers)

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn(name), items, chunksize=1).result())

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        return list(self.pool.map(fn(name), items, chunksize=chunksize).result())

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        return self.pool.schedule(fn(name), args=(x,)).result(timeout)

    async def acall(self, name: str, x: Any) -> Any:
        return await asyncio.wrap_future(self.pool.schedule(fn(name), args=(x,)))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Mpire(_ApplyAsync):
    id = "mpire"

    def __init__(self, workers: int) -> None:
        import mpire

        self.pool = mpire.WorkerPool(n_jobs=workers, keep_alive=True)

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn(name), items, chunk_size=1))

    def map_chunked(self, name: str, items: list[Any], chunksize: int) -> list[Any] | None:
        return list(self.pool.map(fn(name), items, chunk_size=chunksize))

    def close(self) -> None:
        # Not stop_and_join(): it waits forever for workers that died (measured here after
        # concurrent apply_async calls broke them); terminate() stops and joins them.
        self.pool.terminate()


class Ray(Peer):
    """ray.util.ActorPool; Ray itself is started by the workload (:func:`ray_session`)."""

    id = "ray"

    def __init__(self, workers: int) -> None:
        import ray
        from ray.util import ActorPool

        self.ray = ray
        cls = ray.remote(num_cpus=0)(tasks.Echo)
        self.actors = [cls.remote() for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._next = 0
        self._lock = threading.Lock()

    def map(self, name: str, items: list[Any]) -> list[Any]:
        return list(self.pool.map(lambda a, v: getattr(a, name).remote(v), items))

    def call(self, name: str, x: Any, timeout: float = TIMEOUT) -> Any:
        with self._lock:
            a = self.actors[self._next % len(self.actors)]
            self._next += 1
        return self.ray.get(getattr(a, name).remote(x), timeout=timeout)

    @contextlib.contextmanager
    def rtt(self) -> Iterator[Callable[[Any], Any]]:
        pool = self.pool

        def one(x: Any) -> Any:
            pool.submit(lambda a, v: a.echo.remote(v), x)
            return pool.get_next(timeout=TIMEOUT)

        yield one

    async def acall(self, name: str, x: Any) -> Any:
        a = self.actors[self._next % len(self.actors)]
        self._next += 1
        return await getattr(a, name).remote(x)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


CLASSES: dict[str, type[Peer]] = {
    c.id: c for c in (PoolyExecutor, PoolyLease, Stdlib, MpPool, Pebble, Loky, Mpire, Deadpool, Ray)
}


def ray_available() -> str | None:
    """None if Ray can be imported, else why not."""
    try:
        import ray  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def ray_session(peers: list[str], workers: int) -> Iterator[None]:
    """A local Ray for the workload if ``ray`` is among ``peers``; shut down at the end."""
    if "ray" not in peers:
        yield
        return
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
    )
    try:
        yield
    finally:
        ray.shutdown()


def order(peers: list[str]) -> list[str]:
    """Start order: the forking peers first, then the rest as given."""
    return [p for p in peers if p in FORKING_FIRST] + [p for p in peers if p not in FORKING_FIRST]


@contextlib.contextmanager
def started(peers: list[str], workers: int) -> Iterator[dict[str, Peer | str]]:
    """Every peer started (in :func:`order`); a peer that fails to start maps to its error.
    The dict yielded is in the order of ``peers``; a workload may replace a peer in it by a
    fresh one (closing the old itself). Every peer in it at the end, and every one started
    here, is closed, whatever happens."""
    out: dict[str, Peer | str] = {}
    view: dict[str, Peer | str] = {}
    try:
        for pid in order(peers):
            try:
                out[pid] = CLASSES[pid](workers)
            except Exception as e:
                out[pid] = f"failed to start: {type(e).__name__}: {e}"
        view.update({p: out[p] for p in peers if p in out})
        yield view
    finally:
        todo = [out[p] for p in reversed(list(out))]
        todo += [v for v in view.values() if not any(v is t for t in todo)]
        for peer in todo:
            if isinstance(peer, Peer):
                p = peer.id
                try:
                    peer.stop()
                except Exception as e:
                    print(f"bench-peers: closing {p} failed: {type(e).__name__}: {e}")
