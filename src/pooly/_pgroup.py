"""Process groups: a supervised process's whole tree goes with it (issue 7, defect 4).

A pool's worker, or a :class:`~pooly._process.ProcessChild`, leads a process group of its
own from its first instruction (:func:`_lead_own_group`); what it starts is born in that
group. Whoever reaps it SIGKILLs the group just before, while the exited leader's zombie pins
the group id (:func:`_join_tree`; the pool's fork server does the same for the workers it
forks). On the host's death, the worker's watchdog and its fork server kill it.
A background group must never be stopped by the terminal: :func:`_quiet_terminal`.

A descendant that leaves the group on purpose (``setsid``, ``start_new_session=True``) is
not tracked.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
from typing import Any, NoReturn

__all__ = ()


def _lead_own_group() -> None:
    """Make this process (a new worker, on its main thread) the leader of its own group.

    Runs before any code of the user's: everything the worker starts is born in the group.
    The parent does the same from its side when it forks the worker itself (the pool's fork
    server), so the group exists before anyone is told the worker's pid. multiprocessing's
    "fork" and "spawn" give no such hook (with spawn, the child has exec'd before ``start``
    returns, and a parent's ``setpgid`` then fails): there, until this runs, the worker is in
    its parent's group -- harmless, since the parent only ever kills a worker's group once
    the worker has exited (:func:`_join_tree`), and a group that was never made is simply
    not there (ESRCH). (With spawn, what the main module itself starts when it is
    imported as ``__mp_main__`` runs before this, and stays in the host's group.)
    """
    try:
        os.setpgid(0, 0)
    except OSError:  # EPERM: we lead a session (can't happen for a forked child); keep going
        pass


def _quiet_terminal() -> None:
    """Keep the terminal from stopping a worker or its children (a background group now).

    fd 0 becomes /dev/null, not just ``sys.stdin`` (which multiprocessing already replaced):
    children inherit fd 0, and one that read a terminal from a background group would be
    stopped by SIGTTIN with nobody to resume it. SIGTTIN and SIGTTOU are ignored (children
    inherit that too): a write to the terminal under ``stty tostop`` goes through as it did
    in the foreground group, a read of /dev/tty fails with EIO instead of stopping.
    """
    for sig in (signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    else:  # fd 0 was closed: the new fd took its place (and must survive exec, as stdin)
        os.set_inheritable(0, True)


def _end_own_group() -> NoReturn:
    """SIGKILL this worker's whole group, itself included; just exit if it leads none."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(0)


def _end_group_on_the_way_out() -> None:
    """A multiprocessing-started worker's last act: SIGKILL what is left of its group.

    Its parent, the host, does it too once the worker has exited (:func:`_join_tree`). But
    when the host dies, the request pipe's EOF may reach the main thread before the alive
    pipe's reaches the watchdog: the worker then ends as if stopped, and no parent is left to
    end its tree. Telling the two apart at that moment would be a race (the dying host closes
    both pipes, in no set order), so the worker always does it. (A worker of the pool's own
    fork server needs none of this: that server kills the group of each worker that exits,
    host or no host.)

    The worker first moves to its parent's group, so as not to kill itself: its exit status
    must stay its own. The group id can't be reused meanwhile: it is this live process's
    pid. If it can't move (its parent, the host, is gone), it goes with its group.
    """
    if os.getpgrp() != os.getpid():
        return  # it never made its group (setpgid failed): nothing of ours to kill
    try:
        os.setpgid(0, os.getpgid(os.getppid()))
    except OSError:
        _end_own_group()
    _kill_group(os.getpid())


def _join_tree(proc: Any, timeout: float | None = None) -> bool:
    """``proc.join(timeout)``, and the worker's group SIGKILLed once it has exited; whether
    it has.

    Host side (supervisor loop thread, or a starter thread). A worker process is the leader
    of its own group (:func:`_lead_own_group`); what it started and left behind dies here.
    Whoever reaps the worker kills the group just before, while the exited leader's zombie
    pins the group id, so the signal can't reach an unrelated group that reused it:

    * forked by the pool's fork server (a ZygoteProcess): that server, its parent, does it
      (:mod:`pooly._zygote_proc`) before it reports the exit. If the report never came (the
      server died, and the worker was reaped by init), the host does it at once itself; see
      :func:`_kill_group_after_reap` for what that risks;
    * "fork" and "spawn": the host is the parent, so it does it here, between the exit and
      ``join``'s ``waitpid``;
    * multiprocessing's own forkserver (where pidfds are missing, so there is no fork server
      of the pool's: not Linux): it reaps the worker before the host hears of the exit; the
      host kills the group right after (:func:`_kill_group_after_reap`);
    * a Ray actor's stand-in (``proc.remote``): its process is not this host's to signal.
    """
    if getattr(proc, "remote", False):  # a Ray actor: no process of this host, no group
        proc.join(timeout)
        return bool(multiprocessing.connection.wait([proc.sentinel], 0))
    if not isinstance(proc, multiprocessing.process.BaseProcess):  # a ZygoteProcess
        proc.join(timeout)
        if not multiprocessing.connection.wait([proc.sentinel], 0):
            return False
        if proc.exitcode is None:  # exited, status lost: its fork server may be gone
            _kill_group_after_reap(proc.pid)
        return True
    if not multiprocessing.connection.wait([proc.sentinel], timeout):
        return False  # still running (the sentinel shows the exit: its pipe end closes with it)
    popen = proc._popen  # type: ignore[attr-defined]
    if popen is not None and popen.returncode is None:  # not reaped by an earlier join
        pid: int = popen.pid
        try:
            # Blocks only until the exit is complete (the sentinel's pipe closes a moment
            # before); WNOWAIT: the worker stays a zombie, its pid and group id pinned.
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # not ours: multiprocessing's forkserver reaped it
            _kill_group_after_reap(pid)
        else:
            _kill_group(pid)
    proc.join()
    return True


def _kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid``, if it exists (it may never have been made)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # none left (or none we may signal)
        pass


def _kill_group_after_reap(pgid: int) -> None:
    """SIGKILL group ``pgid`` of a worker already reaped by a parent other than the host.

    The best the host can do when it can't pin the id: POSIX never reuses a group id while
    any member of the group lives, so if there is anything left to kill, the signal reaches
    exactly it. Only if the group is empty can the id be reused, and only a process created
    since with that very pid, which also made itself a group leader, would be hit: the pid
    space would have to wrap around between the reap and this call. multiprocessing's own
    ``kill()`` of a worker on its forkserver takes the same chance with the pid.
    """
    _kill_group(pgid)
