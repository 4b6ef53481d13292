"""Tests of pooly's Ray backend (issue 12) on a local simulated Ray cluster: `make test-ray`.

Ray is heavy, so it lives in a venv of its own (.venv-ray) and these tests run only when
``POOLY_TEST_RAY=1`` (which `make test-ray` sets). Each test module starts with
``ray = require_ray()``: anywhere else (`make test`, the main .venv) the module is skipped
with a reason, before it imports Ray. The gate is here, not in conftest.py, because pytest
turns a skip raised while importing a conftest named on its command line into an error.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import pytest

SKIP_REASON = "Ray tests run with `make test-ray` (they need POOLY_TEST_RAY=1 and Ray)"

# Set before Ray is imported (Ray reads them at import and passes them on to every process it
# starts). Without the second, Ray replaces 127.0.0.1 by this host's interface address, and a
# driver dials that address even when every node listens on 127.0.0.1 (issue 12): with it,
# driver, GCS, raylets and workers all stay on 127.0.0.1. Nothing here may leave the machine.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


#: The repository: on the PYTHONPATH of every Ray process (they inherit this process's
#: environment), so an actor can import the tests' worker classes (tests.ray.ray_workers).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def set_ray_env() -> None:
    """Put RAY_ENV into this process's environment (values already set are kept), and the
    repository on its PYTHONPATH."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])


def require_ray() -> ModuleType:
    """Return the ``ray`` module, or skip the calling test module (call it at module level)."""
    if os.environ.get("POOLY_TEST_RAY") != "1":
        pytest.skip(SKIP_REASON, allow_module_level=True)
    set_ray_env()
    try:
        with warnings.catch_warnings():
            # Ray's own import-time warnings; the suite turns warnings into errors.
            warnings.simplefilter("ignore")
            import ray
    except ImportError as e:
        pytest.skip(f"{SKIP_REASON}; here: {e}", allow_module_level=True)
    return ray
