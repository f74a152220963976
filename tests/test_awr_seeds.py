"""AWR seeds as one compiled program (`hsrl.rl.awr_seeds`): a group equals its seeds trained alone (bit for bit with
the "loop" seed axis, to float rounding with "vmap"), a group killed while saving resumes to the same end, mixed
settings are refused, and a device too small for the group runs it as several programs."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from rl_helpers import write_hidden_task

from hsrl.errors import InputError
from hsrl.rl import list_checkpoints, load_policy, read_metrics
from hsrl.rl import awr_seeds
from hsrl.rl.awr import TrainAWRConfig
from hsrl.rl.awr_seeds import train_awr
from hsrl.rl.awr_seeds import seeds_that_fit, train_awr_seeds

FAST = dict(width=64, progress=False, tensorboard=False, steps=60, log_every=20, save_every=20, steps_per_call=7)
TIMING = ("wall_time", "SPS", "samples_per_second")  # the only logged values that differ between runs


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_hidden_task(tmp_path_factory.mktemp("small"), np.random.default_rng(1), files=2, rows_per_file=512)


def configs(data, root, seeds=(0, 1, 2), **kw):
    return [TrainAWRConfig(str(data), out=str(root / f"seed{s}"), seed=s, **{**FAST, **kw}) for s in seeds]


def params(run):
    return jax.tree.leaves(load_policy(run).params)


def metrics(run):
    return [{k: v for k, v in line.items() if k not in TIMING} for line in read_metrics(run)]


def steps(run):
    return [json.loads(p.read_text())["step"] for p in list_checkpoints(run / "checkpoints")]


def assert_same_runs(a, b):
    """Two run folders with the same parameters (bit for bit), metric lines and checkpoints."""
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metrics(a) == metrics(b)
    assert steps(a)[-1] == steps(b)[-1]


@pytest.mark.parametrize("device_data", [True, False])
def test_a_looped_group_equals_its_seeds_trained_alone_bit_for_bit(small, tmp_path, device_data):
    alone = [train_awr(c) for c in configs(small, tmp_path / "alone", device_data=device_data)]
    group = train_awr_seeds(configs(small, tmp_path / "group", device_data=device_data), seed_axis="loop")
    assert [r["seeds_in_program"] for r in group] == [3, 3, 3] and {r["seed_axis"] for r in group} == {"loop"}
    assert [r["on_device"] for r in group] == [device_data] * 3 == [r["on_device"] for r in alone]
    for s in range(3):
        assert_same_runs(tmp_path / "alone" / f"seed{s}", tmp_path / "group" / f"seed{s}")
        assert group[s]["metrics"]["critic_loss"] == alone[s]["metrics"]["critic_loss"]
    # each seed's checkpoint names its own seed and run, as a single run's does
    meta = json.loads(list_checkpoints(tmp_path / "group" / "seed2" / "checkpoints")[-1].read_text())
    assert meta["seed"] == 2 and meta["final"] and meta["train_config"]["out"].endswith("seed2")
    # the seeds differ from one another (each its own initialisation and batches)
    assert not np.array_equal(params(tmp_path / "group" / "seed0")[0], params(tmp_path / "group" / "seed1")[0])


def test_a_vmapped_group_equals_its_seeds_alone_to_float_rounding(small, tmp_path):
    """vmap sums the K-wide products in another order than a lone run: equal to rounding (here, after 20 steps, within
    1e-5), and the same bits in every group of two or more."""
    short = dict(steps=20, log_every=10, save_every=10)
    for c in configs(small, tmp_path / "alone", **short):
        train_awr(c)
    train_awr_seeds(configs(small, tmp_path / "three", **short), seed_axis="vmap")
    train_awr_seeds(configs(small, tmp_path / "two", seeds=(1, 3), **short), seed_axis="vmap")
    for s in range(3):
        for x, y in zip(params(tmp_path / "alone" / f"seed{s}"), params(tmp_path / "three" / f"seed{s}"), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        for x, y in zip(metrics(tmp_path / "alone" / f"seed{s}"), metrics(tmp_path / "three" / f"seed{s}"), strict=True):
            assert x.keys() == y.keys()
            np.testing.assert_allclose([x[k] for k in x], [y[k] for k in x], rtol=1e-4, atol=1e-5)
    assert_same_runs(tmp_path / "three" / "seed1", tmp_path / "two" / "seed1")


class Killed(Exception):
    pass


def kill_at_save(monkeypatch, n: int):
    """Make the n-th checkpoint write of a group raise, as a kill in the middle of a group's saves."""
    calls = {"n": 0}
    save = awr_seeds.save_checkpoint

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        return save(*args, **kw)

    monkeypatch.setattr(awr_seeds, "save_checkpoint", dying)


@pytest.mark.parametrize("axis, kill, left", [
    ("loop", 5, {"seed0": [20, 40], "seed1": [20], "seed2": [20]}),  # step 40: seed 0 saved, seed 1 killed
    ("vmap", 9, {"seed0": [40, 60], "seed1": [40, 60], "seed2": [40]}),  # the final saves: seed 2 left alone
])
def test_a_group_killed_while_saving_resumes_to_the_same_end(small, tmp_path, monkeypatch, axis, kill, left):
    train_awr_seeds(configs(small, tmp_path / "whole", keep=1), seed_axis=axis)
    with monkeypatch.context() as m:
        kill_at_save(m, kill)
        with pytest.raises(Killed):
            train_awr_seeds(configs(small, tmp_path / "killed", keep=1), seed_axis=axis)
    # keep=1, yet each folder still holds the step where all agree: old checkpoints are pruned once all have saved
    assert {s: steps(tmp_path / "killed" / s) for s in left} == left
    again = train_awr_seeds(configs(small, tmp_path / "killed", keep=1), seed_axis=axis)
    finished = [s for s in left if 60 in left[s]]
    assert [r["resumed"] for r in again] == [True] * 3
    assert [r.get("seeds_in_program") for r in again] == [None if f"seed{i}" in finished else 3 - len(finished)
                                                          for i in range(3)]
    for s in left:
        assert_same_runs(tmp_path / "whole" / s, tmp_path / "killed" / s)


def test_a_group_refuses_seeds_of_other_settings(small, tmp_path):
    a, b = configs(small, tmp_path, seeds=(0, 1))
    with pytest.raises(InputError, match="--lr 0.0003 / 0.001"):
        train_awr_seeds([a, TrainAWRConfig(**{**b.__dict__, "lr": 1e-3})])
    with pytest.raises(InputError, match="one run folder"):
        train_awr_seeds([a, TrainAWRConfig(**{**b.__dict__, "out": a.out})])
    with pytest.raises(InputError, match="seed axis"):
        train_awr_seeds([a, b], seed_axis="pmap")
    assert not (tmp_path / "seed0").exists()


def test_seeds_that_fit_counts_each_seed_at_its_program_memory():
    memory = SimpleNamespace(argument_size_in_bytes=1000 + 100, output_size_in_bytes=100, temp_size_in_bytes=300)
    # 80% of 10000 is 8000; the 1000 shared bytes leave 7000 for seeds of 100 + 100 + 300 bytes each
    assert seeds_that_fit(memory, shared_bytes=1000, limit=10_000) == 14
    assert seeds_that_fit(memory, shared_bytes=1000, limit=1000) == 1  # never fewer than one


def test_a_group_larger_than_the_device_holds_runs_as_several_programs(small, tmp_path, monkeypatch):
    """A vmap group on a device that reports its memory is split into programs that fit; each seed computes as in any
    vmap group of two or more (a lone seed padded), so the split changes nothing."""
    train_awr_seeds(configs(small, tmp_path / "whole"), seed_axis="vmap")
    monkeypatch.setattr(awr_seeds, "device_memory_limit", lambda device: 10 ** 12)  # as a GPU reports its memory
    monkeypatch.setattr(awr_seeds, "seeds_that_fit", lambda memory, shared, limit: 2)
    split = train_awr_seeds(configs(small, tmp_path / "split"), seed_axis="vmap")
    assert [r["seeds_in_program"] for r in split] == [2, 2, 1]
    for s in range(3):
        assert_same_runs(tmp_path / "whole" / f"seed{s}", tmp_path / "split" / f"seed{s}")
