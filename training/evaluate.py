"""`mot eval`: closed-loop success of a checkpoint in the MuJoCo suite (or, with --open-loop, its
action error on recorded demonstrations).

    mot eval --checkpoint runs/policy/checkpoint --episodes 50 --split both --video eval.mp4 --json
    mot eval --checkpoint runs/policy/checkpoint --open-loop runs/demos --json

Per task family and overall, on the train and/or held-out instruction splits. Episodes use seeds
EVAL_SEED_BASE + i, far from collection seeds, so evaluation scenes are never training scenes.
The policy runs chunked, as on a robot: a chunk is sampled, its first `--execute-steps` actions are
executed, then it re-plans (LeRobot's action queue).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from policy.runtime import PolicyRunner
from training.data import atomic_write_bytes, pixels_from_info, target_point_vector
from training.video import compose, write_video

EVAL_SEED_BASE = 1_000_000


class EpisodeTrace:
    """Where an episode went, from the env's infos: tells a grounding failure from a control failure.

    closest_target_m      smallest TCP-to-target-object distance of the episode (m)
    went_to_target        at the TCP's closest approach to *any* object (xy), that object was the target
    object_to_pad_m       last target-object-to-target-pad distance in xy (push / place only, m)
    first_point_err_px    target points from a pointer: its object point's distance from the truth in the first
                          camera at the first plan (pixels); first_pad_point_err_px the same for the pad
    first_point_on_target the scene object nearest that point is the instruction's (a wrong object, not an
                          imprecise point, when false)
    point_err_px          per pointing camera, the median over the episode's plans of the object point's error
                          (a camera that moves with the arm loses the object from view)
    """

    def __init__(self) -> None:
        self.closest_target = np.inf
        self.closest_any = np.inf
        self.closest_is_target = False
        self.object_to_pad: float | None = None
        self.first_point_err_px: float | None = None  # set by ChunkedPolicy (target points from a pointer)
        self.first_pad_point_err_px: float | None = None
        self.first_point_on_target: bool | None = None
        self.point_errs_px: dict[str, list[float]] = {}

    def observe(self, info: dict) -> None:
        tcp = np.asarray(info["tcp_pos"], np.float64)
        target = np.asarray(info["target_object_pos"], np.float64)
        self.closest_target = min(self.closest_target, float(np.linalg.norm(tcp - target)))
        for obj in info["objects"]:
            d = float(np.linalg.norm(tcp[:2] - np.asarray(obj["pos"], np.float64)[:2]))
            if d < self.closest_any:
                self.closest_any, self.closest_is_target = d, obj["name"] == info["target_object"]
        if info.get("target_pad_pos") is not None:
            self.object_to_pad = float(np.linalg.norm(target[:2] - np.asarray(info["target_pad_pos"])[:2]))

    def summary(self) -> dict:
        out = {"closest_target_m": self.closest_target, "went_to_target": self.closest_is_target}
        if self.object_to_pad is not None:
            out["object_to_pad_m"] = self.object_to_pad
        if self.first_point_err_px is not None:
            out["first_point_err_px"] = self.first_point_err_px
        if self.first_pad_point_err_px is not None:
            out["first_pad_point_err_px"] = self.first_pad_point_err_px
        if self.first_point_on_target is not None:
            out["first_point_on_target"] = self.first_point_on_target
        if self.point_errs_px:
            out["point_err_px"] = {c: float(np.median(e)) for c, e in self.point_errs_px.items()}
        return out


def diagnostics(traces: list[dict]) -> dict:
    """Per-family means of `EpisodeTrace.summary()`s (medians for distances: a few wild episodes do not hide the rest)."""
    out = {"median_closest_target_m": round(float(np.median([t["closest_target_m"] for t in traces])), 4),
           "went_to_target_rate": round(float(np.mean([t["went_to_target"] for t in traces])), 3)}
    pads = [t["object_to_pad_m"] for t in traces if "object_to_pad_m" in t]
    if pads:
        out["median_object_to_pad_m"] = round(float(np.median(pads)), 4)
    points = [t["first_point_err_px"] for t in traces if "first_point_err_px" in t]
    if points:  # where the pointer put the object on the first frame, in the first camera
        out["median_first_point_err_px"] = round(float(np.median(points)), 2)
        out["first_point_within_8px_rate"] = round(float(np.mean(np.array(points) <= 8.0)), 3)
    pad_points = [t["first_pad_point_err_px"] for t in traces if "first_pad_point_err_px" in t]
    if pad_points:
        out["median_first_pad_point_err_px"] = round(float(np.median(pad_points)), 2)
        out["first_pad_point_within_8px_rate"] = round(float(np.mean(np.array(pad_points) <= 8.0)), 3)
    on_target = [t["first_point_on_target"] for t in traces if "first_point_on_target" in t]
    if on_target:
        out["first_point_on_target_rate"] = round(float(np.mean(on_target)), 3)
    along = [t["point_err_px"] for t in traces if "point_err_px" in t]
    if along:  # per camera: median over episodes of each episode's median error along the way
        out["median_point_err_px"] = {c: round(float(np.median([a[c] for a in along])), 2) for c in along[0]}
    return out


class SimTargetPoints:
    """Target points from the simulator's `info` (its ground truth): what a target_points policy trained on."""

    def __init__(self, cameras: list[str], rng_seed: int = 0):
        self.cameras = cameras
        self.rng = np.random.default_rng(rng_seed)  # the random pad point of a task without a pad

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        return target_point_vector(*pixels_from_info(info, self.cameras), self.rng)


class ChunkedPolicy:
    """fn(obs, info) -> action, re-planning every `execute_steps`; optionally records annotated frames.

    `trace` follows the episode through the infos it is handed (see `EpisodeTrace`)."""

    def __init__(self, runner: PolicyRunner, execute_steps: int, record: bool = False, rng_seed: int = 0):
        if not 1 <= execute_steps <= runner.config.horizon:
            raise ValueError(f"execute_steps: expected 1..{runner.config.horizon}, received {execute_steps}")
        self.runner, self.execute_steps = runner, execute_steps
        # A target_points policy without a pointer in its runner reads the simulator's ground truth.
        self.sim_points = SimTargetPoints(list(runner.config.target_point_cameras), rng_seed) \
            if runner.config.target_points is not None and runner.pointer is None else None
        self.queue: list[np.ndarray] = []
        self.frames: list[np.ndarray] = [] if record else None
        self.rng = np.random.default_rng(rng_seed)  # sampling noise: reproducible episodes
        self.trace = EpisodeTrace()

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        self.trace.observe(info)
        if self.frames is not None:
            self.frames.append(compose(obs["images"], obs["instruction"]))
        if not self.queue:
            cfg = self.runner.config
            noise = self.rng.standard_normal((cfg.horizon, cfg.action_dim))
            state = np.asarray(obs["state"], np.float32)
            if self.sim_points is not None:
                state = np.concatenate([state, self.sim_points(obs, info)])
            chunk = self.runner.infer(obs["images"], state, obs["instruction"], noise=noise.astype(np.float32))
            if self.runner.pointer is not None:
                self.trace_pointer(self.runner.last_points, info)
            self.queue = list(chunk[: self.execute_steps])
        return self.queue.pop(0)

    def trace_pointer(self, points: np.ndarray, info: dict) -> None:
        """How far the pointer's object point is from the truth per pointing camera on this plan; on the first
        plan also the pad's, and which scene object the first camera's point is nearest to."""
        cfg, trace = self.runner.config, self.trace
        cameras = list(cfg.target_point_cameras)
        obj, pad = pixels_from_info(info, cameras)
        # target_point_vector: object (u, v) per camera, then pad (u, v) per camera; truth clipped as trained
        errs = np.linalg.norm(points[: 2 * len(cameras)].reshape(-1, 2) - np.clip(obj, 0, 1), axis=1) * cfg.image_size
        for camera, err in zip(cameras, errs):
            trace.point_errs_px.setdefault(camera, []).append(float(err))
        if trace.first_point_err_px is not None:
            return
        trace.first_point_err_px = float(errs[0])
        nearest = min(info["objects"], key=lambda o: np.linalg.norm(np.asarray(o["pixels"][cameras[0]]) - points[:2]))
        trace.first_point_on_target = nearest["name"] == info["target_object"]
        pad_at = 2 * len(cameras)
        if not np.isnan(pad).any():  # push / place
            trace.first_pad_point_err_px = float(np.linalg.norm(points[pad_at:pad_at + 2] - pad[0]) * cfg.image_size)


def make_env(task: str, split: str, runner: PolicyRunner):
    import gymnasium as gym

    import sim  # noqa: F401  (registers the envs)

    return gym.make("mot/Tabletop-v0", task=task, split=split, image_size=runner.config.image_size,
                    cameras=tuple(runner.config.cameras), render_mode="rgb_array")


def evaluate(runner: PolicyRunner, episodes: int, splits: list[str], families: list[str], execute_steps: int,
             video: Path | None = None, progress: bool = True) -> dict:
    from sim import rollout

    results: dict = {"episodes_per_family": episodes, "execute_steps": execute_steps, "splits": {}}
    if runner.config.target_points is not None:
        results["target_points"] = f"pointer {runner.pointer.source}" if runner.pointer is not None else "simulator"
    frames: list[np.ndarray] = []
    t0 = time.perf_counter()
    bar = tqdm(total=episodes * len(families) * len(splits), desc="eval", unit="ep", disable=not progress)
    for split in splits:
        per_family = {}
        for family in families:
            env = make_env(family, split, runner)
            wins, traces = 0, []
            for i in range(episodes):
                record = video is not None and i == 0  # one video episode per family and split
                fn = ChunkedPolicy(runner, execute_steps, record=record, rng_seed=i)
                result = rollout(env, fn, seed=EVAL_SEED_BASE + i)
                wins += int(result.success)
                fn.trace.observe(result.info)  # the last step's info never reaches the policy
                traces.append(fn.trace.summary())
                if record:
                    frames += fn.frames + [fn.frames[-1]] * 5  # hold the last frame half a second
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


def summary_png(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
              seed: int = 0, batch_size: int = 32) -> dict:
    """Action error on recorded demonstrations (no rollout): is the policy imitating the expert at all?

    Frames from the held-out episodes of `mot train`'s split (same fraction and seed) -> a sampled
    chunk vs the expert's chunk, mean absolute error over the first `steps` actions, per joint group,
    next to the "hold still" baseline (the chunk = the current joint positions). A policy whose joint
    error is close to the baseline has not learned where to move, whatever its flow loss says.
    """
    import torch

    from training.data import ChunkDataset, read_episodes, split_episodes

    _, episodes = read_episodes(data_dir)
    train_eps, hold_eps = split_episodes(episodes, holdout_fraction, seed)
    data = ChunkDataset(hold_eps or train_eps, list(policy.cfg.cameras), policy.cfg.horizon,
                        target_points=policy.cfg.target_points is not None,
                        point_cameras=policy.cfg.target_point_cameras)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(data), size=min(samples, len(data)), replace=False)
    generator = torch.Generator().manual_seed(seed)
    errors, baseline = [], []
    for start in range(0, len(picked), batch_size):
        batch = data.batch(picked[start:start + batch_size])
        noise = torch.randn((len(batch["state"]), policy.cfg.horizon, policy.cfg.action_dim), generator=generator)
        chunk = policy.sample_actions({k: batch[k] for k in ("images", "state", "instruction")}, noise=noise).numpy()
        expert = batch["actions"]
        errors.append(np.abs(chunk - expert)[:, :steps])
        baseline.append(np.abs(batch["state"][:, None, : expert.shape[-1]] - expert)[:, :steps])
    err, base = np.concatenate(errors), np.concatenate(baseline)
    joints = slice(0, policy.cfg.action_dim - 1)  # the last action dimension is the gripper command
    return {"samples": int(len(err)), "steps": steps, "frames_from": "held-out episodes of the training split",
            "joint_mae_rad": round(float(err[..., joints].mean()), 5),
            "hold_still_joint_mae_rad": round(float(base[..., joints].mean()), 5),
            "joint_mae_over_hold_still": round(float(err[..., joints].mean() / base[..., joints].mean()), 4),
            "gripper_mae": round(float(err[..., -1].mean()), 5)}


def load_pointer(align_run: Path | None, checkpoint: Path):
    """`--points-from ALIGN_RUN` -> a Pointer for the checkpoint's cameras; without the flag the pointer the
    checkpoint bundles (`mot pack --pointer`), or None."""
    from policy.pointing import Pointer

    return Pointer.resolve(align_run, checkpoint)


def main(argv: list[str] | None = None) -> int:
    import sim

    p = argparse.ArgumentParser(prog="mot eval", description="Closed-loop success of a checkpoint in sim.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--episodes", type=int, default=50, help="episodes per task family and split")
    p.add_argument("--split", default="both", choices=["train", "heldout", "both"])
    p.add_argument("--tasks", default="all", help="comma-separated families or 'all'")
    p.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default horizon/2)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--video", type=Path, default=None, help="mp4 of the first episode of each family and split")
    p.add_argument("--summary", type=Path, default=None, help="summary PNG (default: next to --video or --out)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--open-loop", type=Path, default=None, metavar="DATA",
                   help="instead of rollouts: action error on DATA's held-out demonstrations vs holding still")
    p.add_argument("--samples", type=int, default=256, help="frames for --open-loop")
    p.add_argument("--points-from", type=Path, default=None, metavar="ALIGN_RUN",
                   help="a --target-points checkpoint reads its target points from this align run's model (vision "
                        "expert + grounding head, as a robot would) instead of the simulator or its bundled pointer")
    p.add_argument("--sim-points", action="store_true",
                   help="a --target-points checkpoint reads the simulator's truth even if it bundles a pointer")
    args = p.parse_args(argv)
    if args.sim_points and args.points_from:
        p.error("--sim-points: expected without --points-from (they name two sources of target points)")
    if args.open_loop is not None:
        from policy import MoTPolicy

        result = {"checkpoint": str(args.checkpoint), "data": str(args.open_loop),
                  **open_loop(MoTPolicy.load(args.checkpoint).eval(), args.open_loop, args.samples)}
        text = json.dumps(result, indent=2)
        if args.out:
            atomic_write_bytes(args.out, text.encode())
        print(text if args.json else f"open loop: joint MAE {result['joint_mae_rad']} rad vs "
              f"{result['hold_still_joint_mae_rad']} holding still (ratio {result['joint_mae_over_hold_still']})")
        return 0
    # A target_points checkpoint reads its points from the align run's pointer (--points-from), the pointer
    # it bundles or, here only (no pointer, or --sim-points), from the simulator's ground truth.
    pointer = None if args.sim_points else load_pointer(args.points_from, args.checkpoint)
    runner = PolicyRunner.from_checkpoint(args.checkpoint, backend=args.backend, allow_privileged=True,
                                          pointer=pointer)
    families = list(sim.TASK_FAMILIES) if args.tasks == "all" else args.tasks.split(",")
    splits = ["train", "heldout"] if args.split == "both" else [args.split]
    execute = args.execute_steps or max(1, runner.config.horizon // 2)
    results = {"checkpoint": str(args.checkpoint), "backend": args.backend,
               **evaluate(runner, args.episodes, splits, families, execute, args.video)}
    summary = args.summary or ((args.video or args.out or Path("eval.json")).with_suffix(".png"))
    results["summary_png"] = str(summary_png(results, summary))
    text = json.dumps(results, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    if args.json:
        print(text)
    else:
        for split, r in results["splits"].items():
            rates = ", ".join(f"{f} {v['success_rate']:.0%}" for f, v in r["per_family"].items())
            print(f"{split}: overall {r['overall']:.0%} ({rates})")
            for f, v in r["per_family"].items():
                print(f"  {f}: " + ", ".join(f"{k} {x}" for k, x in v["diagnostics"].items()))
    return 0
