"""``python -m pooly ...``: the same as the ``pooly`` command (see :mod:`pooly.cli`)."""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
