"""Offline data read as online PPO reads it: each row's hidden state is its environment's state at the last refresh
(`hsrl train-awr --hidden-skip-n N`).

Online PPO (`hsrl.rl.live.refresh`) gives every environment a new state every N environment steps (all at once, at
steps 0, N, 2N, ... counted since the run began, whatever the episodes do) and, at once, to an environment whose
episode just began; in between an environment acts on the state of its last refresh. `refresh_rows` computes, for
each row of time-major data (`row = t * num_envs + env`, across consecutive chunk files), the row whose state it
reads under that schedule, vectorised over the (T, E) grid; `hold_hidden` gathers them. Steps are counted from the
collection's step `first_step` of the first row; the first row of the data is a refresh for every environment
(no earlier state is in the data), as step 0 of an online run is.

Segments (`ChunkMeta.segment`: a gap in imported data, or the chunks of `online --save-trajectories-every N`): the
first row after a gap is a refresh for every environment too (the state it would read is not in the data), and the
periodic refreshes after it fall on the segment's own collection steps: its first file's `first_step` where the
data records one (the steps online PPO refreshed at), else counted from the gap (`refresh_rows_of`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hsrl.data.chunks import ChunkInfo, episode_starts, segment_start_rows, starts_segment

HOLD_BLOCK_ROWS = 65536  # rows gathered per step of `hold_hidden`


def refresh_rows(done: np.ndarray, num_envs: int, skip_n: int, first_step: int | Sequence[int] = 0,
                 segment_start: np.ndarray | None = None) -> np.ndarray:
    """(N,) int64: for each time-major row, the row whose hidden state it reads when states are refreshed every
    `skip_n` steps (at collection steps that are multiples of `skip_n`) and at each episode start (the first row,
    the row after a `done`, and the rows of `segment_start`, (N,) bool (`hsrl.data.chunks.segment_start_rows`): a
    segment's first step), each environment keeping its last state in between. `first_step`: the collection step of
    each segment's first row, one int for all or one per segment. `skip_n` 1: every row reads its own."""
    if skip_n < 1:
        raise ValueError(f"skip_n must be at least 1, got {skip_n}")
    start = episode_starts(done, num_envs, segment_start)  # validates done and segment_start
    steps = len(start)
    t = np.arange(steps, dtype=np.int64)
    first_row = np.zeros(steps, bool)
    first_row[:1] = True
    if segment_start is not None:
        grid = np.asarray(segment_start, bool).reshape(steps, num_envs)
        if (grid.any(axis=1) != grid.all(axis=1)).any():
            raise ValueError("segment_start must mark every environment of a step or none (a segment starts at a step)")
        first_row |= grid[:, 0]
    seg = np.cumsum(first_row) - 1  # each step's segment
    seg_t0 = np.flatnonzero(first_row)  # the step each segment begins at
    firsts = np.asarray(first_step, np.int64)
    if firsts.ndim > 1 or (firsts.ndim == 1 and len(firsts) != len(seg_t0)) or (firsts < 0).any():
        raise ValueError(f"first_step must be a non-negative int or one per segment ({len(seg_t0)}), "
                         f"got {first_step!r}")
    collection_step = np.broadcast_to(firsts, seg_t0.shape)[seg] + t - seg_t0[seg]
    start |= (collection_step % skip_n == 0)[:, None]  # the periodic refresh of every environment
    last = np.maximum.accumulate(np.where(start, t[:, None], -1), axis=0)  # the step of each row's last refresh
    return (last * num_envs + np.arange(num_envs)).reshape(-1)


def refresh_rows_of(infos: Sequence[ChunkInfo], done: np.ndarray, skip_n: int) -> np.ndarray:
    """`refresh_rows` of the rows of chunk files `infos` (consecutive, in time order: `check_consecutive`; `done`
    their rows concatenated): a refresh at every segment's first row, and the periodic ones at the collection steps
    of each segment (its first file's `first_step`, counted from the segment's first row where that is unknown)."""
    num_envs = infos[0].meta.num_envs
    infos = [info for info in infos if info.num_rows]  # a file without rows starts nothing
    firsts = [info.meta.first_step or 0 for info, start in zip(infos, starts_segment(infos)) if start]
    return refresh_rows(done, num_envs, skip_n, firsts, segment_start_rows(infos))


def hold_hidden(hidden: np.ndarray, source: np.ndarray, block: int = HOLD_BLOCK_ROWS) -> np.ndarray:
    """`hidden[source]`, block by block: in place when `hidden` is writable (safe: every source row is its own
    source, so no row read is overwritten), else into a new array (a read-only memory-mapped cache stays as it
    is)."""
    out = hidden if hidden.flags.writeable else np.empty(hidden.shape, hidden.dtype)
    for i in range(0, len(hidden), block):
        src = source[i:i + block]
        if out is hidden:
            moved = np.flatnonzero(src != np.arange(i, i + len(src)))
            out[i + moved] = hidden[src[moved]]
        else:
            out[i:i + len(src)] = hidden[src]
    return out
