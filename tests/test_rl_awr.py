"""AWR: the loss as written in the issue, deterministic sampling, the hidden-state pathway end to end,
the host loader against on-device data, resume, and clear errors for data that cannot train."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import SPEC, hidden_task_arrays, respec, write_hidden_task

from hsrl.data import DataFileError, HiddenStats, chunk_path, list_chunks, read_chunk, write_chunk
from hsrl.rl import CheckpointError, list_checkpoints, load_policy, read_checkpoint_meta, read_metrics
from hsrl.rl.awr import (
    AWRHyper, Batch, TrainAWRConfig, awr_loss, block_schedule, init_state, make_update, sample_positions,
)
from hsrl.rl.awr_seeds import train_awr
from hsrl.rl.networks import NetworkConfig, make_network

FAST = dict(width=64, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """32768 rows of the hidden-state task (best action only in the hidden state), with returns."""
    return write_hidden_task(tmp_path_factory.mktemp("task"), np.random.default_rng(0), files=4, rows_per_file=8192)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_hidden_task(tmp_path_factory.mktemp("small"), np.random.default_rng(1), files=2, rows_per_file=512)


def config(data, out, **kw):
    return TrainAWRConfig(str(data), out=str(out), **{**FAST, **kw})


# ------------------------------------------------------------------------------------------ loss


def test_loss_matches_the_formula_and_stops_the_weight_gradient():
    net = NetworkConfig("mlp", 5, (3,), width=8)
    apply_fn = make_network(net).apply
    params = init_state(net, AWRHyper(), 0).params
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), jnp.asarray(rng.integers(0, 5, 6)),
                  jnp.asarray([0.0, 1.0, 50.0, -3.0, 2.0, 300.0], jnp.float32), None)
    beta, max_weight = 2.0, 20.0
    loss, m = awr_loss(params, apply_fn, batch, beta, max_weight)
    logits, value = apply_fn(params, batch.obs)
    adv = np.asarray(batch.ret, np.float64) - np.asarray(value, np.float64)
    w = np.minimum(np.exp(adv / beta), max_weight)
    logp = np.asarray(jax.nn.log_softmax(logits))[np.arange(6), np.asarray(batch.action)]
    np.testing.assert_allclose(m["actor_loss"], -np.mean(w * logp), rtol=1e-5)
    np.testing.assert_allclose(m["critic_loss"], 0.5 * np.mean(adv ** 2), rtol=1e-5)
    np.testing.assert_allclose(m["clipped_fraction"], np.mean(np.exp(adv / beta) >= max_weight), rtol=1e-6)
    np.testing.assert_allclose(m["mean_weight"], w.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, m["actor_loss"] + m["critic_loss"], rtol=1e-6)
    ret = np.asarray(batch.ret)
    np.testing.assert_allclose(m["explained_variance"], 1 - np.var(ret - value) / np.var(ret), rtol=1e-4)

    # The weight is a constant for the gradient: same gradient as a loss with w frozen.
    w_const = jnp.asarray(w)

    def frozen(p):
        lg, v = apply_fn(p, batch.obs)
        lp = jnp.take_along_axis(jax.nn.log_softmax(lg), batch.action[:, None], -1)[:, 0]
        return -jnp.mean(w_const * lp) + 0.5 * jnp.mean((batch.ret - v) ** 2)

    g1 = jax.grad(lambda p: awr_loss(p, apply_fn, batch, beta, max_weight)[0])(params)
    g2 = jax.grad(frozen)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


def test_hidden_states_are_normalised_inside_the_loss():
    net = NetworkConfig("mlp", 5, (3,), hidden_size=4, width=8)
    apply_fn = make_network(net).apply
    params = init_state(net, AWRHyper(), 0).params
    stats = HiddenStats(np.array([1, 2, 3, 4], np.float32), np.array([2, 2, 2, 2], np.float32), 10)
    raw = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)) * 2 + np.arange(1, 5), jnp.float32)
    batch = Batch(jnp.zeros((6, 3)), jnp.zeros(6, jnp.int32), jnp.ones(6), raw)
    _, m = awr_loss(params, apply_fn, batch, 10.0, 20.0, stats)
    _, value = apply_fn(params, batch.obs, (raw - stats.mean) / stats.std)
    np.testing.assert_allclose(m["value_mean"], np.mean(value), rtol=1e-6)


def test_sampling_depends_only_on_seed_and_step():
    rng = jax.random.PRNGKey(3)
    whole = sample_positions(rng, jnp.int32(10), 6, 4, 100)
    parts = jnp.concatenate([sample_positions(rng, jnp.int32(10), 2, 4, 100),
                             sample_positions(rng, jnp.int32(12), 4, 4, 100)])
    np.testing.assert_array_equal(whole, parts)
    assert whole.shape == (6, 4) and int(whole.min()) >= 0 and int(whole.max()) < 100


def test_block_schedule_stops_at_log_and_save_points():
    assert block_schedule(0, 250, 100, (100, 1000)) == [(0, 100), (100, 100), (200, 50)]
    assert block_schedule(130, 260, 100, (50, 120)) == [(130, 20), (150, 50), (200, 40), (240, 10), (250, 10)]
    assert block_schedule(5, 5, 100, (10,)) == []


def test_update_is_jittable_and_counts_steps():
    net = NetworkConfig("mlp", 5, (3,), width=8)
    hyper = AWRHyper()
    update = jax.jit(make_update(net, hyper, None))
    state = init_state(net, hyper, 0)
    batch = Batch(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32), jnp.ones(4), None)
    state, metrics = update(state, batch)
    assert int(state.step) == 1 and set(metrics) >= {"actor_loss", "critic_loss", "entropy", "explained_variance"}


# ---------------------------------------------------------------------------- hidden-state pathway


def accuracy(run, hidden):
    policy = load_policy(run)
    arrays, best = hidden_task_arrays(np.random.default_rng(123), 4000)
    actions = policy.act(arrays["obs"], arrays["hidden_state"] if hidden else None, greedy=True)
    return float(np.mean(np.asarray(actions) == best))


def test_augmented_model_learns_what_only_the_hidden_state_says(task, tmp_path):
    aug = train_awr(config(task, tmp_path / "aug", steps=600, log_every=200))
    base = train_awr(config(task, tmp_path / "base", hidden=False, steps=600, log_every=200))
    assert aug["network"] == "ActorCriticMLPAug" and base["network"] == "ActorCriticMLP"
    acc_aug, acc_base = accuracy(tmp_path / "aug", True), accuracy(tmp_path / "base", False)
    print(f"held-out accuracy of the best action: augmented {acc_aug:.3f}, baseline {acc_base:.3f} (chance 1/17)")
    assert acc_aug > 0.9
    assert acc_base < 0.15
    lines = read_metrics(tmp_path / "aug")
    assert [line["step"] for line in lines] == [200, 400, 600]
    # the value function cannot tell the action: explained variance stays low, weights pick the best action
    assert lines[-1]["mean_weight"] > 0


def test_host_loader_matches_device_data(small, tmp_path):
    a = train_awr(config(small, tmp_path / "dev", steps=40, log_every=20, device_data=True))
    b = train_awr(config(small, tmp_path / "host", steps=40, log_every=20, device_data=False, steps_per_call=7))
    assert a["on_device"] and not b["on_device"]
    pa, pb = load_policy(tmp_path / "dev").params, load_policy(tmp_path / "host").params
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6), pa, pb)
    la, lb = read_metrics(tmp_path / "dev"), read_metrics(tmp_path / "host")
    np.testing.assert_allclose([x["critic_loss"] for x in la], [x["critic_loss"] for x in lb], rtol=1e-4)


# ---------------------------------------------------------------------------------------- resume


def test_resume_continues_from_its_step_and_repeats_an_uninterrupted_run(small, tmp_path):
    whole = train_awr(config(small, tmp_path / "whole", steps=60, log_every=10, save_every=30))
    first = train_awr(config(small, tmp_path / "split", steps=30, log_every=10, save_every=30))
    assert first["step"] == 30 and not first["resumed"]
    second = train_awr(config(small, tmp_path / "split", steps=60, log_every=10, save_every=30))
    assert second["resumed"] and second["step"] == 60
    assert [line["step"] for line in read_metrics(tmp_path / "split")] == [10, 20, 30, 40, 50, 60]
    pw, ps = load_policy(tmp_path / "whole").params, load_policy(tmp_path / "split").params
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), pw, ps)
    meta = read_checkpoint_meta(tmp_path / "split")
    assert meta["step"] == 60 and meta["final"] and meta["seed"] == 0
    assert whole["step"] == 60
    # rerunning a finished run does nothing
    again = train_awr(config(small, tmp_path / "split", steps=60, log_every=10, save_every=30))
    assert again["step"] == 60 and again["metrics"] == {}


def test_resume_after_a_crash_drops_metrics_past_the_checkpoint(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=30, log_every=10, save_every=20, keep=5))
    # pretend the run died after step 30's metrics but before its final checkpoint
    final = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert json.loads(final.read_text())["step"] == 30
    final.unlink()
    stale = [final.parent / ".step_000000030.msgpack.k1ll3d.tmp", final.parent / ".step_000000030.json.k1ll3d.tmp"]
    for path in stale:  # what a kill while saving leaves
        path.write_bytes(b"\0" * 1024)
    result = train_awr(config(small, tmp_path / "run", steps=40, log_every=10, save_every=20))
    assert result["resumed"]
    assert not any(path.exists() for path in stale), "a rerun removes temporaries of a killed save"
    assert [line["step"] for line in read_metrics(tmp_path / "run")] == [10, 20, 30, 40]


def test_checkpoint_carries_what_evaluation_needs(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=20, log_every=10, save_every=10, keep=1))
    found = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [json.loads(p.read_text())["step"] for p in found] == [20]  # keep=1 pruned step 10
    meta = read_checkpoint_meta(found[-1])
    assert meta["spec_json"] == SPEC and meta["env_name"] == "Craftax-Classic-Symbolic-v1"
    assert meta["network"]["hidden_size"] == 24 and meta["hidden_stats"]["hidden_size"] == 24
    assert meta["train_config"]["beta"] == 10.0 and meta["algorithm"] == "awr"
    stats = HiddenStats.from_dict(meta["hidden_stats"])
    hidden = np.concatenate([read_chunk(p)["hidden_state"] for p in list_chunks(small)]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, hidden.mean(0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- per-token hidden states


@pytest.mark.parametrize("counts", [True, False])
def test_per_token_data_trains_as_its_pooled_twin(tmp_path, counts):
    """Per-token states (`hsrl label --save-token-states`) train exactly as the pooled states labelling gives for
    the same tokens; without hidden_tokens only with --all-tokens-valid (pooling every position)."""
    from data_helpers import token_twins

    rng = np.random.default_rng(5)
    src = write_hidden_task(tmp_path / "src", rng, files=2, rows_per_file=256)
    token_twins(src, tmp_path / "tok", tmp_path / "pooled", rng, width=6, noise=0.5, counts=counts)
    run = dict(steps=20, log_every=10, save_every=20, batch_size=32, device_data=True)
    if not counts:
        with pytest.raises(DataFileError, match="chunk_000000.npz: hidden_tokens: missing.*--all-tokens-valid"):
            train_awr(config(tmp_path / "tok", tmp_path / "refused", **run))
        assert not (tmp_path / "refused").exists()
    flags = {} if counts else {"all_tokens_valid": True}
    a = train_awr(config(tmp_path / "pooled", tmp_path / "a", **run))
    b = train_awr(config(tmp_path / "tok", tmp_path / "b", **run, **flags))
    assert a["step"] == b["step"] == 20
    pa, pb = load_policy(tmp_path / "a"), load_policy(tmp_path / "b")
    assert pb.network.hidden_size == 24
    np.testing.assert_allclose(pa.hidden_stats.mean, pb.hidden_stats.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pa.hidden_stats.std, pb.hidden_stats.std, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa.params, pb.params)
    if counts:  # a plain mean over all T positions (padding included) would have trained on other inputs
        over_all = np.concatenate([read_chunk(p)["hidden_state"].astype(np.float64).mean(1)
                                   for p in list_chunks(tmp_path / "tok")])
        pooled = np.concatenate([read_chunk(p)["hidden_state"] for p in list_chunks(tmp_path / "pooled")])
        assert np.abs(over_all - pooled).max() > 0.3


def test_all_tokens_valid_is_part_of_the_run(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=5, log_every=5))
    with pytest.raises(ValueError, match="--all-tokens-valid False"):
        train_awr(config(small, tmp_path / "run", steps=10, log_every=5, all_tokens_valid=True))
    # a run folder of an hsrl without the flag resumes as the flag's default
    path = tmp_path / "run" / "run_config.json"
    saved = json.loads(path.read_text())
    del saved["all_tokens_valid"]
    path.write_text(json.dumps(saved))
    assert train_awr(config(small, tmp_path / "run", steps=10, log_every=5))["step"] == 10


# ---------------------------------------------------------------------------------------- errors


def test_missing_return_to_go(tmp_path):
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64, returns=False)
    with pytest.raises(DataFileError, match="hsrl returns"):
        train_awr(config(data, tmp_path / "run"))


def test_missing_hidden_state_without_no_hidden(tmp_path):
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64)
    chunk = read_chunk(chunk_path(data, 0))
    write_chunk(chunk_path(data, 0), {k: v for k, v in chunk.arrays.items() if k != "hidden_state"}, chunk.meta)
    with pytest.raises(DataFileError, match="--no-hidden"):
        train_awr(config(data, tmp_path / "run"))
    assert train_awr(config(data, tmp_path / "run", hidden=False, steps=2, log_every=1))["step"] == 2


def test_only_unfinished_episodes(tmp_path):
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64)
    chunk = read_chunk(chunk_path(data, 0))
    arrays = dict(chunk.arrays, return_truncated=np.ones(64, bool))
    write_chunk(chunk_path(data, 0), arrays, chunk.meta)
    with pytest.raises(ValueError, match="--truncated"):
        train_awr(config(data, tmp_path / "run"))


def test_resume_with_another_hidden_size_is_refused(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=10, log_every=10))
    other = write_hidden_task(tmp_path / "other", np.random.default_rng(2), files=2, rows_per_file=512,
                              hidden_size=32)
    cfg = config(other, tmp_path / "run", steps=20, log_every=10)
    with pytest.raises(CheckpointError, match="size 24.*size 32"):
        train_awr(cfg)


def test_resume_with_another_spec_is_refused_unless_allowed(small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    train_awr(config(data, tmp_path / "run", steps=10, log_every=10))
    respec(data, json.dumps({"model": "tiny", "layer": -2, "tokens": 1, "pooling": "mean"}))
    with pytest.raises(CheckpointError, match="fields that differ: layer"):
        train_awr(config(data, tmp_path / "run", steps=20, log_every=10))
    result = train_awr(config(data, tmp_path / "run", steps=20, log_every=10, allow_spec_mismatch=True))
    assert result["step"] == 20


def test_resume_with_other_hyperparameters_is_refused(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=10, log_every=10))
    with pytest.raises(ValueError, match="--beta 10.0"):
        train_awr(config(small, tmp_path / "run", steps=20, log_every=10, beta=3.0))


def test_policy_refuses_other_spec_and_size(small, tmp_path):
    train_awr(config(small, tmp_path / "run", steps=5, log_every=5))
    policy = load_policy(tmp_path / "run")
    policy.check_compatible(spec_json=SPEC, hidden_size=24, env_name="Craftax-Classic-Symbolic-v1")
    with pytest.raises(CheckpointError, match="fields that differ: model"):
        policy.check_compatible(spec_json=json.dumps({"model": "qwen", "layer": -1, "tokens": 1, "pooling": "mean"}))
    with pytest.raises(CheckpointError, match="size 2560"):
        policy.check_compatible(hidden_size=2560)
    with pytest.raises(CheckpointError, match="Craftax-Symbolic-v1"):
        policy.check_compatible(env_name="Craftax-Symbolic-v1")
    with pytest.raises(ValueError, match="size 23"):
        policy.act(np.zeros((2, 8), np.float32), np.zeros((2, 23), np.float32), greedy=True)


def test_pixel_data_trains_the_conv_networks(tmp_path):
    from data_helpers import make_dataset

    from hsrl.data import add_returns

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    make_dataset(tmp_path / "data", rng, files=2, steps=8, num_envs=4, pixels=True, spec=SPEC,
                 hidden=lambda n: rng.standard_normal((n, 12)).astype(np.float16))
    add_returns(tmp_path / "data", 0.9, show_progress=False)
    for hidden, device_data, name in ((True, False, "ActorCriticConvAug"), (False, True, "ActorCriticConv")):
        out = tmp_path / f"run_{hidden}"
        result = train_awr(config(tmp_path / "data", out, hidden=hidden, device_data=device_data, steps=6,
                                  log_every=3, batch_size=16, truncated=True))
        assert result["network"] == name and result["on_device"] == device_data
        policy = load_policy(out)
        assert policy.network.obs_shape == (63, 63, 3) and policy.network.kind == "conv"
        assert all(np.isfinite(line["critic_loss"]) for line in read_metrics(out))


def test_memory_mapped_cache_feeds_the_host_loader(small, tmp_path):
    cache = tmp_path / "cache"
    result = train_awr(config(small, tmp_path / "run", steps=4, log_every=2, device_data=False, cache_dir=str(cache)))
    assert result["step"] == 4 and (cache / "manifest.json").exists() and (cache / "hidden_state.npy").exists()
