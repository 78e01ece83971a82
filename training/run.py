"""`mot run "put the red cube on the blue pad"`: the main job.

Builds a sim scene in which the instruction makes sense (or says why it cannot), executes it with
the policy, prints whether it succeeded and where the rollout video is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training.paths import REPO_ROOT, default_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mot run", description=__doc__.splitlines()[0])
    p.add_argument("instruction", help='e.g. "put the red cube on the blue pad"')
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the checkpoint shipped in checkpoints/default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--execute-steps", type=int, default=None)
    p.add_argument("--points-from", type=Path, default=None, metavar="ALIGN_RUN",
                   help="for a --target-points checkpoint: the align run whose model points at the target "
                        "(default: the pointer the checkpoint bundles)")
    p.add_argument("--video", type=Path, default=None, help="default: outputs/run_<time>.mp4")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import sim

    try:
        spec = sim.parse_instruction(args.instruction)
    except ValueError as e:
        print(f"mot run: cannot execute {args.instruction!r}: {e}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint or default_checkpoint()
    if checkpoint is None:
        print("mot run: no --checkpoint given and no default checkpoint in checkpoints/default "
              "(see README: 'Training the default checkpoint')", file=sys.stderr)
        return 2

    from policy.runtime import PolicyRunner
    from training.evaluate import ChunkedPolicy, load_pointer, make_env
    from training.video import write_video

    try:
        runner = PolicyRunner.from_checkpoint(checkpoint, backend=args.backend,
                                              pointer=load_pointer(args.points_from, checkpoint))
    except (ValueError, FileNotFoundError) as e:
        print(f"mot run: {e}", file=sys.stderr)
        return 2
    env = make_env("multi", "train", runner)
    fn = ChunkedPolicy(runner, args.execute_steps or max(1, runner.config.horizon // 2), record=True,
                       rng_seed=args.seed)
    t0 = time.perf_counter()
    try:
        result = sim.rollout(env, fn, seed=args.seed, options={"instruction": args.instruction})
    except ValueError as e:  # the scene builder can refuse what the parser accepted (e.g. same colours)
        print(f"mot run: cannot build a scene for {args.instruction!r}: {e}", file=sys.stderr)
        return 2
    video = args.video or REPO_ROOT / "outputs" / f"run_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
    write_video(video, fn.frames)
    summary = {"instruction": args.instruction, "task": result.task, "success": result.success,
               "steps": result.steps, "seconds": round(time.perf_counter() - t0, 1), "video": str(video),
               "checkpoint": str(checkpoint), "parsed": str(spec)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'SUCCESS' if result.success else 'FAILED'}: {args.instruction!r} ({result.task}, "
              f"{result.steps} steps, {summary['seconds']} s)\nvideo: {video}")
    return 0 if result.success else 1
