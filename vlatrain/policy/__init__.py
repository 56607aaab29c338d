"""The policy runtime: a trained checkpoint acting in an environment (``Policy.load``)."""

from vlatrain.policy.chunking import OpenLoop, TemporalEnsemble, make_rule
from vlatrain.policy.observations import History, RuntimeSpec
from vlatrain.policy.runtime import Policy

__all__ = ["Policy", "RuntimeSpec", "History", "OpenLoop", "TemporalEnsemble", "make_rule"]
