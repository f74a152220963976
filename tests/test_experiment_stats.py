"""The verdict's error rates, by simulation: for K in {3, 5, 10} seeds, experiments with no effect (arms and
ablations exchangeable) make each claim at most 5% of the time (+ Monte Carlo error), and a clear effect is
claimed in most. Numbers only: per-seed scores are drawn here and go through the same tests and the same
`claims` function the report uses."""

import math

import numpy as np
import pytest

from hsrl.experiment import stats
from hsrl.experiment.report import claims, decimals, fmt, verdict

EXPERIMENTS = 2000
# 5% plus three binomial standard errors of a 5% rate over EXPERIMENTS draws
LIMIT = 0.05 + 3 * math.sqrt(0.05 * 0.95 / EXPERIMENTS)


def _agg(real, shuffled, hidden, baseline, control) -> dict:
    """The part of `aggregate`'s output that `claims` reads, from per-seed headline scores."""
    return {"metrics": ["score"], "arms": {"x-hidden": {"seeds": list(range(len(hidden)))}},
            "gaps": {"x-hidden": {"real-shuffled": {"score": stats.paired_test(real, shuffled).to_dict()}}},
            "comparisons": {"x": {"hidden": "x-hidden", "score": {
                "vs_baseline": stats.welch_test(hidden, baseline).to_dict(),
                "vs_control": stats.welch_test(hidden, control).to_dict()}}}}


NOISE = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "heavy-tailed (t, 3 df)": lambda rng, shape: rng.standard_t(3, shape),
    "skewed (lognormal)": lambda rng, shape: rng.lognormal(0.0, 1.0, shape),
}


def _claim_rates(k: int, noise, effect: dict, seed: int) -> dict:
    """Share of EXPERIMENTS simulated experiments in which each claim ('above' or 'below') is made."""
    rng = np.random.default_rng(seed)
    made = {"uses": 0, "beats_baseline": 0, "beats_control": 0}
    for _ in range(EXPERIMENTS):
        # a policy's score per seed; the shuffled ablation of the same policy shares its seed effect (paired)
        seed_effect = noise(rng, k)
        real = seed_effect + effect.get("uses", 0.0) + 0.5 * noise(rng, k)
        shuffled = seed_effect + 0.5 * noise(rng, k)
        hidden = real
        baseline = noise(rng, k) + noise(rng, k) * 0.5 - effect.get("beats_baseline", 0.0)
        control = noise(rng, k) + noise(rng, k) * 0.5 - effect.get("beats_control", 0.0)
        if noise is NOISE["skewed (lognormal)"]:  # exchangeable arms: the same skewed law for every arm
            hidden = seed_effect + 0.5 * noise(rng, k) + effect.get("beats_baseline", 0.0)
        for name, c in claims(_agg(real, shuffled, hidden, baseline, control))["x"].items():
            made[name] += c in ("above", "below")
    return {name: n / EXPERIMENTS for name, n in made.items()}


@pytest.mark.parametrize("k", [3, 5, 10])
@pytest.mark.parametrize("noise", list(NOISE))
def test_no_effect_no_claim(k, noise):
    """Under no effect, each claim is made in at most 5% of experiments (+ 3 Monte Carlo standard errors)."""
    rates = _claim_rates(k, NOISE[noise], {}, seed=k)
    print(k, noise, rates)
    if noise == "skewed (lognormal)":  # real - shuffled of skewed seed noise is still symmetric; test the pairs
        rates.pop("beats_control")
    for name, rate in rates.items():
        assert rate <= LIMIT, f"{name} claimed in {rate:.1%} of {EXPERIMENTS} no-effect experiments at K={k}"


def test_clear_effect_is_claimed():
    """A clear effect at K = 5: a real - shuffled gap of 1.5 standard deviations of the per-seed gaps, and a
    hidden arm 2 standard deviations above the baseline and the control (unpaired arms need more), is claimed
    in most experiments; at K = 10 a gap of 1.5 in nearly all."""
    sd_gap = math.sqrt(2) * 0.5  # the gap's noise: two independent 0.5 * N(0, 1) terms
    sd_arm = math.sqrt(1 + 0.25)
    effect = {"uses": 1.5 * sd_gap, "beats_baseline": 2 * sd_arm, "beats_control": 2 * sd_arm}
    rates = _claim_rates(5, NOISE["normal"], effect, seed=1)
    print("K=5", rates)
    assert min(rates.values()) > 0.6
    rates = _claim_rates(10, NOISE["normal"], {"uses": 1.5 * sd_gap, "beats_baseline": 1.5 * sd_arm,
                                               "beats_control": 1.5 * sd_arm}, seed=2)
    print("K=10", rates)
    assert min(rates.values()) > 0.85


def test_tests_match_scipy_and_exact_enumeration():
    from scipy import stats as sps

    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 6), rng.normal(0, 1, 6)
    t = stats.paired_test(a, b)
    ref = sps.ttest_rel(a, b)
    assert t.p == pytest.approx(ref.pvalue) and t.estimate == pytest.approx(np.mean(a - b))
    low, high = ref.confidence_interval()
    assert (t.low, t.high) == (pytest.approx(low), pytest.approx(high))
    assert t.p_exact == pytest.approx(sps.permutation_test((a - b,), np.mean, permutation_type="samples",
                                                           n_resamples=np.inf).pvalue)
    x, y = rng.normal(1, 1, 5), rng.normal(0, 2, 7)
    w = stats.welch_test(x, y)
    ref = sps.ttest_ind(x, y, equal_var=False)
    assert w.p == pytest.approx(ref.pvalue)
    low, high = ref.confidence_interval()
    assert (w.low, w.high) == (pytest.approx(low), pytest.approx(high))
    def gap(u, v, axis=-1):
        return np.abs(np.mean(u, axis=axis) - np.mean(v, axis=axis))

    exact = sps.permutation_test((x, y), gap, permutation_type="independent", n_resamples=np.inf,
                                 alternative="greater", vectorized=True).pvalue
    assert w.p_exact == pytest.approx(exact)
    # beyond enumeration: a seeded Monte Carlo close to the exact value
    x, y = rng.normal(0.8, 1, 10), rng.normal(0, 1, 10)
    exact = sps.permutation_test((x, y), gap, permutation_type="independent", n_resamples=np.inf,
                                 alternative="greater", vectorized=True).pvalue
    assert stats.welch_test(x, y).p_exact == pytest.approx(exact, abs=0.025)  # 3.5 Monte Carlo s.e.


def test_small_seed_counts_are_said():
    one = stats.paired_test([0.3], [0.1])
    assert one.claim() == "too few seeds" and math.isnan(one.low)
    three = stats.paired_test([1.0, 1.1, 0.9], [0.0, 0.05, -0.02])
    assert three.min_p_exact == 0.25 and three.assumes_normal and three.claim() == "above"
    # the noise example: the t interval includes 0, sign-flip p = 0.125 -> no claim
    gaps = stats.paired_test([0.00513, 0.00293, 0.00146, 0.00098, -0.00024], [0] * 5)
    assert gaps.low < 0 < gaps.high and gaps.p_exact == pytest.approx(0.125) and gaps.claim() == "none"
    # t excludes 0 but the exact test, able to reach 5% at K = 6, does not agree (p = 4/64) -> no claim
    t = stats.paired_test([1, 1, 1, 1, 1, -0.2], np.zeros(6))
    assert t.low > 0 and t.exact_can_reach and t.p_exact > 0.05 and t.claim() == "none"


def test_one_seed_verdict_claims_nothing():
    agg = _agg([0.6], [0.5], [0.6], [0.4], [0.5])
    agg["arms"]["x-hidden"]["seeds"] = [0]
    text = verdict(agg)
    assert "cannot be judged with 1 seed" in text and "yes:" not in text
    assert "[no interval]" in text


def test_precision_follows_the_interval():
    assert fmt([0.00222, 0.00059, 0.00381]) == "0.0022 [0.0006, 0.0038]"
    assert fmt([0.24, 0.12, 0.43]) == "0.24 [0.12, 0.43]"
    assert fmt([12.3, 2.0, 25.0]) == "12 [2, 25]"
    assert fmt([0.0001234, 0.0001234, 0.0001234]) == "0.000123 [0.000123, 0.000123]"
    assert "0.00 [0.00, 0.00]" not in fmt([0.0012, 0.0003, 0.0021])
    assert decimals([1.0, None, None]) == 2


def test_evaluation_noise_share_ignores_a_harder_half():
    """The share of seed-to-seed variance due to evaluation noise, from two half-scores per run: right on average
    whatever constant difference the halves' content makes."""
    from hsrl.experiment.report import eval_noise_share

    rng = np.random.default_rng(0)
    for train_sd, noise_sd, truth in ((1.0, 1.0, 0.5), (0.5, 1.0, 0.8), (1.0, 0.0, 0.0)):
        shares = []
        for _ in range(500):
            skill = rng.normal(0, train_sd, 8)
            a = skill + 1.5 + rng.normal(0, noise_sd * math.sqrt(2), 8)  # half a is easier by 3 in every run
            b = skill - 1.5 + rng.normal(0, noise_sd * math.sqrt(2), 8)
            shares.append(eval_noise_share((a + b) / 2, np.stack([a, b], 1)))
        assert np.median(shares) == pytest.approx(truth, abs=0.06)
    assert eval_noise_share(np.ones(2), np.ones((2, 2))) is None  # too few seeds to say


def test_each_metric_gap_uses_its_own_halves():
    """With two metrics (as in Craftax evaluation), the evaluation-noise share of each ablation gap comes from
    that metric's half-scores: here `a` has identical halves (share 0), `b` halves that differ at random."""
    from hsrl.experiment.report import aggregate

    rng = np.random.default_rng(1)
    results = []
    for seed in range(5):
        ablations = {}
        for name in ("real", "shuffled"):
            a, b, e = rng.normal(), rng.normal(), rng.normal()
            ablations[name] = {"a": a, "b": b, "halves": {"a": [a, a], "b": [b + e, b - e]}}
        results.append({"arm": "awr-hidden", "algo": "awr", "hidden": True, "seed": seed, "metrics": ["a", "b"],
                        "ablations": ablations, "train": {}})
    gap = aggregate(results, reps=200)["gaps"]["awr-hidden"]["real-shuffled"]
    assert gap["a"]["eval_noise"] == 0.0 and gap["b"]["eval_noise"] > 0.1
