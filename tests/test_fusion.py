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
    from hsrl.rl.awr import TrainAWRConfig, train_awr
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


def _train_gated(data, out, **kw):
    from hsrl.rl.awr import TrainAWRConfig, train_awr
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics

    train_awr(TrainAWRConfig(str(data), out=str(out), fusion="gated", steps=300, lr=1e-2, beta=1.0, batch_size=128,
                             width=32, log_every=100, save_every=300, progress=False, tensorboard=False, **kw))
    gates = [line["hidden/gate"] for line in read_metrics(out)]
    return gates, load_policy(out).gate


def test_gate_opens_for_a_state_that_carries_the_action_and_stays_closed_on_noise(tmp_path):
    """AWR on 16384 rows where the best action is written only in the hidden state: the gate opens (from 0.0025
    past 0.04); the same rows with a hidden state of pure noise: it stays near closed (under 0.03; it can open a
    little to memorise rows it sees again). The gate is logged as hidden/gate and read from the checkpoint."""
    from experiment_helpers import noise_hidden

    informative = write_hidden_task(tmp_path / "info", np.random.default_rng(0), files=4, rows_per_file=4096)
    rng = np.random.default_rng(0)
    noise = noise_hidden(write_hidden_task(tmp_path / "noise", rng, files=4, rows_per_file=4096), rng)
    open_curve, open_gate = _train_gated(informative, tmp_path / "run_info")
    closed_curve, closed_gate = _train_gated(noise, tmp_path / "run_noise")
    print("informative", open_curve, open_gate, "noise", closed_curve, closed_gate)
    assert len(open_curve) == 3 and open_curve[-1] > open_curve[0]
    assert open_gate > 0.04 and closed_gate < 0.03 and open_gate > 4 * closed_gate


# ------------------------------------------------------------------------------------- eval, experiment


def test_eval_reports_the_gate_and_follows_the_runs_hidden_skip_n(tmp_path):
    """A gated control policy (no LLM) trained with --hidden-skip-n 4: `hsrl eval` refreshes every 4 steps by default,
    and reports the gate in eval.json and eval.md."""
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.rl.awr import TrainAWRConfig, train_awr
    from hsrl.rl.checkpoint import load_policy

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=512)
    run = tmp_path / "control"
    train_awr(TrainAWRConfig(str(data), out=str(run), control=True, fusion="gated", hidden_skip_n=4, steps=20,
                             batch_size=64, width=32, log_every=10, save_every=20, progress=False, tensorboard=False))
    policy = load_policy(run)
    assert policy.network.fusion == "gated" and 0 < policy.gate < 0.01
    report = evaluate(EvalConfig(str(run), episodes=2, envs=2, max_episode_steps=8, ablation="real,shuffled",
                                 out=str(tmp_path / "eval"), progress=False))
    assert report["skip_n"] == 4 and report["gate"] == pytest.approx(policy.gate)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["gate"] == pytest.approx(policy.gate)
    assert f"Gate (--fusion gated): {policy.gate:.4f}" in (tmp_path / "eval" / "eval.md").read_text()


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
    assert len(arms["awr-hidden"]["gate"]) == 1 and 0 < arms["awr-hidden"]["gate"][0] < 1
    md = (tmp_path / "exp" / "experiment.md").read_text()
    assert "Learned gates" in md and f"awr-hidden {arms['awr-hidden']['gate'][0]:.3g}" in md


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
    gates = [line["hidden/gate"] for line in read_metrics(tmp_path / "run")]
    assert len(gates) == 2 and gates[-1] == pytest.approx(policy.gate) and 0 < policy.gate < 0.01
    with pytest.raises(InputError, match="differs"):
        train_online(OnlineConfig(out=str(tmp_path / "warm"), arch="separate", checkpoint=str(tmp_path / "run"), **kw))
