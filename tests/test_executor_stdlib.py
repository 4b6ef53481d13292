"""CPython's own ProcessPoolExecutor scenarios, run against ``pooly.ProcessPoolExecutor``.

Python 3.13 installs its executor tests as the package ``test.test_concurrent_futures``. Each
scenario there is a mixin (``ExecutorTest``, ``WaitTests``, ``AsCompletedTests``, ...) whose
tests use ``self.executor``, built in ``setUp`` as ``self.executor_type(max_workers=...,
mp_context=self.get_context())``, and ``util.py`` has a mixin per start method. This module
imports them at run time -- nothing is copied -- and makes, for forkserver, spawn and fork, a
``unittest.TestCase`` per scenario whose ``executor_type`` is ``pooly.ProcessPoolExecutor``
(a subclass that only remembers its instances, to shut down any a failing scenario left).
pytest collects them like any test: pytest-timeout and conftest's autouse fixtures (no
process left behind) apply to them too. Where the package is missing (Python 3.11, 3.12)
the module skips.

Every scenario of public behaviour runs. Those that read the stdlib executor's private
attributes, or expect it to break (``BrokenProcessPool``: pooly never breaks, SPEC 4.2), are
skipped by name in :data:`SKIPPED`, each with the reason it does not apply to pooly.
Scenarios where pooly differs from the stdlib and should not are strict xfails in
:data:`KNOWN_BUGS`, until fixed.

Three adaptations, each keeping its scenario's intent (see :data:`ADAPTED`):

* The interpreter-exit scenarios run a script that imports ``ProcessPoolExecutor`` from
  ``concurrent.futures`` by name: the script is given pooly's instead (and a script without
  that import fails the test, so it can never quietly test the stdlib's).
* ``test_traceback`` checks that the cause is the stdlib's private ``_RemoteTraceback``:
  pooly's counterpart is its public ``pooly.RemoteTraceback``.
* ``test_hang_gh94440`` guards itself with ``signal.alarm`` and disarms it at the end -- the
  same timer pytest-timeout uses: it is re-armed after, so the tear-down keeps a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import signal
import time
import traceback
import unittest
import weakref
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any
from unittest import mock

import pytest

import pooly

_PACKAGE = "test.test_concurrent_futures"
try:
    _util = importlib.import_module(f"{_PACKAGE}.util")
except ImportError:
    pytest.skip(
        f"this Python has no {_PACKAGE} package (CPython installs its executor tests as a "
        "package from 3.13 on)",
        allow_module_level=True,
    )

#: The scenarios: name -> (module of the package, mixin class). All of them come from
#: CPython's Lib/test/test_concurrent_futures/.
SCENARIOS: dict[str, tuple[str, str]] = {
    "Executor": ("test_process_pool", "ProcessPoolExecutorTest"),  # + executor.ExecutorTest
    "Wait": ("test_wait", "WaitTests"),
    "AsCompleted": ("test_as_completed", "AsCompletedTests"),
    "Shutdown": ("test_shutdown", "ProcessPoolShutdownTest"),
    "Initializer": ("test_init", "InitializerMixin"),
    "FailingInitializer": ("test_init", "FailingInitializerMixin"),
    "Deadlock": ("test_deadlock", "ExecutorDeadlockTest"),
}

_BROKEN = "pooly never breaks (SPEC 4.2)"

#: Scenarios that do not apply to pooly: "Scenario.test_name" -> why.
SKIPPED: dict[str, str] = {
    # test_process_pool.py
    "Executor.test_killed_child": (
        "terminates a worker found in the private `_processes` and expects BrokenProcessPool "
        f"from every future and from submit; {_BROKEN}: a killed worker fails only its own "
        "task with WorkerCrashed"
    ),
    "Executor.test_saturation": (
        "counts the private `_processes` (the stdlib starts workers on demand, up to "
        "max_workers); pooly starts all max_workers in the constructor"
    ),
    "Executor.test_idle_process_reuse_one": (
        "counts the private `_processes` to see that the stdlib reuses an idle worker "
        "before starting another on demand; pooly starts all max_workers in the constructor"
    ),
    "Executor.test_idle_process_reuse_multiple": (
        "counts the private `_processes` to see that the stdlib reuses idle workers before "
        "starting more on demand; pooly starts all max_workers in the constructor"
    ),
    "Executor.test_max_tasks_per_child": (
        "counts the private `_processes`, and with fork expects ValueError (the stdlib can't "
        "re-fork a worker from its threaded host); pooly recycles fork workers too"
    ),
    "Executor.test_max_tasks_per_child_defaults_to_spawn_context": (
        "reads the private `_mp_context`; pooly's workers don't come from a multiprocessing context"
    ),
    "Executor.test_python_finalization_error": (
        "makes the private threading._start_joinable_thread fail for the stdlib's second "
        f"internal thread (its queue feeder) and expects BrokenProcessPool; {_BROKEN}"
    ),
    # test_shutdown.py
    "Shutdown.test_processes_terminate": (
        "counts and joins the private `_processes` (started on demand by the stdlib)"
    ),
    "Shutdown.test_context_manager_shutdown": (
        "builds concurrent.futures.ProcessPoolExecutor by name, not executor_type, so it "
        "tests the stdlib's class; and joins its private `_processes`"
    ),
    "Shutdown.test_del_shutdown": (
        "builds concurrent.futures.ProcessPoolExecutor by name, not executor_type, so it "
        "tests the stdlib's class; and joins its private `_executor_manager_thread`, "
        "`_processes`, `_call_queue`"
    ),
    "Shutdown.test_shutdown_no_wait": (
        "builds concurrent.futures.ProcessPoolExecutor by name, not executor_type, so it "
        "tests the stdlib's class; and joins its private `_executor_manager_thread`, "
        "`_processes`, `_call_queue` (shutdown(wait=False) is run by test_hang_gh83386)"
    ),
    # test_init.py
    "FailingInitializer.test_initializer": (
        "expects a failing initializer to break the executor later (BrokenExecutor from "
        "submit, the private `_broken`); pooly's constructor raises WorkerStartError instead "
        "and starts nothing (SPEC 4.2)"
    ),
    # test_deadlock.py: the faults that break the stdlib's pool; pooly's own fault matrix
    # checks that each fails only its task (WorkerCrashed, or the (un)pickling error).
    "Deadlock.test_exit_at_task_unpickle": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_error_at_task_unpickle": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_crash_at_task_unpickle": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_crash_during_func_exec_on_worker": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_crash_during_result_pickle_on_worker": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_error_during_result_unpickle_in_result_handler": (
        f"expects BrokenProcessPool; {_BROKEN}"
    ),
    "Deadlock.test_exit_during_result_unpickle_in_result_handler": (
        f"expects BrokenProcessPool; {_BROKEN}"
    ),
    "Deadlock.test_shutdown_deadlock": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_crash_big_data": f"expects BrokenProcessPool; {_BROKEN}",
    "Deadlock.test_shutdown_deadlock_pickle": "joins the private `_executor_manager_thread`",
    "Deadlock.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
        "patches the private _ExecutorManagerThread and _ThreadWakeup"
    ),
}

#: Whole files of the package not run here, and why.
NOT_RUN: dict[str, str] = {
    "test_future.py": "tests concurrent.futures.Future itself, not an executor",
    "test_thread_pool.py": "ThreadPoolExecutor's own scenarios",
    "test_init.FailingInitializerResourcesTest": (
        "runs the stdlib's own ProcessPoolExecutor classes by name and checks the "
        "multiprocessing resource tracker, which pooly does not use"
    ),
}

START_METHODS: dict[str, str] = {
    "forkserver": "ProcessPoolForkserverMixin",
    "spawn": "ProcessPoolSpawnMixin",
    "fork": "ProcessPoolForkMixin",
}


# -- adaptations -------------------------------------------------------------------------

_STDLIB_IMPORT = "from concurrent.futures import ProcessPoolExecutor"
# (`multiprocessing` too: test_hang_gh83386's script calls multiprocessing.set_start_method
# without importing it -- a slip the stdlib never hits, as it skips that test for its own
# ProcessPoolExecutor, which hangs there.)
_POOLY_IMPORT = "import multiprocessing; from pooly import ProcessPoolExecutor"


def _python_with_pooly(real: Callable[..., Any]) -> Callable[..., Any]:
    """``assert_python_ok`` running its script with pooly's executor in the stdlib's place."""

    @functools.wraps(real)
    def run(*args: str, **kwargs: Any) -> Any:
        assert args[:1] == ("-c",) and _STDLIB_IMPORT in args[1], (
            f"expected a `python -c` script importing {_STDLIB_IMPORT!r}, got {args!r}"
        )
        return real("-c", args[1].replace(_STDLIB_IMPORT, _POOLY_IMPORT), *args[2:], **kwargs)

    return run


@contextlib.contextmanager
def _scripts_use_pooly() -> Iterator[None]:
    module = importlib.import_module(f"{_PACKAGE}.test_shutdown")
    with mock.patch.object(module, "assert_python_ok", _python_with_pooly(module.assert_python_ok)):
        yield


@contextlib.contextmanager
def _pooly_remote_traceback() -> Iterator[None]:
    with mock.patch.object(futures.process, "_RemoteTraceback", pooly.RemoteTraceback):
        yield


@contextlib.contextmanager
def _keep_pytest_timeout() -> Iterator[None]:
    """Re-arm the real-time timer (pytest-timeout's) if the test disarmed it."""
    handler = signal.getsignal(signal.SIGALRM)
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    try:
        yield
    finally:
        if left and not signal.getitimer(signal.ITIMER_REAL)[0]:
            signal.signal(signal.SIGALRM, handler)
            remaining = max(left - (time.monotonic() - start), 0.001)
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


#: "Scenario.test_name" -> the context it runs in (see the module docstring).
ADAPTED: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "Shutdown.test_interpreter_shutdown": _scripts_use_pooly,
    "Shutdown.test_submit_after_interpreter_shutdown": _scripts_use_pooly,
    "Shutdown.test_hang_gh83386": _scripts_use_pooly,
    "Executor.test_traceback": _pooly_remote_traceback,
    "Shutdown.test_hang_gh94440": _keep_pytest_timeout,
}

#: Scenarios where pooly differs from the stdlib in public behaviour, not fixed yet:
#: "Scenario.test_name" -> (the defect, a deadline in seconds for a scenario that would
#: otherwise wait out its own long timeout or hang). Each is a strict xfail: the day it
#: passes, the suite says so, and its entry goes.
KNOWN_BUGS: dict[str, tuple[str, float | None]] = {
    # None now. The seven this file found (map's iterator keeping what it yielded, a
    # direct future's reference cycle, a worker keeping its last task's arguments, the
    # exit hooks' order, pickling errors and SystemExit while pickling a result not coming
    # back as themselves) were fixed in 0560146.
}


class ProcessPoolExecutor(pooly.ProcessPoolExecutor):
    """pooly's executor, each instance remembered so that one a scenario leaves running
    (it failed before its own ``shutdown``) is shut down after it: the failure is reported
    alone, not again as every later test's leftover processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _MADE.add(self)


_MADE: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


def _shut_down_leftovers(but: object = None) -> None:
    for ex in list(_MADE):
        if ex is not but:
            ex.shutdown(wait=True, cancel_futures=True)
            _MADE.discard(ex)


class _Pooly:
    """First base of every case: runs the scenario with pooly's executor."""

    executor_type = ProcessPoolExecutor

    def setUp(self) -> None:
        _MADE.clear()
        self.addCleanup(_shut_down_leftovers)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        # Before BaseTestCase.tearDown looks for threads left running: an executor's.
        # (self.executor is the scenario's own: its tearDown shuts it down, as it wants.)
        _shut_down_leftovers(but=getattr(self, "executor", None))
        super().tearDown()  # type: ignore[misc]


def _adapted(test: Callable[..., None], context: Callable[[], Any]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(self: unittest.TestCase) -> None:
        with context():
            test(self)

    return run


def _known_bug(test: Callable[..., None], reason: str, deadline: float | None) -> Any:
    @functools.wraps(test)
    def run(self: unittest.TestCase) -> None:
        try:
            test(self)
        except BaseException as e:
            # Let go of the scenario's locals now, as a passing run would: a failed one's
            # (a multiprocessing Manager, objects whose __del__ uses it) would otherwise
            # live on in the report and end in a later test.
            traceback.clear_frames(e.__traceback__)
            raise

    run = pytest.mark.xfail(strict=True, reason=reason)(run)
    if deadline is not None:
        run = pytest.mark.timeout(deadline)(run)
    return run


# -- the test cases ------------------------------------------------------------------------


def _make_cases() -> dict[str, type[unittest.TestCase]]:
    cases: dict[str, type[unittest.TestCase]] = {}
    for scenario, (module_name, class_name) in SCENARIOS.items():
        mixin = getattr(importlib.import_module(f"{_PACKAGE}.{module_name}"), class_name)
        body: dict[str, Any] = {}
        for key, reason in SKIPPED.items():
            owner, test = key.split(".")
            if owner == scenario:
                body[test] = unittest.skip(f"not for pooly: {reason}")(getattr(mixin, test))
        for key, context in ADAPTED.items():
            owner, test = key.split(".")
            if owner == scenario:
                body[test] = _adapted(getattr(mixin, test), context)
        for method, start_mixin in START_METHODS.items():
            name = f"Pooly{method.capitalize()}{scenario}Test"
            own = dict(body)
            for key, (reason, deadline) in KNOWN_BUGS.items():
                owner, test = key.split(".")
                if owner == scenario:  # (a fresh function per case: marks are stored on it)
                    own[test] = _known_bug(own.get(test, getattr(mixin, test)), reason, deadline)
            bases = (_Pooly, mixin, getattr(_util, start_mixin), _util.BaseTestCase)
            # (at module level under its own name: a worker unpickles a classmethod task
            # such as ProcessPoolExecutorTest._test_traceback through its class)
            cases[name] = type(name, bases, {**own, "__module__": __name__, "__qualname__": name})
    # A name that matches no scenario would skip, adapt or mark nothing, silently.
    owners = {key.split(".")[0] for key in (*SKIPPED, *ADAPTED, *KNOWN_BUGS)}
    assert owners <= set(SCENARIOS), owners - set(SCENARIOS)
    return cases


globals().update(_make_cases())
