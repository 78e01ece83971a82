"""The one atomic-write helper: all or nothing, the umask's modes (not mkstemp's 0600), and what a killed
writer left behind is cleaned up by the next writer."""

import os
import stat
import subprocess
import sys

import pytest

from policy.artifacts import atomic_directory, atomic_path, atomic_write_bytes, remove_stale_temps


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_directories_get_the_umask_modes(tmp_path, umask):
    assert mode(atomic_write_bytes(tmp_path / "a.json", b"{}")) == 0o644

    def write(tmp):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x")
        (tmp / "secret").write_bytes(b"y")
        os.chmod(tmp / "secret", 0o600)  # as safetensors' own temp file comes out

    ckpt = atomic_directory(tmp_path / "ckpt", write)
    assert (mode(ckpt), mode(ckpt / "sub"), mode(ckpt / "sub" / "x.bin"), mode(ckpt / "secret")) == \
        (0o755, 0o755, 0o644, 0o644)
    umask(0o027)
    assert mode(atomic_write_bytes(tmp_path / "b.json", b"{}")) == 0o640


def test_a_failed_write_leaves_the_old_version_and_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "f.txt", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_dir = tmp_path / f".checkpoint.{dead}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    stale_file = tmp_path / f".checkpoint.{dead}.xyz.tmp.mp4"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".checkpoint.{os.getpid()}.def.tmp"  # a writer that still runs: kept
    live.mkdir()
    other = tmp_path / f".checkpoints.{dead}.q.tmp"  # another file's temporary: not ours to remove
    other.mkdir()
    remove_stale_temps(tmp_path / "checkpoint")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists() and other.exists()
