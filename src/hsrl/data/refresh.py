"""Offline data read as online PPO reads it: each row's hidden state is its environment's state at the last refresh
(`hsrl train-awr --hidden-skip-n N`).

Online PPO (`hsrl.rl.live.refresh`) gives every environment a new state every N environment steps (all at once, at
steps 0, N, 2N, ... counted since the run began, whatever the episodes do) and, at once, to an environment whose
episode just began; in between an environment acts on the state of its last refresh. `refresh_rows` computes, for
each row of time-major data (`row = t * num_envs + env`, across consecutive chunk files), the row whose state it
reads under that schedule, vectorised over the (T, E) grid; `hold_hidden` gathers them. Steps are counted from the
collection's step `first_step` of the first row; the first row of the data is a refresh for every environment
(no earlier state is in the data), as step 0 of an online run is.
"""

from __future__ import annotations

import numpy as np

HOLD_BLOCK_ROWS = 65536  # rows gathered per step of `hold_hidden`


def refresh_rows(done: np.ndarray, num_envs: int, skip_n: int, first_step: int = 0) -> np.ndarray:
    """(N,) int64: for each time-major row, the row whose hidden state it reads when states are refreshed every
    `skip_n` steps (at collection steps that are multiples of `skip_n`) and at each episode start (the row after a
    `done`), each environment keeping its last state in between. `skip_n` 1: every row reads its own."""
    done = np.asarray(done, bool)
    if done.ndim != 1 or len(done) % num_envs:
        raise ValueError(f"done must be (N,) with N a multiple of num_envs {num_envs}, got shape {done.shape}")
    if skip_n < 1:
        raise ValueError(f"skip_n must be at least 1, got {skip_n}")
    steps = len(done) // num_envs
    t = np.arange(steps, dtype=np.int64)[:, None]
    start = np.zeros((steps, num_envs), bool)
    start[0] = True  # the data's first row: every environment gets its state
    start[1:] = done.reshape(steps, num_envs)[:-1]  # the row after an episode's last step begins the next
    start |= (first_step + t) % skip_n == 0  # the periodic refresh of every environment
    last = np.maximum.accumulate(np.where(start, t, -1), axis=0)  # the step of each row's last refresh
    return (last * num_envs + np.arange(num_envs)).reshape(-1)


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
