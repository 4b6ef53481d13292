"""The public surface: ``__all__``, the SPEC's fixed names and error hierarchy, typing marker.

Names listed here are fixed by SPEC §3 (and the supervisor API the package documents):
programs and tests outside the repo use them, so a rename is a breaking change caught here.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import inspect
import pickle
import types
from pathlib import Path

import pytest

import pooly

#: name -> the base classes it must have (beyond ``object``).
ERRORS: dict[str, tuple[type, ...]] = {
    "PoolyError": (Exception,),
    "PoolFull": (),
    "CheckoutTimeout": (TimeoutError,),
    "WorkerCrashed": (),
    "NoSuchPool": (LookupError,),
    "PoolFailed": (),
    "LeaseError": (),
    "WorkerStartError": (),
}
CLASSES = (
    "Pooly",
    "Pool",
    "Lease",
    "PoolStatus",
    "Supervisor",
    "ChildSpec",
    "ProcessChild",
    "SupervisorListener",
    "ExitReason",
    "RemoteTraceback",
)


def public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(pooly).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_a_tuple_of_unique_strings() -> None:
    assert isinstance(pooly.__all__, tuple)
    assert all(isinstance(n, str) for n in pooly.__all__)
    assert len(set(pooly.__all__)) == len(pooly.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [n for n in pooly.__all__ if not hasattr(pooly, n)]
    assert not missing


def test_all_matches_the_public_attributes_exactly() -> None:
    assert public_attributes() == set(pooly.__all__)


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from pooly import *", ns)
    ns.pop("__builtins__")
    assert set(ns) == set(pooly.__all__)


def test_exports_are_pooly_objects_reexported_from_private_modules() -> None:
    for name in pooly.__all__:
        module = getattr(getattr(pooly, name), "__module__", "")
        assert module.startswith("pooly._"), f"{name} comes from {module!r}"


@pytest.mark.parametrize("name", [*ERRORS, *CLASSES])
def test_spec_names_exist_and_are_exported(name: str) -> None:
    assert name in pooly.__all__
    assert isinstance(getattr(pooly, name), type)


@pytest.mark.parametrize(("name", "bases"), ERRORS.items())
def test_error_hierarchy(name: str, bases: tuple[type, ...]) -> None:
    cls = getattr(pooly, name)
    assert issubclass(cls, pooly.PoolyError)
    for base in bases:
        assert issubclass(cls, base), f"{name} must also be a {base.__name__}"
    assert cls.__doc__, f"{name} needs a docstring saying who raises it"


def test_errors_are_distinct_conditions() -> None:
    errors = [getattr(pooly, n) for n in ERRORS if n != "PoolyError"]
    assert len(set(errors)) == len(errors)
    for a in errors:
        for b in errors:
            assert a is b or not issubclass(a, b), f"{a.__name__} is a {b.__name__}"


def test_remote_traceback_is_a_cause_not_a_pooly_error() -> None:
    assert issubclass(pooly.RemoteTraceback, Exception)
    assert not issubclass(pooly.RemoteTraceback, pooly.PoolyError)
    assert "line 1" in str(pooly.RemoteTraceback('File "x", line 1\n'))


@pytest.mark.parametrize("cls", [pooly.WorkerCrashed, pooly.WorkerStartError])
def test_errors_with_pid_and_exitcode_survive_pickling(cls: type[pooly.PoolyError]) -> None:
    """They cross process boundaries (a program's own worker may re-raise one): the keyword
    arguments must come back, which a plain Exception subclass would lose."""
    e2 = pickle.loads(pickle.dumps(cls("worker died", pid=123, exitcode=-9)))  # type: ignore[call-arg]
    assert type(e2) is cls
    assert (str(e2), e2.pid, e2.exitcode) == ("worker died", 123, -9)  # type: ignore[attr-defined]


def test_pool_status_is_a_frozen_snapshot_with_the_spec_fields() -> None:
    assert dataclasses.is_dataclass(pooly.PoolStatus)
    fields = [f.name for f in dataclasses.fields(pooly.PoolStatus)]
    for name in ("name", "state", "size", "max_overflow", "idle", "busy", "overflow", "waiting"):
        assert name in fields
    status = pooly.PoolStatus(**{f: 0 for f in fields})
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.idle = 1  # type: ignore[misc]


def _params(fn: object) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def _assert_keyword_only(fn: object, *names: str) -> None:
    params = _params(fn)
    for name in names:
        assert name in params, f"{fn!r} lacks option {name!r}"
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"{name} is not keyword-only"


def test_pooly_signatures() -> None:
    _assert_keyword_only(pooly.Pooly, "start_method", "clock")
    params = _params(pooly.Pooly.start_pool)
    positional = [p for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional][:2] == ["self", "name"]
    assert "args" in params and "kwargs" in params
    _assert_keyword_only(
        pooly.Pooly.start_pool,
        "size",
        "max_overflow",
        "strategy",
        "max_restarts",
        "max_seconds",
        "start_method",
        "start_timeout",
        "shutdown_timeout",
        "restart_on_reclaim",
    )
    assert params["max_overflow"].default == 0
    assert params["strategy"].default == "lifo"
    assert (params["max_restarts"].default, params["max_seconds"].default) == (3, 5)
    for method in ("pool", "pools", "stop_pool", "stop", "__enter__", "__exit__"):
        assert callable(getattr(pooly.Pooly, method))


def test_pool_and_lease_signatures() -> None:
    _assert_keyword_only(pooly.Pool.checkout, "block", "timeout")
    assert _params(pooly.Pool.checkout)["block"].default is True
    assert _params(pooly.Pool.checkout)["timeout"].default is None
    _assert_keyword_only(pooly.Pool.transaction, "timeout")
    for method in ("checkin", "status", "worker_pids"):
        assert callable(getattr(pooly.Pool, method))
    for prop in ("pid", "active"):
        assert isinstance(inspect.getattr_static(pooly.Lease, prop), property)
    assert callable(pooly.Lease.__enter__) and callable(pooly.Lease.__exit__)


def test_supervisor_signatures() -> None:
    _assert_keyword_only(
        pooly.Supervisor, "strategy", "max_restarts", "max_seconds", "name", "clock", "listener"
    )
    for method in (
        "start",
        "stop",
        "start_child",
        "terminate_child",
        "restart_child",
        "which_children",
        "wait",
        "terminate",
        "kill",
        "reap",
    ):
        assert callable(getattr(pooly.Supervisor, method)), method
    for prop in ("failure", "running", "sentinel"):
        assert isinstance(inspect.getattr_static(pooly.Supervisor, prop), property), prop
    _assert_keyword_only(pooly.Supervisor.terminate_child, "wait")
    _assert_keyword_only(pooly.Supervisor.restart_child, "wait")
    assert [p for p in _params(pooly.ChildSpec)][:4] == ["id", "start", "restart", "shutdown"]
    _assert_keyword_only(pooly.ProcessChild.spec, "restart", "shutdown", "start_method")
    for hook in ("child_exited", "supervisor_failed"):
        assert callable(getattr(pooly.SupervisorListener, hook))
    assert list(_params(pooly.SupervisorListener.child_exited))[1:] == [
        "child_id",
        "child",
        "reason",
        "restarting",
    ]
    assert [f.name for f in dataclasses.fields(pooly.ExitReason)][:2] == ["normal", "detail"]


def test_py_typed_ships_in_the_package_directory() -> None:
    marker = importlib.resources.files("pooly").joinpath("py.typed")
    assert marker.is_file()
    assert (Path(pooly.__file__).parent / "py.typed").is_file()


def test_version_matches_the_distribution() -> None:
    assert isinstance(pooly.__version__, str)
    assert pooly.__version__ == importlib.metadata.version("pooly")
