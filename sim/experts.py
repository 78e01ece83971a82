"""Scripted experts: Cartesian waypoints -> joint targets through differential IK on MuJoCo Jacobians.

    expert = sim.make_expert(env)          # env: a TabletopEnv or any wrapper around one
    obs, info = env.reset(seed=0)
    while True:
        obs, r, term, trunc, info = env.step(expert(obs, info))
        if term or trunc: break

The expert reads privileged state from `env.unwrapped` (object poses, pad positions, the TCP) and
resets itself automatically when the env starts a new episode (it watches `env.unwrapped.episode_id`);
`expert.reset()` forces it.  One expert per env; it works for every family, including "multi".

Each control step: a per-family state machine picks a goal (TCP position, gripper yaw, jaw opening),
the Cartesian target moves toward it at most `max_speed` per step, and `ArmKinematics.solve` turns the
target into joint targets, seeded with the previous command.

    reach  above the object -> down to touch its top face (jaw closed)
    pick   above -> down (jaw open, yaw aligned with a cube face) -> close -> lift
    push   jaw closed, finger faces turned toward the pad; behind the object -> down -> push along the
           object-to-pad line (re-aims every step, backs off and re-approaches if the object slips)
    place  pick -> carry above the pad -> lower -> open -> retreat
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.robot import GRIPPER_MAX_OPENING, ArmKinematics, rotation_to_yaw, wrap_angle
from sim.tasks import OBJECT_HALF_HEIGHT, OBJECT_RADIUS


@dataclass(frozen=True)
class ExpertConfig:
    max_speed: float = 0.03  # m per control step (0.3 m/s)
    push_speed: float = 0.02  # m per control step while pushing
    max_yaw_rate: float = 0.35  # rad per control step
    approach_height: float = 0.08  # above the object's top face
    grasp_height: float = 0.012  # TCP (fingertip) height above the object's bottom when grasping
    touch_height: float = 0.006  # TCP above the top face for reach
    lift_z: float = 0.2  # TCP height after lifting
    carry_z: float = 0.2
    release_clearance: float = 0.008  # object bottom above the table when opening (place)
    retreat_z: float = 0.15
    close_steps: int = 4
    open_steps: int = 3
    pos_tol: float = 0.012
    fine_tol: float = 0.006
    yaw_tol: float = 0.08
    stall_steps: int = 15  # give up waiting for a waypoint after this many steps and move on
    push_z: float = 0.018  # TCP height while pushing
    push_standoff: float = 0.03  # gap behind the object before descending
    push_lateral_tol: float = 0.02  # re-approach when the object drifts this far off the pushing line
    finger_half: float = 0.012  # closed fingers: pushing face distance from the TCP


def _cube_grasp_yaw(obj_rot: np.ndarray, ref: float) -> float:
    """Gripper yaw aligned with a cube face (mod pi/2), nearest to `ref`."""
    theta = float(np.arctan2(obj_rot[1, 0], obj_rot[0, 0]))
    k = np.round((ref - theta) / (np.pi / 2))
    return wrap_angle(theta + k * np.pi / 2)


def _line_yaw(direction: np.ndarray) -> float:
    """Yaw whose hand y axis (finger normal) is along `direction`, folded into [-pi/2, pi/2)."""
    yaw = float(np.arctan2(-direction[0], direction[1]))
    if yaw >= np.pi / 2:
        yaw -= np.pi
    elif yaw < -np.pi / 2:
        yaw += np.pi
    return yaw


class ScriptedExpert:
    """Callable `(obs, info) -> action float32 (7,)`.  See the module docstring."""

    def __init__(self, env, config: ExpertConfig | None = None):
        self.env = env.unwrapped
        if not hasattr(self.env, "scene") or not hasattr(self.env, "kinematics"):
            raise TypeError(f"make_expert: expected a TabletopEnv (or a wrapper of one), got {type(self.env).__name__}")
        self.cfg = config or ExpertConfig()
        self.kin = ArmKinematics(self.env.model)
        self.reset()

    def reset(self) -> None:
        self._episode = None
        self.phase = "start"
        self._count = 0
        self._stall = 0
        self.q_cmd: np.ndarray | None = None
        self.target: np.ndarray | None = None
        self.yaw_cmd = 0.0
        self._grasp_offset = None

    # ------------------------------------------------------------------------------------ helpers
    def _begin(self) -> None:
        e = self.env
        self._episode = e.episode_id
        self.phase = "approach"
        self._count = 0
        self._stall = 0
        self.q_cmd = e.arm_qpos()
        self.target = e.tcp_pos()
        self.yaw_cmd = rotation_to_yaw(e.tcp_rot())

    def _goto(self, phase: str) -> None:
        self.phase = phase
        self._count = 0
        self._stall = 0

    def _at(self, goal: np.ndarray, yaw: float | None = None, tol: float | None = None) -> bool:
        """Has the measured TCP reached `goal` (and the yaw)?  Also true after `stall_steps` steps."""
        e = self.env
        tol = self.cfg.pos_tol if tol is None else tol
        ok = np.linalg.norm(e.tcp_pos() - goal) < tol
        if yaw is not None:
            ok = ok and abs(wrap_angle(rotation_to_yaw(e.tcp_rot()) - yaw)) < self.cfg.yaw_tol
        self._stall += 1
        return bool(ok or self._stall > self.cfg.stall_steps)

    def _command(self, goal: np.ndarray, yaw: float, gripper: float, speed: float | None = None) -> np.ndarray:
        speed = self.cfg.max_speed if speed is None else speed
        delta = goal - self.target
        n = np.linalg.norm(delta)
        self.target = goal.copy() if n <= speed else self.target + delta * (speed / n)
        dyaw = wrap_angle(yaw - self.yaw_cmd)
        self.yaw_cmd = wrap_angle(self.yaw_cmd + float(np.clip(dyaw, -self.cfg.max_yaw_rate, self.cfg.max_yaw_rate)))
        self.q_cmd = self.kin.solve(self.q_cmd, self.target, self.yaw_cmd)
        return np.concatenate([self.q_cmd, [gripper]]).astype(np.float32)

    # --------------------------------------------------------------------------------- the policy
    def __call__(self, obs=None, info=None) -> np.ndarray:
        e = self.env
        if e.scene is None:
            raise RuntimeError("expert called before env.reset()")
        if self._episode != e.episode_id:
            self._begin()
        task = e.current_task
        if task == "reach":
            return self._reach()
        if task == "push":
            return self._push()
        return self._pick_place(place=(task == "place"))

    def _object(self) -> tuple[np.ndarray, float]:
        e, sc = self.env, self.env.scene
        pos = e.object_pos(sc.target)
        if sc.objects[sc.target].shape == "cube":
            yaw = _cube_grasp_yaw(e.object_rot(sc.target), 0.0)
        else:
            yaw = 0.0
        return pos, yaw

    def _reach(self) -> np.ndarray:
        c = self.cfg
        pos, yaw = self._object()
        top = pos[2] + OBJECT_HALF_HEIGHT
        if self.phase == "approach":
            goal = np.array([pos[0], pos[1], top + c.approach_height])
            if self._at(goal, yaw):
                self._goto("descend")
            return self._command(goal, yaw, 0.0)
        goal = np.array([pos[0], pos[1], top + c.touch_height])
        return self._command(goal, yaw, 0.0, speed=c.max_speed * 0.6)

    def _pick_place(self, place: bool) -> np.ndarray:
        c, e = self.cfg, self.env
        pos, yaw = self._object()
        open_, closed = GRIPPER_MAX_OPENING, 0.0
        bottom = pos[2] - OBJECT_HALF_HEIGHT
        if self.phase == "approach":
            goal = np.array([pos[0], pos[1], pos[2] + OBJECT_HALF_HEIGHT + c.approach_height])
            if self._at(goal, yaw):
                self._goto("descend")
            return self._command(goal, yaw, open_)
        if self.phase == "descend":
            goal = np.array([pos[0], pos[1], bottom + c.grasp_height])
            if self._at(goal, yaw, tol=c.fine_tol):
                self._goto("close")
            return self._command(goal, yaw, open_, speed=c.max_speed * 0.7)
        if self.phase == "close":
            self._count += 1
            if self._count >= c.close_steps:
                self._goto("lift")
            return self._command(self.target.copy(), self.yaw_cmd, closed)
        if self.phase == "lift":
            goal = np.array([self.target[0], self.target[1], c.lift_z])
            if place and e.tcp_pos()[2] > c.lift_z - 0.04:
                self._grasp_offset = pos[:2] - e.tcp_pos()[:2]
                self._goto("carry")
            return self._command(goal, self.yaw_cmd, closed)
        pad = e.pad_pos(e.scene.target_pad)
        if self.phase == "carry":
            xy = pad[:2] - self._grasp_offset
            goal = np.array([xy[0], xy[1], c.carry_z])
            if self._at(goal):
                self._goto("lower")
            return self._command(goal, self.yaw_cmd, closed)
        if self.phase == "lower":
            xy = pad[:2] - self._grasp_offset
            tcp = e.tcp_pos()
            goal = np.array([xy[0], xy[1], tcp[2] - bottom + c.release_clearance])
            goal[2] = max(goal[2], 0.01)
            self._stall += 1
            if bottom < c.release_clearance + 0.004 or self._stall > 2 * c.stall_steps:
                self._goto("release")
            return self._command(goal, self.yaw_cmd, closed, speed=c.max_speed * 0.7)
        if self.phase == "release":
            self._count += 1
            if self._count >= c.open_steps:
                self._goto("retreat")
            return self._command(self.target.copy(), self.yaw_cmd, open_)
        goal = np.array([self.target[0], self.target[1], c.retreat_z])
        return self._command(goal, self.yaw_cmd, open_)

    def _push(self) -> np.ndarray:
        c, e = self.cfg, self.env
        pos, _ = self._object()
        pad = e.pad_pos(e.scene.target_pad)
        to_pad = pad[:2] - pos[:2]
        dist = float(np.linalg.norm(to_pad))
        d = to_pad / max(dist, 1e-6)
        yaw = _line_yaw(d)
        contact = pos[:2] - d * (OBJECT_RADIUS + c.finger_half)
        behind = contact - d * c.push_standoff
        if self.phase == "approach":
            goal = np.array([behind[0], behind[1], c.push_z + 0.08])
            if self._at(goal, yaw):
                self._goto("descend")
            return self._command(goal, yaw, 0.0)
        if self.phase == "descend":
            goal = np.array([behind[0], behind[1], c.push_z])
            if self._at(goal, yaw, tol=c.fine_tol):
                self._goto("push")
            return self._command(goal, yaw, 0.0)
        if self.phase == "push":
            tcp = e.tcp_pos()
            n = np.array([-d[1], d[0]])
            lateral = float(np.dot(tcp[:2] - pos[:2], n))
            if abs(lateral) > c.push_lateral_tol:
                self._goto("backoff")
            elif dist < 0.01:
                self._goto("done")
            xy = contact + d * min(c.push_speed * 2, dist)
            goal = np.array([xy[0], xy[1], c.push_z])
            return self._command(goal, yaw, 0.0, speed=c.push_speed)
        if self.phase == "backoff":
            goal = np.array([self.target[0], self.target[1], c.push_z + 0.08])
            if self._at(goal):
                self._goto("approach")
            return self._command(goal, self.yaw_cmd, 0.0)
        goal = np.array([self.target[0], self.target[1], c.retreat_z])
        return self._command(goal, self.yaw_cmd, 0.0)


def make_expert(env, config: ExpertConfig | None = None) -> ScriptedExpert:
    """A scripted expert for `env` (any family).  It resets itself on every new episode of `env`."""
    return ScriptedExpert(env, config)
