"""Language augmentation: a training window's instruction replaced by another phrasing of its task.

A store names the task of each language segment (``task``) beside its ``instruction``; CALVIN
annotates every task with several phrasings, so its segments table already lists them. A store
may add more in ``meta/paraphrases.json``::

    {"format_version": 1,
     "tasks": {"open_drawer": ["pull the drawer open",
                               {"instruction": "open the drawer", "embedding": [0.1, ...]}]}}

The phrasings of a task are its distinct instructions in the segments table (with their stored
embeddings) and its paraphrases, in that order, each text once. When the store has instruction
embeddings (``language.embedding`` of width E > 0), only phrasings that carry one (of width E)
can stand in, so text and embedding always agree; a store without embeddings swaps text only.

:class:`LanguageAugmenter` runs in the trainer's batch preparation (``data.language_augmentation``
= p, off at 0): for each training window with an instruction whose task has another phrasing,
with probability p the instruction (and its embedding) becomes one of the *other* phrasings,
drawn uniformly. The draws come from the run's augmentation generator (saved in checkpoints), two
per window of every batch whatever the batch holds, so a run is reproducible from its seed, is
resumed exactly, and does not depend on the number of loader workers (which never changes a
batch). Validation never swaps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vladata.errors import StoreError

PARAPHRASES = "meta/paraphrases.json"


@dataclass(frozen=True)
class Phrasing:
    instruction: str
    embedding: tuple[float, ...] | None = None


def read_paraphrases(path: str | Path) -> dict[str, list[Phrasing]]:
    """``meta/paraphrases.json`` of the store at ``path`` (empty if it has none)."""
    p = Path(path) / PARAPHRASES
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{p}: unreadable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != 1 or not isinstance(
            doc.get("tasks"), dict):
        raise StoreError(f"{p}: expected {{\"format_version\": 1, \"tasks\": {{task: [...]}}}}")
    out = {}
    for task, items in doc["tasks"].items():
        if not isinstance(items, list):
            raise StoreError(f"{p}: task {task!r}: expected a list of phrasings")
        out[task] = [_phrasing(p, task, x) for x in items]
    return out


def _phrasing(path: Path, task: str, x) -> Phrasing:
    if isinstance(x, str) and x:
        return Phrasing(x)
    if (isinstance(x, dict) and isinstance(x.get("instruction"), str) and x["instruction"]
            and set(x) <= {"instruction", "embedding"}):
        emb = x.get("embedding")
        if emb is not None and not (isinstance(emb, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb)):
            raise StoreError(f"{path}: task {task!r}, {x['instruction']!r}: embedding must be "
                             f"a list of numbers")
        return Phrasing(x["instruction"], None if emb is None else tuple(float(v) for v in emb))
    raise StoreError(f"{path}: task {task!r}: a phrasing is a non-empty string or "
                     f"{{\"instruction\": str, \"embedding\": [float, ...]}}, got {x!r}")


def phrasings(ds) -> dict[str, list[Phrasing]]:
    """task -> the phrasings that may stand for one another in store ``ds`` (module docstring)."""
    seg = ds.segments
    embs = seg["embedding"].to_list() if "embedding" in seg.columns else [None] * seg.height
    dim = next((len(e) for e in embs if e is not None), 0)
    table: dict[str, dict[str, Phrasing]] = {}
    rows = zip(seg["task"].to_list(), seg["instruction"].to_list(), embs)
    extra = ((t, x.instruction, x.embedding) for t, xs in read_paraphrases(ds.path).items()
             for x in xs)
    for task, text, emb in [*rows, *extra]:
        if not task or not text:
            continue
        if dim and (emb is None or len(emb) != dim):
            continue  # would leave the embedding of another phrasing beside this text
        table.setdefault(task, {}).setdefault(
            text, Phrasing(text, None if emb is None else tuple(float(v) for v in emb)))
    return {t: list(v.values()) for t, v in table.items() if len(v) > 1}


class LanguageAugmenter:
    """Swaps instructions within their task, per store (``stores[j]``: ``dataset_index`` j)."""

    def __init__(self, tables: list[dict[str, list[Phrasing]]], prob: float):
        self.tables, self.prob = tables, float(prob)
        self.index = [{(t, x.instruction): k for t, xs in table.items() for k, x in enumerate(xs)}
                      for table in tables]

    @classmethod
    def from_stores(cls, stores: list, prob: float) -> "LanguageAugmenter":
        """For the trainer's ``[(Dataset, weight)]``."""
        return cls([phrasings(ds) for ds, _ in stores], prob)

    def __call__(self, batch: dict, language: Tensor | None, gen: torch.Generator
                 ) -> tuple[list[str], Tensor | None]:
        """(instructions, embeddings (B, E)) of ``batch`` after the swaps; the batch's own
        tensors are left untouched."""
        texts = list(batch.get("instruction") or [])
        tasks = list(batch.get("task") or [""] * len(texts))
        n = len(texts)
        u = torch.rand(n, generator=gen, device=gen.device).tolist()
        pick = torch.randint(0, 1 << 30, (n,), generator=gen, device=gen.device).tolist()
        which = batch.get("dataset_index")
        which = [0] * n if which is None else [int(j) for j in which]
        rows, embs = [], []
        for i in range(n):
            if u[i] >= self.prob:
                continue
            j = which[i] if which[i] < len(self.tables) else 0
            k = self.index[j].get((tasks[i], texts[i]))
            if k is None:
                continue                    # no instruction, or the only phrasing of its task
            choices = self.tables[j][tasks[i]]
            new = choices[(k + 1 + pick[i] % (len(choices) - 1)) % len(choices)]  # never k
            texts[i] = new.instruction
            if language is not None and language.shape[-1] and new.embedding is not None:
                rows.append(i)
                embs.append(new.embedding)
        if rows:
            language = language.clone()
            language[rows] = torch.as_tensor(np.asarray(embs, np.float32), device=language.device,
                                             dtype=language.dtype)
        return texts, language


__all__ = ["LanguageAugmenter", "Phrasing", "phrasings", "read_paraphrases", "PARAPHRASES"]
