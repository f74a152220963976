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
