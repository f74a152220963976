"""Synthetic datasets for the hsrl.rl tests."""

import dataclasses
import json
from pathlib import Path

import numpy as np

from hsrl.data import ChunkMeta, add_returns, chunk_path, write_chunk

ENV = "Craftax-Classic-Symbolic-v1"  # 17 actions
NUM_ACTIONS = 17
SPEC = json.dumps({"model": "tiny", "layer": -1, "tokens": 1, "pooling": "mean"})


OBS_DIM = 1345  # Craftax-Classic's symbolic width; readers check it against the env


def _noise_obs(rng, n, noisy=8):
    """Observations of the env's width that carry nothing: a few noise dimensions, zeros elsewhere (compress well)."""
    obs = np.zeros((n, OBS_DIM), np.float32)
    obs[:, :noisy] = rng.standard_normal((n, noisy))
    return obs


def hidden_task_arrays(rng, n, *, hidden_size=24, reward=10.0, noise=0.1):
    """Rows where the best action is written only in the hidden state.

    `best` is uniform over the actions; the hidden state is one_hot(best) plus Gaussian noise, padded
    with noise dimensions to `hidden_size`; the observation is pure noise; the behaviour action is
    uniform; every row is a one-step episode whose reward is `reward` when action == best, else 0.
    """
    best = rng.integers(0, NUM_ACTIONS, n)
    hidden = noise * rng.standard_normal((n, hidden_size)).astype(np.float32)
    hidden[np.arange(n), best] += 1.0
    obs = _noise_obs(rng, n)
    action = rng.integers(0, NUM_ACTIONS, n)
    arrays = {
        "obs": obs,
        "next_obs": _noise_obs(rng, n),
        "action": action,
        "reward": np.where(action == best, reward, 0.0).astype(np.float32),
        "done": np.ones(n, bool),
        "hidden_state": hidden.astype(np.float16),
    }
    return arrays, best


def write_hidden_task(folder, rng, *, files=4, rows_per_file=2048, num_envs=8, spec=SPEC, hidden_size=24,
                      returns=True, **kw):
    """Write the hidden-state task as a dataset folder (with return_to_go unless `returns` is False)."""
    steps = rows_per_file // num_envs
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        arrays, _ = hidden_task_arrays(rng, rows_per_file, hidden_size=hidden_size, **kw)
        meta = ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic", first_step=i * steps, spec_json=spec)
        write_chunk(chunk_path(folder, i), arrays, meta)
    if returns:
        add_returns(folder, 0.99, show_progress=False)
    return folder


def respec(folder, spec):
    """Rewrite every chunk's extraction spec (as if labelled by another model or layer)."""
    from hsrl.data import list_chunks, read_chunk

    for path in list_chunks(folder):
        chunk = read_chunk(path)
        write_chunk(path, chunk.arrays, dataclasses.replace(chunk.meta, spec_json=spec))
