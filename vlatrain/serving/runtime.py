"""The policy runtime as the server's sessions see it: one episode state per session.

:class:`vlatrain.policy.Policy` keeps, per environment of its batch, an instruction, an observation
:class:`~vlatrain.policy.History` and a chunk execution rule, as parallel lists. A server's sessions
come and go and act at different steps of their episodes, so :class:`PolicyRuntime` keeps that
triple per *session* (:class:`EpisodeState`) and, for each batch of requests, hands the policy the
states of the sessions in the batch before calling it. Every call comes from the engine's one
policy thread, so the hand-over needs no lock. The actions are the policy's own: a session's
action sequence equals what ``reset(instruction)`` + ``act(obs)`` give on a local policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlatrain.policy import Policy


@dataclass
class EpisodeState:
    """One session's episode: what ``Policy.reset`` sets up for one environment."""

    instruction: str
    history: object   # vlatrain.policy.History
    rule: object      # the chunk execution rule (vlatrain.policy.chunking)


class PolicyRuntime:
    """Sessions over one loaded :class:`Policy` (see the module docstring)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    @classmethod
    def load(cls, checkpoint, device=None, *, execute=None, ensemble=None) -> "PolicyRuntime":
        return cls(Policy.load(checkpoint, device, execute=execute, ensemble=ensemble))

    def describe(self) -> dict:
        """The spec message's ``spec``: the policy's observation/action contract and rule."""
        p = self.policy
        return {**p.spec.describe(), "cameras": list(p.spec.cameras),
                "image_shapes": {c: list(s) for c, s in p.spec.image_shapes.items()},
                "action_dim": p.spec.action_dim, "execution": _rule_name(p),
                "checkpoint": Path(p.source).name, "device": str(p.device)}

    def new_state(self, instruction: str) -> EpisodeState:
        """A fresh episode following ``instruction`` (the policy's own checks refuse a bad one)."""
        p = self.policy
        p.reset_batch([instruction])
        return EpisodeState(p.instructions[0], p.histories[0], p.rules[0])

    def _bind(self, states: list[EpisodeState]) -> None:
        p = self.policy
        p.instructions = [s.instruction for s in states]
        p.histories = [s.history for s in states]
        p.rules = [s.rule for s in states]

    def act(self, states: list[EpisodeState], obs: list[dict],
            chunk: list[bool]) -> list[np.ndarray]:
        """Per request: the next action (A,), or with ``chunk`` the whole chunk (C, A) planned
        from this frame (the session's rule is then left alone: the client executes the chunk).
        """
        out: list[np.ndarray | None] = [None] * len(states)
        steps = [i for i, c in enumerate(chunk) if not c]
        plans = [i for i, c in enumerate(chunk) if c]
        p = self.policy
        for o in obs:  # refuse a bad frame before any session's state changes
            p.spec.check(o)
        if steps:
            self._bind([states[i] for i in steps])
            for i, a in zip(steps, p.act_batch([obs[i] for i in steps])):
                out[i] = a
        if plans:
            self._bind([states[i] for i in plans])
            p.observe([obs[i] for i in plans])
            for i, c in zip(plans, p.to_units(p.plan())):
                out[i] = c
        return out


def _rule_name(policy: Policy) -> str:
    from vlatrain.policy.chunking import make_rule
    return repr(make_rule(policy.data_spec.chunk, policy.execute, policy.ensemble))
