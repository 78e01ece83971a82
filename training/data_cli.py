"""`mot data info|video|import|export`: look inside datasets, bring other robots' data in, send ours out.

    mot data info DIR                                   fps, episodes, frames, cameras, source format (JSON);
                                                        DIR: ours (collected or imported), a LeRobot dataset, a ROS 2 bag
    mot data video DIR --episode K                      one episode as an mp4 (cameras side by side)
    mot data import lerobot SRC --out DIR [--map m.yaml]    a LeRobot v3.0 / v2.1 dataset -> ours
    mot data import rosbag BAG --out DIR --topics t.yaml    a ROS 2 bag (mcap / sqlite3) -> ours
    mot data export DIR --format lerobot --out DST      ours -> LeRobot v3.0 (LeRobot, openpi, GR00T read it)

Each command's options come from its config dataclass below (tyro): `mot data import lerobot --help`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.conf import Positional

from policy.errors import InputError
from policy.options import parse
from training.features import dataset_features
from training.lerobot_export import export_lerobot
from training.lerobot_import import import_lerobot, lerobot_features
from training.lerobot_layout import LeRobotSource
from training.manifest import load_manifest, read_episodes
from training.rosbag_import import bag_info, import_rosbag
from training.video import compose, write_video


# -- configs -------------------------------------------------------------------------------------------
@dataclass
class InfoConfig:
    """Counts, sizes, fps, cameras and source format of a dataset (JSON on stdout)."""

    dir: Positional[Annotated[Path, tyro.conf.arg(metavar="DIR")]]
    """a dataset: ours (collected or imported), a LeRobot dataset root (meta/info.json) or a ROS 2 bag"""


@dataclass
class VideoConfig:
    """One episode as an mp4: the cameras side by side, the instruction on top."""

    dir: Positional[Annotated[Path, tyro.conf.arg(metavar="DIR")]]
    """our dataset directory"""
    episode: int
    """episode seed (as in episode_<seed>.npz)"""
    out: Path | None = None
    """mp4 to write (default DIR/episode_<seed>.mp4)"""


@dataclass
class ImportLerobotConfig:
    """A LeRobot dataset on disk (v3.0 or v2.1) -> our training dataset (resumable)."""

    src: Positional[Annotated[Path, tyro.conf.arg(metavar="SRC")]]
    """the LeRobot dataset's root (the folder with meta/info.json)"""
    out: Path
    """our dataset directory to write (an existing import of the same source is resumed)"""
    map: Path | None = None
    """mapping YAML {cameras: {name: feature}, state: [features], action: [features], delta_action_mask: [...]};
    default: every image/video feature is a camera, state observation.state, action action"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        if not (self.src / "meta" / "info.json").is_file():
            raise InputError(f"src: expected a LeRobot dataset root with meta/info.json, received {self.src}")
        if self.map is not None and not self.map.is_file():
            raise InputError(f"map: expected a mapping YAML file, received {self.map} (no such file)")


@dataclass
class ImportRosbagConfig:
    """A ROS 2 bag (mcap or sqlite3, read with rosbags: no ROS install) -> our training dataset."""

    bag: Positional[Annotated[Path, tyro.conf.arg(metavar="BAG")]]
    """the bag directory (metadata.yaml + .mcap/.db3) or a single .mcap file"""
    out: Path
    """our dataset directory to write (must be new or an import of the same bag)"""
    topics: Path
    """topics YAML: cameras {name: topic}, state, action, instruction, optional episode_topic, fps, joints"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        if not self.bag.exists():
            raise InputError(f"bag: expected a ROS 2 bag directory or .mcap file, received {self.bag} (no such path)")
        if not self.topics.is_file():
            raise InputError(f"topics: expected a topics YAML file, received {self.topics} (no such file)")


@dataclass
class ExportConfig:
    """Our dataset -> another format on disk (LeRobot v3.0: parquet + H.264 mp4 + meta/)."""

    dir: Positional[Annotated[Path, tyro.conf.arg(metavar="DIR")]]
    """our dataset directory"""
    out: Path
    """the directory to create"""
    format: Literal["lerobot"] = "lerobot"
    """target format"""
    fps: float | None = None
    """frame rate to declare when the dataset records none (collected before fps was recorded)"""
    crf: int = 18
    """H.264 quality: 0 lossless, 18 visually lossless, higher is smaller"""
    overwrite: bool = False
    """replace OUT if it exists and is not empty"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        if not 0 <= self.crf <= 51:
            raise InputError(f"crf: expected 0..51, received {self.crf}")
        if self.fps is not None and not self.fps > 0:
            raise InputError(f"fps: expected a frame rate > 0, received {self.fps}")


def _cli(config, argv: list[str], prog: str):
    """argv -> the validated config (policy.options.parse: one-line InputError for a CLI mistake)."""
    return parse(config, argv, prog, (config.__doc__ or "").strip())


# -- commands ------------------------------------------------------------------------------------------
def info(directory: Path) -> dict:
    """`mot data info`: the dataset at `directory`, whatever its format."""
    directory = Path(directory)
    if (directory / "meta" / "info.json").is_file():
        source = LeRobotSource(directory)
        feats = lerobot_features(directory)
        return {"dir": str(directory), "source_format": source.format, "fps": source.fps,
                "episodes": len(source.episodes), "frames": int(source.info.get("total_frames") or
                                                                sum(e.get("length", 0) for e in source.episodes)),
                "cameras": list(feats.cameras), "image_shapes": {c: list(s) for c, s in feats.image_shapes.items()},
                "state_dim": feats.state_dim, "action_dim": feats.action_dim,
                "tasks": len(source.tasks), "robot_type": source.info.get("robot_type")}
    if (directory / "metadata.yaml").is_file() or directory.suffix in (".mcap", ".db3"):
        return bag_info(directory)
    manifest = load_manifest(directory)
    eps = manifest["episodes"].values()
    size = sum(p.stat().st_size for p in directory.glob("episode_*.npz"))
    feats = dataset_features(directory) if manifest["episodes"] else None
    steps = sum(e["steps"] for e in eps)
    return {
        "dir": str(directory), "source_format": (manifest.get("source") or {}).get("format", "mot collect"),
        "fps": manifest.get("fps"), "env": manifest["env"], "split": manifest["split"], "cameras": manifest["cameras"],
        "image_size": manifest["image_size"],
        "image_shapes": {c: list(s) for c, s in feats.image_shapes.items()} if feats else None,
        "state_dim": feats.state_dim if feats else None, "action_dim": feats.action_dim if feats else None,
        "episodes": len(manifest["episodes"]), "dropped": len(manifest["dropped"]), "frames": steps, "steps": steps,
        "episodes_per_task": dict(Counter(e["task"] for e in eps)), "bytes_on_disk": size,
        "unique_instructions": len({e["instruction"] for e in eps}),
    }


def _info(argv: list[str]) -> int:
    cfg = _cli(InfoConfig, argv, "mot data info")
    print(json.dumps(info(cfg.dir), indent=2))
    return 0


def _video(argv: list[str]) -> int:
    cfg = _cli(VideoConfig, argv, "mot data video")
    manifest, episodes = read_episodes(cfg.dir)
    match = [ep for ep in episodes if ep.seed == cfg.episode]
    if not match:
        raise InputError(f"episode: expected a readable episode's seed in {cfg.dir} "
                         f"(have {sorted(ep.seed for ep in episodes)[:10]}...), received {cfg.episode}")
    ep = match[0]
    frames = [compose({cam: ep.decode_frame(cam, t) for cam in manifest["cameras"]}, ep.instruction, step=t)
              for t in range(ep.steps)]
    out = write_video(cfg.out or cfg.dir / f"episode_{ep.seed:06d}.mp4", frames, fps=manifest.get("fps") or 10)
    print(f"wrote {out} ({ep.steps} frames, task {ep.task}: {ep.instruction!r})")
    return 0


def _imported(manifest: dict, rate: str, src: Path, out: Path) -> int:
    """Prints what an import wrote (`rate`: how the source states its fps) -> exit code 0."""
    frames = sum(e["steps"] for e in manifest["episodes"].values())
    print(f"imported {len(manifest['episodes'])} episodes ({frames} frames{rate}, cameras {manifest['cameras']}) "
          f"from {src} into {out}")
    return 0


def _import_lerobot(argv: list[str]) -> int:
    cfg = _cli(ImportLerobotConfig, argv, "mot data import lerobot")
    manifest = import_lerobot(cfg.src, cfg.out, cfg.map, progress=cfg.progress)
    return _imported(manifest, f", {manifest['fps']} fps", cfg.src, cfg.out)


def _import_rosbag(argv: list[str]) -> int:
    cfg = _cli(ImportRosbagConfig, argv, "mot data import rosbag")
    manifest = import_rosbag(cfg.bag, cfg.out, cfg.topics, progress=cfg.progress)
    return _imported(manifest, f" at {manifest['fps']} Hz", cfg.bag, cfg.out)


def _export(argv: list[str]) -> int:
    cfg = _cli(ExportConfig, argv, "mot data export")
    info_json = export_lerobot(cfg.dir, cfg.out, fps=cfg.fps, crf=cfg.crf, overwrite=cfg.overwrite, progress=cfg.progress)
    print(f"exported {info_json['total_episodes']} episodes ({info_json['total_frames']} frames) as LeRobot "
          f"{info_json['codebase_version']} into {cfg.out}")
    return 0


# name -> (function(argv) -> exit code, one-line help); "import" has its own table of sources.
IMPORTS = {"lerobot": (_import_lerobot, "a LeRobot dataset on disk (v3.0 or v2.1)"),
           "rosbag": (_import_rosbag, "a ROS 2 bag (mcap or sqlite3)")}
COMMANDS = {"info": (_info, "fps, episodes, frames, cameras, source format (JSON)"),
            "video": (_video, "write one episode as an mp4"),
            "import": (None, "bring a dataset in: `mot data import lerobot|rosbag ...`"),
            "export": (_export, "send a dataset out: `mot data export DIR --format lerobot --out DST`")}


def _usage(prog: str, table: dict) -> str:
    width = max(map(len, table))
    lines = [f"usage: {prog} <command> [args...]", "", __doc__.split("\n\n")[0], "", "commands:"]
    return "\n".join(lines + [f"  {n.ljust(width)}  {h}" for n, (_, h) in table.items()]
                     + ["", f"Run `{prog} <command> --help` for its options."])


def _dispatch(argv: list[str], table: dict, prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(prog, table))
        return 0
    if argv[0] not in table:
        print(f"{prog}: unknown command {argv[0]!r}\n\n{_usage(prog, table)}", file=sys.stderr)
        return 2
    func = table[argv[0]][0]
    if func is None:
        return _dispatch(argv[1:], IMPORTS, f"{prog} {argv[0]}")
    return int(func(argv[1:]) or 0)


def main(argv: list[str] | None = None) -> int:
    return _dispatch(list(sys.argv[1:] if argv is None else argv), COMMANDS, "mot data")


if __name__ == "__main__":
    raise SystemExit(main())
