"""`mot train`: learning, checkpoints, exact resume, prefix cache, DDP."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from policy.checkpoint import load_checkpoint, save_checkpoint
from policy import MoTPolicy, PolicyConfig
from training.data import ChunkDataset, read_episodes
from training.prefix_cache import PrefixCache, cache_key
from training.config import TrainConfig
from training.losses import StageLoss, cell_targets, pixel_cells
from training import train as train_module
from training.train import batch_indices, train


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(stage="policy", data=str(data), out=str(out), preset="tiny", steps=6, batch_size=8, warmup=2,
                log_every=2, eval_every=3, ckpt_every=3, lr=1e-3)
    return TrainConfig(**{**base, **kw})


def test_policy_stage_lowers_the_loss_and_writes_a_loadable_checkpoint(sim_dataset, tmp_path):
    result = train(_cfg(sim_dataset, tmp_path / "run", steps=40, eval_every=40, ckpt_every=20, log_every=5,
                        lr=3e-3), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5))
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    policy = load_checkpoint(result["checkpoint"])
    assert not np.allclose(policy.norm_stats.action_std, 1.0), "normalisation stats come from the data"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 40
    assert result["val_loss"] > 0 and rows[-1]["val_loss"] != ""
    # The same scalars in TensorBoard event files, which TensorBoard's own reader parses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, 41, 5))
    assert events.Scalars("train/loss")[0].value == pytest.approx(losses[0], rel=1e-5)
    assert [e.step for e in events.Scalars("val/val_loss")] == [40]


def test_resume_continues_the_step_count_and_optimizer_state(sim_dataset, tmp_path, capsys):
    straight = train(_cfg(sim_dataset, tmp_path / "straight", ema=0.9), progress=False)
    # "Killed" after the step-3 checkpoint: a 3-step run, then the same 6-step command with --resume.
    train(_cfg(sim_dataset, tmp_path / "resumed", stop_at=3, ema=0.9), progress=False)
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert state["step"] == 3 and state["optimizer"]["state"], "optimizer moments are saved"
    capsys.readouterr()
    resumed = train(_cfg(sim_dataset, tmp_path / "resumed", resume=True, ema=0.9), progress=False)
    assert "prefix cache: loaded" in capsys.readouterr().out  # the resumed run does not rebuild it
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "resumed" / "metrics.csv"))]
    assert steps == [2, 3, 4, 6]  # log_every 2, plus the eval step 3
    # Resuming a finished run trains nothing and evaluates the saved state again.
    again = train(_cfg(sim_dataset, tmp_path / "resumed", resume=True, ema=0.9), progress=False)
    assert again["val_loss"] == pytest.approx(resumed["val_loss"], rel=1e-5)
    assert load_checkpoint(again["checkpoint"]).state_dict()["action_out.weight"].equal(
        b.state_dict()["action_out.weight"])


def test_align_stage_trains_vision_only_and_reports_grounding(sim_dataset, tmp_path):
    result = train(_cfg(sim_dataset, tmp_path / "align", stage="align", steps=4, eval_every=4, ckpt_every=4),
                   progress=False)
    assert 0.0 <= result["grounding_acc"] <= 1.0 and 0.0 <= result["referent_cell_acc"] <= 1.0
    assert result["start_grounding_err_m"] >= 0.0
    rows = list(csv.DictReader(open(tmp_path / "align" / "metrics.csv")))
    assert rows[-1]["grounding_acc"] != "" and rows[-1]["referent_cell_acc"] != ""
    # Only the image projection and the vision expert moved (fresh model = same init seed, no training).
    torch.manual_seed(0)
    fresh, aligned = MoTPolicy(PolicyConfig.preset("tiny")), load_checkpoint(result["checkpoint"])
    changed = {name.split(".")[2] if name.startswith("layers.") else name.split(".")[0]
               for (name, x), (_, y) in zip(fresh.state_dict().items(), aligned.state_dict().items())
               if not torch.equal(x, y)}
    assert changed == {"image_embed", "vision", "grounding"}  # the policy's own grounding head trains with vision


def test_bfloat16_precision_runs_the_forward_under_autocast_and_keeps_float32_weights(sim_dataset, tmp_path,
                                                                                     monkeypatch):
    if not train_module.native_bfloat16():
        with pytest.raises(ValueError, match="precision: 'bfloat16' needs a CPU with AVX512-BF16 or AMX"):
            train(_cfg(sim_dataset, tmp_path / "bf16", stage="align", precision="bfloat16"), progress=False)
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 / AMX): the refusal above is what it gets")
    seen = []  # dtypes of a vision-expert projection's output, per training forward
    original = StageLoss.forward

    def forward(self, batch):
        hook = self.policy.layers[0]["vision"].query.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        try:
            return original(self, batch)
        finally:
            hook.remove()

    monkeypatch.setattr(StageLoss, "forward", forward)
    result = train(_cfg(sim_dataset, tmp_path / "bf16", stage="align", steps=4, eval_every=4, ckpt_every=4,
                        precision="bfloat16"), progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    assert np.isfinite(result["val_loss"])
    aligned = load_checkpoint(result["checkpoint"])
    assert {p.dtype for p in aligned.parameters()} == {torch.float32}  # autocast casts per op, never the weights


def test_bfloat16_is_refused_where_the_cpu_would_emulate_it(sim_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "native_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="precision: 'bfloat16' needs a CPU with AVX512-BF16 or AMX"):
        train(_cfg(sim_dataset, tmp_path / "bf16", precision="bfloat16"), progress=False)
    assert not (tmp_path / "bf16").exists()  # refused before any work
    with pytest.raises(ValueError, match="precision: expected 'float32', 'bfloat16' or 'auto', received 'fp8'"):
        _cfg(sim_dataset, tmp_path, precision="fp8")


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_takes_bfloat16_only_where_the_cpu_has_it_and_says_which_ran(sim_dataset, tmp_path,
                                                                                   monkeypatch, native):
    monkeypatch.setattr(train_module, "native_bfloat16", lambda: native)
    assert train_module.resolve_precision("auto") == ("bfloat16" if native else "float32")
    assert train_module.resolve_precision("float32") == "float32"
    entered = []  # the precision train() gave autocast, per run
    original = train_module.autocast
    monkeypatch.setattr(train_module, "autocast", lambda precision: entered.append(precision) or original("float32"))
    out = tmp_path / "auto"
    result = train(_cfg(sim_dataset, out, stage="align", steps=2, eval_every=2, ckpt_every=2, precision="auto"),
                   progress=False)
    expected = "bfloat16" if native else "float32"
    assert entered == [expected]
    assert result["precision"] == expected
    assert json.loads((out / "result.json").read_text())["precision"] == expected


def test_cached_prefix_gives_the_same_loss_as_recomputing_it(sim_dataset):
    _, episodes = read_episodes(sim_dataset)
    torch.manual_seed(0)
    from tests.policy.conftest import randomize_body

    policy = randomize_body(MoTPolicy(PolicyConfig.preset("tiny")))
    data = ChunkDataset(episodes, ["front", "wrist"], policy.cfg.horizon)
    cache = PrefixCache(policy, data, batch_size=16, progress=False)
    idx = np.array([0, 5, len(data) - 1])
    batch = data.batch(idx)
    noise, t = torch.randn(3, policy.cfg.horizon, 7), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        direct = policy.compute_loss(batch, noise, t)
        cached = policy.flow_matching_loss(cache.prefix(idx), torch.from_numpy(batch["state"]),
                                           torch.from_numpy(batch["actions"]), noise, t)
    assert abs(direct.item() - cached.item()) < 1e-3 * max(1.0, direct.item())  # float16 storage


def test_prefix_cache_on_disk_is_reused_only_for_the_same_frozen_prefix_and_frames(sim_dataset, tmp_path):
    _, episodes = read_episodes(sim_dataset)
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_stage("policy")
    data = ChunkDataset(episodes, ["front", "wrist"], policy.cfg.horizon)
    built, loaded = PrefixCache.load_or_build(policy, data, tmp_path, progress=False)
    assert not loaded and [p.name for p in tmp_path.iterdir()] == [cache_key(policy, data)]
    again, loaded = PrefixCache.load_or_build(policy, data, tmp_path, progress=False)
    assert loaded and np.array_equal(again.images, built.images)
    idx = np.array([0, 7])
    assert torch.equal(again.prefix(idx).kv, built.prefix(idx).kv)
    # Loaded caches read their frames with pread: the same rows as a cache built in memory, any order.
    idx = np.array([len(data) - 1, 0, 7, 7])
    assert torch.equal(again.prefix(idx).kv, PrefixCache(policy, data, progress=False).prefix(idx).kv)
    # A body-only change (target points widen the state) leaves the text/image K/V, and the key, as they were.
    policy.set_target_points("model")
    assert cache_key(policy, data) == built_key(tmp_path)
    # Other frozen weights (another align checkpoint) or other frames: another key, a fresh build.
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if n.startswith("image_embed")).add_(0.01)
    assert cache_key(policy, data) != built_key(tmp_path)
    assert cache_key(policy, ChunkDataset(episodes[1:], ["front", "wrist"], policy.cfg.horizon)) != built_key(tmp_path)


def built_key(directory):
    (only,) = directory.iterdir()
    return only.name


def test_two_processes_train_with_ddp_and_agree(sim_dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training.train", "--stage", "policy", "--data", str(sim_dataset), "--out", str(tmp_path / "ddp"),
           "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--log-every", "2", "--eval-every", "4",
           "--ckpt-every", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["max_rank_param_diff"] == 0.0
    load_checkpoint(tmp_path / "ddp" / "checkpoint")


def test_cell_targets_point_at_the_tokens_that_show_the_object():
    # Two cameras, 4x4 grid; tokens are ordered camera, row (v), column (u).
    pixels = np.array([[[0.30, 0.46], [np.nan, np.nan]],     # front cell (1, 1) only
                       [[0.99, 0.01], [0.13, 0.80]],         # front (0, 3) and wrist (3, 0)
                       [[1.20, 0.50], [-0.1, 0.30]],         # outside both images
                       [[np.nan, np.nan], [np.nan, np.nan]]], np.float32)
    dist = cell_targets(pixels, grid=4)
    assert dist.shape == (4, 32)
    assert dist[0, 1 * 4 + 1] == 1.0 and dist[0].sum() == 1.0
    assert dist[1, 0 * 4 + 3] == 0.5 and dist[1, 16 + 3 * 4 + 0] == 0.5 and dist[1].sum() == 1.0
    assert dist[2].sum() == 0 and dist[3].sum() == 0
    # The same points as (sample, camera, token) with their offset from the cell's centre, in cells.
    bi, ci, token, offset = pixel_cells(pixels, grid=4)
    assert bi.tolist() == [0, 1, 1] and ci.tolist() == [0, 0, 1] and token.tolist() == [5, 3, 28]
    np.testing.assert_allclose(offset, [[-0.30, 0.34], [0.46, -0.46], [0.02, -0.30]], atol=1e-5)


def test_align_head_learns_where_in_its_cell_the_object_is(sim_dataset):
    """The offset term is part of the align loss: its gradient reaches the head's offset layer, and only
    through the tokens that show the object."""
    _, episodes = read_episodes(sim_dataset)
    torch.manual_seed(0)
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_stage("align")
    data = ChunkDataset(episodes, ["front", "wrist"], policy.cfg.horizon)
    batch = data.batch(np.arange(0, len(data), max(1, len(data) // 6))[:6])
    assert len(pixel_cells(batch["grounding"]["target_object_pixels"], policy.cfg.feature_grid)[0]) > 0
    module = StageLoss(policy, "align")
    module(batch).backward()
    assert policy.grounding.offset.weight.grad.abs().sum() > 0  # the policy's own head
    with torch.no_grad():  # moving the offsets the loss reads changes the loss
        before = module(batch).item()
        policy.grounding.offset.bias += 0.3
        assert module(batch).item() != pytest.approx(before, abs=1e-6)


def test_bad_train_config_is_refused(sim_dataset, tmp_path):
    with pytest.raises(ValueError, match="stage: expected 'align' or 'policy'"):
        _cfg(sim_dataset, tmp_path, stage="finetune")
    with pytest.raises(ValueError, match="ema: expected a decay in"):
        _cfg(sim_dataset, tmp_path, ema=1.5)
    with pytest.raises(ValueError, match=r"referents: expected a number in \[0, 1\], received 2"):
        _cfg(sim_dataset, tmp_path, referents=2.0)
    for name, value in (("lr", -1.0), ("lr", float("nan")), ("grad_clip", 0.0)):
        with pytest.raises(ValueError, match=f"{name}: expected a finite number > 0, received {value}"):
            _cfg(sim_dataset, tmp_path, **{name: value})
    for name in ("steps", "batch_size", "eval_every"):
        with pytest.raises(ValueError, match=f"{name}: expected an int > 0, received 0"):
            _cfg(sim_dataset, tmp_path, **{name: 0})
    # The experiment-only options are gone from the config (git tag experiments-2026-11).
    for retired in ("body_grounding", "goal_token", "point_cameras", "point_noise", "train_points_from",
                    "early_fraction"):
        with pytest.raises(TypeError, match=retired):
            _cfg(sim_dataset, tmp_path, **{retired: 1})


def test_runs_of_removed_experiments_are_refused_on_resume_and_old_configs_still_load(sim_dataset, tmp_path):
    """train_state.pt of a removed experiment's run is refused by --resume; a config.json that stores the
    retired keys at their "off" value loads (every checkpoint from before), any other value is refused."""
    train(_cfg(sim_dataset, tmp_path / "old", steps=2, eval_every=2, ckpt_every=2, stop_at=1), progress=False)
    path = tmp_path / "old" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["body_grounding"] = 1.0
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"body_grounding=1.0, an experiment removed from the product"):
        train(_cfg(sim_dataset, tmp_path / "old", steps=2, eval_every=2, ckpt_every=2, resume=True), progress=False)
    d = PolicyConfig.preset("tiny").to_dict()
    assert PolicyConfig.from_dict({**d, "goal_token": False, "point_cameras": None}) == PolicyConfig.preset("tiny")
    with pytest.raises(ValueError, match=r"config: goal_token=True was an experiment, removed from the product"):
        PolicyConfig.from_dict({**d, "goal_token": True})
    with pytest.raises(ValueError, match=r"config: point_cameras=\['front'\] was an experiment"):
        PolicyConfig.from_dict({**d, "point_cameras": ["front"]})


def test_delta_actions_choose_the_action_space_of_the_trained_policy(sim_dataset, tmp_path):
    from training.data import dataset_features
    from training.train import build_policy

    features = dataset_features(sim_dataset)
    with pytest.raises(ValueError, match="delta_actions: expected 'on', 'off' or None"):
        _cfg(sim_dataset, tmp_path, delta_actions="yes")
    # The dataset names its joints: the joint targets are relative, the gripper absolute, whatever the preset.
    assert features.delta_action_mask == (True,) * 6 + (False,)
    assert build_policy(_cfg(sim_dataset, tmp_path), features).cfg.delta_action_mask == (True,) * 6 + (False,)
    assert build_policy(_cfg(sim_dataset, tmp_path, delta_actions="off"), features).cfg.delta_action_mask is None
    unnamed = dataclasses.replace(features, delta_action_mask=None, state_names=None, action_names=None)
    assert build_policy(_cfg(sim_dataset, tmp_path, preset="small"), unnamed).cfg.delta_action_mask == (True,) * 6 + (False,)
    with pytest.raises(ValueError, match="delta_actions: 'on' needs to know which actions are joint targets"):
        build_policy(_cfg(sim_dataset, tmp_path, delta_actions="on"), unnamed)
    # From a checkpoint without them (e.g. align's), "on" sets them; the stats and the saved config follow.
    init = save_checkpoint(MoTPolicy(PolicyConfig.preset("tiny")), tmp_path / "init")
    absolute = load_checkpoint(train(_cfg(sim_dataset, tmp_path / "abs", init=str(init), steps=2, eval_every=2,
                                         ckpt_every=2, delta_actions="off"), progress=False)["checkpoint"])
    delta = load_checkpoint(train(_cfg(sim_dataset, tmp_path / "delta", init=str(init), preset="small",
                                      delta_actions="on", steps=2, eval_every=2, ckpt_every=2),
                                 progress=False)["checkpoint"])
    assert absolute.cfg.delta_action_mask is None and delta.cfg.delta_action_mask == (True,) * 6 + (False,)
    # Joint targets minus the joints they start from spread far less than the targets themselves.
    assert np.all(delta.norm_stats.action_std[:6] < absolute.norm_stats.action_std[:6])
    assert delta.norm_stats.action_std[6] == pytest.approx(absolute.norm_stats.action_std[6])


def test_train_benchmark_prints_its_figures(sim_dataset):
    """benchmarks/train.py runs end to end on the tiny preset (with 16-pixel image tokens, so every stage and
    the prefix cache run at that grid too) and reports every figure (values not asserted)."""
    done = subprocess.run([sys.executable, "benchmarks/train.py", "--preset", "tiny", "--iters", "1", "--batch-size",
                           "4", "--data", str(sim_dataset), "--image-token-stride", "16"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["image_token_stride"] == 16
    for key in ("data_loading", "policy_cached_prefix", "policy_frozen_prefix", "full_backprop", "align",
                "ratio_cached_vs_full_backprop"):
        assert figures[key] > 0, key


def test_target_points_widen_the_state_with_the_sims_ground_truth(sim_dataset, tmp_path):
    from training.data import target_point_vector

    with pytest.raises(ValueError, match="target_points: expected stage 'policy'"):
        _cfg(sim_dataset, tmp_path, stage="align", target_points="model")
    with pytest.raises(ValueError, match="prefix_pool: expected a positive int or None, received 0"):
        _cfg(sim_dataset, tmp_path, prefix_pool=0)
    result = train(_cfg(sim_dataset, tmp_path / "run", steps=2, eval_every=2, ckpt_every=2, target_points="model",
                        prefix_pool=2), progress=False)
    policy = load_checkpoint(result["checkpoint"])
    cams = len(policy.cfg.cameras)
    assert policy.cfg.target_points == "model" and policy.cfg.state_dim == 7 + 4 * cams
    assert policy.cfg.prefix_pool == 2 and policy.cfg.robot_state_dim == 7
    assert policy.state_in.in_features == policy.cfg.state_dim
    assert policy.norm_stats.state_mean.shape == (policy.cfg.state_dim,)
    with pytest.raises(ValueError, match="already has them"):
        policy.set_target_points("model")
    # The extra entries are the instruction's own object/pad pixels of that very frame.
    _, episodes = read_episodes(sim_dataset)
    data = ChunkDataset(episodes, list(policy.cfg.cameras), policy.cfg.horizon, target_points=True)
    batch = data.batch(np.arange(len(data)), images=False)
    plain = ChunkDataset(episodes, list(policy.cfg.cameras), policy.cfg.horizon).batch(np.arange(len(data)), images=False)
    np.testing.assert_array_equal(batch["state"][:, :7], plain["state"])
    points = batch["state"][:, 7:]
    assert points.min() >= 0.0 and points.max() <= 1.0
    tasks = np.array([episodes[e].task for e, _ in data.index])
    with_pad = np.isin(tasks, ["push", "place"])
    for i in range(0, len(data), 7):
        e, t = data.index[i]
        g = data.grounding(episodes[e], t)
        np.testing.assert_allclose(points[i, : 2 * cams], np.clip(g["target_object_pixels"], 0, 1).ravel())
        if with_pad[i]:
            np.testing.assert_allclose(points[i, 2 * cams:], np.clip(g["target_pad_pixels"], 0, 1).ravel())
    # Without a pad the slot holds a random point, fixed per frame: the same on a second draw, not constant.
    again = data.batch(np.arange(len(data)), images=False)["state"][:, 7:]
    np.testing.assert_array_equal(again, points)
    assert np.std(points[~with_pad, 2 * cams:], axis=0).min() > 0.1


