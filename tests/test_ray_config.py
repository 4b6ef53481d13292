"""pooly.RayBackend without Ray (issue 12, SPEC 4.6): the core never imports Ray, a
RayBackend is checked when it is made, and a pool given one where Ray can't be imported
fails to start with an error naming the extra, leaving nothing behind.

The Ray-backed pools themselves are tested on a simulated cluster by ``make test-ray``
(tests/ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pooly
from pooly._fds import host_fds


class Plain:
    def ping(self) -> str:
        return "pong"


def test_import_pooly_does_not_import_ray() -> None:
    """``import pooly`` (and making a RayBackend) leaves Ray out of ``sys.modules``."""
    code = (
        "import sys, pooly; b = pooly.RayBackend(actor_options={'num_cpus': 1}); "
        "print('ray' in sys.modules, 'pooly._ray_backend' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"], out


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"address": ""}, TypeError, "address"),
        ({"address": 6379}, TypeError, "address"),
        ({"actor_options": ["num_cpus"]}, TypeError, "actor_options must be a dict"),
        ({"actor_options": {1: 2}}, TypeError, "option names must be str"),
        ({"actor_options": {"max_restarts": 3}}, ValueError, "max_restarts is set by pooly"),
        (
            {"actor_options": {"lifetime": "detached", "name": "x"}},
            ValueError,
            "lifetime, name are set by pooly",
        ),
        ({"spares": -1}, ValueError, "spares"),
        ({"spares": True}, ValueError, "spares"),
        ({"init_options": {"address": "auto"}}, ValueError, "address="),
    ],
)
def test_bad_ray_backend_options_are_refused_by_name(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    """Each bad RayBackend option is refused when the backend is made, naming it."""
    with pytest.raises(error, match=words):
        pooly.RayBackend(**kwargs)  # type: ignore[arg-type]


def test_pool_options_that_clash_with_a_ray_backend(sup: pooly.Pooly) -> None:
    """start_method does not apply to Ray workers; spares given twice must agree; a
    backend that is not one is refused -- all before anything starts."""
    with pytest.raises(ValueError, match="start_method='fork' does not apply"):
        sup.start_pool("r", Plain, size=1, backend=pooly.RayBackend(), start_method="fork")
    with pytest.raises(ValueError, match="disagree"):
        sup.start_pool("r", Plain, size=1, spares=1, backend=pooly.RayBackend(spares=2))
    with pytest.raises(TypeError, match=r"backend must be a pooly\.RayBackend"):
        sup.start_pool("r", Plain, size=1, backend="ray")  # type: ignore[arg-type]
    assert sup.pools() == []


def test_without_ray_a_ray_pool_fails_to_start_naming_the_extra(
    sup: pooly.Pooly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where Ray can't be imported, start_pool with a RayBackend raises an ImportError
    that says to install ``pooly[ray]``; no pool is registered, no fd is left open, and
    the tree goes on starting local pools."""
    monkeypatch.setitem(sys.modules, "ray", None)  # (import ray -> ImportError)
    monkeypatch.delitem(sys.modules, "pooly._ray_backend", raising=False)
    before = host_fds()
    with pytest.raises(ImportError, match=r"pip install 'pooly\[ray\]'"):
        sup.start_pool("r", Plain, size=1, backend=pooly.RayBackend())
    assert host_fds() == before
    assert sup.pools() == []
    pool = sup.start_pool("local", Plain, size=1)
    with pool.checkout() as w:
        assert w.ping() == "pong"


def test_pooly_demo_ray_without_ray_says_what_to_install() -> None:
    """``pooly demo --ray`` where Ray can't be imported: exit status 2 and the extra to
    install, nothing started."""
    code = (
        "import sys; sys.modules['ray'] = None; from pooly.cli.main import main; "
        "sys.exit(main(['demo', '--ray', '--duration', '1']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "pip install 'pooly[ray]'" in out.stdout + out.stderr
