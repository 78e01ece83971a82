"""`mot eval`: closed-loop success of a checkpoint in the MuJoCo suite (or, with --open-loop, its
action error on recorded demonstrations).

    mot eval --checkpoint runs/policy/checkpoint --episodes 50 --split both --video eval.mp4 --json
    mot eval --checkpoint runs/policy/checkpoint --open-loop runs/demos --json
    mot eval --checkpoint runs/policy/checkpoint --sim-points --json     # target points: the simulator's truth
    mot eval --checkpoint runs/policy/checkpoint --sim-points --own-points pad:wrist --json   # all but one

Per task family and overall, on the train and/or held-out instruction splits. Episodes use seeds
EVAL_SEED_BASE + i, far from collection seeds, so evaluation scenes are never training scenes.
The policy runs chunked, as on a robot: a chunk is sampled, its first `--execute-steps` actions are
executed, then it re-plans (LeRobot's action queue; training/chunked_policy.py). A checkpoint trained
with target points points itself, as on a robot, and the diagnostics say how well (pixels from the truth,
on-target rate, the grounding head's confidence); `--sim-points` hands it the simulator's ground truth
instead: an upper bound, what perfect pointing would give; `--own-points` keeps some of the policy's own points
among the truth (which of them costs success). The JSON says which in "target_points".
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import matplotlib
import numpy as np
from tqdm import tqdm

import sim
from policy.artifacts import atomic_write_bytes, atomic_write_json
from policy.checkpoint import checkpoint_id, load_checkpoint
from policy.errors import InputError
from policy.options import parse
from policy.runtime import PolicyRunner
from training.collect import DEFAULT_ENV, load_callable, task_families
from training.chunked_policy import ChunkedPolicy, point_slots
from training.data import ChunkDataset, read_episodes, split_episodes
from training.episode_trace import diagnostics
from training.paths import DEFAULT_CHECKPOINT
from training.video import mark_outcome, write_video

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EVAL_SEED_BASE = 1_000_000


def make_env(task: str, split: str, runner: PolicyRunner, env_spec: str | None = None):
    """The sim's tabletop env for `task`, or `env_spec` ("module:factory", called as factory(task=, split=,
    image_size=)): any env that follows the observation contract, e.g. the one a dataset was collected in."""
    if env_spec is not None:
        env = load_callable(env_spec)(task=task, split=split, image_size=runner.config.image_size)
        cameras = set(env.observation_space["images"].spaces)
        if cameras != set(runner.config.cameras):
            raise InputError(f"env: expected cameras {sorted(runner.config.cameras)} (the checkpoint's), "
                             f"{env_spec} has {sorted(cameras)}")
        return env
    if not set(runner.config.cameras) <= set(sim.CAMERAS):
        raise InputError(f"env: the checkpoint reads cameras {list(runner.config.cameras)}, the tabletop sim has "
                         f"{list(sim.CAMERAS)}; pass --env module:factory of the robot it was trained for")
    return gym.make("mot/Tabletop-v0", task=task, split=split, image_size=runner.config.image_size,
                    cameras=tuple(runner.config.cameras), render_mode="rgb_array")


def episode_key(record: dict) -> tuple:
    return (record["split"], record["family"], record["index"])


def read_log(path: Path | None, identity: dict) -> dict[tuple, dict]:
    """Episodes an earlier (interrupted) run of the same evaluation finished: the JSON lines of `path` whose
    identity (checkpoint, backend, execute steps, target points) equals this run's. A torn last line (a
    kill mid-write) is ignored."""
    done: dict[tuple, dict] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if all(record.get(k) == v for k, v in identity.items()):
            done[episode_key(record)] = record
    return done


def append_log(path: Path, record: dict) -> None:
    """One finished episode as one JSON line, appended and fsynced: an interrupted eval keeps what it ran."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def points_source(runner: PolicyRunner, sim_points: bool, own_points: str | None = None) -> str | None:
    """Where the body's target points come from in this evaluation: "model" (its own grounding head, what a
    robot gets), "simulator" (--sim-points: the ground truth), "simulator, own pad:wrist" (--own-points: the
    truth but for those of its own) or None (a policy without target points)."""
    if runner.config.target_points is None:
        return None
    if not sim_points:
        return "model"
    return f"simulator, own {own_points}" if own_points else "simulator"


def evaluate(runner: PolicyRunner, episodes: int, splits: list[str], families: list[str], execute_steps: int,
             video: Path | None = None, progress: bool = True, log: Path | None = None,
             env_spec: str | None = None, sim_points: bool = False, own_points: str | None = None) -> dict:
    """Closed-loop success per split and family. log: JSON lines, one per finished episode; episodes it
    already holds for this same evaluation are taken from it instead of being run again. sim_points: a
    target_points policy acts on the simulator's truth instead of its own points (an upper bound); own_points
    ("pad:wrist,...", see `point_slots`): but for these, which stay its own."""
    identity = {"checkpoint_id": runner.checkpoint_id, "backend": runner.backend.name,
                "env": env_spec,
                "execute_steps": execute_steps,
                "target_points": points_source(runner, sim_points, own_points)}
    own_slots = point_slots(own_points, list(runner.config.cameras)) if own_points else None
    done = read_log(log, identity)
    results: dict = {"episodes_per_family": episodes, "execute_steps": execute_steps, "splits": {}}
    if identity["target_points"] is not None:
        results["target_points"] = identity["target_points"]
    frames: list[np.ndarray] = []
    t0 = time.perf_counter()
    bar = tqdm(total=episodes * len(families) * len(splits), desc="eval", unit="ep", disable=not progress)
    for split in splits:
        per_family = {}
        for family in families:
            env = make_env(family, split, runner, env_spec)
            wins, traces = 0, []
            for i in range(episodes):
                record = done.get((split, family, i))
                if record is None or (video is not None and i == 0):  # the video episode always runs
                    record = run_episode(env, runner, execute_steps, i, record_frames=video is not None and i == 0,
                                         sim_points=sim_points, own_slots=own_slots)
                    if "frames" in record:  # one video episode per family and split; hold its last frame a
                        shown = record.pop("frames")  # second, with the outcome on it
                        frames += mark_outcome(shown + [shown[-1]] * 10, record["success"])
                    record.update(identity, split=split, family=family, index=i)
                    if log is not None:
                        append_log(log, record)
                wins += int(record["success"])
                traces.append(record["trace"])
                bar.update(1)
                bar.set_postfix(split=split, task=family, success=f"{wins}/{i + 1}")
            env.close()
            per_family[family] = {"success_rate": wins / episodes, "successes": wins, "episodes": episodes,
                                  "diagnostics": diagnostics(traces)}
        overall = float(np.mean([v["success_rate"] for v in per_family.values()]))
        results["splits"][split] = {"per_family": per_family, "overall": overall}
    bar.close()
    results["seconds"] = round(time.perf_counter() - t0, 1)
    if video is not None and frames:
        results["video"] = str(write_video(video, frames))
    return results


def run_episode(env, runner: PolicyRunner, execute_steps: int, i: int, record_frames: bool,
                sim_points: bool = False, own_slots: list[int] | None = None) -> dict:
    """Episode i (seed EVAL_SEED_BASE + i) -> {"success", "steps", "trace"[, "frames"]}."""
    fn = ChunkedPolicy(runner, execute_steps, record=record_frames, rng_seed=i, sim_points=sim_points,
                       own_slots=own_slots)
    result = sim.rollout(env, fn, seed=EVAL_SEED_BASE + i)
    fn.trace.observe(result.info)  # the last step's info never reaches the policy
    out = {"success": bool(result.success), "steps": int(result.steps), "trace": fn.trace.summary()}
    if record_frames:
        out["frames"] = fn.frames
    return out


def summary_png(results: dict, path: Path) -> Path:
    splits = list(results["splits"])
    families = list(results["splits"][splits[0]]["per_family"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        rates = [results["splits"][split]["per_family"][f]["success_rate"] * 100 for f in families]
        overall = results["splits"][split]["overall"] * 100
        ax.bar(np.arange(len(families)) + k * width, rates, width, label=f"{split} (overall {overall:.0f}%)")
    ax.set_xticks(np.arange(len(families)) + width * (len(splits) - 1) / 2, families)
    ax.set_ylabel("success %")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results.get('checkpoint', '')} — {results['episodes_per_family']} episodes per family")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def open_loop(policy, data_dir: Path, samples: int = 256, steps: int = 5, holdout_fraction: float = 0.1,
              seed: int = 0, batch_size: int = 32, sim_points: bool = False) -> dict:
    """Action error on recorded demonstrations (no rollout): is the policy imitating the expert at all?

    Frames from the held-out episodes of `mot train`'s split (same fraction and seed) -> a sampled
    chunk vs the expert's chunk, mean absolute error over the first `steps` actions, per joint group,
    next to the "hold still" baseline (the chunk = the current joint positions). A policy whose joint
    error is close to the baseline has not learned where to move, whatever its flow loss says.
    A target_points policy gets the robot's state and points itself; sim_points: the recorded truth instead.
    """
    import torch

    _, episodes = read_episodes(data_dir)
    train_eps, hold_eps = split_episodes(episodes, holdout_fraction, seed)
    data = ChunkDataset(hold_eps or train_eps, list(policy.cfg.cameras), policy.cfg.horizon,
                        target_points=policy.cfg.target_points is not None)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(data), size=min(samples, len(data)), replace=False)
    generator = torch.Generator().manual_seed(seed)
    errors, baseline = [], []
    robot = policy.cfg.robot_state_dim  # the dataset's state carries the truth's target points after the robot's
    for start in range(0, len(picked), batch_size):
        batch = data.batch(picked[start:start + batch_size])
        noise = torch.randn((len(batch["state"]), policy.cfg.horizon, policy.cfg.action_dim), generator=generator)
        points = torch.from_numpy(batch["state"][:, robot:]) if sim_points else None
        obs = {"images": batch["images"], "state": batch["state"][:, :robot], "instruction": batch["instruction"]}
        chunk = policy.sample_actions(obs, noise=noise, points=points).numpy()
        expert = batch["actions"]
        errors.append(np.abs(chunk - expert)[:, :steps])
        baseline.append(np.abs(batch["state"][:, None, : expert.shape[-1]] - expert)[:, :steps])
    err, base = np.concatenate(errors), np.concatenate(baseline)
    joints = slice(0, policy.cfg.action_dim - 1)  # the last action dimension is the gripper command
    source = None if policy.cfg.target_points is None else ("simulator" if sim_points else "model")
    return {"samples": int(len(err)), "steps": steps, "frames_from": "held-out episodes of the training split",
            **({"target_points": source} if source else {}),
            "joint_mae_rad": round(float(err[..., joints].mean()), 5),
            "hold_still_joint_mae_rad": round(float(base[..., joints].mean()), 5),
            "joint_mae_over_hold_still": round(float(err[..., joints].mean() / base[..., joints].mean()), 4),
            "gripper_mae": round(float(err[..., -1].mean()), 5)}


@dataclass
class EvalConfig:
    checkpoint: Path = DEFAULT_CHECKPOINT
    """checkpoint directory (default: the shipped checkpoint)"""
    episodes: int = 50
    """episodes per task family and split (50 x 4 families x 2 splits = 400 episodes, ~25 min on 2 cores)"""
    split: Literal["train", "heldout", "both"] = "both"
    """instruction split: train words, held-out paraphrases, or both"""
    tasks: str = "all"
    """comma-separated task families (reach, pick, push, place) or 'all' (the --env factory's TASK_FAMILIES)"""
    env: str | None = None
    """another env to roll out in, "module:factory" (called with task=, split=, image_size=; as `mot collect
    --env`): any env that follows the observation contract (default: the MuJoCo tabletop)"""
    execute_steps: int | None = None
    """actions executed per chunk before re-planning (default: horizon / 2)"""
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    """which runtime runs the graphs"""
    video: Path | None = None
    """mp4 of the first episode of each family and split"""
    summary: Path | None = None
    """summary PNG (default: next to --video or --out)"""
    out: Path | None = None
    """also write the JSON result here; episodes are logged to OUT with suffix .episodes.jsonl"""
    log: Path | None = None
    """JSON lines, one per finished episode, appended (default: beside --out); a rerun with the same log
    skips the episodes it holds, so an interrupted eval resumes"""
    json: bool = False
    """print the result as JSON"""
    open_loop: Path | None = None
    """instead of rollouts: action error on this dataset's held-out demonstrations vs holding still"""
    samples: int = 256
    """frames for --open-loop"""
    sim_points: bool = False
    """a target-points checkpoint acts on the simulator's ground-truth points instead of its own (an upper
    bound: what perfect pointing would give; default: the policy points itself, as on a robot; torch only)"""
    own_points: str | None = None
    """with --sim-points: these of the policy's own points replace the simulator's, comma-separated TARGET[:CAMERA]
    (object, pad; a camera of the checkpoint, default all), e.g. pad:wrist: which of its points costs success"""

    def __post_init__(self) -> None:
        for name in ("episodes", "samples"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name}: expected an int > 0, received {getattr(self, name)}")
        if self.execute_steps is not None and self.execute_steps <= 0:
            raise InputError(f"execute_steps: expected an int > 0, received {self.execute_steps}")
        known = task_families(self.env or DEFAULT_ENV)
        unknown = sorted(set(self.families()) - set(known))
        if unknown:
            raise InputError(f"tasks: expected 'all' or families among {known}, received {unknown}")
        if self.own_points is not None and not self.sim_points:
            raise InputError(f"own_points: expected --sim-points too (its points replace the simulator's), received "
                             f"--own-points {self.own_points} alone")
        if self.sim_points and self.backend != "torch":
            raise InputError(f"sim_points: expected --backend torch (the exported graphs compute their own points), "
                             f"received {self.backend!r}")

    def families(self) -> list[str]:
        return task_families(self.env or DEFAULT_ENV) if self.tasks == "all" else [t.strip() for t in self.tasks.split(",")]

    def splits(self) -> list[str]:
        return ["train", "heldout"] if self.split == "both" else [self.split]

    def log_path(self) -> Path | None:
        return self.log or (self.out.with_suffix(".episodes.jsonl") if self.out else None)


def run_open_loop(cfg: EvalConfig) -> dict:
    policy = load_checkpoint(cfg.checkpoint)
    check_sim_points(cfg, policy.cfg)
    return {"checkpoint": str(cfg.checkpoint), "data": str(cfg.open_loop),
            **open_loop(policy, cfg.open_loop, cfg.samples, sim_points=cfg.sim_points)}


def check_sim_points(cfg: EvalConfig, policy_cfg) -> None:
    if cfg.sim_points and policy_cfg.target_points is None:
        raise InputError(f"sim_points: expected a checkpoint with target points (mot train --target-points model), "
                         f"{cfg.checkpoint} has none")


def run_eval(cfg: EvalConfig, progress: bool = True) -> dict:
    """The closed-loop evaluation `mot eval` runs; also the recipe's eval stage."""
    # A target_points checkpoint points itself, as on a robot; --sim-points hands it the simulator's truth.
    runner = PolicyRunner.from_checkpoint(cfg.checkpoint, backend=cfg.backend)
    check_sim_points(cfg, runner.config)
    execute = cfg.execute_steps or max(1, runner.config.horizon // 2)
    families, splits = cfg.families(), cfg.splits()
    print(f"eval: {cfg.episodes} episodes x {len(families)} families x {len(splits)} splits = "
          f"{cfg.episodes * len(families) * len(splits)} episodes", file=sys.stderr)
    results = {"checkpoint": str(cfg.checkpoint), "checkpoint_id": checkpoint_id(cfg.checkpoint), "backend": cfg.backend,
               **evaluate(runner, cfg.episodes, splits, families, execute, cfg.video, progress, cfg.log_path(),
                         cfg.env, cfg.sim_points, cfg.own_points)}
    summary = cfg.summary or ((cfg.video or cfg.out or Path("eval.json")).with_suffix(".png"))
    results["summary_png"] = str(summary_png(results, summary))
    if cfg.out:
        atomic_write_json(cfg.out, results)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse(EvalConfig, argv, "mot eval", "Closed-loop success of a checkpoint in sim, per task family and split.")
    results = run_open_loop(cfg) if cfg.open_loop is not None else run_eval(cfg)
    if cfg.open_loop is not None and cfg.out:
        atomic_write_json(cfg.out, results)
    if cfg.json:
        print(json.dumps(results, indent=2))
    elif cfg.open_loop is not None:
        print(f"open loop: joint MAE {results['joint_mae_rad']} rad vs {results['hold_still_joint_mae_rad']} "
              f"holding still (ratio {results['joint_mae_over_hold_still']})")
    else:
        for split, r in results["splits"].items():
            rates = ", ".join(f"{f} {v['success_rate']:.0%}" for f, v in r["per_family"].items())
            print(f"{split}: overall {r['overall']:.0%} ({rates})")
            for f, v in r["per_family"].items():
                print(f"  {f}: " + ", ".join(f"{k} {x}" for k, x in v["diagnostics"].items()))
    return 0
