"""Plain JSON values from what the data carries: numpy arrays and scalars inside dicts and lists."""

from __future__ import annotations

import numpy as np


def jsonable(obj):
    """``obj`` with numpy arrays as lists, numpy scalars as Python numbers, tuples as lists and
    dict keys as strings, at any depth; anything else is returned as it is."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return obj


__all__ = ["jsonable"]
