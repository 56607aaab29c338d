"""Closed-loop evaluation: a policy acts in a simulator; success rate per task with a 95% interval.

:func:`run` plays ``episodes`` episodes of every task, each from a fresh *held-out* initial state
(``episode_seed("eval", seed, task, k)``: never a collection seed), in ``workers`` processes that
each own their environment and renderer. The policy is anything with ``reset(instruction)`` and
``act(obs) -> (A,)`` (:class:`vlaenv.base.Policy`); workers build it from a picklable
:class:`PolicySpec`: ``expert`` (Meta-World's scripted expert, which reads the simulator's
privileged state -- the only policy allowed to), ``random`` (uniform actions), ``checkpoint``
(:func:`load_policy`: the policy runtime, ``vlatrain.policy``) or ``remote`` (a policy served by
``vlatrain serve``, through :class:`vlatrain.serving.client.RemotePolicy`: the same actions as the
checkpoint in process). No torch model is imported here until a checkpoint is loaded. With
``batch > 1`` each process steps that many environments in lockstep, and a checkpoint (or remote)
policy acts for all of them at once (``reset_batch`` / ``act_batch``, see
:class:`vlaenv.base.Policy`).

Videos: the first ``videos_per_task`` episodes of each task are written to ``video_dir`` as MP4
(H.264 via PyAV), cameras side by side under a caption with the instruction and the outcome.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vladata.errors import EnvError, PolicyUnavailableError

ENVS = ("metaworld",)
POLICIES = ("expert", "random", "checkpoint", "remote")


def load_policy(checkpoint: str, device: str | None = None, *, execute: int | None = None,
                ensemble: float | None = None):
    """A trained checkpoint as a ``reset``/``act`` (and ``reset_batch``/``act_batch``) policy:
    :meth:`vlatrain.policy.Policy.load`, with its chunk execution rule (``execute=k`` or
    ``ensemble=m``; neither: re-plan at every step)."""
    from vlatrain.policy import Policy
    return Policy.load(checkpoint, device, execute=execute, ensemble=ensemble)


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PolicySpec:
    """Which policy a worker builds: ``expert``, ``random``, ``checkpoint`` (path) or ``remote``
    (``url`` of a ``vlatrain serve`` server, with its ``token``)."""

    kind: str
    checkpoint: str | None = None
    seed: int = 0
    execute: int | None = None      # checkpoint: chunk execution rule (vlatrain.policy.chunking)
    ensemble: float | None = None
    threads: int = 1                # checkpoint: torch intra-op threads per rollout process
    url: str | None = None          # remote: ws://HOST:PORT
    token: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"unknown policy {self.kind!r}; known: {', '.join(POLICIES)}")
        if (self.kind == "checkpoint") != (self.checkpoint is not None):
            raise ValueError("a checkpoint path goes with policy 'checkpoint' only")
        if (self.kind == "remote") != (self.url is not None):
            raise ValueError("a server URL goes with policy 'remote' only")

    @property
    def name(self) -> str:
        return self.checkpoint or self.url or self.kind

    def build(self, env, episode_seed: int):
        """The policy for one episode: built afresh (expert, random), or loaded once per process."""
        if self.kind == "expert":
            if not hasattr(env, "expert"):
                raise EnvError(f"{type(env).__name__} has no scripted expert")
            return env.expert()
        if self.kind == "random":  # seeded by the episode: the same actions whatever --workers
            return RandomPolicy(env.spec.action.shape[0], [self.seed, episode_seed])
        if self.kind == "remote":  # one connection per process; its session "0" per episode
            key = (self.url, self.token)
            if key not in _LOADED:
                try:
                    from vlatrain.serving.client import RemotePolicy
                except ImportError as e:
                    raise PolicyUnavailableError(f"{e}: the policy server's client is not "
                                                 'installed: pip install -e ".[serve]"') from None
                _LOADED[key] = RemotePolicy(self.url, self.token)
            return _LOADED[key]
        key = (self.checkpoint, self.execute, self.ensemble)
        if key not in _LOADED:
            _LOADED[key] = load_policy(self.checkpoint, execute=self.execute,
                                       ensemble=self.ensemble)
        return _LOADED[key]


_LOADED: dict = {}  # (checkpoint, execute, ensemble) or (URL, token) -> policy, per process


def forget(checkpoint: str) -> None:
    """Drop this process's cached policies of ``checkpoint`` (a file rewritten or removed)."""
    for key in [k for k in _LOADED if k[0] == checkpoint]:
        del _LOADED[key]


class RandomPolicy:
    """Uniform actions in [-1, 1]: the floor a trained policy must clear."""

    def __init__(self, dim: int, seed=0):
        self.dim, self.rng = dim, np.random.default_rng(seed)

    def reset(self, instruction: str) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.dim).astype(np.float32)


@dataclass
class EnvConfig:
    """What every worker needs to build the environment of a task."""

    name: str = "metaworld"
    image_size: int = 128
    max_steps: int = 300
    cameras: tuple[str, ...] | None = None  # None: the environment's default cameras

    def make(self, task: str, render: bool = True):
        if self.name != "metaworld":
            raise EnvError(f"unknown environment {self.name!r}; known: {', '.join(ENVS)}")
        from vlaenv.metaworld import CAMERAS, MetaWorldEnv
        return MetaWorldEnv(task, image_size=self.image_size, max_steps=self.max_steps,
                            cameras=tuple(self.cameras or CAMERAS), render=render)

    def for_policy(self, policy: "PolicySpec") -> "EnvConfig":
        """This config rendering the cameras a checkpoint policy was trained on (unless cameras
        were chosen)."""
        if self.cameras is not None or policy.kind != "checkpoint":
            return self
        cams = getattr(getattr(policy.build(None, 0), "spec", None), "cameras", None)
        if not cams:  # a policy without a runtime spec gets the environment's default cameras
            return self
        return EnvConfig(self.name, self.image_size, self.max_steps, tuple(cams))

    def tasks(self, text) -> tuple[str, ...]:
        if self.name != "metaworld":
            raise EnvError(f"unknown environment {self.name!r}; known: {', '.join(ENVS)}")
        from vlaenv.metaworld import resolve_tasks
        return resolve_tasks(text)


@dataclass
class TaskResult:
    task: str
    instruction: str
    episodes: int
    successes: int
    mean_length: float
    ci95: tuple[float, float]
    runs: list[dict] = field(default_factory=list)  # per episode: index, seed, success, length

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


@dataclass
class Report:
    """Per-task and overall success, with 95% Wilson intervals, steps run and wall time."""

    env: str
    policy: str
    seed: int
    tasks: list[TaskResult]
    steps: int
    seconds: float
    videos: list[str] = field(default_factory=list)

    @property
    def episodes(self) -> int:
        return sum(t.episodes for t in self.tasks)

    @property
    def successes(self) -> int:
        return sum(t.successes for t in self.tasks)

    def to_dict(self) -> dict:
        lo, hi = wilson(self.successes, self.episodes)
        return {"env": self.env, "policy": self.policy, "seed": self.seed,
                "tasks": [{**asdict(t), "success_rate": t.rate, "ci95": list(t.ci95)}
                          for t in self.tasks],
                "overall": {"episodes": self.episodes, "successes": self.successes,
                            "success_rate": self.successes / max(self.episodes, 1),
                            "ci95": [lo, hi],
                            "mean_task_success": float(np.mean([t.rate for t in self.tasks]))},
                "steps": self.steps, "seconds": self.seconds,
                "steps_per_second": self.steps / self.seconds if self.seconds else 0.0,
                "videos": self.videos}

    def __str__(self) -> str:
        w = max(len(t.task) for t in self.tasks)
        lines = [f"{'task':<{w}}  episodes  success  95% interval   mean length"]
        for t in self.tasks:
            lines.append(f"{t.task:<{w}}  {t.episodes:8d}  {t.rate:6.0%}   "
                         f"[{t.ci95[0]:4.0%}, {t.ci95[1]:4.0%}]   {t.mean_length:8.1f}")
        d = self.to_dict()["overall"]
        lines.append(f"{'overall':<{w}}  {d['episodes']:8d}  {d['success_rate']:6.0%}   "
                     f"[{d['ci95'][0]:4.0%}, {d['ci95'][1]:4.0%}]")
        lines.append(f"{self.steps} steps in {self.seconds:.1f} s "
                     f"({self.steps / max(self.seconds, 1e-9):.0f} steps/s), policy {self.policy}, "
                     f"seed {self.seed}" + (f", {len(self.videos)} videos" if self.videos else ""))
        return "\n".join(lines)


def run(policy: PolicySpec, tasks, *, env: EnvConfig | None = None, episodes: int = 20,
        seed: int = 0, workers: int = 1, batch: int = 1, video_dir: str | None = None,
        videos_per_task: int = 2, progress: bool = True) -> Report:
    """Roll ``policy`` out for ``episodes`` held-out episodes per task; see the module docstring.

    ``batch`` environments per process step in lockstep (a checkpoint policy then acts for all
    of them with one ``act_batch`` call).
    """
    env = (env or EnvConfig()).for_policy(policy)
    tasks = env.tasks(tasks)
    if episodes < 1 or workers < 1 or batch < 1:
        raise ValueError(f"episodes, workers and batch must be >= 1, got {episodes}, {workers} "
                         f"and {batch}")
    if batch > 1 and os.environ.get("MUJOCO_GL") == "osmesa":
        raise EnvError("--batch > 1 keeps several renderers alive, which OSMesa renders wrongly: "
                       "use MUJOCO_GL=egl or --batch 1")
    jobs = [(t, k) for t in tasks for k in range(episodes)]
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"rollout ({policy.kind})", unit="ep", disable=not progress)
    results = []
    if workers == 1:
        for t in tasks:
            results += _play(env, policy, t, list(range(episodes)), seed, video_dir,
                             videos_per_task, batch, bar.update)
    else:
        chunks = [(t, ks) for t in tasks for ks in np.array_split(range(episodes),
                                                                  min(workers, episodes))]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_play, env, policy, t, [int(k) for k in ks], seed, video_dir,
                                videos_per_task, batch) for t, ks in chunks if len(ks)]
            for f in as_completed(futs):
                got = f.result()
                results += got
                bar.update(len(got))
    bar.close()
    per_task = []
    for t in tasks:
        rs = sorted((r for r in results if r["task"] == t), key=lambda r: r["index"])
        k = sum(r["success"] for r in rs)
        per_task.append(TaskResult(
            task=t, instruction=rs[0]["instruction"], episodes=len(rs), successes=k,
            mean_length=float(np.mean([r["length"] for r in rs])), ci95=wilson(k, len(rs)),
            runs=[{key: r[key] for key in ("index", "seed", "success", "length")} for r in rs]))
    return Report(env=env.name, policy=policy.name, seed=seed, tasks=per_task,
                  steps=sum(r["length"] for r in results), seconds=time.perf_counter() - t0,
                  videos=sorted(r["video"] for r in results if r.get("video")))


def _play(env_cfg: EnvConfig, spec: PolicySpec, task: str, indices: list[int], seed: int,
          video_dir: str | None, videos_per_task: int, batch: int = 1,
          report=None) -> list[dict]:
    """Episodes ``indices`` of ``task`` in this process, ``batch`` environments at a time.

    A checkpoint policy runs with ``spec.threads`` torch threads meanwhile (restored after): a
    one-frame forward gains nothing from more, and on a busy machine their spinning threads cost
    ~40x (measured: 2.5 vs 99 ms per act on 2 loaded cores; BENCHMARKS.md).
    """
    envs, out = [], []
    threads = None
    if spec.kind == "checkpoint":
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(spec.threads)
    try:
        for lo in range(0, len(indices), batch):
            ks = indices[lo:lo + batch]
            while len(envs) < len(ks):
                envs.append(env_cfg.make(task))
            out += _episodes(envs[:len(ks)], spec, task, ks, seed, video_dir, videos_per_task,
                             batched=batch > 1 and spec.kind in ("checkpoint", "remote"))
            if report is not None:
                report(len(ks))
    finally:
        for env in envs:
            env.close()
        if threads is not None:
            torch.set_num_threads(threads)
    return out


def _episodes(envs: list, spec: PolicySpec, task: str, ks: list[int], seed: int,
              video_dir: str | None, videos_per_task: int, batched: bool) -> list[dict]:
    """Episodes ``ks`` in lockstep, one per environment of ``envs``.

    Unbatched, each environment's policy (expert, random: one each; a checkpoint: the one loaded
    policy) gets ``reset`` + ``act``. ``batched``, the one checkpoint policy gets
    ``reset_batch(instructions)`` and ``act_batch(observations) -> (B, A)`` for all of them; an
    environment that is done keeps being shown its last observation (its action is ignored), so
    the batch keeps its size for the whole episode.
    """
    from vlaenv.metaworld import episode_seed
    seeds = [episode_seed("eval", seed, task, k) for k in ks]
    obs = [env.reset(s) for env, s in zip(envs, seeds)]
    policies = [spec.build(env, s) for env, s in zip(envs, seeds)]
    if batched:
        if not hasattr(policies[0], "act_batch"):
            raise PolicyUnavailableError(f"{spec.name}: the policy has no act_batch: run "
                                         "with --batch 1")
        policies[0].reset_batch([env.instruction for env in envs])
    else:
        for policy, env in zip(policies, envs):
            policy.reset(env.instruction)
    record = [video_dir is not None and k < videos_per_task for k in ks]
    frames = [[o] if r else None for o, r in zip(obs, record)]
    done, info = [False] * len(envs), [None] * len(envs)
    while not all(done):
        if batched:
            actions = np.asarray(policies[0].act_batch(obs))  # (B, A)
        else:
            actions = [None if d else p.act(o) for p, o, d in zip(policies, obs, done)]
        for j, env in enumerate(envs):
            if not done[j]:
                obs[j], _, done[j], info[j] = env.step(actions[j])
                if record[j]:
                    frames[j].append(obs[j])
    out = []
    for j, (env, k) in enumerate(zip(envs, ks)):
        r = {"task": task, "index": k, "seed": seeds[j], "instruction": env.instruction,
             "success": bool(info[j]["success"]), "length": int(info[j]["steps"])}
        if record[j]:
            from vlatrain.video import write_episode
            outcome = "success" if r["success"] else "failure"
            r["video"] = write_episode(Path(video_dir) / f"{task}_{k:03d}_{outcome}.mp4",
                                       frames[j], env.spec.cameras,
                                       f"{env.instruction}  ({outcome}, {r['length']} steps)",
                                       fps=env.spec.fps)
        out.append(r)
    return out
