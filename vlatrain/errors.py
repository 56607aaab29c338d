"""The errors vlatrain raises on purpose: one branch of vladata's tree (root ``VladataError``).

A CLI catches ``VladataError`` only, so a message reaches the user as one line and an internal bug
keeps its traceback. ``ConfigError`` (every problem of a config at once) and ``StoreError`` come
from :mod:`vladata.errors`; what only training knows lives here::

    VladataError
    └── VlatrainError
        ├── CheckpointError    a checkpoint is missing, unreadable, or disagrees with the policy
        ├── RunDirError        ``out=`` is not a run directory vlatrain may write into
        ├── StoreMismatchError the stores lack what the config asks for (every mismatch at once)
        └── DivergedError      a loss part became NaN/inf (names the step and the parts)
"""

from __future__ import annotations

from vladata.errors import VladataError


class VlatrainError(VladataError):
    """Base class of every error vlatrain raises on purpose."""


class CheckpointError(VlatrainError, ValueError):
    """A checkpoint is missing, unreadable, of another format version, or names a weight or spec
    field the policy cannot take; the message names the file and the key."""


class RunDirError(VlatrainError, ValueError):
    """A run directory cannot be used: not a vlatrain run, not writable, or overlapping a store."""


class StoreMismatchError(VlatrainError, ValueError):
    """The stores cannot feed the run or evaluation the config describes; lists every mismatch."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("the data does not match the configuration:\n"
                         + "\n".join(f"  - {e}" for e in self.errors))


class DivergedError(VlatrainError, ArithmeticError):
    """Training produced a non-finite loss; the run stopped before writing a checkpoint."""
