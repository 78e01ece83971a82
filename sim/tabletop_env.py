"""`mot/Tabletop-v0`: language-conditioned tabletop manipulation with a 6-DOF arm in MuJoCo.

## Description

A 6-DOF arm with a parallel-jaw gripper (primitives only, `sim/assets/tabletop.xml`) stands at the
edge of a table with 3-5 coloured cubes/cylinders and 2-3 coloured pads.  Each episode draws a task
family (`reach`, `pick`, `push`, `place`), a scene and an instruction such as "put the red cube on
the blue pad" (split `train`) or "deposit the crimson block on the navy mat" (split `heldout`).
`env.reset(options={"instruction": text})` instead builds a scene in which `text` makes sense.

## Action space

`Box(ACTION_LOW, ACTION_HIGH, (7,), float32)`, absolute position targets at `CONTROL_HZ` = 10 Hz;
each step runs `round(0.1 / timestep)` physics substeps (50 at the default 2 ms).

| idx | name          | unit | range          |
|-----|---------------|------|----------------|
| 0   | shoulder_pan  | rad  | [-2.9, 2.9]    |
| 1   | shoulder_lift | rad  | [-2.0, 2.0]    |
| 2   | elbow         | rad  | [-2.6, 2.6]    |
| 3   | wrist_pitch   | rad  | [-2.4, 2.4]    |
| 4   | wrist_yaw     | rad  | [-2.0, 2.0]    |
| 5   | wrist_roll    | rad  | [-2.9, 2.9]    |
| 6   | gripper       | m    | [0, 0.08] jaw opening (0 = closed) |

Out-of-range values are clipped; the number of clipped components so far in the episode is
`info["clipped_actions"]`.  A wrong shape or a NaN/inf raises `ValueError`.

## Observation space

`Dict`:

| key           | space                                   | content |
|---------------|-----------------------------------------|---------|
| `images`      | `Dict{cam: Box(0, 255, (S, S, 3), uint8)}` | RGB per camera in `cameras` (default front, wrist); only when `render_mode="rgb_array"` |
| `state`       | `Box((7,), float32)`                    | 6 joint positions (rad) + jaw opening (m), order `JOINT_NAMES` |
| `instruction` | `Text(max_length=256)`                  | the episode's instruction (also `info["instruction"]`) |

## Rewards

`reward = sum(w[k] * info["reward_" + k])` over the terms below, weights per family in
`default_config().reward_weights`.  Every term lies in [0, 1].

| term      | meaning |
|-----------|---------|
| `reach`   | `1 - tanh(10 d)`, d = TCP to the object (top face for reach/push, centre otherwise) |
| `grasp`   | both fingers touch the target |
| `lift`    | target height above its rest, normalised by `lift_height` |
| `goal`    | `1 - tanh(10 d)`, d = object to target pad (push/place) |
| `success` | the family's success predicate (`sim.tasks.success`) |

## Episode end

- terminated: success (when `terminate_on_success`), or the target fell off the table.
- truncated: `max_episode_steps` control steps (per family by default: reach 80, pick 100, push 150,
  place 150; `multi` uses the drawn family's cap).

## Arguments

| kwarg               | default              | meaning |
|---------------------|----------------------|---------|
| `task`              | `"pick"`             | a family in `TASK_FAMILIES` or `"multi"` (draws one per episode) |
| `split`             | `"train"`            | instruction vocabulary: `"train"` or `"heldout"` |
| `image_size`        | 128                  | square image side in pixels (<= 640) |
| `cameras`           | `("front", "wrist")` | cameras rendered into `obs["images"]` |
| `render_mode`       | None                 | `"rgb_array"` renders images; None = state-only obs (fast) |
| `max_episode_steps` | None                 | override the per-family cap |
| `config`            | `default_config()`   | every other tunable number |

`info` also carries grounding facts: `target_object`, `target_object_pos`, `target_pad`,
`target_pad_pos`, `objects` (list of {name, color, shape, pos, pixels}), `pads` ({name, color, pos,
pixels}), plus `task`, `tcp_pos`, `step`, `clipped_this_step`. `pixels` maps each camera to where the
object's centre appears in its image, (u, v) in [0, 1] (u rightwards, v downwards; off [0, 1]: out of view).

## Vector envs

Works under `gymnasium.vector.AsyncVectorEnv`; with its default shared memory gymnasium does not refresh
`Text` observations (use `info["instruction"]`, or `sim.make_vec_env`, which disables shared memory and
spawns workers so that no GL context is inherited through fork).

Its parts: `sim.tabletop_config` (every tunable number), `sim.tabletop_scene` (the model's object and pad
slots, contacts, camera projection), `sim.tasks` (scene sampling, rewards, success), `sim.robot` (the arm).
"""

from __future__ import annotations

import string

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim.language import SPLITS, TASK_FAMILIES, TaskSpec, generate_instruction, parse_instruction
from sim.robot import (
    ACTION_HIGH,
    ACTION_LOW,
    ARM_JOINTS,
    CONTROL_HZ,
    FINGER_JOINTS,
    GRIPPER_MAX_OPENING,
    HOME_QPOS,
    ArmKinematics,
    load_model,
)
from sim.tabletop_config import TabletopConfig, default_config
from sim.tabletop_scene import SceneSlots, mj_step, project_point, touching
from sim.tasks import OBJECT_HALF_HEIGHT, Scene, TaskState, reward_terms, sample_scene, success

CAMERAS: tuple[str, ...] = ("front", "wrist")
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + string.punctuation + " "
MAX_INSTRUCTION_LEN = 256


class TabletopEnv(gym.Env):
    """See the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str = "pick",
        split: str = "train",
        image_size: int = 128,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        config: TabletopConfig | None = None,
    ):
        if task not in TASK_FAMILIES + ("multi",):
            raise ValueError(f"task: expected one of {TASK_FAMILIES + ('multi',)}, got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 640:
            raise ValueError(f"image_size: expected an int in [8, 640], got {image_size!r}")
        cameras = tuple(cameras)
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras: expected distinct names from {CAMERAS}, got {cameras!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected 'rgb_array' or None, got {render_mode!r}")
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps: expected >= 1, got {max_episode_steps!r}")
        self.task = task
        self.split = split
        self.image_size = int(image_size)
        self.cameras = cameras
        self.render_mode = render_mode
        self.config = config or default_config()
        self._max_steps_override = None if max_episode_steps is None else int(max_episode_steps)

        self.model = load_model()
        self.model.opt.timestep = self.config.physics_timestep
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, int(round(1.0 / (CONTROL_HZ * self.config.physics_timestep))))
        m = self.model
        self._arm_qadr = np.array([m.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._finger_qadr = np.array([m.joint(n).qposadr[0] for n in FINGER_JOINTS])
        self._tcp_site = m.site("tcp").id
        self._finger_geoms = (m.geom("finger_left").id, m.geom("finger_right").id)
        self.slots = SceneSlots(m)
        self._obj_geom = self.slots.obj_geom  # slot -> geom id (what a segmentation render shows)

        # home pose: IK for a TCP above the middle of the workspace, pointing down
        self.kinematics = ArmKinematics(m)
        self.home_qpos = self.kinematics.solve(HOME_QPOS, np.array(self.config.home_tcp), 0.0, iters=100)

        self.action_space = spaces.Box(ACTION_LOW.copy(), ACTION_HIGH.copy(), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(ACTION_LOW.copy(), ACTION_HIGH.copy(), dtype=np.float32),
            "instruction": spaces.Text(max_length=MAX_INSTRUCTION_LEN, min_length=1, charset=INSTRUCTION_CHARSET),
        }
        if render_mode == "rgb_array":
            s = self.image_size
            obs_spaces["images"] = spaces.Dict(
                {c: spaces.Box(0, 255, (s, s, 3), dtype=np.uint8) for c in self.cameras}
            )
        self.observation_space = spaces.Dict(obs_spaces)

        self._renderer: mujoco.Renderer | None = None
        self.scene: Scene | None = None
        self.current_task: str | None = None
        self.instruction: str = ""
        self.episode_id = 0  # incremented by every reset (experts use it to notice a new episode)
        self._step = 0
        self._clipped = 0
        self._max_steps = 1

    @property
    def max_episode_steps(self) -> int:
        """Step cap of the current episode (before the first reset: the largest cap this env can use)."""
        if self.scene is not None:
            return self._max_steps
        if self._max_steps_override is not None:
            return self._max_steps_override
        caps = self.config.max_episode_steps
        return caps[self.task] if self.task != "multi" else max(caps.values())

    # ------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"instruction", "task"}
        if unknown:
            raise ValueError(f"options: unknown keys {sorted(unknown)}; expected 'instruction' and/or 'task'")
        rng = self.np_random
        spec: TaskSpec | None = None
        text = options.get("instruction")
        if text is not None:
            spec = parse_instruction(text)
            if len(text) > MAX_INSTRUCTION_LEN:
                raise ValueError(f"options['instruction']: at most {MAX_INSTRUCTION_LEN} characters, got {len(text)}")
            task = spec.task
        elif options.get("task") is not None:
            task = options["task"]
            if task not in TASK_FAMILIES:
                raise ValueError(f"options['task']: expected one of {TASK_FAMILIES}, got {task!r}")
        elif self.task == "multi":
            task = str(rng.choice(TASK_FAMILIES))
        else:
            task = self.task

        self.scene = sample_scene(rng, task, spec, self.config.scene)
        self.current_task = task
        self.instruction = text if text is not None else generate_instruction(self.scene.spec, self.split, rng)
        self._apply_scene(rng)
        self.episode_id += 1
        self._step = 0
        self._clipped = 0
        self._max_steps = self._max_steps_override or self.config.max_episode_steps[task]
        obs = self._get_obs()
        info = self._get_info(self._task_state(), clipped_now=0)
        return obs, info

    def step(self, action):
        if self.scene is None:
            raise RuntimeError("step() called before reset()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action: expected shape (7,) (6 joint targets + gripper), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action: expected finite values, got {a.tolist()}")
        clipped = np.clip(a, ACTION_LOW, ACTION_HIGH)
        n_clipped = int(np.count_nonzero(clipped != a))
        self._clipped += n_clipped
        d = self.data
        d.ctrl[:6] = clipped[:6]
        d.ctrl[6:8] = 0.5 * clipped[6]
        mj_step(self.model, d, self.n_substeps)
        self._step += 1

        ts = self._task_state()
        info = self._get_info(ts, clipped_now=n_clipped)
        w = self.config.reward_weights[self.current_task]
        reward = float(sum(w[k] * info["reward_" + k] for k in w))
        fell = bool(ts.obj_pos[2] < self.config.fell_off_z)
        terminated = bool((info["success"] and self.config.terminate_on_success) or fell)
        truncated = bool(self._step >= self._max_steps and not terminated)
        return self._get_obs(), reward, terminated, truncated, info

    def render(self):
        """rgb_array: the episode's cameras side by side, (S, S * n_cameras, 3) uint8."""
        if self.render_mode != "rgb_array":
            return None
        return np.concatenate([self._render_camera(c) for c in self.cameras], axis=1)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------------------- scene setup
    def _apply_scene(self, rng: np.random.Generator) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.slots.place(m, d, self.scene)
        q0 = self.home_qpos + rng.uniform(-1, 1, 6) * self.config.init_qpos_noise
        d.qpos[self._arm_qadr] = q0
        d.qpos[self._finger_qadr] = GRIPPER_MAX_OPENING / 2
        d.ctrl[:6] = q0
        d.ctrl[6:8] = GRIPPER_MAX_OPENING / 2
        mujoco.mj_forward(m, d)

    # ------------------------------------------------------------------------ privileged accessors
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp_site].copy()

    def tcp_rot(self) -> np.ndarray:
        return self.data.site_xmat[self._tcp_site].reshape(3, 3).copy()

    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self._arm_qadr].copy()

    def gripper_opening(self) -> float:
        return float(self.data.qpos[self._finger_qadr].sum())

    def object_pos(self, i: int) -> np.ndarray:
        return self.data.xpos[self.slots.obj_body[self.scene.objects[i].slot]].copy()

    def object_rot(self, i: int) -> np.ndarray:
        return self.data.xmat[self.slots.obj_body[self.scene.objects[i].slot]].reshape(3, 3).copy()

    def pad_pos(self, j: int) -> np.ndarray:
        return self.data.mocap_pos[self.slots.pad_mocap[self.scene.pads[j].slot]].copy()

    def project(self, point: np.ndarray, cam: str) -> np.ndarray:
        """World point (3,) -> (u, v) in camera `cam`'s image: [0, 1] when in view, (-1, -1) behind the
        camera (`sim.tabletop_scene.project_point`)."""
        return project_point(self.model, self.data, point, cam)

    def finger_contacts(self, i: int) -> tuple[bool, bool]:
        """(left, right): does each finger touch object i?"""
        go = self.slots.obj_geom[self.scene.objects[i].slot]
        left, right = (touching(self.data, gf, go) for gf in self._finger_geoms)
        return left, right

    def set_object_pose(self, i: int, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Teleport object i (tests, constructed states); call before stepping or use `forward()`."""
        qa = self.slots.obj_qadr[self.scene.objects[i].slot]
        da = self.slots.obj_dadr[self.scene.objects[i].slot]
        self.data.qpos[qa : qa + 3] = pos
        self.data.qpos[qa + 3 : qa + 7] = quat
        self.data.qvel[da : da + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    # --------------------------------------------------------------------------- obs / info
    def _task_state(self) -> TaskState:
        sc = self.scene
        left, right = self.finger_contacts(sc.target)
        pad = self.pad_pos(sc.target_pad) if sc.target_pad is not None else None
        return TaskState(self.tcp_pos(), self.object_pos(sc.target), OBJECT_HALF_HEIGHT, pad, left, right)

    def task_success(self) -> bool:
        return success(self.current_task, self._task_state(), self.config.task)

    def _render_camera(self, cam: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=cam)
        return self._renderer.render()

    def _get_obs(self) -> dict:
        state = np.empty(7, dtype=np.float32)
        state[:6] = self.data.qpos[self._arm_qadr]
        state[6] = self.gripper_opening()
        obs = {"state": state, "instruction": self.instruction}
        if self.render_mode == "rgb_array":
            obs["images"] = {c: self._render_camera(c) for c in self.cameras}
        return obs

    def _get_info(self, ts: TaskState, clipped_now: int) -> dict:
        sc = self.scene
        terms = reward_terms(self.current_task, ts, self.config.task)
        target = sc.objects[sc.target]
        info = {
            "success": bool(terms["success"]),
            "task": self.current_task,
            "instruction": self.instruction,
            "step": self._step,
            "clipped_actions": self._clipped,
            "clipped_this_step": clipped_now,
            "target_object": target.name,
            "target_object_pos": ts.obj_pos.astype(np.float32),
            "target_pad": sc.pads[sc.target_pad].name if sc.target_pad is not None else None,
            "target_pad_pos": ts.pad_pos.astype(np.float32) if ts.pad_pos is not None else None,
            "objects": [
                {"name": o.name, "color": o.color, "shape": o.shape, "pos": self.object_pos(i).astype(np.float32),
                 "pixels": {c: self.project(self.object_pos(i), c) for c in self.cameras}}
                for i, o in enumerate(sc.objects)
            ],
            "pads": [{"name": p.name, "color": p.color, "pos": self.pad_pos(j).astype(np.float32),
                      "pixels": {c: self.project(self.pad_pos(j), c) for c in self.cameras}}
                     for j, p in enumerate(sc.pads)],
            "tcp_pos": ts.tcp.astype(np.float32),
        }
        for k, v in terms.items():
            info["reward_" + k] = v
        return info

