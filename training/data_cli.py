"""`mot data info DIR` and `mot data video DIR --episode K`: look inside a collected dataset."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from training.data import load_manifest, read_episodes
from training.video import compose, write_video


def info(directory: Path) -> dict:
    manifest = load_manifest(directory)
    eps = manifest["episodes"].values()
    size = sum(p.stat().st_size for p in directory.glob("episode_*.npz"))
    return {
        "dir": str(directory), "env": manifest["env"], "split": manifest["split"], "cameras": manifest["cameras"],
        "image_size": manifest["image_size"], "episodes": len(manifest["episodes"]),
        "dropped": len(manifest["dropped"]), "steps": sum(e["steps"] for e in eps),
        "episodes_per_task": dict(Counter(e["task"] for e in eps)), "bytes_on_disk": size,
        "unique_instructions": len({e["instruction"] for e in eps}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mot data", description="Inspect a dataset made by `mot collect`.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="counts and sizes (JSON)")
    pi.add_argument("dir", type=Path)
    pv = sub.add_parser("video", help="write one episode as an mp4")
    pv.add_argument("dir", type=Path)
    pv.add_argument("--episode", type=int, required=True, help="episode seed (as in episode_<seed>.npz)")
    pv.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "info":
        print(json.dumps(info(args.dir), indent=2))
        return 0
    manifest, episodes = read_episodes(args.dir)
    match = [ep for ep in episodes if ep.seed == args.episode]
    if not match:
        print(f"mot data video: no readable episode with seed {args.episode} in {args.dir} "
              f"(have {sorted(ep.seed for ep in episodes)[:10]}...)")
        return 2
    ep = match[0]
    frames = [compose({cam: ep.decode_frame(cam, t) for cam in manifest["cameras"]}, ep.instruction)
              for t in range(ep.steps)]
    out = write_video(args.out or args.dir / f"episode_{ep.seed:06d}.mp4", frames)
    print(f"wrote {out} ({ep.steps} frames, task {ep.task}: {ep.instruction!r})")
    return 0
