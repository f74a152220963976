"""Returns-to-go across chunk files against a brute-force per-environment reference."""

import dataclasses

import numpy as np
import pytest
from data_helpers import make_arrays, make_dataset, make_meta

from hsrl.cli import main
from hsrl.data import DataFileError, add_returns, chunk_path, list_chunks, read_chunk, read_meta, write_chunk


def reference_returns(reward, done, gamma):
    """Per env, per step: sum of discounted rewards until the episode's done (inclusive), and truncation."""
    steps, num_envs = reward.shape
    ret = np.zeros((steps, num_envs))
    trunc = np.zeros((steps, num_envs), bool)
    for e in range(num_envs):
        for t in range(steps):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * reward[k, e]
                if done[k, e]:
                    break
                k += 1
                if k == steps:
                    trunc[t, e] = True
                    break
            ret[t, e] = total
    return ret, trunc


def _time_env(folder, key):
    chunks = [read_chunk(p) for p in list_chunks(folder)]
    return np.concatenate([c.time_major(key) for c in chunks])


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_returns_match_brute_force_across_files(tmp_path, gamma):
    rng = np.random.default_rng(0)
    make_dataset(tmp_path, rng, files=4, steps=7, num_envs=5, p_done=0.12)
    done = _time_env(tmp_path, "done")
    done[:, 4] = False  # one env never finishes: all its rows are truncated
    done[5:20, 3], done[20, 3] = False, True  # an episode of env 3 spans files 0..2
    for i, p in enumerate(list_chunks(tmp_path)):
        chunk = read_chunk(p)
        write_chunk(p, dict(chunk.arrays, done=done[i * 7:(i + 1) * 7].reshape(-1)), chunk.meta)
    summary = add_returns(tmp_path, gamma, show_progress=False)
    reward = _time_env(tmp_path, "reward").astype(np.float64)
    ret, trunc = reference_returns(reward, done, gamma)
    np.testing.assert_allclose(_time_env(tmp_path, "return_to_go"), ret, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_time_env(tmp_path, "return_truncated"), trunc)
    assert trunc[:, 4].all() and not trunc[:20, 3].any()
    assert summary["truncated_rows"] == trunc.sum() and summary["rows"] == 4 * 7 * 5
    chunk = read_chunk(list_chunks(tmp_path)[0])
    assert chunk["return_to_go"].dtype == np.float32 and chunk.meta.return_gamma == gamma
    assert "obs" in chunk and "text_obs" in chunk  # other keys kept


def test_rerun_with_other_gamma_replaces_returns(tmp_path):
    make_dataset(tmp_path, np.random.default_rng(1), files=2)
    assert add_returns(tmp_path, 0.5, show_progress=False)["replaced_gammas"] == []
    assert add_returns(tmp_path, 0.0, show_progress=False)["replaced_gammas"] == [0.5]  # said, not silent
    assert add_returns(tmp_path, 0.0, show_progress=False)["replaced_gammas"] == []
    chunk = read_chunk(list_chunks(tmp_path)[1])
    np.testing.assert_array_equal(chunk["return_to_go"], chunk["reward"])  # gamma 0: return = reward
    assert read_meta(list_chunks(tmp_path)[0]).return_gamma == 0.0


def test_non_consecutive_chunks_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    make_dataset(tmp_path, rng, files=2, steps=7)
    write_chunk(chunk_path(tmp_path, 2), make_arrays(rng, 7, 3), make_meta(3, first_step=100))
    with pytest.raises(DataFileError, match="chunk_000002.npz: meta: first_step 100 does not follow"):
        add_returns(tmp_path, 0.9, show_progress=False)
    p = chunk_path(tmp_path, 2)
    write_chunk(p, make_arrays(rng, 7, 1), dataclasses.replace(make_meta(1), first_step=14))
    with pytest.raises(DataFileError, match="num_envs 1 differs"):
        add_returns(tmp_path, 0.9, show_progress=False)


def test_cli(tmp_path, capsys):
    make_dataset(tmp_path, np.random.default_rng(3), files=2)
    assert main(["returns", str(tmp_path), "--gamma", "0.95", "--no-progress"]) == 0
    assert "gamma 0.95" in capsys.readouterr().out
    assert read_meta(list_chunks(tmp_path)[0]).return_gamma == 0.95
    assert main(["returns", str(tmp_path), "--gamma", "1.5", "--no-progress"]) == 2
    assert "gamma must lie in [0, 1]" in capsys.readouterr().err


def test_a_corrupt_chunk_leaves_every_file_as_it_was(tmp_path):
    """All or nothing: with one corrupt chunk no file gets the new gamma (before, the later chunks were rewritten
    before the corrupt one failed, leaving mixed gammas)."""
    make_dataset(tmp_path, np.random.default_rng(4), files=3)
    add_returns(tmp_path, 0.5, show_progress=False)
    files = list_chunks(tmp_path)
    before = {p.name: p.read_bytes() for p in files}
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the first chunk's data: later chunks are read first
    files[0].write_bytes(bytes(data))
    before[files[0].name] = bytes(data)
    with pytest.raises(DataFileError, match=files[0].name):
        add_returns(tmp_path, 0.9, show_progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staged file left either
