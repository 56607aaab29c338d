"""Discretise normalised actions into token ids, and back; the id layout is a named choice.

Binning (``binning``) of a normalised value ``x`` (clipped to [-1, 1]) into ``bin`` in
``[0, bins)``:

* ``"uniform"`` (default): ``bins`` equal intervals of width ``w = 2 / bins``;
  ``bin = min(floor((x + 1) / w), bins - 1)`` and a bin decodes to its centre
  ``-1 + (bin + 0.5) * w``, so ``|decode(encode(x)) - x| <= w / 2`` on [-1, 1].
* ``"openvla"``: OpenVLA's and RoboVLMs' edges ``np.linspace(-1, 1, bins)``, i.e. ``bins - 1``
  intervals of width ``w = 2 / (bins - 1)``: ``bin = np.digitize(x, edges) - 1``, which is
  ``bins - 1`` only for ``x == 1.0``; decoding clips the bin to ``bins - 2`` and returns that
  interval's centre -- exactly ``decode_token_ids_to_actions`` of those projects (error <= w / 2).
  Use it (with the matching layout and vocabulary) to read or write tokens of their checkpoints.

Token-id layouts (``layout``), for ``bin`` from the binning above:

* ``"offset"``: ``id = offset + bin`` (offset 10 by default, the seed recipe's "add offset to
  avoid special token conflicts"); ids ``[offset, offset + bins - 1]``.
* ``"openvla"``: ``id = vocab_size - 1 - bin``. OpenVLA (``prismatic/vla/action_tokenizer.py``)
  computes ``tokenizer.vocab_size - np.digitize(x, bins)`` with ``digitize`` in ``[1, bins]``,
  i.e. ``vocab_size - (bin + 1)``: the highest id is the lowest bin; ids
  ``[vocab_size - bins, vocab_size - 1]``.
* ``"robovlms"``: ``id = vocab_size - n_special - 10 - 1 - bin``. RoboVLMs
  (Robot-VLAs/RoboVLMs ``robovlms/model/policy_head/action_tokenizer.py``, commit 8adc1d2)
  sets ``tokenizer_orig_size = tokenizer.vocab_size - special_tokens_count - offset`` with a
  hard-coded ``offset = 10`` and ``special_tokens_count`` = the number of entries of
  ``tokenizer.special_tokens_map_extended``, then emits ``tokenizer_orig_size -
  np.digitize(x, bins)``; with ``digitize = bin + 1`` that is the formula above. (The issue's
  ``vocab_size - n_special - 10 - bin`` counts ``bin`` from 1, as ``digitize`` does.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vladata.errors import ConfigError, StatsError

LAYOUTS = ("offset", "openvla", "robovlms")
BINNINGS = ("uniform", "openvla")
ROBOVLMS_OFFSET = 10   # hard-coded ``offset = 10`` in RoboVLMs' ActionTokenizer


@dataclass(frozen=True)
class ActionTokenizer:
    """Uniform bins on [-1, 1] and a token-id layout; recorded in the store (``to_dict``)."""

    bins: int = 256
    layout: str = "offset"
    offset: int = 10                  # layout "offset": the id of bin 0
    vocab_size: int | None = None     # layouts "openvla", "robovlms": the LLM tokenizer's vocab_size
    n_special: int | None = None      # layout "robovlms": its special-token count
    binning: str = "uniform"

    def __post_init__(self):
        errors = []

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.bins) or self.bins < 2:
            errors.append(f"bins must be an integer >= 2, got {self.bins!r}")
        if self.layout not in LAYOUTS:
            errors.append(f"layout {self.layout!r} is not one of {LAYOUTS}")
        if self.binning not in BINNINGS:
            errors.append(f"binning {self.binning!r} is not one of {BINNINGS}")
        elif self.binning == "openvla" and is_int(self.bins) and self.bins < 3:
            errors.append("binning 'openvla' needs bins >= 3 (bins - 1 intervals)")
        if not is_int(self.offset) or self.offset < 0:
            errors.append(f"offset must be an integer >= 0, got {self.offset!r}")
        if self.layout in ("openvla", "robovlms") and not is_int(self.vocab_size):
            errors.append(f"layout {self.layout!r} needs vocab_size (the LLM tokenizer's)")
        if self.layout == "robovlms" and (not is_int(self.n_special) or self.n_special < 0):
            errors.append("layout 'robovlms' needs n_special >= 0 (len of the tokenizer's "
                          "special_tokens_map_extended entries)")
        if not errors and self.layout != "offset" and self.vocab_range()[0] < 0:
            errors.append(f"vocab_size {self.vocab_size} is too small for {self.bins} bins in "
                          f"layout {self.layout!r} (lowest id would be {self.vocab_range()[0]})")
        if errors:
            raise ConfigError(errors)

    # ids <-> bins
    def _top(self) -> int:
        """The id of bin 0 in the descending layouts."""
        if self.layout == "openvla":
            return self.vocab_size - 1
        return self.vocab_size - self.n_special - ROBOVLMS_OFFSET - 1

    def vocab_range(self) -> tuple[int, int]:
        """(lowest id, highest id) this tokenizer emits."""
        if self.layout == "offset":
            return self.offset, self.offset + self.bins - 1
        return self._top() - (self.bins - 1), self._top()

    def id_of_bin(self, b) -> np.ndarray:
        b = np.asarray(b, np.int64)
        bad = (b < 0) | (b >= self.bins)
        if bad.any():
            raise ValueError(f"bins must be in [0, {self.bins}), got {np.unique(b[bad])[:8].tolist()}")
        return self.offset + b if self.layout == "offset" else self._top() - b

    def bin_of_id(self, ids) -> np.ndarray:
        """int64 bins of token ids; ids outside :meth:`vocab_range` raise ValueError."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        lo, hi = self.vocab_range()
        bad = (ids < lo) | (ids > hi)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} token ids outside [{lo}, {hi}] of layout "
                             f"{self.layout!r} ({self.bins} bins), e.g. "
                             f"{np.unique(ids[bad])[:8].tolist()}")
        return ids - self.offset if self.layout == "offset" else self._top() - ids

    # values <-> bins
    def bin_of(self, x) -> np.ndarray:
        """int64 bins of normalised values (clipped to [-1, 1]; NaN raises ValueError)."""
        x = np.asarray(x, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("cannot tokenise NaN")
        x = np.clip(x, -1.0, 1.0)
        if self.binning == "openvla":
            return np.digitize(x, np.linspace(-1.0, 1.0, self.bins)).astype(np.int64) - 1
        return np.minimum(np.floor((x + 1.0) * (self.bins / 2.0)), self.bins - 1).astype(np.int64)

    def centres(self) -> np.ndarray:
        """float32 (bins,): the value each bin decodes to."""
        if self.binning == "openvla":
            edges = np.linspace(-1.0, 1.0, self.bins)
            mid = (edges[:-1] + edges[1:]) / 2.0                           # (bins - 1,)
            return np.append(mid, mid[-1]).astype(np.float32)
        return (-1.0 + (np.arange(self.bins) + 0.5) * (2.0 / self.bins)).astype(np.float32)

    def bin_width(self) -> float:
        return 2.0 / (self.bins - 1 if self.binning == "openvla" else self.bins)

    def encode(self, x) -> np.ndarray:
        """Normalised values (...) -> int64 token ids (...)."""
        return self.id_of_bin(self.bin_of(x))

    def decode(self, ids) -> np.ndarray:
        """Token ids (...) -> float32 bin centres (...); ids outside the layout raise ValueError."""
        return self.centres()[self.bin_of_id(ids)]

    def to_dict(self) -> dict:
        return {"bins": int(self.bins), "layout": self.layout, "offset": int(self.offset),
                "vocab_size": None if self.vocab_size is None else int(self.vocab_size),
                "n_special": None if self.n_special is None else int(self.n_special),
                "binning": self.binning}

    @classmethod
    def from_dict(cls, d: dict) -> "ActionTokenizer":
        if not isinstance(d, dict):
            raise ConfigError([f"tokenizer must be a dict, got {type(d).__name__}"])
        allowed = {"bins", "layout", "offset", "vocab_size", "n_special", "binning"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError([f"tokenizer: unknown key {k!r} (allowed: {sorted(allowed)})"
                               for k in unknown])
        return cls(**d)

    @classmethod
    def from_dataset(cls, ds) -> "ActionTokenizer":
        """The tokenizer a store recorded (``ds.info["tokenizer"]``) when it wrote action.tokens."""
        d = (getattr(ds, "info", None) or {}).get("tokenizer")
        if d is None:
            where = getattr(ds, "path", None) or "this store"
            raise StatsError(f"{where} records no action tokenizer (no 'tokenizer' in its info): "
                             f"it has no action.tokens; run `vladata stats` on it to write them")
        return cls.from_dict(d)


__all__ = ["ActionTokenizer", "LAYOUTS", "BINNINGS", "ROBOVLMS_OFFSET"]
