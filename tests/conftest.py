"""Shared fixtures come from tests/helpers (a package: import its builders, use its fixtures)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.helpers.stores"]
