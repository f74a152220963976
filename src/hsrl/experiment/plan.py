"""Seeds planned ahead: how many seeds per arm each question needs, from the spreads an experiment (or a pilot) saw.

For each of the three questions and a margin M (`hsrl.experiment.report.margin_of`), the fewest seeds per arm at
which the report's tests reach POWER (80%) at the level a claim needs in the report's family (the level over the
number of questions: Holm's first step, so the plan holds whatever the other questions show):
  - uses, effect: the paired t test of real - shuffled detects a mean gap of M (noncentral t, df = K - 1);
  - uses, equivalence: TOST shows the gap within +-M when it is 0 (the two one-sided noncentral t tests);
  - beats baseline / control, effect: the rank test detects arms M apart in the mean, as P(hidden > other) =
    Phi(M / sqrt(sd_hidden^2 + sd_other^2)) for normal scores (a seeded simulation of the Brunner-Munzel t test,
    with K at least where its permutation p can reach the level);
  - beats baseline / control, equivalence: TOST shows P within 1/2 +- the rank margin when it is 1/2.
The spreads are estimates from K seeds: each plan also gives the seed counts at the ends of an 80% interval of
the spread (chi-square, K - 1 df), which is wide at small K. The power of these formulas is checked by simulating
the report's own tests at the planned K (tests/test_equivalence.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats as sps

POWER = 0.8
MOST_SEEDS = 1000  # plans beyond this say "more than"
SPREAD_INTERVAL = 0.8  # the interval of the seed-to-seed spread the plan's range spans


def paired_power(k: int, sd: float, effect: float, alpha: float) -> float:
    """Power of the two-sided paired t test at level alpha with K seeds to detect a mean gap `effect`."""
    if k < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if effect != 0 else 0.0
    df, nc = k - 1, abs(effect) * math.sqrt(k) / sd
    c = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(c, df, nc) + sps.nct.cdf(-c, df, nc))


def tost_power(k: int, sd: float, margin: float, alpha: float, true: float = 0.0) -> float:
    """Power of the paired TOST within +-margin at level alpha with K seeds when the mean gap is `true` (the lower
    bound 1 - P(miss low) - P(miss high), close to exact where it matters, near 80%)."""
    if k < 2 or margin <= abs(true):
        return 0.0
    if sd <= 0:
        return 1.0
    df, scale = k - 1, math.sqrt(k) / sd
    c = sps.t.ppf(1 - alpha, df)
    miss = sps.nct.cdf(c, df, (true + margin) * scale) + sps.nct.sf(-c, df, (true - margin) * scale)
    return float(max(0.0, 1.0 - miss))


def _rank_se(k: int) -> float:
    """The standard error of P's estimate with K seeds per arm when the arms' scores share one law: (2K + 1) /
    (12 K^2), its variance."""
    return math.sqrt((2 * k + 1) / (12 * k * k))


def rank_floor_reaches(k: int, alpha: float) -> bool:
    """Whether the rank test's permutation p can reach alpha with K seeds in each arm."""
    from hsrl.experiment.stats import _two_sample_floor

    return _two_sample_floor(k, k) <= alpha


RANK_SIMULATIONS = 500


def rank_power(k: int, p: float, alpha: float, share: float = 0.5, reps: int = RANK_SIMULATIONS) -> float:
    """Power of the rank test with K seeds per arm at level alpha when P(hidden > other) = p, for normal scores
    (the first arm's share of the summed variances `share`), by a seeded simulation of the Brunner-Munzel t test
    (its studentized statistic is far from normal at these seed counts when P is away from 1/2, so no closed form
    comes within a few points), and at 8 seeds or fewer its permutation p too (`_untied_null`); beyond, the
    permutation p (a Monte Carlo) has about the same power as the t test."""
    from hsrl.experiment.stats import _brunner_munzel

    if k < 2 or not rank_floor_reaches(k, alpha):
        return 0.0
    rng = np.random.default_rng(k)
    sx, sy = math.sqrt(2 * share), math.sqrt(2 * (1 - share))  # sx^2 + sy^2 = 2
    shift = float(sps.norm.ppf(min(max(p, 1e-9), 1 - 1e-9))) * math.sqrt(2)
    x = shift + sx * rng.standard_normal((reps, k))
    y = sy * rng.standard_normal((reps, k))
    # placements by ranks (no ties in continuous draws): a score's rank among both arms less its rank in its own
    pooled = np.argsort(np.argsort(np.concatenate([x, y], 1), 1), 1)
    own = np.concatenate([np.argsort(np.argsort(x, 1), 1), np.argsort(np.argsort(y, 1), 1)], 1)
    placed = (pooled - own).astype(np.float64)
    _, _, stat, df = _brunner_munzel(placed[:, :k], placed[:, k:])
    with np.errstate(invalid="ignore"):
        pvalue = np.where(np.isfinite(df), 2 * sps.t.sf(np.abs(stat), np.where(np.isfinite(df), df, 1.0)), 0.0)
    null = _untied_null(k)
    if null is not None:  # few seeds: the permutation p, whose steps bind here, exactly (it depends on ranks alone)
        p_exact = 1.0 - np.searchsorted(null, np.abs(stat) - 1e-9, side="left") / len(null)
        pvalue = np.maximum(pvalue, p_exact)
    return float(np.mean(pvalue <= alpha))


@functools.lru_cache(maxsize=16)
def _untied_null(k: int) -> np.ndarray | None:
    """The sorted |Brunner-Munzel statistic| over every split of 2K untied scores into two arms of K (the permutation
    distribution `stats.rank_test` enumerates, the same for any untied scores), or None where it would not enumerate
    them."""
    from hsrl.experiment.stats import EXACT_ENUMERATE, _brunner_munzel, _placements_untied, _split_indices

    if math.comb(2 * k, k) > EXACT_ENUMERATE:
        return None
    ix, iy = _split_indices(k, k)
    return np.sort(np.abs(_brunner_munzel(*_placements_untied(np.arange(2 * k), ix, iy))[2]))


def rank_tost_power(k: int, margin: float, alpha: float, p: float = 0.5) -> float:
    """Power of the rank TOST within 1/2 +- margin with K seeds per arm when P(hidden > other) = p."""
    if k < 2 or margin <= abs(p - 0.5):
        return 0.0
    se, c = _rank_se(k), sps.t.ppf(1 - alpha, 2 * k - 2)
    away = abs(p - 0.5)
    return float(max(0.0, sps.norm.cdf((margin - away) / se - c) + sps.norm.cdf((margin + away) / se - c) - 1))


def seeds_for(power_at, power: float = POWER) -> int | None:
    """The fewest K >= 2 with power_at(K) >= power (None beyond MOST_SEEDS), taking power to grow with K:
    doubling, then bisection."""
    high = 2
    while power_at(high) < power:
        if high >= MOST_SEEDS:
            return None
        high = min(2 * high, MOST_SEEDS)
    low = high // 2  # power_at(low) < power, or low < 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= power else (mid, high)
    return max(high, 2)


def spread_range(sd: float, k: int) -> tuple[float, float]:
    """The SPREAD_INTERVAL interval of a standard deviation estimated from K values (chi-square, K - 1 df)."""
    if k < 2:
        return math.nan, math.nan
    tail = (1 - SPREAD_INTERVAL) / 2
    return (sd * math.sqrt((k - 1) / sps.chi2.ppf(1 - tail, k - 1)),
            sd * math.sqrt((k - 1) / sps.chi2.ppf(tail, k - 1)))


def _with_range(seeds_at_sd, sd: float, k: int) -> dict:
    """{'seeds': K at the estimated spread, 'range': [K at the spread's low end, K at its high end]}."""
    low, high = spread_range(sd, k)
    return {"seeds": seeds_at_sd(sd), "range": [seeds_at_sd(low) if math.isfinite(low) else None,
                                                 seeds_at_sd(high) if math.isfinite(high) else None]}


def plan_use(gaps: np.ndarray, margin: float, alpha: float) -> dict:
    """Seeds per arm to detect a use of `margin` and to show equivalence within it, from observed per-seed gaps."""
    k, sd = len(gaps), float(np.std(gaps, ddof=1)) if len(gaps) > 1 else math.nan
    if not math.isfinite(sd) or margin <= 0:
        return {"sd": None, "effect": None, "equivalence": None}
    return {"sd": sd, "sd_range": list(spread_range(sd, k)),
            "effect": _with_range(lambda s: seeds_for(lambda n: paired_power(n, s, margin, alpha)), sd, k),
            "equivalence": _with_range(lambda s: seeds_for(lambda n: tost_power(n, s, margin, alpha)), sd, k)}


def plan_arms(x: np.ndarray, y: np.ndarray, margin: float, rank_margin: float | None, alpha: float) -> dict:
    """Seeds per arm to detect arms `margin` apart (as P for normal scores of the observed spreads) and to show
    P within 1/2 +- rank_margin."""
    k = min(len(x), len(y))
    if k < 2 or margin <= 0:
        return {"sd": None, "effect": None, "equivalence": None}
    vx, vy = float(np.var(x, ddof=1)), float(np.var(y, ddof=1))
    sd = math.sqrt(vx + vy)
    share = vx / (vx + vy) if vx + vy > 0 else 0.5

    def effect(s):
        p = min(float(sps.norm.cdf(margin / s)) if s > 0 else 1.0, 1 - 1e-9)
        return seeds_for(lambda n: rank_power(n, p, alpha, share))

    equivalence = None
    if rank_margin:  # P's spread does not depend on the scores' spread: no range
        needed = seeds_for(lambda n: rank_tost_power(n, rank_margin, alpha))
        equivalence = {"seeds": needed, "range": [needed, needed]}
    return {"sd": sd, "sd_range": list(spread_range(sd, k)), "effect": _with_range(effect, sd, k),
            "p_at_margin": float(sps.norm.cdf(margin / sd)) if sd > 0 else 1.0, "equivalence": equivalence}


def plan_level(family_size: int, alpha: float) -> float:
    """The level a claim needs in a family of this many questions at worst (Holm's first step)."""
    return alpha / max(1, family_size)


def _seeds(entry: dict | None) -> str:
    if entry is None:
        return "-"
    k, (low, high) = entry["seeds"], entry["range"]
    word = lambda v: f"> {MOST_SEEDS}" if v is None else str(v)  # noqa: E731
    return word(k) if low == high else f"{word(k)} ({word(low)}-{word(high)})"


def lines(plan: dict) -> list[str]:
    """The plan as markdown: one row per question."""
    out = [f"Seeds per arm each question needs for {POWER:.0%} power at the family's level ({plan['level']:.3g}: "
           f"{plan['alpha']:g} over {plan['family_size']} question(s)), from the spreads these {plan['seeds']} seeds "
           f"showed; in brackets, at the ends of an {SPREAD_INTERVAL:.0%} interval of each spread (few seeds "
           "measure a spread loosely):", "",
           "| comparison | question | margin | seeds to detect it | seeds to show equivalence |",
           "|---|---|---|---|---|"]
    for key, questions in plan["questions"].items():
        for name, q in questions.items():
            margin = q["margin"]
            out.append(f"| {key} | {name} | {margin} | {_seeds(q.get('effect'))} | {_seeds(q.get('equivalence'))} |")
    return out
