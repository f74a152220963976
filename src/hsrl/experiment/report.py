"""Aggregate an experiment's runs into interval estimates, and write experiment.json, experiment.md and PNGs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from hsrl.experiment import stats

GAPS = ("zero", "shuffled")  # real - X
LABELS = {"return_mean": "return", "craftax_score": "Craftax score", "action_match": "action match"}
CURVES = {"awr": ("actor_loss", "critic_loss", "entropy"),
          "ppo": ("charts/episodic_return", "charts/craftax_score", "losses/entropy")}


def _by_arm(results: list[dict]) -> dict[str, list[dict]]:
    arms = defaultdict(list)
    for r in results:
        arms[r["arm"]].append(r)
    return {arm: sorted(rs, key=lambda r: r["seed"]) for arm, rs in arms.items()}


def _scores(runs: list[dict], metric: str, ablation: str = "real") -> np.ndarray:
    return np.array([r["ablations"][ablation][metric] for r in runs], np.float64)


def aggregate(results: list[dict], reps: int = 2000, seed: int = 0) -> dict:
    """Interval estimates of every arm, every hidden-vs-baseline pair and every ablation gap."""
    arms = _by_arm(results)
    metrics = results[0]["metrics"]
    out = {"metrics": list(metrics), "confidence": stats.CONFIDENCE, "bootstrap_reps": reps, "arms": {},
           "improvement": {}, "gaps": {}, "achievements": {}}
    for arm, runs in arms.items():
        out["arms"][arm] = {"algo": runs[0]["algo"], "hidden": runs[0]["hidden"], "seeds": [r["seed"] for r in runs],
                            **{m: stats.mean_iqm(_scores(runs, m), reps, seed) for m in metrics}}
        if runs[0]["hidden"]:
            out["gaps"][arm] = {f"real-{g}": {m: stats.paired_gap(_scores(runs, m), _scores(runs, m, g), reps, seed)
                                              for m in metrics}
                                for g in GAPS if all(g in r["ablations"] for r in runs)}
        if "achievements" in runs[0]["ablations"]["real"]:
            out["achievements"][arm] = _achievement_rates(runs)
    for algo in sorted({r["algo"] for r in results}):
        hidden = [a for a, rs in arms.items() if rs[0]["algo"] == algo and rs[0]["hidden"]]
        base = [a for a, rs in arms.items() if rs[0]["algo"] == algo and not rs[0]["hidden"]]
        if hidden and base:
            out["improvement"][algo] = {"hidden": hidden[0], "baseline": base[0], **{
                m: stats.probability_of_improvement(_scores(arms[hidden[0]], m), _scores(arms[base[0]], m), reps, seed)
                for m in metrics}}
    out["verdict"] = verdict(out)
    return out


def _achievement_rates(runs: list[dict]) -> dict[str, list[float]]:
    """{achievement: [rate %, low %, high %]}: Wilson intervals over every episode of every seed."""
    names = list(runs[0]["ablations"]["real"]["achievements"])
    trials = sum(r["ablations"]["real"]["episodes"] for r in runs)
    successes = np.zeros(len(names))
    for r in runs:
        real = r["ablations"]["real"]
        successes += np.rint(np.array([real["achievements"][n] for n in names]) / 100 * real["episodes"])
    rate, low, high = stats.wilson(successes, np.full(len(names), trials))
    return {n: [100 * float(a), 100 * float(b), 100 * float(c)] for n, a, b, c in zip(names, rate, low, high)}


def _fmt(iv: list[float], digits: int = 2) -> str:
    return f"{iv[0]:.{digits}f} [{iv[1]:.{digits}f}, {iv[2]:.{digits}f}]"


def verdict(agg: dict) -> str:
    """One sentence: what the intervals of the headline metric do and do not support."""
    m = agg["metrics"][0]
    n = {arm: len(a["seeds"]) for arm, a in agg["arms"].items()}
    parts = []
    for algo, imp in agg["improvement"].items():
        p = imp[m]
        side = stats.excludes(p, 0.5)
        claim = {"above": "the hidden-state policy beats the baseline",
                 "below": "the baseline beats the hidden-state policy",
                 "includes": "the intervals cannot tell the hidden-state policy from the baseline"}[side]
        text = f"{algo.upper()} ({n[imp['hidden']]} vs {n[imp['baseline']]} seeds): P(hidden > baseline) = {_fmt(p)}, so {claim}"
        gap = agg["gaps"].get(imp["hidden"], {}).get("real-zero")
        if gap is not None:
            gside = stats.excludes(gap[m], 0.0)
            use = {"above": "the policy uses its hidden state (real - zero above 0)",
                   "below": "the policy does worse with its real hidden state than with zeros",
                   "includes": "its use of the hidden state is not shown (real - zero includes 0)"}[gside]
            text += f"; real - zero = {_fmt(gap[m])}: {use}"
        parts.append(text)
    if not parts:
        return (f"Only one arm per algorithm was run, so no comparison is made; the {LABELS.get(m, m)} intervals "
                "above say how precisely each arm was measured.")
    return (f"On {LABELS.get(m, m)} with 95% intervals: " + "; ".join(parts) +
            ". Intervals come from seeds alone: they do not cover other environments, datasets or "
            "hyperparameters, and effects smaller than their width are not ruled out.")


def markdown(agg: dict, results: list[dict]) -> str:
    metrics = agg["metrics"]
    lines = ["# Experiment", "", f"95% stratified-bootstrap intervals ({agg['bootstrap_reps']} resamples, rliable) "
             "over seeds; `real` ablation unless named.", "",
             "| arm | seeds | " + " | ".join(f"{LABELS.get(m, m)} mean | {LABELS.get(m, m)} IQM" for m in metrics) + " |",
             "|---|---|" + "---|---|" * len(metrics)]
    for arm, a in agg["arms"].items():
        lines.append(f"| {arm} | {len(a['seeds'])} | " + " | ".join(f"{_fmt(a[m]['mean'])} | {_fmt(a[m]['iqm'])}"
                                                                      for m in metrics) + " |")
    if agg["improvement"]:
        lines += ["", "| comparison | " + " | ".join(f"P(hidden > baseline), {LABELS.get(m, m)}" for m in metrics)
                  + " |", "|---|" + "---|" * len(metrics)]
        for algo, imp in agg["improvement"].items():
            lines.append(f"| {imp['hidden']} vs {imp['baseline']} | " + " | ".join(_fmt(imp[m]) for m in metrics) + " |")
    if agg["gaps"]:
        lines += ["", "| ablation gap | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for arm, gaps in agg["gaps"].items():
            for name, g in gaps.items():
                lines.append(f"| {arm}: {name.replace('-', ' - ')} | " + " | ".join(_fmt(g[m]) for m in metrics) + " |")
    if agg["achievements"]:
        arms = list(agg["achievements"])
        lines += ["", "Success rate per achievement, % [95% Wilson interval], over every evaluation episode:", "",
                  "| achievement | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        names = list(agg["achievements"][arms[0]])
        for name in names:
            if any(agg["achievements"][a][name][0] > 0 for a in arms):
                lines.append(f"| {name} | " + " | ".join(_fmt(agg["achievements"][a][name], 0) for a in arms) + " |")
    lines += ["", "| run | seed | " + " | ".join(f"{abl}: {LABELS.get(m, m)}" for abl in ("real", "zero", "shuffled", "constant")
                                           for m in metrics[:1]) + " |", "|---|---|" + "---|" * 4]
    for r in sorted(results, key=lambda r: (r["arm"], r["seed"])):
        cells = [f"{r['ablations'][a][metrics[0]]:.3f}" if a in r["ablations"] else "" for a in
                 ("real", "zero", "shuffled", "constant")]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "**Verdict.** " + agg["verdict"], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plots


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from hsrl.atomic import atomic_path

    with atomic_path(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_intervals(agg: dict, path: Path) -> None:
    """rliable's interval plot: per arm, mean and IQM of each metric."""
    _plt()
    from rliable import plot_utils

    names, point, interval = [], {}, {}
    for m in agg["metrics"]:
        names += [f"{LABELS.get(m, m)} mean", f"{LABELS.get(m, m)} IQM"]
    for arm, a in agg["arms"].items():
        vals = [a[m][k] for m in agg["metrics"] for k in ("mean", "iqm")]
        point[arm] = np.array([v[0] for v in vals])
        interval[arm] = np.array([[v[1] for v in vals], [v[2] for v in vals]])
    fig, _ = plot_utils.plot_interval_estimates(point, interval, names, xlabel="", subfigure_width=3.4,
                                                row_height=0.6)
    _save(fig, path)


def plot_comparisons(agg: dict, path: Path) -> bool:
    """P(hidden > baseline) and the ablation gaps of the headline metric, one row per algorithm."""
    m = agg["metrics"][0]
    rows = {}
    for algo, imp in agg["improvement"].items():
        gaps = agg["gaps"].get(imp["hidden"], {})
        rows[algo] = [imp[m]] + [gaps.get(f"real-{g}", {}).get(m, [np.nan] * 3) for g in GAPS]
    if not rows:
        return False
    _plt()
    from rliable import plot_utils

    names = ["P(hidden > baseline)"] + [f"real - {g}" for g in GAPS]
    point = {a: np.array([v[0] for v in vals]) for a, vals in rows.items()}
    interval = {a: np.array([[v[1] for v in vals], [v[2] for v in vals]]) for a, vals in rows.items()}
    fig, axes = plot_utils.plot_interval_estimates(point, interval, names, xlabel=LABELS.get(m, m),
                                                   row_height=0.6)
    for ax, ref in zip(np.atleast_1d(axes), (0.5, 0.0, 0.0)):
        ax.axvline(ref, color="grey", ls="--", lw=1)
    _save(fig, path)
    return True


def plot_achievements(agg: dict, path: Path) -> bool:
    if not agg["achievements"]:
        return False
    plt = _plt()
    arms = list(agg["achievements"])
    names = [n for n in agg["achievements"][arms[0]] if any(agg["achievements"][a][n][2] > 0 for a in arms)]
    names = names or list(agg["achievements"][arms[0]])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) * len(arms) + 1))
    width = 0.8 / len(arms)
    y = np.arange(len(names))
    for i, arm in enumerate(arms):
        v = np.array([agg["achievements"][arm][n] for n in names])
        ax.barh(y + i * width, v[:, 0], height=width, capsize=2,
                xerr=np.maximum([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], 0),  # rounding: 100% > high by 1e-16
                label=arm, alpha=0.8)
    ax.set_yticks(y + 0.4 - width / 2, names)
    ax.set_xlabel("success rate, % (95% Wilson interval)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


def plot_curves(results: list[dict], path: Path) -> bool:
    """Learning curves: per algorithm and metric, the mean over seeds with a band of mean +- 1.96 s.e."""
    from hsrl.rl.metrics import read_metrics
    from hsrl.rl.plot import curves

    panels = []
    for algo in sorted({r["algo"] for r in results}):
        for metric in CURVES[algo]:
            panels.append((algo, metric))
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    drawn = False
    for ax, (algo, metric) in zip(axes[0], panels):
        for arm, runs in _by_arm([r for r in results if r["algo"] == algo]).items():
            series = []
            for r in runs:
                try:
                    c = curves(read_metrics(Path(r["run_dir"]) / "train")).get(metric)
                except FileNotFoundError:
                    c = None
                if c is not None:
                    series.append(dict(zip(c[0].tolist(), c[1].tolist())))
            steps = sorted(set.intersection(*[set(s) for s in series])) if series else []
            if not steps:
                continue
            v = np.array([[s[t] for t in steps] for s in series])
            mean = np.nanmean(v, 0)
            se = np.nanstd(v, 0, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.zeros_like(mean)
            ax.plot(steps, mean, label=f"{arm} ({len(v)})")
            ax.fill_between(steps, mean - 1.96 * se, mean + 1.96 * se, alpha=0.25)
            drawn = True
        ax.set_title(f"{algo}: {metric} (band: 95% CI of the mean over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(metric.rsplit("/", 1)[-1])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return drawn


def write_report(out: Path, results: list[dict], config: dict, reps: int, seed: int) -> dict:
    from hsrl.atomic import write_text_atomic

    agg = aggregate(results, reps=reps, seed=seed)
    pngs = ["intervals.png"]
    plot_intervals(agg, out / "intervals.png")
    for name, fn in (("comparisons.png", lambda p: plot_comparisons(agg, p)),
                     ("achievements.png", lambda p: plot_achievements(agg, p)),
                     ("curves.png", lambda p: plot_curves(results, p))):
        if fn(out / name):
            pngs.append(name)
    report = {"config": config, "aggregates": agg, "runs": results, "figures": pngs}
    write_text_atomic(out / "experiment.json", json.dumps(report, indent=1, sort_keys=True))
    write_text_atomic(out / "experiment.md", markdown(agg, results))
    return report
