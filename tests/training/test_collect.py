"""`mot collect`: atomic episodes, manifest with sha256, resume, drops, corruption, other envs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sim
from training.collect import collect, run_episode
from training.data import (ChunkDataset, Episode, SceneTrack, dataset_features, episode_from_bytes, episode_to_bytes,
                           load_manifest, pixels_from_info, read_episodes, save_manifest, target_point_vector)

TOY = dict(env_spec="tests.training.toy_env:make_toy_env", expert_spec="tests.training.toy_env:toy_expert")


def test_sim_episodes_round_trip_through_disk(sim_dataset):
    manifest, episodes = read_episodes(sim_dataset)
    assert len(episodes) == len(manifest["episodes"]) == 8 - len(manifest["dropped"]) >= 6
    assert manifest["cameras"] == ["front", "wrist"]
    assert {e["task"] for e in manifest["episodes"].values()} == {"reach", "pick", "push", "place"}
    ep = episodes[0]
    # The stored episode is what the env and expert produced, step for step.
    again = run_episode("training.collect:tabletop_env", "sim:make_expert", ep.task, "train", 64, ep.seed)
    assert np.array_equal(again.states, ep.states) and np.array_equal(again.actions, ep.actions)
    frame = ep.decode_frame("front", 0)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 5
    assert ep.grounding["target_object_pos"].shape == (3,) and np.isfinite(ep.grounding["target_object_pos"]).all()


def test_scene_tracks_follow_every_object_frame_by_frame(sim_dataset):
    _, episodes = read_episodes(sim_dataset)
    place = next(ep for ep in episodes if ep.task == "place")
    track = place.track
    assert track.object_pos.shape == (place.steps, len(track.object_names), 3)
    assert track.pad_pos.shape == (place.steps, len(track.pad_names), 3) and track.target_pad >= 0
    # Frame 0 is the reset: the track agrees with the episode-level grounding facts there...
    assert np.allclose(track.object_pos[0, track.target_object], place.grounding["target_object_pos"])
    assert np.allclose(track.pad_pos[0, track.target_pad], place.grounding["target_pad_pos"])
    # ...and then follows the placed object onto its pad, which the reset position alone never shows.
    moved = np.linalg.norm(track.object_pos[-1, track.target_object, :2] - track.object_pos[0, track.target_object, :2])
    assert moved > 0.03
    targets = ChunkDataset([place], ["front", "wrist"], horizon=8).batch(np.array([place.steps - 1]), images=False)
    assert np.allclose(targets["grounding"]["target_object_pos"][0], track.object_pos[-1, track.target_object])


def test_referring_expressions_ask_for_other_objects_of_the_scene(sim_dataset):
    _, episodes = read_episodes(sim_dataset)
    data = ChunkDataset(episodes, ["front", "wrist"], horizon=8)
    indices = np.arange(0, len(data), 3)
    plain = data.batch(indices, images=False)
    assert plain["instruction"] == [episodes[e].instruction for e, _ in data.index[indices]]
    asked = data.batch(indices, images=False, referent_prob=1.0, rng=np.random.default_rng(0))
    named = 0
    for (e, t), text, obj, pad in zip(data.index[indices], asked["instruction"],
                                      asked["grounding"]["target_object_pos"], asked["grounding"]["target_pad_pos"]):
        track = episodes[e].track
        k = next(i for i, name in enumerate(track.object_names) if name in text)  # the object it names
        assert np.array_equal(obj, track.object_pos[t, k]) and np.isnan(pad).all()
        named += k != track.target_object
    assert named > len(indices) // 2  # mostly objects other than the episode's own target


def test_pair_referring_expressions_name_an_object_and_a_pad(sim_dataset):
    _, episodes = read_episodes(sim_dataset)
    data = ChunkDataset(episodes, ["front", "wrist"], horizon=8)
    indices = np.arange(0, len(data), 3)
    # off by default: the same draws as before the option existed
    before = data.batch(indices, images=False, referent_prob=1.0, rng=np.random.default_rng(0))
    again = data.batch(indices, images=False, referent_prob=1.0, rng=np.random.default_rng(0), pad_referent_prob=0.0)
    assert before["instruction"] == again["instruction"]
    asked = data.batch(indices, images=False, referent_prob=1.0, rng=np.random.default_rng(0), pad_referent_prob=1.0)
    pairs = 0
    for (e, t), text, obj_px, pad_px in zip(data.index[indices], asked["instruction"],
                                            asked["grounding"]["target_object_pixels"], asked["grounding"]["target_pad_pixels"]):
        track = episodes[e].track
        k = next(i for i, name in enumerate(track.object_names) if name in text)
        assert np.array_equal(obj_px, data.grounding(episodes[e], t, obj=k)["target_object_pixels"])
        if not track.pad_names:
            assert np.isnan(pad_px).all()
            continue
        j = next(i for i, name in enumerate(track.pad_names) if name in text)  # the pad it names
        assert np.array_equal(pad_px, data.grounding(episodes[e], t, pad=j)["target_pad_pixels"])
        assert text.index(track.object_names[k]) < text.index(track.pad_names[j])  # object first, as instructions do
        pairs += 1
    assert pairs > 0


def test_chunks_pad_with_the_last_action(sim_dataset):
    _, episodes = read_episodes(sim_dataset)
    data = ChunkDataset(episodes, ["front", "wrist"], horizon=8)
    last = len(data) - 1
    batch = data.batch(np.array([0, last]))
    assert batch["actions"].shape == (2, 8, 7) and batch["images"]["wrist"].shape == (2, 64, 64, 3)
    assert np.array_equal(batch["actions"][1], np.repeat(episodes[-1].actions[-1:], 8, axis=0))


def test_resume_after_an_interrupted_collect(tmp_path):
    out = tmp_path / "toy"
    collect(out, episodes=3, tasks=["reach"], image_size=32, progress=False, **TOY)
    first = load_manifest(out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("episode_*.npz")}
    (out / ".episode_000003.npz.dead.tmp").write_bytes(b"half an episode")  # a kill mid-write
    manifest = collect(out, episodes=5, tasks=["reach"], image_size=32, progress=False, **TOY)
    assert set(first["episodes"]) < set(manifest["episodes"]) and len(manifest["episodes"]) == 5
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in stamp.items()), "finished episodes rewritten"
    _, episodes = read_episodes(out)
    assert sorted(e.seed for e in episodes) == [0, 1, 2, 3, 4]


def test_failed_expert_episodes_are_dropped_and_counted(tmp_path):
    manifest = collect(tmp_path / "bad", episodes=3, tasks=["reach"], image_size=32, progress=False,
                       env_spec=TOY["env_spec"], expert_spec="tests.training.toy_env:failing_expert")
    assert manifest["episodes"] == {} and len(manifest["dropped"]) == 3
    assert not list((tmp_path / "bad").glob("episode_*.npz"))


def test_corrupted_episode_is_skipped_with_a_warning(tmp_path):
    out = tmp_path / "toy"
    collect(out, episodes=3, tasks=["reach"], image_size=32, progress=False, **TOY)
    victim = out / "episode_000001.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="episode 1: episode_000001.npz is corrupted"):
        _, episodes = read_episodes(out)
    assert sorted(e.seed for e in episodes) == [0, 2]


def test_other_envs_through_the_command_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "training.cli", "collect", "--episodes", "2", "--out", str(out), "--workers", "2",
           "--image-size", "32", "--env", TOY["env_spec"], "--expert", TOY["expert_spec"]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "collected 2 episodes (0 dropped" in done.stdout
    info = subprocess.run([sys.executable, "-m", "training.cli", "data", "info", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert json.loads(info.stdout)["steps"] > 0
    video = subprocess.run([sys.executable, "-m", "training.cli", "data", "video", str(out), "--episode", "1",
                            "--out", str(tmp_path / "ep.mp4")], capture_output=True, text=True, timeout=120)
    assert video.returncode == 0, video.stderr
    assert (tmp_path / "ep.mp4").stat().st_size > 1000
    # The toy env lists no objects: its episodes carry no scene track, and align falls back to none.
    _, episodes = read_episodes(out)
    assert all(ep.track is None for ep in episodes)
    batch = ChunkDataset(episodes, ["front"], horizon=4).batch(np.arange(3), images=False, referent_prob=1.0)
    assert batch["instruction"] == ["reach the goal"] * 3


def test_collect_refuses_to_mix_datasets(tmp_path):
    collect(tmp_path / "toy", episodes=1, tasks=["reach"], image_size=32, progress=False, **TOY)
    with pytest.raises(ValueError, match="image_size=32, this command asks for 48"):
        collect(tmp_path / "toy", episodes=2, tasks=["reach"], image_size=48, progress=False, **TOY)


def test_action_noise_perturbs_the_executed_commands_not_the_stored_labels(tmp_path):
    clean = run_episode(TOY["env_spec"], TOY["expert_spec"], "reach", "train", 32, seed=3)
    noisy = run_episode(TOY["env_spec"], TOY["expert_spec"], "reach", "train", 32, seed=3, action_noise=0.05)
    again = run_episode(TOY["env_spec"], TOY["expert_spec"], "reach", "train", 32, seed=3, action_noise=0.05)
    assert np.array_equal(noisy.states, again.states) and np.array_equal(noisy.actions, again.actions)  # seeded
    assert np.array_equal(noisy.actions[0], clean.actions[0])  # the first label comes before any noise
    # The toy robot's next state is the executed command: it differs from the stored label by the noise on
    # the joints, and not at all on the last (gripper) dimension.
    executed_minus_label = noisy.states[1:] - noisy.actions[:-1]
    assert 0.025 < executed_minus_label[:, :-1].std() < 0.075
    assert np.array_equal(executed_minus_label[:, -1], np.zeros(len(executed_minus_label), np.float32))
    assert np.abs(clean.states[1:] - clean.actions[:-1]).max() == 0.0
    collect(tmp_path / "toy", episodes=1, tasks=["reach"], image_size=32, progress=False, action_noise=0.05, **TOY)
    assert load_manifest(tmp_path / "toy")["action_noise"] == 0.05
    with pytest.raises(ValueError, match="action_noise=0.05, this command asks for 0.0"):
        collect(tmp_path / "toy", episodes=2, tasks=["reach"], image_size=32, progress=False, **TOY)
    with pytest.raises(ValueError, match="action_noise: expected a finite std >= 0"):
        collect(tmp_path / "other", episodes=1, tasks=["reach"], image_size=32, progress=False, action_noise=-1, **TOY)


def test_target_points_from_live_info_match_the_recorded_track():
    """What `mot eval --sim-points` hands a target-points policy (from the env's info) is what its body trained on
    (the track), and what its own points are measured against."""
    env = gym.make("mot/Tabletop-v0", task="place", image_size=64, render_mode="rgb_array")
    expert = sim.make_expert(env)
    obs, info = env.reset(seed=3)
    infos, states, actions = [], [], []
    for _ in range(6):
        action = expert(obs, info)
        infos.append(info)
        states.append(obs["state"])
        actions.append(action)
        obs, _, _, _, info = env.step(action)
    env.close()
    cameras = ["wrist", "front"]  # not the env's order: both paths must follow the policy's camera order
    track = SceneTrack.from_infos(infos)
    ep = Episode(np.array(states), np.array(actions), {c: [b""] * 6 for c in cameras}, infos[0]["instruction"],
                 "place", 3, {}, track)
    data = ChunkDataset([ep], cameras, horizon=4, target_points=True)
    recorded = data.batch(np.arange(6), images=False)["state"][:, 7:]
    rng = np.random.default_rng(0)  # unused: "place" names a pad
    live = np.stack([target_point_vector(*pixels_from_info(i, cameras), rng) for i in infos])
    np.testing.assert_allclose(recorded, live, atol=1e-6)
    assert not np.allclose(live[0, :2], live[0, 2:4])  # the wrist and front views differ
    assert not np.allclose(live[0, :4], live[0, 4:])  # object and pad differ


def test_target_point_vector_clips_into_the_image_and_draws_a_missing_pad():
    obj = np.array([[0.5, 0.25], [-7.0, 40.0]], np.float32)
    v = target_point_vector(obj, np.full((2, 2), np.nan, np.float32), np.random.default_rng(1))
    np.testing.assert_array_equal(v[:4], [0.5, 0.25, 0.0, 1.0])
    assert np.all((v[4:] >= 0) & (v[4:] <= 1))
    assert not np.array_equal(v[4:], target_point_vector(obj, np.full((2, 2), np.nan), np.random.default_rng(2))[4:])
    np.testing.assert_array_equal(target_point_vector(obj, np.zeros((2, 2)), np.random.default_rng(1))[4:], 0.0)


def _children(pid: int) -> dict[int, str]:
    """Live child processes of `pid` (from /proc): pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(stat.parent.name)] = stat.parent.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_collect(tmp_path):
    """kill -9 of `mot collect` used to leave its spawn workers (re-parented to PID 1) writing episodes."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "training.collect", "--episodes", "100000", "--out", str(out), "--workers", "2",
           "--image-size", "32", "--env", TOY["env_spec"], "--expert", TOY["expert_spec"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both workers up and at work (an episode is in the manifest)
            workers = {p: c for p, c in _children(proc.pid).items() if "spawn_main" in c}
            if len(workers) >= 2 and (out / "manifest.json").exists() and load_manifest(out)["episodes"]:
                break
            assert proc.poll() is None, "mot collect ended early"
            time.sleep(0.1)
        assert len(workers) == 2, f"expected 2 spawn workers, found {workers}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], "workers outlived their killed parent"
        # The manifest is still a readable dataset of whole episodes.
        _, episodes = read_episodes(out)
        assert episodes and all(ep.steps > 0 for ep in episodes)
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_collect_records_fps_timestamps_and_dataset_features(tmp_path):

    manifest = collect(tmp_path / "toy", episodes=2, tasks=["reach"], image_size=32, progress=False, **TOY)
    assert manifest["fps"] == 10.0 and manifest["source"] == {"format": "mot collect"}
    _, episodes = read_episodes(tmp_path / "toy")
    for ep in episodes:
        np.testing.assert_allclose(ep.timestamps, np.arange(ep.steps) / 10.0)
    features = dataset_features(tmp_path / "toy")
    assert features.cameras == ("front", "wrist") and features.image_size == (32, 32)
    assert (features.state_dim, features.action_dim, features.fps) == (7, 7, 10.0)
    assert features.delta_action_mask == (True,) * 6 + (False,)  # joints relative, the gripper absolute
    assert features.action_names[-1] == "gripper" and features.source_format == "mot collect"
    assert dataset_features(load_manifest(tmp_path / "toy")) == features


def test_datasets_from_before_fps_still_load(tmp_path):
    """A dataset collected before fps/timestamps/sizes were recorded: fps None, facts read off an episode."""

    out = tmp_path / "old"
    collect(out, episodes=2, tasks=["reach"], image_size=32, progress=False, **TOY)
    manifest = load_manifest(out)
    for key in ("fps", "source", "state_dim", "action_dim", "image_shapes", "state_names", "action_names"):
        manifest.pop(key)
    for entry in manifest["episodes"].values():  # the old npz layout: no timestamps array
        ep = episode_from_bytes((out / entry["file"]).read_bytes(), ["front", "wrist"])
        ep.timestamps = None
        data = episode_to_bytes(ep)
        (out / entry["file"]).write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    save_manifest(out, manifest)
    _, episodes = read_episodes(out)
    assert len(episodes) == 2 and all(ep.timestamps is None for ep in episodes)
    features = dataset_features(out)
    assert features.fps is None and features.delta_action_mask is None and features.source_format == "mot collect"
    assert (features.state_dim, features.action_dim, features.image_size) == (7, 7, (32, 32))
    with pytest.raises(ValueError, match=r"expected \['state_dim', 'action_dim', 'image_shapes'\] in the manifest"):
        dataset_features(manifest)
    # Resuming it with today's collect records the env's rate from then on.
    assert collect(out, episodes=3, tasks=["reach"], image_size=32, progress=False, **TOY)["fps"] == 10.0
