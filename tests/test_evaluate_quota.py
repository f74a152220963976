"""Evaluation's episode selection (`hsrl.evaluate.QuotaEpisodes`): a fixed quota per environment, each episode played
to its end, driven through `evaluate_ablation` with a fake segment (no Craftax): the mean is unbiased where the old
"first N to finish" rule was biased down by the short episodes it over-samples."""

from types import SimpleNamespace

import numpy as np
import pytest

from hsrl.evaluate import EvalConfig, QuotaEpisodes, episode_quotas, evaluate_ablation

NAMES = ("long_episode", "any_episode")  # the fake env's achievements


def test_quotas_split_episodes_as_evenly_as_possible():
    np.testing.assert_array_equal(episode_quotas(10, 8), [1, 1, 1, 1, 1, 1, 2, 2])  # SB3: (episodes + i) // envs
    np.testing.assert_array_equal(episode_quotas(32, 8), [4] * 8)
    np.testing.assert_array_equal(episode_quotas(3, 5), [0, 0, 1, 1, 1])
    for episodes in range(0, 40):
        for envs in range(1, 12):
            q = episode_quotas(episodes, envs)
            assert q.sum() == episodes and q.max() - q.min() <= 1 and (np.diff(q) >= 0).all()
    with pytest.raises(ValueError):
        episode_quotas(4, 0)


def test_selection_keeps_each_environments_first_quota_and_ignores_the_rest():
    """Two segments, three environments with quotas 1, 2, 2: environment 0 finishes 3 episodes (2 ignored),
    environment 1 finishes one per segment, environment 2 two in one step's reach; values are read where done."""
    chosen = QuotaEpisodes([1, 2, 2])
    done = np.zeros((4, 3), bool)
    done[[0, 1, 2], 0] = True  # env 0: episodes end at t = 0, 1, 2
    done[3, 1] = True
    done[[1, 2], 2] = True
    value = np.arange(12.0).reshape(4, 3)  # value[t, e] = 3 t + e
    chosen.add(done, {"v": value, "pair": np.stack([value, -value], -1)})
    assert chosen.kept == 4 and not chosen.complete
    np.testing.assert_array_equal(chosen.finished, [3, 1, 2])
    done2 = np.zeros((4, 3), bool)
    done2[[0, 3], 1] = True  # env 1's second episode (kept) and third (ignored)
    done2[0, 0] = True
    chosen.add(done2, {"v": 100 + value, "pair": np.stack([value, -value], -1)})
    assert chosen.kept == 5 and chosen.complete
    ep = chosen.episodes()
    np.testing.assert_array_equal(ep["env"], [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ep["index"], [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(ep["v"], [0, 10, 101, 5, 8])  # env 0 at t=0; env 1 at t=3, then t=0 of segment 2
    np.testing.assert_array_equal(ep["pair"][:, 1], -ep["pair"][:, 0])
    np.testing.assert_array_equal(ep["half"], [0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="done must be"):
        chosen.add(np.zeros((4, 2), bool), {})


def test_halves_are_disjoint_balanced_and_fixed_by_position():
    """Over many quota layouts: the halves cover the kept episodes, overlap nowhere, differ in size by at most one,
    and an episode's half depends only on (environment, index), not on when it finished."""
    rng = np.random.default_rng(0)
    for episodes in range(2, 30):
        for envs in (1, 2, 3, 5, 8):
            quota = episode_quotas(episodes, envs)
            runs = []
            for _ in range(2):  # two streams with different finishing orders
                chosen = QuotaEpisodes(quota)
                while not chosen.complete:
                    chosen.add(rng.random((16, envs)) < 0.2, {})
                runs.append(chosen.episodes())
            for ep in runs:
                assert len(ep["env"]) == episodes
                assert len({(e, i) for e, i in zip(ep["env"], ep["index"])}) == episodes  # each episode once
                sizes = np.bincount(ep["half"], minlength=2)
                assert sizes.sum() == episodes and abs(sizes[0] - sizes[1]) <= 1
            for key in ("env", "index", "half"):
                np.testing.assert_array_equal(runs[0][key], runs[1][key])


class _FakeEpisodes:
    """A `segment` callable over a synthetic stream: environment e plays episodes of given lengths one after another
    (the next starting as the last ends), with return = length_draw / 100 (grows with length). Outputs as
    `make_segment`'s: done, episode_return, episode_length, achievements (T, E, 2), and frames if asked."""

    def __init__(self, draws: np.ndarray, segment_steps: int = 64, frames: bool = False):
        lengths = np.ceil(draws).astype(np.int64)  # (E, K) episodes per environment
        ends = np.cumsum(lengths, 1) - 1  # the step each episode ends at
        horizon = int(ends[:, -1].min()) + 1  # every environment still playing
        E = draws.shape[0]
        self.done = np.zeros((horizon, E), bool)
        self.ret = np.zeros((horizon, E), np.float32)
        self.length = np.zeros((horizon, E), np.int32)
        self.episode = np.zeros((horizon, E), np.int64) if frames else None  # which episode runs at each step
        for e in range(E):  # building the synthetic stream, not the code under test
            inside = ends[e] < horizon
            self.done[ends[e][inside], e] = True
            self.ret[ends[e][inside], e] = draws[e][inside] / 100
            self.length[ends[e][inside], e] = lengths[e][inside]
            if frames:
                self.episode[:, e] = np.searchsorted(ends[e], np.arange(horizon))
        self.steps, self.frames = segment_steps, frames

    def __call__(self, t0: int):
        t1 = t0 + self.steps
        if t1 > len(self.done):
            raise AssertionError("the synthetic stream is too short")
        sl = slice(t0, t1)
        ach = np.stack([self.length[sl] > 100, self.done[sl]], -1)
        out = {"done": self.done[sl], "episode_return": self.ret[sl], "episode_length": self.length[sl],
               "achievements": ach}
        if self.frames:  # env 0's frame: its episode number in red, the step in green (no two frames alike)
            frame = np.zeros((self.steps, 4, 4, 3), np.uint8)
            frame[..., 0] = (self.episode[sl, 0] * 40)[:, None, None]
            frame[..., 1] = (np.arange(t0, t1) % 256)[:, None, None]
            out["frame"] = frame
        return t1, out

    def first_n_to_finish(self, n: int) -> float:
        """The old rule: the mean return of the first n episodes to finish over all environments (time-major)."""
        t, e = np.nonzero(self.done)
        return float(self.ret[t[:n], e[:n]].mean())


def _fake_env(envs):
    return SimpleNamespace(num_envs=envs, info=SimpleNamespace(achievement_names=NAMES))


def _config(episodes, envs, **kw):
    return EvalConfig("unused", episodes=episodes, envs=envs, progress=False, **kw)


def _simulate(episodes, envs, reps, seed):
    """Per replication: every environment's episode lengths lognormal around its own median (environments differ),
    return = length / 100; the evaluation's mean (through `evaluate_ablation`) and the old rule's on the same stream.
    Returns (new, old, expected): the quota-based expectation is sum_i quota_i E[return of env i] / episodes."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    log_median = np.log(np.linspace(60, 160, envs))  # environment i's episodes: lognormal(log_median[i], sigma)
    quota = episode_quotas(episodes, envs)
    expected = float((quota * np.exp(log_median + sigma ** 2 / 2) / 100).sum() / episodes)
    new, old = [], []
    for _ in range(reps):
        draws = np.exp(log_median[:, None] + sigma * rng.standard_normal((envs, 400)))
        fake = _FakeEpisodes(draws)
        result = evaluate_ablation(_fake_env(envs), None, fake, False, _config(episodes, envs, max_steps=10 ** 9),
                                   "real", None, carry=0)
        assert result["episodes"] == episodes
        new.append(result["return_mean"])
        old.append(fake.first_n_to_finish(episodes))
    return np.array(new), np.array(old), expected


@pytest.mark.parametrize("episodes, envs", [(32, 8), (10, 8)])
def test_quota_mean_is_unbiased_where_first_to_finish_was_not(episodes, envs):
    """Acceptance (issue 33, item 1): return grows with episode length; over 2000 synthetic evaluations the mean of
    `evaluate_ablation`'s return_mean equals the quota-based expectation within 3.5 standard errors, while the old
    rule (first N to finish) on the same streams is biased down by more than 10% and many standard errors."""
    new, old, expected = _simulate(episodes, envs, reps=2000, seed=episodes)
    se_new = new.std(ddof=1) / np.sqrt(len(new))
    se_old = old.std(ddof=1) / np.sqrt(len(old))
    z_new, z_old = (new.mean() - expected) / se_new, (old.mean() - expected) / se_old
    print(f"\n{episodes} episodes / {envs} envs: expected {expected:.4f}; quota {new.mean():.4f} "
          f"(bias {new.mean() / expected - 1:+.1%}, z {z_new:+.2f}); first-to-finish {old.mean():.4f} "
          f"(bias {old.mean() / expected - 1:+.1%}, z {z_old:+.2f})")
    assert abs(z_new) < 3.5
    assert z_old < -8 and old.mean() / expected - 1 < -0.10


def test_max_steps_before_the_quota_is_one_line_error():
    """Environment 1's episodes never end within --max-steps: the error says which ablation, how many of how many
    finished, and what to raise; environment 0 finishing many more than its quota does not make up for it."""
    draws = np.array([[10.0] * 200, [1000.0] * 200])
    with pytest.raises(RuntimeError, match=r"^shuffled: only 2 of 4 episodes finished in 128 steps per environment "
                                           r"\(each of 2 environments plays 2 to its end\); raise --max-steps"):
        evaluate_ablation(_fake_env(2), None, _FakeEpisodes(draws), False, _config(4, 2, max_steps=128), "shuffled",
                          None, carry=0)


def test_result_is_over_exactly_the_kept_episodes_with_halves(tmp_path):
    """Deterministic stream: env 0 plays episodes of 10, 20, 30, ... steps, env 1 of 45 each; quota 2 + 2. The
    summary is over env 0's first two (10, 20) and env 1's first two (45, 45), not over the first four to finish
    (10, 20, 45, 30: env 0's third ends before env 1's second); halves by (env + index) % 2: {env0 #0, env1 #1} and
    {env0 #1, env1 #0}. The video is env 0's first episode (10 frames)."""
    import imageio.v2 as imageio

    draws = np.stack([10.0 * np.arange(1, 60), np.full(59, 45.0)])
    fake = _FakeEpisodes(draws, segment_steps=16, frames=True)
    result = evaluate_ablation(_fake_env(2), None, fake, False, _config(4, 2, video=True), "real", tmp_path, carry=0)
    assert result["episodes"] == 4
    assert result["return_mean"] == pytest.approx((0.10 + 0.20 + 0.45 + 0.45) / 4)
    assert fake.first_n_to_finish(4) == pytest.approx((0.10 + 0.20 + 0.45 + 0.30) / 4)  # what the old rule kept
    assert result["length_mean"] == pytest.approx(30)
    assert result["halves"]["return_mean"] == pytest.approx([(0.10 + 0.45) / 2, (0.20 + 0.45) / 2])
    assert result["achievements"] == {"long_episode": 0.0, "any_episode": 100.0}
    gif = imageio.mimread(tmp_path / "episode_real.gif")
    assert len(gif) == 10 and all(int(np.asarray(f)[0, 0, 0]) == 0 for f in gif)  # env 0's first episode only
