"""Small synthetic datasets for the hsrl.data tests."""

import json

import numpy as np

from hsrl.data import ChunkMeta, chunk_path, write_chunk

ACHIEVEMENTS = ("collect_wood", "place_table", "eat_cow")
SPEC = json.dumps({"model": "tiny", "layer": -1, "tokens": 1, "pooling": "mean"})


CLASSIC_OBS = 1345  # Craftax-Classic's symbolic observation width (readers check it against the env)
CLASSIC_FRAME = (63, 63, 3)  # and its pixel frame


def make_arrays(rng, steps, num_envs, *, pixels=False, hidden=None, p_done=0.15, text=True, achievements=False):
    n = steps * num_envs
    if pixels:
        obs = rng.random((n, *CLASSIC_FRAME), dtype=np.float32)
    else:
        obs = rng.standard_normal((n, CLASSIC_OBS)).astype(np.float32)
    arrays = {
        "obs": obs,
        "next_obs": obs[::-1].copy(),
        "action": rng.integers(0, 17, n),
        "reward": rng.standard_normal(n).astype(np.float32),
        "done": rng.random(n) < p_done,
        "log_prob": -rng.random(n).astype(np.float32),
    }
    if text:
        arrays["text_obs"] = np.array([f"row {i}: trees ü" * (i % 3) for i in range(n)])
    if hidden is not None:
        arrays["hidden_state"] = hidden(n)
    if achievements:
        arrays["achievements"] = (rng.random((n, len(ACHIEVEMENTS))) < 0.5) & arrays["done"][:, None]
    return arrays


def make_meta(num_envs, *, pixels=False, first_step=0, spec=None, achievements=False, **kw):
    return ChunkMeta(env_name="Craftax-Classic-Pixels-v1" if pixels else "Craftax-Classic-Symbolic-v1",
                     num_envs=num_envs, obs_kind="pixels" if pixels else "symbolic", first_step=first_step,
                     spec_json=spec, achievement_names=ACHIEVEMENTS if achievements else (), **kw)


def make_dataset(folder, rng, *, files=3, steps=7, num_envs=3, pixels=False, hidden=None, spec=None,
                 achievements=False, p_done=0.15):
    """Write consecutive chunks; return the list of arrays dicts written (as stored, via write_chunk)."""
    written = []
    for i in range(files):
        arrays = make_arrays(rng, steps, num_envs, pixels=pixels, hidden=hidden, achievements=achievements,
                             p_done=p_done)
        meta = make_meta(num_envs, pixels=pixels, first_step=i * steps, spec=spec, achievements=achievements)
        write_chunk(chunk_path(folder, i), arrays, meta)
        written.append(arrays)
    return written


# ------------------------------------------------------------------------------------------ per-token hidden states


def token_states(rng, n, width, hidden_size, *, dtype=np.float16, padding=0.0, center=None, noise=1.0):
    """(n, width, H) per-token states and (n,) int32 valid-token counts, laid out as `hsrl label
    --save-token-states` writes them: row i's tokens at positions < counts[i] (1..width, the first row full), the
    rest `padding` (zeros in real files; a nonzero value makes a reader that averages padding wrong). Tokens are
    `center` (n, H) (default 0) plus `noise` x standard normal."""
    counts = rng.integers(1, width + 1, n).astype(np.int32)
    counts[0] = width
    states = noise * rng.standard_normal((n, width, hidden_size))
    if center is not None:
        states += np.asarray(center, np.float64)[:, None, :]
    states = states.astype(dtype)
    states[np.arange(width)[None, :] >= counts[:, None]] = padding
    return states, counts


def pooled_reference(states, counts, pooling="mean"):
    """What labelling stores for these token states, computed independently in float64: the mean of each row's
    valid tokens ('mean') or its last valid token ('last')."""
    states = np.asarray(states, np.float64)
    if pooling == "last":
        return states[np.arange(len(states)), np.asarray(counts) - 1]
    return np.stack([s[:c].mean(axis=0) for s, c in zip(states, counts)])


def labelling_pool(states, counts, pooling="mean"):
    """The pooled rows labelling stores for these token states: `hsrl.llm.pooling.pool` (the one pooling function
    the backends call) over the valid tokens, float32."""
    import torch

    from hsrl.llm.pooling import pool

    mask = np.arange(states.shape[1])[None, :] < np.asarray(counts)[:, None]
    return pool(torch.from_numpy(np.ascontiguousarray(states)), torch.from_numpy(mask), pooling).numpy()


def token_twins(src, token_dir, pooled_dir, rng, *, width=4, noise=0.1, counts=True, padding=0.0):
    """Two copies of the labelled folder `src` (pooled (N, H) hidden_state): `token_dir` with per-token states
    (N, width, H) float16 scattered around each pooled row (with `hidden_tokens` unless `counts` is False), and
    `pooled_dir` with what labelling stores for those very tokens (`labelling_pool`; over all positions without
    counts). Every other key and the meta are copied. Returns the list of (states, counts) written."""
    from hsrl.data import list_chunks, read_chunk

    written = []
    for d in (token_dir, pooled_dir):
        d.mkdir(parents=True, exist_ok=True)
    for path in list_chunks(src):
        chunk = read_chunk(path)
        hidden = chunk["hidden_state"]
        states, valid = token_states(rng, len(hidden), width, hidden.shape[1], center=hidden, noise=noise,
                                     padding=padding)
        if not counts:  # as other tools write them: every position a token, no counts stored
            valid = np.full(len(hidden), width, np.int32)
            states = (noise * rng.standard_normal(states.shape) + hidden[:, None, :]).astype(np.float16)
        arrays = {k: v for k, v in chunk.arrays.items() if k not in ("hidden_state", "hidden_tokens")}
        write_chunk(token_dir / path.name, {**arrays, "hidden_state": states,
                                            **({"hidden_tokens": valid} if counts else {})}, chunk.meta)
        write_chunk(pooled_dir / path.name, {**arrays, "hidden_state": labelling_pool(states, valid)}, chunk.meta)
        written.append((states, valid))
    return written
