"""asyncio for pools (SPEC 4.3): ``acheckout``, :class:`AsyncLease`, ``asubmit``,
``atransaction``.

One pool serves threads and tasks alike: an asyncio task takes its place in the same FIFO
queue as the threads' checkouts, and a worker checked in by either goes to whoever is first.
Nothing here makes a thread per waiter or per call:

* A waiting task's place in the queue (a pool ``_Waiter``) is woken by
  :class:`_LoopWake` -- the pool "releases" it, under its lock, from whichever thread
  checked a worker in -- which resolves the task's future on its own loop
  (``call_soon_threadsafe``; ``call_soon`` from the loop's own thread).
* A call writes its request (a frame too large for the pipe's guaranteed room goes in
  pieces as the pipe drains, never blocking the loop) and reads the reply when the loop sees
  the worker's reply pipe readable (``add_reader``). The worker's fds stay as they are:
  blocking, read only once readable.

Cancellation. A task cancelled while waiting leaves the queue at once (``Pool._abandon``:
a worker handed to it in the same loop iteration goes on to the next in line, never lost).
A task cancelled during a call gets ``CancelledError``; the worker, whose state is unknown,
is killed and replaced (the pool's decision, not counted as a crash) and the lease ends, so
a checkin afterwards is a quiet no-op. ``call_timeout`` applies as it does for threads.

A task that ends holding a lease gives it back from its done-callback; one destroyed
without ending (its loop closed under it) gives it back when it is collected
(:mod:`pooly._owner`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import select
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import CallTimeout, LeaseError
from ._fds import HOST
from ._owner import current_leases
from ._worker import _HDR, _HDR_SIZE, _PROTO, _READ_CHUNK

_pdumps, _ploads, _pack, _unpack_from = pickle.dumps, pickle.loads, _HDR.pack, _HDR.unpack_from

if TYPE_CHECKING:
    from ._pool import Lease, Pool, _Waiter

__all__ = ("AsyncLease",)

T = TypeVar("T")

#: Frames up to this size are written at once: a pipe always has that much room for a
#: request (the worker has read every earlier one), even at its smallest (one page).
_ATOMIC = 4096


class _LoopWake:
    """The ``lock`` of a waiting task's place in the pool's queue: the pool releases it
    (under its own lock, from any thread) when it serves the place; that resolves the
    task's future on its loop."""

    __slots__ = ("future", "loop", "pool", "thread", "waiter")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], pool: Pool
    ) -> None:
        self.loop = loop
        self.future = future
        self.pool = pool
        self.thread = threading.get_ident()
        self.waiter: _Waiter | None = None  # (set once the place is made)

    def release(self) -> None:
        try:
            if threading.get_ident() == self.thread:
                self.loop.call_soon(_resolve, self.future)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its loop is closed: no one will ever take what it was sent
            waiter = self.waiter
            if waiter is not None:  # (we are under the pool's lock: give it back off it)
                _abandon_off_thread(self.pool, waiter)


def _abandon_off_thread(pool: Pool, waiter: _Waiter) -> None:
    """``pool._abandon(waiter)`` from a thread of its own: the caller may hold the pool's
    lock (or run inside the GC on a thread that does)."""
    threading.Thread(
        target=pool._abandon, args=(waiter,), name="pooly-abandon", daemon=True
    ).start()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ACheckout:
    """What ``pool.acheckout()`` returns: await it for an :class:`AsyncLease` (check it in
    with ``pool.checkin``), or use it as ``async with`` (checked in on exit)."""

    __slots__ = ("_lease", "_per_call", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None, per_call: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._per_call = per_call
        self._lease: AsyncLease | None = None

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return acheckout(self._pool, self._timeout, self._per_call).__await__()

    def __aenter__(self) -> Awaitable[AsyncLease]:  # (no coroutine of its own: one less)
        return acheckout(self._pool, self._timeout, self._per_call, self)

    async def __aexit__(self, *exc: object) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._pool.checkin(lease)


async def acheckout(
    pool: Pool, timeout: float | None, per_call: float | None, keep: ACheckout | None = None
) -> AsyncLease:
    """Lease a worker for the calling task: at once if one is idle, else an overflow worker
    (started off the loop), else a place in the pool's FIFO queue, woken when served.
    ``keep``: the ``async with`` that checks it in on exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    wake = _LoopWake(loop, future, pool)
    # Our ticket, and our place in the queue if we must wait. The leases are the task's
    # (given back if it ends holding them) -- but a task about to wait is made the holder
    # only once served: 10,000 waiting tasks then hold fewer objects for the cyclic GC to
    # walk (see _hold). Until then, what it is handed is given back by _abandon if it is
    # cancelled, or closed pending (GeneratorExit, below).
    waiting = not pool._idle
    ticket = wake.waiter = _pool._Waiter({} if waiting else current_leases(), wake)
    try:
        lease = pool._enter(ticket, per_call, True)
        if lease is None:
            wid = ticket.slot
            if wid is None:  # queued: wait to be served
                if timeout is None:
                    await future
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            await future
                    except TimeoutError:
                        if pool._withdraw(ticket):  # (else served meanwhile: take it)
                            raise pool._checkout_timeout(timeout) from None
                got = ticket.result
                if isinstance(got, _pool._OverflowSlot):
                    ticket.result = None  # (started below: _abandon must not drop it)
                    wid = got.wid
                elif isinstance(got, _pool.Lease):
                    lease = got
                else:
                    assert isinstance(got, BaseException)
                    raise got
            if wid is not None:
                lease = await _start_overflow(loop, pool, wid, ticket.leases)
    except GeneratorExit:
        # The task was destroyed pending (its loop closed): this runs inside the cyclic
        # GC, perhaps on a thread holding the pool's lock -- leave the queue off it.
        _abandon_off_thread(pool, ticket)
        raise
    except BaseException:
        # Cancelled (or failed) with a place taken: leave the queue. A worker handed to us
        # in the same loop iteration goes on to the next in line, never lost.
        pool._abandon(ticket)
        raise
    finally:
        wake.waiter = None  # (no cycle: both go with this frame)
    assert lease is not None
    if waiting:
        pool._hold(lease, current_leases())
    lease._call_timeout = per_call
    h = lease._worker
    alease = async_lease_class(h.cls_name, h.methods)(lease)
    if keep is not None:
        keep._lease = alease
    return alease


async def _start_overflow(
    loop: asyncio.AbstractEventLoop, pool: Pool, wid: str, leases: dict[Any, None]
) -> Lease:
    """Start an overflow worker off the loop (a process start takes milliseconds). If the
    task is cancelled meanwhile, the worker is checked in once started."""
    started = loop.run_in_executor(None, pool._checkout_overflow, wid, leases)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(functools.partial(_check_in_started, pool))
        raise


def _check_in_started(pool: Pool, started: asyncio.Future[Lease]) -> None:
    if not started.cancelled() and started.exception() is None:
        pool.checkin(started.result())


class AsyncLease:
    """A worker leased to an asyncio task: its public methods are awaited
    (``await w.incr(2)``, ``await w.call("incr", 2)``). ``pid``, ``active`` as a
    :class:`~pooly.Lease`; check it in with ``pool.checkin`` (or ``async with``).

    A call cancelled part-way (``task.cancel()``, ``asyncio.timeout()``) raises
    ``CancelledError``: the worker is killed and replaced and this lease ends.
    """

    __slots__ = ("__weakref__", "_lease", "_ready")

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        # Is the reply there already? (One poll(0): on a busy CPU it often is, and the
        # call then needs no trip through the loop.)
        self._ready = select.poll()
        fd = lease._worker.rep_r
        if fd >= 0:  # (else its worker died and its fds were closed: a call says so)
            self._ready.register(fd, select.POLLIN)

    @property
    def pid(self) -> int:
        """The worker's OS process id."""
        return self._lease.pid

    @property
    def active(self) -> bool:
        """True until the lease is checked in, reclaimed, interrupted, or its worker dies."""
        return self._lease.active

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the worker's public method named ``method`` with these arguments."""
        w = self._lease._worker
        if not isinstance(method, str) or method.startswith("_"):
            raise AttributeError(
                f"{method!r}: only public methods of the worker class can be called"
            )
        if method not in w.methods:
            raise AttributeError(f"worker class {w.cls_name} has no public method {method!r}")
        return await self._call(method, args, kwargs)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        # Reached only for names the pool's generated class does not define: say why.
        if name.startswith("_"):
            raise AttributeError(
                f"{name!r}: only public methods of the worker class can be called through a lease"
            )
        w = self._lease._worker
        if name not in w.methods:
            raise AttributeError(f"worker class {w.cls_name} has no public method {name!r}")
        return functools.partial(self.call, name)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._lease._pool.checkin(self)

    def __reduce__(self) -> Any:
        raise TypeError(
            "an AsyncLease can't be pickled or sent to another process: it is a right to use "
            "one worker, held by the task that checked it out"
        )

    def __repr__(self) -> str:
        return repr(self._lease).replace("<Lease", "<AsyncLease", 1)

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One call from a task: write the request, read the reply once it is there."""
        lease = self._lease
        pool = lease._pool
        if pool._gen != HOST.gen:
            raise pool._forked_error()
        h = lease._worker
        if not lease._in_call.acquire(False) and not (
            # A dead worker's fds being closed (the supervisor holds the lock for that
            # instant): wait it out, and the dead channel says WorkerCrashed.
            h.exited.is_set() and lease._in_call.acquire(timeout=_pool._CLOSING_WAIT)
        ):
            raise LeaseError(
                f"lease on worker pid {h.pid} of pool {pool.name!r} is already in a call; a "
                "lease serves one call at a time"
            )
        try:
            if lease._ended is not None:
                raise lease._ended_error()
            try:
                data = _pdumps((name, args, kwargs), _PROTO)
            except Exception:
                data = h._dumps(name, args, kwargs)  # type: ignore[attr-defined]  # (explains)
            rid = h._rid + 1  # type: ignore[attr-defined]
            h._rid = rid  # type: ignore[attr-defined]
            frame = _pack(len(data), rid) + data
            limit = lease._call_timeout
            try:
                if limit is None:
                    reply = await self._round_trip(frame)
                else:
                    try:
                        async with asyncio.timeout(limit):
                            reply = await self._round_trip(frame)
                    except TimeoutError:
                        pool._timed_out(lease)
                        raise CallTimeout(
                            f"{name}() on worker pid {h.pid} of pool {pool.name!r} did not "
                            f"return within its call_timeout of {limit:g}s; the worker was "
                            "killed and is being replaced, and this lease has ended",
                            pid=h.pid,
                            timeout=limit,
                        ) from None
            except asyncio.CancelledError:
                # Its state is unknown (a request half-written, a reply half-read, a
                # method half run): it is killed and replaced, and the lease ends.
                h.broken = True
                pool._interrupted(lease)
                raise
            if reply is None:  # its reply pipe ended: the worker is gone
                pool._lease_crashed(lease)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, h.exited.wait, 5.0)  # (its exit status)
                raise h.crashed_error(during=f"{name}()")
            got = _unpack_from(reply)[1]
            if got != rid:
                raise h._out_of_step(got, rid)  # type: ignore[attr-defined]
            return h._decode(name, memoryview(reply)[_HDR_SIZE:])  # type: ignore[attr-defined]
        finally:
            lease._end_call()
            if lease._orphaned:
                pool._reclaim(lease)

    async def _round_trip(self, frame: bytes) -> bytes | None:
        """Write ``frame``, then read one reply frame, never blocking the loop. None: the
        reply pipe ended (the worker is gone)."""
        h = self._lease._worker
        loop = asyncio.get_running_loop()
        try:
            if len(frame) <= _ATOMIC:
                os.write(h.req_w, frame)
            else:
                await _write_big(loop, h.req_w, frame)
        except OSError:
            return None  # (its reply pipe's EOF says so too; no need to wait for it)
        rfd = h.rep_r
        buf: bytes | bytearray = b""
        need = _HDR_SIZE
        while True:
            # Only the first read may skip the loop (a small reply already there): a large
            # one is read a pipeful per loop iteration, so other tasks run meanwhile.
            if buf or not self._ready.poll(0):
                await self._reply_ready(loop, rfd)
            try:
                chunk = os.read(rfd, max(_READ_CHUNK, need - len(buf)))
            except OSError:
                chunk = b""
            if not chunk:
                return None
            if not buf:
                buf = chunk
            else:  # (a large reply: gathered in place, not copied over and over)
                if isinstance(buf, bytes):
                    buf = bytearray(buf)
                buf += chunk
            if len(buf) >= _HDR_SIZE:
                need = _HDR_SIZE + _unpack_from(buf)[0]
                if len(buf) >= need:
                    return bytes(buf) if isinstance(buf, bytearray) else buf

    async def _reply_ready(self, loop: asyncio.AbstractEventLoop, rfd: int) -> None:
        """Until the reply pipe is readable -- or the worker was reaped: reaping points the
        fd at a dead pipe, which the loop's registration (for the old pipe) never sees, so
        the pool calls ``_on_exit`` then."""
        lease = self._lease
        future: asyncio.Future[None] = loop.create_future()
        lease._on_exit = functools.partial(_resolve_threadsafe, loop, future)
        try:
            if lease._worker.exited.is_set():  # (reaped before we asked to hear of it)
                return
            loop.add_reader(rfd, _resolve, future)
            try:
                await future
            finally:
                loop.remove_reader(rfd)
                _blocking_again(rfd)
        finally:
            lease._on_exit = None


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:  # (its loop is closed: nobody waits any more)
        pass


def _blocking_again(fd: int) -> None:
    """Some loops (uvloop) make an fd they watch non-blocking: a thread's blocking read of
    the worker's next reply must not find it so."""
    try:
        if not os.get_blocking(fd):
            os.set_blocking(fd, True)
    except OSError:
        pass


@functools.lru_cache(maxsize=256)
def async_lease_class(cls_name: str, methods: frozenset[str]) -> type[AsyncLease]:
    """An AsyncLease subclass with a coroutine method per public worker method (as
    ``_pool._lease_class`` makes for threads): no ``__getattr__`` and partial per call."""
    own = set(dir(AsyncLease))
    body: dict[str, Any] = {"__slots__": ()}
    body.update({m: _remote_method(m) for m in sorted(methods) if m not in own})
    return type(f"AsyncLease[{cls_name}]", (AsyncLease,), body)


def _remote_method(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: AsyncLease, /, *args: Any, **kwargs: Any) -> Any:
        return await self._call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Await the worker's ``{name}`` method."
    return method


async def _write_big(loop: asyncio.AbstractEventLoop, fd: int, frame: bytes) -> None:
    """A large request, as the pipe drains (non-blocking for the length of the write)."""
    view = memoryview(frame)
    os.set_blocking(fd, False)
    try:
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                n = 0
            view = view[n:]
            if view:
                await _writable(loop, fd)
    finally:
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until ``fd`` is writable."""
    future: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _resolve, future)
    try:
        await future
    finally:
        loop.remove_writer(fd)


# Last: _pool imports this module (for ACheckout and AsyncLease), and this one uses _pool's
# names at run time only -- imported here, either module may be imported first.
from . import _pool  # noqa: E402
