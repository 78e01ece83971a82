"""`mot eval` and `mot run` on a tiny checkpoint (success rates of a real checkpoint are benchmark figures).

A checkpoint trained with target points points itself (format mot-policy/2): `mot eval` runs it as a robot
does by default and reports how well it pointed; `--sim-points` hands it the simulator's truth instead."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.runtime import PolicyRunner
from training.chunked_policy import ChunkedPolicy, point_slots
from training.data import pixels_from_info, target_point_vector
from training.episode_trace import EpisodeTrace, diagnostics
from training.evaluate import main as evaluate, make_env, open_loop
from training import video
from training.train import TrainConfig, train
from training.video import compose


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_checkpoint(MoTPolicy(PolicyConfig.preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def pointing_checkpoint(tmp_path_factory):
    """An untrained tiny policy that points, then acts (target points from its own grounding head). Its zero-
    initialised parameters (adaLN-zero body blocks, which ignore the prefix at init) get small random values,
    so that the body reads the state token, and so the points, as a trained one does."""
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_target_points("model")
    with torch.no_grad():
        for param in policy.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return save_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "pointing")


def _train_tiny(data, out, **kw) -> str:
    """A 2-step tiny run of `mot train` (kw: stage, init, target_points, ...) -> its checkpoint path."""
    cfg = dict(data=str(data), out=str(out), preset="tiny", steps=2, batch_size=4, warmup=1, log_every=1,
               eval_every=2, ckpt_every=2)
    return train(TrainConfig(**{**cfg, **kw}), progress=False)["checkpoint"]


def _mot(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "training.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _eval_json(capsys, *args) -> dict:
    """`mot eval ARGS --json` in this process -> its JSON result."""
    capsys.readouterr()
    assert evaluate([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_video_and_summary(tiny_checkpoint, tmp_path):
    done = _mot("eval", "--checkpoint", tiny_checkpoint, "--episodes", "1", "--tasks", "reach,pick",
                "--video", tmp_path / "eval.mp4", "--out", tmp_path / "eval.json", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert set(result["splits"]) == {"train", "heldout"}
    assert "target_points" not in result  # a policy without target points
    for split in result["splits"].values():
        assert set(split["per_family"]) == {"reach", "pick"}
        for family in split["per_family"].values():
            assert family["episodes"] == 1 and 0.0 <= family["success_rate"] <= 1.0
            diag = family["diagnostics"]
            assert 0.0 < diag["median_closest_target_m"] < 1.0 and diag["went_to_target_rate"] in (0.0, 1.0)
            assert "median_point_err_px" not in diag and "mean_point_confidence" not in diag
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
    cfg = PolicyConfig.preset("tiny")

    class HoldStill:  # a "policy" that commands the current joint positions for the whole chunk
        def __init__(self):
            self.cfg = cfg

        def sample_actions(self, obs, noise, points=None):
            return torch.from_numpy(np.repeat(obs["state"][:, None, :], cfg.horizon, axis=1))

    still = open_loop(HoldStill(), sim_dataset, samples=12)
    assert still["samples"] == 12 and still["hold_still_joint_mae_rad"] > 1e-3  # the experts move
    assert still["joint_mae_over_hold_still"] == 1.0 and "target_points" not in still

    done = _mot("eval", "--checkpoint", tiny_checkpoint, "--open-loop", sim_dataset, "--samples", "8",
                "--out", tmp_path / "open_loop.json", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result == json.loads((tmp_path / "open_loop.json").read_text())
    assert result["samples"] == 8 and result["joint_mae_rad"] > 0 and result["hold_still_joint_mae_rad"] > 1e-3


def test_open_loop_of_a_policy_that_points_takes_the_robots_state(sim_dataset, pointing_checkpoint):
    """The dataset's state carries the truth's points after the robot's: the policy gets the robot's state and
    points itself, or (sim_points) acts on the recorded truth; the two give different chunks."""
    policy = load_checkpoint(pointing_checkpoint)
    own = open_loop(policy, sim_dataset, samples=8)
    truth = open_loop(policy, sim_dataset, samples=8, sim_points=True)
    assert own["target_points"] == "model" and truth["target_points"] == "simulator"
    assert own["hold_still_joint_mae_rad"] == truth["hold_still_joint_mae_rad"]  # the same frames
    assert own["joint_mae_rad"] != truth["joint_mae_rad"]  # the body reads the points it is given


def test_episode_trace_tells_a_wrong_object_from_a_near_miss():
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


def test_point_trace_tells_a_wrong_object_from_an_imprecise_point():
    """ChunkedPolicy.trace_points / trace_confidence on hand-made infos: per-camera errors along the episode, the
    first plan's object (and pad) error, whether the first camera's point landed nearest the instruction's
    object, and the head's mean confidence in its object point per camera."""
    config = PolicyConfig.preset("tiny", target_points="model")  # cameras front, wrist; 64-px images
    size = config.image_size

    def info(red_front):
        pixels = {"red cube": {"front": red_front, "wrist": [0.5, 0.5]}, "blue cube": {"front": [0.8, 0.2], "wrist": [0.1, 0.9]}}
        return {"target_object": "red cube", "target_pad": "green pad",
                "objects": [{"name": n, "pixels": p} for n, p in pixels.items()],
                "pads": [{"name": "green pad", "pixels": {"front": [0.2, 0.8], "wrist": [1.4, 0.5]}}]}

    traces = []
    # object front, wrist; pad front, wrist. Episode 1: near the red cube (2 px off); episode 2: on the blue one.
    for first_front, confidence in (([0.3 + 2 / size, 0.3], 0.9), ([0.8, 0.2], 0.3)):
        policy = ChunkedPolicy(SimpleNamespace(config=config), execute_steps=1)
        policy.trace_points(np.array([*first_front, 0.5, 0.5, 0.2, 0.8, 1.0, 0.5], np.float32), info([0.3, 0.3]))
        # confidence: object front, wrist; then pad front, wrist (the pad's is not averaged)
        policy.trace_confidence(np.array([confidence, 0.5, 0.01, 0.01], np.float32))
        # later, the red cube has moved and the wrist point is 4 px off
        policy.trace_points(np.array([0.4, 0.3, 0.5, 0.5 + 4 / size, 0.2, 0.8, 1.0, 0.5], np.float32), info([0.4, 0.3]))
        policy.trace_confidence(np.array([confidence - 0.2, 0.7, 0.01, 0.01], np.float32))
        traces.append(policy.trace.summary())
    near, wrong = traces
    assert near["first_point_on_target"] and not wrong["first_point_on_target"]
    assert near["first_point_err_px"] == pytest.approx(2.0, abs=1e-3)
    assert near["first_pad_point_err_px"] == pytest.approx(0.0, abs=1e-3)  # truth clipped into the image: wrist pad at 1.0
    assert near["point_err_px"] == pytest.approx({"front": 1.0, "wrist": 2.0}, abs=1e-3)  # medians of (2, 0), (0, 4)
    assert near["point_confidence"] == pytest.approx({"front": 0.8, "wrist": 0.6}, abs=1e-6)
    summary = diagnostics([{"closest_target_m": 0.1, "went_to_target": True, **t} for t in traces])
    assert summary["first_point_on_target_rate"] == 0.5
    assert set(summary["median_point_err_px"]) == {"front", "wrist"}
    assert summary["mean_point_confidence"] == pytest.approx({"front": 0.5, "wrist": 0.6}, abs=1e-3)


def test_sim_points_hand_the_policy_the_simulators_truth_and_its_own_points_otherwise(pointing_checkpoint):
    """ChunkedPolicy on the tabletop: by default the runner gets no points (the policy points itself) and the
    trace records its pointing; with sim_points it gets exactly the truth from the env's info, and the trace
    records no pointing (last_points is then the truth it was handed)."""
    runner = PolicyRunner.from_checkpoint(pointing_checkpoint)
    calls = []
    infer = runner.infer

    def spy(images, state, instruction, **kw):
        calls.append((state.shape, kw.get("points")))
        return infer(images, state, instruction, **kw)

    runner.infer = spy
    env = make_env("place", "train", runner)
    obs, info = env.reset(seed=5)
    own = ChunkedPolicy(runner, execute_steps=4, record=True)
    own(obs, info)
    assert calls[-1] == ((7,), None)  # the robot's state alone
    assert set(own.trace.point_errs_px) == {"front", "wrist"} and set(own.trace.point_confidence) == {"front", "wrist"}
    # The recorded frame marks where it pointed: a magenta cross on the object point in each camera's view
    # (compose: cameras side by side, sorted by name, 3x, under the caption band).
    marked = (own.frames[0][video.BAND:] == np.array(video.OBJECT_MARK)).all(axis=-1)
    assert marked[:, :64 * 3].any() and marked[:, 64 * 3:].any()
    plain = compose(obs["images"], obs["instruction"], step=0)[video.BAND:]
    assert not (plain == np.array(video.OBJECT_MARK)).all(axis=-1).any()
    with pytest.raises(ValueError, match=r"points: expected shape \(8,\)"):
        video.mark_points(obs["images"], np.zeros(6), ("front", "wrist"))
    truth = ChunkedPolicy(runner, execute_steps=4, sim_points=True)
    truth(obs, info)
    state_shape, points = calls[-1]
    expected = target_point_vector(*pixels_from_info(info, ["front", "wrist"]), np.random.default_rng(0))
    assert state_shape == (7,) and np.array_equal(points, expected)  # "place" names a pad: no random point
    np.testing.assert_array_equal(runner.last_points, expected)
    assert truth.trace.point_errs_px == {} and truth.trace.point_confidence == {}
    env.close()
    with pytest.raises(ValueError, match="sim_points: expected a checkpoint with target points"):
        ChunkedPolicy(SimpleNamespace(config=PolicyConfig.preset("tiny")), execute_steps=1, sim_points=True)


def test_point_slots_name_targets_and_cameras_in_the_target_point_layout():
    cams = ["front", "wrist"]  # object (u, v) per camera, then pad (u, v) per camera
    assert point_slots("pad:wrist", cams) == [6, 7]
    assert point_slots("object", cams) == [0, 1, 2, 3]
    assert point_slots(" object:front , pad", cams) == [0, 1, 4, 5, 6, 7]
    for bad in ("pad:side", "goal", "pad:wrist,"):
        with pytest.raises(ValueError, match=r"own_points: expected comma-separated TARGET\[:CAMERA\]"):
            point_slots(bad, cams)


def test_own_points_keep_those_of_the_policys_points_among_the_truth(pointing_checkpoint):
    """With sim_points and own_slots the body gets the simulator's truth except at those slots, which hold the
    points the policy itself gave on the same observation."""
    runner = PolicyRunner.from_checkpoint(pointing_checkpoint)
    calls = []
    infer = runner.infer

    def spy(images, state, instruction, **kw):
        out = infer(images, state, instruction, **kw)
        calls.append((kw.get("points"), runner.last_points.copy()))
        return out

    runner.infer = spy
    env = make_env("place", "train", runner)
    obs, info = env.reset(seed=5)
    slots = point_slots("pad:wrist", ["front", "wrist"])
    ChunkedPolicy(runner, execute_steps=4, sim_points=True, own_slots=slots)(obs, info)
    (first, own), (handed, _) = calls
    assert first is None  # the policy's own pass
    truth = target_point_vector(*pixels_from_info(info, ["front", "wrist"]), np.random.default_rng(0))
    assert not np.allclose(own[slots], truth[slots])  # so the mix is visible
    np.testing.assert_array_equal(handed[slots], own[slots])
    others = [i for i in range(8) if i not in slots]
    np.testing.assert_array_equal(handed[others], truth[others])
    env.close()
    with pytest.raises(ValueError, match="own_points: expected sim_points too"):
        ChunkedPolicy(runner, execute_steps=4, own_slots=slots)


def test_eval_of_a_policy_that_points_with_and_without_sim_points(pointing_checkpoint, tmp_path, capsys):
    """`mot eval` runs a target-points checkpoint on its own points (what a robot gets) and reports how well it
    pointed; `--sim-points` on the simulator's truth, labelled so; the episode log keeps the two apart."""
    log = tmp_path / "episodes.jsonl"
    args = ["--checkpoint", pointing_checkpoint, "--episodes", "1", "--tasks", "place", "--split", "train",
            "--execute-steps", "8", "--log", log]
    own = _eval_json(capsys, *args)
    assert own["target_points"] == "model"
    diag = own["splits"]["train"]["per_family"]["place"]["diagnostics"]
    assert set(diag["median_point_err_px"]) == {"front", "wrist"}
    assert 0.0 <= diag["median_first_point_err_px"] <= 64 * 2**0.5 and diag["first_point_within_8px_rate"] in (0.0, 1.0)
    assert diag["first_point_on_target_rate"] in (0.0, 1.0) and "median_first_pad_point_err_px" in diag  # place: a pad
    assert all(0.0 < c <= 1.0 for c in diag["mean_point_confidence"].values())

    truth = _eval_json(capsys, *args, "--sim-points")
    assert truth["target_points"] == "simulator"
    diag = truth["splits"]["train"]["per_family"]["place"]["diagnostics"]
    assert "median_point_err_px" not in diag and "mean_point_confidence" not in diag  # it pointed at nothing
    assert 0.0 < diag["median_closest_target_m"] < 1.0
    mixed = _eval_json(capsys, *args, "--sim-points", "--own-points", "pad:wrist")
    assert mixed["target_points"] == "simulator, own pad:wrist"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["target_points"] for r in records] == ["model", "simulator", "simulator, own pad:wrist"]  # none reused
    again = _eval_json(capsys, *args)  # resumed from the log: nothing new ran
    assert len(log.read_text().splitlines()) == 3
    assert again["splits"]["train"]["per_family"]["place"] == own["splits"]["train"]["per_family"]["place"]


def test_sim_points_are_refused_where_there_is_nothing_to_replace(tiny_checkpoint, pointing_checkpoint):
    done = _mot("eval", "--checkpoint", tiny_checkpoint, "--episodes", "1", "--tasks", "reach", "--sim-points")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "sim_points: expected a checkpoint with target points" in done.stderr
    done = _mot("eval", "--checkpoint", pointing_checkpoint, "--backend", "onnxruntime", "--sim-points")
    assert done.returncode == 2 and "sim_points: expected --backend torch" in done.stderr
    done = _mot("eval", "--checkpoint", pointing_checkpoint, "--own-points", "pad:wrist")
    assert done.returncode == 2 and "own_points: expected --sim-points too" in done.stderr and "Traceback" not in done.stderr
    done = _mot("eval", "--checkpoint", pointing_checkpoint, "--sim-points", "--own-points", "pad:side", "--episodes", "1")
    assert done.returncode == 2 and "own_points: expected comma-separated" in done.stderr and "Traceback" not in done.stderr


def test_run_and_the_runner_take_a_pointing_checkpoint_alone(pointing_checkpoint, tmp_path):
    """One checkpoint directory is all `mot run` and PolicyRunner need: callers pass the robot's state."""
    done = _mot("run", "put the red cube on the blue pad", "--checkpoint", pointing_checkpoint,
                "--video", tmp_path / "run.mp4", "--json")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert json.loads(done.stdout)["task"] == "place"
    runner = PolicyRunner.from_checkpoint(pointing_checkpoint)
    images = {c: np.zeros((64, 64, 3), np.uint8) for c in ("front", "wrist")}
    assert runner.robot_state_dim == 7
    assert runner.infer(images, np.zeros(7, np.float32), "pick up the red cube").shape == (8, 7)
    assert runner.last_points.shape == (8,) and ((runner.last_points >= 0) & (runner.last_points <= 1)).all()
    assert runner.last_confidence.shape == (4,) and "pointer_ms" not in runner.last_timing


def test_a_retired_checkpoint_format_is_one_line_for_run_and_eval(pointing_checkpoint, tmp_path):
    """A mot-policy/1 checkpoint (a body fed by a separate pointer) is refused by `mot run` and `mot eval`."""
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((pointing_checkpoint / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "mot-policy/1"}))
    for args in (["run", "pick up the red cube"], ["eval", "--episodes", "1", "--tasks", "reach"]):
        done = _mot(*args, "--checkpoint", old)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "received 'mot-policy/1'" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_trained_pointing_policy_evaluates_on_its_own_points(sim_dataset, tmp_path, capsys):
    """align -> policy (--target-points model) -> `mot eval`: the trained checkpoint points itself."""
    align = _train_tiny(sim_dataset, tmp_path / "align", stage="align")
    body = _train_tiny(sim_dataset, tmp_path / "policy", stage="policy", init=align, target_points="model")
    assert load_checkpoint(body).cfg.target_points == "model"
    result = _eval_json(capsys, "--checkpoint", body, "--episodes", "1", "--tasks", "reach", "--split", "train")
    assert result["target_points"] == "model"
    diag = result["splits"]["train"]["per_family"]["reach"]["diagnostics"]
    assert "median_first_point_err_px" in diag and "median_first_pad_point_err_px" not in diag  # reach names no pad
