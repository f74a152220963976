"""Interval estimates and tests over seeds: the calibrated ones the verdict rests on, and rliable's.

Claims (what `hsrl.experiment.verdict` may say) rest only on tests whose error rate at 3-20 seeds is checked
by simulation in tests/test_experiment_stats.py:
  - `paired_test(a, b)`: a paired per-seed difference (an ablation gap, real - shuffled, of one policy on the
    same evaluation draws). Student t interval of the mean gap (df = K - 1; exact coverage when the gaps are
    normal), beside the exact sign-flip test (valid for any distribution symmetric about 0, which is what
    exchangeable measurements give under "no effect"; with K seeds its p cannot go below 2 / 2^K).
  - `welch_test(x, y)`: two independent sets of seeds (hidden arm vs baseline or control). Welch's t interval
    of the difference of means (unequal variances), beside the exact two-sample permutation test (valid when
    the arms are exchangeable under "no effect"; its p cannot go below about 2 / C(n + m, n)).
  A claim needs the t interval to exclude 0 and, when the seed count lets the exact test reach the level,
  the exact test too (`Test.claim`). Below that count the claim rests on the t interval alone, and
  `Test.assumes_normal` says so.
Descriptive estimates, as papers report them (Agarwal et al., 2021; computed by `rliable`), are kept in the
tables but never make a claim:
  - mean and IQM (interquartile mean) of a metric over seeds with stratified-bootstrap (percentile) intervals;
    over few seeds these are too narrow (a nominal 95% covers about 80% at K = 3);
  - probability of improvement P(X > Y): the Mann-Whitney statistic over the seeds of two arms, with its
    bootstrap interval;
  - per-achievement success rates: Wilson score intervals over all episodes of all seeds of an arm.
Scores go to rliable as (runs, tasks) matrices with one task. The bootstrap is seeded by the caller, so a
report is reproducible: rliable 1.2.0's StratifiedBootstrap draws its resampling indices from NumPy's global
generator (`np.random.choice`) whatever `random_state` it is given, so each estimate seeds the global
generator and puts its previous state back afterwards.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
EXACT_ENUMERATE = 1 << 16  # enumerate at most this many sign flips / splits; beyond, a seeded Monte Carlo
EXACT_DRAWS = 5000


def _rly():
    from rliable import library, metrics

    return library, metrics


def _finite(values, what: str) -> np.ndarray:
    """Per-seed numbers as a float64 vector; ValueError unless there is at least one and all are finite."""
    x = np.asarray(values, np.float64).reshape(-1)
    if len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"{what}: expected finite per-seed numbers, got {values!r}")
    return x


def _column(values) -> np.ndarray:
    """rliable's layout of one arm's scores: a (runs, 1 task) matrix."""
    return _finite(values, "interval estimate").reshape(-1, 1)


def _interval(score_dict, func, reps: int, seed: int):
    import warnings

    library, _ = _rly()
    saved = np.random.get_state()
    np.random.seed(seed)  # rliable resamples with the global generator (see the module docstring)
    try:
        with warnings.catch_warnings():  # arch deprecates the RandomState that rliable hands it
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = library.get_interval_estimates(score_dict, func, reps=reps,
                                                             confidence_interval_size=CONFIDENCE,
                                                             random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    return point, interval


def mean_iqm(scores, reps: int = 2000, seed: int = 0) -> dict:
    """{"mean": [point, low, high], "iqm": [point, low, high]} of one arm's per-seed scores."""
    _, metrics = _rly()
    func = lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])  # noqa: E731
    point, interval = _interval({"arm": _column(scores)}, func, reps, seed)
    p, ci = point["arm"], interval["arm"]
    return {"mean": [float(p[0]), float(ci[0, 0]), float(ci[1, 0])],
            "iqm": [float(p[1]), float(ci[0, 1]), float(ci[1, 1])]}


def probability_of_improvement(x, y, reps: int = 2000, seed: int = 0) -> list[float]:
    """[P(X > Y), low, high] over the seeds of arms X and Y (ties count one half)."""
    _, metrics = _rly()
    point, interval = _interval({"pair": (_column(x), _column(y))}, metrics.probability_of_improvement, reps, seed)
    ci = np.asarray(interval["pair"]).reshape(-1)
    return [float(point["pair"]), float(ci[0]), float(ci[1])]


def wilson(successes, trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates, lower and upper Wilson score bounds (all as fractions) of `successes` out of `trials`."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"Wilson interval needs 0 <= successes <= trials and trials >= 1, got {k} of {n}")
    low, high = proportion_confint(k, n, alpha=1 - CONFIDENCE, method="wilson")
    return k / n, np.asarray(low), np.asarray(high)


def excludes(interval: list[float], value: float) -> str:
    """'above' / 'below' when [_, low, high] lies strictly on one side of `value`, else 'includes' (also
    when the interval has no bounds)."""
    if interval[1] is None or interval[2] is None or not (math.isfinite(interval[1]) and math.isfinite(interval[2])):
        return "includes"
    if interval[1] > value:
        return "above"
    if interval[2] < value:
        return "below"
    return "includes"


class Test(NamedTuple):
    """A calibrated comparison of per-seed numbers: estimate with its t interval, p values, and sizes."""

    estimate: float  # mean gap (paired) or difference of means (two-sample)
    low: float  # CONFIDENCE t interval; nan with fewer than 2 seeds per side
    high: float
    p: float  # two-sided p of the t test (nan when undefined)
    p_exact: float  # two-sided p of the exact sign-flip / permutation test
    min_p_exact: float  # the smallest p the exact test can give at these seed counts
    n: int  # seeds (paired) or seeds of the first arm
    m: int  # seeds of the second arm (paired: the same as n)
    method: str  # "paired t + sign-flip" or "Welch t + permutation"

    @property
    def interval(self) -> list[float]:
        return [self.estimate, self.low, self.high]

    @property
    def testable(self) -> bool:
        """Enough seeds for a t interval (2 per side)."""
        return min(self.n, self.m) >= 2 and math.isfinite(self.low)

    @property
    def exact_can_reach(self) -> bool:
        return self.min_p_exact <= ALPHA

    @property
    def assumes_normal(self) -> bool:
        """A claim here would rest on the t interval alone (the exact test cannot reach the level)."""
        return not self.exact_can_reach

    def claim(self) -> str:
        """'above' / 'below' 0 when the calibrated tests support it, else 'none' (or 'too few seeds')."""
        if not self.testable:
            return "too few seeds"
        side = excludes(self.interval, 0.0)
        if side == "includes" or (self.exact_can_reach and not self.p_exact <= ALPHA):
            return "none"
        return side

    def to_dict(self) -> dict:
        """JSON-ready: undefined numbers (too few seeds) are None."""
        plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self._asdict().items()}
        return {**plain, "claim": self.claim(), "assumes_normal": self.assumes_normal}




def _t_interval(estimate: float, se: float, df: float) -> tuple[float, float, float]:
    if not (df > 0 and math.isfinite(df)):
        return math.nan, math.nan, math.nan
    if se == 0:  # every seed gave the same gap: no spread to scale by
        return estimate, estimate, (1.0 if estimate == 0 else 0.0)
    half = float(sps.t.ppf(1 - ALPHA / 2, df)) * se
    return estimate - half, estimate + half, float(2 * sps.t.sf(abs(estimate) / se, df))


def _atol(x: np.ndarray) -> float:
    return 1e-12 * max(1.0, float(np.max(np.abs(x))))


@functools.lru_cache(maxsize=32)
def _sign_patterns(k: int) -> np.ndarray:
    return (1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)).astype(np.float64)


@functools.lru_cache(maxsize=32)
def _splits(n: int, m: int) -> np.ndarray:
    """(C(n + m, n), n + m) 0/1 rows: every way to pick the first arm's n seeds from the pooled ones."""
    rows = np.zeros((math.comb(n + m, n), n + m))
    for i, pick in enumerate(itertools.combinations(range(n + m), n)):
        rows[i, list(pick)] = 1
    return rows


def sign_flip_p(d: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(two-sided p, smallest attainable p) of the exact sign-flip test of mean(d) = 0: the share of the 2^K
    sign patterns whose |mean| reaches the observed one (a seeded Monte Carlo with the observed pattern
    counted, beyond EXACT_ENUMERATE patterns)."""
    d = np.asarray(d, np.float64)
    k = len(d)
    observed = abs(d.sum()) - _atol(d)
    if 2 ** k <= EXACT_ENUMERATE:
        return float(np.mean(np.abs(_sign_patterns(k) @ d) >= observed)), min(1.0, 2 / 2 ** k)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(EXACT_DRAWS, k))
    return float((np.sum(np.abs(signs @ d) >= observed) + 1) / (EXACT_DRAWS + 1)), 1 / (EXACT_DRAWS + 1)


def permutation_p(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(two-sided p, smallest attainable p) of the exact two-sample permutation test of mean(x) = mean(y):
    the share of the C(n + m, n) ways to split the pooled seeds whose |difference of means| reaches the
    observed one (a seeded Monte Carlo with the observed split counted, beyond EXACT_ENUMERATE splits)."""
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y])
    total = pooled.sum()
    observed = abs(x.mean() - y.mean()) - _atol(pooled)

    def reaches(sum_first: np.ndarray) -> np.ndarray:
        return np.abs(sum_first / n - (total - sum_first) / m) >= observed

    splits = math.comb(n + m, n)
    if splits <= EXACT_ENUMERATE:
        return float(np.mean(reaches(_splits(n, m) @ pooled))), min(1.0, (2 if n == m else 1) / splits)
    picks = np.random.default_rng(seed).random((EXACT_DRAWS, n + m)).argsort(1)[:, :n]  # random splits
    return float((np.sum(reaches(pooled[picks].sum(1))) + 1) / (EXACT_DRAWS + 1)), 1 / (EXACT_DRAWS + 1)


def paired_test(a, b, seed: int = 0) -> Test:
    """Paired per-seed measurements a_k, b_k (same policy, same evaluation draws): the mean of a - b with
    its Student t interval (df = K - 1), and the exact sign-flip test. Coverage: exact when the gaps are
    normal; the sign-flip p is valid whenever they are symmetric about 0 under no effect."""
    a, b = _finite(a, "paired test"), _finite(b, "paired test")
    if a.shape != b.shape:
        raise ValueError(f"paired test: {len(a)} and {len(b)} seeds; pairs need the same seeds")
    d = a - b
    k = len(d)
    estimate = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    low, high, p = _t_interval(estimate, se, k - 1) if k > 1 else (math.nan, math.nan, math.nan)
    p_exact, min_p = sign_flip_p(d, seed)
    return Test(estimate, low, high, p, p_exact, min_p, k, k, "paired t + sign-flip")


def welch_test(x, y, seed: int = 0) -> Test:
    """Two independent sets of seeds: mean(x) - mean(y) with Welch's t interval (Welch-Satterthwaite df), and
    the exact two-sample permutation test. Coverage: close to nominal for normal scores of any variances
    (conservative at 2 seeds); the permutation p is valid whenever the arms are exchangeable under no effect."""
    x, y = _finite(x, "two-sample test"), _finite(y, "two-sample test")
    n, m = len(x), len(y)
    estimate = float(x.mean() - y.mean())
    if n < 2 or m < 2:
        low = high = p = math.nan
    else:
        vx, vy = x.var(ddof=1) / n, y.var(ddof=1) / m
        se = math.sqrt(vx + vy)
        df = (vx + vy) ** 2 / (vx ** 2 / (n - 1) + vy ** 2 / (m - 1)) if se > 0 else n + m - 2
        low, high, p = _t_interval(estimate, se, df)
    p_exact, min_p = permutation_p(x, y, seed)
    return Test(estimate, low, high, p, p_exact, min_p, n, m, "Welch t + permutation")


def mean_t(scores) -> list[float]:
    """[mean, low, high]: the mean of one arm's per-seed scores with its Student t interval (nan below 2 seeds)."""
    x = _finite(scores, "mean")
    if len(x) < 2:
        return [float(x.mean()), None, None]
    low, high, _ = _t_interval(float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1)
    return [float(x.mean()), low, high]
