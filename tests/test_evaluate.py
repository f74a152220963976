import json
import sys
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import free_port, start_serve

from hsrl.evaluate import AblatedHidden, EvalConfig, evaluate
from hsrl.rl.ppo import OnlineConfig, train_online

ENV = "Craftax-Classic-Symbolic-v1"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("online")
    train_online(OnlineConfig(env=ENV, envs=4, steps=64, num_steps=16, skip_n=8, num_minibatches=2, width=32,
                              out=str(out), progress=False))
    return out


def test_eval_reports_every_ablation(run_dir, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(EvalConfig(str(run_dir), episodes=2, envs=2, max_episode_steps=24, out=str(out), progress=False))
    names = [r["ablation"] for r in report["results"]]
    assert names == ["real", "zero", "shuffled", "constant"]
    for r in report["results"]:
        assert r["episodes"] == 2 and r["length_mean"] == 24 and np.isfinite(r["return_mean"])
        assert 0 <= r["craftax_score"] <= 100 and len(r["achievements"]) == 22
    saved = json.loads((out / "eval.json").read_text())
    assert saved["results"] == report["results"]
    assert "| shuffled |" in (out / "eval.md").read_text()
    assert (out / "ablations.png").stat().st_size > 1000


def test_eval_records_its_episode_selection(run_dir, tmp_path):
    """A real Craftax evaluation with fewer episodes than environments: only as many environments run (a quota of 0
    would add nothing), each plays its quota of one episode to its end; eval.json names the rule and the quotas,
    eval.md says it in one line, and the halves split the 3 episodes 2 + 1 (env 0 and 2 against env 1)."""
    from hsrl.evaluate import EPISODE_RULE

    out = tmp_path / "eval"
    report = evaluate(EvalConfig(str(run_dir), episodes=3, envs=5, max_episode_steps=12, ablation="real",
                                 out=str(out), progress=False))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["episode_selection"]["rule"] == EPISODE_RULE
    assert saved["episode_selection"]["environments"] == 3 and saved["episode_selection"]["quota_per_env"] == [1, 1, 1]
    (r,) = report["results"]
    assert r["episodes"] == 3 and r["length_mean"] == 12
    assert len(r["halves"]["return_mean"]) == 2
    assert r["halves"]["return_mean"][0] * 2 + r["halves"]["return_mean"][1] == pytest.approx(
        3 * r["return_mean"], abs=1e-5)  # half 0: two episodes, half 1: one, together the kept three
    assert "fixed quota per environment (1 in each of 3" in (out / "eval.md").read_text()


def test_same_seed_same_result(run_dir, tmp_path):
    """The whole report repeats under one seed (wall times aside); another seed gives another report, so the
    comparison can tell."""

    def results(seed, name):
        report = evaluate(EvalConfig(str(run_dir), episodes=3, envs=2, max_episode_steps=40, ablation="real,shuffled",
                                     seed=seed, out=str(tmp_path / name), progress=False))
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report["results"]]

    a = results(0, "a")
    assert results(0, "b") == a
    assert results(1, "c") != a


class _FakeLive:
    """Stands in for LiveHidden's host call: state i of an observation is its first entry repeated."""

    hidden_size = 3
    reads_images = False

    def states(self, sym, pixels=None):
        return np.repeat(np.asarray(sym)[:, :1], 3, axis=1).astype(np.float32)

    def __call__(self, sym, mask, pixels=None):
        return self.states(sym)


def test_ablations_change_only_the_hidden_input():
    from hsrl.data.stats import HiddenStats

    stats = HiddenStats(mean=np.array([1.0, 2.0, 3.0]), std=np.ones(3), count=10)
    sym = np.arange(4, dtype=np.float32)[:, None] * np.ones((4, 5), np.float32)
    mask = np.ones(4, bool)
    live = _FakeLive()
    real = AblatedHidden(live, "real", stats, None, 0)(sym, mask)
    np.testing.assert_array_equal(real[:, 0], [0, 1, 2, 3])
    zero = AblatedHidden(live, "zero", stats, None, 0)(sym, mask)
    np.testing.assert_array_equal(zero, np.tile(stats.mean, (4, 1)))  # normalises to all zeros
    const = AblatedHidden(live, "constant", stats, np.array([7.0, 7, 7]), 0)(sym, mask)
    assert (const == 7).all()
    shuffled = AblatedHidden(live, "shuffled", stats, None, 0)(sym, mask)
    assert sorted(shuffled[:, 0]) == [0, 1, 2, 3] and not (shuffled[:, 0] == real[:, 0]).any()


def test_bad_ablation_name(run_dir, tmp_path):
    with pytest.raises(ValueError, match="ablation"):
        evaluate(EvalConfig(str(run_dir), ablation="real,nope", out=str(tmp_path), progress=False))


def _serve(port, *extra):
    import os

    return start_serve(ENV, port, "--log-level", "warning", *extra, environ=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_eval_through_the_server_equals_in_process_and_checks_the_spec(run_dir, tmp_path):
    """Same observations, same hidden states: evaluating with a real server gives the in-process numbers;
    a server with another spec is refused before anything runs."""
    from hsrl.serve import HiddenStateClient

    good, bad = free_port(), free_port()
    procs = [_serve(good), _serve(bad, "--layer", "2")]
    try:
        for port in (good, bad):
            HiddenStateClient(f"http://127.0.0.1:{port}", timeout=30).wait_ready(timeout=240)
        kw = dict(episodes=2, envs=2, max_episode_steps=16, ablation="real,shuffled", progress=False)
        local = evaluate(EvalConfig(str(run_dir), out=str(tmp_path / "local"), **kw))
        served = evaluate(EvalConfig(str(run_dir), server=f"http://127.0.0.1:{good}", out=str(tmp_path / "srv"), **kw))
        for a, b in zip(local["results"], served["results"], strict=True):
            assert a["return_mean"] == pytest.approx(b["return_mean"]) and a["achievements"] == b["achievements"]
        with pytest.raises(ValueError, match="layer"):
            evaluate(EvalConfig(str(run_dir), server=f"http://127.0.0.1:{bad}", out=str(tmp_path / "bad"), **kw))
        assert not (tmp_path / "bad" / "eval.json").exists()
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
