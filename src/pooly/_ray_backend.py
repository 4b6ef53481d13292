"""Workers as Ray actors (SPEC 4.6): the backend behind :class:`pooly.RayBackend`.

Imported only when a pool is given a RayBackend; it imports Ray. The idea: every Ray worker
has the same two pipes and the same kind of sentinel a local worker has, and one **pump**
thread per pool sits at their far end in place of the worker process. So the supervisor,
the leases, the task dispatcher and the asyncio layer run unchanged, on real fds::

    host threads (holders, dispatcher, loop)  pump thread (pooly-ray-<pool>)          Ray actor
    ----------------------------------------  --------------------------------------  ---------
    write a request frame -> req_w ---------> req_r: whole frames, queued; none in
                                              flight: actor.frame.remote(payload) -->  answer()
                                              <-- its future's callback: inbox, wake
    read rep_r <----------------------------- write the reply frame -> rep_w; next
    supervisor: wait(sentinel) <------------- the actor died (its watch call failed,
                                              or a call did): close rep_w (EOF for a
                                              holder), close req_r, set the sentinel

Rules that keep a local worker's semantics exact:

* **One Ray call in flight per actor.** Frames sent ahead wait in the pump, in this process:
  they provably never started, so "tasks sent ahead to a dead worker run elsewhere" holds.
* **Death is watched, not polled**: each actor runs a ``watch()`` call that never returns,
  in a concurrency group of its own; Ray fails it (``ActorDiedError``) when the actor dies,
  busy or idle, within milliseconds of a process death.
* **pooly alone restarts**: actors are made with ``max_restarts=0, max_task_retries=0``;
  ``kill()`` is ``ray.kill(no_restart=True)`` at once; ``terminate()`` (EOF on the request
  pipe) the same once the queued requests are answered (reported as exit code 0; the
  actor's ``atexit`` hooks do not run: Ray's graceful exit would wait for ``watch()``).
* What no fd carries is explicit: the actor's resident memory comes back with each reply
  (:meth:`RayWorkerHandle.rss`); Ray gives no wait status, so a death pooly did not ask for
  has an unknown exit code (None) and a ``cause``, Ray's own words, in its messages.

Ray is connected once per process (in the thread that starts the first Ray pool, normally
the main thread: ``ray.init`` installs signal handlers) and left connected: Ray's own exit
hook shuts it down.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import pickle
import select
import threading
import time
from typing import Any

import ray
import ray.exceptions

from ._errors import PoolyError, WorkerStartError, describe_exit
from ._fds import _FDS_LOCK, _HOST_FDS, Signal, release
from ._ray import RayBackend
from ._ray_actor import PoolyActor
from ._supervisor import CancelToken
from ._worker import (
    _HDR,
    _HDR_SIZE,
    _PROTO,
    ChannelClosed,
    WorkerProcess,
    _pack_error,
    _release_fds,
)

__all__ = ("RayPoolBackend", "RayWorkerHandle")

log = logging.getLogger("pooly")

#: How long a killed actor may take to be reported dead before the pump declares it so
#: itself (an actor on a node that no longer answers is never reported promptly).
KILL_GRACE = 2.0
#: Slices of a start's wait for the actor, between looks at the start's cancel token.
_START_SLICE = 0.05

_CONNECT_LOCK = threading.Lock()

_Actor = ray.remote(
    max_restarts=0,
    max_task_retries=0,
    # watch() waits for good in a group of its own; the user's methods run in the default
    # group, one at a time.
    concurrency_groups={"pooly": 1},
)(PoolyActor)


def connect(backend: RayBackend) -> None:
    """Connect this process to Ray, once (the first Ray pool's starting thread)."""
    with _CONNECT_LOCK:
        if ray.is_initialized():
            return
        options = {"include_dashboard": False, "log_to_driver": True, **backend.init_options}
        t = time.monotonic()
        info = ray.init(address=backend.address, **options)
        log.info(
            "pooly: connected to Ray at %s in %.1f s",
            getattr(info, "address_info", {}).get("gcs_address", backend.address or "local"),
            time.monotonic() - t,
        )


class RayWorkerHandle(WorkerProcess):
    """The host's end of a worker that is a Ray actor: a :class:`WorkerProcess` whose
    "process" is :class:`RayProcess`, the pump's stand-in for it."""

    __slots__ = ()

    proc: RayProcess

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A lease's call, straight to the actor from the holder's thread: Ray's own round
        trip, without the pump's two thread hops (calls with a deadline, tasks and asyncio
        go through the pipes). The pump is told, so it ends the actor only after it."""
        p = self.proc
        actor = p.actor
        if self._pending or actor is None or self.broken:
            return super().call(name, args, kwargs)
        try:
            data = pickle.dumps((name, args, kwargs), _PROTO)
        except Exception:
            data = self._dumps(name, args, kwargs)  # raises the explanatory TypeError
        p.direct += 1
        try:
            payload, p.last_rss = ray.get(actor.frame.remote(data))
        except ray.exceptions.RayActorError:
            raise ChannelClosed(name) from None
        except ray.exceptions.RayError as e:  # Ray could not run it: the channel is fine
            raise PoolyError(f"Ray could not run {name}() on {p.what}: {e}") from e
        except BaseException:
            self.broken = True  # interrupted (KeyboardInterrupt) with the call in flight
            raise
        finally:
            p.direct -= 1
            if p.eof:  # the pool asked it to end meanwhile: now it can
                p.terminate()
        return self._decode(name, payload)

    def rss(self) -> int | None:
        """The actor's resident memory after its last call (None before one)."""
        return self.proc.last_rss

    def _exit_words(self) -> str:
        words = describe_exit(self.exitcode)
        cause = self.proc.cause
        return words if cause is None else f"{words} ({cause})"

    @property
    def node(self) -> str:
        """The Ray node the actor runs on: its id (hex)."""
        return self.proc.node_id

    @property
    def node_ip(self) -> str:
        """The address of the Ray node the actor runs on."""
        return self.proc.node_ip

    def __repr__(self) -> str:
        return (
            f"<RayWorkerHandle {self.cls_name} pid={self.pid} node={self.proc.node_ip} "
            f"pool={self.pool_name!r}>"
        )


class RayProcess:
    """A Ray actor as the supervisor sees a worker process: ``pid``, ``sentinel`` (set by
    the pump once the actor is gone), ``exitcode``, ``join``, ``kill``, ``close``.

    ``remote``: it is no process of this host (nothing here signals or reaps it).
    The pump's side of the actor's channel lives here too (its thread alone uses it).
    """

    remote = True

    def __init__(
        self,
        pump: _Pump,
        actor: Any,
        pid: int,
        node_id: str,
        node_ip: str,
        req_r: int,
        rep_w: int,
        what: str,
    ) -> None:
        self.pid = pid
        self.node_id = node_id
        self.node_ip = node_ip
        self.what = what  # "worker Cls (pid N) of pool 'p'", for messages
        self.exitcode: int | None = None
        self.cause: str | None = None  # why it died, in Ray's words (a death not asked for)
        self.last_rss: int | None = None
        self._pump = pump
        self._ended = Signal()
        self.sentinel = self._ended.fileno()
        # The pump's (its thread only):
        self.actor: Any = actor
        self.req_r = req_r
        self.rep_w = rep_w
        self.inbuf = bytearray()  # request bytes not yet a whole frame
        self.frames: collections.deque[tuple[int, bytes]] = collections.deque()
        self.inflight: tuple[int, Any] | None = None  # (rid, its ObjectRef)
        self.started = False  # the first frame (the start) was sent
        self.out = bytearray()  # reply bytes not written yet (the holder reads slowly)
        self.eof = False  # the host closed the request pipe: end once all is answered
        self.direct = 0  # lease calls in flight straight from a holder (not via the pump)
        self.killed = False
        self.terminated = False
        self.watch_ref: Any = None
        self.deadline: float | None = None  # kill or terminate not reported by then: dead
        self.dead = False

    def join(self, timeout: float | None = None) -> None:
        select.select([self.sentinel], [], [], timeout)

    def kill(self) -> None:
        self._pump.post(("kill", self))

    def terminate(self) -> None:
        self._pump.post(("terminate", self))

    def close(self) -> None:
        self._ended.close()
        self.sentinel = -1

    def ended(self) -> None:
        self._ended.set()


class _Pump(threading.Thread):
    """Forwards a pool's worker channels to their actors (see the module docstring)."""

    def __init__(self, pool_name: str) -> None:
        super().__init__(name=f"pooly-ray-{pool_name}", daemon=True)
        self._wake = Signal()
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._poll = select.poll()
        self._poll.register(self._wake.fileno(), select.POLLIN)
        self._by_fd: dict[int, RayProcess] = {}  # req_r and rep_w (while it has output)
        self._procs: set[RayProcess] = set()
        self._closing = False

    def post(self, item: tuple[str, Any]) -> None:
        """From any thread, Ray's callback threads included: append, wake."""
        self._inbox.append(item)
        self._wake.set()

    def close(self) -> None:
        """Stop once every actor is gone (the backend's close: they are)."""
        self.post(("close", None))

    # -- the thread ------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not (self._closing and not self._procs):
                timeout = self._next_timeout()
                for fd, ev in self._poll.poll(timeout):
                    if fd == self._wake.fileno():
                        self._wake.drain()
                        continue
                    p = self._by_fd.get(fd)
                    if p is None or p.dead:
                        continue
                    if fd == p.req_r:
                        self._read(p)
                    elif fd == p.rep_w and ev & (select.POLLOUT | select.POLLERR):
                        self._flush(p)
                while self._inbox:
                    self._handle(*self._inbox.popleft())
                self._check_deadlines()
        except BaseException:
            log.exception("pooly: the Ray pump %s failed; its actors are killed", self.name)
            for p in list(self._procs):
                self._died(p, "pooly's Ray pump failed", kill=True)
            raise
        finally:
            self._wake.close()

    def _next_timeout(self) -> int | None:
        deadlines = [p.deadline for p in self._procs if p.deadline is not None]
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for p in list(self._procs):
            if p.deadline is not None and now >= p.deadline:
                self._died(p, "Ray did not report it dead after it was killed", kill=False)

    def _handle(self, what: str, arg: Any) -> None:
        if what == "add":
            self._add(arg)
        elif what == "done":
            p, ref = arg
            self._done(p, ref)
        elif what == "watch":
            p, ref = arg
            if not p.dead:
                cause, unavailable = _watch_cause(ref)
                self._died(p, cause, kill=unavailable)
        elif what == "kill":
            if not arg.dead:
                self._kill(arg)
        elif what == "terminate":
            if not arg.dead:
                arg.eof = True
                self._maybe_terminate(arg)
        elif what == "close":
            self._closing = True

    def _add(self, p: RayProcess) -> None:
        self._procs.add(p)
        os.set_blocking(p.req_r, False)
        os.set_blocking(p.rep_w, False)
        self._by_fd[p.req_r] = p
        self._poll.register(p.req_r, select.POLLIN)
        p.watch_ref = p.actor.watch.options(concurrency_group="pooly").remote()
        self._on_done("watch", p, p.watch_ref)

    def _on_done(self, what: str, p: RayProcess, ref: Any) -> None:
        """Post ``(what, (p, ref))`` once ``ref`` is resolved (on a thread of Ray's)."""
        post, item = self.post, (what, (p, ref))

        def done(_: object) -> None:
            post(item)

        ref.future().add_done_callback(done)

    # -- requests in -------------------------------------------------------------------

    def _read(self, p: RayProcess) -> None:
        try:
            while True:
                data = os.read(p.req_r, 1 << 16)
                if not data:
                    self._poll.unregister(p.req_r)
                    p.eof = True
                    break
                p.inbuf += data
        except BlockingIOError:
            pass
        except OSError:
            self._poll.unregister(p.req_r)
            p.eof = True
        buf = p.inbuf  # (a bytearray: appends and deletes from its front cost no copy)
        pos = 0
        while len(buf) - pos >= _HDR_SIZE:
            n, rid = _HDR.unpack_from(buf, pos)
            if len(buf) - pos - _HDR_SIZE < n:
                break
            p.frames.append((rid, bytes(buf[pos + _HDR_SIZE : pos + _HDR_SIZE + n])))
            pos += _HDR_SIZE + n
        del buf[:pos]
        self._next(p)
        self._maybe_terminate(p)

    def _next(self, p: RayProcess) -> None:
        """Send the next queued request to the actor, if none is in flight."""
        if p.inflight is not None or not p.frames or p.dead or p.terminated:
            return
        rid, payload = p.frames.popleft()
        if not p.started:  # the first frame: the construction recipe
            p.started = True
            ref = p.actor.start.remote(payload)
        else:
            ref = p.actor.frame.remote(payload)
        p.inflight = (rid, ref)
        self._on_done("done", p, ref)

    def _maybe_terminate(self, p: RayProcess) -> None:
        """The host closed the request pipe and every request is answered: end it."""
        if (
            p.eof
            and not p.terminated
            and p.inflight is None
            and not p.frames
            and not p.direct
            and not p.dead
        ):
            # Ray's graceful exit (__ray_terminate__) waits for the actor's running calls,
            # and its watch() never ends: the actor is killed, with nothing left to do.
            p.terminated = True
            self._ray_kill(p)

    # -- replies out -------------------------------------------------------------------

    def _done(self, p: RayProcess, ref: Any) -> None:
        if p.dead or p.inflight is None or p.inflight[1] is not ref:
            return
        rid = p.inflight[0]
        p.inflight = None
        try:
            got = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            self._died(p, _cause(e), kill=_node_lost(e))
            return
        except Exception as e:  # Ray could not run the call (not the method's error)
            payload = _pack_error(
                PoolyError(f"Ray could not run the call on {p.what}: {e}"), "the Ray call"
            )
        else:
            if isinstance(got, tuple):
                payload, p.last_rss = got
            else:  # the start's reply
                payload = got
                if pickle.loads(payload)[0] != "ready":  # its constructor failed: it ends
                    p.eof = True
        self._reply(p, rid, payload)
        self._next(p)
        self._maybe_terminate(p)

    def _reply(self, p: RayProcess, rid: int, payload: bytes) -> None:
        p.out += _HDR.pack(len(payload), rid)
        p.out += payload
        self._flush(p)

    def _flush(self, p: RayProcess) -> None:
        try:
            while p.out:
                with memoryview(p.out) as view:
                    n = os.write(p.rep_w, view[: 1 << 20])
                del p.out[:n]
        except BlockingIOError:
            pass
        except OSError as e:  # the host closed its end (released): nobody reads
            if e.errno != errno.EPIPE:
                log.debug("pooly: reply to %s not written: %s", p.what, e)
            p.out.clear()
        waiting = p.rep_w in self._by_fd
        if p.out and not waiting:
            self._by_fd[p.rep_w] = p
            self._poll.register(p.rep_w, select.POLLOUT)
        elif not p.out and waiting:
            del self._by_fd[p.rep_w]
            self._poll.unregister(p.rep_w)

    # -- ends --------------------------------------------------------------------------

    def _kill(self, p: RayProcess) -> None:
        p.killed = True
        self._ray_kill(p)

    def _ray_kill(self, p: RayProcess) -> None:
        """``ray.kill`` the actor; reported dead within KILL_GRACE, or declared so."""
        p.deadline = time.monotonic() + KILL_GRACE
        try:
            ray.kill(p.actor, no_restart=True)
        except Exception as e:
            log.debug("pooly: ray.kill of %s: %s", p.what, e)

    def _died(self, p: RayProcess, cause: str, *, kill: bool) -> None:
        """The actor is gone (or given up on): EOF for its holder, its sentinel set.
        ``kill``: its node is lost or unreachable (the actor is killed to be sure, and
        replacements are steered away from the node for a while)."""
        if p.dead:
            return
        p.dead = True
        if p.killed:  # as asked (a call timeout, a dismissal, the pool stopping)
            p.exitcode = -9
        elif p.terminated:
            p.exitcode = 0
        else:  # (no exit status: Ray gives none)
            p.cause = cause
        if kill:
            suspect(p.node_id)
            if not p.killed:
                self._kill(p)  # (a node that does not answer: make sure it never comes back)
        self._procs.discard(p)
        for fd in (p.req_r, p.rep_w):
            if self._by_fd.pop(fd, None) is not None:
                try:
                    self._poll.unregister(fd)
                except KeyError:
                    pass
        p.frames.clear()
        p.out.clear()
        release((p.req_r, p.rep_w))  # the holder reads EOF; a write to req_w fails EPIPE
        p.req_r = p.rep_w = -1
        p.actor = p.inflight = p.watch_ref = None
        p.ended()


def _cause(e: BaseException) -> str:
    """Ray's reason for an actor's death, in one line: its error message's own words
    (after the lines naming the actor), else its first line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = [line for line in lines[1:] if not line.startswith(_FIELDS)]
    text = said[0] if said else lines[0] if lines else ""
    return f"{type(e).__name__}: {text}"[:300]


#: The lines of an ActorDiedError's message that name the actor, not the cause.
_FIELDS = ("class_name:", "actor_id:", "pid:", "name:", "namespace:", "ip:")


def _node_lost(e: BaseException) -> bool:
    """Whether an actor's error says its node is gone or unreachable."""
    if isinstance(e, ray.exceptions.ActorUnavailableError):
        return True
    text = str(e).lower()
    return any(words in text for words in _NODE_DEATH)


#: How Ray says an actor went with its node (ActorDiedError's message; its advice about
#: "node deaths" in other messages does not count).
_NODE_DEATH = ("because its node", "node has died", "node died", "node was", "node is dead")


#: Nodes where an actor of ours was lost with its node (node id -> when): a replacement
#: is steered away from them for a while (Ray may still place actors there until it has
#: declared the node dead). Shared by every pool of the process, as Ray's nodes are.
_SUSPECTS: dict[str, float] = {}
_SUSPECT_FOR = 60.0


def suspect(node_id: str) -> None:
    _SUSPECTS[node_id] = time.monotonic()


def suspects() -> set[str]:
    now = time.monotonic()
    for node, since in list(_SUSPECTS.items()):
        if now - since > _SUSPECT_FOR:
            _SUSPECTS.pop(node, None)
    return set(_SUSPECTS)


def _watch_cause(ref: Any) -> tuple[str, bool]:
    """Why an actor's watch call ended, and whether its node is lost or unreachable (then
    the actor may live on, cut off: it is killed, so it never comes back)."""
    try:
        ray.get(ref)
    except Exception as e:
        return _cause(e), _node_lost(e)
    return "its watch call returned", False


class _Lost(Exception):
    """An actor died before it ran (see RayPoolBackend.start_worker)."""


#: Pause before starting again an actor that died before it ran.
_RETRY_PAUSE = 0.1


class RayPoolBackend:
    """A pool's workers as Ray actors: made by :meth:`RayBackend._bind` in ``start_pool``."""

    def __init__(
        self,
        config: RayBackend,
        *,
        pool_name: str,
        cls_name: str,
        module: str,
        payload: bytes,
        start_timeout: float,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.pool_name = pool_name
        self.cls_name = cls_name
        self.start_timeout = start_timeout
        self._payload = payload
        self._config = config
        connect(config)
        try:  # Ray checks the options' names and values here, before any actor starts
            self._actor_cls = _Actor.options(**config.actor_options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"RayBackend actor_options {config.actor_options!r}: {e}") from e
        self._pump: _Pump | None = None
        self._turn = 0  # (round robin over live nodes, for steered starts)

    def open(self) -> None:
        self._pump = _Pump(self.pool_name)
        self._pump.start()

    def close(self) -> None:
        pump = self._pump
        if pump is not None:
            pump.close()
            pump.join(2 * KILL_GRACE)

    def _options(self) -> Any:
        """The actor class with its options; while nodes are suspect (lost, maybe not yet
        declared dead), steered to a live node with the resources, unless the user chose
        where it goes."""
        avoid = suspects()
        strategy = self._config.actor_options.get("scheduling_strategy")
        if not avoid or strategy not in (None, "DEFAULT", "SPREAD"):
            return self._actor_cls
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        needs = dict(self._config.actor_options.get("resources") or {})
        live = [
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive")
            and n["NodeID"] not in avoid
            and all(n.get("Resources", {}).get(k, 0) >= v for k, v in needs.items())
            and n.get("Resources", {}).get("CPU", 0) > 0
        ]
        if not live:
            return self._actor_cls
        self._turn += 1
        node = live[self._turn % len(live)]
        return _Actor.options(
            **{
                **self._config.actor_options,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True),
            }
        )

    def _start_actor(
        self, what: str, deadline: float, cancel: CancelToken | None
    ) -> tuple[Any, tuple[int, str, str]]:
        """Make one actor and wait until it runs: it and (pid, node id, node address).
        :class:`_Lost` if it died first (it may be tried again elsewhere)."""
        try:
            actor = self._options().remote()
        except Exception as e:
            raise WorkerStartError(f"could not start {what}: {e}") from e
        try:
            import pooly

            hello = actor.hello.remote(pooly.__version__)
            while True:
                ready, _ = ray.wait([hello], timeout=_START_SLICE)
                if ready:
                    break
                if cancel is not None and cancel.cancelled:
                    raise WorkerStartError(
                        f"{what}: its start was cancelled (the pool is stopping)"
                    )
                if time.monotonic() > deadline:
                    raise WorkerStartError(
                        f"{what} was not running within start_timeout={self.start_timeout:g}s "
                        "(Ray could not place it: see the actor options and the cluster's "
                        "resources); it was killed"
                    )
            try:
                pid, node_id, node_ip, version = ray.get(hello)
            except ray.exceptions.RayActorError as e:
                if getattr(e, "actor_init_failed", False):  # (not pooly's on that node?)
                    raise WorkerStartError(f"could not start {what}: {_cause(e)}") from e
                raise _Lost(_cause(e)) from e
            except ray.exceptions.RayError as e:
                raise WorkerStartError(f"could not start {what}: {_cause(e)}") from e
            if version != pooly.__version__:
                raise WorkerStartError(
                    f"{what}: the actor runs pooly {version}, this process {pooly.__version__}"
                )
        except BaseException:
            ray.kill(actor, no_restart=True)
            raise
        return actor, (pid, node_id, node_ip)

    def start_worker(self, cancel: CancelToken | None = None) -> RayWorkerHandle:
        """Start one actor and wait until the user's object is made in it
        (:class:`WorkerStartError` if not, or if ``cancel`` fires first)."""
        assert self._pump is not None, "start_worker before open"
        what = f"worker {self.cls_name} of pool {self.pool_name!r} (a Ray actor)"
        deadline = time.monotonic() + self.start_timeout
        tries = 0
        while True:
            tries += 1
            try:
                actor, (pid, node_id, node_ip) = self._start_actor(what, deadline, cancel)
                break
            except _Lost as e:
                # Its actor died before it ran: placed on a node that is going (Ray places
                # actors on a lost node until it has declared it dead). Once more, steered.
                if time.monotonic() + _RETRY_PAUSE >= deadline:
                    raise WorkerStartError(
                        f"could not start {what} within start_timeout="
                        f"{self.start_timeout:g}s ({tries} tries): {e}"
                    ) from e.__cause__
                log.info("pooly: %s: %s; trying again", what, e)
                time.sleep(_RETRY_PAUSE)
        with _FDS_LOCK:  # (listed at once: a child forked now must not keep them)
            req_r, req_w = os.pipe()
            rep_r, rep_w = os.pipe()
            _HOST_FDS.update((req_r, req_w, rep_r, rep_w))
        proc = RayProcess(
            self._pump,
            actor,
            pid,
            node_id,
            node_ip,
            req_r,
            rep_w,
            f"worker {self.cls_name} (pid {pid}, node {node_ip}) of pool {self.pool_name!r}",
        )
        self._pump.post(("add", proc))
        try:
            left = max(0.001, deadline - time.monotonic())
            handle = RayWorkerHandle._handshake(
                proc, req_w, rep_r, self._payload, self.pool_name, self.cls_name, left, cancel
            )
            assert isinstance(handle, RayWorkerHandle)
            return handle
        except BaseException:
            _release_fds((req_w, rep_r))
            raise
