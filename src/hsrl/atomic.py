"""Atomic file writes: a temporary file in the target's folder, fsynced and renamed into place.

Every output of hsrl (chunks, checkpoints, metrics logs, statistics, run state) is written through `atomic_path`, so a
crash never leaves a half-written file under a final name. Imports nothing of hsrl: data, rl and serve all use it.
"""

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows opening a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield an open binary file in `path`'s folder; on success fsync it and `os.replace` it onto `path`.

    On an exception the temporary file is removed and `path` is untouched. The temporary name starts
    with a dot and ends in `.tmp`, so it never matches `chunk_*.npz`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (JSON summaries) atomically."""
    with atomic_path(path) as f:
        f.write(text.encode())
    return Path(path)

