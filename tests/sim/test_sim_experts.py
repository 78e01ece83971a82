"""Scripted experts succeed, the gripper really grasps (friction, not magic), rollout() works."""

import gymnasium as gym
import numpy as np
import pytest

import sim
from sim.tasks import OBJECT_HALF_HEIGHT

SEEDS = range(6)


@pytest.mark.parametrize("task", sim.TASK_FAMILIES)
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_expert_succeeds(task, split):
    env = gym.make("mot/Tabletop-v0", task=task, split=split)
    expert = sim.make_expert(env)
    results = [sim.rollout(env, expert, seed=s) for s in SEEDS]
    assert all(r.success for r in results), [(r.instruction, r.steps) for r in results if not r.success]
    assert all(r.steps < env.unwrapped.config.max_episode_steps[task] for r in results)


def test_expert_on_grounded_instructions():
    env = gym.make("mot/TabletopMulti-v0")
    expert = sim.make_expert(env)
    for text in ("put the red cube on the blue pad", "shove the tube that is teal onto the ivory mat",
                 "hoist the crimson block", "touch the cylinder"):
        r = sim.rollout(env, expert, seed=2, options={"instruction": text})
        assert r.success and r.instruction == text, text


def test_gripper_holds_a_cube_by_friction():
    """Grasp, lift and swing the arm around: the cube must stay in the hand for 3 s."""
    env = sim.TabletopEnv(task="pick")
    expert = sim.make_expert(env)
    env.reset(seed=11)
    for _ in range(60):
        _, _, term, _, info = env.step(expert())
        if term:
            break
    assert info["success"]
    i = env.scene.target
    left, right = env.finger_contacts(i)
    assert left and right
    # jaw opening equals the cube width (the fingers stopped on the cube)
    assert abs(env.gripper_opening() - 2 * OBJECT_HALF_HEIGHT) < 0.006
    q = env.arm_qpos()
    for k in range(30):  # swing the base back and forth at ~0.6 rad/s
        a = np.concatenate([q + [0.3 * np.sin(k / 5.0), 0, 0, 0, 0, 0], [0.0]])
        env.step(a)
    assert env.object_pos(i)[2] > 0.08
    assert np.linalg.norm(env.object_pos(i) - env.tcp_pos()) < 0.05
    # opening the gripper drops it onto the table
    for _ in range(15):
        env.step(np.concatenate([env.arm_qpos(), [0.08]]))
    assert env.object_pos(i)[2] < OBJECT_HALF_HEIGHT + 0.01


def test_rollout_records_frames():
    env = gym.make("mot/Tabletop-v0", task="reach", render_mode="rgb_array", image_size=32)
    r = sim.rollout(env, sim.make_expert(env), seed=0, record=True)
    assert r.success and len(r.frames) == r.steps + 1
    assert r.frames[0].shape == (32, 64, 3) and r.frames[0].dtype == np.uint8
    env.close()


def test_expert_reset_between_episodes_and_envs():
    env = gym.make("mot/Tabletop-v0", task="place")
    expert = sim.make_expert(env)
    sim.rollout(env, expert, seed=0, max_steps=5)  # abandon an episode half way
    assert sim.rollout(env, expert, seed=1).success  # auto-reset on the new episode
    expert.reset()
    assert sim.rollout(env, expert, seed=2).success
    with pytest.raises(TypeError):
        sim.make_expert(gym.make("CartPole-v1"))
