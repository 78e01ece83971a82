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
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Removes what a killed writer of `path` left beside it: temporaries named `.<name>.<pid>.*.tmp*`
    (and `.old-<pid>` directories) whose process no longer runs. A live writer's are kept."""
    for other in path.parent.glob(f".{glob_escape(path.name)}.*"):
        parts = other.name[len(path.name) + 2:].split(".", 1)
        pid = parts[0].removeprefix("old-")
        if pid.isdigit() and (".tmp" in other.name or parts[0].startswith("old-")) and not _alive(int(pid)):
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


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
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent)
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


def atomic_directory(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Atomically (re)creates `directory` (a checkpoint): `write(tmp)` fills a temporary
    sibling directory with plain writes; every file in it is fsynced, then the directory is renamed into place.

    The old directory (if any) is moved aside first and removed only after the new one is in place, so a
    crash leaves either the old or the new directory under the real name (at worst a hidden `.old-` one).
    """
    directory = Path(directory)
    tmp = temp_dir_beside(directory)
    try:
        write(tmp)
        mask = current_umask()
        for path in sorted(tmp.rglob("*")):
            # Writers that make their own temp files (safetensors: 0600) get the mode open() would give.
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")  # (see remove_stale_temps)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty directory next to `path` (same filesystem, so it can be renamed onto it), with the
    umask's mode: tempfile.mkdtemp makes 0700, which would make the final directory unreadable to others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
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
