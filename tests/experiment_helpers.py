"""Synthetic experiment data: the hidden-state task of rl_helpers, with held-out expert rows."""

from pathlib import Path

import numpy as np
from rl_helpers import ENV, NUM_ACTIONS, OBS_DIM, SPEC, hidden_task_arrays, write_hidden_task

from hsrl.data import ChunkMeta, chunk_path, list_chunks, read_chunk, update_chunk, write_chunk


def write_expert_rows(folder, rng, per_action=120, num_envs=8, **kw):
    """Held-out rows of the hidden-state task whose action is the best one (what a policy should do), the
    same number of rows per action: a policy's preference for some actions then earns it nothing, so on
    this set only what it reads from a row can raise its score."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    arrays, best = hidden_task_arrays(rng, 4 * per_action * NUM_ACTIONS, **kw)
    keep = np.sort(np.concatenate([np.flatnonzero(best == a)[:per_action] for a in range(NUM_ACTIONS)]))
    keep = keep[: len(keep) // num_envs * num_envs]
    arrays = {k: v[keep] for k, v in arrays.items()}
    arrays["action"] = best[keep]
    write_chunk(chunk_path(folder, 0), arrays, ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic",
                                                         first_step=0, spec_json=SPEC))
    return folder


def noise_hidden(folder, rng):
    """Replace every hidden state by Gaussian noise of the same shape: nothing about the action is left."""
    for path in list_chunks(folder):
        h = read_chunk(path, ["hidden_state"])["hidden_state"]
        update_chunk(path, {"hidden_state": rng.standard_normal(h.shape).astype(h.dtype)})
    return folder


def obs_map_hidden(folder, matrix):
    """Move the task's answer into the observation (one-hot of the best action in dimensions 8..24) and make
    the hidden state a fixed random linear map of that observation: it carries nothing the observation lacks."""
    for path in list_chunks(folder):
        chunk = read_chunk(path, ["obs", "hidden_state"])
        obs, h = chunk["obs"].copy(), chunk["hidden_state"]
        best = np.argmax(h[:, :NUM_ACTIONS].astype(np.float32), axis=1)  # one_hot(best) + 0.1 noise
        obs[:, 8:8 + NUM_ACTIONS] = np.eye(NUM_ACTIONS, dtype=np.float32)[best]
        update_chunk(path, {"obs": obs, "hidden_state": (obs @ matrix).astype(h.dtype)})
    return folder


def task_pair(root, seed, noise=False, obs_map=False, rows_per_file=2048, files=2):
    """(train, held-out) folders of the hidden-state task. With `noise` the hidden states carry nothing; with
    `obs_map` the answer is in the observation and the hidden state is a random linear map of it."""
    rng = np.random.default_rng(seed)
    train = write_hidden_task(Path(root) / "train", rng, files=files, rows_per_file=rows_per_file)
    held = write_expert_rows(Path(root) / "heldout", rng)
    if noise:
        noise_hidden(train, rng)
        noise_hidden(held, rng)
    if obs_map:
        width = read_chunk(list_chunks(train)[0], ["hidden_state"])["hidden_state"].shape[1]
        matrix = rng.standard_normal((OBS_DIM, width)).astype(np.float32) / np.sqrt(NUM_ACTIONS)
        obs_map_hidden(train, matrix)
        obs_map_hidden(held, matrix)
    return train, held
