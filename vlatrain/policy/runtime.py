"""The policy runtime: a trained checkpoint acting on live frames, one step at a time.

:class:`Policy` turns what an environment (or a robot) sees into actions in the dataset's units,
doing exactly what training did to the data, with the same code::

    frame {observation.images.<cam>: uint8 (H, W, 3), observation.state: float32 (D,)}
      -> checked against ``spec`` (RuntimeSpec)             -> ObservationError naming the keys
      -> state normalised by the checkpoint's ObservationNormalizer (the loader's object)
      -> pushed into the environment's History (h frames; the loader's padding and obs_mask)
      -> [when the chunk rule asks] BatchPreparer.observation(train=False): images resized and
         normalised for the backbone as in training, no augmentation; the model; decode
      -> the chunk rule (execute=k or temporal ensembling) picks this step's normalised action
      -> vladata.normalize.denormalize with the stored action statistics -> (A,) float32

Instructions are read as the model was trained to read them (``model.language``): ``text``
passes the sentence, ``embedding`` looks its stored sentence embedding up in the table recorded
at training time (``DataSpec.extra["language"]``, from the store's segments) and refuses a
sentence the store never held, ``none`` ignores it. Everything runs batched: ``reset_batch`` /
``act_batch`` serve B environments in lockstep (``reset``/``act`` are the B = 1 case).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vladata.errors import ObservationError, PolicyUnavailableError
from vladata.normalize import Normalization, denormalize
from vladata.store.layout import STATE
from vlatrain import checkpoint
from vlatrain.augment import BatchPreparer
from vlatrain.config import Config
from vlatrain.model import build_policy
from vlatrain.policy.chunking import make_rule
from vlatrain.policy.observations import History, RuntimeSpec, runtime_spec
from vlatrain.spec import DataSpec


class Policy:
    """A trained policy with its own observation history and chunk execution, per environment.

    Build it with :meth:`load`. ``execute=k`` runs the first ``k`` actions of every chunk open
    loop; ``ensemble=m`` ensembles overlapping chunks as ACT does (``vlatrain.policy.chunking``);
    neither re-plans at every step.
    """

    def __init__(self, model, data_spec: DataSpec, cfg: Config, device: torch.device, *,
                 execute: int | None = None, ensemble: float | None = None, source: str = ""):
        self.model, self.data_spec, self.cfg, self.device = model.eval(), data_spec, cfg, device
        self.source = source
        self.spec: RuntimeSpec = runtime_spec(data_spec, cfg.model)
        make_rule(data_spec.chunk, execute, ensemble)  # refuse a bad rule now, not at reset
        self.execute, self.ensemble = execute, ensemble
        self.obs_norm = data_spec.observation_normalizer()
        image_specs = {c: model.backbone.image_spec(c) for c in data_spec.cameras}
        self.prep = BatchPreparer(data_spec, image_specs, cfg.data.augment, device,
                                  discrete=model.discrete, use_state=cfg.model.use_state)
        self.action_norm = Normalization.from_dict(data_spec.extra["normalization"])
        self.action_stats = {k: np.asarray(v, np.float64)
                             for k, v in data_spec.extra["action_stats"].items()}
        lang = data_spec.extra.get("language") or {}
        self.embeddings = {t: np.asarray(e, np.float32) for t, e in
                           zip(lang.get("instructions", []), lang.get("embeddings", []))}
        self.instructions: list[str] = []
        self.histories: list[History] = []
        self.rules: list = []

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, *,
             execute: int | None = None, ensemble: float | None = None) -> "Policy":
        """The policy of checkpoint ``path`` (read with ``torch.load(weights_only=True)``) on
        ``device`` (default: CUDA if available, else the CPU)."""
        ckpt = checkpoint.load(path)
        cfg = Config.from_dict(ckpt["config"])
        spec = DataSpec.from_dict(ckpt["spec"])
        missing = [k for k in ("action_stats", "normalization") if k not in spec.extra]
        if missing:
            raise PolicyUnavailableError(f"{path}: the checkpoint records no {'/'.join(missing)} "
                                         f"(written before the policy runtime existed): its "
                                         f"actions cannot be put back into the dataset's units; "
                                         f"retrain it")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_policy(cfg.model, spec)
        model.load_state_dict(ckpt["model"])
        return cls(model.to(dev), spec, cfg, dev, execute=execute, ensemble=ensemble,
                   source=str(path))

    def __repr__(self) -> str:
        rule = make_rule(self.data_spec.chunk, self.execute, self.ensemble)
        return (f"Policy({self.source or '<model>'}, history={self.spec.history}, "
                f"chunk={self.spec.chunk}, {rule})")

    # -- episodes ---------------------------------------------------------------------------

    def reset(self, instruction: str = "") -> None:
        """Start an episode of one environment following ``instruction``."""
        self.reset_batch([instruction])

    def reset_batch(self, instructions: list[str]) -> None:
        """Start episodes in ``len(instructions)`` environments (one instruction each)."""
        if not instructions:
            raise ObservationError("reset_batch needs one instruction per environment, got none")
        for j, text in enumerate(instructions):
            self._check_instruction(text, f"environment {j}" if len(instructions) > 1 else "")
        self.instructions = [str(t) for t in instructions]
        self.histories = [History(self.spec.history) for _ in instructions]
        self.rules = [make_rule(self.data_spec.chunk, self.execute, self.ensemble)
                      for _ in instructions]

    def _check_instruction(self, text, where: str) -> None:
        at = f"{where}: " if where else ""
        if not isinstance(text, str):
            raise ObservationError(f"{at}the instruction must be a str, got {type(text).__name__}")
        if self.spec.instruction_required and not text.strip():
            raise ObservationError(f"{at}this policy is conditioned on language "
                                   f"(model.language={self.spec.language}): pass the instruction "
                                   f"to reset()")
        if self.spec.language == "embedding" and text not in self.embeddings:
            known = sorted(self.embeddings)
            raise ObservationError(
                f"{at}instruction {text!r} is not one the policy was trained with: it reads the "
                f"store's stored sentence embeddings, which exist only for the store's "
                f"{len(known)} instructions (e.g. {known[:5]}); use one of them, or train with "
                f"model.language=text to accept new sentences")

    # -- acting -----------------------------------------------------------------------------

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One frame -> the action to execute now, (A,) float32 in the dataset's units."""
        if not self.histories:
            raise ObservationError("call reset(instruction) before acting")
        if len(self.histories) != 1:
            raise ObservationError(f"act() serves one environment but reset_batch() started "
                                   f"{len(self.histories)}: use act_batch, or reset(instruction)")
        return self.act_batch([obs])[0]

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """One frame per environment -> (B, A) float32 actions in the dataset's units."""
        self.observe(observations)
        need = [r.needs_plan() for r in self.rules]
        if any(need):
            chunks = self.plan()
            for rule, chunk, n in zip(self.rules, chunks, need):
                if n:
                    rule.push(chunk)
        return self.to_units(np.stack([r.pop() for r in self.rules]))

    def observe(self, observations: list[dict[str, np.ndarray]]) -> None:
        """Check, normalise and append one frame per environment to its history."""
        if not self.histories:
            raise ObservationError("call reset(instruction) (or reset_batch) before acting")
        if len(observations) != len(self.histories):
            raise ObservationError(f"got {len(observations)} observations for the "
                                   f"{len(self.histories)} environments reset_batch() started")
        many = len(observations) > 1
        frames = [self.spec.check(o, f"environment {j}'s observation" if many else "observation")
                  for j, o in enumerate(observations)]
        for hist, frame in zip(self.histories, frames):
            hist.push(self.obs_norm.apply(frame) if STATE in frame else frame)

    def batch(self) -> dict:
        """The environments' current windows, laid out as the window loader's batches."""
        wins = [h.window() for h in self.histories]
        out = {k: torch.from_numpy(np.stack([w[k] for w, _ in wins])) for k in wins[0][0]}
        out["obs_mask"] = torch.from_numpy(np.stack([m for _, m in wins]))
        width = self.data_spec.language_dim
        emb = [self.embeddings.get(t) for t in self.instructions]
        out["language.embedding"] = torch.from_numpy(np.stack(
            [e if e is not None else np.zeros(width, np.float32) for e in emb]).reshape(len(emb),
                                                                                     width))
        out["language_mask"] = torch.tensor([e is not None or self.spec.language == "text"
                                             for e in emb])
        out["instruction"] = list(self.instructions)
        return out

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """The model's raw output on the current windows: (B, h, c, A) or (B, h, c, A, K)."""
        obs = self.prep.observation(self.batch(), train=False)
        return self.model(obs)

    def plan(self) -> np.ndarray:
        """The chunk each environment would execute from now: (B, c, A) normalised actions
        (gripper -1/+1) predicted at the last history step."""
        return self.model.decode(self.predict())[:, -1].double().cpu().numpy()

    def to_units(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., A) -> the dataset's units, float32 (gripper in its stored
        convention)."""
        return denormalize(np.asarray(actions, np.float64), self.action_stats, self.action_norm)
