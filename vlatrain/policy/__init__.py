"""The policy runtime: a trained checkpoint acting in an environment (``Policy.load``)."""

from vlatrain.policy.chunking import OpenLoop, TemporalEnsemble, make_rule
from vlatrain.policy.observations import History, RuntimeSpec
from vlatrain.policy.runtime import Policy

__all__ = ["Policy", "RuntimeSpec", "History", "OpenLoop", "TemporalEnsemble", "make_rule",
           "RemotePolicy"]


def __getattr__(name: str):
    """``RemotePolicy`` (a policy served by ``vlatrain serve``), imported on first use: it needs
    the ``serve`` extra (websockets, msgpack)."""
    if name == "RemotePolicy":
        from vlatrain.serving.client import RemotePolicy
        return RemotePolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
