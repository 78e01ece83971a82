"""The MuJoCo side of a tabletop scene: the model's object and pad slots, putting a sampled `Scene` into
them, contacts, projecting world points into a camera's image, and stepping the physics.

The model (`sim/assets/tabletop.xml`) has a fixed set of slots: `OBJECT_SLOTS` (free-jointed cubes and
cylinders) and `PAD_SLOTS` (mocap pads). A scene (`sim.tasks.Scene`) uses some of them; the others are
parked out of view (objects without collisions and gravity-compensated, so they float in place).
"""

from __future__ import annotations

import mujoco
import numpy as np

from sim.language import PALETTE
from sim.tasks import OBJECT_HALF_HEIGHT, OBJECT_SLOTS, PAD_SLOTS, Scene


class SceneSlots:
    """MuJoCo ids of every object slot (body, geom, free joint's qpos / qvel address, where it parks) and
    pad slot (mocap index, geom), with each geom's default contact flags; all dicts keyed by slot name."""

    def __init__(self, model: mujoco.MjModel):
        m = model
        slots = OBJECT_SLOTS["cube"] + OBJECT_SLOTS["cylinder"]
        self.obj_body = {s: m.body(s).id for s in slots}
        self.obj_geom = {s: m.geom(s).id for s in slots}
        self.obj_qadr = {s: m.joint(s).qposadr[0] for s in slots}
        self.obj_dadr = {s: m.joint(s).dofadr[0] for s in slots}
        self.park_xyz = {s: np.array([-2.0, 2.0 + 0.2 * i, -0.7]) for i, s in enumerate(slots)}
        self.pad_mocap = {p: m.body_mocapid[m.body(p).id] for p in PAD_SLOTS}
        self.pad_geom = {p: m.geom(p).id for p in PAD_SLOTS}
        self.default_contype = m.geom_contype.copy()
        self.default_conaff = m.geom_conaffinity.copy()

    def place(self, model: mujoco.MjModel, data: mujoco.MjData, scene: Scene) -> None:
        """The scene's objects and pads into their slots (colour, pose, collisions); unused slots parked.
        Touches neither the arm nor the derived quantities (call `mujoco.mj_forward` after)."""
        m, d = model, data
        active = {o.slot: o for o in scene.objects}
        for slot, bid in self.obj_body.items():
            gid, qa = self.obj_geom[slot], self.obj_qadr[slot]
            o = active.get(slot)
            if o is None:  # parked out of view: no collisions, floats in place
                m.geom_contype[gid] = 0
                m.geom_conaffinity[gid] = 0
                m.body_gravcomp[bid] = 1.0
                d.qpos[qa : qa + 3] = self.park_xyz[slot]
                d.qpos[qa + 3 : qa + 7] = (1.0, 0.0, 0.0, 0.0)
                continue
            m.geom_contype[gid] = self.default_contype[gid]
            m.geom_conaffinity[gid] = self.default_conaff[gid]
            m.body_gravcomp[bid] = 0.0
            m.geom_rgba[gid] = PALETTE[o.color]
            d.qpos[qa : qa + 3] = (o.xy[0], o.xy[1], OBJECT_HALF_HEIGHT + 0.0005)
            d.qpos[qa + 3 : qa + 7] = (np.cos(o.yaw / 2), 0.0, 0.0, np.sin(o.yaw / 2))
        used_pads = {p.slot: p for p in scene.pads}
        for i, (slot, mid) in enumerate(self.pad_mocap.items()):
            p = used_pads.get(slot)
            if p is None:
                d.mocap_pos[mid] = (3.0, 3.0 + 0.2 * i, -0.749)
            else:
                d.mocap_pos[mid] = (p.xy[0], p.xy[1], 0.001)
                m.geom_rgba[self.pad_geom[slot]] = PALETTE[p.color]


def touching(data: mujoco.MjData, geom_a: int, geom_b: int) -> bool:
    """Is there a contact between the two geoms now?"""
    n = data.ncon
    if n == 0:
        return False
    g1, g2 = data.contact.geom1[:n], data.contact.geom2[:n]
    return bool(np.any(((g1 == geom_a) & (g2 == geom_b)) | ((g1 == geom_b) & (g2 == geom_a))))


def project_point(model: mujoco.MjModel, data: mujoco.MjData, point: np.ndarray, cam: str) -> np.ndarray:
    """World point (3,) -> where it appears in camera `cam`'s image: float32 (u, v) in [0, 1], u rightwards,
    v downwards (pixel = (u, v) * image_size); (-1, -1) when it is behind the camera (outside the
    image, like any point off [0, 1]; not NaN, so equal infos compare equal).

    MuJoCo cameras look along their frame's -z with +y up; `cam_fovy` is the vertical field of view.
    """
    cam_id = model.camera(cam).id
    local = data.cam_xmat[cam_id].reshape(3, 3).T @ (np.asarray(point, float) - data.cam_xpos[cam_id])
    if local[2] >= 0:
        return np.full(2, -1.0, np.float32)
    scale = 0.5 / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2) / -local[2]
    return np.array([0.5 + local[0] * scale, 0.5 - local[1] * scale], np.float32)


def mj_step(model: mujoco.MjModel, data: mujoco.MjData, n: int) -> None:
    """n physics steps."""
    try:
        mujoco.mj_step(model, data, n)
    except TypeError:  # very old bindings without nstep
        for _ in range(n):
            mujoco.mj_step(model, data)
