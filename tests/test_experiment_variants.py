"""`hsrl experiment --offline A --offline B`: prompt variants as arms over labelled datasets, each its own hidden
arm with one baseline and one control, with the same intervals and verdicts as one hidden arm, side by side."""

import dataclasses
import shutil

import pytest
from experiment_helpers import noise_hidden, task_pair

from hsrl.errors import InputError
from hsrl.experiment.config import ExperimentConfig, plan, run_experiment

FAST = dict(seeds=5, awr_steps=300, awr_batch_size=128, awr_lr=1e-3, awr_beta=1.0, awr_save_every=100, width=32,
            progress=False, bootstrap_reps=1000)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The hidden-state task labelled twice: 'informative' (the state decides the action) and 'noise' (the same
    rows with states of pure noise), each with its held-out rows labelled alike."""
    import numpy as np

    root = tmp_path_factory.mktemp("variants")
    train, held = task_pair(root, 0)
    folders = {}
    for name in ("informative", "noise"):
        folders[name] = (shutil.copytree(train, root / name), shutil.copytree(held, root / f"{name}-heldout"))
    rng = np.random.default_rng(1)
    for folder in folders["noise"]:
        noise_hidden(folder, rng)
    return root, folders


def _config(variants, **kw):
    root, folders = variants
    given = dict(offline=(str(folders["informative"][0]), str(folders["noise"][0])),
                 eval_data=(str(folders["informative"][1]), str(folders["noise"][1])), out=str(root / "exp"))
    return ExperimentConfig(**{**given, **FAST, **kw})


def test_plan_gives_each_variant_its_hidden_arm_and_one_baseline_and_control(variants):
    root, folders = variants
    jobs = plan(_config(variants, seeds=1))
    assert [j.arm for j in jobs] == ["awr-baseline", "awr-hidden-informative", "awr-hidden-noise", "awr-control"]
    by_arm = {j.arm: j for j in jobs}
    informative, noise = (str(folders[n][0].resolve()) for n in ("informative", "noise"))
    assert by_arm["awr-hidden-noise"].train.data_dir == noise and by_arm["awr-hidden-informative"].train.data_dir == informative
    assert by_arm["awr-baseline"].train.data_dir == informative == by_arm["awr-control"].train.data_dir
    assert by_arm["awr-hidden-noise"].eval_data == str(folders["noise"][1].resolve())
    assert by_arm["awr-control"].eval_data == str(folders["informative"][1].resolve())
    # one --offline: the arms, and so the finished runs of earlier experiments, keep their names
    single = ExperimentConfig(offline=str(folders["informative"][0]), seeds=1)
    assert [j.arm for j in plan(single)] == ["awr-baseline", "awr-hidden", "awr-control"]


def test_the_command_line_repeats_offline(variants):
    from hsrl.cli import build_parser, config_from_args

    root, folders = variants
    argv = ["experiment", "--offline", "A", "--offline", "B", "--eval-data", "C", "--eval-data", "D"]
    config = config_from_args(ExperimentConfig, build_parser("experiment").parse_args(argv))
    assert config.offline_sets() == ("A", "B") and config.eval_sets() == ("C", "D")
    assert config_from_args(ExperimentConfig, build_parser("experiment").parse_args(["experiment"])).offline is None


def test_variants_are_checked_before_any_run(variants, tmp_path):
    root, folders = variants
    with pytest.raises(InputError, match="one --eval-data per --offline"):
        _config(variants, eval_data=str(folders["informative"][1])).check_experiment()
    with pytest.raises(InputError, match="the same dataset twice"):
        _config(variants, offline=(str(folders["noise"][0]),) * 2).check_experiment()
    other, _ = task_pair(tmp_path, 5, rows_per_file=512)
    with pytest.raises(InputError, match="not a labelling of the same data"):
        _config(variants, offline=(str(folders["noise"][0]), str(other))).check_experiment()
    assert not (root / "exp").exists()


def test_each_variant_gets_its_verdict_and_the_variants_are_compared(variants):
    """Without equivalence tests (--margin none), the claims at 5 seeds as before; with the default margin the noise
    variant's use is shown equivalent, and its equivalence test takes a step of the family's correction without
    lowering its divisor (the question's "no effect" could still be true), so the claims at the rank test's
    smallest p (0.0079 x 7 questions) are no longer made at 5 seeds."""
    from hsrl.experiment.report import aggregate

    root, _ = variants
    report = run_experiment(dataclasses.replace(_config(variants), margin="none"))
    agg = report["aggregates"]
    print(agg["verdict"])
    with_margin = aggregate(report["runs"], reps=200)
    assert with_margin["claims"]["awr-hidden-noise"]["uses"] == "equivalent"
    assert with_margin["claims"]["awr-hidden-informative"]["uses"] == "above"
    assert agg["claims"]["awr-hidden-informative"] == {"uses": "above", "beats_baseline": "above",
                                                       "beats_control": "above"}
    assert agg["claims"]["awr-hidden-noise"] == {"uses": "none", "beats_baseline": "none", "beats_control": "none"}
    pair = agg["variants"]["awr"]["awr-hidden-informative - awr-hidden-noise"]["action_match"]
    assert pair["claim"] == "above" and pair["estimate"] > 0.9 and pair["mean_difference"]["low"] > 0
    assert agg["family"]["size"] == 7  # 3 answers x 2 variants + 1 pair, one Holm family
    assert "AWR awr-hidden-informative (5 seeds per arm)" in agg["verdict"]
    assert "AWR prompt variants compared (a typical seed): P(awr-hidden-informative > awr-hidden-noise) = " in agg["verdict"]
    md = (root / "exp" / "experiment.md").read_text()
    assert "Prompt variants side by side" in md and "| awr-hidden-informative - awr-hidden-noise | action match |" in md
    assert len(report["runs"]) == 20 and (root / "exp" / "comparisons.png").exists()
