"""One error tree: every error class the project defines descends from ``VladataError``.

The CLIs catch ``VladataError`` only (an internal bug keeps its traceback), so an error class
outside the tree would reach the user as a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import cli
import vladata
import vlatrain
from vladata.errors import VladataError
from vlatrain.errors import VlatrainError

INTERNAL = {"vladata.sources.npz._Fallback"}  # control flow inside one function, never escapes


def project_modules():
    for pkg in (vladata, vlatrain, cli):
        yield pkg.__name__
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            yield m.name


def defined_exceptions():
    found = {}
    for name in project_modules():
        mod = importlib.import_module(name)
        for obj in vars(mod).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == name):
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_error_class_is_in_the_tree():
    found = defined_exceptions()
    assert {"vlatrain.errors.CheckpointError", "vladata.sources.npz.CorruptMember",
            "vladata.loading.batching.LoaderError", "vladata.stream.format.StreamFormatError"} <= set(found)
    outside = sorted(n for n, c in found.items() if n not in INTERNAL and not issubclass(c, VladataError))
    assert not outside, f"error classes outside the VladataError tree: {outside}"


@pytest.mark.parametrize("name", ["CheckpointError", "RunDirError", "DivergedError"])
def test_vlatrain_errors_are_one_branch(name):
    import vlatrain.errors as errors
    assert issubclass(getattr(errors, name), VlatrainError)
    from vlatrain.checkpoint import CheckpointError
    assert CheckpointError is errors.CheckpointError
