"""Success predicates on constructed states (pure and in the simulator) and scene sampling invariants."""

import numpy as np
import pytest

import sim
from sim.language import TaskSpec
from sim.tasks import OBJECT_HALF_HEIGHT as H
from sim.tasks import PAD_RADIUS, SceneConfig, TaskState, reward_terms, sample_scene, success

PAD = np.array([0.45, 0.1, 0.001])


def state(tcp, obj, pad=None, left=False, right=False):
    return TaskState(np.asarray(tcp, float), np.asarray(obj, float), H, None if pad is None else np.asarray(pad), left, right)


@pytest.mark.parametrize(
    "task, s, expected",
    [
        ("reach", state([0.4, 0, H * 2 + 0.01], [0.4, 0, H]), True),
        ("reach", state([0.4, 0, 0.2], [0.4, 0, H]), False),
        ("reach", state([0.45, 0, 2 * H], [0.4, 0, H]), False),
        ("pick", state([0.4, 0, 0.13], [0.4, 0, 0.13], left=True, right=True), True),
        ("pick", state([0.4, 0, 0.05], [0.4, 0, 0.05]), False),  # not high enough
        ("pick", state([0.4, 0.2, 0.3], [0.4, 0, 0.13]), False),  # high but not held (thrown)
        ("push", state([0.3, 0, 0.1], [0.46, 0.12, H], PAD), True),
        ("push", state([0.3, 0, 0.1], [0.46, 0.12 + PAD_RADIUS, H], PAD), False),  # off the pad
        ("push", state([0.45, 0.1, 0.1], [0.45, 0.1, 0.1], PAD), False),  # above the pad, not resting
        ("place", state([0.45, 0.1, 0.15], [0.45, 0.1, H], PAD), True),
        ("place", state([0.45, 0.1, H], [0.45, 0.1, H], PAD, left=True, right=True), False),  # still held
        ("place", state([0.45, 0.1, 0.15], [0.3, -0.1, H], PAD), False),
    ],
)
def test_predicates(task, s, expected):
    assert success(task, s) is expected
    terms = reward_terms(task, s)
    assert terms["success"] == float(expected)
    assert all(0.0 <= v <= 1.0 for v in terms.values())


def test_push_place_need_a_pad():
    with pytest.raises(ValueError, match="pad_pos"):
        success("place", state([0, 0, 0], [0, 0, 0]))


def test_predicates_in_the_simulator():
    """Teleport the target into true/false configurations and read info['success']."""
    env = sim.TabletopEnv(task="place")
    env.reset(seed=3)
    sc = env.scene
    assert not env.task_success()
    pad = env.pad_pos(sc.target_pad)
    env.set_object_pose(sc.target, [pad[0] + 0.01, pad[1] - 0.01, H + 0.0005])
    assert env.task_success()
    env.set_object_pose(sc.target, [pad[0] + PAD_RADIUS + 0.01, pad[1], H + 0.0005])
    assert not env.task_success()
    # still true after physics settles (the object rests on the table, the gripper is far away)
    env.set_object_pose(sc.target, [pad[0], pad[1], H + 0.0005])
    _, _, terminated, _, info = env.step(np.concatenate([env.arm_qpos(), [0.08]]))
    assert info["success"] and terminated
    env.close()


@pytest.mark.parametrize("task", sim.TASK_FAMILIES)
def test_scene_invariants(task):
    cfg = SceneConfig()
    for seed in range(30):
        sc = sample_scene(np.random.default_rng(seed), task, None, cfg)
        colors = [o.color for o in sc.objects]
        assert 3 <= len(sc.objects) <= 5 and len(set(colors)) == len(colors)
        assert 2 <= len(sc.pads) <= 3 and len({p.color for p in sc.pads}) == len(sc.pads)
        xy = np.array([o.xy for o in sc.objects])
        dists = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
        assert dists.min() >= cfg.object_min_dist - 1e-9
        for p in sc.pads:
            assert np.linalg.norm(xy - p.xy, axis=1).min() > PAD_RADIUS
        assert (sc.target_pad is not None) == (task in ("push", "place"))


def test_scene_from_underspecified_spec_is_unambiguous():
    for seed in range(20):
        sc = sample_scene(np.random.default_rng(seed), "pick", TaskSpec("pick", None, "cube"))
        assert [o.shape for o in sc.objects].count("cube") == 1
        sc = sample_scene(np.random.default_rng(seed), "place", TaskSpec("place", "red", None, None))
        assert len(sc.pads) == 1 and sc.objects[sc.target].color == "red"
