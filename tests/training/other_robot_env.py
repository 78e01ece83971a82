"""Another robot than the sim arm: two cameras with other names, a 4-dim state (3 joints + gripper) and a
4-dim action. `mot collect --env`, `mot train` and `mot eval --env` must fit it without code changes."""

import gymnasium as gym
import numpy as np

CAMERAS = ("overhead", "side")


class OtherArmEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}
    joint_names = ("shoulder", "elbow", "wrist", "gripper")

    def __init__(self, task: str = "reach", split: str = "train", image_size: int = 48):
        self.size = image_size
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Dict({c: gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
                                       for c in CAMERAS}),
            "state": gym.spaces.Box(-1, 1, (4,), np.float32),
            "instruction": gym.spaces.Text(64),
        })

    def _obs(self):
        colour = ((self.goal[:3] + 1) * 127).astype(np.uint8)
        overhead = np.broadcast_to(colour, (self.size, self.size, 3)).copy()
        return {"images": {"overhead": overhead, "side": overhead[:, ::-1] // 2}, "state": self.x.copy(),
                "instruction": "move to the marked spot"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(4, np.float32)
        self.goal = self.np_random.uniform(-0.5, 0.5, 4).astype(np.float32)
        self.t = 0
        return self._obs(), {"success": False, "task": "reach", "instruction": "move to the marked spot"}

    def step(self, action):
        self.x = np.clip(np.asarray(action, np.float32), -1, 1)
        self.t += 1
        success = bool(np.abs(self.x - self.goal).max() < 0.05)
        return self._obs(), float(success), success, self.t >= 12, {"success": success, "task": "reach",
                                                                   "instruction": "move to the marked spot"}


def make_other_env(task: str, split: str, image_size: int):
    return OtherArmEnv(task, split, image_size)


make_other_env.TASK_FAMILIES = ("reach",)


def other_expert(env):
    inner = env.unwrapped
    return lambda obs, info: (obs["state"] + 0.5 * (inner.goal - obs["state"])).astype(np.float32)
