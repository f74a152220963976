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
    from hsrl.rl.awr import TrainAWRConfig, train_awr
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
