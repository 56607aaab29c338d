"""vladata: convert robot-learning logs into one canonical store and read it back fast.

>>> import vladata
>>> ds = vladata.open("calvin.vla")            # doctest: +SKIP
>>> ds.episodes, ds.segments, ds.stats["action"]["q01"], ds.episode(0)   # doctest: +SKIP
"""

from vladata.dataset import Dataset, open  # noqa: A004
from vladata.episode import Episode, EpisodeInfo, FeatureSpec, Segment, Source, iter_episodes
from vladata.errors import (IncompleteStoreError, NonFiniteError, SourceFormatError, StatsError,
                            StoreError, UnsafePickleError, VladataError)
from vladata.normalization import Normalization, denormalize, normalize
from vladata.tokenize import ActionTokenizer

__version__ = "0.1.0"


def __getattr__(name):  # the writer (and its process-pool machinery) loads on first use
    if name == "convert":
        from vladata.store.writer import convert
        return convert
    if name == "verify":  # every file and chunk of a store -> the problems found ([] if none)
        from vladata.store.manifest import verify
        return verify
    raise AttributeError(f"module 'vladata' has no attribute {name!r}")


__all__ = ["open", "Dataset", "Episode", "EpisodeInfo", "FeatureSpec", "Segment", "Source",
           "iter_episodes", "VladataError", "SourceFormatError", "UnsafePickleError",
           "StoreError", "IncompleteStoreError", "StatsError", "NonFiniteError", "convert", "verify",
           "normalize", "denormalize", "Normalization", "ActionTokenizer"]
