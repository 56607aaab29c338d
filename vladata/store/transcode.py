"""``vladata transcode``: a finished store rewritten with another image codec, without its source.

The store is read back as a source (:class:`vladata.sources.store.StoreSource`) and written by
the ordinary writer, so the output rules (never into or around the input, ``--overwrite`` only
over a vlakit store, resumable parts) and the statistics are the same as a conversion's. The
store's tokenizer and statistics quantiles are kept unless others are given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vladata.sources.store import StoreSource, tokenizer_of
from vladata.store import layout
from vladata.store.writer import Summary, convert


def recorded_quantiles(path: str | os.PathLike) -> tuple[float, ...]:
    """The quantiles a store's ``meta/stats.json`` holds (q01/q99 at least)."""
    doc = json.loads((Path(path) / layout.STATS).read_text())
    return tuple(float(q) for q in doc.get("quantiles", (0.01, 0.99)))


def transcode(store: str | os.PathLike, out: str | os.PathLike, *, image_codec: str,
              tokenizer=None, quantiles=None, **options) -> Summary:
    """Write the store at ``store`` to ``out`` with ``image_codec`` (``options``: as
    :func:`~vladata.store.writer.convert`'s: workers, resume, overwrite, gop, crf, ...)."""
    source = StoreSource(store)
    return convert(source, out, image_codec=image_codec,
                   tokenizer=tokenizer or tokenizer_of(store),
                   quantiles=quantiles or recorded_quantiles(store), inputs=[str(store)],
                   **options)


__all__ = ["transcode", "recorded_quantiles"]
