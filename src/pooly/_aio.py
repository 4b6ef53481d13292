"""asyncio for pools (SPEC 4.3): ``acheckout``, :class:`AsyncLease`, ``asubmit``,
``atransaction``.

One pool serves threads and tasks alike: an asyncio task takes its place in the same FIFO
queue as the threads' checkouts, and a worker checked in by either goes to whoever is first.
Nothing here makes a thread per waiter or per call:

* A waiting task's place in the queue is its :class:`ACheckout`, which is also what the
  task awaits: the pool wakes it, under its lock, from whichever thread checked a worker in,
  and it resolves itself on its own loop (``call_soon_threadsafe``; ``call_soon`` from the
  loop's own thread).
* A call writes its request (a frame too large for the pipe's guaranteed room goes in
  pieces as the pipe drains, never blocking the loop) and reads the reply when the loop sees
  the worker's reply pipe readable (``add_reader``). The worker's fds stay as they are:
  blocking, read only once readable.

Cancellation. A task cancelled while waiting leaves the queue at once (``Pool._abandon``:
a worker handed to it in the same loop iteration goes on to the next in line, never lost).
A task cancelled during a call gets ``CancelledError``; the worker, whose state is unknown,
is killed and replaced (the pool's decision, not counted as a crash) and the lease ends, so
a checkin afterwards is a quiet no-op -- as is the worker running an ``asubmit`` call that
had started (``_pool._await_task``). ``call_timeout`` applies as it does for threads.

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
from ._owner import LeaseSet, _leases_of_task, current_leases
from ._worker import _HDR, _HDR_SIZE, _PROTO, _READ_CHUNK

_pdumps, _ploads, _pack, _unpack_from = pickle.dumps, pickle.loads, _HDR.pack, _HDR.unpack_from

if TYPE_CHECKING:
    from ._pool import Lease, Pool, _OverflowSlot, _Waiter

__all__ = ("AsyncLease",)

T = TypeVar("T")

#: Frames up to this size are written at once: a pipe always has that much room for a
#: request (the worker has read every earlier one), even at its smallest (one page).
_ATOMIC = 4096


_PENDING, _DONE, _FAILED, _CANCELLED = 0, 1, 2, 3


class ACheckout:
    """What ``pool.acheckout()`` returns: await it for an :class:`AsyncLease` (check it in
    with ``pool.checkin``), or use it as ``async with`` (checked in on exit). Nothing
    happens until it is awaited (or entered), once.

    One object is the whole checkout: the awaitable, the task's ticket in the pool's queue
    (the fields of a pool ``_Waiter``: ``got``, ``leases``, ``lock``, ``slot``), and the
    future-like object its task waits on (asyncio's tasks accept any object that follows
    the Future protocol: ``_asyncio_future_blocking``, ``add_done_callback``, ``result``,
    ``cancel``, ``get_loop``). So a task waiting for a worker holds no more objects for the
    cyclic GC to walk than a bare task awaiting a future (10,000 waiting tasks: see
    ``make bench``, item 13), and a worker handed to a task cancelled in the same loop
    iteration is seen (:meth:`throw`) and goes to the next in line.

    The pool serves its place from whichever thread checked a worker in, under the pool's
    lock (:meth:`wake`); that runs :meth:`_served` on the task's loop, which makes the
    :class:`AsyncLease` its result.
    """

    __slots__ = (
        "_asyncio_future_blocking",  # (asyncio's Future protocol: set by the task)
        "_callback",
        "_context",
        "_loop",
        "_per_call",
        "_pool",
        "_state",
        "_task",
        "_thread",
        "_timeout",
        "_value",
        "got",
        "holder",
        "leases",
        "lock",
        "slot",
        "t0",
    )

    def __init__(self, pool: Pool, timeout: float | None, per_call: float | None) -> None:
        self._pool = pool
        self._timeout: float | asyncio.TimerHandle | None = timeout  # (its timer, once begun)
        self._per_call = per_call
        self._state = _PENDING
        self._value: Any = None  # the AsyncLease (or the error) once done
        self._loop: asyncio.AbstractEventLoop | None = None  # (None: not begun)
        self._callback: Callable[[Any], object] | None = None
        self._context: Any = None
        # None, not False: asyncio.isfuture() says no until the task waits on it, so
        # ensure_future(), gather() and wait_for() await it (which begins it).
        self._asyncio_future_blocking: bool | None = None
        # The ticket's fields (a pool _Waiter's), set when it begins.
        self.got: Lease | _OverflowSlot | BaseException | None = None
        self.slot: str | None = None
        self.lock = True  # (not a thread's: the pool wakes it with wake())
        self.t0: float | None = None  # when it began (the pool's clock): its wait is counted
        self.holder: str | None = None  # its task's name (or its thread's)

    # -- what a task awaits ----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        if self._loop is not None:
            raise RuntimeError(
                f"pool {self._pool.name!r}: this acheckout() was already awaited (or "
                "entered); call pool.acheckout() again for another worker"
            )
        return self  # type: ignore[return-value]  # (its own iterator: see __next__)

    def __aenter__(self) -> Awaitable[AsyncLease]:  # (no coroutine of its own: one less)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state == _DONE:
            lease, self._value = self._value, None
            if lease is not None:
                self._pool.checkin(lease)

    def __next__(self) -> Any:
        if self._loop is None:  # (first step: begin)
            self._begin()
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            return self  # (to the task: wait for me)
        raise StopIteration(self.result())

    def send(self, value: None) -> Any:
        return self.__next__()

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """The task is cancelled (or something is thrown into it) while it waits on us."""
        if self._state != _CANCELLED:  # (else cancel() has left already)
            self._leave()
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        raise val.with_traceback(tb) if tb is not None else val

    def close(self) -> None:
        """The task is destroyed pending (its loop closed): this runs inside the cyclic
        GC, perhaps on a thread holding the pool's lock -- leave the queue off it."""
        if self._loop is not None and self._state != _CANCELLED:
            _abandon_off_thread(self._pool, self)

    # -- asyncio's Future protocol (what a Task calls on what it waits for) ----------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("acheckout() not awaited yet")
        return self._loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> AsyncLease:
        if self._state == _DONE:
            return self._value  # type: ignore[no-any-return]
        if self._state == _FAILED:
            raise self._value
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(*(() if self._value is None else (self._value,)))
        raise asyncio.InvalidStateError("acheckout() not served yet")

    def exception(self) -> BaseException | None:
        if self._state == _FAILED:
            return self._value  # type: ignore[no-any-return]
        self.result()
        return None

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        if self._state != _PENDING:
            self.get_loop().call_soon(fn, self, context=context)
        elif self._callback is not None:
            raise RuntimeError("an acheckout() is awaited by one task")
        else:
            self._callback, self._context = fn, context

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        if self._callback is not None and self._callback == fn:
            self._callback = self._context = None
            return 1
        return 0

    def cancel(self, msg: Any = None) -> bool:
        if self._state != _PENDING:
            return False
        self._finish(_CANCELLED, msg)
        self._leave()
        return True

    def _finish(self, state: int, value: Any) -> None:
        self._state, self._value = state, value
        self._stop_timer()
        fn, ctx = self._callback, self._context
        if fn is not None:
            self._callback = self._context = None
            self.get_loop().call_soon(fn, self, context=ctx)

    # -- the checkout --------------------------------------------------------------------

    def _begin(self) -> None:
        """Take a worker now, or an overflow slot, or a place in the queue."""
        loop = self._loop = asyncio.get_running_loop()
        pool = self._pool
        self._thread = threading.get_ident()
        task = self._task = asyncio.current_task(loop)
        self.t0 = pool._clock()
        self.holder = task.get_name() if task is not None else threading.current_thread().name
        # The leases it is handed go in the task's set (given back if the task ends holding
        # them) -- but one that must wait joins that set only once served: until then what
        # it is handed is given back by _leave if it is cancelled.
        self.leases: LeaseSet = {} if task is not None and not pool._idle else current_leases()
        try:
            lease = pool._enter(self, self._per_call, True)
        except BaseException:
            pool._give_up(self)
            raise
        if lease is not None:
            self._deliver(lease)
        elif self.slot is not None:
            self._start_overflow(self.slot)
        elif isinstance(timeout := self._timeout, float | int):
            self._timeout = loop.call_later(timeout, self._time_up, timeout)

    def wake(self) -> None:
        """The pool served our place (``got``): from any thread, under the pool's lock."""
        loop = self._loop
        assert loop is not None
        try:
            if threading.get_ident() == self._thread:
                loop.call_soon(self._served)
            else:
                loop.call_soon_threadsafe(self._served)
        except RuntimeError:  # its loop is closed: no one will ever take what it was sent
            _abandon_off_thread(self._pool, self)

    def deliver(self, result: Lease | _OverflowSlot | BaseException) -> None:
        self.got = result
        self.wake()

    def _served(self) -> None:
        """On our loop, once served."""
        if self._state != _PENDING:  # cancelled meanwhile: _leave gave back what we got
            return
        got = self.got
        if isinstance(got, _pool.Lease):
            self._deliver(got)
        elif isinstance(got, _pool._OverflowSlot):
            self.got = None  # (being started: _leave must not drop its slot)
            self._start_overflow(got.wid)
        else:
            assert isinstance(got, BaseException)
            self._finish(_FAILED, got)

    def _deliver(self, lease: Lease) -> None:
        # Ours from now on -- but until the task resumes it may yet be cancelled (or
        # destroyed): then _leave finds the lease here and gives it back. (Served from the
        # queue it is here already; taken idle or started for us, it was not, and such a
        # lease stayed in the task's set, unknown to it, until the task ended.)
        self.got = lease
        task = self._task
        if task is not None and self.leases is not (held := _leases_of_task(task)):
            self._pool._hold(lease, held)
        lease._call_timeout = self._per_call
        h = lease._worker
        self._finish(_DONE, async_lease_class(h.cls_name, h.methods)(lease))

    def _start_overflow(self, wid: str) -> None:
        """Start an overflow worker off the loop (a process start takes milliseconds)."""
        assert self._loop is not None
        started = self._loop.run_in_executor(
            None, self._pool._checkout_overflow, wid, self.leases, self
        )
        started.add_done_callback(self._overflow_started)

    def _overflow_started(self, started: asyncio.Future[Lease]) -> None:
        error = started.exception()
        if self._state != _PENDING:  # cancelled while it started: it goes back
            if error is None:
                self._pool.checkin(started.result())
        elif error is not None:
            self._finish(_FAILED, error)
        else:
            self._deliver(started.result())

    def _time_up(self, timeout: float) -> None:
        self._timeout = None
        if self._state == _PENDING and self._pool._withdraw(self):  # (else served meanwhile)
            self._finish(_FAILED, self._pool._checkout_timeout(timeout))

    def _leave(self) -> None:
        """Cancelled (or failed) with a place taken: leave the queue at once, and give
        back what we were handed and never took. Idempotent."""
        if self._loop is None:  # (never begun: nothing taken)
            return
        self._stop_timer()
        self._pool._abandon(self)

    def _stop_timer(self) -> None:
        """Once begun, ``_timeout`` is the checkout timeout's timer (if it has one)."""
        if isinstance(self._timeout, asyncio.TimerHandle):
            self._timeout.cancel()
            self._timeout = None


def _abandon_off_thread(pool: Pool, waiter: _Waiter | ACheckout) -> None:
    """``pool._abandon(waiter)`` from a thread of its own: the caller may hold the pool's
    lock (or run inside the GC on a thread that does)."""
    threading.Thread(
        target=pool._abandon, args=(waiter,), name="pooly-abandon", daemon=True
    ).start()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
            h.calls += 1
            lease._doing = name
            try:
                if limit is None:
                    reply = await self._round_trip(frame)
                else:
                    try:
                        async with asyncio.timeout(limit):
                            reply = await self._round_trip(frame)
                    except TimeoutError:
                        pool._timed_out(lease, name, limit)
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
            lease._doing = None  # (answered: the worker lives on, whatever the outcome)
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
