"""Discounted returns-to-go across consecutive chunk files (`hsrl returns`).

One backward pass over the files (last chunk first) carries each environment's running return, so an
episode that spans files gets its full return. Within a file the recursion
`G[t] = r[t] + gamma * (1 - done[t]) * G[t+1]` runs over the `(T, num_envs)` view, vectorised over
environments, in float64; `return_to_go` is stored as float32. Rows whose episode has not ended by the
end of the data get `return_truncated = True` (their return counts only the rewards that were seen); so do rows
of episodes still running where a segment ends (`ChunkMeta.segment`: a gap in the recording), and no return
spans a gap.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from hsrl.atomic import remove_temporaries
from hsrl.data.chunks import (
    check_consecutive, inspect_chunk, list_chunks, progress, read_chunk, starts_segment, write_chunk,
)
from hsrl.errors import InputError


@dataclasses.dataclass(frozen=True)
class ReturnsConfig:
    """Add discounted returns-to-go to every chunk of a dataset folder.

    Computes `return_to_go` (float32) per environment across consecutive chunk files, so an episode
    that spans files gets its full discounted return, and `return_truncated` (bool) for rows whose
    episode was still running at the end of the data. Each chunk is rewritten atomically; the gamma is
    recorded in its metadata. Rerun after collecting more chunks.
    """

    directory: str = dataclasses.field(metadata={"positional": True,
                                                 "help": "dataset folder of chunk_NNNNNN.npz files"})
    gamma: float = dataclasses.field(default=0.99, metadata={"help": "discount factor, in [0, 1]"})
    progress: bool = dataclasses.field(default=True, metadata={"help": "show a progress bar over files"})

    def check(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise InputError(f"--gamma must lie in [0, 1], got {self.gamma}")
        list_chunks(self.directory)  # the folder exists and holds chunks


def discounted_returns(reward: np.ndarray, done: np.ndarray, gamma: float,
                       next_return: np.ndarray, next_truncated: np.ndarray):
    """Returns-to-go of a (T, E) block given the carry from the block after it.

    `next_return` (E,) is the return-to-go at the first step after the block and `next_truncated` (E,)
    whether that episode is unfinished at the end of the data (True after the last block, with zeros).
    Returns (return (T, E) float64, truncated (T, E) bool, carry return (E,), carry truncated (E,)).
    """
    reward = np.asarray(reward, np.float64)
    done = np.asarray(done, bool)
    g = np.array(next_return, np.float64, copy=True)
    trunc = np.array(next_truncated, bool, copy=True)
    out = np.empty(reward.shape, np.float64)
    out_trunc = np.empty(reward.shape, bool)
    for t in range(reward.shape[0] - 1, -1, -1):
        g = reward[t] + gamma * np.where(done[t], 0.0, g)
        trunc = trunc & ~done[t]
        out[t], out_trunc[t] = g, trunc
    return out, out_trunc, g, trunc


def add_returns(directory: str | os.PathLike, gamma: float = 0.99, *, show_progress: bool = True) -> dict:
    """Add `return_to_go` and `return_truncated` to every chunk in `directory`, all or nothing.

    Chunks must be consecutive (same env and num_envs; `first_step`s that follow on within a segment); the carry
    is cut where a segment starts, so episodes running into a gap are truncated there. Meta records
    `return_gamma`. Every new chunk is written to a temporary file first and renamed into place only once all of
    them are written, so a corrupt chunk (or a crash) leaves every file as it was, never a mix of gammas; this
    needs room for a second copy of the data meanwhile. Safe to rerun (e.g. with another gamma, or after more
    chunks were collected, which changes the returns of the last episodes). Returns a summary dict.
    """
    if not 0.0 <= gamma <= 1.0:
        raise InputError(f"gamma must lie in [0, 1], got {gamma}")
    files = list_chunks(directory)
    infos = [inspect_chunk(p) for p in files]
    check_consecutive(infos)
    starts = starts_segment(infos)
    num_envs = infos[0].meta.num_envs
    g = np.zeros(num_envs, np.float64)
    trunc = np.ones(num_envs, bool)  # after the data every running episode is cut off
    for name_glob in ("chunk_*.npz", ".chunk_*.npz.returns.tmp"):  # staged files of a killed run
        remove_temporaries(directory, name_glob)
    rows = truncated = 0
    staged: list[tuple[Path, Path]] = []
    try:
        for i in progress(range(len(files) - 1, -1, -1), "returns", show_progress):
            path = files[i]
            if i + 1 < len(files) and starts[i + 1]:  # a gap after this file: its running episodes are cut off
                g, trunc = np.zeros(num_envs, np.float64), np.ones(num_envs, bool)
            chunk = read_chunk(path)
            ret, ret_trunc, g, trunc = discounted_returns(
                chunk.time_major("reward"), chunk.time_major("done"), gamma, g, trunc)
            arrays = dict(chunk.arrays)
            arrays["return_to_go"] = ret.reshape(-1).astype(np.float32)
            arrays["return_truncated"] = ret_trunc.reshape(-1)
            stage = path.parent / f".{path.name}.returns.tmp"  # a temporary's name: never read as a chunk
            staged.append((stage, path))
            write_chunk(stage, arrays, dataclasses.replace(chunk.meta, return_gamma=float(gamma)))
            rows += chunk.num_rows
            truncated += int(ret_trunc.sum())
    except BaseException:
        for stage, _ in staged:
            stage.unlink(missing_ok=True)
        raise
    for stage, path in staged:
        os.replace(stage, path)
    replaced = sorted({i.meta.return_gamma for i in infos if i.meta.return_gamma not in (None, float(gamma))})
    return {"directory": str(Path(directory)), "files": len(files), "rows": rows, "gamma": float(gamma),
            "truncated_rows": truncated, "replaced_gammas": replaced, "segments": sum(starts)}
