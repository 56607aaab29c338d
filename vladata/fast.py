"""FAST action tokens: a DCT per action dimension, scaled and rounded, then BPE.

FAST (Pertsch et al. 2025, arXiv 2501.09747) tokenises a *normalised* action chunk ``x`` of
``c`` steps and ``A`` dimensions:

1. ``C = dct(x, axis=time, type=2, norm="ortho")``: (c, A) coefficients, the lowest frequency of
   every dimension in row 0;
2. ``q = round(C * scale)``: integers (``scale`` sets the precision: the round trip of a value
   is off by at most ``0.5 / scale`` per coefficient, so by ``0.5 * sqrt(c) / scale`` per value
   in the worst case, typically far less);
3. ``q`` is flattened row-major (frequency-major: every dimension's lowest frequency first) and
   each integer becomes the character ``chr(q - min_token)``; ``min_token``/``max_token`` are the
   extremes seen when fitting;
4. a byte-pair encoding (HF ``tokenizers``, no pre-tokenizer, the alphabet being every character
   of ``[min_token, max_token]``) merges frequent runs: the ids of a chunk are the BPE tokens of
   its string, at most ``c * A`` of them (each character is a token of the alphabet).

Decoding concatenates the tokens' characters, expects exactly ``c * A`` coefficients and inverts
steps 3 -> 1 (``idct``). A generated sequence need not decode: a wrong number of coefficients
(or an id outside the vocabulary) makes it *undecodable*, and :meth:`FastTokenizer.decode`
takes a defined fallback, reported per sequence in its ``ok`` flags:

- ``"pad"`` (default): too few coefficients are completed with zeros (the missing ones are the
  highest frequencies), too many are truncated to ``c * A``; ids outside the vocabulary still
  give the ``"zeros"`` result;
- ``"zeros"``: the chunk decodes to zeros, as the published FAST+ processor does.

**Compatibility with FAST+** (``physical-intelligence/fast``, ``processing_action_tokenizer.py``):
the DCT, the rounding, the flattening order, the character mapping (``chr(q - min_token)``)
and the BPE model are the same, so a chunk gives the same characters and the saved
``meta/fast_tokenizer.json`` is a plain ``tokenizers`` JSON that ``PreTrainedTokenizerFast(
tokenizer_file=...)`` loads. Differences: FAST+ clips only below (``max(q - min_token, 0)``);
here ``q`` is clipped to ``[min_token, max_token]`` on both sides so every character is in the
alphabet (FAST+ would emit an out-of-alphabet character for a coefficient above the fitted
range); decoding joins the tokens' characters directly (FAST+ calls the HF tokenizer's
``decode``); undecodable sequences default to ``"pad"`` rather than FAST+'s zeros; and the
settings (scale, min_token, chunk, action_dim) live in ``meta/fast.json``, not in a
``processor_config.json``. The universal FAST+ vocabulary itself is not shipped: a store fits
its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import vladata.atomic as atomic
from vladata.errors import ConfigError, StatsError

FAST_TOKENIZER = "meta/fast_tokenizer.json"   # the BPE, a `tokenizers` JSON
FAST_SETTINGS = "meta/fast.json"              # FastSettings.to_dict()
FORMAT_VERSION = 1
FALLBACKS = ("pad", "zeros")


@dataclass(frozen=True)
class FastSettings:
    """How a store's FAST tokenizer was fitted; ``meta/fast.json``."""

    chunk: int                 # c: steps per chunk
    action_dim: int            # A
    scale: float               # coefficients are multiplied by this before rounding
    vocab_size: int            # BPE vocabulary actually reached (<= the size asked for)
    min_token: int             # the smallest rounded coefficient seen when fitting
    max_token: int             # the largest
    split: str = "train"       # the episodes the chunks came from
    chunks: int = 0            # how many chunks it was fitted on
    normalization: str = ""    # digest of the action statistics/normalisation it was fitted under
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "fast settings") -> "FastSettings":
        if not isinstance(d, dict):
            raise StatsError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise StatsError(f"{where}: format_version {version} is not readable by this vlakit "
                             f"(reads {FORMAT_VERSION}); refit with `vladata stats STORE --fast`")
        unknown = sorted(set(d) - {f for f in cls.__dataclass_fields__})
        missing = sorted({"chunk", "action_dim", "scale", "vocab_size", "min_token",
                          "max_token"} - set(d))
        if unknown or missing:
            raise StatsError(f"{where}: unknown keys {unknown}, missing keys {missing}")
        return cls(**d)

    @property
    def length(self) -> int:
        """The most tokens a chunk can take: one per coefficient."""
        return self.chunk * self.action_dim


def _need(module: str):
    """Import an optional dependency of FAST (the ``fast`` extra) or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError([f"FAST tokens need {module.split('.')[0]!r}: "
                           f"pip install 'vlakit[fast]'"]) from None


def dct(x: np.ndarray, axis: int) -> np.ndarray:
    return _need("scipy.fft").dct(x, type=2, axis=axis, norm="ortho")


def idct(x: np.ndarray, axis: int) -> np.ndarray:
    return _need("scipy.fft").idct(x, type=2, axis=axis, norm="ortho")


def normalization_digest(info: dict, action_stats: dict) -> str:
    """A digest of what maps ``action`` to ``action.norm``: a refit is due when it changes."""
    doc = {"normalization": info.get("normalization"),
           "stats": {k: np.asarray(v, np.float64).round(12).tolist()
                     for k, v in sorted(action_stats.items())}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class FastTokenizer:
    """DCT + scale + BPE over normalised (c, A) chunks; see the module docstring."""

    def __init__(self, settings: FastSettings, bpe):
        self.settings, self.bpe = settings, bpe
        self.vocab_size = int(bpe.get_vocab_size())
        pieces = [bpe.id_to_token(i) for i in range(self.vocab_size)]
        if any(p is None for p in pieces):
            raise StatsError("the FAST tokenizer's vocabulary has holes (ids without a token)")
        self.pieces = pieces
        self.token_lengths = np.asarray([len(p) for p in pieces], np.int64)  # coefficients per id

    # -- fitting --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, chunks: np.ndarray, *, scale: float = 10.0, vocab_size: int = 1024,
            split: str = "train", normalization: str = "", progress: bool = False
            ) -> "FastTokenizer":
        """Fit on normalised chunks (N, c, A): the coefficient range, then the BPE."""
        tokenizers = _need("tokenizers")
        Tokenizer, models, trainers = tokenizers.Tokenizer, tokenizers.models, tokenizers.trainers
        chunks = np.asarray(chunks, np.float64)
        errors = []
        if chunks.ndim != 3 or len(chunks) == 0:
            errors.append(f"expected chunks shaped (N, c, A) with N >= 1, got {chunks.shape}")
        if not scale > 0:
            errors.append(f"scale must be > 0, got {scale}")
        if errors:
            raise ConfigError(errors)
        if not np.isfinite(chunks).all():
            raise StatsError("cannot fit FAST on non-finite actions")
        q = np.around(dct(chunks, axis=1) * scale).astype(np.int64)
        lo, hi = int(q.min()), int(q.max())
        if hi - lo + 1 > vocab_size:
            raise ConfigError([f"fast vocab {vocab_size} is smaller than the {hi - lo + 1} "
                               f"distinct rounded coefficients at scale {scale}: raise the "
                               f"vocabulary or lower the scale"])
        strings = ("".join(map(chr, row)) for row in (q - lo).reshape(len(q), -1))
        trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=2,
                                      show_progress=progress, special_tokens=[],
                                      initial_alphabet=[chr(i) for i in range(hi - lo + 1)],
                                      max_token_length=10000)
        bpe = Tokenizer(models.BPE())
        bpe.train_from_iterator(strings, trainer=trainer, length=len(q))
        c, a = chunks.shape[1:]
        settings = FastSettings(chunk=int(c), action_dim=int(a), scale=float(scale),
                                vocab_size=int(bpe.get_vocab_size()), min_token=lo, max_token=hi,
                                split=split, chunks=len(q), normalization=normalization)
        return cls(settings, bpe)

    # -- encoding -------------------------------------------------------------------------------
    def _strings(self, chunks: np.ndarray) -> list[str]:
        s = self.settings
        x = np.asarray(chunks, np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.shape[1:] != (s.chunk, s.action_dim):
            raise ValueError(f"FAST was fitted on ({s.chunk}, {s.action_dim}) chunks, got "
                             f"{x.shape[1:]}")
        if not np.isfinite(x).all():
            raise ValueError("cannot FAST-encode non-finite actions")
        q = np.around(dct(x, axis=1) * s.scale).astype(np.int64)
        q = np.clip(q, s.min_token, s.max_token) - s.min_token
        return ["".join(map(chr, row)) for row in q.reshape(len(q), -1)]

    def encode(self, chunks) -> list[list[int]]:
        """Normalised (c, A) or (N, c, A) chunks -> N lists of token ids (variable length)."""
        return [e.ids for e in self.bpe.encode_batch(self._strings(chunks), add_special_tokens=False)]

    def encode_into(self, chunks, ids: np.ndarray, mask: np.ndarray) -> None:
        """Encode (N, c, A) chunks into ``ids`` (N, L) int64 padded with 0 and ``mask`` (N, L)
        bool (true on the real tokens); ``L >= c * A`` always fits."""
        ids[...] = 0
        mask[...] = False
        for j, seq in enumerate(self.encode(chunks)):
            ids[j, :len(seq)] = seq
            mask[j, :len(seq)] = True

    # -- decoding -------------------------------------------------------------------------------
    def decode(self, sequences, mask=None, *, fallback: str = "pad"
               ) -> tuple[np.ndarray, np.ndarray]:
        """Token sequences -> (float32 chunks (N, c, A), ok (N,) bool).

        ``sequences``: a list of id lists, or an int array (N, L) with ``mask`` (N, L) marking
        the real tokens (all of them without a mask). An undecodable sequence (``ok`` false)
        takes ``fallback`` (module docstring).
        """
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if isinstance(sequences, np.ndarray) or hasattr(sequences, "numpy"):
            arr = np.asarray(sequences)
            m = np.ones(arr.shape, bool) if mask is None else np.asarray(mask, bool)
            sequences = [row[mr].tolist() for row, mr in zip(arr.reshape(-1, arr.shape[-1]),
                                                             m.reshape(-1, m.shape[-1]))]
        s = self.settings
        n = s.length
        coeffs = np.zeros((len(sequences), n), np.float64)
        ok = np.zeros(len(sequences), bool)
        for j, seq in enumerate(sequences):
            if any(not 0 <= int(t) < self.vocab_size for t in seq):
                continue                                             # zeros, whatever fallback
            values = [ord(ch) for t in seq for ch in self.pieces[int(t)]]
            ok[j] = len(values) == n
            if ok[j] or fallback == "pad":
                values = values[:n]
                coeffs[j, :len(values)] = values
                coeffs[j, :len(values)] += s.min_token
        coeffs = coeffs.reshape(-1, s.chunk, s.action_dim) / s.scale
        return idct(coeffs, axis=1).astype(np.float32), ok

    def error_bound(self) -> float:
        """The worst-case round-trip error of a value inside the fitted range (0.5/scale per
        coefficient, an orthonormal transform over ``c`` of them)."""
        return 0.5 * np.sqrt(self.settings.chunk) / self.settings.scale

    # -- saving ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Settings and BPE as one JSON-able dict (a checkpoint's copy)."""
        return {"settings": self.settings.to_dict(), "tokenizer": self.bpe.to_str()}

    @classmethod
    def from_json(cls, d: dict, where: str = "fast tokenizer") -> "FastTokenizer":
        Tokenizer = _need("tokenizers").Tokenizer
        settings = FastSettings.from_dict(d.get("settings"), where)
        try:
            bpe = Tokenizer.from_str(d["tokenizer"])
        except Exception as e:  # the tokenizers library raises its own Exception type
            raise StatsError(f"{where}: not a readable `tokenizers` JSON: {e}") from None
        return cls(settings, bpe)

    def save(self, store: str | os.PathLike) -> None:
        """Write ``meta/fast_tokenizer.json`` then ``meta/fast.json`` (:mod:`vladata.atomic`:
        each to a temporary name, renamed into place; the settings last, and a tokenizer without
        its settings is never read)."""
        root = Path(store)
        atomic.write_bytes(root / FAST_TOKENIZER, self.bpe.to_str().encode())
        atomic.write_json(root / FAST_SETTINGS, self.settings.to_dict())

    @classmethod
    def load(cls, ds) -> "FastTokenizer":
        """The FAST tokenizer of a store (a ``vladata.Dataset``); raises if it has none or if its
        action statistics changed since the fit."""
        root = Path(ds.path)
        if not (root / FAST_SETTINGS).is_file():
            raise StatsError(f"{ds.path}: no FAST tokenizer ({FAST_SETTINGS}); fit one with "
                             f"`vladata stats {ds.path} --fast`")
        where = str(root / FAST_SETTINGS)
        try:
            settings = json.loads((root / FAST_SETTINGS).read_text())
            text = (root / FAST_TOKENIZER).read_text()
        except (OSError, ValueError) as e:
            raise StatsError(f"{where}: cannot read the FAST tokenizer: {e}") from None
        tok = cls.from_json({"settings": settings, "tokenizer": text}, where)
        digest = normalization_digest(ds.info, ds.stats.get("action", {}))
        if tok.settings.normalization and tok.settings.normalization != digest:
            raise StatsError(f"{where}: the FAST tokenizer was fitted under other action "
                             f"statistics than the store's now; refit with "
                             f"`vladata stats {ds.path} --fast`")
        return tok

    def __eq__(self, other) -> bool:
        return (isinstance(other, FastTokenizer) and self.settings == other.settings
                and self.bpe.to_str() == other.bpe.to_str())

    __hash__ = None


def store_chunks(ds, chunk: int, split: str | None = "train", *, key: str = "action.norm",
                 max_chunks: int | None = None) -> np.ndarray:
    """float64 (N, c, A): the chunk starting at every frame of the ``split`` episodes of ``ds``,
    edge-padded past the episode end as windows pad them (``vladata.windows``); with
    ``max_chunks``, an evenly spaced subset of them."""
    from vladata.store.shard_reader import StoreReader
    eps = ds.episodes
    if split is not None:
        eps = eps.filter(eps["split"] == split)
    if eps.height == 0:
        raise StatsError(f"{ds.path}: no {split!r} episodes to fit FAST on")
    arr = StoreReader(ds.path)[key]
    ahead = np.arange(chunk)
    out = []
    for start, length in zip(eps["start"].to_list(), eps["length"].to_list()):
        rows = arr.read(start, start + length).astype(np.float64)      # (T, A)
        idx = np.minimum(np.arange(length)[:, None] + ahead, length - 1)  # (T, c)
        out.append(rows[idx])
    chunks = np.concatenate(out)
    if max_chunks is not None and len(chunks) > max_chunks:
        chunks = chunks[np.linspace(0, len(chunks) - 1, max_chunks).round().astype(np.int64)]
    return chunks


def fit_store(path: str | os.PathLike, *, chunk: int = 10, scale: float = 10.0,
              vocab_size: int = 1024, max_chunks: int | None = 200_000,
              progress: bool = False) -> FastTokenizer:
    """Fit FAST on the statistics split's normalised chunks of the store at ``path``, save it
    in the store (:meth:`FastTokenizer.save`) and re-list the store's files.

    Everything is computed first; the store is then changed under the statistics commit marker
    (``meta/restats.json``, :mod:`vladata.store.finalize`): a run interrupted while writing leaves
    a store that ``vladata.open`` refuses until ``vladata stats`` is rerun, never a manifest
    that disagrees with the files."""
    from vladata.dataset import open as open_dataset
    from vladata.store import layout, manifest
    ds = open_dataset(path)
    if chunk < 1:
        raise ConfigError([f"fast chunk must be >= 1, got {chunk}"])
    split = ds.info.get("stats_split", "train")
    chunks = store_chunks(ds, chunk, None if split == "all" else split, max_chunks=max_chunks)
    tok = FastTokenizer.fit(chunks, scale=scale, vocab_size=vocab_size, split=split,
                            normalization=normalization_digest(ds.info, ds.stats.get("action", {})),
                            progress=progress)
    root = Path(path)
    atomic.write_json(root / layout.RESTATS, {"vlakit": "FAST tokenizer commit in progress"})
    (root / FAST_SETTINGS).unlink(missing_ok=True)  # ours; the tokenizer is never read without it
    tok.save(root)
    manifest.refresh(root)
    (root / layout.RESTATS).unlink()
    return tok


def load_for_windows(ds, chunk: int, action_key: str) -> FastTokenizer:
    """The store's FAST tokenizer, checked to fit windows of ``chunk`` steps of ``action_key``."""
    tok = FastTokenizer.load(ds)
    if action_key != "action.norm" or tok.settings.chunk != chunk:
        raise StatsError(f"{ds.path}: its FAST tokenizer encodes chunks of {tok.settings.chunk} "
                         f"steps of 'action.norm'; these windows cut {chunk} steps of "
                         f"{action_key!r} (refit with `vladata stats {ds.path} --fast "
                         f"--fast-chunk {chunk}`)")
    return tok


def load_settings(path: str | os.PathLike) -> FastSettings | None:
    """The FAST settings recorded in the store at ``path``, or None."""
    p = Path(path) / FAST_SETTINGS
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StatsError(f"{p}: cannot read the FAST settings: {e}") from None
    return FastSettings.from_dict(doc, str(p))


__all__ = ["FastTokenizer", "FastSettings", "store_chunks", "fit_store", "load_settings", "load_for_windows", "FAST_TOKENIZER", "FAST_SETTINGS", "FALLBACKS",
           "normalization_digest"]
