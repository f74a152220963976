"""Checkpoint files: atomic pair, hash check, orphans ignored, pruning, and the policy loader."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsrl.data import HiddenStats, normalize_hidden
from hsrl.rl import (
    CheckpointError, NetworkConfig, Policy, init_params, list_checkpoints, load_policy, make_network,
    read_checkpoint_meta, resolve_checkpoint, save_checkpoint,
)
from hsrl.rl.checkpoint import check_compatible, check_params, prune_checkpoints, restore_state

SPEC = json.dumps({"model": "tiny", "layer": -1})


def write(folder, step, net, stats=None, final=False, params=None):
    params = init_params(net, jax.random.PRNGKey(step)) if params is None else params
    meta = {"network": net.to_dict(), "env_name": "Craftax-Classic-Symbolic-v1", "spec_json": SPEC,
            "hidden_stats": None if stats is None else stats.to_dict(), "final": final}
    return save_checkpoint(folder, step, {"params": params, "step": jnp.int32(step), "rng": jax.random.PRNGKey(0)},
                           meta), params


def make_stats(h=4):
    return HiddenStats(np.arange(h, dtype=np.float32), np.full(h, 2.0, np.float32), 100, SPEC)


def test_round_trip_and_resolution(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), hidden_size=4, width=8)
    path, params = write(tmp_path / "checkpoints", 7, net, make_stats())
    assert path.name == "step_000000007.json" and (tmp_path / "checkpoints" / "step_000000007.msgpack").exists()
    for where in (tmp_path, tmp_path / "checkpoints", path, path.with_suffix(".msgpack")):
        assert resolve_checkpoint(where) == path
    policy = load_policy(tmp_path)
    assert policy.step == 7 and policy.network == net and policy.spec_json == SPEC
    jax.tree.map(np.testing.assert_array_equal, policy.params, params)
    meta = read_checkpoint_meta(path)
    state = restore_state(meta, {"params": params, "step": 0, "rng": jax.random.PRNGKey(5)})
    assert int(state["step"]) == 7
    np.testing.assert_array_equal(state["rng"], jax.random.PRNGKey(0))


def test_policy_normalises_raw_hidden_states(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), hidden_size=4, width=8)
    stats = make_stats()
    write(tmp_path, 1, net, stats)
    policy = load_policy(tmp_path)
    rng = np.random.default_rng(0)
    obs, raw = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32) * 3
    logits, value = policy.apply(obs, raw)
    want = make_network(net).apply(policy.params, obs, normalize_hidden(raw, stats))
    np.testing.assert_allclose(logits, want[0], rtol=1e-6)
    np.testing.assert_allclose(value, want[1], rtol=1e-6)
    actions = policy.act(obs, raw, jax.random.PRNGKey(0))
    assert actions.shape == (5,) and actions.dtype == jnp.int32
    np.testing.assert_array_equal(policy.act(obs, raw, greedy=True), np.argmax(np.asarray(logits), -1))
    with pytest.raises(ValueError, match="needs raw hidden states"):
        policy.act(obs, None, greedy=True)
    with pytest.raises(ValueError, match="random key"):
        policy.act(obs, raw)


def test_baseline_policy_takes_no_hidden_state(tmp_path):
    net = NetworkConfig("conv", 17, (9, 9, 3), width=8)
    write(tmp_path, 1, net)
    policy = load_policy(tmp_path)
    obs = np.zeros((2, 9, 9, 3), np.float32)
    assert policy.act(obs, None, greedy=True).shape == (2,)
    with pytest.raises(ValueError, match="baseline"):
        policy.act(obs, np.zeros((2, 4), np.float32), greedy=True)


def test_orphan_state_file_is_ignored_and_newest_wins(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), width=8)
    write(tmp_path, 10, net)
    write(tmp_path, 20, net)
    (tmp_path / "step_000000030.msgpack").write_bytes(b"half a checkpoint")  # crash before the sidecar
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000010.json", "step_000000020.json"]
    assert load_policy(tmp_path).step == 20


def test_corrupt_or_missing_state_is_an_error(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), width=8)
    path, _ = write(tmp_path, 1, net)
    state = path.with_suffix(".msgpack")
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_policy(path)
    state.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_policy(path)
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "nowhere")


def test_params_of_another_network_are_refused(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), hidden_size=4, width=8)
    other = NetworkConfig("mlp", 17, (6,), hidden_size=5, width=8)
    with pytest.raises(CheckpointError, match="do not fit"):
        check_params(init_params(other, jax.random.PRNGKey(0)), net)
    path, _ = write(tmp_path, 1, net, make_stats(), params=init_params(other, jax.random.PRNGKey(0)))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_policy(path)


def test_policy_needs_matching_statistics():
    net = NetworkConfig("mlp", 17, (6,), hidden_size=4, width=8)
    params = init_params(net, jax.random.PRNGKey(0))
    with pytest.raises(CheckpointError, match="statistics"):
        Policy(net, params, None, SPEC, "Craftax-Classic-Symbolic-v1")
    with pytest.raises(CheckpointError, match="size 3"):
        Policy(net, params, make_stats(3), SPEC, "Craftax-Classic-Symbolic-v1")


def test_prune_keeps_newest_and_final(tmp_path):
    net = NetworkConfig("mlp", 17, (6,), width=8)
    write(tmp_path, 1, net, final=True)
    for step in (2, 3, 4):
        write(tmp_path, step, net)
    prune_checkpoints(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000001.json", "step_000000003.json",
                                                            "step_000000004.json"]
    assert sorted(p.name for p in tmp_path.glob("*.msgpack")) == ["step_000000001.msgpack", "step_000000003.msgpack",
                                                                  "step_000000004.msgpack"]


def test_spec_check_ignores_sampling_fields_of_prompt_only_specs():
    """A prompt-only checkpoint accepts data whose spec differs only in seed/temperature/top_p; a generating one not."""
    from hsrl.llm import ExtractionSpec

    net = NetworkConfig("mlp", 17, (6,), hidden_size=4, width=8)
    for tokens in (1, 8):
        trained = ExtractionSpec(model="tiny-model", tokens=tokens, seed=0)
        meta = {"network": net.to_dict(), "env_name": "Craftax-Classic-Symbolic-v1", "spec_json": trained.to_json()}
        resampled = trained.replace(seed=1, temperature=1.0).to_json()
        if tokens == 1:
            check_compatible(meta, spec_json=resampled)
        else:
            with pytest.raises(CheckpointError, match="fields that differ: seed, temperature"):
                check_compatible(meta, spec_json=resampled)
        with pytest.raises(CheckpointError, match="fields that differ: layer"):
            check_compatible(meta, spec_json=trained.replace(layer=2).to_json())


@pytest.mark.parametrize("state_file", ["../../victim.txt", "/tmp/victim.txt", "..", "sub/step.msgpack", "", 7])
def test_a_state_file_outside_the_folder_is_refused_and_nothing_is_deleted(tmp_path, state_file):
    net = NetworkConfig("mlp", 17, (6,), width=8)
    run = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3, 4):
        write(run, step, net)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    sidecar = run / "step_000000001.json"
    meta = json.loads(sidecar.read_text())
    meta["state_file"] = str(victim) if state_file == "/tmp/victim.txt" else state_file
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="state_file .* not a file name in the checkpoint's folder"):
        prune_checkpoints(run, 2)
    assert victim.read_text() == "keep me"
    assert len(list_checkpoints(run)) == 4 and len(list(run.glob("*.msgpack"))) == 4  # nothing half-pruned
    with pytest.raises(CheckpointError, match="state_file"):
        load_policy(sidecar)
