"""`mot eval` and `mot run` on a tiny checkpoint (success rates of a real checkpoint are benchmark figures)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from policy.checkpoint import load_checkpoint, save_checkpoint
from policy import MoTPolicy, PolicyConfig


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_checkpoint(MoTPolicy(PolicyConfig.preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


def _train_tiny(data, out, **kw) -> str:
    """A 2-step tiny run of `mot train` (kw: stage, init, target_points, ...) -> its checkpoint path."""
    from training.train import TrainConfig, train

    cfg = dict(data=str(data), out=str(out), preset="tiny", steps=2, batch_size=4, warmup=1, log_every=1,
               eval_every=2, ckpt_every=2)
    return train(TrainConfig(**{**cfg, **kw}), progress=False)["checkpoint"]


def _mot(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "training.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_eval_json_video_and_summary(tiny_checkpoint, tmp_path):
    done = _mot("eval", "--checkpoint", tiny_checkpoint, "--episodes", "1", "--tasks", "reach,pick",
                "--video", tmp_path / "eval.mp4", "--out", tmp_path / "eval.json", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert set(result["splits"]) == {"train", "heldout"}
    for split in result["splits"].values():
        assert set(split["per_family"]) == {"reach", "pick"}
        for family in split["per_family"].values():
            assert family["episodes"] == 1 and 0.0 <= family["success_rate"] <= 1.0
            diag = family["diagnostics"]
            assert 0.0 < diag["median_closest_target_m"] < 1.0 and diag["went_to_target_rate"] in (0.0, 1.0)
        assert 0.0 <= split["overall"] <= 1.0
    assert (tmp_path / "eval.mp4").stat().st_size > 10_000
    assert (tmp_path / "eval.png").stat().st_size > 5_000


def test_run_refuses_an_instruction_it_cannot_ground(tiny_checkpoint):
    done = _mot("run", "fly to the moon", "--checkpoint", tiny_checkpoint)
    assert done.returncode == 2
    assert "cannot execute 'fly to the moon'" in done.stderr


def test_run_executes_an_instruction_and_writes_a_video(tiny_checkpoint, tmp_path):
    done = _mot("run", "pick up the red cube", "--checkpoint", tiny_checkpoint, "--video", tmp_path / "run.mp4",
                "--json")
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1 = ran, did not succeed (untrained policy)
    summary = json.loads(done.stdout)
    assert summary["task"] == "pick" and summary["steps"] > 0 and summary["success"] == (done.returncode == 0)
    assert (tmp_path / "run.mp4").stat().st_size > 10_000


def test_mot_help_lists_every_command():
    done = _mot("--help")
    assert done.returncode == 0
    for name in ("collect", "data", "train", "eval", "run", "export", "bench", "say", "stack", "demo"):
        assert f"  {name}" in done.stdout, name


def test_open_loop_error_is_measured_against_holding_still(sim_dataset, tiny_checkpoint, tmp_path):
    import numpy as np
    import torch

    from training.evaluate import open_loop

    cfg = PolicyConfig.preset("tiny")

    class HoldStill:  # a "policy" that commands the current joint positions for the whole chunk
        def __init__(self):
            self.cfg = cfg

        def sample_actions(self, obs, noise):
            return torch.from_numpy(np.repeat(obs["state"][:, None, :], cfg.horizon, axis=1))

    still = open_loop(HoldStill(), sim_dataset, samples=12)
    assert still["samples"] == 12 and still["hold_still_joint_mae_rad"] > 1e-3  # the experts move
    assert still["joint_mae_over_hold_still"] == 1.0

    done = _mot("eval", "--checkpoint", tiny_checkpoint, "--open-loop", sim_dataset, "--samples", "8",
                "--out", tmp_path / "open_loop.json", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result == json.loads((tmp_path / "open_loop.json").read_text())
    assert result["samples"] == 8 and result["joint_mae_rad"] > 0 and result["hold_still_joint_mae_rad"] > 1e-3


def test_episode_trace_tells_a_wrong_object_from_a_near_miss():
    from training.evaluate import EpisodeTrace, diagnostics

    def info(tcp, target=(0.5, 0.0, 0.02), pad=None):
        return {"tcp_pos": np.array(tcp), "target_object": "red cube", "target_object_pos": np.array(target),
                "target_pad_pos": None if pad is None else np.array(pad),
                "objects": [{"name": "red cube", "pos": np.array(target)},
                            {"name": "blue cube", "pos": np.array([0.4, 0.1, 0.02])}]}

    wrong = EpisodeTrace()  # goes straight down onto the blue cube
    for tcp in ([0.42, 0.0, 0.22], [0.41, 0.08, 0.1], [0.4, 0.1, 0.05]):
        wrong.observe(info(tcp))
    near = EpisodeTrace()  # stops 4 cm short of the red cube, on the pad's side
    for tcp in ([0.42, 0.0, 0.22], [0.46, 0.0, 0.06]):
        near.observe(info(tcp, pad=[0.5, -0.1, 0.0]))
    w, n = wrong.summary(), near.summary()
    assert not w["went_to_target"] and n["went_to_target"]
    assert np.isclose(n["closest_target_m"], np.hypot(0.04, 0.04)) and w["closest_target_m"] > 0.1
    assert "object_to_pad_m" not in w and np.isclose(n["object_to_pad_m"], 0.1)
    summary = diagnostics([w, n])
    assert summary["went_to_target_rate"] == 0.5 and summary["median_object_to_pad_m"] == 0.1


def test_pointer_trace_tells_a_wrong_object_from_an_imprecise_point():
    """ChunkedPolicy.trace_pointer on hand-made infos: per-camera errors along the episode, the first plan's
    object (and pad) error, and whether the first camera's point landed nearest the instruction's object."""
    from types import SimpleNamespace

    from training.evaluate import ChunkedPolicy, diagnostics

    config = PolicyConfig.preset("tiny", target_points="sim")  # cameras front, wrist; 64-px images
    size = config.image_size

    def info(red_front):
        pixels = {"red cube": {"front": red_front, "wrist": [0.5, 0.5]}, "blue cube": {"front": [0.8, 0.2], "wrist": [0.1, 0.9]}}
        return {"target_object": "red cube", "target_pad": "green pad",
                "objects": [{"name": n, "pixels": p} for n, p in pixels.items()],
                "pads": [{"name": "green pad", "pixels": {"front": [0.2, 0.8], "wrist": [1.4, 0.5]}}]}

    traces = []
    # object front, wrist; pad front, wrist. Episode 1: near the red cube (2 px off); episode 2: on the blue one.
    for first_front in ([0.3 + 2 / size, 0.3], [0.8, 0.2]):
        policy = ChunkedPolicy(SimpleNamespace(config=config, pointer=object()), execute_steps=1)
        policy.trace_pointer(np.array([*first_front, 0.5, 0.5, 0.2, 0.8, 1.0, 0.5], np.float32), info([0.3, 0.3]))
        # later, the red cube has moved and the wrist point is 4 px off
        policy.trace_pointer(np.array([0.4, 0.3, 0.5, 0.5 + 4 / size, 0.2, 0.8, 1.0, 0.5], np.float32), info([0.4, 0.3]))
        traces.append(policy.trace.summary())
    near, wrong = traces
    assert near["first_point_on_target"] and not wrong["first_point_on_target"]
    assert near["first_point_err_px"] == pytest.approx(2.0, abs=1e-3)
    assert near["first_pad_point_err_px"] == pytest.approx(0.0, abs=1e-3)  # truth clipped into the image: wrist pad at 1.0
    assert near["point_err_px"] == pytest.approx({"front": 1.0, "wrist": 2.0}, abs=1e-3)  # medians of (2, 0), (0, 4)
    summary = diagnostics([{"closest_target_m": 0.1, "went_to_target": True, **t} for t in traces])
    assert summary["first_point_on_target_rate"] == 0.5
    assert set(summary["median_point_err_px"]) == {"front", "wrist"}


def test_sim_target_points_checkpoint_runs_in_sim_eval_only(tmp_path):
    from policy.runtime import PolicyRunner

    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_target_points("sim")
    ckpt = save_checkpoint(policy, tmp_path / "sim_points")
    with pytest.raises(ValueError, match="target_points='sim'"):
        PolicyRunner.from_checkpoint(ckpt)
    done = _mot("run", "pick up the red cube", "--checkpoint", ckpt)
    assert done.returncode != 0 and "target_points='sim'" in done.stderr
    # `mot eval` hands it the sim's ground truth from info every time it plans (state width 7 + 8).
    done = _mot("eval", "--checkpoint", ckpt, "--episodes", "1", "--tasks", "place", "--split", "train",
                "--execute-steps", "8", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["splits"]["train"]["per_family"]["place"]["episodes"] == 1


def test_points_from_an_align_run_feed_the_body_what_its_head_points_at(sim_dataset, tmp_path):
    """align -> policy (--target-points sim) -> `mot eval --points-from ALIGN_RUN`: the align run's model and
    head replace the simulator's ground truth; the pointer need not be the body's own align run."""
    def run(out, **kw):
        return _train_tiny(sim_dataset, tmp_path / out, **kw)

    align = run("align", stage="align")
    policy = run("policy", stage="policy", init=align, target_points="sim")
    done = _mot("eval", "--checkpoint", policy, "--episodes", "1", "--tasks", "reach", "--split", "train",
                "--points-from", tmp_path / "align", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["target_points"] == f"pointer {tmp_path / 'align'}"
    diag = result["splits"]["train"]["per_family"]["reach"]["diagnostics"]
    assert 0.0 <= diag["median_first_point_err_px"] <= 64 * 2**0.5 and diag["first_point_within_8px_rate"] in (0.0, 1.0)
    assert "median_first_pad_point_err_px" not in diag  # reach names no pad

    # The main job and the runner API: the pointer appends the points, the caller passes the robot's state.
    done = _mot("run", "pick up the red cube", "--checkpoint", policy, "--points-from", tmp_path / "align",
                "--video", tmp_path / "run.mp4", "--json")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    from policy.pointing import Pointer
    from policy.runtime import PolicyRunner

    runner = PolicyRunner.from_checkpoint(policy, pointer=Pointer.from_align_run(tmp_path / "align", ("front", "wrist")))
    images = {c: np.zeros((64, 64, 3), np.uint8) for c in ("front", "wrist")}
    assert runner.infer(images, np.zeros(7, np.float32), "pick up the red cube").shape == (8, 7)
    assert runner.last_points.shape == (8,) and ((runner.last_points >= 0) & (runner.last_points <= 1)).all()
    with pytest.raises(ValueError, match=r"state: expected the robot's state \(7,\) \(the pointer adds"):
        runner.infer(images, np.zeros(15, np.float32), "pick up the red cube")
    with pytest.raises(ValueError, match="this one has none"):
        PolicyRunner.from_checkpoint(align, pointer=runner.pointer)

    other = run("other", stage="policy", init=align, target_points="sim")
    done = _mot("eval", "--checkpoint", other, "--episodes", "1", "--tasks", "reach", "--points-from", tmp_path / "other")
    assert done.returncode != 0 and "expected an align run, " in done.stderr


def test_a_packed_checkpoint_bundles_its_pointer_for_run_eval_and_the_runner(sim_dataset, tmp_path, capsys):
    """`mot pack --pointer ALIGN_RUN`: one directory (body + pointer) is all `mot run`, `mot eval`, PolicyRunner and
    the ROS node need; the pointer points exactly as the align run's, and a modified pointer is refused."""
    from policy.checkpoint import CheckpointError
    from policy.cli import pack_main as pack
    from policy.pointing import Pointer
    from policy.runtime import PolicyRunner
    from training.evaluate import main as evaluate

    align = _train_tiny(sim_dataset, tmp_path / "align", stage="align")
    body = _train_tiny(sim_dataset, tmp_path / "policy", stage="policy", init=align, target_points="sim")
    with pytest.raises(ValueError, match="this one has none"):
        pack(["--checkpoint", align, "--pointer", str(tmp_path / "align"), "--out", str(tmp_path / "refused")])
    capsys.readouterr()  # what training printed
    assert pack(["--checkpoint", body, "--pointer", str(tmp_path / "align"), "--out", str(tmp_path / "packed"),
                 "--dtype", "float32"]) == 0
    packed = tmp_path / "packed"
    report = json.loads(capsys.readouterr().out)  # float32: packing changes nothing it reports
    assert report["pointer"] == str(tmp_path / "align") and report["max_action_diff"] == report["max_point_diff_px"] == 0

    images = {c: np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in ("front", "wrist")}
    bundled, original = Pointer.bundled(packed), Pointer.for_checkpoint(tmp_path / "align", body)
    for words in ("put the red cube on the blue pad", "touch the green cylinder"):
        np.testing.assert_array_equal(bundled(images, words), original(images, words))
    assert Pointer.bundled(body) is None  # a checkpoint without one
    runner = PolicyRunner.from_checkpoint(packed)  # takes the bundled pointer by itself
    assert "bundled in" in runner.pointer.source and runner.robot_state_dim == 7
    reference = PolicyRunner.from_checkpoint(body, pointer=original)
    noise = np.random.default_rng(1).standard_normal((8, 7)).astype(np.float32)
    state = np.zeros(7, np.float32)
    np.testing.assert_array_equal(runner.infer(images, state, "pick up the red cube", noise=noise),
                                  reference.infer(images, state, "pick up the red cube", noise=noise))
    assert runner.last_timing["pointer_ms"] > 0

    # `mot eval` and `mot run` take it without --points-from; --sim-points asks for the simulator's truth.
    args = ["--checkpoint", str(packed), "--episodes", "1", "--tasks", "reach", "--split", "train", "--json"]
    assert evaluate(args) == 0
    assert json.loads(capsys.readouterr().out)["target_points"] == f"pointer {runner.pointer.source}"
    assert evaluate(args + ["--sim-points"]) == 0
    assert json.loads(capsys.readouterr().out)["target_points"] == "simulator"
    done = _mot("run", "pick up the red cube", "--checkpoint", packed, "--video", tmp_path / "run.mp4", "--json")
    assert done.returncode in (0, 1), done.stderr[-2000:]

    # Re-packed as int8, it keeps its pointer; a modified pointer is refused (manifest hash, then file hashes).
    assert pack(["--checkpoint", str(packed), "--out", str(tmp_path / "int8")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pointer"].endswith(f"(bundled in {packed})") and report["max_action_diff"] < 0.05
    manifest = json.loads((tmp_path / "int8" / "pointer" / "manifest.json").read_text())
    assert manifest["dtype"] == "torch.int8" and manifest["int8"]
    assert Pointer.bundled(tmp_path / "int8")(images, "touch the green cylinder").shape == (8,)
    weights = packed / "pointer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="pointer/model.safetensors is corrupted or modified"):
        PolicyRunner.from_checkpoint(packed)
    with open(packed / "pointer" / "manifest.json", "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match="the bundled pointer .* is missing, corrupted or modified"):
        load_checkpoint(packed)
