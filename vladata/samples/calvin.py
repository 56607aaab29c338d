"""Write a small synthetic CALVIN split root, laid out exactly like the real dataset.

What is faithful (see ../shared/reference/formats.md, section 1): one ``episode_%07d.npz`` per
frame written with ``np.savez_compressed``, float64 low-dim arrays, 7-digit global frame ids with
gaps between teleop segments, ``ep_start_end_ids.npy`` with inclusive ends, ``ep_lens.npy``,
pickled ``scene_info.npy`` (training only) and ``auto_lang_ann.npy`` (overlapping ~64-frame
language windows of at most 64 frames, (N, 1, 384) float32 embeddings), hydra-style
``statistics.yaml``; validation uses a different frame-id range.

What is synthetic: the scene. The gripper moves smoothly towards a per-task goal position and
orientation; ``actions`` is
the next frame's TCP pose and ``rel_actions`` follows CALVIN's formula from it, so actions are a
learnable function of the images (goal and gripper drawn as blobs) and the instruction.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import yaml

from vladata.sources.calvin import frame_path

TASKS = {
    "open_drawer": ("open the drawer", "pull the handle to open the drawer"),
    "push_red_block_left": ("push the red block to the left", "slide the red block left"),
    "turn_on_lightbulb": ("turn on the light bulb", "use the switch to turn on the light"),
    "lift_blue_block_table": ("lift the blue block from the table", "pick up the blue block"),
    "move_slider_right": ("move the sliding door to the right", "push the slider right"),
}
GOALS = {  # tcp xyz goal per task (metres)
    "open_drawer": (0.10, -0.20, 0.45), "push_red_block_left": (-0.15, -0.05, 0.50),
    "turn_on_lightbulb": (0.20, 0.10, 0.55), "lift_blue_block_table": (-0.05, 0.15, 0.60),
    "move_slider_right": (0.15, -0.10, 0.62),
}
ROT_GOALS = {  # tcp euler-xyz goal per task (radians)
    "open_drawer": (0.10, -0.05, 1.50), "push_red_block_left": (-0.08, 0.06, 1.65),
    "turn_on_lightbulb": (0.05, 0.10, 1.45), "lift_blue_block_table": (-0.10, -0.08, 1.70),
    "move_slider_right": (0.08, 0.02, 1.60),
}
TRAIN_FIRST_ID = 358482   # the debug set's first training frame id
VAL_FIRST_ID = 553567     # ... and its first validation frame id


def _embedding(text: str) -> np.ndarray:
    rng = np.random.default_rng(_stable_seed(text))
    v = rng.standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


def _stable_seed(text: str) -> int:
    return zlib.crc32(text.encode())


def _render(size: int, pos: np.ndarray, goal: np.ndarray, gripper: float, tint: int) -> np.ndarray:
    """A smooth synthetic camera image: gradient background, goal blob, gripper blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    img = np.empty((size, size, 3), np.float32)
    img[..., 0] = 60 + 80 * xx
    img[..., 1] = 70 + 60 * yy
    img[..., 2] = 90 + tint
    for (x, y), colour, r in (((goal[0], goal[1]), (230, 40, 40), 0.08),
                              ((pos[0], pos[1]), (40, 200, 60) if gripper > 0 else (40, 60, 220),
                               0.06 + 0.02 * pos[2])):
        cx, cy = 0.5 + 1.6 * x, 0.5 + 1.6 * y
        m = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - m) + np.asarray(colour, np.float32) * m
    return np.clip(img, 0, 255).astype(np.uint8)


def _segment(rng, n: int, start_pos: np.ndarray, tasks: list[str]):
    """Frames of one teleop segment: robot_obs, scene_obs, actions (abs) per frame, + task per frame."""
    pos = np.empty((n + 1, 6))
    pos[0] = start_pos
    task_of = []
    grip = np.empty(n + 1)
    grip[0] = 1.0
    k, left = 0, 0
    for t in range(n):
        if left == 0:
            task = tasks[k % len(tasks)]
            k += 1
            left = int(rng.integers(40, 80))
        left -= 1
        goal = np.asarray(GOALS[task])
        step = np.clip(goal - pos[t, :3], -0.015, 0.015)
        pos[t + 1, :3] = pos[t, :3] + step + rng.normal(0, 0.0005, 3)
        rgoal = np.asarray(ROT_GOALS[task])
        pos[t + 1, 3:] = (pos[t, 3:] + np.clip(rgoal - pos[t, 3:], -0.015, 0.015)
                          + rng.normal(0, 0.001, 3))
        grip[t + 1] = -1.0 if np.linalg.norm(goal - pos[t + 1, :3]) < 0.03 else 1.0
        task_of.append(task)
    return pos, grip, task_of


def write_sample(out: str | Path, *, train_segments: int = 8, val_segments: int = 2,
                 frames_per_segment: tuple[int, int] = (180, 260), static_size: int = 200,
                 gripper_size: int = 84, seed: int = 0, depth: bool = True) -> Path:
    """Write a CALVIN-layout dataset to ``out`` (the split root) and return it.

    Defaults give ~2,200 frames at the real image sizes; tests pass smaller sizes.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    task_names = list(TASKS)
    for split, first_id, n_seg in (("training", TRAIN_FIRST_ID, train_segments),
                                   ("validation", VAL_FIRST_ID, val_segments)):
        d = out / split
        (d / "lang_annotations").mkdir(parents=True, exist_ok=True)
        ranges, fid = [], first_id
        ann, ann_task, ann_emb, indx = [], [], [], []
        robot_all = []
        for s in range(n_seg):
            n = int(rng.integers(*frames_per_segment))
            order = list(rng.permutation(task_names))
            pos, grip, task_of = _segment(rng, n, np.r_[rng.uniform(-0.1, 0.1, 3) +
                                                        [0, 0, 0.5], 0.0, 0.0, 1.57], order)
            joints = rng.normal(0, 0.3, (n + 1, 7)).cumsum(0) * 0.01 + [-1, 1, 1.8, -2, -1, 1.8, 0.6]
            for t in range(n):
                robot_obs = np.r_[pos[t], 0.04 + 0.04 * (grip[t] > 0), joints[t], grip[t]]
                actions = np.r_[pos[t + 1], grip[t + 1]]
                d_pos = np.clip(actions[:3] - robot_obs[:3], -0.02, 0.02) / 0.02
                d_rot = (actions[3:6] - robot_obs[3:6] + np.pi) % (2 * np.pi) - np.pi
                rel = np.r_[d_pos, np.clip(d_rot, -0.05, 0.05) / 0.05, grip[t + 1]]
                goal = np.asarray(GOALS[task_of[t]])
                scene = np.r_[rng.uniform(0, 0.3), rng.uniform(0, 0.2), 0.0, 0.0, 0.0, 1.0,
                              np.tile(np.r_[goal, 0, 0, 0], 3)]
                tint = task_names.index(task_of[t]) * 20
                frame = {
                    "actions": actions.astype(np.float64),
                    "rel_actions": rel.astype(np.float64),
                    "robot_obs": robot_obs.astype(np.float64),
                    "scene_obs": scene.astype(np.float64),
                    "rgb_static": _render(static_size, pos[t], goal, grip[t], tint),
                    "rgb_gripper": _render(gripper_size, pos[t, :3] - goal, goal * 0, grip[t], tint),
                }
                if depth:
                    frame["depth_static"] = np.full((static_size, static_size), 1.5 + pos[t, 2],
                                                    np.float32)
                    frame["depth_gripper"] = np.full((gripper_size, gripper_size), 0.2, np.float32)
                np.savez_compressed(frame_path(d, fid + t), **frame)
                robot_all.append(robot_obs)
            ranges.append((fid, fid + n - 1))
            # language windows: per task run, its last <= 64 frames, plus (runs over 40 frames) a
            # shorter window inside it with the other phrasing -- overlapping, as CALVIN's are
            t = 0
            while t < n:
                task = task_of[t]
                run_end = t
                while run_end + 1 < n and task_of[run_end + 1] == task:
                    run_end += 1
                a = max(t, run_end - 63)  # the task's run, at most CALVIN's 64-frame window
                phrasing = int(rng.integers(0, 2))
                windows = [(a, run_end, phrasing)]
                if run_end - a + 1 > 40:
                    windows.append((run_end - int(rng.integers(33, run_end - a + 1)) + 1,
                                    run_end - int(rng.integers(0, 4)), 1 - phrasing))
                for wa, wb, k in windows:
                    indx.append((fid + wa, fid + wb))
                    ann.append(TASKS[task][k])
                    ann_task.append(task)
                    ann_emb.append(_embedding(TASKS[task][k])[None])
                t = run_end + 1
            fid += n + int(rng.integers(5, 40))  # a gap of missing ids between segments
        ids = np.asarray(ranges, dtype=np.int64)
        np.save(d / "ep_start_end_ids.npy", ids)
        np.save(d / "ep_lens.npy", ids[:, 1] - ids[:, 0] + 1)
        lang = {"language": {"ann": ann, "task": ann_task,
                             "emb": np.stack(ann_emb).astype(np.float32)},
                "info": {"episodes": [], "indx": indx}}
        np.save(d / "lang_annotations" / "auto_lang_ann.npy", lang, allow_pickle=True)
        if split == "training":
            np.save(d / "scene_info.npy", {"calvin_scene_D": [0, 611098]}, allow_pickle=True)
        robot_all = np.asarray(robot_all)
        stats = {"robot_obs": [{"_target_": "calvin_models.calvin_agent.utils.transforms."
                                "NormalizeVector", "mean": robot_all.mean(0).tolist(),
                                "std": robot_all.std(0).tolist()}],
                 "act_min_bound": [-1.0] * 6 + [0.0], "act_max_bound": [1.0] * 7}
        (d / "statistics.yaml").write_text(yaml.safe_dump(stats))
    return out
