"""Three network and training levers: gated fusion of the hidden state (a learned gate that starts closed), the
published Craftax PPO network (separate actor and critic towers), and offline rows that read the hidden state on
online PPO's refresh schedule (`--hidden-skip-n`)."""

import json

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import ENV, OBS_DIM, SPEC, write_hidden_task

from hsrl.data import ChunkMeta, add_returns, chunk_path, write_chunk
from hsrl.data.refresh import hold_hidden, refresh_rows
from hsrl.errors import InputError
from hsrl.rl.networks import (
    GATE_LOGIT_INIT, GATE_PARAM, NetworkConfig, dummy_inputs, gate_value, init_params, make_network, param_shapes,
)

# ------------------------------------------------------------------------------------------ networks


def test_config_defaults_old_checkpoints_and_round_trip():
    """Default concat and shared; a stored config without the fields (an old checkpoint) reads as them; new values
    round-trip; bad values and combinations are refused."""
    old = {"kind": "mlp", "num_actions": 17, "obs_shape": [20], "hidden_size": 8, "width": 32, "activation": "relu",
           "policy": "mlp"}
    config = NetworkConfig.from_dict(old)
    assert config.fusion == "concat" and config.arch == "shared" and config == NetworkConfig("mlp", 17, (20,), 8, 32)
    for kw in (dict(fusion="gated"), dict(arch="separate", activation="tanh"), dict(fusion="gated", arch="separate")):
        c = NetworkConfig("mlp", 17, (20,), 8, 32, **kw)
        assert NetworkConfig.from_json(c.to_json()) == c and NetworkConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="fusion must be one of"):
        NetworkConfig("mlp", 17, (20,), 8, fusion="sum")
    with pytest.raises(ValueError, match="gated fusion needs a hidden state"):
        NetworkConfig("mlp", 17, (20,), None, fusion="gated")
    with pytest.raises(ValueError, match="arch must be one of"):
        NetworkConfig("mlp", 17, (20,), 8, arch="wide")
    with pytest.raises(ValueError, match="feed-forward"):
        NetworkConfig("mlp", 17, (20,), 8, arch="separate", policy="gru")


GATED = [NetworkConfig("mlp", 7, (20,), 6, 16, fusion="gated"),
         NetworkConfig("conv", 7, (16, 12, 3), 6, 16, fusion="gated"),
         NetworkConfig("mlp", 7, (20,), 6, 16, fusion="gated", policy="gru"),
         NetworkConfig("mlp", 7, (20,), 6, 16, fusion="gated", arch="separate", activation="tanh"),
         NetworkConfig("conv", 7, (16, 12, 3), 6, 16, fusion="gated", arch="separate")]


def _apply(config, params, obs, hidden):
    """(logits, value) of any network on a batch (a GRU on one step from a zero carry)."""
    net = make_network(config)
    if config.recurrent:
        _, logits, value = net.apply(params, jnp.zeros((obs.shape[1], config.width)), obs, hidden,
                                     jnp.ones(obs.shape[:2], bool))
        return logits, value
    return net.apply(params, obs, hidden)


@pytest.mark.parametrize("config", GATED, ids=lambda c: c.class_name)
def test_gate_starts_closed_and_alone_sets_how_much_of_the_state_is_read(config):
    """Every kind of network (MLP, CNN, GRU, the separate towers): one scalar gate at sigmoid(-6); with the gate shut
    the hidden state changes nothing (the baseline), at its initial value it changes the output little, and a
    projection W grown by training cannot read more of the state through a closed gate (its output is scaled)."""
    params = init_params(config, jax.random.PRNGKey(0))
    assert gate_value(params) == pytest.approx(1 / (1 + np.exp(-GATE_LOGIT_INIT)))
    obs, _ = dummy_inputs(config, 5)
    obs = obs + jax.random.uniform(jax.random.PRNGKey(1), obs.shape)
    h1, h2 = (3 * jax.random.normal(jax.random.PRNGKey(k), obs.shape[:-len(config.obs_shape)] + (6,)) for k in (2, 3))

    def with_logit(p, logit):
        return {"params": {**p["params"], GATE_PARAM: jnp.asarray(logit, jnp.float32)}}

    def diff(p):
        a, b = _apply(config, p, obs, h1), _apply(config, p, obs, h2)
        return max(float(jnp.abs(a[0] - b[0]).max()), float(jnp.abs(a[1] - b[1]).max()))

    assert diff(with_logit(params, -100.0)) == 0.0  # shut: the hidden state is not read at all
    closed, opened = diff(params), diff(with_logit(params, 4.0))
    assert 0 < closed < 0.02 * opened  # opening the gate is what lets the state in
    flat = flax.traverse_util.flatten_dict(params)
    grown = {k: v * 1000 if "fusion" in k else v for k, v in flat.items()}
    assert sum("fusion" in k for k in flat) >= 1
    assert diff(flax.traverse_util.unflatten_dict(grown)) == pytest.approx(closed, rel=1e-3)


def test_concat_parameters_are_unchanged_by_the_gate():
    """The default network has no gate and no projection: the same parameters as before the fusion option."""
    for config in (NetworkConfig("mlp", 7, (20,), 6, 16), NetworkConfig("conv", 7, (16, 12, 3), 6, 16),
                   NetworkConfig("mlp", 7, (20,), 6, 16, policy="gru")):
        tree = param_shapes(config)["params"]
        assert GATE_PARAM not in tree and "fusion" not in tree
        assert gate_value(init_params(config, jax.random.PRNGKey(0))) is None
    assert "fusion" in param_shapes(GATED[0])["params"]


def _singular(kernel) -> np.ndarray:
    return np.linalg.svd(np.asarray(kernel), compute_uv=False)


def test_separate_towers_follow_the_published_network():
    """Craftax_Baselines' ActorCritic: actor and critic towers of 3 x width (tanh), orthogonal sqrt(2) hidden layers,
    0.01 logits, 1.0 value; no shared parameters; the hidden state concatenated to both towers' input."""
    config = NetworkConfig("mlp", 17, (30,), 8, width=64, arch="separate", activation="tanh")
    params = init_params(config, jax.random.PRNGKey(0))["params"]
    assert set(params) == {"actor", "critic"}
    shapes = {t: [params[t][f"Dense_{i}"]["kernel"].shape for i in range(4)] for t in ("actor", "critic")}
    assert shapes["actor"] == [(38, 64), (64, 64), (64, 64), (64, 17)]
    assert shapes["critic"] == [(38, 64), (64, 64), (64, 64), (64, 1)]
    np.testing.assert_allclose(_singular(params["actor"]["Dense_1"]["kernel"]), np.sqrt(2), rtol=1e-4)
    np.testing.assert_allclose(_singular(params["actor"]["Dense_3"]["kernel"]), 0.01, rtol=1e-4)
    np.testing.assert_allclose(_singular(params["critic"]["Dense_3"]["kernel"]), 1.0, rtol=1e-4)
    # tanh: the critic's last hidden layer lies in [-1, 1], so even huge inputs give |value| <= sum |w_out| (ReLU
    # would grow with the input)
    _, value = make_network(config).apply({"params": params}, 1e4 * jnp.ones((2, 30)), jnp.ones((2, 8)))
    assert float(jnp.abs(value).max()) <= float(jnp.abs(params["critic"]["Dense_3"]["kernel"]).sum()) + 1e-5
    # the published conv network on Craftax-Classic pixels: 63 -> 21 -> 7 -> 2 (VALID pools), 2 x 2 x 32 = 128
    conv = NetworkConfig("conv", 17, (63, 63, 3), 8, width=64, arch="separate")
    tree = param_shapes(conv)["params"]
    assert tree["actor"]["Dense_0"]["kernel"].shape == (128 + 8, 64)
    assert [tree["actor"][f"Dense_{i}"]["kernel"].shape for i in (1, 2)] == [(64, 17), (17, 17)]
    assert tree["critic"]["Dense_1"]["kernel"].shape == (64, 1) and "Dense_2" not in tree["critic"]
    assert config.class_name == "ActorCriticSeparate(mlp, hidden)"


def test_separate_towers_share_nothing():
    """A change to the critic's parameters leaves the logits as they were, and the actor's the value."""
    config = NetworkConfig("mlp", 5, (10,), 4, width=16, arch="separate", activation="tanh", fusion="gated")
    params = init_params(config, jax.random.PRNGKey(0))
    obs, hidden = jax.random.normal(jax.random.PRNGKey(1), (3, 10)), jax.random.normal(jax.random.PRNGKey(2), (3, 4))
    logits, value = make_network(config).apply(params, obs, hidden)
    bump = lambda tower: {"params": {**params["params"], tower: jax.tree.map(lambda x: x + 0.5,  # noqa: E731
                                                                              params["params"][tower])}}
    l2, v2 = make_network(config).apply(bump("critic"), obs, hidden)
    np.testing.assert_array_equal(logits, l2)
    assert not np.allclose(value, v2)
    l3, v3 = make_network(config).apply(bump("actor"), obs, hidden)
    np.testing.assert_array_equal(value, v3)
    assert not np.allclose(logits, l3)


# ---------------------------------------------------------------------------------- refresh schedule


def _live_refresh_oracle(done, num_envs, skip_n, first_step):
    """The row each row reads, from `hsrl.rl.live.refresh` itself: a runner whose `sym` is the row id and whose
    hidden-state function returns it, advanced as `Runner.advance` does (episodes from `done`)."""
    from hsrl.rl.live import Runner, refresh

    class RowIds:
        hidden_size, reads_images = 1, False

        def __call__(self, sym, mask):
            return np.where(np.asarray(mask)[:, None], np.asarray(sym), np.nan).astype(np.float32)

    T = len(done) // num_envs
    rows = np.arange(len(done), dtype=np.float32).reshape(T, num_envs, 1)
    # as online PPO begins (every environment gets its state at step 0) and counts steps since a periodic refresh
    runner = Runner(None, None, jnp.asarray(rows[0]), jnp.full((num_envs, 1), jnp.nan), jnp.ones(num_envs, bool),
                    jnp.asarray(first_step % skip_n, jnp.int32), None)
    out = np.empty((T, num_envs), np.int64)
    fn = RowIds()
    for t in range(T):
        runner = refresh(runner, fn, skip_n)
        out[t] = np.asarray(runner.hidden)[:, 0]
        if t + 1 < T:
            runner = runner._replace(sym=jnp.asarray(rows[t + 1]), fresh=jnp.asarray(done.reshape(T, num_envs)[t]),
                                     since_refresh=runner.since_refresh + 1)
    return out.reshape(-1)


def _episode_loop(done, num_envs, skip_n, first_step):
    """Brute force over each environment's episodes: a row reads the latest of its episode's first row and the last
    periodic refresh (collection steps that are multiples of skip_n), never before the data's first row."""
    T = len(done) // num_envs
    d = done.reshape(T, num_envs)
    out = np.empty((T, num_envs), np.int64)
    for e in range(num_envs):
        begin = 0
        for t in range(T):
            if t > 0 and d[t - 1, e]:
                begin = t
            periodic = max((s for s in range(t + 1) if (first_step + s) % skip_n == 0), default=0)
            out[t, e] = max(begin, periodic) * num_envs + e
    return out.reshape(-1)


@pytest.mark.parametrize("num_envs, skip_n, first_step", [(3, 4, 0), (2, 5, 7), (4, 1, 0), (1, 3, 2), (3, 50, 0)])
def test_refresh_rows_match_online_refresh_and_an_episode_loop(num_envs, skip_n, first_step):
    rng = np.random.default_rng(skip_n * 10 + num_envs)
    T = 23
    done = rng.random(T * num_envs) < 0.15
    done[:num_envs] = [True] + [False] * (num_envs - 1)  # environment 0 resets after its first step
    got = refresh_rows(done, num_envs, skip_n, first_step)
    np.testing.assert_array_equal(got, _episode_loop(done, num_envs, skip_n, first_step))
    np.testing.assert_array_equal(got, _live_refresh_oracle(done, num_envs, skip_n, first_step))
    if skip_n == 1:
        np.testing.assert_array_equal(got, np.arange(len(done)))
    else:
        assert got[num_envs] == num_envs  # environment 0's new episode reads its own first state at once
        assert (got <= np.arange(len(done))).all() and (got != np.arange(len(done))).any()


def test_hold_hidden_in_place_and_from_a_read_only_array():
    rng = np.random.default_rng(0)
    done = rng.random(40 * 3) < 0.2
    source = refresh_rows(done, 3, 4)
    hidden = rng.standard_normal((len(done), 5)).astype(np.float32)
    want = hidden[source]
    read_only = hidden.copy()
    read_only.flags.writeable = False
    out = hold_hidden(read_only, source, block=7)
    np.testing.assert_array_equal(out, want)
    assert out is not read_only and not read_only.flags.writeable
    same = hold_hidden(hidden, source, block=7)
    assert same is hidden
    np.testing.assert_array_equal(hidden, want)


def _write_episodes(folder, files=3, steps=8, num_envs=4, seed=0):
    """Chunks whose hidden state is the global row index (exact in float32), with random episode ends."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        n = steps * num_envs
        row = np.arange(i * n, (i + 1) * n, dtype=np.float32)
        done = rng.random(n) < 0.2
        if i == files - 1:
            done[-num_envs:] = True  # every episode ends within the data
        arrays = {"obs": np.zeros((n, OBS_DIM), np.float32), "next_obs": np.zeros((n, OBS_DIM), np.float32),
                  "action": rng.integers(0, 17, n), "reward": rng.random(n).astype(np.float32), "done": done,
                  "hidden_state": np.stack([row, -row], 1)}
        write_chunk(chunk_path(folder, i), arrays, ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic",
                                                             first_step=i * steps, spec_json=SPEC))
    add_returns(folder, 0.99, show_progress=False)
    return folder


@pytest.mark.parametrize("cache", [False, True])
def test_awr_data_reads_the_last_refresh_across_chunk_files(tmp_path, cache):
    from hsrl.data import load_dataset
    from hsrl.rl.awr import load_awr_data

    data = _write_episodes(tmp_path / "data")
    done = load_dataset(data, ["done"], show_progress=False)["done"]
    cache_dir = str(tmp_path / "cache") if cache else None
    for n in (1, 3):
        got = load_awr_data(data, hidden=True, show_progress=False, hidden_skip_n=n, cache_dir=cache_dir)
        want = _episode_loop(done, 4, n, 0)
        np.testing.assert_array_equal(got.arrays["hidden_state"][:, 0], want)
        np.testing.assert_array_equal(got.arrays["hidden_state"][:, 1], -want.astype(np.float32))
        assert set(got.arrays) == {"obs", "action", "return_to_go", "hidden_state"}
    # an episode that spans two files keeps reading its state into the next file
    assert (want[32:40] < 32).any()


def test_flags_are_checked_and_hidden_skip_n_belongs_to_the_run(tmp_path):
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.ppo import OnlineConfig

    data = _write_episodes(tmp_path / "data")
    kw = dict(width=16, batch_size=16, steps=4, log_every=4, save_every=4, progress=False, tensorboard=False)
    for bad, flag in ((dict(fusion="sum"), "--fusion"), (dict(hidden_skip_n=0), "--hidden-skip-n"),
                      (dict(hidden=False, fusion="gated"), "--fusion gated"),
                      (dict(hidden=False, hidden_skip_n=2), "--hidden-skip-n")):
        with pytest.raises(InputError, match=flag):
            TrainAWRConfig(str(data), **kw, **bad).check()
    for bad, flag in ((dict(arch="wide"), "--arch"), (dict(arch="separate", policy="gru"), "--arch separate"),
                      (dict(fusion="sum"), "--fusion"), (dict(fusion="gated", hidden=False), "--fusion gated")):
        with pytest.raises(InputError, match=flag):
            OnlineConfig(**bad).check()
    run = tmp_path / "run"
    train_awr(TrainAWRConfig(str(data), out=str(run), hidden_skip_n=3, **kw))
    for changed, flag in ((dict(hidden_skip_n=1), "--hidden-skip-n 3"), (dict(fusion="gated"), "--fusion 'concat'")):
        with pytest.raises(InputError, match=flag):
            train_awr(TrainAWRConfig(str(data), out=str(run), **{**kw, "steps": 8, "hidden_skip_n": 3, **changed}))
    assert train_awr(TrainAWRConfig(str(data), out=str(run), hidden_skip_n=3, **{**kw, "steps": 8}))["step"] == 8


# ------------------------------------------------------------------------------------------- the gate


def test_gate_has_its_own_rate_sized_to_travel_the_same_distance_in_any_run():
    """The gate logit's Adam rate is GATE_TRAVEL / optimiser steps (at most GATE_MAX_LR): 12 logit units at the
    defaults of `online` (384 steps: 12 updates x 4 epochs x 8 minibatches), `train-awr` (100,000) and the
    experiment's AWR arms (20,000); the gate moves at that rate and every other parameter at the run's own."""
    import optax

    from hsrl.experiment.config import ExperimentConfig
    from hsrl.rl.awr import AWRHyper, TrainAWRConfig, make_optimizer
    from hsrl.rl.networks import GATE_MAX_LR, GATE_TRAVEL, gate_could_open, gate_learning_rate
    from hsrl.rl.ppo import OnlineConfig, gate_travel
    from hsrl.rl.ppo import make_optimizer as ppo_optimizer

    online = OnlineConfig()
    assert online.optimizer_steps == 12 * 4 * 8 == 384
    assert gate_travel(online, online.num_updates) == pytest.approx(GATE_TRAVEL) and GATE_TRAVEL >= 2 * 6
    exp = ExperimentConfig()
    for steps in (TrainAWRConfig("x").steps, exp.awr_steps):
        hyper = AWRHyper.of(TrainAWRConfig("x", steps=steps, lr=exp.awr_lr, fusion="gated"))
        assert hyper.gate_lr * steps == pytest.approx(GATE_TRAVEL) and hyper.lr == 3e-4
    assert AWRHyper.of(TrainAWRConfig("x")).gate_lr is None  # concat: one Adam, the optimiser state as before
    assert gate_learning_rate(20) == GATE_MAX_LR and not gate_could_open(20 * GATE_MAX_LR)  # a tiny run moves less
    assert gate_could_open(6.0) and not gate_could_open(5.9) and not gate_could_open(None)
    # one Adam step on a gradient of ones moves each parameter by its learning rate: the gate by its own
    config = NetworkConfig("mlp", 7, (20,), 6, 16, fusion="gated")
    params = init_params(config, jax.random.PRNGKey(0))
    ones = jax.tree.map(jnp.ones_like, params)
    for opt, main_lr, gate_lr in ((make_optimizer(AWRHyper(gate_lr=0.01)), 3e-4, 0.01),
                                  (ppo_optimizer(OnlineConfig(max_grad_norm=1e9), config), 2e-4, 12 / 384)):
        step = opt.update(ones, opt.init(params), params)[0]
        moved = optax.apply_updates(params, step)
        assert float(moved["params"][GATE_PARAM] - params["params"][GATE_PARAM]) == pytest.approx(-gate_lr, rel=1e-3)
        kernel = moved["params"]["fusion"]["kernel"] - params["params"]["fusion"]["kernel"]
        np.testing.assert_allclose(kernel, -main_lr, rtol=1e-3)


def _awr_gate(hidden_kind: str, steps: int, lr: float, batch_size: int, rows: int = 1 << 18, width: int = 32):
    """The gate after AWR (the real update, Adam and batch sampling of `hsrl.rl.awr`) at the given defaults on
    synthetic rows: noise observations, uniform actions; the hidden state is the action (one-hot + noise) and the
    return noise ("action"), or pure noise with the rewarded action in the observation ("noise"). Its curve, ten
    points."""
    from hsrl.rl.awr import AWRHyper, TrainAWRConfig, hidden_stats_of, init_state, make_device_block, make_update

    A, D, H = 17, 8, 32
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((rows, D)).astype(np.float32)
    action = rng.integers(0, A, rows).astype(np.int32)
    if hidden_kind == "action":
        hidden = 0.1 * rng.standard_normal((rows, H)).astype(np.float32)
        hidden[np.arange(rows), action] += 1.0
        ret = rng.standard_normal(rows).astype(np.float32)
    else:
        best = rng.integers(0, A, rows)
        obs[:, 0] = best
        hidden = rng.standard_normal((rows, H)).astype(np.float32)
        ret = np.where(action == best, 10.0, 0.0).astype(np.float32)
    hyper = AWRHyper.of(TrainAWRConfig("x", steps=steps, lr=lr, batch_size=batch_size, fusion="gated", width=width))
    net = NetworkConfig("mlp", A, (D,), H, width, fusion="gated")
    block = make_device_block(make_update(net, hyper, hidden_stats_of(hidden, None)), batch_size)
    data = {"obs": jnp.asarray(obs), "action": jnp.asarray(action), "return_to_go": jnp.asarray(ret),
            "hidden_state": jnp.asarray(hidden), "rows": jnp.arange(rows, dtype=jnp.int32)}
    state, curve = init_state(net, hyper, 0), []
    for _ in range(10):
        for _ in range(steps // 10 // 1000):
            state, _ = block(state, data, 1000)
        curve.append(gate_value(state.params))
    return curve


def _check_opens(name, informative, noise, opened, near):
    start = 1 / (1 + np.exp(-GATE_LOGIT_INIT))
    print(name, "state = action:", [f"{g:.4f}" for g in informative], "noise:", [f"{g:.4f}" for g in noise])
    assert informative[-1] > opened > 20 * start  # well above its start (0.0025)
    assert noise[-1] < near and max(noise) < near  # near its start
    assert informative[-1] > 5 * noise[-1]


def test_gate_opens_at_the_experiment_awr_defaults():
    """The experiment's AWR arms (--awr-steps 20,000 at --awr-lr 3e-4, batch 256): a state equal to the action opens
    the gate (with the network's rate its logit could have moved 6 in all; the gate's own rate gives 12), a noise
    state leaves it near its start (on 262,144 rows seen 20 times it drifts a little: memorising rows)."""
    from hsrl.experiment.config import ExperimentConfig

    exp = ExperimentConfig()
    kw = dict(steps=exp.awr_steps, lr=exp.awr_lr, batch_size=exp.awr_batch_size)
    # 0.32 here; 0.15 with the gate at the network's rate (a travel of 6, the least that could open it)
    _check_opens("experiment awr", _awr_gate("action", **kw), _awr_gate("noise", **kw), opened=0.2, near=0.03)


@pytest.mark.slow
def test_gate_opens_at_the_train_awr_defaults():
    """`hsrl train-awr`'s defaults (100,000 steps at 3e-4, batch 256): the same as at the experiment's."""
    from hsrl.rl.awr import TrainAWRConfig

    d = TrainAWRConfig("x")
    kw = dict(steps=d.steps, lr=d.lr, batch_size=d.batch_size)
    _check_opens("train-awr", _awr_gate("action", **kw), _awr_gate("noise", **kw), opened=0.06, near=0.03)


def _ppo_gate(informative: bool, width: int = 128, H: int = 64, seed: int = 0):
    """The gate after `hsrl online`'s default run (OnlineConfig(): 12 updates of 128 environments x 64 steps, 4 epochs
    x 8 minibatches, lr 2e-4 annealed to 0, clipping, its update and optimiser) on a synthetic bandit: each step a
    fresh target action, reward 1 for playing it. Informative: the hidden state names the target (one-hot + noise),
    the observation is noise; noise: the hidden state is noise, the observation names the target. Its curve."""
    from hsrl.data.stats import normalize_hidden
    from hsrl.rl.networks import policy_sequence
    from hsrl.rl.ppo import Memory, Norm, OnlineConfig, Transition, make_optimizer, make_update

    A, D = 17, 24
    config = OnlineConfig(width=width)
    net = NetworkConfig("mlp", A, (D,), H, width, fusion="gated")
    params = init_params(net, jax.random.PRNGKey(seed))
    optimizer = make_optimizer(config, net)
    opt_state, sequence = optimizer.init(params), policy_sequence(net)
    update = make_update(config, net, optimizer, True)
    T, E = config.num_steps, config.envs
    norm = Norm(jnp.zeros(H), jnp.ones(H))

    @jax.jit
    def rollout(params, key):
        k_target, k_obs, k_hidden, k_act = jax.random.split(key, 4)
        target = jax.random.randint(k_target, (T, E), 0, A)
        obs = jax.random.normal(k_obs, (T, E, D))
        hidden = 0.1 * jax.random.normal(k_hidden, (T, E, H))
        if informative:
            hidden = hidden.at[..., :A].add(3 * jax.nn.one_hot(target, A))
        else:
            hidden = 10 * hidden
            obs = obs.at[..., :A].set(3 * jax.nn.one_hot(target, A))
        start = jnp.ones((T, E), bool)
        logits, value = sequence(params, jnp.zeros((E, 1)), start, obs, normalize_hidden(hidden, norm))
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
        zero = jnp.zeros((T, E))
        return Transition(obs, start, hidden, action, log_prob, value, (action == target).astype(jnp.float32), start,
                          zero, zero, jnp.zeros((T, E, 1), bool))

    key, curve = jax.random.PRNGKey(seed + 1), []
    for _ in range(config.num_updates):
        key, k_roll, k_update = jax.random.split(key, 3)
        memory = Memory(jnp.zeros((E, 1)), jnp.ones(E, bool))
        params, opt_state, _ = update(params, opt_state, rollout(params, k_roll), memory, jnp.zeros(E), norm, k_update)
        curve.append(gate_value(params))
    return curve


def test_gate_opens_at_the_online_defaults():
    """`hsrl online`'s defaults (100,000 steps: 384 optimiser steps at 2e-4 annealed to 0, whose summed rate, 0.04,
    could not move the logit off -6): a state that names the rewarded action opens the gate, a noise state leaves it
    near its start. (Width 128: at 16 to 64 the network itself learns too little in 384 steps at 2e-4 for any state
    to pay, so no gate opens; hsrl's default is 512.)"""
    # 0.997 here (0.26 to 0.996 over seeds 0-2); 0.0026 with the gate at the network's rate
    _check_opens("online", _ppo_gate(True), _ppo_gate(False), opened=0.1, near=0.01)


def test_gate_travel_is_recorded_and_a_continued_run_adds_to_it(tmp_path):
    """train-awr records how far the gate could have moved: hidden/gate_travel per log line, gate_travel in each
    checkpoint and the summary; a run continued with a larger --steps adds its own rate's travel to the saved one.
    The gated optimiser state (two Adams) round-trips through a checkpoint."""
    import flax.serialization

    from hsrl.rl.awr import AWRHyper, TrainAWRConfig, make_optimizer

    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=512)
    kw = dict(out=str(tmp_path / "run"), fusion="gated", batch_size=32, width=16, log_every=10, save_every=10,
              progress=False, tensorboard=False)
    first = train_awr(TrainAWRConfig(str(data), steps=20, **kw))
    assert first["gate_travel"] == pytest.approx(20 * 0.05) and load_policy(tmp_path / "run").gate_travel == 1.0
    more = train_awr(TrainAWRConfig(str(data), steps=300, **kw))  # 280 more steps at 12 / 300
    assert more["resumed"] and more["gate_travel"] == pytest.approx(1.0 + 280 * 12 / 300)
    travel = [line["hidden/gate_travel"] for line in read_metrics(tmp_path / "run")]
    assert travel[:2] == pytest.approx([0.5, 1.0]) and travel[-1] == pytest.approx(more["gate_travel"])
    assert load_policy(tmp_path / "run").gate_travel == pytest.approx(more["gate_travel"])
    config = NetworkConfig("mlp", 7, (20,), 6, 16, fusion="gated")
    params = init_params(config, jax.random.PRNGKey(0))
    opt = make_optimizer(AWRHyper(gate_lr=0.01))
    state = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)[1]
    raw = flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(
        flax.serialization.to_state_dict(state)))
    back = flax.serialization.from_state_dict(opt.init(params), raw)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_gate_travel_of_checkpoints_written_before_the_gate_had_its_own_rate():
    """Older checkpoints have no gate_travel: the gate then shared the network's rate, so its travel is that rate
    summed: 30 for train-awr's defaults (readable), 0.0385 for online's (2e-4 annealed over 384 steps: not)."""
    from hsrl.rl.checkpoint import gate_travel_of
    from hsrl.rl.ppo import OnlineConfig
    from hsrl.redact import public_config

    net = NetworkConfig("mlp", 17, (20,), 8, 16, fusion="gated").to_dict()
    awr = {"algorithm": "awr", "network": net, "step": 100_000, "train_config": {"lr": 3e-4}}
    assert gate_travel_of(awr) == pytest.approx(30.0)
    online = {"algorithm": "ppo", "network": net, "step": 12 * 128 * 64, "train_config": public_config(OnlineConfig())}
    assert gate_travel_of(online) == pytest.approx(2e-4 * sum(1 - k / 384 for k in range(384)))
    assert gate_travel_of(online) == pytest.approx(0.0385)
    assert gate_travel_of({**awr, "gate_travel": 12.0}) == 12.0
    assert gate_travel_of({**awr, "network": {**net, "fusion": "concat"}}) is None
    assert gate_travel_of({"algorithm": "imported", "network": net, "step": 1}) is None  # unknown


def test_a_gate_is_read_only_where_its_run_could_have_moved_it():
    """eval.md's sentence and experiment.md's gates: a gate whose run could not move it (travel under 6, or unknown)
    is said to be unread, never "not needed"; one whose run could is read."""
    from hsrl.evaluate import gate_sentence
    from hsrl.experiment.report import _gates, _gates_text

    closed = gate_sentence(0.0026, 0.0385)
    assert "could not have moved at these settings" in closed and "does not need the state" not in closed
    assert "0.0385" in closed and "not read" in closed
    unknown = gate_sentence(0.0026, None)
    assert "not read" in unknown and "unknown" in unknown and "does not need the state" not in unknown
    read = gate_sentence(0.0026, 12.0)
    assert "not read" not in read and "does not need the state" in read and "could move up to 12" in read
    assert gate_sentence(None, 12.0) is None

    def run(seed, gate, travel="absent"):
        train = {"gate": gate} if travel == "absent" else {"gate": gate, "gate_travel": travel}
        return {"seed": seed, "train": train}

    gates = _gates([run(0, 0.0026, 12.0), run(1, 0.0031, 0.0385), run(2, 0.0028)])
    assert [g["could_open"] for g in gates] == [True, False, False] and gates[2]["travel"] is None
    text = _gates_text("ppo-hidden", gates)
    assert text.startswith("ppo-hidden 0.0026; not read at seeds 1, 2")
    assert "could move at most 0.0385 of the 6" in text and "could not have moved at these settings" in text
    only_old = _gates_text("awr-hidden", _gates([run(0, 0.002)]))
    assert only_old.startswith("awr-hidden not read at seed 0") and "does not record" in only_old
    assert _gates_text("awr-hidden", _gates([run(0, 0.5, 12.0), run(1, 0.002, 30.0)])) == "awr-hidden 0.5, 0.002"
    assert _gates([run(0, None, None)]) is None


# ------------------------------------------------------------------------------------- eval, experiment


def test_eval_reports_the_gate_and_follows_the_runs_hidden_skip_n(tmp_path):
    """A gated control policy (no LLM) trained with --hidden-skip-n 4: `hsrl eval` refreshes every 4 steps by default,
    and reports the gate in eval.json and eval.md."""
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.checkpoint import load_policy

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=512)
    run = tmp_path / "control"
    train_awr(TrainAWRConfig(str(data), out=str(run), control=True, fusion="gated", hidden_skip_n=4, steps=20,
                             batch_size=64, width=32, log_every=10, save_every=20, progress=False, tensorboard=False))
    policy = load_policy(run)
    assert policy.network.fusion == "gated" and 0 < policy.gate < 0.01
    assert policy.gate_travel == pytest.approx(20 * 0.05)  # 20 steps at the gate's largest rate: it could not open
    report = evaluate(EvalConfig(str(run), episodes=2, envs=2, max_episode_steps=8, ablation="real,shuffled",
                                 out=str(tmp_path / "eval"), progress=False))
    assert report["skip_n"] == 4 and report["gate"] == pytest.approx(policy.gate)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["gate"] == pytest.approx(policy.gate) and saved["gate_travel"] == pytest.approx(1.0)
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert f"Gate (--fusion gated): {policy.gate:.4f}" in md and "could not have moved at these settings" in md
    assert "does not need the state" not in md


def test_experiment_trains_gated_arms_and_reports_their_gates(tmp_path):
    from experiment_helpers import task_pair

    from hsrl.experiment.config import ExperimentConfig, plan, run_experiment

    train, held = task_pair(tmp_path, 2, rows_per_file=256, files=1)
    config = ExperimentConfig(offline=str(train), eval_data=str(held), out=str(tmp_path / "exp"), seeds=1,
                              awr_steps=20, awr_batch_size=32, awr_save_every=20, width=16, fusion="gated",
                              progress=False, bootstrap_reps=200)
    jobs = plan(config)
    assert {j.arm: j.train.fusion for j in jobs} == {"awr-baseline": "concat", "awr-hidden": "gated",
                                                     "awr-control": "gated"}
    assert jobs[1].identity()["train"]["fusion"] == "gated" and "fusion" not in jobs[0].identity()["train"]
    online = {j.arm: j.train for j in plan(ExperimentConfig(online=True, seeds=1, fusion="gated", arch="separate"))}
    assert online["ppo-baseline"].fusion == "concat" and online["ppo-hidden"].fusion == "gated"
    assert {t.arch for t in online.values()} == {"separate"}
    # runs finished before these settings existed keep their identity (defaults are left out of it)
    default = plan(ExperimentConfig(offline=str(train), seeds=1))[1].identity()["train"]
    assert not {"fusion", "hidden_skip_n", "arch"} & set(default)
    report = run_experiment(config)
    arms = report["aggregates"]["arms"]
    assert arms["awr-baseline"]["gate"] is None
    (hidden,) = arms["awr-hidden"]["gate"]  # 20 steps: the logit could move 1 (20 x 0.05), not the 6 it needs
    assert 0 < hidden["gate"] < 1 and hidden["travel"] == pytest.approx(1.0) and hidden["could_open"] is False
    result = json.loads(next((tmp_path / "exp" / "runs" / "awr-hidden").rglob("result.json")).read_text())
    assert result["train"]["gate"] == pytest.approx(hidden["gate"]) and result["train"]["gate_travel"] == 1.0
    md = (tmp_path / "exp" / "experiment.md").read_text()
    assert "Learned gates" in md and "awr-hidden not read at seed 0" in md
    assert f"could not have moved at these settings; values {hidden['gate']:.3g})" in md


# ------------------------------------------------------------------------------------------- online


def test_online_builds_the_published_network_with_a_gate_and_logs_it(tmp_path):
    """`hsrl online --arch separate --fusion gated` (the control's projection in place of the LLM): the checkpoint
    records the published towers (tanh) and the gate, every update logs hidden/gate, and a warm start with another
    fusion is refused."""
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics
    from hsrl.rl.ppo import OnlineConfig, train_online

    kw = dict(env=ENV, envs=4, steps=64, num_steps=8, skip_n=4, num_minibatches=2, width=32, control=True,
              progress=False)
    train_online(OnlineConfig(out=str(tmp_path / "run"), arch="separate", fusion="gated", **kw))
    policy = load_policy(tmp_path / "run")
    net = policy.network
    assert (net.arch, net.fusion, net.activation, net.class_name) == (
        "separate", "gated", "tanh", "ActorCriticSeparate(mlp, hidden, gated)")
    lines = read_metrics(tmp_path / "run")
    gates = [line["hidden/gate"] for line in lines]
    assert len(gates) == 2 and gates[-1] == pytest.approx(policy.gate) and 0 < policy.gate < 0.01
    # 2 updates x 4 epochs x 2 minibatches = 16 steps at the gate's largest rate, 0.05
    assert [line["hidden/gate_travel"] for line in lines] == pytest.approx([0.4, 0.8])
    assert policy.gate_travel == pytest.approx(0.8)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["gate_travel"] == pytest.approx(0.8)
    with pytest.raises(InputError, match="differs"):
        train_online(OnlineConfig(out=str(tmp_path / "warm"), arch="separate", checkpoint=str(tmp_path / "run"), **kw))


def test_a_gated_online_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The gate's own Adam is part of the optimiser state PPO saves: a run resumed from its first update's checkpoint
    ends with the parameters and optimiser state of the run that was never stopped, and the same gate travel."""
    import shutil

    import flax.serialization

    from hsrl.rl.ppo import OnlineConfig, train_online

    kw = dict(env=ENV, envs=4, steps=64, num_steps=8, skip_n=4, num_minibatches=2, width=32, control=True,
              fusion="gated", save_every=1, progress=False)
    ref = tmp_path / "ref"
    train_online(OnlineConfig(out=str(ref), **kw))
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    (cut / "summary.json").unlink()
    for path in (cut / "checkpoints").glob("step_000000064.*"):  # back to the first update's checkpoint
        path.unlink()
    summary = train_online(OnlineConfig(out=str(cut), **kw))
    assert summary["resumed_from"] == 32 and summary["gate_travel"] == pytest.approx(0.8)

    def final(out):
        return flax.serialization.msgpack_restore((out / "checkpoints" / "step_000000064.msgpack").read_bytes())

    a, b = final(ref), final(cut)
    for part in ("params", "opt_state"):
        flat_a, flat_b = flax.traverse_util.flatten_dict(a[part]), flax.traverse_util.flatten_dict(b[part])
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=f"{part}/{k}")
