"""`mot demo`: what `make demo` runs on a fresh machine.

With the default checkpoint shipped in the repo (`checkpoints/default`), it executes an instruction in
the MuJoCo sim (`mot run`). Without one, it samples an action chunk from an untrained `small` policy that
points, then acts, as the shipped one does (target points from its own grounding head), and prints where
it pointed and the inference benchmark, so the whole model path still runs end to end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import tyro

from policy import MoTPolicy, PolicyConfig
from policy.options import parse
from policy.runtime import PolicyRunner
from training import bench, run
from training.paths import default_checkpoint


@dataclass
class DemoConfig:
    instruction: tyro.conf.Positional[str] = "put the red cube on the blue pad"
    """what the robot is told"""
    seed: int = 0
    """scene and sampling seed"""


def main(argv: list[str] | None = None) -> int:
    args = parse(DemoConfig, argv, "mot demo", __doc__.splitlines()[0])
    if default_checkpoint() is not None:
        rc = run.main([args.instruction, "--seed", str(args.seed)])
        return 0 if rc in (0, 1) else rc  # 1 = the episode ran but failed: the demo itself worked

    policy = MoTPolicy(PolicyConfig.preset("small"))
    policy.set_target_points("model")  # it points at the instruction's object and pad, then acts
    runner = PolicyRunner(policy)
    cfg = runner.config
    rng = np.random.default_rng(args.seed)
    images = {cam: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for cam in cfg.cameras}
    t0 = time.perf_counter()
    chunk = runner.infer(images, np.zeros(runner.robot_state_dim, np.float32), args.instruction)
    print(f"instruction: {args.instruction!r}")
    print(f"action chunk {chunk.shape} (untrained small policy) in {(time.perf_counter() - t0) * 1e3:.1f} ms:")
    print(np.array2string(chunk[:3], precision=3, suppress_small=True), "...")
    n = len(cfg.cameras)  # points: object (u, v) per camera, then pad; confidence: object per camera, then pad
    for i, cam in enumerate(cfg.cameras):
        obj, pad = runner.last_points[2 * i:2 * i + 2], runner.last_points[2 * (n + i):2 * (n + i) + 2]
        print(f"pointed in {cam}: object at (u, v) {np.round(obj, 3).tolist()} (confidence "
              f"{runner.last_confidence[i]:.2f}), pad at {np.round(pad, 3).tolist()}")
    print(json.dumps({"note": "inference benchmark follows (random weights: --random-weights)"}))
    return bench.main(["inference", "--json", "--iters", "5", "--random-weights"])


if __name__ == "__main__":
    raise SystemExit(main())
