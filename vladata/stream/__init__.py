"""The streaming form of a store: WebDataset tar shards, and windows cut from them in the worker.

Layout written by :func:`export_wds` (``OUT`` a local directory or an fsspec URL)::

    OUT/shard-000000.tar ...   WebDataset shards: consecutive members sharing a key form a sample
    OUT/index.json             written last: format, settings, the episode and segment bounds,
                               the features and the shard list (samples, windows-free counts)
    OUT/.vlakit-export         written first, removed after index.json: an unfinished export
                               (see :mod:`vladata.stream.output` for what may be replaced)

One sample is one episode (``samples="episode"``) or one fixed-length piece of an episode
(``samples=N`` frames) -- never one window, which would store every frame ``h`` times. A piece
also carries up to ``context`` frames either side, so every window whose current step lies in the
piece can be cut from it alone (``history - 1 <= context`` and ``chunk - 1 <= context``). Members
of the sample with key ``e<episode>_<first own frame>``:

- ``meta.json``: ``episode_index``, ``episode_length``, ``split``, ``frame_start`` (offset of the
  first stored frame), ``own`` ([first, end) offsets of the frames whose windows this sample
  yields), ``segments`` (those overlapping ``own``: index, start, end, instruction, task,
  embedding);
- ``<feature>.npy`` (T, ...) for every feature (numpy format, no pickles), except JPEG images:
  ``<feature>.jpegs``, the frames' JPEG bytes as numcodecs' vlen-bytes (uint32 count, then uint32
  length + bytes per frame, little-endian).

:class:`WindowStream` reads the shards (local paths or any fsspec URL, ``s3://`` included), cuts
the same windows as :class:`vladata.loading.windows.WindowDataset` (same semantics and window ``index``)
in the worker, shuffles them through a pool of ``shuffle_buffer`` samples, and splits the stream by
rank and worker. Every rank makes ``(num_windows // world_size) // batch_size`` batches per epoch:
a consumer whose shards run out starts over on them (new order), so uneven shards never leave a
rank waiting at an epoch end; an epoch therefore may repeat or skip a few windows.
"""

from vladata.stream.export import export_wds
from vladata.stream.format import INDEX, StreamFormatError
from vladata.stream.output import export_state
from vladata.stream.reader import WindowStream
from vladata.stream.samples import iter_samples

__all__ = ["export_wds", "export_state", "iter_samples", "WindowStream", "StreamFormatError", "INDEX"]
