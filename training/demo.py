"""`mot demo`: what `make demo` runs on a fresh machine.

With the default checkpoint shipped in the repo (`checkpoints/default`), it executes an instruction in
the MuJoCo sim (`mot run`). Without one, it samples an action chunk from an untrained `small` policy
for an instruction and prints the inference benchmark, so the whole model path still runs end to end.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mot demo", description=__doc__.splitlines()[0])
    parser.add_argument("instruction", nargs="?", default="put the red cube on the blue pad")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from training.paths import default_checkpoint

    if default_checkpoint() is not None:
        from training.run import main as run_main

        rc = run_main([args.instruction, "--seed", str(args.seed)])
        return 0 if rc in (0, 1) else rc  # 1 = the episode ran but failed: the demo itself worked

    from policy import MoTPolicy, PolicyConfig
    from policy.runtime import PolicyRunner

    cfg = PolicyConfig.preset("small")
    runner = PolicyRunner(MoTPolicy(cfg))
    rng = np.random.default_rng(args.seed)
    images = {cam: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for cam in cfg.cameras}
    t0 = time.perf_counter()
    chunk = runner.infer(images, np.zeros(cfg.state_dim, np.float32), args.instruction)
    print(f"instruction: {args.instruction!r}")
    print(f"action chunk {chunk.shape} (untrained small policy) in {(time.perf_counter() - t0) * 1e3:.1f} ms:")
    print(np.array2string(chunk[:3], precision=3, suppress_small=True), "...")
    from training.bench import main as bench_main

    print(json.dumps({"note": "inference benchmark follows"}))
    return bench_main(["inference", "--json", "--iters", "5"])


if __name__ == "__main__":
    raise SystemExit(main())
