"""Atomic file writes: a temporary file in the target's folder, fsynced and renamed into place.

Every output of hsrl (chunks, checkpoints, metrics logs, statistics, run state) is written through `atomic_path`, so a
crash never leaves a half-written file under a final name. Imports nothing of hsrl but its errors: data, rl and
serve all use it. A full disk is one `DiskFullError` naming the folder; `remove_temporaries` clears what killed
writers left.
"""

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from hsrl.errors import UserError


class DiskFullError(UserError, OSError):
    """No space (or quota) left where a file was being written; nothing was written under its final name."""


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    if isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(f"no space left in {path.parent} while writing {path.name} ({err.strerror}); "
                            f"nothing was written under that name: free some space and rerun to resume") from None


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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        _raise_if_disk_full(err, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_disk_full(err, path)
        raise
    _fsync_dir(path.parent)


def remove_temporaries(folder: str | os.PathLike, name_glob: str) -> list[Path]:
    """Delete the temporary files that `atomic_path` left in `folder` for final names matching `name_glob` (a
    process killed while writing leaves `.NAME.XXXX.tmp`). Call it only where no other process writes."""
    stale = list(Path(folder).glob(f".{name_glob}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (JSON summaries) atomically."""
    with atomic_path(path) as f:
        f.write(text.encode())
    return Path(path)

