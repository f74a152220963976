"""`hsrl experiment` schedules the seeds of an arm as one program (`--seeds-per-program`, `--seed-axis`): the same
experiment numbers as seeds trained one by one, finished seeds left alone, and the packing rule."""

import os
from pathlib import Path

import numpy as np
import pytest
from experiment_helpers import task_pair

from hsrl.errors import InputError
from hsrl.experiment.config import ExperimentConfig, plan, run_experiment
from hsrl.experiment.runs import RESULT_FILE, WORKER_FILE, Job, groups, run_sequential
from hsrl.rl.ppo import OnlineConfig

FAST = dict(seeds=3, awr_steps=200, awr_batch_size=128, awr_lr=1e-3, awr_beta=1.0, awr_save_every=100, width=32,
            progress=False, bootstrap_reps=500, control=False)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return task_pair(tmp_path_factory.mktemp("task"), 3, rows_per_file=1024)


def experiment(task, out, **kw):
    train, held = task
    return ExperimentConfig(offline=str(train), eval_data=str(held), out=str(out), **{**FAST, **kw})


def results(task, out, **kw):
    """The experiment's runs (train, evaluate, result.json), without its report."""
    config = experiment(task, out, **kw)
    return run_sequential(plan(config), seeds_per_program=config.seeds_per_program, seed_axis=config.seed_axis)


def by_run(runs):
    return {(r["arm"], r["seed"]): r["ablations"] for r in runs}


def test_an_arm_in_one_program_gives_the_runs_of_seeds_alone(task, tmp_path, capfd):
    alone = results(task, tmp_path / "alone", seeds_per_program=1)
    assert "seeds as one group" not in capfd.readouterr().out
    grouped = results(task, tmp_path / "grouped")  # the default: all of an arm's seeds, loop on CPU
    assert capfd.readouterr().out.count("starting 3 seeds as one group (loop)") == 2  # one program per arm
    assert by_run(grouped) == by_run(alone)  # bit for bit
    assert [r["train"] for r in grouped] == [r["train"] for r in alone]

    # vmap: each product 3 seeds wide, the same runs to float rounding
    vmapped = results(task, tmp_path / "vmapped", seed_axis="vmap")
    assert capfd.readouterr().out.count("starting 3 seeds as one group (vmap)") == 2
    for key, ablations in by_run(alone).items():
        for name, values in ablations.items():
            np.testing.assert_allclose(by_run(vmapped)[key][name]["action_match"], values["action_match"], rtol=1e-3)


@pytest.mark.slow  # two reports (their seeds plans take a while)
def test_an_arm_in_one_program_gives_the_experiment_of_seeds_alone(task, tmp_path):
    alone = run_experiment(experiment(task, tmp_path / "alone", seeds_per_program=1))
    grouped = run_experiment(experiment(task, tmp_path / "grouped"))
    assert by_run(grouped["runs"]) == by_run(alone["runs"])
    assert grouped["aggregates"] == alone["aggregates"]


def test_a_group_with_finished_seeds_trains_only_the_others(task, tmp_path, capfd):
    first = results(task, tmp_path / "exp", seeds=1)
    seed0 = Path(first[0]["run_dir"])
    stamp = {p: os.stat(p).st_mtime_ns for p in (seed0 / RESULT_FILE, seed0 / WORKER_FILE)}
    capfd.readouterr()
    more = results(task, tmp_path / "exp", seeds=3)
    out = capfd.readouterr().out
    assert out.count("starting 2 seeds as one group") == 2 and "already trained" not in out
    assert {p: os.stat(p).st_mtime_ns for p in stamp} == stamp, "the finished seed is not trained or evaluated again"
    assert [(r["arm"], r["seed"]) for r in more] == [(a, s) for a in ("awr-baseline", "awr-hidden") for s in range(3)]
    assert more[0] == first[0]


def test_groups_pack_each_arm_in_programs_of_at_most_seeds_per_program(task, tmp_path):
    jobs = plan(experiment(task, tmp_path, seeds=5, control=True))
    shape = lambda packed: [(g[0].arm, [j.seed for j in g]) for g in packed]  # noqa: E731
    assert shape(groups(jobs)) == [(arm, [0, 1, 2, 3, 4]) for arm in ("awr-baseline", "awr-hidden", "awr-control")]
    assert shape(groups(jobs, 2)) == [(arm, seeds) for arm in ("awr-baseline", "awr-hidden", "awr-control")
                                      for seeds in ([0, 1], [2, 3], [4])]
    assert [len(g) for g in groups(jobs, 1)] == [1] * 15
    # online PPO arms group where `hsrl online` trains seeds in groups, and not with a setting it refuses there
    ppo = lambda seed, **kw: Job(arm="ppo-hidden", algo="ppo", hidden=True, seed=seed,  # noqa: E731
                                 run_dir=str(tmp_path / str(seed)), train=OnlineConfig(seed=seed, out=str(seed), **kw),
                                 eval=None)
    from hsrl.rl import ppo as ppo_module

    together = [3] if hasattr(ppo_module, "train_online_seeds") else [1, 1, 1]
    assert [len(g) for g in groups([ppo(s) for s in range(3)])] == together
    assert [len(g) for g in groups([ppo(s, server="http://host:8000") for s in range(3)])] == [1, 1, 1]


def test_seeds_per_program_and_seed_axis_are_checked(task, tmp_path):
    with pytest.raises(InputError, match="--seeds-per-program must be at least 1"):
        experiment(task, tmp_path, seeds_per_program=0).check_experiment()
    with pytest.raises(InputError, match="--seed-axis must be auto, loop or vmap"):
        experiment(task, tmp_path, seed_axis="pmap").check_experiment()
