"""Models: the backbone and head interfaces, the embedded backbone, the policy heads."""

from vlatrain.model.backbone import (Backbone, BackboneOutput, ImageSpec, Observation,
                                     TinyBackbone)
from vlatrain.model.heads import ActionHead, PolicyHead, build_head
from vlatrain.model.policy import BACKBONES, HEADS, Policy, build_policy

__all__ = ["Backbone", "BackboneOutput", "ImageSpec", "Observation", "TinyBackbone",
           "ActionHead", "PolicyHead", "build_head", "BACKBONES", "HEADS", "Policy", "build_policy"]
