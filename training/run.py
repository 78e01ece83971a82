"""`mot run "put the red cube on the blue pad"`: the main job.

Builds a sim scene in which the instruction makes sense (or says why it cannot), executes it with
the policy, prints whether it succeeded and where the rollout video is. The one checkpoint directory is
all it needs: a policy trained with target points points at the instruction's object and pad itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

import sim
from policy.errors import CheckpointError, InputError
from policy.options import parse
from policy.runtime import PolicyRunner
from training.chunked_policy import ChunkedPolicy
from training.evaluate import make_env
from training.paths import DEFAULT_CHECKPOINT, REPO_ROOT
from training.video import write_video


@dataclass
class RunConfig:
    instruction: tyro.conf.Positional[str]
    """what to do, e.g. "put the red cube on the blue pad\""""
    checkpoint: Path = DEFAULT_CHECKPOINT
    """checkpoint directory (default: the shipped checkpoint)"""
    seed: int = 0
    """scene and sampling seed"""
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    """which runtime runs the graphs"""
    execute_steps: int | None = None
    """actions executed per chunk before re-planning (default: horizon / 2)"""
    video: Path | None = None
    """rollout video (default: outputs/run_<time>.mp4)"""
    json: bool = False
    """print the result as JSON"""

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise InputError("instruction: expected words, e.g. \"pick up the red cube\", received an empty string")
        if self.execute_steps is not None and self.execute_steps <= 0:
            raise InputError(f"execute_steps: expected an int > 0, received {self.execute_steps}")


def main(argv: list[str] | None = None) -> int:
    args = parse(RunConfig, argv, "mot run", __doc__.splitlines()[0])
    try:
        spec = sim.parse_instruction(args.instruction)
    except ValueError as e:
        raise InputError(f"cannot execute {args.instruction!r}: {e}") from None
    if not (args.checkpoint / "manifest.json").is_file():
        raise CheckpointError(f"checkpoint: expected a checkpoint directory at {args.checkpoint} (the default is the "
                              "shipped checkpoints/default; see README: 'How the default checkpoint was made')")
    runner = PolicyRunner.from_checkpoint(args.checkpoint, backend=args.backend)  # it points itself, if it points
    env = make_env("multi", "train", runner)
    fn = ChunkedPolicy(runner, args.execute_steps or max(1, runner.config.horizon // 2), record=True,
                       rng_seed=args.seed)
    t0 = time.perf_counter()
    try:
        result = sim.rollout(env, fn, seed=args.seed, options={"instruction": args.instruction})
    except ValueError as e:  # the scene builder can refuse what the parser accepted (e.g. same colours)
        raise InputError(f"cannot build a scene for {args.instruction!r}: {e}") from None
    video = args.video or REPO_ROOT / "outputs" / f"run_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
    write_video(video, fn.frames + [fn.frames[-1]] * 10, outcome=result.success)
    summary = {"instruction": args.instruction, "task": result.task, "success": result.success,
               "steps": result.steps, "seconds": round(time.perf_counter() - t0, 1), "video": str(video),
               "checkpoint": str(args.checkpoint), "parsed": str(spec)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'SUCCESS' if result.success else 'FAILED'}: {args.instruction!r} ({result.task}, "
              f"{result.steps} steps, {summary['seconds']} s)\nvideo: {video}")
    return 0 if result.success else 1
