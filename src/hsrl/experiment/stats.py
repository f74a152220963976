"""Interval estimates and tests over seeds: the calibrated ones the verdict rests on, and rliable's.

Claims (what `hsrl.experiment.report.verdict` may say) rest only on tests whose error rate at 3-20 seeds is
checked by simulation in tests/test_experiment_stats.py, under the nulls real runs produce (unequal spreads,
seeds that split into a group that found a skill and one that did not, skewed and heavy-tailed scores):
  - `paired_test(a, b)`: a paired per-seed difference (an ablation gap, real - shuffled, of one policy on the
    same evaluation draws). Estimand: the mean over seeds of the gap. Null: the two ablations are exchangeable
    within each seed (the policy does not use what the ablation changes), so each seed's gap is symmetric about 0
    whatever its spread. Student t interval of the mean gap (df = K - 1) beside the exact sign-flip test (valid for
    any such gaps; with K seeds its p cannot go below 2 / 2^K). The claim's p (`Test.p_claim`) is the larger of the
    two where the sign-flip test can reach the level, else the t test's (`Test.assumes_normal` says so).
  - `rank_test(x, y)`: two independent sets of seeds (hidden arm vs baseline or control). Estimand: P(X > Y) + P(X =
    Y) / 2, the chance that a typical seed of the first arm scores above a typical seed of the second. Null: that
    chance is 1/2, whatever the arms' shapes and spreads. Brunner-Munzel statistic (Brunner & Munzel, 2000: the
    rank statistic studentized by each arm's own placement variance, so unequal spreads and shapes do not break
    it), its p taken from the exact permutation distribution of the studentized statistic (Neubert & Brunner,
    2007), with the Brunner-Munzel t interval of P. The claim's p is the larger of the permutation p and the
    Brunner-Munzel t p; the permutation p cannot go below about 2 / C(n + m, n), so with 3 seeds per arm no claim
    can be made (`Test.exact_can_reach`).
  The difference of means is not claimed between arms: when one arm's seeds split (some find a skill, some do
  not), no test can keep its error rate at the seed counts users run (three seeds that all missed the skill look
  exactly like a worse arm), so `welch_test` (Welch t interval and permutation p of the difference of means)
  is reported beside it as a description.
A report's claims are one family: `holm` adjusts their p values (Holm, 1979: the chance of any false claim
among them stays at the level, whatever their dependence).
Descriptive estimates, as papers report them (Agarwal et al., 2021; computed by `rliable`), are kept in the
tables but never make a claim:
  - mean and IQM (interquartile mean) of a metric over seeds with stratified-bootstrap (percentile) intervals;
    over few seeds these are too narrow (a nominal 95% covers about 80% at K = 3);
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


PAIRED = "paired t + sign-flip"
WELCH = "Welch t + permutation"
RANK = "Brunner-Munzel + permutation"


class Test(NamedTuple):
    """A calibrated comparison of per-seed numbers: estimate with its interval, p values, and sizes."""

    estimate: float  # mean gap (paired), difference of means (Welch), or P(X > Y) + P(X = Y) / 2 (rank)
    low: float  # CONFIDENCE interval (t, Welch or Brunner-Munzel); nan with fewer than 2 seeds per side
    high: float
    p: float  # two-sided p of the t approximation (nan when undefined)
    p_exact: float  # two-sided p of the exact sign-flip / permutation test
    min_p_exact: float  # the smallest p the exact test can give at these seed counts
    n: int  # seeds (paired) or seeds of the first arm
    m: int  # seeds of the second arm (paired: the same as n)
    method: str  # PAIRED, WELCH or RANK
    null: float = 0.0  # the estimate's value under no effect (1/2 for P(X > Y))
    level: float = ALPHA  # the level claims are made at (a sequential look's share): where the exact test can reach it

    @property
    def interval(self) -> list[float]:
        return [self.estimate, self.low, self.high]

    @property
    def testable(self) -> bool:
        """Enough seeds for an interval (2 per side) and, for the rank test (whose claim rests on its permutation
        p alone), for that p to reach the level."""
        if self.method == RANK:  # (its interval is undefined where every placement agrees: complete separation)
            return min(self.n, self.m) >= 2 and self.exact_can_reach
        return min(self.n, self.m) >= 2 and math.isfinite(self.low)

    @property
    def exact_can_reach(self) -> bool:
        return self.min_p_exact <= self.level

    @property
    def assumes_normal(self) -> bool:
        """A claim here would rest on the t interval alone (the exact test cannot reach the level)."""
        return self.method != RANK and not self.exact_can_reach

    @property
    def p_claim(self) -> float:
        """The p a claim rests on. Rank test: the larger of its permutation p and its t approximation's (either
        alone where the other is undefined). Paired and Welch: the larger of the t and exact p where the exact test
        can reach the level, else the t p."""
        if self.method == RANK:  # the t approximation too where it is defined (with a spread of placements)
            ps = [v for v in (self.p, self.p_exact) if math.isfinite(v)]  # p_exact nan: skipped (`rank_test`)
            return max(ps) if ps else math.nan
        return max(self.p, self.p_exact) if self.exact_can_reach else self.p

    @property
    def side(self) -> str:
        """'above' / 'below' the null value, by the estimate ('includes' when equal)."""
        return "above" if self.estimate > self.null else "below" if self.estimate < self.null else "includes"

    def claim(self, alpha: float = ALPHA) -> str:
        """'above' / 'below' the null when the claim's p reaches `alpha` (a family's Holm level: `holm`), else
        'none' (or 'too few seeds')."""
        if not self.testable:
            return "too few seeds"
        if self.p_claim <= alpha and self.side != "includes":
            return self.side
        return "none"

    def to_dict(self) -> dict:
        """JSON-ready: undefined numbers (too few seeds) are None. `claim` is the test's own, at ALPHA; the report
        replaces it by the family's (`holm`)."""
        plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self._asdict().items()}
        return {**plain, "p_claim": _plain(self.p_claim) if self.testable else None, "side": self.side,
                "claim": self.claim(), "assumes_normal": self.assumes_normal}


def _plain(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def holm(ps: dict, groups: dict | None = None) -> dict:
    """Holm's step-down adjustment of a family's p values ({key: p}, None for a test that makes no claim): each
    adjusted p is compared with the level, and the chance of any false claim in the family stays at the level
    whatever the tests' dependence. Keys with None stay None.
    `groups` ({key: group}) names hypotheses of which at most one can be true, as a question's "no effect" and
    "not equivalent within the margin" (an effect of 0 lies inside the margin): the step-down divisor is then the
    number of groups among the hypotheses not yet rejected, not the number of hypotheses (Shaffer, 1986, method 1:
    the most null hypotheses that can still be true together). Without groups every key is its own: Holm."""
    keys = sorted((k for k, p in ps.items() if p is not None), key=lambda k: ps[k])
    group = groups or {}
    out, running = {k: None for k in ps}, 0.0
    for i, k in enumerate(keys):
        could_be_true = len({group.get(r, r) for r in keys[i:]})
        running = max(running, min(1.0, could_be_true * ps[k]))
        out[k] = running
    return out


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

    if math.comb(n + m, n) <= EXACT_ENUMERATE:
        return float(np.mean(reaches(_splits(n, m) @ pooled))), _two_sample_floor(n, m)
    picks = _random_splits(n, m, seed)[0]
    return float((np.sum(reaches(pooled[picks].sum(1))) + 1) / (EXACT_DRAWS + 1)), _two_sample_floor(n, m)


def _two_sample_floor(n: int, m: int) -> float:
    """The smallest p a two-sample permutation test can give: all C(n + m, n) splits enumerated (with equal arms,
    the observed split and its mirror image), or a Monte Carlo of EXACT_DRAWS with the observed split counted."""
    splits = math.comb(n + m, n)
    if splits <= EXACT_ENUMERATE:
        return min(1.0, (2 if n == m else 1) / splits)
    return 1 / (EXACT_DRAWS + 1)


def _paired_gaps(a, b, what: str) -> tuple[np.ndarray, float, float]:
    """The per-seed gaps a - b, their mean and its standard error (nan with one seed)."""
    a, b = _finite(a, what), _finite(b, what)
    if a.shape != b.shape:
        raise ValueError(f"{what}: {len(a)} and {len(b)} seeds; pairs need the same seeds")
    d = a - b
    return d, float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan


def paired_test(a, b, seed: int = 0, level: float = ALPHA) -> Test:
    """Paired per-seed measurements a_k, b_k (same policy, same evaluation draws): the mean of a - b with
    its Student t interval (df = K - 1), and the exact sign-flip test. Coverage: exact when the gaps are
    normal; the sign-flip p is valid whenever they are symmetric about 0 under no effect."""
    d, estimate, se = _paired_gaps(a, b, "paired test")
    k = len(d)
    low, high, p = _t_interval(estimate, se, k - 1) if k > 1 else (math.nan, math.nan, math.nan)
    p_exact, min_p = sign_flip_p(d, seed)
    return Test(estimate, low, high, p, p_exact, min_p, k, k, PAIRED, level=level)


def welch_test(x, y, seed: int = 0, level: float = ALPHA) -> Test:
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
    return Test(estimate, low, high, p, p_exact, min_p, n, m, WELCH, level=level)


def _tie_bounds(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled scores' sorting order, and for each sorted position the start and end (exclusive) of its group
    of equal values: ties count one half in a placement."""
    order = np.argsort(z, kind="stable")
    s = z[order]
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    return order, starts[group], np.r_[starts[1:], len(s)][group]


def _placements(first: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each score's placement, how many of the other arm's scores lie below it (ties one half), for every row of
    `first` ((splits, N) 0/1 over the pooled scores in sorted order, 1 = the first arm's): ((splits, n) of the
    first arm's scores, (splits, m) of the second's)."""
    n = int(first[0].sum())
    m = first.shape[1] - n
    pad = np.zeros((len(first), 1))
    below_y = np.concatenate([pad, np.cumsum(1 - first, 1)], 1)
    below_x = np.concatenate([pad, np.cumsum(first, 1)], 1)
    place_x = below_y[:, start] + 0.5 * (below_y[:, end] - below_y[:, start])
    place_y = below_x[:, start] + 0.5 * (below_x[:, end] - below_x[:, start])
    x_at, y_at = first.astype(bool), ~first.astype(bool)
    return place_x[x_at].reshape(len(first), n), place_y[y_at].reshape(len(first), m)


def _placements_untied(position: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_placements` where no two pooled scores are equal, from index sets ((splits, n) and (splits, m) indices into
    the pooled scores; `position`: each pooled score's place in sorted order): the k-th smallest of an arm's
    scores, at sorted position j, has j - k of the other arm's below it. Several times faster than the general
    form, which the permutation tests of the calibration simulations need."""
    pos_x, pos_y = np.sort(position[ix], 1), np.sort(position[iy], 1)
    return pos_x - np.arange(ix.shape[1]), pos_y - np.arange(iy.shape[1])


def _brunner_munzel(place_x: np.ndarray, place_y: np.ndarray):
    """From each row's placements: the estimate of P(X > Y) + P(X = Y) / 2, its standard error, the Brunner-Munzel
    statistic (estimate - 1/2) / se (+-inf where every placement agrees, se = 0) and the Satterthwaite df."""
    n, m = place_x.shape[1], place_y.shape[1]
    var_x, var_y = place_x.var(1, ddof=1), place_y.var(1, ddof=1)
    estimate = place_x.mean(1) / m
    a, b = var_x / (n * m * m), var_y / (m * n * n)
    se = np.sqrt(a + b)
    tiny = 1e-12
    away = estimate - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(se > tiny, away / np.where(se > tiny, se, 1.0), np.sign(away) * np.inf)
        df = np.where(se > tiny, (a + b) ** 2 / (a ** 2 / (n - 1) + b ** 2 / (m - 1)), np.nan)
    stat = np.where(np.abs(away) <= tiny, 0.0, stat)
    return estimate, se, stat, df


def _brunner_munzel_observed(order, start, end, n: int, m: int) -> tuple[float, float, float, float]:
    """`_brunner_munzel` of the observed split (the first n pooled scores are the first arm's)."""
    observed = np.r_[np.ones(n), np.zeros(m)][order][None]
    return tuple(float(v[0]) for v in _brunner_munzel(*_placements(observed, start, end)))


@functools.lru_cache(maxsize=32)
def _split_indices(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Every way to pick the first arm's n seeds from the pooled n + m: ((C, n), (C, m)) indices."""
    rows = _splits(n, m).astype(bool)
    everything = np.broadcast_to(np.arange(n + m), rows.shape)
    return everything[rows].reshape(-1, n), everything[~rows].reshape(-1, m)


@functools.lru_cache(maxsize=32)
def _random_splits(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """EXACT_DRAWS random splits of the pooled n + m seeds, seeded (the same for every call with this seed):
    ((draws, n), (draws, m)) indices."""
    perms = np.random.default_rng(seed).random((EXACT_DRAWS, n + m)).argsort(1)
    return perms[:, :n], perms[:, n:]


def rank_test(x, y, seed: int = 0, skip_exact_above: float | None = None, level: float = ALPHA) -> Test:
    """Two independent sets of seeds: P(X > Y) + P(X = Y) / 2 (a typical seed of x against a typical seed of y),
    with the Brunner-Munzel t interval (clipped to [0, 1]; none when every placement agrees) and the permutation
    test of the studentized Brunner-Munzel statistic (all C(n + m, n) splits, a seeded Monte Carlo with the
    observed split counted beyond EXACT_ENUMERATE). Coverage: the null P = 1/2 holds whatever the arms' spreads and
    shapes; the permutation p is exact when the arms are exchangeable and close to the level otherwise (checked
    by simulation at 3-20 seeds). `skip_exact_above`: leave the permutation p out (nan) where the t approximation's
    p is above this, where no claim can be made at that level whatever the permutation p (`Test.p_claim` is the
    larger of the two): the simulations' shortcut, with the same claims."""
    x, y = _finite(x, "two-sample test"), _finite(y, "two-sample test")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        estimate = float(np.mean(x[:, None] > y[None, :]) + 0.5 * np.mean(x[:, None] == y[None, :]))
        return Test(estimate, math.nan, math.nan, math.nan, math.nan, 1.0, n, m, RANK, 0.5, level)
    order, start, end = _tie_bounds(np.concatenate([x, y]))
    estimate, se, stat, df = _brunner_munzel_observed(order, start, end, n, m)
    if se > 0:
        half = float(sps.t.ppf(1 - ALPHA / 2, df)) * se
        low, high = max(0.0, estimate - half), min(1.0, estimate + half)
        p = float(2 * sps.t.sf(abs(stat), df))
    else:
        low = high = p = math.nan
    min_p = _two_sample_floor(n, m)
    if skip_exact_above is not None and p > skip_exact_above:
        return Test(estimate, low, high, p, math.nan, min_p, n, m, RANK, 0.5, level)
    enumerate_all = math.comb(n + m, n) <= EXACT_ENUMERATE
    ix, iy = _split_indices(n, m) if enumerate_all else _random_splits(n, m, seed)
    if np.array_equal(start, np.arange(n + m)):
        position = np.empty(n + m, np.int64)
        position[order] = np.arange(n + m)
        placed = _placements_untied(position, ix, iy)
    else:
        rows = np.zeros((len(ix), n + m))
        np.put_along_axis(rows, ix, 1.0, 1)
        placed = _placements(rows[:, order], start, end)
    reach = np.abs(_brunner_munzel(*placed)[2]) >= abs(stat) - 1e-9
    p_exact = float(np.mean(reach)) if enumerate_all else float((reach.sum() + 1) / (EXACT_DRAWS + 1))
    return Test(estimate, low, high, p, p_exact, min_p, n, m, RANK, 0.5, level)


# ------------------------------------------------------------------------------------------- equivalence


PAIRED_TOST = "paired TOST (t)"
RANK_TOST = "Brunner-Munzel TOST"


class Equivalence(NamedTuple):
    """Two one-sided tests (TOST; Schuirmann, 1987) that an estimate lies inside [lower, upper]: its p is the larger
    of the two one-sided p values, and the claim "equivalent" at level alpha is the same as the 1 - 2 alpha interval
    lying inside the region. Null: the estimate sits on (or beyond) an edge of the region."""

    estimate: float
    low: float  # the 1 - 2 ALPHA interval (TOST's); nan where undefined
    high: float
    p: float  # the larger one-sided p; nan where undefined (too few seeds, or no spread to scale by)
    lower: float  # the region of equivalence: null value -+ margin
    upper: float
    margin: float
    n: int
    m: int
    method: str  # PAIRED_TOST or RANK_TOST

    @property
    def testable(self) -> bool:
        return min(self.n, self.m) >= 2 and math.isfinite(self.p) and self.margin > 0

    def claim(self, alpha: float = ALPHA) -> str:
        """'equivalent' when the TOST p reaches `alpha`, else 'none' (or 'too few seeds')."""
        if not self.testable:
            return "too few seeds"
        return "equivalent" if self.p <= alpha else "none"

    def to_dict(self) -> dict:
        plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self._asdict().items()}
        return {**plain, "p_claim": _plain(self.p) if self.testable else None, "claim": self.claim(),
                "confidence": 1 - 2 * ALPHA}


def _tost(estimate: float, se: float, df: float, lower: float, upper: float) -> tuple[float, float, float]:
    """(low, high, p) of TOST from a t statistic's estimate, standard error and df."""
    if not (df > 0 and math.isfinite(df)) or not se > 0:
        return math.nan, math.nan, math.nan
    half = float(sps.t.ppf(1 - ALPHA, df)) * se
    p = max(float(sps.t.sf((estimate - lower) / se, df)), float(sps.t.cdf((estimate - upper) / se, df)))
    return estimate - half, estimate + half, p


def paired_equivalence(a, b, margin: float) -> Equivalence:
    """TOST of the mean over seeds of the paired gap a - b inside [-margin, margin], with the Student t statistic
    (df = K - 1). Calibrated by simulation (tests/test_equivalence.py) where every seed's gap has its mean on the
    margin's edge, under the paired tests' nulls (normal, heavy-tailed, skewed, split and unequal spreads); a use
    confined to a share q of the seeds goes unseen whenever none of the K seeds is among them, with chance
    (1 - q)^K (`unseen_share`)."""
    d, estimate, se = _paired_gaps(a, b, "paired equivalence")
    k = len(d)
    low, high, p = _tost(estimate, se, k - 1, -margin, margin) if k > 1 else (math.nan,) * 3
    return Equivalence(estimate, low, high, p, -margin, margin, float(margin), k, k, PAIRED_TOST)


def rank_equivalence(x, y, margin: float) -> Equivalence:
    """TOST of P(X > Y) + P(X = Y) / 2 inside [1/2 - margin, 1/2 + margin], with the Brunner-Munzel statistic and its
    Satterthwaite df. No permutation p here: the null (P on an edge) does not make the arms exchangeable. Calibrated
    by simulation under the rank test's nulls moved to the edge (unequal spreads, split seeds, skew)."""
    x, y = _finite(x, "two-sample equivalence"), _finite(y, "two-sample equivalence")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return Equivalence(math.nan, math.nan, math.nan, math.nan, 0.5 - margin, 0.5 + margin, float(margin), n, m,
                           RANK_TOST)
    order, start, end = _tie_bounds(np.concatenate([x, y]))
    estimate, se, _, df = _brunner_munzel_observed(order, start, end, n, m)
    low, high, p = _tost(estimate, se, df, 0.5 - margin, 0.5 + margin)
    return Equivalence(estimate, max(0.0, low), min(1.0, high), p, 0.5 - margin, 0.5 + margin, float(margin), n, m,
                       RANK_TOST)


def unseen_share(k: int, alpha: float = ALPHA) -> float:
    """The share of seeds below which a use confined to them goes unseen by all K seeds with chance above alpha:
    1 - alpha^(1 / K) ((1 - q)^K = alpha)."""
    return 1.0 - alpha ** (1.0 / k)


def mean_t(scores) -> list[float]:
    """[mean, low, high]: the mean of one arm's per-seed scores with its Student t interval (nan below 2 seeds)."""
    x = _finite(scores, "mean")
    if len(x) < 2:
        return [float(x.mean()), None, None]
    low, high, _ = _t_interval(float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1)
    return [float(x.mean()), low, high]
