"""The control arm's input: a fixed random projection of the observation (`hsrl.data.projection`), the same in
offline training, offline evaluation and live rollouts (online PPO and `hsrl eval`)."""

import json

import numpy as np
import pytest

from hsrl.data.projection import ObservationProjection, ProjectionSource, is_projection_spec

ENV = "Craftax-Classic-Symbolic-v1"


def test_projection_is_fixed_scaled_and_reads_pixels_in_either_dtype():
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((300, 1345)).astype(np.float32)
    a, b = ObservationProjection((1345,), 64), ObservationProjection((1345,), 64)
    assert np.array_equal(a(obs), b(obs))  # one map for every seed of the arm, like one LLM
    assert not np.allclose(a(obs), ObservationProjection((1345,), 64, seed=1)(obs))
    np.testing.assert_allclose(a(obs), obs @ a.matrix, rtol=1e-5, atol=1e-5)
    # entries N(0, 1/D): a unit-variance input keeps unit variance per output dimension
    assert 0.8 < a(obs).std() < 1.2
    frames = rng.integers(0, 256, (5, 130, 110, 3), dtype=np.uint8)
    pix = ObservationProjection((130, 110, 3), 32)
    assert pix.input_dim <= 8192 and pix.factor > 1  # pooled so the matrix stays small
    np.testing.assert_allclose(pix(frames), pix(frames.astype(np.float32) / 255), rtol=1e-5, atol=1e-5)
    assert is_projection_spec(a.spec_json) and not is_projection_spec(json.dumps({"model": "minilm"}))
    assert ObservationProjection.from_spec_json(a.spec_json).spec_json == a.spec_json
    with pytest.raises(ValueError, match="shape"):
        a(rng.standard_normal((2, 10)))


def test_live_states_are_the_projection_of_the_observation():
    from hsrl.rl.live import LiveHidden

    projection = ObservationProjection((1345,), 16)
    live = LiveHidden("classic", None, ProjectionSource(projection))
    assert live.reads_observations and not live.reads_text and not live.reads_images
    sym = np.random.default_rng(1).random((4, 1345)).astype(np.float32)
    mask = np.array([True, False, True, True])
    out = live(sym, mask)
    np.testing.assert_array_equal(out[mask], projection(sym[mask]))
    assert np.isnan(out[1]).all()


def test_control_arm_trains_offline_and_plays_in_craftax(tmp_path):
    """`train-awr --control` reads the projection (its checkpoint says so); `hsrl eval` plays it in Craftax with the
    same projection computed live, refreshed like an LLM's state; offline evaluation reads the same map."""
    from rl_helpers import write_hidden_task

    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.experiment.offline import evaluate_offline
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.checkpoint import load_policy

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=512)
    run = tmp_path / "control"
    train_awr(TrainAWRConfig(str(data), out=str(run), control=True, steps=20, batch_size=64, width=32,
                             log_every=10, save_every=20, progress=False, tensorboard=False))
    policy = load_policy(run)
    assert is_projection_spec(policy.spec_json) and policy.network.hidden_size == 24
    with pytest.raises(ValueError, match="--control"):
        TrainAWRConfig(str(data), control=True, hidden=False).check()
    offline = evaluate_offline(run, data, ("real", "shuffled"))
    assert set(offline) == {"real", "shuffled"} and len(offline["real"]["halves"]["action_match"]) == 2
    report = evaluate(EvalConfig(str(run), episodes=2, envs=2, max_episode_steps=8, ablation="real,constant",
                                 out=str(tmp_path / "eval"), progress=False))
    assert [r["ablation"] for r in report["results"]] == ["real", "constant"]
    assert all(np.isfinite(r["return_mean"]) and len(r["halves"]["return_mean"]) == 2 for r in report["results"])


def test_online_control_runs_without_a_model(tmp_path, monkeypatch):
    """`hsrl online --control`: the projection at the model's hidden width stands in for the LLM (no model loaded)."""
    import hsrl.llm
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.ppo import OnlineConfig, train_online

    def no_model(*a, **k):
        raise AssertionError("the control arm must not load the LLM")

    monkeypatch.setattr(hsrl.llm, "make_extractor", no_model)
    summary = train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, skip_n=8, num_minibatches=2,
                                        width=32, control=True, out=str(tmp_path / "run"), progress=False))
    policy = load_policy(tmp_path / "run")
    assert summary["llm_calls"] >= 1 and is_projection_spec(policy.spec_json)
    assert policy.network.hidden_size == 384  # MiniLM's width, read from its config
    with pytest.raises(ValueError, match="--control"):
        OnlineConfig(control=True, hidden=False).check()


# ---- the control matched to prompts with history, and its ReLU map ------------------------------------------------

HISTORY_SPEC = json.dumps({"model": "tiny", "layer": -1, "tokens": 1, "pooling": "mean", "history": 2})


def test_history_rows_are_the_steps_a_prompt_shows():
    """Offline, a row's previous steps are exactly `row_history`'s (what labelling puts in its prompt): the same
    environment, oldest first, none before the episode's first step (the step after a `done`), none at the start."""
    from hsrl.data.label import row_history
    from hsrl.data.projection import history_rows

    for seed in range(5):
        rng = np.random.default_rng(seed)
        E, T, k = 3, 15, 3
        done = rng.random(T * E) < 0.25
        action = rng.integers(0, 17, T * E)
        prev = history_rows(done, E, k)
        want = row_history(np.array([str(i) for i in range(T * E)]), action, done, E, k)
        for row in range(T * E):
            got = [int(r) for r in prev[row] if r >= 0]
            assert got == [int(text) for text, _ in want[row]], row
            assert all(r < 0 for r in prev[row][: k - len(got)])  # padding before, as the runner's History holds it
        assert (prev[:E] < 0).all()  # the data's first step has no history
        after_done = np.flatnonzero(done[:-E]) + E
        assert (prev[after_done] < 0).all()  # never across an episode's end


def _episode_data(folder, rng, *, files=3, steps=12, num_envs=3, spec=HISTORY_SPEC, gap_at=2):
    """Chunks of random episodes (Craftax-Classic width): files before `gap_at` follow on, the rest start a new
    segment (a gap in the recording). Returns each segment's (obs, action, done) as (T, E, ...) arrays."""
    from hsrl.data import ChunkMeta, add_returns, chunk_path, write_chunk

    segments = {}
    for i in range(files):
        n = steps * num_envs
        obs = np.zeros((n, 1345), np.float32)
        obs[:, :40] = rng.random((n, 40))  # values in [0, 1], as Craftax's
        arrays = {"obs": obs, "next_obs": obs, "action": rng.integers(0, 17, n),
                  "reward": rng.random(n).astype(np.float32), "done": rng.random(n) < 0.2,
                  "hidden_state": rng.standard_normal((n, 16)).astype(np.float16)}
        segment = int(i >= gap_at)
        write_chunk(chunk_path(folder, i), arrays, ChunkMeta(
            env_name=ENV, num_envs=num_envs, obs_kind="symbolic", first_step=i * steps, spec_json=spec,
            segment=segment))
        segments.setdefault(segment, []).append(arrays)
    add_returns(folder, 0.99, show_progress=False)
    return [tuple(np.concatenate([a[key] for a in parts]).reshape(-1, num_envs, *a0.shape[1:])
                  for key, a0 in (("obs", parts[0]["obs"]), ("action", parts[0]["action"]), ("done", parts[0]["done"])))
            for _, parts in sorted(segments.items())]


def _live_states(projection, obs, action, done, skip_n=1):
    """The states a rollout's runner gets for a (T, E) sequence: `refresh` through `LiveHidden` and a
    `ProjectionSource`, the runner advanced by `Runner.advance` (which pushes its `History`), as in online PPO and
    `hsrl eval`."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    from hsrl.rl.live import History, LiveHidden, Runner, refresh

    live = LiveHidden("classic", None, ProjectionSource(projection))
    assert live.history == projection.history
    T, E = done.shape
    first = jnp.asarray(obs[0])
    runner = Runner(None, first, first, jnp.zeros((E, projection.hidden_size)), jnp.ones(E, bool),
                    jnp.zeros((), jnp.int32), None, History.empty(first, live.history))
    env, out = SimpleNamespace(with_symbolic=False), []
    for t in range(T):
        runner = refresh(runner, live, skip_n)
        out.append(np.asarray(runner.hidden))
        if t + 1 < T:
            runner = runner.advance(env, None, jnp.asarray(obs[t + 1]), {}, jnp.asarray(done[t]), None,
                                    jnp.asarray(action[t]))
    return np.concatenate(out)


@pytest.mark.parametrize("control_map", ["linear", "relu"])
def test_offline_and_live_control_states_agree_with_history(tmp_path, control_map):
    """Data labelled with --history 2: AWR's control input (`load_awr_data(control=True)`), offline evaluation's and
    the runner's live one (refresh + History, as online PPO and `hsrl eval` run it) are the same states for the
    same observation sequence, history reset at episode starts and at a gap in the recording."""
    from hsrl.data import load_dataset
    from hsrl.data.projection import dataset_states
    from hsrl.rl.awr import load_awr_data

    segments = _episode_data(tmp_path, np.random.default_rng(0))
    data = load_awr_data(tmp_path, hidden=True, truncated=True, show_progress=False, control=True,
                         control_map=control_map)
    projection = ObservationProjection.from_spec_json(data.spec_json)
    assert (projection.history, projection.map, projection.num_actions) == (2, control_map, 17)
    live = np.concatenate([_live_states(projection, *seg) for seg in segments])
    np.testing.assert_allclose(data.arrays["hidden_state"], live, rtol=1e-5, atol=1e-5)
    ds = load_dataset(tmp_path, ["obs", "action", "done"], show_progress=False)  # evaluate_offline's path
    np.testing.assert_allclose(dataset_states(projection, ds), live, rtol=1e-5, atol=1e-5)
    # where the history is empty (the data's first step, a gap, the step after a done) the state is the one with
    # no previous steps (zero padding); elsewhere the previous steps change it
    obs, done = ds["obs"], ds["done"]
    E, first_of_gap = 3, 2 * 12 * 3
    empty = np.zeros(len(obs), bool)
    empty[:E] = empty[first_of_gap:first_of_gap + E] = True
    empty[np.flatnonzero(done[:-E]) + E] = True
    np.testing.assert_allclose(live[empty], projection(obs[empty]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(live[~empty], projection(obs[~empty]), atol=1e-3)
    # with --hidden-skip-n the held states agree too (refreshed every 3 steps and at episode starts)
    held = load_awr_data(tmp_path, hidden=True, truncated=True, show_progress=False, control=True,
                         control_map=control_map, hidden_skip_n=3)
    np.testing.assert_allclose(held.arrays["hidden_state"][:first_of_gap],
                               _live_states(projection, *segments[0], skip_n=3), rtol=1e-5, atol=1e-5)


def test_relu_map_is_fixed_by_its_spec_and_old_specs_load_as_the_linear_control():
    from hsrl.data.projection import check_control_map, describe_control
    from hsrl.errors import InputError

    rng = np.random.default_rng(2)
    obs = rng.random((50, 1345)).astype(np.float32)
    hist = (rng.random((50, 2, 1345)).astype(np.float32), rng.integers(0, 17, (50, 2)), rng.integers(0, 3, 50))
    relu = ObservationProjection((1345,), 32, history=2, num_actions=17, map="relu")
    again = ObservationProjection.from_spec_json(relu.spec_json)
    assert again.spec_json == relu.spec_json and json.loads(relu.spec_json)["map"] == "relu"
    np.testing.assert_array_equal(again(obs, hist), relu(obs, hist))
    linear = ObservationProjection((1345,), 32, history=2, num_actions=17)
    np.testing.assert_array_equal(relu.matrix, linear.matrix)  # the same W; relu adds a fixed bias and the ReLU
    np.testing.assert_allclose(relu(obs, hist), np.maximum(linear(obs, hist) + relu.bias, 0), rtol=1e-5, atol=1e-6)
    out = relu(obs, hist)
    assert (out >= 0).all() and 0.1 < (out > 0).mean() < 0.9
    # the history block is laid out lag by lag: a step before the episode's start reads as zeros whatever it holds
    length0 = (hist[0], hist[1], np.zeros(50, np.int64))
    np.testing.assert_array_equal(linear(obs, length0), linear(obs))
    np.testing.assert_allclose(linear(obs, length0), obs @ linear.matrix[:1345], rtol=1e-5, atol=1e-5)
    # a checkpoint of an earlier hsrl: no history or map fields; it loads as the linear control of the observation,
    # and a new control of the same settings writes the same JSON
    old = '{"control": "obs-projection", "hidden_size": 64, "obs_shape": [1345], "seed": 0}'
    p = ObservationProjection.from_spec_json(old)
    assert (p.history, p.map, p.bias) == (0, "linear", None) and p.spec_json == old
    assert ObservationProjection((1345,), 64).spec_json == old
    np.testing.assert_allclose(p(obs), obs @ p.matrix, rtol=1e-5, atol=1e-5)
    assert describe_control(old) == "a fixed random linear projection of the observation to 64 features"
    assert describe_control(linear.spec_json) == ("a fixed random linear projection of the observation and its 2 "
                                                  "previous observations and actions to 32 features")
    assert describe_control(relu.spec_json).startswith("32 fixed random ReLU features")
    assert "its 2 previous observations and actions" in describe_control(relu.spec_json)
    with pytest.raises(InputError, match="symbolic"):
        ObservationProjection((63, 63, 3), 32, history=1, num_actions=17)
    with pytest.raises(InputError, match="--control-map"):
        ObservationProjection((1345,), 32, map="tanh")
    with pytest.raises(InputError, match="needs --control"):
        check_control_map("relu", False)


def test_history_control_trains_offline_and_plays_in_craftax(tmp_path):
    """A ReLU control on data labelled with --history 1: `train-awr --control --control-map relu` records the map
    and the history in its checkpoint; `hsrl eval` rebuilds it and plays it in Craftax with the runner's history
    (real and shuffled states)."""
    from rl_helpers import write_hidden_task

    from hsrl.data.projection import describe_control
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.checkpoint import load_policy

    spec = json.dumps({"model": "tiny", "layer": -1, "tokens": 1, "pooling": "mean", "history": 1})
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=512, spec=spec)
    run = tmp_path / "control"
    train_awr(TrainAWRConfig(str(data), out=str(run), control=True, control_map="relu", steps=20, batch_size=64,
                             width=32, log_every=10, save_every=20, progress=False, tensorboard=False))
    policy = load_policy(run)
    assert json.loads(policy.spec_json) == {"control": "obs-projection", "hidden_size": 24, "history": 1,
                                            "map": "relu", "num_actions": 17, "obs_shape": [1345], "seed": 0}
    assert "its previous observation and action" in describe_control(policy.spec_json)
    with pytest.raises(ValueError, match="--control-map"):
        TrainAWRConfig(str(data), control_map="relu").check()
    report = evaluate(EvalConfig(str(run), episodes=2, envs=2, max_episode_steps=8, ablation="real,shuffled",
                                 out=str(tmp_path / "eval"), progress=False))
    assert all(np.isfinite(r["return_mean"]) for r in report["results"])


def test_online_control_matches_the_prompts_history(tmp_path, monkeypatch):
    """`hsrl online --control --history 2 --control-map relu`: the runner carries the history for the control (no
    model loaded), and the checkpoint's spec says so."""
    import hsrl.llm
    from hsrl.errors import InputError
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.ppo import OnlineConfig, train_online

    def no_model(*a, **k):
        raise AssertionError("the control arm must not load the LLM")

    monkeypatch.setattr(hsrl.llm, "make_extractor", no_model)
    summary = train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, skip_n=8, num_minibatches=2,
                                        width=32, control=True, history=2, control_map="relu",
                                        out=str(tmp_path / "run"), progress=False))
    spec = json.loads(load_policy(tmp_path / "run").spec_json)
    assert summary["llm_calls"] >= 1 and (spec["history"], spec["map"], spec["num_actions"]) == (2, "relu", 17)
    with pytest.raises(InputError, match="Symbolic"):
        OnlineConfig(env="Craftax-Classic-Pixels-v1", control=True, history=2).check()


def test_experiment_refuses_a_history_control_of_pixels_before_training(tmp_path):
    """Pixel data labelled with --history: the matched control would need previous frames the runner does not
    carry; refused by the experiment's checks (before any arm trains), and --no-control runs without it."""
    from data_helpers import make_dataset

    from hsrl.data import add_returns
    from hsrl.errors import InputError
    from hsrl.experiment.config import ExperimentConfig

    (tmp_path / "pix").mkdir()
    make_dataset(tmp_path / "pix", np.random.default_rng(0), files=1, pixels=True, spec=HISTORY_SPEC,
                 hidden=lambda n: np.zeros((n, 8), np.float16))
    add_returns(tmp_path / "pix", 0.99, show_progress=False)
    config = ExperimentConfig(offline=str(tmp_path / "pix"), out=str(tmp_path / "exp"), progress=False)
    with pytest.raises(InputError, match="--history 2.*symbolic observations.*--no-control"):
        config.check_experiment()
    ExperimentConfig(offline=str(tmp_path / "pix"), control=False).check_experiment()
    with pytest.raises(InputError, match="Symbolic --env"):
        ExperimentConfig(online=True, env="Craftax-Classic-Pixels-v1", history=2).check_experiment()
