"""Dataset statistics and the hidden-state normaliser, against numpy on the concatenated data."""

import json

import numpy as np
import pytest
from data_helpers import ACHIEVEMENTS, SPEC, make_arrays, make_dataset, make_meta, token_twins

from hsrl.cli import main
from hsrl.data import (
    DataFileError, HiddenStats, RunningMoments, chunk_path, dataset_stats, list_chunks, normalize_hidden, read_chunk,
    write_chunk,
)


def _hidden(rng, dim=6):
    def make(n):
        h = 1000.0 + rng.standard_normal((n, dim)) * np.arange(1, dim + 1)  # large offset: tests stability
        h[:, 0] = 3.0  # a constant dimension: its std is floored
        return h.astype(np.float32)
    return make


def test_stats_match_numpy_on_concatenated_data(tmp_path):
    rng = np.random.default_rng(0)
    make_dataset(tmp_path, rng, files=4, steps=9, num_envs=3, spec=SPEC, achievements=True, hidden=_hidden(rng))
    stats = dataset_stats(tmp_path, std_floor=1e-3, show_progress=False)
    chunks = [read_chunk(p) for p in list_chunks(tmp_path)]
    h = np.concatenate([c["hidden_state"] for c in chunks]).astype(np.float64)
    hs = HiddenStats.from_dict(stats["hidden_stats"])
    assert hs.count == len(h) == stats["samples"] == 4 * 9 * 3 and hs.spec_json == SPEC
    np.testing.assert_allclose(hs.mean, h.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(hs.std, np.maximum(h.std(axis=0), 1e-3), rtol=1e-6)
    assert hs.std[0] == np.float32(1e-3) and stats["spec_hash"] == stats["hidden_stats"]["spec_hash"]

    # Episodes: undiscounted returns carried per env across files, against a per-env loop.
    reward = np.concatenate([c.time_major("reward") for c in chunks]).astype(np.float64)
    done = np.concatenate([c.time_major("done") for c in chunks])
    returns, lengths = [], []
    for e in range(3):
        total = length = 0
        for t in range(len(reward)):
            total, length = total + reward[t, e], length + 1
            if done[t, e]:
                returns.append(total)
                lengths.append(length)
                total = length = 0
    assert stats["episodes"] == len(returns) == done.sum()
    assert stats["episode_return"]["mean"] == pytest.approx(np.mean(returns))
    assert stats["episode_return"]["std"] == pytest.approx(np.std(returns))
    assert stats["episode_length"]["max"] == max(lengths)
    ach = np.concatenate([c["achievements"] for c in chunks])
    assert stats["achievements"] == dict(zip(ACHIEVEMENTS, ach.sum(axis=0).tolist()))


def test_running_moments_merge():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 4)) * 3 + 1e6
    m = RunningMoments(4)
    for part in np.array_split(x, [1, 2, 50, 50, 333]):
        m.update(part)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.std(), x.std(axis=0), rtol=1e-9)


def test_stats_without_hidden_or_achievements(tmp_path):
    make_dataset(tmp_path, np.random.default_rng(2), files=2, p_done=0.0)
    stats = dataset_stats(tmp_path, show_progress=False)
    assert stats["hidden_stats"] is None and stats["achievements"] is None
    assert stats["episodes"] == 0 and stats["episode_return"] is None and stats["running_at_end"] == 3


def test_mixed_specs_and_partial_labels_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    make_dataset(tmp_path, rng, files=2, spec=SPEC, hidden=_hidden(rng))
    other = json.dumps(dict(json.loads(SPEC), layer=-2, tokens=8))
    write_chunk(chunk_path(tmp_path, 2), make_arrays(rng, 7, 3, hidden=_hidden(rng)),
                make_meta(3, first_step=14, spec=other))
    with pytest.raises(DataFileError, match=r"extraction spec differs .* \['layer', 'tokens'\]"):
        dataset_stats(tmp_path, show_progress=False)
    write_chunk(chunk_path(tmp_path, 2), make_arrays(rng, 7, 3), make_meta(3, first_step=14, spec=SPEC))
    with pytest.raises(DataFileError, match="chunk_000002.npz: hidden_state: missing here but present in 2 of 3"):
        dataset_stats(tmp_path, show_progress=False)


def test_per_token_states_give_the_statistics_of_their_pooled_rows(tmp_path, monkeypatch):
    from hsrl.data import dataset as dataset_mod

    rng = np.random.default_rng(4)
    (tmp_path / "src").mkdir()
    make_dataset(tmp_path / "src", rng, files=3, spec=SPEC, achievements=True, hidden=_hidden(rng))
    token_twins(tmp_path / "src", tmp_path / "tok", tmp_path / "pooled", rng, width=5, noise=2.0)
    monkeypatch.setattr(dataset_mod, "POOL_BLOCK_BYTES", 3 * 5 * 6 * 2)  # blocks of 3 rows
    tok = dataset_stats(tmp_path / "tok", show_progress=False)
    pooled = dataset_stats(tmp_path / "pooled", show_progress=False)  # what labelling with pooled states gives
    for key in ("mean", "std"):
        np.testing.assert_allclose(tok["hidden_stats"][key], pooled["hidden_stats"][key], rtol=1e-6, atol=1e-6)
    assert tok["hidden_stats"]["count"] == pooled["hidden_stats"]["count"] == 63
    assert {k: v for k, v in tok.items() if k not in ("hidden_stats", "directory")} == \
        {k: v for k, v in pooled.items() if k not in ("hidden_stats", "directory")}


def test_per_token_states_without_counts_need_all_tokens_valid(tmp_path, capsys):
    rng = np.random.default_rng(7)
    (tmp_path / "src").mkdir()
    make_dataset(tmp_path / "src", rng, files=2, spec=SPEC, hidden=_hidden(rng))
    token_twins(tmp_path / "src", tmp_path / "tok", tmp_path / "pooled", rng, width=3, counts=False)
    with pytest.raises(DataFileError, match="chunk_000000.npz: hidden_tokens: missing.*--all-tokens-valid"):
        dataset_stats(tmp_path / "tok", show_progress=False)
    assert main(["stats", str(tmp_path / "tok"), "--no-progress"]) == 2
    assert "hidden_tokens" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "tok"), "--no-progress", "--all-tokens-valid"]) == 0
    saved = json.loads((tmp_path / "tok" / "stats.json").read_text())["hidden_stats"]
    pooled = dataset_stats(tmp_path / "pooled", show_progress=False)["hidden_stats"]
    np.testing.assert_allclose(saved["mean"], pooled["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(saved["std"], pooled["std"], rtol=1e-6, atol=1e-6)


def test_normalize_hidden_and_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    stats = HiddenStats(mean=rng.standard_normal(4), std=rng.random(4) + 0.5, count=10, spec_json=SPEC)
    h = rng.standard_normal((3, 2, 4)).astype(np.float16)
    out = normalize_hidden(h, stats)
    assert out.dtype == np.float32 and out.shape == h.shape
    np.testing.assert_allclose(out, (h.astype(np.float64) - stats.mean) / stats.std, rtol=1e-5)
    with pytest.raises(ValueError, match="size 5"):
        normalize_hidden(np.zeros((2, 5)), stats)
    loaded = HiddenStats.load(stats.save(tmp_path / "h.json"))
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.std, stats.std)
    assert (loaded.count, loaded.spec_json) == (10, SPEC)
    stats.check_spec(SPEC)
    with pytest.raises(ValueError, match="fields that differ: layer"):
        stats.check_spec(json.dumps(dict(json.loads(SPEC), layer=2)))
    with pytest.raises(ValueError, match="positive"):
        HiddenStats(mean=np.zeros(2), std=np.array([1.0, 0.0]), count=1)


def test_normalize_hidden_jax():
    jnp = pytest.importorskip("jax.numpy")
    stats = HiddenStats(mean=np.array([1.0, 2.0]), std=np.array([2.0, 4.0]), count=2)
    out = normalize_hidden(jnp.array([[3.0, 6.0]]), stats)
    np.testing.assert_allclose(np.asarray(out), [[1.0, 1.0]])


def test_cli_saves_stats_json(tmp_path, capsys):
    rng = np.random.default_rng(6)
    make_dataset(tmp_path, rng, files=2, spec=SPEC, hidden=_hidden(rng), achievements=True)
    assert main(["stats", str(tmp_path), "--no-progress", "--std-floor", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "episodes finished" in out and "hidden states: size 6" in out
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["samples"] == 42 and saved["hidden_stats"]["std_floor"] == 0.01
    assert HiddenStats.load(tmp_path / "stats.json").count == 42
    assert main(["stats", str(tmp_path), "--no-progress", "--no-hidden", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["hidden_stats"] is None
    (tmp_path / "chunk_000001.npz").write_bytes(b"PK\x03\x04garbage")
    assert main(["stats", str(tmp_path), "--no-progress"]) == 2
    assert "chunk_000001.npz: corrupt or truncated" in capsys.readouterr().err
