"""Closed-loop rollout speed: `vlatrain rollout` steps/s against the bare environment.

    MUJOCO_GL=egl python benchmarks/rollout.py [--tasks reach,drawer-close] [--episodes 4]
        [--max-steps 150] [--image-size 128] [--checkpoint best.pt [--policy-threads 1,2]]

In the same run: the floor is the environment alone (reset + step with a constant action,
rendering both 128x128 cameras, one process, no policy, no bookkeeping); then `vlatrain.rollout.run`
with the random and the expert policy on 1 and 2 worker processes (2 CPU-heavy renderers need 2
free cores to scale). With ``--checkpoint``, a trained policy through the policy runtime
(``vlatrain.policy``) on 1 and 2 workers, with each of ``--policy-threads`` torch threads per
process. Prints control steps/s and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def env_only(tasks, episodes: int, max_steps: int, image_size: int) -> tuple[int, float]:
    from vlaenv.metaworld import MetaWorldEnv, episode_seed
    steps, t0 = 0, time.perf_counter()
    for task in tasks:
        env = MetaWorldEnv(task, image_size=image_size, max_steps=max_steps)
        try:
            for k in range(episodes):
                env.reset(episode_seed("eval", 0, task, k))
                done = False
                while not done:
                    _, _, done, _ = env.step(np.zeros(7, np.float32))
                    steps += 1
        finally:
            env.close()
    return steps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default="reach,drawer-close")
    ap.add_argument("--episodes", type=int, default=4, help="per task")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--checkpoint", default=None, help="also roll this trained policy out")
    ap.add_argument("--policy-threads", default="1", help="torch threads per process to try")
    args = ap.parse_args()
    from vlatrain.rollout import EnvConfig, PolicySpec, run
    env = EnvConfig("metaworld", args.image_size, args.max_steps)
    tasks = env.tasks(args.tasks)
    rows = []
    steps, secs = env_only(tasks, args.episodes, args.max_steps, args.image_size)
    floor = steps / secs
    rows.append(("env only (constant action)", 1, steps, secs, ""))
    for kind in ("random", "expert"):
        for workers in (1, 2):
            r = run(PolicySpec(kind), tasks, env=env, episodes=args.episodes, workers=workers,
                    progress=False)
            rows.append((f"rollout --policy {kind}", workers, r.steps, r.seconds,
                         f"{r.successes}/{r.episodes} succeeded"))
    for threads in [int(t) for t in args.policy_threads.split(",")] if args.checkpoint else []:
        for workers in (1, 2):
            spec = PolicySpec("checkpoint", checkpoint=args.checkpoint, threads=threads)
            r = run(spec, tasks, env=env, episodes=args.episodes, workers=workers,
                    progress=False)
            rows.append((f"rollout CHECKPOINT, {threads} thr", workers, r.steps, r.seconds,
                         f"{r.successes}/{r.episodes} succeeded"))
    print(f"tasks {','.join(tasks)}, {args.episodes} episodes each, max {args.max_steps} steps, "
          f"two {args.image_size}x{args.image_size} cameras, {os.cpu_count()} CPUs, "
          f"MUJOCO_GL={os.environ['MUJOCO_GL']}")
    print(f"{'run':<28} {'workers':>7} {'steps':>7} {'seconds':>8} {'steps/s':>8} "
          f"{'vs env':>7}  note")
    for name, workers, steps, secs, note in rows:
        rate = steps / secs
        print(f"{name:<28} {workers:>7} {steps:>7} {secs:>8.1f} {rate:>8.1f} "
              f"{rate / floor:>6.2f}x  {note}")


if __name__ == "__main__":
    main()
