"""Import a benchmark script (``benchmarks/<name>.py``) as a module, for tests of its logic.

The scripts import each other by bare name (``from gpu_check import ...``), as they do when run
as ``python benchmarks/gpu_check.py``; the benchmarks folder is on ``sys.path`` only while the
import runs, so no later import of the test session resolves against it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported once under its script name ``name``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module(name)
