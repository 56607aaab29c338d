"""The error hierarchy of vladata.

Every error names *where* the problem is (file, episode, key, frame) and *what was expected*, so a
user can fix the input without reading our code. They subclass builtins so ``except ValueError``
still works for callers that do not know vladata. Every error the project raises on purpose is in
this one tree (``tests/test_error_tree.py`` checks it), so the CLIs catch ``VladataError`` alone and
an internal bug keeps its traceback. Subclasses defined beside the code that raises them::

    VladataError
    ├── SourceFormatError ── UnsafePickleError, npz.CorruptMember,
    │                        oxe.tfrecord.RecordError (CorruptRecordError, ...), FeatureMismatchError
    ├── StoreError ── IncompleteStoreError, ShardFormatError, stream.StreamFormatError
    ├── SelectionError     a split, camera or feature the data does not have
    ├── StatsError ── NonFiniteError
    ├── store.engines.EngineError   parts that could not be run (Ray workers or nodes lost)
    ├── ConfigError ── NormalizationError, sources.mapping.MappingError
    ├── ImageDecodeError, SamplerStateError, batching.LoaderError
    └── vlatrain.errors.VlatrainError ── CheckpointError, RunDirError, StoreMismatchError,
                                         DivergedError, (vlm.loading.WeightsError is a VladataError)
"""

from __future__ import annotations


class VladataError(Exception):
    """Base class of every error vladata raises on purpose."""


class SourceFormatError(VladataError, ValueError):
    """Raw input does not match the format its reader expects.

    >>> raise SourceFormatError("missing key 'rel_actions'", file="episode_0000001.npz")
    Traceback (most recent call last):
    ...
    vladata.errors.SourceFormatError: episode_0000001.npz: missing key 'rel_actions'
    """

    def __init__(self, message: str, *, file: object = None, episode: object = None,
                 key: str | None = None, frame: int | None = None):
        self.file, self.episode, self.key, self.frame = file, episode, key, frame
        where = []
        if file is not None:
            where.append(str(file))
        if episode is not None:
            where.append(f"episode {episode}")
        if key is not None:
            where.append(f"key {key!r}")
        if frame is not None:
            where.append(f"frame {frame}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class UnsafePickleError(SourceFormatError):
    """A pickled file asked for something other than plain containers, numbers, strings, arrays."""


class StoreError(VladataError, ValueError):
    """A store is missing, incomplete, or of a format version this code cannot read."""


class IncompleteStoreError(StoreError):
    """A conversion was interrupted: the manifest that marks a complete store is absent."""


class SelectionError(VladataError, KeyError, ValueError):
    """A request names a split, camera, feature or dimension the data does not have.

    A ``KeyError`` and a ``ValueError`` for callers that caught those before; prints as plain text.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StatsError(VladataError, ValueError):
    """A statistic is missing or cannot be computed (NaN/inf in the data, empty feature)."""


class NonFiniteError(StatsError):
    """NaN or inf in a feature; names the feature, episode and frame where it occurs."""

    def __init__(self, message: str, *, feature: str | None = None, episode: int | None = None,
                 frame: int | None = None, row: int | None = None, dim: int | None = None):
        self.feature, self.episode, self.frame, self.row, self.dim = feature, episode, frame, row, dim
        super().__init__(message)


class ConfigError(VladataError, ValueError):
    """A configuration has one or more errors; all of them are listed in the message."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in self.errors))


class PolicyServerError(VladataError, RuntimeError):
    """A policy server refused a request (``code`` says why) or the connection to it failed."""

    def __init__(self, message: str, code: str | None = None):
        self.code = code
        super().__init__(message)


class EnvError(VladataError, ValueError):
    """An environment (``vlaenv``) was asked for what it cannot do: bad action, unknown camera."""


class UnknownTaskError(EnvError):
    """A task name the environment does not know; the message lists the known ones."""


class PolicyUnavailableError(VladataError, RuntimeError):
    """A policy cannot be built (e.g. a checkpoint while the policy runtime is missing)."""


class ObservationError(VladataError, ValueError):
    """A live observation handed to a policy lacks a key, or has the wrong shape, dtype or values;
    the message names every offending key with what was expected."""
