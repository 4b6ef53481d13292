"""A worker class for tests/test_zygote.py (importable by worker processes).

Kept apart from the test module so a pool's fork server imports only this, not pytest.
"""

from __future__ import annotations

import os
import sys

from tests.workers import Counter


class Probe(Counter):
    """A Counter that also reports what its process sees."""

    def getenv(self, name: str) -> str | None:
        return os.environ.get(name)

    def parent(self) -> int:
        return os.getppid()

    def loaded(self, module: str) -> bool:
        return module in sys.modules
