"""`hsrl probe`: episode-wise splits, a hidden state that encodes features linearly is read back, the
random floor and the raw observation's linear readout behave as they should, collapsed states are called collapsed
(and ordinary ones not), and bad input is refused clearly."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from hsrl.data import DataFileError, list_chunks, read_chunk, update_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.probe import (COLLAPSE_SHARE, ProbeConfig, collapsed, episode_ids, probe, state_measures,
                        state_sentences)
from hsrl.text import decode_symbolic

ENCODED = ("health", "food", "drink", "energy")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    collect(CollectConfig(env="Craftax-Classic-Symbolic-v1", envs=4, steps=4 * 400, chunk_steps=100, out=str(out),
                          seed=3, max_episode_steps=50, text=False, progress=False))
    return out


@pytest.fixture(scope="module")
def labelled(raw, tmp_path_factory):
    """Hidden states (16 wide) that mix health, food, drink, energy and the wood count linearly, plus noise."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((5, 16))
    for path in list_chunks(raw):
        f = decode_symbolic(read_chunk(path, ["obs"])["obs"], "classic")
        truth = np.concatenate([f["intrinsics"], f["inventory"][:, :1]], axis=1) / 10  # float16 keeps it precise
        hidden = truth @ mix + 0.01 * rng.standard_normal((len(truth), 16))
        update_chunk(path, {"hidden_state": hidden.astype(np.float32)})
    return raw


def test_episode_ids_follow_the_time_major_layout():
    done = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], bool).reshape(-1)  # rows t * 2 + env
    ids = episode_ids(done, 2).reshape(4, 2)
    assert ids[:, 0].tolist() == [0, 0, 2, 2]  # env 0: episode ends at t=1, the next starts at t=2
    assert ids[:, 1].tolist() == [1, 1, 1, 3]


def test_probe_reads_what_the_hidden_state_encodes(labelled, tmp_path):
    report = probe(ProbeConfig(str(labelled), out=str(tmp_path / "p")))
    rows = {r["feature"]: r for r in report["features"]}
    print({k: [round(rows[k][i], 3) for i in ("hidden", "floor", "raw_obs")] for k in rows})
    for name in ENCODED + ("inventory/wood",):
        if name in rows:
            assert rows[name]["hidden"] > 0.95, name
            assert rows[name]["raw_obs"] > 0.8, name  # the observation holds it (a column of it, among 1345)
    assert "health" in rows and "food" in rows
    assert rows["health"]["floor"] < 0.2  # 16 random directions of a 1345-long observation barely see it
    facing = rows["facing"]  # not in the hidden state: no better than the majority class, while the raw obs reads it
    assert facing["hidden"] < facing["majority"] + 0.15 and facing["raw_obs"] > 0.95
    assert report["train_episodes"] + report["test_episodes"] == report["episodes"] >= 16
    assert 1 < report["effective_rank"] < 10  # five encoded numbers and a little noise, in 16 dimensions
    assert -1 <= report["mean_pairwise_cosine"] <= 1
    assert (tmp_path / "p" / "probe.png").stat().st_size > 5000
    md = (tmp_path / "p" / "probe.md").read_text()
    assert "| health | R2 |" in md and "| raw obs (linear) |" in md and "ceiling" not in md.replace("not a ceiling", "")
    # ordinary states (a large shared offset, the intrinsics near their maximum, but their variation visible): not
    # collapsed, and the report says so with its numbers and what standardised probes cannot tell
    assert report["collapsed"] is False and report["common_direction_share"] < COLLAPSE_SHARE
    assert 0.02 < report["spread_to_norm"] < 0.5
    assert "The hidden states have not collapsed" in md and "have collapsed" not in md
    assert "read information at any scale" in md and f"spread/norm = {report['spread_to_norm']:.2g}" in md
    saved = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert {"common_direction_share", "spread_to_norm", "collapsed", "effective_rank"} <= set(saved)
    assert "raw_obs" in saved["features"][0] and "ceiling" not in saved["features"][0]


@pytest.fixture(scope="module")
def collapsed_data(raw, tmp_path_factory):
    """All rows one vector (norm 3, 64 wide) plus isotropic noise of 1e-3 per dimension, and health, food, drink,
    energy and wood encoded at 1e-2 of their range: all of it well under a hundredth of the norm."""
    out = tmp_path_factory.mktemp("collapsed") / "data"
    shutil.copytree(raw, out)
    rng = np.random.default_rng(1)
    common = rng.standard_normal(64)
    common *= 3 / np.linalg.norm(common)
    mix = rng.standard_normal((5, 64))
    for path in list_chunks(out):
        f = decode_symbolic(read_chunk(path, ["obs"])["obs"], "classic")
        truth = np.concatenate([f["intrinsics"], f["inventory"][:, :1]], axis=1) / 10
        hidden = common + 1e-3 * (rng.standard_normal((len(truth), 64)) + 10 * truth @ mix)
        update_chunk(path, {"hidden_state": hidden.astype(np.float32)})
    return out


def test_collapsed_states_are_called_collapsed_though_probes_read_them(collapsed_data, tmp_path):
    report = probe(ProbeConfig(str(collapsed_data), out=str(tmp_path / "p")))
    saved = json.loads((tmp_path / "p" / "probe.json").read_text())
    md = (tmp_path / "p" / "probe.md").read_text()
    assert saved["collapsed"] is True and saved["common_direction_share"] > 0.9999
    assert saved["spread_to_norm"] < 0.01 and saved["mean_pairwise_cosine"] > 0.9999
    assert saved["effective_rank"] > 40  # centred, the noise looks full rank: the effective rank alone misses it
    assert "**The hidden states have collapsed**" in md and "nearly one vector" in md and "have not collapsed" not in md
    assert f"spread/norm {saved['spread_to_norm']:.2g}" in md and "read information at any scale" in md
    rows = {r["feature"]: r for r in report["features"]}
    # read back from states that differ by under 1% of their norm: why the report always says probes read any scale
    assert rows["drink"]["hidden"] > 0.9 and rows["energy"]["hidden"] > 0.85


def test_state_measures_match_hand_computations():
    rng = np.random.default_rng(0)
    # two orthogonal unit rows: X^T X = I, so the top direction holds half the energy; the mean (0.5, 0.5) is
    # sqrt(0.5) from each row, and the rows' RMS norm is 1
    m = state_measures(np.eye(2), rng)
    assert m["common_direction_share"] == pytest.approx(0.5) and m["spread_to_norm"] == pytest.approx(np.sqrt(0.5))
    # rank 1 (rows 1 and 2 times one vector): all energy along it; spread 0.5 around the mean 1.5, RMS norm sqrt(2.5)
    m = state_measures(np.array([[1.0, 0.0], [2.0, 0.0]]) @ np.array([[0.6, 0.8], [0.8, -0.6]]), rng)
    assert m["common_direction_share"] == pytest.approx(1.0) and m["spread_to_norm"] == pytest.approx(np.sqrt(0.1))
    m = state_measures(np.tile([3.0, 4.0], (5, 1)), rng)  # all rows equal
    assert m["common_direction_share"] == pytest.approx(1.0) and m["spread_to_norm"] == pytest.approx(0, abs=1e-12)
    # zero-mean isotropic Gaussian, 16 wide: about 1/16 along any direction (the top one a little more)
    m = state_measures(rng.standard_normal((20000, 16)), rng)
    assert 1 / 16 < m["common_direction_share"] < 1.2 / 16 and m["spread_to_norm"] == pytest.approx(1, abs=0.01)
    # a shared offset as large as the spread (norm^2 64 = E||z||^2): half the energy along the offset, spread 1/sqrt(2)
    m = state_measures(8 * np.eye(64)[0] + rng.standard_normal((5000, 64)), rng)
    assert m["common_direction_share"] == pytest.approx(0.5, abs=0.03)
    assert m["spread_to_norm"] == pytest.approx(np.sqrt(0.5), abs=0.01)
    # the measures agree with their definitions on a random matrix (full SVD, means)
    x = rng.standard_normal((30, 50)) + 2
    s = np.linalg.svd(x, compute_uv=False)
    m = state_measures(x, rng)
    assert m["common_direction_share"] == pytest.approx(s[0] ** 2 / np.sum(s ** 2))
    spread, rms = np.mean(np.sum((x - x.mean(0)) ** 2, 1)), np.mean(np.sum(x ** 2, 1))
    assert m["spread_to_norm"] == pytest.approx(np.sqrt(spread / rms))
    with pytest.raises(ValueError, match="zeros"):
        state_measures(np.zeros((3, 4)), rng)


@pytest.mark.parametrize("norm", [1.0, 10.0])
@pytest.mark.parametrize("width", [64, 2560])
def test_collapse_judgement_on_constructed_states(norm, width):
    """All-equal rows plus 1e-3 noise are collapsed at norm 1 and 10; random and offset states are not."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal(width)
    common *= norm / np.linalg.norm(common)
    cases = {"equal plus noise": (common + 1e-3 * rng.standard_normal((300, width)), norm >= 2 or width <= 1000),
             "gaussian": (rng.standard_normal((300, width)), False),
             "offset as large as the spread": (common * np.sqrt(width) / norm + rng.standard_normal((300, width)), False)}
    for name, (x, want) in cases.items():
        assert collapsed(state_measures(x, rng)) is want, name


def _measures(share, spread, cosine=0.5):
    return {"common_direction_share": share, "spread_to_norm": spread, "mean_pairwise_cosine": cosine,
            "effective_rank": 63.4, "hidden_size": 64}


def test_collapse_sentences_from_hand_made_numbers():
    assert collapsed(_measures(0.9995, 0.02)) and not collapsed(_measures(0.998, 0.04))
    first, scale = state_sentences(_measures(0.99999, 0.0031, 0.999991))
    assert first.startswith("**The hidden states have collapsed**") and "nearly one vector" in first
    assert "common-direction share 0.999990" in first and "spread/norm 0.0031" in first and "0.999991" in first
    assert "effective rank (63.4 of 64) is of the centred states" in first
    assert "read information at any scale" in scale and "spread/norm = 0.0031" in scale
    first, _ = state_sentences(_measures(1.0, 0.3, 1.0))  # one line through the origin, varying in scale
    assert "have collapsed" in first and "along that one line" in first
    first, scale = state_sentences(_measures(0.5, 0.7))
    assert first.startswith("The hidden states have not collapsed") and "common-direction share 0.500000" in first
    assert "read information at any scale" in scale and "spread/norm = 0.7" in scale


def test_max_rows_takes_whole_episodes(labelled, tmp_path):
    report = probe(ProbeConfig(str(labelled), out=str(tmp_path / "p"), max_rows=600, min_rows=10))
    assert 200 <= report["rows"] <= 600 and report["train_episodes"] + report["test_episodes"] == report["episodes"]


def test_unlabelled_data_and_too_few_episodes_are_refused(raw, labelled, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    first = read_chunk(list_chunks(labelled)[0])
    from hsrl.data import write_chunk

    write_chunk(bare / first.path.name, {k: v for k, v in first.arrays.items() if k != "hidden_state"}, first.meta)
    with pytest.raises(DataFileError, match="hidden_state"):
        probe(ProbeConfig(str(bare), out=str(tmp_path / "o")))
    one = tmp_path / "one"
    one.mkdir()
    arrays = {k: v[:12] for k, v in first.arrays.items()}
    arrays["done"] = np.zeros_like(arrays["done"])  # one running episode in each of two envs
    write_chunk(one / first.path.name, arrays, dataclasses.replace(first.meta, num_envs=2))
    with pytest.raises(ValueError, match="episodes"):
        probe(ProbeConfig(str(one), out=str(tmp_path / "o"), min_rows=2, max_rows=10))


@pytest.mark.parametrize("counts", [True, False])
def test_per_token_states_probe_as_their_pooled_rows(labelled, tmp_path, counts):
    """Per-token states give the numbers of the pooled states labelling gives for the same tokens; without
    hidden_tokens only with --all-tokens-valid."""
    from data_helpers import token_twins

    from hsrl.cli import main

    token_twins(labelled, tmp_path / "tok", tmp_path / "pooled", np.random.default_rng(1), width=4, noise=0.05,
                counts=counts)
    kw = dict(max_rows=800, min_rows=10)
    if not counts:
        with pytest.raises(DataFileError, match="hidden_tokens: missing.*--all-tokens-valid"):
            probe(ProbeConfig(str(tmp_path / "tok"), out=str(tmp_path / "refused"), **kw))
    pooled = probe(ProbeConfig(str(tmp_path / "pooled"), out=str(tmp_path / "p"), **kw))
    flags = [] if counts else ["--all-tokens-valid"]
    assert main(["probe", str(tmp_path / "tok"), "--out", str(tmp_path / "t"), "--max-rows", "800", "--min-rows",
                 "10", *flags]) == 0
    tok = json.loads((tmp_path / "t" / "probe.json").read_text())
    assert tok["rows"] == pooled["rows"] and [r["feature"] for r in tok["features"]] == \
        [r["feature"] for r in pooled["features"]]
    for a, b in zip(tok["features"], pooled["features"]):
        np.testing.assert_allclose(a["hidden"], b["hidden"], rtol=1e-5, atol=1e-6, err_msg=a["feature"])
    np.testing.assert_allclose(tok["effective_rank"], pooled["effective_rank"], rtol=1e-5)
    np.testing.assert_allclose(tok["mean_pairwise_cosine"], pooled["mean_pairwise_cosine"], rtol=1e-5)
    encoded = [r for r in tok["features"] if r["feature"] in ENCODED]
    assert encoded and all(r["hidden"] > 0.9 for r in encoded)  # the pooled tokens still encode them


def test_probe_shows_progress_over_the_features_unless_told_not_to(labelled, tmp_path, capsys):
    from hsrl.cli import main

    args = ["probe", str(labelled), "--max-rows", "600", "--min-rows", "10"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "probe: " in err and "feature" in err, err
    assert main([*args, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "feature" not in capsys.readouterr().err
