"""Craftax score: the Crafter aggregate of per-achievement success rates."""

import numpy as np


def craftax_score(success_rates_percent) -> float:
    """Crafter's score, S = exp(mean_i ln(1 + s_i)) - 1, with s_i the success rate of achievement i in
    percent (0..100). A geometric mean that rewards unlocking many achievements over repeating easy ones;
    0 when nothing is ever unlocked, 100 when everything always is."""
    s = np.asarray(success_rates_percent, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"expected a 1-D array of success rates, got shape {s.shape}")
    if np.any(~np.isfinite(s)) or np.any(s < 0) or np.any(s > 100):
        raise ValueError("success rates must be finite percentages in [0, 100]")
    return float(np.exp(np.mean(np.log1p(s))) - 1.0)


def success_rates(achievements) -> np.ndarray:
    """Per-achievement success rate in percent from a (num_episodes, num_achievements) bool array."""
    a = np.asarray(achievements, dtype=bool)
    if a.ndim != 2:
        raise ValueError(f"expected (episodes, achievements), got shape {a.shape}")
    if a.shape[0] == 0:
        return np.zeros(a.shape[1])
    return a.mean(axis=0) * 100.0
