"""The trainer's configuration: one typed dataclass per concern, loaded from YAML + overrides.

A run is configured by one YAML file with the sections ``data``, ``model``, ``optim``, ``train``,
``eval`` and ``log`` (plus the top-level run directory ``out``) and ``key=value`` overrides on the
command line (``train.steps=300``, ``data.path=/data/calvin.vla``, ``data.augment.shift=4``).
Values are parsed as YAML (``[a, b]`` is a list, ``null`` is None); a field typed ``str`` keeps
the override's text as written. Everything is validated once, and every problem is reported in
one :class:`ConfigError` (unknown keys with the closest known name, wrong types, values outside
their range, settings that contradict each other).

The resolved config is written as ``config.yaml`` in the run directory and stored as a plain dict
in every checkpoint (``Config.to_dict`` / ``Config.from_dict``), so a checkpoint alone says how it
was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from vladata.errors import ConfigError
from vlatrain.rollout_config import RolloutConfig
from vlatrain.typed import apply_overrides, build, choice, parse_overrides
from vlatrain.vlm.vlm_config import HISTORY_MODES, VLMConfig

__all__ = ["AugmentConfig", "AuxTarget", "DataConfig", "ViewConfig", "ModelConfig",
           "OptimConfig", "TrainConfig", "RolloutConfig", "EvalConfig", "LogConfig", "Config",
           "ConfigError", "load_config", "parse_overrides", "apply_overrides"]


@dataclass
class AugmentConfig:
    """Training-time augmentation, run on the training device (never in the loader)."""

    shift: int = 4                 # random shift: pad by this many pixels, crop back (one offset per window)
    brightness: float = 0.1        # colour jitter: brightness factor in [1-b, 1+b] (one per window)
    contrast: float = 0.1          # colour jitter: contrast factor in [1-c, 1+c]
    saturation: float = 0.1        # colour jitter: saturation factor in [1-s, 1+s]
    action_noise: float = 0.0      # std of Gaussian noise added to normalised arm action targets

    def validate(self) -> list[str]:
        errs = [f"{k}: must be >= 0, got {getattr(self, k)}" for k in
                ("shift", "brightness", "contrast", "saturation", "action_noise") if getattr(self, k) < 0]
        errs += [f"{k}: must be < 1, got {getattr(self, k)}" for k in
                 ("brightness", "contrast", "saturation") if getattr(self, k) >= 1]
        return errs


@dataclass
class MixtureEntry:
    """One store of a mixture: its path and sampling weight (``data.mixture`` entries)."""

    path: str = ""
    weight: float = 1.0

    @staticmethod
    def from_value(v):
        """A bare path stands for ``{path: v, weight: 1.0}``."""
        return {"path": v} if isinstance(v, str) else v

    def validate(self) -> list[str]:
        errs = [] if self.path else ["path: expected a store path"]
        if not (self.weight >= 0 and self.weight != float("inf")):
            errs.append(f"weight: expected a finite number >= 0, got {self.weight}")
        return errs


@dataclass
class AuxTarget:
    """An auxiliary training target (``data.aux_targets`` entries): the model learns to predict
    the low-dim store feature ``key`` (its ``dims``, or all; normalised with the store's
    statistics) at every history step from its backbone features, by a linear layer, with MSE
    weighted ``weight`` in the loss. Training only: no policy input reads the feature and a
    deployed policy never needs it -- e.g. a simulator's privileged object and goal positions
    (``observation.environment_state``), which teach the image encoder where the objects are."""

    key: str = ""
    dims: Optional[list[int]] = None
    weight: float = 1.0

    def validate(self) -> list[str]:
        errs = [] if self.key else ["key: expected a store feature (observation.environment_state)"]
        if self.key.startswith("observation.images."):
            errs.append(f"key: {self.key!r} is an image; auxiliary targets are low-dim features")
        if self.dims is not None and (not self.dims or min(self.dims) < 0
                                      or len(set(self.dims)) != len(self.dims)):
            errs.append(f"dims: expected distinct indices >= 0 (or null), got {self.dims}")
        if not (self.weight >= 0 and self.weight != float("inf")):
            errs.append(f"weight: expected a finite number >= 0, got {self.weight}")
        return errs


@dataclass
class DataConfig:
    """Where the windows come from and how they are cut (see ``vladata.loading.windows``).

    One store (``path``) or a mixture of stores (``mixture``, ``vladata.loading.mixture``); exactly one
    of them must be set to train. ``mixture`` is a list of :class:`MixtureEntry`:
    ``data.mixture=[{path: A, weight: 1.0}, {path: B, weight: 2.0}]`` on the command line, the
    same YAML list in a config file; an entry may also be a bare path (weight 1).
    ``balance`` multiplies each weight by the store's window count (OXE's balancing).
    ``val_fraction`` (one store): a store without a validation split validates on a fixed
    fraction of its ``train_split`` episodes, held out from training (``vlatrain.data.held_out``);
    ``val_split`` then names that held-out part (a split of that name in the store is not used).
    """

    path: Optional[str] = None     # the store (directory or fsspec URL); this or mixture to train
    mixture: Optional[list[MixtureEntry]] = None  # several stores: [{path: A, weight: 1.0}, ...]
    balance: bool = False          # mixture: weight x the store's window count
    history: int = 1               # h: observation steps per window (1 = one-step modelling)
    chunk: int = 10                # c: future actions predicted per step
    cameras: Optional[list[str]] = None  # camera names (``rgb_static``); None = every camera
    state_dims: Optional[list[int]] = None  # indices of observation.state fed to the model; None = all
    over: str = field(default="segments", metadata=choice("segments", "episodes"))
    train_split: str = "train"
    val_split: str = "validation"
    val_fraction: Optional[float] = None  # validate on this fraction of train_split's episodes
                                   # (held out from training, chosen by episode) instead of val_split
    batch_size: int = 32           # per process, per micro-step
    num_workers: int = 2
    # the token sequence of token heads: the stored bins (action.tokens) or FAST tokens of each
    # chunk (the store's meta/fast_tokenizer.json, `vladata stats --fast`; model.head=autoregressive)
    action_tokens: str = field(default="bins", metadata=choice("bins", "fast"))
    language_augmentation: float = 0.0  # train: P(instruction -> another phrasing of its task)
    # features predicted by an auxiliary head, training only: [{key, dims, weight}] (AuxTarget)
    aux_targets: Optional[list[AuxTarget]] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> list[str]:
        errs = []
        for k in ("history", "chunk", "batch_size"):
            if getattr(self, k) < 1:
                errs.append(f"{k}: must be >= 1, got {getattr(self, k)}")
        if self.num_workers < 0:
            errs.append(f"num_workers: must be >= 0, got {self.num_workers}")
        if self.val_fraction is not None:
            if not 0 < self.val_fraction < 1:
                errs.append(f"val_fraction: must be in (0, 1) or null, got {self.val_fraction}")
            if self.val_split == self.train_split:
                errs.append(f"val_split: names the held-out episodes under val_fraction; it "
                            f"must differ from train_split ({self.train_split!r})")
            if self.mixture is not None:
                errs.append("val_fraction: holds out episodes of one store (data.path); a "
                            "mixture validates on each store's data.val_split")
        if self.cameras is not None and not self.cameras:
            errs.append("cameras: an empty list leaves no images; use null for every camera")
        if self.state_dims is not None and (not self.state_dims or min(self.state_dims) < 0
                                            or len(set(self.state_dims)) != len(self.state_dims)):
            errs.append(f"state_dims: expected distinct indices >= 0 (or null), got {self.state_dims}")
        if self.mixture is not None:
            if self.path is not None:
                errs.append("path: set either data.path (one store) or data.mixture (several), "
                            "not both")
            if not self.mixture:
                errs.append("mixture: expected a non-empty list like [{path: A, weight: 1.0}, ...]")
            for i, e in enumerate(self.mixture):
                errs += [f"mixture[{i}].{x}" for x in e.validate()]
            if self.mixture and not sum(e.weight for e in self.mixture) > 0:
                errs.append("mixture: the weights are all 0")
            if self.action_tokens == "fast":
                errs.append("action_tokens: FAST tokens are served for one store (data.path), "
                            "not for a mixture")
        elif self.balance:
            errs.append("balance: only applies to data.mixture")
        for i, t in enumerate(self.aux_targets or []):
            errs += [f"aux_targets[{i}].{e}" for e in t.validate()]
        keys = [t.key for t in self.aux_targets or []]
        if len(set(keys)) != len(keys):
            errs.append(f"aux_targets: one entry per feature, got {keys}")
        if self.aux_targets and self.mixture is not None:
            errs.append("aux_targets: read from one store (data.path), not from a mixture")
        if not 0 <= self.language_augmentation <= 1:
            errs.append(f"language_augmentation: a probability in [0, 1], got "
                        f"{self.language_augmentation}")
        return errs + [f"augment.{e}" for e in self.augment.validate()]

    def stores(self) -> list[tuple[str, float]]:
        """``[(path, weight)]``: the mixture's stores, or ``[(path, 1.0)]`` for one store."""
        if self.mixture is None:
            return [(self.path, 1.0)] if self.path is not None else []
        return [(e.path, float(e.weight)) for e in self.mixture]


@dataclass
class ViewConfig:
    """How one camera's stored frames reach the tiny backbone (``model.views`` entries): a fixed
    crop (``[top, left, height, width]`` in stored pixels) and the size the crop (or the whole
    frame) is resized to. Applied on the device in training and in the policy runtime alike: a
    small target keeps its pixels when only the workspace is kept, and a camera that needs little
    detail costs less at a smaller size."""

    camera: str = ""               # short camera name (corner2 for observation.images.corner2)
    crop: Optional[list[int]] = None  # [top, left, height, width]; null: the whole frame
    size: Optional[int] = None     # square side after the resize; null: model.image_size

    def validate(self) -> list[str]:
        errs = [] if self.camera else ["camera: expected a camera name"]
        if self.crop is not None and (len(self.crop) != 4 or min(self.crop[:2]) < 0
                                      or min(self.crop[2:]) < 1):
            errs.append(f"crop: expected [top >= 0, left >= 0, height >= 1, width >= 1], "
                        f"got {self.crop}")
        if self.size is not None and self.size < 1:
            errs.append(f"size: must be >= 1, got {self.size}")
        return errs


@dataclass
class ModelConfig:
    """Backbone + policy head. ``backbone`` names an entry of ``vlatrain.model.BACKBONES``."""

    backbone: str = "tiny"         # tiny = the embedded small vision-language encoder
    path: Optional[str] = None     # local weights directory, for backbones that load pretrained weights
    head: str = field(default="gpt", metadata=choice("fc", "lstm", "gpt", "discrete", "lm",
                                                     "autoregressive"))
    history: str = field(default="one-step", metadata=choice(*HISTORY_MODES))
    language: str = field(default="embedding", metadata=choice("embedding", "text", "none"))
    use_state: bool = True         # feed observation.state (normalised with the store's stats)
    image_size: int = 64           # frames are resized to image_size x image_size on the device
    views: Optional[list[ViewConfig]] = None  # per camera: [{camera, crop, size}] (tiny backbone)
    # tiny backbone: each camera CNN's total stride; its spatial-softmax keypoints come from a
    # (size/stride)^2 map: 8 (default) or 4 (4x the map, ~2.7x the CNN compute: finer positions)
    encoder_stride: int = field(default=8, metadata=choice(8, 4))
    # tiny backbone: what its spatial softmax reads: "relu" (the last block's ReLU output) or
    # "learned" (a 1x1 convolution of the pre-ReLU output, learnable temperature)
    keypoints: str = field(default="relu", metadata=choice("relu", "learned"))
    # what the auxiliary head (data.aux_targets) reads: the backbone "features" or, tiny backbone
    # only, its spatial-softmax "keypoints" (a linear read-out of positions: it cannot memorise)
    aux_input: str = field(default="features", metadata=choice("features", "keypoints"))
    width: int = 128               # F: the feature width the backbone hands to the head
    hidden: int = 256              # head hidden width
    layers: int = 2                # head depth (MLP layers / LSTM layers / transformer blocks)
    heads: int = 4                 # attention heads of the GPT head
    dropout: float = 0.0
    discrete_trunk: str = field(default="fc", metadata=choice("fc", "lstm", "gpt"))
    # autoregressive head: constrained = only tokens that keep the chunk decodable; greedy = argmax
    decoding: str = field(default="constrained", metadata=choice("constrained", "greedy"))
    vlm: VLMConfig = field(default_factory=VLMConfig)  # pretrained-VLM options (docs/vlm.md)

    def validate(self) -> list[str]:
        errs = [f"{k}: must be >= 1, got {getattr(self, k)}" for k in
                ("image_size", "width", "hidden", "layers", "heads") if getattr(self, k) < 1]
        errs += [f"vlm.{e}" for e in self.vlm.validate()]
        for i, v in enumerate(self.views or []):
            errs += [f"views[{i}].{e}" for e in v.validate()]
        cams = [v.camera for v in self.views or []]
        if len(set(cams)) != len(cams):
            errs.append(f"views: one entry per camera, got {cams}")
        if self.views and self.backbone != "tiny":
            errs.append("views: only the tiny backbone takes per-camera views (a VLM uses its "
                        "processor's)")
        if self.backbone == "tiny" and self.head == "lm":
            errs.append("head: 'lm' reads a VLM's own logits; the tiny backbone has none "
                        "(use discrete)")
        if self.vlm.autoregressive and self.head != "lm":
            errs.append("vlm.autoregressive: decodes the LM head's action tokens; it needs "
                        f"model.head=lm, not {self.head!r}")
        if not self.vlm.kv_cache and not self.vlm.autoregressive:
            errs.append("vlm.kv_cache: false only applies to vlm.autoregressive decoding; set "
                        "model.vlm.autoregressive=true or leave kv_cache at its default")
        if self.vlm.autoregressive and self.history == "interleaved":
            errs.append("vlm.autoregressive: not with history=interleaved (a later step would "
                        "read the earlier steps' target tokens); use one-step or history")
        if self.aux_input == "keypoints" and self.backbone != "tiny":
            errs.append("aux_input: 'keypoints' are the tiny backbone's; a VLM's auxiliary head "
                        "reads its features")
        if self.backbone == "tiny" and self.history == "interleaved":
            errs.append("history: 'interleaved' needs a VLM backbone (use history)")
        if not 0 <= self.dropout < 1:
            errs.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.head == "autoregressive" and self.hidden % self.heads:
            errs.append(f"hidden: {self.hidden} is not divisible by heads={self.heads} (the "
                        f"autoregressive decoder)")
        elif self.head == "gpt" or (self.head == "discrete" and self.discrete_trunk == "gpt"):
            if self.heads >= 1 and self.hidden % self.heads:
                errs.append(f"hidden: {self.hidden} is not divisible by heads={self.heads}")
        return errs


@dataclass
class OptimConfig:
    """AdamW, gradient clipping and the learning-rate schedule (``vlatrain.optim.lr_at``)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: Optional[float] = 1.0   # max global grad norm; null = no clipping
    schedule: str = field(default="cosine", metadata=choice("constant", "cosine", "step"))
    warmup_steps: int = 0
    decay_steps: Optional[int] = None  # cosine: steps from warmup end to min_lr (null = train.steps)
    min_lr_ratio: float = 0.1          # cosine floor, as a fraction of lr
    step_size: int = 1000              # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.1

    def validate(self) -> list[str]:
        errs = []
        if self.lr <= 0:
            errs.append(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            errs.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errs.append(f"betas: expected two numbers in [0, 1), got {self.betas}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            errs.append(f"grad_clip: must be > 0 or null, got {self.grad_clip}")
        if self.warmup_steps < 0:
            errs.append(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps < 1:
            errs.append(f"decay_steps: must be >= 1 or null, got {self.decay_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            errs.append(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.step_size < 1:
            errs.append(f"step_size: must be >= 1, got {self.step_size}")
        if not 0 < self.gamma <= 1:
            errs.append(f"gamma: must be in (0, 1], got {self.gamma}")
        return errs


@dataclass
class TrainConfig:
    """The loop: length, seed, precision, loss, checkpoints."""

    steps: int = 1000              # optimiser steps
    seed: int = 0
    grad_accum: int = 1            # micro-batches per optimiser step
    precision: str = field(default="fp32", metadata=choice("fp32", "bf16", "fp16"))
    device: str = field(default="auto", metadata=choice("auto", "cpu", "cuda"))
    threads: Optional[int] = None  # torch intra-op threads (null = torch's default)
    loss: str = field(default="mse", metadata=choice("mse", "huber"))
    huber_delta: float = 1.0
    gripper_weight: float = 0.1    # weight of the gripper BCE beside the arm regression loss
    history_weights: Optional[list[float]] = None  # per history step loss weights (length h)
    checkpoint_every: int = 500
    keep_last: int = 2             # step checkpoints kept (best.pt is kept besides)

    def validate(self) -> list[str]:
        errs = [f"{k}: must be >= 1, got {getattr(self, k)}" for k in
                ("steps", "grad_accum", "checkpoint_every", "keep_last") if getattr(self, k) < 1]
        if self.threads is not None and self.threads < 1:
            errs.append(f"threads: must be >= 1 or null, got {self.threads}")
        if self.huber_delta <= 0:
            errs.append(f"huber_delta: must be > 0, got {self.huber_delta}")
        if self.gripper_weight < 0:
            errs.append(f"gripper_weight: must be >= 0, got {self.gripper_weight}")
        if self.history_weights is not None and any(w < 0 for w in self.history_weights):
            errs.append(f"history_weights: must be >= 0, got {self.history_weights}")
        return errs


@dataclass
class EvalConfig:
    """Offline evaluation on the validation split (``vlatrain.offline_eval``) and rollouts."""

    every: int = 100               # steps between evaluations (0 = only at the end)
    batches: Optional[int] = 20    # validation batches per evaluation (null = the whole split)
    batch_size: int = 64
    best_metric: str = "val/arm_mae"  # the metric that picks best.pt
    best_mode: str = field(default="auto", metadata=choice("auto", "min", "max"))  # auto: max
    #                                for success rates and accuracies, min for everything else
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def mode(self) -> str:
        """``min`` or ``max``: whether a lower or a higher ``best_metric`` is better."""
        if self.best_mode != "auto":
            return self.best_mode
        last = self.best_metric.rsplit("/", 1)[-1]
        higher = ("success" in self.best_metric.split("/")[:2] or "success" in last
                  or last.endswith("_acc") or last == "acc")
        return "max" if higher else "min"

    def validate(self) -> list[str]:
        errs = [f"rollout.{e}" for e in self.rollout.validate()]
        if self.every < 0:
            errs.append(f"every: must be >= 0, got {self.every}")
        if self.batches is not None and self.batches < 1:
            errs.append(f"batches: must be >= 1 or null, got {self.batches}")
        if self.batch_size < 1:
            errs.append(f"batch_size: must be >= 1, got {self.batch_size}")
        return errs


@dataclass
class LogConfig:
    """metrics.jsonl, TensorBoard and the progress bar (rank 0 only)."""

    every: int = 10                # steps per metrics line (losses averaged over them)
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> list[str]:
        return [f"every: must be >= 1, got {self.every}"] if self.every < 1 else []


@dataclass
class Config:
    """A whole run. ``out`` is the run directory."""

    out: str = "runs/vlatrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> list[str]:
        """Every error of the config, each prefixed with its key."""
        return self.section_errors() + self.cross_errors()

    def section_errors(self) -> list[str]:
        errs = []
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                errs += [f"{f.name}.{e}" for e in sub.validate()]
        return errs

    def cross_errors(self) -> list[str]:
        """Settings that contradict each other."""
        errs = []
        if self.model.history == "one-step" and self.data.history != 1:
            errs.append(f"model.history: one-step modelling needs data.history=1, got "
                        f"{self.data.history} (set model.history=history to fuse a window)")
        if self.model.history == "history" and self.data.history < 2:
            errs.append("model.history: history modelling needs data.history >= 2, got "
                        f"{self.data.history}")
        if (self.train.history_weights is not None
                and len(self.train.history_weights) != self.data.history):
            errs.append(f"train.history_weights: expected {self.data.history} weights "
                        f"(one per history step), got {len(self.train.history_weights)}")
        if self.data.action_tokens == "fast" and self.model.head != "autoregressive":
            errs.append(f"data.action_tokens: FAST tokens have a variable length; they need "
                        f"model.head=autoregressive, not {self.model.head!r}")
        if self.train.precision == "fp16" and self.train.device == "cpu":
            errs.append("train.precision: fp16 needs a CUDA device; use bf16 on the CPU")
        r = self.eval.rollout
        if self.eval.best_metric.startswith("rollout/") and r.env is None:
            errs.append(f"eval.best_metric: {self.eval.best_metric} needs rollouts during "
                        f"training: set eval.rollout.env (e.g. metaworld)")
        if r.env is not None and r.every and not (
                (self.eval.every and r.every % self.eval.every == 0)
                or r.every % self.train.checkpoint_every == 0):
            errs.append(f"eval.rollout.every: {r.every} is not a multiple of eval.every "
                        f"({self.eval.every}) or train.checkpoint_every "
                        f"({self.train.checkpoint_every}): rollouts run at evaluation steps")
        return errs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, overrides: dict | None = None) -> "Config":
        """Build and validate; raises :class:`ConfigError` listing every problem."""
        errors: list[str] = []
        cfg = build(cls, d if d is not None else {}, "", errors)
        if overrides:
            apply_overrides(cfg, overrides, errors)
        mistyped = bool(errors)  # a mistyped key kept its default: skip the cross-checks then
        errors += cfg.section_errors()
        if not mistyped:
            errors += cfg.cross_errors()
        if errors:
            raise ConfigError(errors)
        return cfg


def load_config(path: str | Path | None, overrides: dict[str, str] | list[str] | None = None,
                ) -> Config:
    """Read a YAML config (``yaml.safe_load``), apply overrides, validate everything at once."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"{p}: config file not found"])
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"{p}: not valid YAML: {e}"]) from None
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    try:
        return Config.from_dict(d, overrides)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError([f"{path}: {m}" for m in e.errors]) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
