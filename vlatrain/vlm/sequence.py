"""Token sequences for a VLM: the prompt around the instruction, frames, state and action tokens.

A sequence is a list of :class:`Piece` s, each a run of tokens of one kind::

    TEXT    token ids from the tokenizer (the prompt, the model's image delimiters)
    IMAGE   the visual tokens of one frame (their embeddings come from the vision tower)
    MEDIA   a Flamingo media marker (the frames reach the LM through cross-attention)
    STATE   the proprioceptive state of one step, through a linear layer
    ACTION  the learnable action token: its last hidden state is the step's feature
    SLOT    c*A learnable action-query tokens whose LM logits predict the step's action tokens

In one-step and history modes each existing history step is its own sequence::

    [prompt before {image}] [frames of step t] [prompt after {image}] [STATE_t] [ACTION_t] [SLOT_t]

(interleaved mode, one sequence per window, is in :mod:`vlatrain.vlm.interleaved`).
:class:`Layout` packs the sequences of a batch right-padded into (R, L) tensors; padding only
ever follows the real tokens, so causal attention keeps it out of every real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

TEXT, IMAGE, MEDIA, STATE, ACTION, SLOT = range(6)

ImagePieces = Callable[[list[int], int], list["Piece"]]  # (frames of a step, step) -> pieces


@dataclass(frozen=True)
class Piece:
    """A run of ``length`` tokens of one kind. ``ref``: the frame (IMAGE) or step (the others)."""

    kind: int
    length: int
    ids: tuple[int, ...] = ()   # TEXT only
    ref: int = -1
    prefix: bool = False        # part of the prompt (PaliGemma attends to it bidirectionally)


def text(ids, prefix: bool = False) -> list[Piece]:
    ids = tuple(int(i) for i in ids)
    return [Piece(TEXT, len(ids), ids, prefix=prefix)] if ids else []


class Prompt:
    """A prompt template, tokenized per instruction (cached): the ids before and after the frames.

    The template holds ``{image}`` once, where the frames go, ``{instruction}`` at most once and
    optionally ``{bos}`` (the tokenizer's BOS token text). Tokenization follows the model's own
    processor: with ``image_token`` (the model's image placeholder, one special token) the whole
    text is tokenized in one call with the placeholder in place of ``{image}`` and split there --
    the ids are then exactly the processor's, whatever the tokenizer does at the boundaries of
    special tokens; ``add_special_tokens`` is the processor's choice (LLaVA lets the tokenizer
    add BOS; Kosmos-2, PaliGemma and Qwen2-VL spell their special tokens out). Without an image
    token the two sides are tokenized separately.
    """

    def __init__(self, template: str, tokenizer, *, image_token: str | None = None,
                 add_special_tokens: bool = False, max_cache: int = 4096):
        if template.count("{image}") != 1:
            raise ValueError(f"prompt template must contain {{image}} exactly once: {template!r}")
        self.template = template.replace("{bos}", tokenizer.bos_token or "")
        self.tokenizer, self.image_token, self.special = tokenizer, image_token, add_special_tokens
        self.image_id = tokenizer.convert_tokens_to_ids(image_token) if image_token else None
        if image_token and (self.image_id is None or self.image_id == tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {image_token!r} token (the model's image "
                             f"placeholder); is this the model's own tokenizer?")
        self.max_cache = max_cache
        self.cache: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _encode(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"]) if text else []

    def ids(self, instruction: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ids before the frames, ids after them) of the prompt for ``instruction``."""
        hit = self.cache.get(instruction)
        if hit is not None:
            return hit
        instr = " ".join(instruction.split())
        if self.image_token:
            if self.image_token in instr:
                raise ValueError(f"instruction {instruction!r} contains the model's image token "
                                 f"{self.image_token!r}")
            text = self.template.replace("{image}", self.image_token).replace("{instruction}", instr)
            ids = self._encode(text, self.special)
            if ids.count(self.image_id) != 1:
                raise ValueError(f"prompt {text!r} tokenizes to {ids.count(self.image_id)} image "
                                 f"tokens, expected 1")
            i = ids.index(self.image_id)
            hit = tuple(ids[:i]), tuple(ids[i + 1:])
        else:
            before, after = (p.replace("{instruction}", instr) for p in self.template.split("{image}"))
            hit = tuple(self._encode(before, self.special)), tuple(self._encode(after, False))
        if len(self.cache) >= self.max_cache:
            self.cache.clear()
        self.cache[instruction] = hit
        return hit


def step_suffix(step: int, state: bool, slots: int) -> list[Piece]:
    """[STATE] [ACTION] [SLOT x slots] of one step."""
    out = [Piece(STATE, 1, ref=step)] if state else []
    out.append(Piece(ACTION, 1, ref=step))
    if slots:
        out.append(Piece(SLOT, slots, ref=step))
    return out


def prompted_step(prompt: Prompt, instruction: str, frames: list[int], step: int,
                  image_pieces: ImagePieces) -> list[Piece]:
    """The prompt with one step's frames in place of ``{image}`` (all marked as prefix)."""
    before, after = prompt.ids(instruction)
    mid = [Piece(p.kind, p.length, p.ids, p.ref, True) for p in image_pieces(frames, step)]
    return text(before, True) + mid + text(after, True)


def step_rows(steps: Tensor, instructions: list[str], n_cams: int, prompt: Prompt,
              image_pieces: ImagePieces, state: bool, slots: int) -> list[list[Piece]]:
    """One sequence per existing step; ``steps`` (S, 2) holds their (b, t), frames s*n_cams+c."""
    rows = []
    for s, b in enumerate(steps[:, 0].tolist()):
        frames = [s * n_cams + c for c in range(n_cams)]
        rows.append(prompted_step(prompt, instructions[b], frames, s, image_pieces)
                    + step_suffix(s, state, slots))
    return rows


@dataclass
class Layout:
    """The sequences of a batch as right-padded (R, L) tensors (on the CPU until ``to``)."""

    rows: list[list[Piece]]
    ids: Tensor      # int64 (R, L): text ids; a placeholder id elsewhere
    kind: Tensor     # int64 (R, L): TEXT, IMAGE, ... (TEXT on padding)
    ref: Tensor      # int64 (R, L): frame (IMAGE) or step (STATE, ACTION, SLOT, MEDIA); -1 else
    sub: Tensor      # int64 (R, L): offset of the token inside its piece
    mask: Tensor     # bool (R, L): a real token (False on padding)
    prefix: Tensor   # bool (R, L): a prompt token

    @classmethod
    def build(cls, rows: list[list[Piece]], placeholder: int) -> "Layout":
        r, length = len(rows), max(sum(p.length for p in row) for row in rows)
        ids = np.full((r, length), placeholder, np.int64)
        kind = np.full((r, length), TEXT, np.int64)
        ref = np.full((r, length), -1, np.int64)
        sub = np.zeros((r, length), np.int64)
        mask = np.zeros((r, length), bool)
        prefix = np.zeros((r, length), bool)
        for i, row in enumerate(rows):
            pos = 0
            for p in row:
                end = pos + p.length
                if p.kind == TEXT:
                    ids[i, pos:end] = p.ids
                kind[i, pos:end], ref[i, pos:end], prefix[i, pos:end] = p.kind, p.ref, p.prefix
                sub[i, pos:end] = np.arange(p.length)
                pos = end
            mask[i, :pos] = True
        t = torch.from_numpy
        return cls(rows, t(ids), t(kind), t(ref), t(sub), t(mask), t(prefix))

    def to(self, device) -> "Layout":
        for k in ("ids", "kind", "ref", "sub", "mask", "prefix"):
            setattr(self, k, getattr(self, k).to(device, non_blocking=True))
        return self

    def where(self, kind: int) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the tokens of ``kind``, in row-major order."""
        return (self.kind == kind).nonzero(as_tuple=True)
