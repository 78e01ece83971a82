"""The arm: joint names, action limits, model loading and differential inverse kinematics.

Robot units everywhere: joint positions in radians, the gripper as the jaw opening in metres
(0 = closed, 0.08 = fully open).  The 7-vector order of both `state` and `action` is `JOINT_NAMES`.

`ArmKinematics` is damped-least-squares differential IK on MuJoCo's site Jacobian (`mj_jacSite`) of the
tool centre point, run on a private `MjData` so that it never disturbs the simulation.  A gripper pose
is "pointing straight down, rotated by `yaw` about the vertical": the hand's y axis (the direction
the fingers slide along) is `(-sin yaw, cos yaw, 0)`.
"""

from __future__ import annotations

import os
from importlib import resources

import mujoco
import numpy as np

ARM_JOINTS: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow",
    "wrist_pitch",
    "wrist_yaw",
    "wrist_roll",
)
JOINT_NAMES: tuple[str, ...] = ARM_JOINTS + ("gripper",)
FINGER_JOINTS: tuple[str, str] = ("finger_left", "finger_right")
GRIPPER_MAX_OPENING = 0.08  # metres; each finger slides 0..40 mm

# Joint limits, identical to the MJCF (checked at load time by `load_model`).
_ARM_LOW = np.array([-2.9, -2.0, -2.6, -2.4, -2.0, -2.9])
_ARM_HIGH = np.array([2.9, 2.0, 2.6, 2.4, 2.0, 2.9])
ACTION_LOW = np.concatenate([_ARM_LOW, [0.0]]).astype(np.float32)
ACTION_HIGH = np.concatenate([_ARM_HIGH, [GRIPPER_MAX_OPENING]]).astype(np.float32)
ACTION_LOW.flags.writeable = False
ACTION_HIGH.flags.writeable = False

CONTROL_HZ = 10
# Pose that puts the tool centre point about 0.2 m above the table, pointing down (seed for IK).
HOME_QPOS = np.array([0.0, 0.4, 1.5, 1.2416, 0.0, 0.0])

ASSET_XML = "tabletop.xml"


def asset_path(name: str = ASSET_XML) -> str:
    """Filesystem path of an MJCF file shipped in `sim/assets/`."""
    return str(resources.files("sim").joinpath("assets", name))


def load_model(xml_path: str | None = None) -> mujoco.MjModel:
    """Compile the tabletop MJCF and check that it matches this module's constants."""
    path = xml_path or asset_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"MJCF not found: {path}")
    model = mujoco.MjModel.from_xml_path(path)
    for i, name in enumerate(ARM_JOINTS):
        jid = model.joint(name).id
        lo, hi = model.jnt_range[jid]
        if not (np.isclose(lo, _ARM_LOW[i]) and np.isclose(hi, _ARM_HIGH[i])):
            raise ValueError(f"joint {name}: MJCF range {(lo, hi)} != robot.py range {(_ARM_LOW[i], _ARM_HIGH[i])}")
    return model


def yaw_to_rotation(yaw: float) -> np.ndarray:
    """(3, 3) world rotation of the hand for a top-down grasp with the given yaw (columns = hand axes)."""
    c, s = np.cos(yaw), np.sin(yaw)
    x = np.array([-c, -s, 0.0])
    y = np.array([-s, c, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, y, z], axis=1)


def rotation_to_yaw(rot: np.ndarray) -> float:
    """Yaw of a (roughly top-down) hand rotation: angle of its y axis, measured as in `yaw_to_rotation`."""
    y = rot[:, 1]
    return float(np.arctan2(-y[0], y[1]))


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class ArmKinematics:
    """Differential IK for the tool centre point ("tcp" site) on a scratch copy of the model's data."""

    def __init__(self, model: mujoco.MjModel, damping: float = 0.03, rot_weight: float = 0.3):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site("tcp").id
        self.qadr = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self.dadr = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self.low, self.high = _ARM_LOW.copy(), _ARM_HIGH.copy()
        self.damping = damping
        self.rot_weight = rot_weight  # metres of position error that equal one radian of orientation error
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation (3, 3) for arm joint angles q (6,)."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(
        self,
        q_seed: np.ndarray,
        target_pos: np.ndarray,
        target_yaw: float,
        iters: int = 20,
        tol: float = 1e-4,
        max_step: float = 0.3,
    ) -> np.ndarray:
        """Joint angles (6,) near `q_seed` that put the TCP at `target_pos`, pointing down with `target_yaw`."""
        m, d = self.model, self.data
        q = np.clip(np.asarray(q_seed, dtype=np.float64).copy(), self.low, self.high)
        rot_t = yaw_to_rotation(target_yaw)
        lam2 = self.damping**2
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            pos = d.site_xpos[self.site_id]
            rot = d.site_xmat[self.site_id].reshape(3, 3)
            e_pos = target_pos - pos
            # orientation error as a rotation vector (small-angle form, summed over the three axes)
            e_rot = 0.5 * (np.cross(rot[:, 0], rot_t[:, 0]) + np.cross(rot[:, 1], rot_t[:, 1]) + np.cross(rot[:, 2], rot_t[:, 2]))
            err = np.concatenate([e_pos, self.rot_weight * e_rot])
            if np.linalg.norm(err) < tol:
                break
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site_id)
            jac = np.vstack([self._jacp[:, self.dadr], self.rot_weight * self._jacr[:, self.dadr]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
            n = np.max(np.abs(dq))
            if n > max_step:
                dq *= max_step / n
            q = np.clip(q + dq, self.low, self.high)
        return q
