"""Meta-World (v3, MuJoCo) as a :class:`vlaenv.base.Env`: closed-loop evaluation on a CPU.

``pip install -e ".[sim]"``; render offscreen with ``MUJOCO_GL=egl`` (or ``osmesa``).

Mapping (see docs/simulation.md):

- **tasks**: all 50 v3 tasks, each with one instruction sentence (:data:`INSTRUCTIONS`); task sets
  ``mt10`` / ``mt50`` or a comma list; an unknown name is refused with the known ones listed.
- **initial states**: ``reset(seed)`` seeds the task's own sampler (Meta-World's random reset
  space: object and goal positions), so every seed is a fresh, reproducible initial state.
- **observations**: by default two cameras, ``corner2`` (rotated 180 degrees: it renders upside
  down) and ``gripperPOV`` (on the wrist), or any of :data:`KNOWN_CAMERAS`, uint8 HxWx3;
  ``observation.state`` = hand position (m, world frame) + gripper opening (finger distance /
  0.1 m, clipped to [0, 1]). Object and goal poses
  are *not* observed: the policy finds them in the images. :meth:`MetaWorldEnv.privileged_state`
  returns Meta-World's full 39-D state for the scripted expert only.
- **actions**: 7-D ``dx,dy,dz,droll,dpitch,dyaw,gripper`` in [-1, 1] (clipped); xyz moves the
  mocap target by ``action * 1 cm`` per step, the rotation dimensions are ignored (Meta-World
  keeps the gripper pointing down), ``gripper`` is Meta-World's grab effort, **+1 = close,
  -1 = open** (the fingers are driven with ``[g, -g]``; Meta-World's own hand reset opens them
  with ``[-1, 1]``).
- **success**: the simulator's ``info["success"]``; an episode ends at success or ``max_steps``.
- **rendering**: an offscreen buffer sized to the image, no multisampling, no shadows or
  reflections (about 10x faster than MuJoCo's defaults at 128x128).
"""

from __future__ import annotations

import os
import warnings
import zlib

import numpy as np

from vladata.episode import FeatureSpec
from vlaenv.base import ACTION_NAMES, EnvError, EnvSpec, UnknownTaskError

# MuJoCo picks its OpenGL backend when first imported: offscreen EGL unless the user chose one.
os.environ.setdefault("MUJOCO_GL", "egl")

FPS = 80.0  # Meta-World's control rate: frame_skip 5 x timestep 0.0025 s
STATE_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_opening")
#: ``environment_state``: Meta-World's object poses and goal (privileged: never a policy input)
ENV_STATE_NAMES = tuple(f"{o}_{c}" for o in ("obj1", "obj2")
                        for c in ("x", "y", "z", "q0", "q1", "q2", "q3")) + ("goal_x", "goal_y",
                                                                            "goal_z")
CAMERAS = ("corner2", "gripperPOV")  # the default pair; any of KNOWN_CAMERAS may be chosen
KNOWN_CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper",
                 "gripperPOV")  # the cameras every v3 task's model defines
ROTATE_180 = frozenset({"corner", "corner2", "corner3", "corner4"})  # render upside down
GRIPPER = "+1 = close, -1 = open (Meta-World grab effort)"
MAX_STEPS = 300  # the scripted experts need at most ~290 steps from random initial states

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
        "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
        "window-close-v3")

INSTRUCTIONS = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall from the front",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door with its revolving joint",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door with its revolving joint",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "rotate the faucet handle counter-clockwise to open it",
    "faucet-close-v3": "rotate the faucet handle clockwise to close it",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck, go over the wall and place it at the goal",
    "pick-out-of-hole-v3": "pick up the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "push the window open",
    "window-close-v3": "push the window closed",
}
TASK_SETS = {"mt10": MT10, "mt50": tuple(INSTRUCTIONS)}

#: Seed streams: collection and evaluation draw from disjoint halves of the seed space.
PURPOSES = {"collect": 0, "eval": 1}


def resolve_tasks(text: str | list | tuple) -> tuple[str, ...]:
    """``"mt10"``, ``"mt50"``, ``"reach-v3,push-v3"`` (``-v3`` optional) -> task names."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text).split(",") if t.strip()]
    out: list[str] = []
    for item in (str(t).strip() for t in items):
        if item.lower() in TASK_SETS:
            out += TASK_SETS[item.lower()]
            continue
        name = item if item.endswith("-v3") else f"{item}-v3"
        if name not in INSTRUCTIONS:
            raise UnknownTaskError(f"unknown Meta-World task {item!r}; known: mt10, mt50, "
                                   f"{', '.join(INSTRUCTIONS)}")
        out.append(name)
    if not out:
        raise UnknownTaskError(f"no Meta-World task in {text!r}")
    return tuple(dict.fromkeys(out))


def resolve_cameras(text: str | list | tuple) -> tuple[str, ...]:
    """``"corner2,topview,gripperPOV"`` (or a sequence) -> camera names, checked against
    :data:`KNOWN_CAMERAS`."""
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    names = tuple(dict.fromkeys(str(c).strip() for c in items if str(c).strip()))
    bad = [c for c in names if c not in KNOWN_CAMERAS]
    if bad or not names:
        raise EnvError(f"unknown Meta-World camera(s) {bad or text!r}; known: "
                       f"{', '.join(KNOWN_CAMERAS)}")
    return names


def episode_seed(purpose: str, seed: int, task: str, index: int) -> int:
    """The initial-state seed of episode ``index`` of ``task``.

    Collection seeds are even, evaluation seeds odd: the two never share an initial state.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), int(index)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(2)) * 2 + PURPOSES[purpose]


def make_spec(image_size: int = 128, cameras: tuple[str, ...] = CAMERAS,
              max_steps: int = MAX_STEPS) -> EnvSpec:
    feats = {f"observation.images.{c}": FeatureSpec("uint8", (image_size, image_size, 3), "image",
                                                    description=f"Meta-World camera {c}")
             for c in cameras}
    feats["observation.state"] = FeatureSpec("float32", (4,), names=STATE_NAMES,
                                             description="hand position (m), gripper opening")
    action = FeatureSpec("float32", (7,), names=ACTION_NAMES,
                         description="xyz: mocap delta x 1 cm, rotation ignored, gripper effort")
    return EnvSpec(features=feats, action=action, gripper=GRIPPER, fps=FPS, max_steps=max_steps,
                   notes={"rotation": "droll, dpitch, dyaw are ignored (Meta-World fixes the "
                                      "gripper's orientation)",
                          "clip": "actions are clipped to [-1, 1]"})


def version() -> str:
    from importlib.metadata import version as v
    return v("metaworld")


def to_metaworld(action: np.ndarray) -> np.ndarray:
    """7-D end-effector action -> Meta-World's 4-D (dx, dy, dz, grab effort), clipped to [-1, 1]."""
    a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    return np.array([a[0], a[1], a[2], a[6]])


def from_metaworld(action: np.ndarray) -> np.ndarray:
    """Meta-World's 4-D action -> the 7-D action (zero rotation), clipped to [-1, 1]."""
    a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    return np.array([a[0], a[1], a[2], 0.0, 0.0, 0.0, a[3]], np.float32)


class MetaWorldEnv:
    """One Meta-World task; see the module docstring.

    ``render=False`` skips the cameras (observations then hold ``observation.state`` only), for
    planning demonstrations at physics speed.
    """

    def __init__(self, task: str, *, image_size: int = 128, cameras: tuple[str, ...] = CAMERAS,
                 max_steps: int = MAX_STEPS, render: bool = True):
        (self.task,) = resolve_tasks([task])
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        env = ALL_V3_ENVIRONMENTS[self.task]()
        known = [env.model.camera(i).name for i in range(env.model.ncam)]
        bad = [c for c in cameras if c not in known]
        if bad:
            env.close()
            raise EnvError(f"unknown Meta-World camera(s) {bad}; known: {known}")
        env._partially_observable = False  # the expert's privileged state includes the goal
        del env.sawyer_observation_space  # recomputed for the new observability
        env._freeze_rand_vec = False  # sample a fresh initial state at every reset ...
        env.seeded_rand_vec = True  # ... from the env's own seeded generator
        env._set_task_called = True
        env.max_path_length = max_steps
        self._env = env
        self.instruction = INSTRUCTIONS[self.task]
        self.spec = make_spec(image_size, tuple(cameras), max_steps)
        self.cameras = tuple(cameras)
        self.render = render
        self._renderer = None
        self._state39: np.ndarray | None = None
        self._t = 0

    # -- the Env protocol ------------------------------------------------------------------------
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        import mujoco
        env = self._env
        env.seed(int(seed))
        env.reset()
        # Meta-World's reset runs reset_model twice (its own call, then gymnasium's after
        # mj_resetData), each drawing a new scene, and the second moves the goal marker and
        # some bodies (peg-insert-side's box, window-open's window) after its last forward
        # pass: their world positions stay those of the first draw until the first step, so the
        # first frame showed a goal where there was none and the 39-D state could lag by
        # centimetres. mj_forward recomputes them (qpos/qvel, and so the physics, untouched);
        # the state is then read again, the current frame standing in for the previous one.
        mujoco.mj_forward(env.model, env.data)
        env._prev_obs = env._get_curr_obs_combined_no_goal()
        self._state39 = env._get_obs()  # [current, current again (no earlier frame), goal]
        self._t = 0
        return self._observe()

    def step(self, action) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        if self._state39 is None:
            raise EnvError(f"{self.task}: step() before reset()")
        if self._t >= self.spec.max_steps:
            raise EnvError(f"{self.task}: the episode ended after {self._t} steps; reset() first")
        a = self.spec.check_action(action)
        self._state39, reward, _, _, info = self._env.step(to_metaworld(a))
        self._t += 1
        success = bool(info["success"])
        truncated = self._t >= self.spec.max_steps and not success
        out = {"success": success, "truncated": truncated, "steps": self._t}
        return self._observe(), float(reward), success or truncated, out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()  # under OSMesa it must be closed before another is made
            self._renderer = None
        self._env.close()

    # -- extras ------------------------------------------------------------------------------------
    def privileged_state(self) -> np.ndarray:
        """Meta-World's full 39-D state (hand, objects, goal): for the scripted expert only."""
        return np.array(self._state39)

    def environment_state(self) -> np.ndarray:
        """The object poses and the goal, float32 (17,) named :data:`ENV_STATE_NAMES`: the 39-D
        state without the hand, the gripper and the previous frame. Privileged, as
        :meth:`privileged_state`: collection records it as a training target
        (``observation.environment_state``), observations never carry it."""
        s = np.asarray(self._state39, np.float32)  # [4:18] objects (pos + quat, zero-padded)
        return np.concatenate([s[4:18], s[36:39]])

    def expert(self) -> "ExpertPolicy":
        return ExpertPolicy(self)

    def _observe(self) -> dict[str, np.ndarray]:
        s = self._state39
        obs = {"observation.state": np.asarray(s[:4], np.float32)}
        if self.render:
            obs.update(self._images())
        return obs

    def _images(self) -> dict[str, np.ndarray]:
        import mujoco
        if self._renderer is None:
            size = self.spec.features[f"observation.images.{self.cameras[0]}"].shape[0]
            model = self._env.model
            model.vis.global_.offwidth = size  # the offscreen buffer sized to the image
            model.vis.global_.offheight = size
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0
            try:
                self._renderer = mujoco.Renderer(model, size, size)
            except Exception as e:  # mujoco.FatalError and GL errors: no usable offscreen context
                raise EnvError(f"cannot render offscreen with MUJOCO_GL="
                               f"{os.environ.get('MUJOCO_GL')!r} ({type(e).__name__}: {e}); set "
                               "MUJOCO_GL=egl or osmesa before mujoco is first imported") from None
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        out = {}
        for cam in self.cameras:
            self._renderer.update_scene(self._env.data, camera=cam)
            img = self._renderer.render()
            if cam in ROTATE_180:
                img = img[::-1, ::-1]
            out[f"observation.images.{cam}"] = np.ascontiguousarray(img)
        return out


class ExpertPolicy:
    """Meta-World's scripted expert for the env's task, reading the env's privileged state."""

    def __init__(self, env: MetaWorldEnv):
        from metaworld.policies import ENV_POLICY_MAP
        self.env = env
        self._policy = ENV_POLICY_MAP[env.task]()

    def reset(self, instruction: str) -> None:
        pass

    def act_metaworld(self) -> np.ndarray:
        """The expert's raw 4-D Meta-World action for the current state."""
        with warnings.catch_warnings():  # "constants may be too high": the env clips, and so do we
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(self._policy.get_action(self.env.privileged_state()), np.float64)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return from_metaworld(self.act_metaworld())
