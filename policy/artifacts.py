"""Files the project writes: one atomic-write helper for everything (datasets, checkpoints, graphs,
engines, videos, eval results), and sha256 of files.

A file appears under its final name only once it is complete: it is written to a temporary name in the
same directory, fsynced, then renamed (`os.replace` is atomic on POSIX), so a crash leaves the previous
version or nothing, never half a file. Unlike a bare `tempfile.mkstemp` (mode 0600), the result gets the
mode a plain `open()` would give, 0666 & ~umask (0644 under the usual umask 022), so a teammate or a
container user can read what another user wrote. Directories made here follow the umask too (0755).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block ends without an error, the file written
    there is fsynced and renamed onto `path` (mode 0666 & ~umask). On an error it is removed.

    suffix: the temporary name's extension, for writers that pick a format from it (".mp4", ".onnx").
    Side files a writer adds next to it (ONNX external data: "<tmp>.data") are removed too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes `data` to `path` atomically (see the module docstring). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def fsync_file(path: str | Path) -> None:
    """Flushes a file written in place inside a temporary directory that is renamed as a whole later
    (a checkpoint directory): the rename of the directory is the atomic step."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def make_dirs(path: str | Path) -> Path:
    """mkdir -p with the umask's mode (0755 under umask 022), unlike tempfile.mkdtemp's 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty directory next to `path` (same filesystem, so it can be renamed onto it), with the
    umask's mode: tempfile.mkdtemp makes 0700, which would make the final directory unreadable to others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
