"""`hsrl probe`: episode-wise splits, a hidden state that encodes features linearly is read back, the
random floor and the ceiling behave as they should, and bad input is refused clearly."""

import dataclasses
import json

import numpy as np
import pytest

from hsrl.data import DataFileError, list_chunks, read_chunk, update_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.probe import ProbeConfig, episode_ids, probe
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
    print({k: [round(rows[k][i], 3) for i in ("hidden", "floor", "ceiling")] for k in rows})
    for name in ENCODED + ("inventory/wood",):
        if name in rows:
            assert rows[name]["hidden"] > 0.95, name
            assert rows[name]["ceiling"] > 0.8, name  # the observation holds it (a column of it, among 1345)
    assert "health" in rows and "food" in rows
    assert rows["health"]["floor"] < 0.2  # 16 random directions of a 1345-long observation barely see it
    facing = rows["facing"]  # not in the hidden state: no better than the majority class, while the ceiling reads it
    assert facing["hidden"] < facing["majority"] + 0.15 and facing["ceiling"] > 0.95
    assert report["train_episodes"] + report["test_episodes"] == report["episodes"] >= 16
    assert 1 < report["effective_rank"] < 10  # five encoded numbers and a little noise, in 16 dimensions
    assert -1 <= report["mean_pairwise_cosine"] <= 1
    assert (tmp_path / "p" / "probe.png").stat().st_size > 5000
    assert "| health | R2 |" in (tmp_path / "p" / "probe.md").read_text()


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
