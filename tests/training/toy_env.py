"""A second, minimal env that follows the observation contract: proves `mot collect` is env-agnostic.

The "robot" is a 7-vector that moves toward a goal; the frames are flat colours that encode the goal.
"""

import gymnasium as gym
import numpy as np


class ToyReachEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # its control rate: the dataset's fps
    joint_names = ("j0", "j1", "j2", "j3", "j4", "j5", "gripper")

    def __init__(self, task: str = "reach", split: str = "train", image_size: int = 32):
        self.size = image_size
        self.action_space = gym.spaces.Box(-1, 1, (7,), np.float32)
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Dict({c: gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
                                       for c in ("front", "wrist")}),
            "state": gym.spaces.Box(-1, 1, (7,), np.float32),
            "instruction": gym.spaces.Text(64),
        })

    def _obs(self):
        colour = ((self.goal[:3] + 1) * 127).astype(np.uint8)
        front = np.broadcast_to(colour, (self.size, self.size, 3)).copy()
        return {"images": {"front": front, "wrist": 255 - front}, "state": self.x.copy(),
                "instruction": "reach the goal"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(7, np.float32)
        self.goal = self.np_random.uniform(-0.5, 0.5, 7).astype(np.float32)
        self.t = 0
        return self._obs(), {"success": False, "task": "reach", "instruction": "reach the goal",
                             "target_object_pos": self.goal[:3], "target_pad_pos": None}

    def step(self, action):
        self.x = np.clip(np.asarray(action, np.float32), -1, 1)
        self.t += 1
        success = bool(np.abs(self.x - self.goal).max() < 0.05)
        info = {"success": success, "task": "reach", "instruction": "reach the goal"}
        return self._obs(), float(success), success, self.t >= 20, info


def make_toy_env(task: str, split: str, image_size: int):
    return ToyReachEnv(task, split, image_size)


make_toy_env.TASK_FAMILIES = ("reach",)


def toy_expert(env):
    """Moves halfway to the goal each step (succeeds within ~5 steps)."""
    inner = env.unwrapped

    def act(obs, info):
        return (obs["state"] + 0.5 * (inner.goal - obs["state"])).astype(np.float32)

    return act


def failing_expert(env):
    """Never moves: every episode fails and must be dropped."""
    return lambda obs, info: obs["state"].copy()
