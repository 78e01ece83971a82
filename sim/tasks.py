"""Task families: scene sampling, success predicates and shaped reward terms.

Pure functions over plain numbers so that predicates can be tested on constructed states:

    family  success when ...                                                      episode cap
    reach   the TCP is within `reach_threshold` of the target's top-face centre   80 steps
    pick    the target is `lift_height` above its resting height, near the TCP     100 steps
    push    the target rests on the target pad (centre inside the pad disc)        150 steps
    place   the target rests on the target pad and neither finger touches it       150 steps

Scenes: 3-5 objects with distinct colours (so "<colour> <shape>" is always unambiguous), 2-3 pads with
distinct colours; objects never start on a pad; for push the straight corridor from the object to its
pad is kept free of distractors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.language import COLORS, TaskSpec

OBJECT_SLOTS: dict[str, tuple[str, ...]] = {
    "cube": ("cube0", "cube1", "cube2", "cube3", "cube4"),
    "cylinder": ("cylinder0", "cylinder1", "cylinder2"),
}
PAD_SLOTS: tuple[str, ...] = ("pad0", "pad1", "pad2")
OBJECT_HALF_HEIGHT = 0.0225  # both shapes are 45 mm tall
OBJECT_RADIUS = 0.0225  # half width of a cube / radius of a cylinder (approx.)
PAD_RADIUS = 0.055


@dataclass(frozen=True)
class SceneConfig:
    """Every tunable number of scene sampling."""

    min_objects: int = 3
    max_objects: int = 5
    min_pads: int = 2
    max_pads: int = 3
    cylinder_prob: float = 0.3
    x_range: tuple[float, float] = (0.33, 0.57)
    y_range: tuple[float, float] = (-0.2, 0.2)
    object_min_dist: float = 0.085  # centre to centre
    pad_min_dist: float = 0.14
    object_pad_clearance: float = 0.035  # object centre stays this far outside any pad disc
    push_dist_range: tuple[float, float] = (0.10, 0.22)
    push_corridor: float = 0.075  # distractor clearance around the push path
    max_tries: int = 400

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 5:
            raise ValueError(f"SceneConfig objects: need 1 <= min <= max <= 5, got {self.min_objects}, {self.max_objects}")
        if not 1 <= self.min_pads <= self.max_pads <= len(PAD_SLOTS):
            raise ValueError(f"SceneConfig pads: need 1 <= min <= max <= 3, got {self.min_pads}, {self.max_pads}")


@dataclass
class SceneObject:
    slot: str  # MJCF body / geom name, e.g. "cube2"
    color: str
    shape: str
    xy: np.ndarray
    yaw: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class ScenePad:
    slot: str
    color: str
    xy: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.color} pad"


@dataclass
class Scene:
    task: str
    objects: list[SceneObject]
    pads: list[ScenePad]
    target: int  # index into objects
    target_pad: int | None  # index into pads (push/place), else None
    spec: TaskSpec = field(init=False)

    def __post_init__(self) -> None:
        t = self.objects[self.target]
        pad_color = self.pads[self.target_pad].color if self.target_pad is not None else None
        self.spec = TaskSpec(self.task, t.color, t.shape, pad_color)


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


def sample_scene(rng: np.random.Generator, task: str, spec: TaskSpec | None = None, cfg: SceneConfig | None = None) -> Scene:
    """Draw a scene for `task`; with `spec`, the scene contains what the spec refers to (and nothing ambiguous)."""
    cfg = cfg or SceneConfig()
    if spec is not None and spec.task != task:
        raise ValueError(f"sample_scene: task {task!r} != spec.task {spec.task!r}")
    needs_pad = task in ("push", "place")
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_pads = int(rng.integers(cfg.min_pads, cfg.max_pads + 1))
    if spec is not None and needs_pad and spec.pad_color is None:
        n_pads = 1  # "put the red cube on the pad": only one pad, so the instruction is unambiguous

    # colours: distinct among objects, distinct among pads
    tcolor = spec.object_color if spec and spec.object_color else str(rng.choice(COLORS))
    others = [c for c in COLORS if c != tcolor]
    obj_colors = [tcolor] + [str(c) for c in rng.choice(others, n_obj - 1, replace=False)]
    pcolor = spec.pad_color if spec and spec.pad_color else str(rng.choice(COLORS))
    others = [c for c in COLORS if c != pcolor]
    pad_colors = [pcolor] + [str(c) for c in rng.choice(others, n_pads - 1, replace=False)]

    # shapes: at most 5 cubes / 3 cylinders (MJCF slots)
    tshape = spec.object_shape if spec and spec.object_shape else ("cylinder" if rng.random() < cfg.cylinder_prob else "cube")
    shapes = [tshape]
    shape_only = spec is not None and spec.object_color is None  # "pick up the cube": target's shape must be unique
    for _ in range(n_obj - 1):
        if shape_only:
            s = "cube" if tshape == "cylinder" else "cylinder"
        else:
            s = "cylinder" if rng.random() < cfg.cylinder_prob else "cube"
        if shapes.count(s) >= len(OBJECT_SLOTS[s]):
            if shape_only:
                break
            s = "cube" if s == "cylinder" else "cylinder"
        shapes.append(s)
    n_obj = len(shapes)
    obj_colors = obj_colors[:n_obj]

    lo = np.array([cfg.x_range[0], cfg.y_range[0]])
    hi = np.array([cfg.x_range[1], cfg.y_range[1]])
    for attempt in range(cfg.max_tries):
        n = n_obj if attempt < cfg.max_tries // 2 else max(1, n_obj - 1 - attempt * 2 // cfg.max_tries)
        pads_xy: list[np.ndarray] = []
        ok = True
        for _ in range(n_pads):
            for _try in range(50):
                p = rng.uniform(lo, hi)
                if all(np.linalg.norm(p - q) >= cfg.pad_min_dist for q in pads_xy):
                    pads_xy.append(p)
                    break
            else:
                ok = False
                break
        if not ok:
            continue
        objs_xy: list[np.ndarray] = []
        for i in range(n):
            for _try in range(50):
                p = rng.uniform(lo, hi)
                if any(np.linalg.norm(p - q) < cfg.object_min_dist for q in objs_xy):
                    continue
                if any(np.linalg.norm(p - q) < PAD_RADIUS + cfg.object_pad_clearance for q in pads_xy):
                    continue
                if i == 0 and task == "push":
                    dist = np.linalg.norm(pads_xy[0] - p)
                    if not cfg.push_dist_range[0] <= dist <= cfg.push_dist_range[1]:
                        continue
                if i > 0 and task == "push":
                    d = (pads_xy[0] - objs_xy[0]) / np.linalg.norm(pads_xy[0] - objs_xy[0])
                    start = objs_xy[0] - d * 0.09
                    if _seg_dist(p, start, pads_xy[0]) < cfg.push_corridor:
                        continue
                objs_xy.append(p)
                break
            else:
                ok = False
                break
        if ok:
            break
    else:
        raise RuntimeError(f"sample_scene: no valid layout for task {task!r} after {cfg.max_tries} tries")

    objects: list[SceneObject] = []
    used = {"cube": 0, "cylinder": 0}
    for i in range(len(objs_xy)):
        s = shapes[i]
        slot = OBJECT_SLOTS[s][used[s]]
        used[s] += 1
        yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
        objects.append(SceneObject(slot, obj_colors[i], s, objs_xy[i], yaw))
    pads = [ScenePad(PAD_SLOTS[j], pad_colors[j], pads_xy[j]) for j in range(n_pads)]
    # shuffle so that the target is not always first in `info["objects"]`
    order = rng.permutation(len(objects))
    objects = [objects[k] for k in order]
    target = int(np.flatnonzero(order == 0)[0])
    porder = rng.permutation(len(pads))
    pads = [pads[k] for k in porder]
    target_pad = int(np.flatnonzero(porder == 0)[0]) if needs_pad else None
    return Scene(task, objects, pads, target, target_pad)


# ------------------------------------------------------------------------------ predicates and rewards

@dataclass(frozen=True)
class TaskConfig:
    """Thresholds of the success predicates."""

    reach_threshold: float = 0.03  # TCP to top-face centre
    lift_height: float = 0.08  # above resting height
    hold_radius: float = 0.06  # TCP to object centre while lifted
    rest_tolerance: float = 0.012  # "resting on the table": centre at most this above its resting height
    pad_radius: float = PAD_RADIUS


@dataclass(frozen=True)
class TaskState:
    """What the predicates look at (world frame, metres)."""

    tcp: np.ndarray  # (3,)
    obj_pos: np.ndarray  # (3,) target object centre
    obj_half_height: float = OBJECT_HALF_HEIGHT
    pad_pos: np.ndarray | None = None  # (3,) target pad centre
    left_contact: bool = False  # left finger touches the target
    right_contact: bool = False


def success(task: str, s: TaskState, cfg: TaskConfig = TaskConfig()) -> bool:
    """The per-family success predicate."""
    h = s.obj_half_height
    if task == "reach":
        top = s.obj_pos + np.array([0.0, 0.0, h])
        return bool(np.linalg.norm(s.tcp - top) < cfg.reach_threshold)
    if task == "pick":
        lifted = s.obj_pos[2] - h >= cfg.lift_height
        return bool(lifted and np.linalg.norm(s.tcp - s.obj_pos) < cfg.hold_radius)
    if task in ("push", "place"):
        if s.pad_pos is None:
            raise ValueError(f"success({task!r}): TaskState.pad_pos is required")
        on_pad = np.linalg.norm(s.obj_pos[:2] - s.pad_pos[:2]) < cfg.pad_radius
        resting = s.obj_pos[2] - h <= cfg.rest_tolerance
        if task == "push":
            return bool(on_pad and resting)
        return bool(on_pad and resting and not (s.left_contact or s.right_contact))
    raise ValueError(f"task: expected one of reach/pick/push/place, got {task!r}")


def reward_terms(task: str, s: TaskState, cfg: TaskConfig = TaskConfig()) -> dict[str, float]:
    """Unscaled shaped terms in [0, 1]; the env scales them with its config's `reward_weights`."""
    h = s.obj_half_height
    top = s.obj_pos + np.array([0.0, 0.0, h])
    reach_point = top if task in ("reach", "push") else s.obj_pos
    terms = {
        "reach": 1.0 - float(np.tanh(10.0 * np.linalg.norm(s.tcp - reach_point))),
        "grasp": float(s.left_contact and s.right_contact),
        "lift": float(np.clip((s.obj_pos[2] - h) / cfg.lift_height, 0.0, 1.0)),
        "goal": 0.0,
        "success": float(success(task, s, cfg)),
    }
    if s.pad_pos is not None and task in ("push", "place"):
        terms["goal"] = 1.0 - float(np.tanh(10.0 * np.linalg.norm(s.obj_pos[:2] - s.pad_pos[:2])))
    return terms
