"""Online PPO seeds as one program (`train_online_seeds`): a group's seeds equal the same seeds trained alone (bit for
bit with seed_axis "map", to float rounding with "vmap"), a group stopped mid-run (SIGTERM, or a kill between two
seeds' saves) resumes to the uninterrupted group's end, the LLM gets all seeds' environments in one batch, and what a
group refuses is refused in one line."""

import hashlib
import json
import shutil
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import pytest
from online_helpers import sigterm_after_first_checkpoint

from hsrl.errors import InputError, Preempted
from hsrl.rl.ppo import OnlineConfig, train_online, train_online_seeds

ENV = "Craftax-Classic-Symbolic-v1"
# small and quick, as tests/test_online_resume.py: episodes cut at 20 steps (resets and the reset pool are exercised),
# a checkpoint after every one of 4 updates
FLAGS = dict(env=ENV, envs=4, steps=128, num_steps=8, skip_n=4, num_minibatches=2, width=32, save_every=1,
             max_episode_steps=20, hidden=False, progress=False)
SEEDS = (0, 1, 2)
WALL_KEYS = ("wall_time", "charts/SPS", "llm/cache_hit_rate")  # wall-clock figures, and a cache's hits


def _configs(root: Path, **flags) -> list[OnlineConfig]:
    return [OnlineConfig(**{**FLAGS, **flags}, seed=s, out=str(root / f"seed{s}")) for s in SEEDS]


def _final(out: Path) -> dict:
    state = sorted((Path(out) / "checkpoints").glob("step_*.msgpack"))[-1]
    return flax.serialization.msgpack_restore(state.read_bytes())


def _metrics(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_KEYS and not k.startswith("time/")} for line in lines]


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same(a, b, where: str) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb), where
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y, err_msg=where)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """The three seeds trained alone."""
    root = tmp_path_factory.mktemp("singles")
    return [train_online(c) for c in _configs(root)]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """The three seeds trained as one group (seed axis "map", the CPU default), never stopped."""
    root = tmp_path_factory.mktemp("group")
    return root, train_online_seeds(_configs(root), seed_axis="map")


def test_a_group_equals_its_seeds_trained_alone_bit_for_bit(singles, group):
    root, summaries = group
    for s, alone, grouped in zip(SEEDS, singles, summaries):
        a, b = _final(Path(alone["run_dir"])), _final(root / f"seed{s}")
        _same(a["params"], b["params"], f"seed {s} params")
        _same(a["opt_state"], b["opt_state"], f"seed {s} optimiser state")
        _same(a["resume"]["runner"], b["resume"]["runner"], f"seed {s} env states and keys")
        assert _metrics(Path(alone["run_dir"])) == _metrics(root / f"seed{s}"), f"seed {s} metrics"
        for k in ("steps", "episodes", "return_mean", "craftax_score"):
            assert alone[k] == grouped[k], k
        assert grouped["group"]["size"] == 3 and grouped["group"]["seeds"] == list(SEEDS)
        assert grouped["run_dir"] == str(root / f"seed{s}") and "group" not in alone
    # the seeds differ from each other (a group is not one run copied)
    assert not np.array_equal(_leaves(_final(root / "seed0")["params"])[0], _leaves(_final(root / "seed1")["params"])[0])
    # each folder is an ordinary run folder: run config and checkpoints as a run alone writes them
    config = json.loads((root / "seed1" / "run_config.json").read_text())
    assert config["seed"] == 1 and config["out"] == str(root / "seed1")


@pytest.mark.slow
def test_a_vmapped_group_equals_its_seeds_to_float_rounding(singles, tmp_path):
    """seed_axis "vmap" (the accelerators' default) batches the seeds' products: XLA sums them in another order, so
    the numbers are the single runs' to float rounding (here, 4 short updates: parameters within 1e-5)."""
    summaries = train_online_seeds(_configs(tmp_path), seed_axis="vmap")
    for alone, grouped in zip(singles, summaries):
        a, b = _final(Path(alone["run_dir"])), _final(Path(grouped["run_dir"]))
        for x, y in zip(_leaves(a["params"]), _leaves(b["params"])):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
        assert grouped["group"]["seed_axis"] == "vmap" and alone["episodes"] == grouped["episodes"]


def test_a_stopped_group_resumes_to_the_uninterrupted_end(group, tmp_path):
    """SIGTERM mid-run: every seed saves the same update and `Preempted` is raised; the rerun goes on to the end of the
    group that was never stopped. Then a kill between two seeds' saves (one seed's folder a checkpoint behind the
    others'): the rerun takes the others back to it and ends the same again."""
    ref, _ = group
    root = tmp_path / "stopped"
    configs = _configs(root)
    ckpts = root / "seed2" / "checkpoints"

    sigterm_after_first_checkpoint(ckpts)
    with pytest.raises(Preempted, match="rerun the same command to resume"):
        train_online_seeds(configs, seed_axis="map")
    saved = [max(int(p.stem.split("_")[1]) for p in (root / f"seed{s}" / "checkpoints").glob("step_*.json"))
             for s in SEEDS]
    assert len(set(saved)) == 1 and 0 < saved[0] < FLAGS["steps"], "all seeds saved the same update, before the end"
    summaries = train_online_seeds(configs, seed_axis="map")
    assert all(s["resumed_from"] == saved[0] for s in summaries)
    for s in SEEDS:
        _same(_final(root / f"seed{s}")["params"], _final(ref / f"seed{s}")["params"], f"seed {s} params")
        assert _metrics(root / f"seed{s}") == _metrics(ref / f"seed{s}"), f"seed {s} metrics"

    # killed while saving step 96: seed 0 still at step 64, seeds 1 and 2 at 96 (their 128 and summaries not written)
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    for s, step in zip(SEEDS, (64, 96, 96)):
        for path in (cut / f"seed{s}" / "checkpoints").glob("step_*"):
            if int(path.name.split(".")[0].split("_")[1]) > step:
                path.unlink()
        (cut / f"seed{s}" / "summary.json").unlink()
    summaries = train_online_seeds(_configs(cut), seed_axis="map")
    assert [s["resumed_from"] for s in summaries] == [64, 64, 64]
    for s in SEEDS:
        _same(_final(cut / f"seed{s}")["params"], _final(ref / f"seed{s}")["params"], f"seed {s} params after the cut")
        assert _metrics(cut / f"seed{s}") == _metrics(ref / f"seed{s}")
    # a finished group is not trained again
    again = train_online_seeds(_configs(cut), seed_axis="map")
    assert [s["steps"] for s in again] == [FLAGS["steps"]] * 3


def test_a_seed_ahead_that_this_group_did_not_write_is_refused(singles, tmp_path):
    """A run trained alone further than the rest of a group is not taken back (its checkpoints are not the group's)."""
    alone = tmp_path / "seed0"
    shutil.copytree(singles[0]["run_dir"], alone)
    (alone / "summary.json").unlink()  # unfinished, ahead of the fresh seeds 1 and 2
    with pytest.raises(InputError, match="ahead of the rest of the group"):
        train_online_seeds(_configs(tmp_path), seed_axis="map")
    assert list((alone / "checkpoints").glob("step_*.json")), "nothing of it was deleted"


def test_what_a_group_refuses_is_refused_in_one_line(tmp_path):
    def refused(configs, match):
        with pytest.raises(InputError, match=match) as err:
            train_online_seeds(configs)
        assert "\n" not in str(err.value)

    base = _configs(tmp_path)
    refused([base[0], OnlineConfig(**{**FLAGS, "lr": 1e-3}, seed=1, out=str(tmp_path / "x"))], r"--lr \(0\.0002 vs 0\.001\)")
    refused([base[0], OnlineConfig(**FLAGS, seed=0, out=str(tmp_path / "y"))], "distinct seeds")
    refused([base[0], OnlineConfig(**FLAGS, seed=1, out=base[0].out)], "distinct --out")
    refused(_configs(tmp_path, save_trajectories=str(tmp_path / "traj")), "--save-trajectories is not supported")
    refused(_configs(tmp_path, checkpoint=str(tmp_path / "warm")), "--checkpoint")
    refused(_configs(tmp_path, hidden=True, server="http://127.0.0.1:1"), "--server is not supported")
    with pytest.raises(InputError, match="seed axis .pmap.: expected auto, map or vmap"):
        train_online_seeds(base, seed_axis="pmap")
    assert not any(tmp_path.glob("seed*/checkpoints")), "nothing was trained"


class _Recording:
    """An ExtractorSource that records the size of every batch it is asked for."""

    def __init__(self, source):
        self.source, self.batches = source, []
        self.spec_json, self.hidden_size, self.extractor = source.spec_json, source.hidden_size, source.extractor

    def hidden_states(self, texts, images=None, history=None):
        self.batches.append(len(texts))
        return self.source.hidden_states(texts, images, history=history) if history is not None else \
            self.source.hidden_states(texts, images)


class _TextSource:
    """A source whose state of a text is a fixed function of it (no model), recording its batches."""

    hidden_size = 6

    def __init__(self):
        from hsrl.llm import ExtractionSpec

        self.spec_json, self.batches = ExtractionSpec(model="minilm", variant="classic").to_json(), []

    def hidden_states(self, texts, images=None, history=None):
        self.batches.append(len(texts))
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:6], np.uint8) for t in texts]
                        ).astype(np.float32)


def test_live_group_asks_once_for_all_runs_and_gives_each_its_own_answer(classic_env):
    """`LiveGroup`: one source call for every run that asks (none for a run that does not), a new pool's states with
    it; each run's answer, running moments, pool hits and counts are those of its `LiveHidden` asked alone."""
    from hsrl.rl.live import LiveGroup, LiveHidden

    env, reset, _ = classic_env
    syms, pools = [], []
    for k in range(3):
        obs, state, info = reset(jax.random.PRNGKey(k))
        syms.append(np.asarray(obs))  # a symbolic env's observation is the symbolic vector
        pools.append(np.asarray(env.pool_observations(state)[0]))
    sym, pool = np.stack(syms), np.stack(pools)  # (3, 8, D), (3, 4, D)
    sym[1, 2] = pool[1, 0]  # run 1's env 2 just reset into its pool's first world: found there, not asked
    mask = np.ones((3, 8), bool)
    mask[2] = False  # run 2 asks nothing: left out
    mask[0, 5] = False
    source = _TextSource()
    group = LiveGroup([LiveHidden("classic", None, source) for _ in range(3)])
    out = group.with_pool(sym, mask, pool)
    assert source.batches == [4 + 7 + 4 + 7], "one call: run 0's pool and 8 - 1 envs, run 1's pool and 8 - 1 envs"
    assert group.calls == 1 and group.samples == 22 and np.isnan(out[2]).all() and np.isnan(out[0, 5]).all()
    for k in range(2):
        alone = LiveHidden("classic", None, _TextSource())
        want = alone.with_pool(sym[k], mask[k], pool[k])
        np.testing.assert_array_equal(out[k], want)
        mine = group.lives[k]
        assert (mine.pool_hits, mine.samples) == (alone.pool_hits, alone.samples)
        np.testing.assert_array_equal(mine.moments.mean, alone.moments.mean)
        np.testing.assert_array_equal(mine.last_batch if mask[k].all() else 0, alone.last_batch if mask[k].all() else 0)
    assert group.lives[1].pool_hits == 1 and group.lives[2].samples == 0
    out = group.with_pool(sym, np.ones((3, 8), bool), pool)  # the pools seen: only run 2's is new
    assert source.batches[-1] == 8 + 8 - 1 + 4 + 8 and group.calls == 2


@pytest.mark.slow
def test_with_the_llm_the_group_is_one_batch_and_reads_the_states_of_its_seeds_alone(tmp_path, monkeypatch):
    """MiniLM, prompt-only: each refresh of the group is one LLM call of K x envs observations (a new reset pool's
    first states join it), and each seed reads the states it reads alone: its running statistics, last states and
    parameters equal its single run's to the float rounding of another batch composition."""
    import hsrl.rl.ppo as ppo
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.rl.live import ExtractorSource

    extractor = make_extractor(ExtractionSpec(model="minilm", variant="classic"), cache=None, batch_size=64)
    sources = []

    def source(config, spec):
        sources.append(_Recording(ExtractorSource(extractor)))
        return sources[-1]

    monkeypatch.setattr(ppo, "_extractor_source", source)
    # one update of 16 steps, the LLM every 8 (the MiniLM prompts make each call take seconds on a CPU)
    flags = dict(hidden=True, steps=64, num_steps=16, skip_n=8, max_episode_steps=None, save_every=10)
    K, E = 2, FLAGS["envs"]
    alone = [train_online(_configs(tmp_path / "alone", **flags)[0])]  # seed 0 alone
    summaries = train_online_seeds(_configs(tmp_path / "group", **flags)[:K], seed_axis="map")
    group_source = sources[-1]
    assert len(sources) == 2, "one source for the whole group"
    # one call for both seeds: K x E at the start and at each periodic refresh (steps 8 and 16), with both seeds' new
    # reset pools (E worlds each) at the first of them
    assert group_source.batches == [K * E, K * E + K * E, K * E], group_source.batches
    assert sources[0].batches == [E, E, E, E], "alone: the envs, the pool, the envs, the envs"
    for a, g in zip(alone, summaries):
        assert g["llm_calls"] == len(group_source.batches) and g["llm_mean_call_batch"] > a["llm_mean_call_batch"]
        assert 0 < g["time_share"]["llm"] < 1 and g["group"]["size"] == K
        sa, sg = _final(Path(a["run_dir"])), _final(Path(g["run_dir"]))
        np.testing.assert_array_equal(sa["resume"]["live"]["moments"]["count"], sg["resume"]["live"]["moments"]["count"])
        np.testing.assert_allclose(sa["resume"]["live"]["moments"]["mean"], sg["resume"]["live"]["moments"]["mean"],
                                   atol=1e-5)
        np.testing.assert_allclose(sa["resume"]["live"]["last_batch"], sg["resume"]["live"]["last_batch"], atol=1e-5)
        for x, y in zip(_leaves(sa["params"]), _leaves(sg["params"])):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)
        assert a["episodes"] == g["episodes"] and a["llm_samples"] > 0
    lines = [json.loads(x) for x in (Path(summaries[0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    # the group's calls (the first update counts the start's): 3 calls of 8, 16 and 8 observations
    assert lines[-1]["llm/calls"] == lines[-1]["llm/calls_per_update"] == 3 and "time/llm_share" in lines[-1]
    assert lines[-1]["llm/mean_call_batch"] == 4 * K * E / 3
