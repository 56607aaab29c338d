"""Meta-World scripted-expert demonstrations -> canonical episodes.

A simulator has no files to read, so the source *is* a deterministic program: episode ``k`` of
task ``t`` starts from the initial state of seed ``episode_seed("collect", seed, t, k)``
(:mod:`vlaenv.metaworld`; evaluation seeds are disjoint) and the scripted expert acts until the
simulator reports success or the step limit ends it.

- ``plan()`` runs every episode once *without cameras* (physics only, ~2000 steps/s) to learn its
  length and whether the expert succeeded; failed episodes are dropped and counted in
  :meth:`skipped`. With ``workers > 1`` planning runs in that many processes.
- ``read(i, lo, hi)`` replays episode ``i`` from its seed with the cameras on and renders only
  frames ``lo..hi-1``; MuJoCo is deterministic, and the replay checks it reaches success at the
  planned step.

Frames: ``observation.images.<camera>`` and ``observation.state`` exactly as the environment
returns them, ``observation.environment_state`` the object poses and goal
(:meth:`~vlaenv.metaworld.MetaWorldEnv.environment_state`: privileged, for auxiliary training
targets such as ``data.aux_targets``; no policy input reads it), ``action`` the expert's clean
action (7-D, clipped to [-1, 1]) and ``action.executed`` what was sent to the simulator: the
same, or the action plus Gaussian noise on xyz in the ``noise_fraction`` of episodes chosen for
it (DART-style noise injection: the policy sees states off the expert's path, labelled with the
expert's correction). One language segment per episode: the task's instruction. The last
``val_fraction`` of each task's episodes are split ``validation``.
"""

from __future__ import annotations

import multiprocessing as mp
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from vladata.episode import EpisodeInfo, FeatureSpec, Segment
from vladata.errors import SourceFormatError

#: The privileged object-and-goal feature every collected frame carries.
ENV_STATE = "observation.environment_state"


@dataclass
class MetaWorldSource:
    """Scripted-expert episodes of Meta-World ``tasks``; see the module docstring."""

    tasks: tuple[str, ...]
    episodes_per_task: int = 50
    seed: int = 0
    image_size: int = 128
    cameras: tuple[str, ...] = ("corner2", "gripperPOV")
    max_steps: int = 300
    noise_fraction: float = 0.0
    noise_std: float = 0.1
    val_fraction: float = 0.1
    workers: int = 1
    progress: bool = True
    name: str = "metaworld"
    fps: float = 80.0
    _plan: list[EpisodeInfo] | None = field(default=None, repr=False)
    _skipped: list[str] = field(default_factory=list, repr=False)
    _envs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from vlaenv.metaworld import resolve_cameras, resolve_tasks
        self.tasks = resolve_tasks(self.tasks)
        self.cameras = resolve_cameras(self.cameras)
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if not 0.0 <= self.noise_fraction <= 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("noise_fraction must lie in [0, 1] and val_fraction in [0, 1)")

    def close(self) -> None:
        """Release the simulators and renderers this process opened for reading."""
        for env in self._envs.values():
            env.close()
        self._envs = {}

    def __getstate__(self):  # workers get settings and the plan, never a live simulator
        return {**self.__dict__, "_envs": {}}

    # -- planning ----------------------------------------------------------------------------------
    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            jobs = [(t, k) for t in self.tasks for k in range(self.episodes_per_task)]
            bar = tqdm(total=len(jobs), desc="expert episodes (plan)", unit="ep",
                       disable=not self.progress)
            results = []
            if self.workers > 1:
                size = max(1, len(jobs) // (self.workers * 8))
                chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
                with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
                    for f in as_completed([pool.submit(_plan_chunk, self, c) for c in chunks]):
                        results += f.result()
                        bar.update(len(f.result()))
            else:
                for job in jobs:
                    results += _plan_chunk(self, [job])
                    bar.update(1)
            bar.close()
            found = {(r["task"], r["index"]): r for r in results}
            self._skipped, self._plan = [], []
            n_val = int(round(self.val_fraction * self.episodes_per_task))
            for t, k in jobs:
                r = found[(t, k)]
                if not r["success"]:
                    self._skipped.append(f"{t} episode {k} (seed {r['seed']}): the expert did not "
                                         f"succeed within {self.max_steps} steps: dropped")
                    continue
                self._plan.append(self._info(r, "validation"
                                             if k >= self.episodes_per_task - n_val else "train"))
        return self._plan

    def _info(self, r: dict, split: str) -> EpisodeInfo:
        from vlaenv.metaworld import INSTRUCTIONS
        t = r["task"]
        return EpisodeInfo(length=r["length"], source_id=f"{t}/{r['index']}", split=split,
                           segments=[Segment(0, r["length"] - 1, INSTRUCTIONS[t], task=t)],
                           metadata={"task": t, "seed": r["seed"], "noisy": r["noisy"]})

    def skipped(self) -> list[str]:
        self.plan()
        return list(self._skipped)

    def episode(self, task: str, index: int) -> tuple[int, bool]:
        """(initial-state seed, noise injected?) of episode ``index`` of ``task``."""
        from vlaenv.metaworld import episode_seed
        seed = episode_seed("collect", self.seed, task, index)
        pick = np.random.default_rng([self.seed, zlib.crc32(task.encode()), index, 1])
        return seed, bool(pick.random() < self.noise_fraction)

    # -- features ----------------------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        from vlaenv.metaworld import ENV_STATE_NAMES, make_spec
        spec = make_spec(self.image_size, self.cameras, max_steps=self.max_steps)
        feats = dict(spec.features)
        feats[ENV_STATE] = FeatureSpec(
            "float32", (len(ENV_STATE_NAMES),), names=ENV_STATE_NAMES,
            description="privileged: object poses (m, quaternion; zero-padded) and goal (m) from "
                        "the simulator -- a training target, never a policy input")
        feats["action"] = spec.action
        feats["action.executed"] = FeatureSpec("float32", (7,), names=spec.action.names,
                                               description="the action sent to the simulator "
                                                           "(expert + injected noise)")
        return feats

    # -- reading -----------------------------------------------------------------------------------
    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        info = self.plan()[i]
        hi = info.length if hi is None else hi
        env = self._envs.get(info.metadata["task"])
        if env is None:
            from vlaenv.metaworld import MetaWorldEnv
            self.close()  # one renderer at a time (OSMesa needs it)
            self._envs = {info.metadata["task"]: MetaWorldEnv(
                info.metadata["task"], image_size=self.image_size, cameras=self.cameras,
                max_steps=self.max_steps)}
            env = self._envs[info.metadata["task"]]
        frames = run_expert(env, info.metadata["seed"], info.metadata["noisy"], self.noise_std,
                            render_from=lo, stop=hi)
        if frames["length"] < hi or (hi == info.length and not frames["success"]):
            raise SourceFormatError(f"replay diverged from the plan: planned success at step "
                                    f"{info.length}, replay ended after {frames['length']} steps "
                                    "(is the simulator deterministic?)", episode=info.source_id)
        return {k: v for k, v in frames.items() if k not in ("length", "success")}

    def describe(self) -> dict:
        from vlaenv.metaworld import make_spec, version
        return {"dataset": "metaworld", "metaworld_version": version(),
                "tasks": list(self.tasks), "episodes_per_task": self.episodes_per_task,
                "seed": self.seed, "noise_fraction": self.noise_fraction,
                "noise_std": self.noise_std, "val_fraction": self.val_fraction,
                "env": make_spec(self.image_size, self.cameras,
                                 max_steps=self.max_steps).describe(),
                "gripper": "1/-1",
                "gripper_threshold": GRIPPER_THRESHOLD,
                "gripper_meaning": "+1 = close, -1 = open (grab effort; experts also emit 0..1: "
                                   "an effort above 0.3 counts as closing -- the experts relax "
                                   "at 0 with the fingers open and close with 0.6 or 1)",
                "action": "expert's clean action: xyz mocap delta (x 1 cm), rotation 0, gripper",
                "action.executed": "what the simulator received (noise on xyz in noisy episodes)"}


#: Efforts above it are "close": Meta-World's experts emit 0 (relaxed, fingers stay open) while
#: approaching and 0.6 or 1 to grasp; the midpoint 0 would make every relaxed step a close.
GRIPPER_THRESHOLD = 0.3


def run_expert(env, seed: int, noisy: bool, noise_std: float, *, render_from: int = 0,
               stop: int | None = None) -> dict:
    """Run the scripted expert from ``seed``; frames ``render_from`` up to ``stop`` (exclusive).

    Returns the frames (only the rendered range when the env renders, every step otherwise),
    ``length`` (steps run) and ``success``.
    """
    from vlaenv.metaworld import from_metaworld
    expert = env.expert()
    noise = np.random.default_rng([seed % 2**63, 7])
    renders, end = env.render, (np.inf if stop is None else stop)
    env.render = renders and render_from == 0  # render only the frames that are kept
    obs = env.reset(seed)
    keep: dict[str, list] = {}
    t, done, info = 0, False, {"success": False}
    while not done and t < end:
        clean = from_metaworld(expert.act_metaworld())
        sent = clean.copy()
        if noisy:
            sent[:3] = np.clip(sent[:3] + noise.normal(0.0, noise_std, 3), -1.0, 1.0)
        if t >= render_from:
            for k, v in (*obs.items(), (ENV_STATE, env.environment_state()), ("action", clean),
                         ("action.executed", sent)):
                keep.setdefault(k, []).append(v)
        env.render = renders and render_from <= t + 1 < end
        obs, _, done, info = env.step(sent)
        t += 1
    env.render = renders
    out = {k: np.stack(v) for k, v in keep.items()}
    return {**out, "length": t, "success": bool(info["success"])}


def _plan_chunk(source: MetaWorldSource, jobs: list[tuple[str, int]]) -> list[dict]:
    from vlaenv.metaworld import MetaWorldEnv
    out, envs = [], {}
    try:
        for task, k in jobs:
            if task not in envs:
                envs[task] = MetaWorldEnv(task, max_steps=source.max_steps, render=False)
            seed, noisy = source.episode(task, k)
            r = run_expert(envs[task], seed, noisy, source.noise_std)
            out.append({"task": task, "index": k, "seed": seed, "noisy": noisy,
                        "length": r["length"], "success": r["success"]})
    finally:
        for env in envs.values():
            env.close()
    return out
