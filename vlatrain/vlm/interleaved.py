"""Interleaved modelling: the whole history window as one sequence through the VLM.

RoboVLMs' "pre" (interleaved) mode puts the observation and action tokens of every history
step into one sequence, so the language model itself fuses the history and the backbone's
features are already causal over time (``fuses_history = True``)::

    [prompt with the frames of step t0] [STATE_t0] [ACTION_t0] [SLOT_t0]
        [frames of step t1] [STATE_t1] [ACTION_t1] [SLOT_t1]  ...  [frames of t_last] ... [ACTION_last]

The prompt (and the instruction) appears once, around the first step's frames, in the model's
own format; each later step adds only its frames and its state/action tokens. The last hidden
state of ``ACTION_t`` is step t's feature; under causal attention it depends on steps <= t only.
History steps that do not exist (``obs.mask`` false: the window starts before the episode or
segment) are left out of the sequence altogether rather than masked, so they cannot influence
any other step, and no attention row is ever fully masked.
"""

from __future__ import annotations

from torch import Tensor

from vlatrain.vlm.sequence import ImagePieces, Piece, Prompt, prompted_step, step_suffix


def interleaved_rows(steps: Tensor, batch: int, instructions: list[str], n_cams: int,
                     prompt: Prompt, image_pieces: ImagePieces, state: bool,
                     slots: int) -> list[list[Piece]]:
    """One sequence per window; ``steps`` (S, 2) holds the (b, t) of the existing steps in
    row-major order (every window has at least one), frames of step s are s*n_cams + c."""
    rows: list[list[Piece]] = [[] for _ in range(batch)]
    for s, b in enumerate(steps[:, 0].tolist()):
        frames = [s * n_cams + c for c in range(n_cams)]
        if not rows[b]:
            rows[b] = prompted_step(prompt, instructions[b], frames, s, image_pieces)
        else:
            rows[b] += image_pieces(frames, s)
        rows[b] += step_suffix(s, state, slots)
    if any(not r for r in rows):
        raise ValueError("interleaved_rows: a window has no existing history step")
    return rows
