"""Interval estimates over seeds, as Agarwal et al. (2021) define them, computed by `rliable`.

Every number comes with a 95% interval:
  - mean and IQM (interquartile mean) of a metric over seeds: stratified bootstrap (percentile) intervals;
  - probability of improvement P(X > Y): the Mann-Whitney statistic over the seeds of two arms, with its
    stratified-bootstrap interval;
  - an ablation gap (`real` - `zero`, `real` - `shuffled`): the per-seed difference, its mean with a
    stratified-bootstrap interval (the ablations of one seed are paired: same policy, same env seeds);
  - per-achievement success rates: Wilson score intervals over all episodes of all seeds of an arm.
Scores go to rliable as (runs, tasks) matrices with one task. The bootstrap is seeded by the caller, so a
report is reproducible: rliable 1.2.0's StratifiedBootstrap draws its resampling indices from NumPy's global
generator (`np.random.choice`) whatever `random_state` it is given, so each estimate seeds the global
generator and puts its previous state back afterwards.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def _rly():
    from rliable import library, metrics

    return library, metrics


def _column(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected finite scores of at least one run, got {values!r}")
    return x


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


def paired_gap(a, b, reps: int = 2000, seed: int = 0) -> list[float]:
    """[mean(a - b), low, high]: the mean per-seed difference of two paired measurements, with its interval."""
    diff = _column(a) - _column(b)
    point, interval = _interval({"gap": diff}, lambda x: np.array([np.mean(x)]), reps, seed)
    ci = interval["gap"]
    return [float(point["gap"][0]), float(ci[0, 0]), float(ci[1, 0])]


def wilson(successes, trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates, lower and upper Wilson score bounds (all as fractions) of `successes` out of `trials`."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"Wilson interval needs 0 <= successes <= trials and trials >= 1, got {k} of {n}")
    low, high = proportion_confint(k, n, alpha=1 - CONFIDENCE, method="wilson")
    return k / n, np.asarray(low), np.asarray(high)


def excludes(interval: list[float], value: float) -> str:
    """'above' / 'below' when [_, low, high] lies strictly on one side of `value`, else 'includes'."""
    if interval[1] > value:
        return "above"
    if interval[2] < value:
        return "below"
    return "includes"
