"""`hsrl experiment`: interval estimates that find a hidden state the policy needs and find nothing in noise,
resuming, and the Ray path (two workers, one killed mid-run) equal to the sequential one."""

import dataclasses
import json

import numpy as np
import pytest
from experiment_helpers import task_pair

from hsrl.data import DataFileError
from hsrl.experiment import stats
from hsrl.experiment.config import ExperimentConfig, plan, run_experiment
from hsrl.experiment.runs import RESULT_FILE

FAST = dict(seeds=5, awr_steps=300, awr_batch_size=128, awr_lr=1e-3, awr_beta=1.0, awr_save_every=100, width=32, progress=False,
            bootstrap_reps=2000)


def experiment(train, held, out, **kw):
    return ExperimentConfig(offline=str(train), eval_data=str(held), out=str(out), **{**FAST, **kw})


@pytest.fixture(scope="module")
def informative(tmp_path_factory):
    root = tmp_path_factory.mktemp("informative")
    train, held = task_pair(root, 0)
    report = run_experiment(experiment(train, held, root / "exp"))
    return train, held, root / "exp", report


def _answers(agg) -> dict:
    return agg["claims"]["awr"]


def test_hidden_state_that_decides_the_action_is_found(informative):
    """Information only in the hidden state: it is used, and the hidden arm beats the baseline and the control."""
    _, _, out, report = informative
    agg = report["aggregates"]
    print(agg["verdict"])
    assert _answers(agg) == {"uses": "above", "beats_baseline": "above", "beats_control": "above"}
    comp = agg["comparisons"]["awr"]["action_match"]
    # every seed of the hidden arm above every seed of the others: P = 1, the smallest permutation p at 5 seeds
    assert comp["vs_baseline"]["estimate"] == 1 and comp["vs_control"]["estimate"] == 1
    assert comp["vs_baseline"]["p_exact"] == pytest.approx(2 / 252)
    assert comp["vs_baseline"]["mean_difference"]["low"] > 0 and comp["vs_control"]["mean_difference"]["low"] > 0
    # the use's equivalence test joins the family (the arms' TOST needs a spread of P: none at complete separation)
    assert agg["family"] == {"size": 3, "method": "Holm", "alpha": pytest.approx(0.05), "metric": "action_match",
                             "equivalence_tests": 1}
    assert agg["gaps"]["awr-hidden"]["real-shuffled"]["action_match"]["low"] > 0
    hidden = agg["arms"]["awr-hidden"]["action_match"]["mean"]
    base = agg["arms"]["awr-baseline"]["action_match"]["mean"]
    control = agg["arms"]["awr-control"]["action_match"]["mean"]
    assert hidden[0] > 0.3 and base[2] < 0.15 and control[2] < 0.15  # chance is 1/17
    assert agg["margins"]["awr"]["uses"] == pytest.approx(0.1 * base[0])  # 10% of the baseline's mean
    md = (out / "experiment.md").read_text()
    assert "yes: the policy uses its hidden state" in md and "yes: the hidden-state policy beats the baseline" in md
    assert "yes: it beats the same-width control" in md
    saved = json.loads((out / "experiment.json").read_text())
    assert len(saved["runs"]) == 15 and saved["aggregates"] == json.loads(json.dumps(agg))
    # every run's evaluation halves, and the evaluation-noise shares computed from them
    assert all(len(r["ablations"]["real"]["halves"]["action_match"]) == 2 for r in saved["runs"])
    assert 0 <= agg["eval_noise"]["awr-hidden"]["action_match"] <= 1
    for png in ("intervals.png", "comparisons.png", "curves.png"):
        assert (out / png).stat().st_size > 5000


@pytest.mark.parametrize("seed", [0, pytest.param(10, marks=pytest.mark.slow)])  # a second seed: `pytest -m slow`
def test_noise_hidden_states_make_no_claim(tmp_path, seed):
    """A hidden state of pure noise, at two experiment seeds: no effect is claimed (the use may be shown equivalent
    within the default margin, 10% of the baseline's score: tests/test_experiment_equivalence.py)."""
    train, held = task_pair(tmp_path, 1, noise=True)
    agg = run_experiment(experiment(train, held, tmp_path / "exp", seed=seed))["aggregates"]
    print(agg["verdict"])
    assert not {"above", "below"} & set(_answers(agg).values())
    assert "yes:" not in agg["verdict"] and "inconclusive" in agg["verdict"]


def test_a_map_of_the_observation_does_not_beat_the_control(tmp_path):
    """A hidden state that is a random linear map of the observation: the policy may use it, but it carries
    nothing beyond the observation, so the hidden arm does not beat the same-width control."""
    train, held = task_pair(tmp_path, 2, obs_map=True)
    agg = run_experiment(experiment(train, held, tmp_path / "exp"))["aggregates"]
    print(agg["verdict"])
    assert _answers(agg)["beats_control"] != "above"
    # not a test of nothing: both arms that read the map learned it (chance is 1/17)
    assert agg["arms"]["awr-hidden"]["action_match"]["mean"][1] > 0.1
    assert agg["arms"]["awr-control"]["action_match"]["mean"][1] > 0.1


def test_checks_before_any_run(tmp_path):
    """Widths, specs and actions out of range are refused before the first arm trains (no run folder made)."""
    from hsrl.data import list_chunks, read_chunk, update_chunk

    train, held = task_pair(tmp_path, 3)
    path = list_chunks(held)[0]
    h = read_chunk(path, ["hidden_state"])["hidden_state"]
    update_chunk(path, {"hidden_state": np.concatenate([h, h], 1)})
    with pytest.raises(ValueError, match="hidden width 48"):
        run_experiment(experiment(train, held, tmp_path / "exp"))
    update_chunk(path, {"hidden_state": h})
    path = list_chunks(train)[1]
    action = read_chunk(path, ["action"])["action"].copy()
    action[5] = 17
    update_chunk(path, {"action": action})
    with pytest.raises(ValueError, match="row 5 holds 17"):
        run_experiment(experiment(train, held, tmp_path / "exp"))
    assert not (tmp_path / "exp" / "runs").exists()


def test_rerun_skips_finished_runs_and_refuses_other_settings(informative, tmp_path):
    train, held, out, report = informative
    stamps = {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/*/{RESULT_FILE}")}
    again = run_experiment(experiment(train, held, out))
    assert again["config"]["runs_skipped"] == 15 and again["config"]["runs_done"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"runs/*/*/{RESULT_FILE}")} == stamps
    assert json.dumps(again["aggregates"], sort_keys=True) == json.dumps(report["aggregates"], sort_keys=True)
    with pytest.raises(ValueError, match="other settings"):
        run_experiment(experiment(train, held, out, awr_lr=5e-4))


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to run"):
        ExperimentConfig(out=str(tmp_path)).check_experiment()
    with pytest.raises(FileNotFoundError, match="--offline"):
        ExperimentConfig(offline=str(tmp_path / "nope")).check_experiment()
    with pytest.raises(ValueError, match="--ablation"):
        ExperimentConfig(offline=str(tmp_path), ablation="zero").check_experiment()


def test_descriptive_intervals_follow_the_definitions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1, 1, 10), rng.normal(0, 1, 10)
    p = stats.rank_test(x, y)
    assert p.estimate == pytest.approx(np.mean(x[:, None] > y[None, :]))  # Mann-Whitney U / (n m), no ties
    assert p.low <= p.estimate <= p.high
    mi = stats.mean_iqm(x)
    srt = np.sort(x)
    assert mi["mean"][0] == pytest.approx(x.mean()) and mi["iqm"][0] == pytest.approx(srt[2:8].mean())  # 25% trimmed
    rate, low, high = stats.wilson([0, 5], [10, 10])
    assert rate.tolist() == [0, 0.5] and low[0] == 0 and 0.23 < low[1] < 0.24 and 0.76 < high[1] < 0.77
    m = stats.mean_t([1, 2, 3])
    assert m[0] == 2 and m[1] == pytest.approx(2 - 4.302653 / np.sqrt(3), rel=1e-5)
    np.random.seed(5)
    before = np.random.random()
    np.random.seed(5)
    assert [stats.mean_iqm(x, seed=3) for _ in range(3)] == [stats.mean_iqm(x, seed=3)] * 3  # reproducible
    assert np.random.random() == before  # and the global generator is left as it was


def _craftax_jobs(tmp_path):
    config = ExperimentConfig(offline=str(tmp_path), online=True, seeds=2, out=str(tmp_path / "e"), eval_episodes=3)
    return plan(config)


def test_plan_runs_every_arm_and_seed_with_the_same_evaluation_seed(tmp_path):
    jobs = _craftax_jobs(tmp_path)
    assert [(j.arm, j.seed) for j in jobs] == [(f"{a}-{r}", s) for a in ("awr", "ppo")
                                               for r in ("baseline", "hidden", "control") for s in (0, 1)]
    assert {j.eval.seed for j in jobs} == {1000} and {j.eval.episodes for j in jobs} == {3}
    assert [j.train.seed for j in jobs[:2]] == [0, 1] and not jobs[0].train.hidden and jobs[2].train.hidden
    assert jobs[4].train.control and jobs[4].train.hidden and not jobs[2].train.control
    assert jobs[4].eval.ablation == "real" and "shuffled" in jobs[2].eval.ablation
    assert not jobs[6].train.hidden and jobs[8].train.hidden and jobs[10].train.control
    assert [j.arm for j in plan(ExperimentConfig(offline=str(tmp_path), seeds=1, control=False))] == [
        "awr-baseline", "awr-hidden"]



def test_all_tokens_valid_reaches_the_awr_runs_and_the_offline_evaluation(tmp_path):
    config = ExperimentConfig(offline=str(tmp_path / "train"), eval_data=str(tmp_path / "held"), seeds=2,
                              out=str(tmp_path / "e"), all_tokens_valid=True)
    jobs = plan(config)
    assert len(jobs) == 6 and all(j.train.all_tokens_valid and j.all_tokens_valid for j in jobs)
    assert all(j.identity()["all_tokens_valid"] and j.identity()["train"]["all_tokens_valid"] for j in jobs)
    # at its default the setting stays out of a run's identity: runs finished before it existed still match
    default = plan(dataclasses.replace(config, all_tokens_valid=False))[0].identity()
    assert "all_tokens_valid" not in default and "all_tokens_valid" not in default["train"]


@pytest.mark.parametrize("counts", [True, False])
def test_per_token_data_runs_as_its_pooled_twin(tmp_path, counts):
    """An AWR arm on per-token data (training and the offline evaluation of --eval-data) gives the numbers of the
    same arm on the pooled states labelling gives for the same tokens."""
    from data_helpers import token_twins

    from hsrl.experiment.offline import evaluate_offline
    from hsrl.experiment.runs import run_job

    train, held = task_pair(tmp_path, 2, rows_per_file=256, files=1)
    rng = np.random.default_rng(3)
    for name, src in (("train", train), ("held", held)):
        token_twins(src, tmp_path / f"{name}-tok", tmp_path / f"{name}-pooled", rng, width=5, noise=0.3,
                    counts=counts)
    kw = dict(seeds=1, awr_steps=20, awr_batch_size=32, awr_save_every=20, width=16, progress=False)

    def hidden_job(kind, **flags):
        config = ExperimentConfig(offline=str(tmp_path / f"train-{kind}"), eval_data=str(tmp_path / f"held-{kind}"),
                                  out=str(tmp_path / f"exp-{kind}"), **kw, **flags)
        return next(j for j in plan(config) if j.arm == "awr-hidden")

    a = run_job(hidden_job("pooled"))
    flags = {} if counts else {"all_tokens_valid": True}
    if not counts:
        with pytest.raises(DataFileError, match="hidden_tokens: missing.*--all-tokens-valid"):
            run_job(hidden_job("tok"))
        with pytest.raises(DataFileError, match="hidden_tokens: missing.*--all-tokens-valid"):
            evaluate_offline(a["run_dir"] + "/train", tmp_path / "held-tok", ("real",))
        job = hidden_job("pooled")
        again = evaluate_offline(a["run_dir"] + "/train", tmp_path / "held-tok", ("real",), seed=job.eval_seed,
                                 run_seed=job.seed, all_tokens_valid=True)["real"]
        np.testing.assert_allclose(again["action_prob"], a["ablations"]["real"]["action_prob"], rtol=1e-5)
    b = run_job(hidden_job("tok", **flags))
    assert a["ablations"].keys() == b["ablations"].keys() == {"real", "zero", "shuffled", "constant"}
    for name in a["ablations"]:
        for metric in ("action_match", "action_prob"):
            np.testing.assert_allclose(b["ablations"][name][metric], a["ablations"][name][metric], rtol=1e-5,
                                       err_msg=f"{name} {metric}")


@pytest.mark.slow
def test_cli_trains_and_evaluates_ppo_arms_on_craftax(tmp_path):
    """The command as a user runs it: PPO arms (live MiniLM states), `hsrl eval`'s rollouts with every ablation."""
    from hsrl.cli import main

    out = tmp_path / "exp"
    assert main(["experiment", "--online", "--env", "Craftax-Classic-Symbolic-v1", "--envs", "4", "--steps", "128",
                 "--num-steps", "16", "--skip-n", "8", "--num-minibatches", "2", "--width", "32", "--seeds", "2",
                 "--eval-episodes", "2", "--eval-envs", "2", "--eval-max-episode-steps", "24", "--out", str(out),
                 "--no-progress", "--bootstrap-reps", "500"]) == 0
    report = json.loads((out / "experiment.json").read_text())
    hidden = [r for r in report["runs"] if r["arm"] == "ppo-hidden"]
    assert len(report["runs"]) == 6 and len(hidden) == 2  # baseline, hidden and control arms
    for r in hidden:
        assert set(r["ablations"]) == {"real", "zero", "shuffled", "constant"}
        assert r["ablations"]["real"]["episodes"] == 2 and len(r["ablations"]["real"]["achievements"]) == 22
    assert "ppo-hidden" in report["aggregates"]["achievements"]
    assert (out / "curves.png").exists() and "**Verdict.**" in (out / "experiment.md").read_text()
    assert main(["experiment", "--out", str(out)]) == 2  # nothing to run: one line, exit code 2


def test_control_runs_name_their_control_and_the_map_reaches_the_control_arm_only(tmp_path):
    """Each control run's result.json says which control it read (`describe_control` of its checkpoint), for the
    verdict; --control-map relu goes to the control arm alone, and needs the control arm."""
    from hsrl.errors import InputError
    from hsrl.experiment.runs import run_job

    train, held = task_pair(tmp_path, 0, rows_per_file=256, files=1)
    small = dict(seeds=1, awr_steps=10, awr_save_every=10, awr_batch_size=32)
    jobs = plan(experiment(train, held, tmp_path / "relu", control_map="relu", **small))
    assert {j.arm: j.train.control_map for j in jobs} == {"awr-baseline": "linear", "awr-hidden": "linear",
                                                          "awr-control": "relu"}
    result = run_job(jobs[-1])
    assert result["train"]["control"] == ("24 fixed random ReLU features (relu of a random linear map plus a random "
                                          "bias) of the observation")
    assert json.loads((tmp_path / "relu" / "runs" / "awr-control" / "seed0" / RESULT_FILE).read_text())[
        "train"]["control"] == result["train"]["control"]
    linear = plan(experiment(train, held, tmp_path / "lin", **small))
    assert run_job(linear[-1])["train"]["control"] == "a fixed random linear projection of the observation to 24 features"
    assert "control" not in run_job(linear[0])["train"]  # the baseline reads no control
    # at its default the map stays out of a run's identity: runs finished before it existed still match
    assert "control_map" not in linear[-1].identity()["train"]
    with pytest.raises(InputError, match="needs --control"):
        experiment(train, held, tmp_path / "x", control_map="relu", control=False).check_experiment()


def _chunk_copy(src, dst, index=0):
    import shutil

    from hsrl.data import chunk_path, list_chunks

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(list_chunks(src)[0], chunk_path(dst, index))
    return dst


def test_eval_data_that_is_the_training_data_is_refused_before_training(tmp_path, capsys):
    """--eval-data equal to --offline, or holding a chunk with the same bytes as one of its files: one line naming
    the file, exit 2, before any arm trains (no run folder)."""
    from hsrl.cli import main

    train, held = task_pair(tmp_path, 0, rows_per_file=256, files=2)
    out = tmp_path / "exp"
    argv = ["experiment", "--offline", str(train), "--seeds", "1", "--awr-steps", "5", "--out", str(out),
            "--no-progress"]
    assert main(argv + ["--eval-data", str(train)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--eval-data {train}/chunk_000000.npz is also in --offline {train} (same bytes as chunk_000000.npz): " \
           "evaluation data must be held out" in err
    assert not (out / "runs").exists()
    # a held-out folder with one training file among its own (renamed): refused, naming that file
    mixed = _chunk_copy(held, tmp_path / "mixed")
    _chunk_copy(train, mixed, index=1)
    assert main(argv + ["--eval-data", str(mixed)]) == 2
    assert f"--eval-data {mixed}/chunk_000001.npz is also in --offline" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_eval_data_from_the_same_collection_is_refused(tmp_path):
    """Other bytes, the same collection (`hsrl collect`'s env, envs, seed and policy, kept through labelling): the
    same episodes, so not held out; another seed is."""
    from hsrl.data import list_chunks, read_chunk, write_chunk
    from hsrl.errors import InputError
    from hsrl.experiment.config import check_held_out

    train, held = task_pair(tmp_path, 0, rows_per_file=256, files=2)
    check_held_out(str(train), str(held))  # hand-made files record no collection: their bytes differ, accepted

    def mark(folder, seed):
        for path in list_chunks(folder):
            chunk = read_chunk(path)
            extra = {"seed": seed, "policy": "random", "max_episode_steps": None}
            write_chunk(path, chunk.arrays, dataclasses.replace(chunk.meta, extra=extra))

    mark(train, 0)
    mark(held, 1)
    check_held_out(str(train), str(held))
    mark(held, 0)
    with pytest.raises(InputError, match="chunk_000000.npz comes from the same collection as --offline .*seed 0, "
                                         "policy random.*evaluation data must be held out"):
        check_held_out(str(train), str(held))


def test_a_run_evaluated_by_the_old_episode_rule_is_evaluated_again(tmp_path):
    """A finished run scored in Craftax before evaluations played a fixed quota per environment (the first episodes
    to finish: biased toward short ones) is not reused as it is; one scored by the quota rule is."""
    from hsrl.evaluate import EPISODE_RULE
    from hsrl.experiment.runs import finished

    job = plan(ExperimentConfig(offline=str(tmp_path), seeds=1, out=str(tmp_path / "e")))[0]
    assert job.eval is not None  # evaluated by rollouts in Craftax
    result = {"arm": job.arm, "identity": job.identity()}
    path = tmp_path / "e" / "runs" / job.arm / "seed0" / RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    assert finished(job) is None
    path.write_text(json.dumps({**result, "episode_selection": EPISODE_RULE}))
    assert finished(job)["episode_selection"] == EPISODE_RULE
