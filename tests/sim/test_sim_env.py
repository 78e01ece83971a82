"""The gymnasium env: spaces and dtypes, determinism, action checks, rendering, options, vector envs."""

import gymnasium as gym
import numpy as np
import pytest

import sim
from sim.vector import _factory

SMALL = 48  # image side for rendering tests (speed)


@pytest.fixture(scope="module")
def render_env():
    env = gym.make("mot/Tabletop-v0", task="multi", render_mode="rgb_array", image_size=SMALL)
    yield env
    env.close()


def test_public_constants():
    assert sim.TASK_FAMILIES == ("reach", "pick", "push", "place")
    assert len(sim.JOINT_NAMES) == 7 and sim.JOINT_NAMES[-1] == "gripper"
    assert sim.ACTION_LOW.dtype == np.float32 and sim.ACTION_HIGH.shape == (7,)
    assert np.all(sim.ACTION_LOW < sim.ACTION_HIGH)
    assert sim.CONTROL_HZ == 10
    assert "mot/Tabletop-v0" in gym.registry and "mot/TabletopMulti-v0" in gym.registry


def test_spaces_and_dtypes(render_env):
    obs, info = render_env.reset(seed=0)
    assert render_env.observation_space.contains(obs)
    assert set(obs["images"]) == {"front", "wrist"}
    for img in obs["images"].values():
        assert img.dtype == np.uint8 and img.shape == (SMALL, SMALL, 3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (7,)
    assert isinstance(obs["instruction"], str) and obs["instruction"] == info["instruction"]
    assert isinstance(render_env.observation_space["instruction"], gym.spaces.Text)
    obs, reward, terminated, truncated, info = render_env.step(render_env.action_space.sample())
    assert render_env.observation_space.contains(obs)
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    for key in ("success", "task", "instruction", "clipped_actions", "target_object", "target_object_pos",
                "target_pad", "target_pad_pos", "objects", "reward_reach", "reward_success"):
        assert key in info
    assert info["target_object_pos"].dtype == np.float32 and info["target_object_pos"].shape == (3,)
    assert info["task"] in sim.TASK_FAMILIES
    names = [o["name"] for o in info["objects"]]
    assert info["target_object"] in names and 3 <= len(names) <= 5
    assert set(info["objects"][0]) == {"name", "color", "shape", "pos", "pixels"}
    assert set(info["objects"][0]["pixels"]) == {"front", "wrist"} and info["objects"][0]["pixels"]["front"].shape == (2,)


def test_no_images_without_render_mode():
    env = gym.make("mot/Tabletop-v0", task="reach")
    obs, _ = env.reset(seed=0)
    assert "images" not in obs and "images" not in env.observation_space.spaces
    assert env.render() is None


def test_frames_are_non_trivial_and_cameras_differ(render_env):
    obs, _ = render_env.reset(seed=1)
    front, wrist = obs["images"]["front"], obs["images"]["wrist"]
    for img in (front, wrist):
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    frame = render_env.render()
    assert frame.shape == (SMALL, 2 * SMALL, 3)


def test_projected_pixels_show_each_object():
    """info's `pixels` say where each object's centre is in each image: a segmentation render of the
    same camera shows that object's geom there (an occluded object may show another)."""
    import mujoco

    env = gym.make("mot/Tabletop-v0", task="reach", render_mode="rgb_array", image_size=128)
    base = env.unwrapped
    seg = mujoco.Renderer(base.model, 128, 128)
    seg.enable_segmentation_rendering()
    obs, info = env.reset(seed=5)
    checks = []
    for _ in range(2):  # at the reset, and after a step (the wrist camera moves with the arm)
        for i, thing in enumerate(info["objects"]):
            geom = base._obj_geom[base.scene.objects[i].slot]
            for cam, (u, v) in thing["pixels"].items():
                if 0 <= u < 1 and 0 <= v < 1:
                    seg.update_scene(base.data, camera=cam)
                    checks.append(seg.render()[int(v * 128), int(u * 128), 0] == geom)
        obs, _, _, _, info = env.step(np.asarray(obs["state"], np.float32) + np.float32(0.05))
    seg.close()
    env.close()
    assert len(checks) >= 10 and np.mean(checks) >= 0.8, checks


def test_image_size_and_camera_subset():
    env = gym.make("mot/Tabletop-v0", task="pick", render_mode="rgb_array", image_size=32, cameras=("wrist",))
    obs, _ = env.reset(seed=0)
    assert set(obs["images"]) == {"wrist"} and obs["images"]["wrist"].shape == (32, 32, 3)
    env.close()


def _rollout_trace(env, seed, n=8):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    trace = [obs["state"].copy(), info["instruction"], [o["pos"].copy() for o in info["objects"]]]
    for _ in range(n):
        a = rng.uniform(sim.ACTION_LOW, sim.ACTION_HIGH).astype(np.float32)
        obs, r, *_ = env.step(a)
        trace.append(obs["state"].copy())
        trace.append(r)
    return trace


def _same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_seeding_determinism():
    env1 = gym.make("mot/Tabletop-v0", task="multi")
    env2 = gym.make("mot/Tabletop-v0", task="multi")
    for seed in (0, 7):
        assert _same(_rollout_trace(env1, seed), _rollout_trace(env2, seed))
        assert _same(_rollout_trace(env1, seed), _rollout_trace(env1, seed))  # reuse after other episodes
    assert not _same(_rollout_trace(env1, 0), _rollout_trace(env1, 1))


def test_rendered_determinism(render_env):
    a, _ = render_env.reset(seed=5)
    a = a["images"]["front"].copy()
    render_env.reset(seed=6)
    b, _ = render_env.reset(seed=5)
    assert np.array_equal(a, b["images"]["front"])


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(6), "shape"),
        (np.zeros((1, 7)), "shape"),
        (np.array([0, 0, 0, 0, 0, 0, np.nan]), "finite"),
        (np.array([np.inf, 0, 0, 0, 0, 0, 0]), "finite"),
    ],
)
def test_bad_actions_raise(action, match):
    env = gym.make("mot/Tabletop-v0", task="pick")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_out_of_range_actions_are_clipped_and_counted():
    env = gym.make("mot/Tabletop-v0", task="pick")
    obs, info = env.reset(seed=0)
    assert info["clipped_actions"] == 0
    a = obs["state"].copy()
    a[0], a[6] = 10.0, -1.0
    _, _, _, _, info = env.step(a)
    assert info["clipped_actions"] == 2 and info["clipped_this_step"] == 2
    _, _, _, _, info = env.step(obs["state"])
    assert info["clipped_actions"] == 2 and info["clipped_this_step"] == 0


def test_truncation_and_kwargs():
    env = gym.make("mot/Tabletop-v0", task="reach", max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    out = [env.step(obs["state"]) for _ in range(3)]
    assert [o[3] for o in out] == [False, False, True]
    with pytest.raises(ValueError, match="task"):
        sim.TabletopEnv(task="juggle")
    with pytest.raises(ValueError, match="split"):
        sim.TabletopEnv(split="test")
    with pytest.raises(ValueError, match="cameras"):
        sim.TabletopEnv(cameras=("top",))


def test_heldout_split_and_instruction_option():
    env = gym.make("mot/Tabletop-v0", task="pick", split="heldout")
    _, info = env.reset(seed=0)
    assert sim.parse_instruction(info["instruction"]).task == "pick"
    text = "put the red cube on the blue pad"
    obs, info = env.reset(seed=4, options={"instruction": text})
    assert obs["instruction"] == text and info["task"] == "place"
    assert info["target_object"] == "red cube" and info["target_pad"] == "blue pad"
    assert sum(o["name"] == "red cube" for o in info["objects"]) == 1
    with pytest.raises(ValueError, match="cannot ground 'fly to the moon': no known task verb"):
        env.reset(seed=0, options={"instruction": "fly to the moon"})
    with pytest.raises(ValueError, match="unknown keys"):
        env.reset(seed=0, options={"colour": "red"})


def test_multi_env_draws_several_families():
    env = gym.make("mot/TabletopMulti-v0")
    tasks = {env.reset(seed=s)[1]["task"] for s in range(20)}
    assert tasks == set(sim.TASK_FAMILIES)


def test_async_vector_env():
    # "spawn": this process already holds a GL context (render_env), which forked workers must not inherit
    make = _factory("mot/Tabletop-v0", {"task": "multi", "render_mode": "rgb_array", "image_size": 32})
    venv = gym.vector.AsyncVectorEnv([make] * 2, context="spawn")
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert obs["images"]["front"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 7)
        assert len(info["instruction"]) == 2
        obs, r, term, trunc, info = venv.step(np.stack([obs["state"][0], obs["state"][1]]))
        assert r.shape == (2,) and obs["images"]["wrist"].dtype == np.uint8
    finally:
        venv.close()


def test_make_vec_env_keeps_instructions():
    venv = sim.make_vec_env(2, task="pick")
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert list(obs["instruction"]) == list(info["instruction"])
        obs, *_ = venv.step(obs["state"])
        assert list(obs["instruction"]) == list(info["instruction"])
    finally:
        venv.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_env_checker():
    from gymnasium.utils.env_checker import check_env

    env = sim.TabletopEnv(task="push", render_mode="rgb_array", image_size=32)
    check_env(env, skip_render_check=True)
    env.close()


def test_max_episode_steps_property():
    env = sim.TabletopEnv(task="multi")
    assert env.max_episode_steps == max(env.config.max_episode_steps.values())
    _, info = env.reset(seed=0)
    assert env.max_episode_steps == env.config.max_episode_steps[info["task"]]
    assert sim.TabletopEnv(task="pick", max_episode_steps=7).max_episode_steps == 7
