import jax
import jax.numpy as jnp
import numpy as np
import pytest
from online_helpers import ENV, check_refresh

from hsrl.env import make_env
from hsrl.errors import InputError
from hsrl.rl.checkpoint import CheckpointError
from hsrl.rl.live import ExtractorSource, LiveHidden, Runner
from hsrl.rl.networks import NetworkConfig, init_params, initial_carry, policy_sequence, policy_step
from hsrl.rl.ppo import Memory, Norm, OnlineConfig, make_rollout, make_update, train_online

@pytest.fixture(scope="module")
def extractor():
    from hsrl.llm import ExtractionSpec, make_extractor

    return make_extractor(ExtractionSpec(model="minilm", variant="classic"), batch_size=16)


def test_refresh_every_skip_n_and_at_once_after_a_reset(extractor):
    check_refresh(extractor)


@pytest.mark.parametrize("policy", ["mlp", "gru"])
def test_ppo_update_improves_its_objective_on_the_data(policy):
    """One update on a rollout raises the clipped surrogate and lowers the value loss on that rollout; the update
    replays the rollout exactly (a GRU over each environment's sequence, reset where an episode starts)."""
    import optax

    from hsrl.rl.ppo import gae

    config = OnlineConfig(env=ENV, envs=8, num_steps=32, num_minibatches=4, hidden=False, width=64, policy=policy)
    env = make_env(ENV, 8, with_symbolic=True)
    net = NetworkConfig(kind="mlp", num_actions=env.info.num_actions, obs_shape=env.info.obs_shape, width=64,
                        policy=policy)
    params = init_params(net, jax.random.PRNGKey(0))
    obs, env_state, info = jax.jit(env.reset)(jax.random.PRNGKey(2))
    t = env_state.env_state.timestep.at[1].set(100_000)  # env 1's episode ends at its first step
    env_state = env_state._replace(env_state=env_state.env_state.replace(timestep=t))
    runner = Runner(env_state, obs, info["symbolic_obs"], jnp.zeros((8, 1)), jnp.zeros(8, bool),
                    jnp.zeros((), jnp.int32), jax.random.PRNGKey(3))
    norm = Norm(jnp.zeros(1), jnp.ones(1))
    memory = Memory.initial(net, 8)
    _, after, traj, last_value = make_rollout(config, env, net, None)(params, runner, memory, norm)
    assert bool(traj.start[1, 1]) and not bool(traj.start[1:, 0].any())
    optimizer = optax.adam(1e-3)
    new_params, _, _ = make_update(config, net, optimizer, False)(params, optimizer.init(params), traj, memory,
                                                                  last_value, norm, jax.random.PRNGKey(4))
    adv, ret = gae(traj, last_value, config.gamma, config.gae_lambda)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    sequence = policy_sequence(net)

    def objective(p):
        logits, value = sequence(p, memory.carry, traj.start, traj.obs, None)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), traj.action[..., None], -1)[..., 0]
        return logp, float((jnp.exp(logp - traj.log_prob) * adv).mean()), float(((value - ret) ** 2).mean())

    (logp0, s0, v0), (_, s1, v1) = objective(params), objective(new_params)
    np.testing.assert_allclose(logp0, traj.log_prob, atol=1e-5)  # the update sees what the rollout acted on
    assert s1 > s0 + 1e-3 and v1 < v0
    if policy == "gru":
        assert after.carry.shape == (8, 64) and float(jnp.abs(after.carry).max()) > 0


def test_gru_carry_resets_at_episode_start():
    """A GRU's output at an observation that starts an episode equals a fresh GRU's on it: nothing of the previous
    episode leaks through; without the start mark the carry changes it."""
    net = NetworkConfig(kind="mlp", num_actions=5, obs_shape=(6,), hidden_size=3, width=16, policy="gru")
    params = init_params(net, jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (7, 2, 6))
    hidden = jax.random.normal(jax.random.PRNGKey(2), (7, 2, 3))
    start = jnp.zeros((7, 2), bool).at[4, 0].set(True)
    sequence, step = policy_sequence(net), policy_step(net)
    carry0 = jax.random.normal(jax.random.PRNGKey(3), (2, 16))  # a carry from before: must not matter at a start
    logits, value = sequence(params, carry0, start, obs, hidden)
    fresh_logits, fresh_value = sequence(params, initial_carry(net, 2), start[4:], obs[4:], hidden[4:])
    np.testing.assert_allclose(logits[4:, 0], fresh_logits[:, 0], atol=1e-5)
    np.testing.assert_allclose(value[4:, 0], fresh_value[:, 0], atol=1e-5)
    assert np.abs(np.asarray(logits[4:, 1] - fresh_logits[:, 1])).max() > 1e-4  # env 1 did not start: memory
    # one step at a time gives the same as the scanned sequence, carry included
    carry = carry0
    for t in range(7):
        carry, step_logits, step_value = step(params, carry, start[t], obs[t], hidden[t])
        np.testing.assert_allclose(step_logits, logits[t], atol=1e-5)
        np.testing.assert_allclose(step_value, value[t], atol=1e-5)


def test_short_online_run_with_llm_writes_a_loadable_checkpoint(tmp_path):
    from hsrl.llm import ExtractionSpec
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics

    out = tmp_path / "run"
    summary = train_online(OnlineConfig(env=ENV, envs=4, steps=128, num_steps=16, skip_n=8, num_minibatches=2,
                                        width=32, out=str(out), progress=False))
    assert summary["llm"] and summary["llm_calls"] >= 3 and summary["steps"] == 128
    policy = load_policy(out)
    assert policy.uses_hidden and policy.hidden_stats.count >= 4 and policy.network.hidden_size == 384
    assert ExtractionSpec.from_json(policy.spec_json).model == "minilm"
    lines = read_metrics(out)
    assert len(lines) == 2 and "time/llm_share" in lines[-1] and "hidden/mean_pairwise_cosine" in lines[-1]
    assert "llm/time_share" not in lines[-1]  # one name per fact: the LLM's share is time/llm_share
    assert lines[-1]["llm/calls"] >= 3 and lines[-1]["llm/calls_per_update"] >= 1
    assert 0 <= lines[-1]["llm/cache_hit_rate"] <= 1 and lines[-1]["llm/mean_call_batch"] >= 1


def test_online_reads_states_from_a_server_and_checkpoints(tmp_path):
    from hsrl.errors import InputError
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    spec = ExtractionSpec(model="minilm", variant="classic")
    served = make_extractor(spec, cache=None, device="cpu")
    app = create_app(spec, ServerSettings(env=ENV), extractor=served)
    server, thread, port = serve_in_thread(app)
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(InputError, match="pooling"):
            train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, num_minibatches=2, server=url,
                                      pooling="last", out=str(tmp_path / "bad"), progress=False))
        out = tmp_path / "run"
        summary = train_online(OnlineConfig(env=ENV, envs=4, steps=128, num_steps=16, skip_n=8, num_minibatches=2,
                                            width=32, server=url, out=str(out), progress=False))
    finally:
        server.should_exit = True
        thread.join(10)
    assert summary["llm"] and summary["spec_hash"] == served.spec.hash and summary["llm_calls"] >= 3
    policy = load_policy(out)
    assert policy.uses_hidden and policy.spec_json == served.spec.to_json() and policy.network.hidden_size == 384
    last = read_metrics(out)[-1]
    assert last["llm/calls_per_update"] >= 1 and last["llm/mean_call_batch"] >= 1


def test_gru_policy_checkpoint_loads_and_evaluates_with_ablations(tmp_path):
    """--policy gru end to end: the checkpoint records the policy kind, load_policy rebuilds it, and eval carries the
    GRU state through its segments for every ablation."""
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.rl.checkpoint import load_policy, read_checkpoint_meta

    out = tmp_path / "gru"
    summary = train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, skip_n=8, num_minibatches=2,
                                        width=32, policy="gru", max_episode_steps=12, out=str(out), progress=False))
    assert summary["steps"] == 64 and summary["episodes"] >= 4  # episodes capped at 12 steps
    assert read_checkpoint_meta(out)["network"]["policy"] == "gru"
    policy = load_policy(out)
    assert policy.recurrent and policy.uses_hidden and policy.initial_carry(3).shape == (3, 32)
    with pytest.raises(ValueError, match="recurrent"):
        policy.apply(np.zeros((1,) + policy.network.obs_shape, np.float32), np.zeros((1, 384), np.float32))
    report = evaluate(EvalConfig(str(out), episodes=2, envs=2, max_episode_steps=70, out=str(tmp_path / "eval"),
                                 progress=False))  # 70 > one 64-step segment: the carry crosses segments
    assert [r["ablation"] for r in report["results"]] == ["real", "zero", "shuffled", "constant"]
    assert all(np.isfinite(r["return_mean"]) and 0 < r["length_mean"] <= 70 for r in report["results"])
    with pytest.raises(InputError, match="--policy"):
        OnlineConfig(policy="lstm").check()


def test_no_hidden_baseline_runs(tmp_path):
    summary = train_online(OnlineConfig(env=ENV, envs=4, steps=128, num_steps=16, num_minibatches=2, width=32,
                                        hidden=False, out=str(tmp_path / "base"), progress=False))
    assert not summary["llm"] and summary["llm_calls"] == 0 and summary["time_share"]["llm"] == 0


def test_checkpoint_with_another_spec_is_refused(tmp_path):
    out = tmp_path / "run"
    train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, num_minibatches=2, width=32, out=str(out),
                              progress=False))
    with pytest.raises(CheckpointError, match="layer"):
        train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, num_minibatches=2, width=32, layer=3,
                                  checkpoint=str(out), out=str(tmp_path / "warm"), progress=False))
    # another run seed is not another spec: --seed seeds the run, --llm-seed the LLM's sampling, and a prompt-only
    # spec samples nothing, so its --llm-seed changes no state either (a generating spec's would: tests/test_llm_spec.py)
    warm = train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, num_minibatches=2, width=32, seed=1,
                                     llm_seed=1, checkpoint=str(out), out=str(tmp_path / "warm2"), progress=False))
    assert warm["steps"] == 64


def test_statistics_from_one_environment_stay_bounded(extractor):
    """From scratch with --envs 1 the first update's statistics come from one state (std 0 everywhere): a state
    of another observation must still normalise to values of the order of its distance in the states' own
    scale, not distance / 1e-6."""
    from hsrl.data.stats import normalize_hidden

    env = make_env(ENV, 1, with_symbolic=True)
    live = LiveHidden("classic", None, ExtractorSource(extractor))
    syms = [np.asarray(jax.jit(env.reset)(jax.random.PRNGKey(k))[2]["symbolic_obs"]) for k in (0, 1)]
    first = live(syms[0], np.ones(1, bool))
    stats = live.stats()
    assert stats.count == 1
    np.testing.assert_allclose(normalize_hidden(first, stats), 0, atol=1e-6)
    other = live.states(syms[1])
    assert np.abs(other - first).max() > 1e-3  # another world, another state
    z = normalize_hidden(other, stats)
    assert np.isfinite(z).all() and np.abs(z).max() < 100


def test_live_hidden_sends_pixels_to_image_specs(classic_pixel_dataset, tiny_vlm_path):
    """The host callback of online PPO and eval with a vision-language model: the asked environments' frames (float
    pixels, as the env gives them) are extracted in one call; the others are NaN; no frames is an error."""
    from hsrl.data import list_chunks, read_chunk, uint8_to_pixels
    from hsrl.llm import ExtractionSpec, make_extractor

    frames = read_chunk(list_chunks(classic_pixel_dataset)[0])["obs"][:4]
    extractor = make_extractor(ExtractionSpec(model=str(tiny_vlm_path), input="image"), batch_size=4)
    live = LiveHidden("classic", None, ExtractorSource(extractor))
    assert live.reads_images and not live.reads_text
    sym = np.zeros((4, 1345), np.float32)  # not read by an image-only spec
    mask = np.array([True, False, True, True])
    out = live(sym, mask, uint8_to_pixels(frames))
    assert np.isnan(out[1]).all() and live.calls == 1 and live.samples == 3
    np.testing.assert_array_equal(out[[0, 2, 3]], extractor.extract(None, images=frames[[0, 2, 3]]).hidden_state)
    with pytest.raises(ValueError, match="pixel observations"):
        live(sym, mask)
    with pytest.raises(ValueError, match="Craftax-Classic-Pixels-v1"):
        train_online(OnlineConfig(env=ENV, envs=2, steps=16, num_steps=8, num_minibatches=1, model=str(tiny_vlm_path),
                                  input="image", progress=False))


@pytest.mark.slow
def test_online_and_eval_on_pixels_with_a_vision_language_model(tiny_vlm_path, tmp_path):
    """A few PPO updates on Craftax-Classic-Pixels with a tiny Qwen3-VL reading the frames, then eval with ablations."""
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.llm import ExtractionSpec
    from hsrl.rl.checkpoint import load_policy

    out = tmp_path / "run"
    summary = train_online(OnlineConfig(env="Craftax-Classic-Pixels-v1", envs=2, steps=32, num_steps=8, skip_n=4,
                                        num_minibatches=1, width=16, model=str(tiny_vlm_path), input="image",
                                        out=str(out), progress=False))
    assert summary["llm"] and summary["llm_calls"] >= 4 and summary["steps"] == 32
    policy = load_policy(out)
    assert ExtractionSpec.from_json(policy.spec_json).input == "image"
    assert policy.network.obs_shape == (63, 63, 3) and policy.network.hidden_size == 64
    report = evaluate(EvalConfig(str(out), episodes=1, envs=2, max_episode_steps=8, ablation="real,shuffled,constant",
                                 out=str(tmp_path / "eval"), progress=False))
    assert [r["ablation"] for r in report["results"]] == ["real", "shuffled", "constant"]
    assert all(np.isfinite(r["return_mean"]) and r["length_mean"] == 8 for r in report["results"])
