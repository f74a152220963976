"""Stopping when the answer is in: seeds added in rounds, with the error rate kept over every look.

`hsrl experiment --seeds-max N --sequential` looks at the results after --seeds seeds per arm, then after every
further round of --seeds, up to N. Each look l makes its claims at its own level, a share of the report's error
rate: alpha_l = alpha (K_l - K_(l-1)) / N, linear alpha spending in the seeds used (Lan & DeMets, 1983, with the
linear spending function). The levels sum to alpha, so by the union bound the chance of any false claim over all
looks stays at alpha whatever the looks' dependence (a Pocock or O'Brien-Fleming boundary spends it more cleverly
but needs the statistics' joint normality, which the rank and permutation tests do not give). The experiment stops at
the first look where every question has an answer (an effect, or equivalence within the margin) or at N; the
margin is fixed at the first look. A rerun walks the same looks over the finished runs and reaches the same stop.
The error rate and the seeds used, against the fixed design, are simulated in tests/test_equivalence.py.
"""

from __future__ import annotations

ANSWERED = ("above", "below", "equivalent", "not run")


def looks(first: int, most: int) -> list[int]:
    """Seeds per arm at each look: first, 2 first, ... and `most` (the last look, also when not a multiple)."""
    if first < 1 or most < first:
        raise ValueError(f"looks need 1 <= --seeds <= --seeds-max, got {first} and {most}")
    out = list(range(first, most, first))
    return out + [most]


def look_levels(counts: list[int], alpha: float) -> list[float]:
    """Each look's level: alpha times its share of the seeds (linear alpha spending); they sum to alpha."""
    return [alpha * (k - before) / counts[-1] for before, k in zip([0] + counts[:-1], counts)]


def answered(claims: dict) -> bool:
    """Every question of every comparison has an answer: an effect, or equivalence (a question not run has none
    to give)."""
    return all(outcome in ANSWERED for comp in claims.values() for outcome in comp.values())


def record(counts: list[int], levels: list[float], stop: int, claims: dict) -> dict:
    """experiment.json's account of the sequential run: the looks, their levels, where it stopped and why."""
    return {"looks": counts, "levels": levels, "stopped_at_seeds": counts[stop], "round": stop + 1,
            "reason": "every question answered" if answered(claims) else "--seeds-max reached",
            "spending": "linear in seeds (union bound over looks)"}
