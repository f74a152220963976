"""Aggregate an experiment's runs into interval estimates, and write experiment.json, experiment.md and PNGs."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from hsrl.experiment import stats
from hsrl.rl.metrics import BEHAVIOUR_CLONING_ESS

GAPS = ("shuffled", "zero")  # real - X: shuffled judges use, zero measures sensitivity
LABELS = {"return_mean": "return", "craftax_score": "Craftax score", "action_match": "action match"}
CURVES = {"awr": ("actor_loss", "critic_loss", "entropy"),
          "ppo": ("charts/episodic_return", "charts/craftax_score", "losses/entropy")}
# evaluation noise above this share of the seed-to-seed variance dominates a seed's score
EVAL_NOISE_DOMINATES = 0.5
MORE_EVALUATION = "more evaluation episodes (--eval-episodes), or more held-out rows with --eval-data,"


def seeds_plan(agg: dict, arms: dict[str, list[dict]], alpha: float) -> dict:
    """How many seeds per arm each question needs (`hsrl.experiment.plan`), from this experiment's spreads of the
    headline metric, at the level a claim needs in this family."""
    from hsrl.experiment import plan

    m = agg["metrics"][0]
    size = len({_question(k) for k, t in family(agg).items() if t is not None})
    level = plan.plan_level(size, alpha)
    questions = {}
    for key, comp in agg["comparisons"].items():
        mg, name = agg["margins"][key], comp["hidden"]
        entry = {}
        if mg["uses"] and "real-shuffled" in agg["gaps"].get(name, {}):
            gaps = _scores(arms[name], m) - _scores(arms[name], m, "shuffled")
            entry["uses"] = {"margin": f"+-{mg['uses']:.3g}", **plan.plan_use(gaps, mg["uses"], level)}
        for other in ("baseline", "control"):
            if mg["uses"] and comp.get(other):
                entry[f"beats_{other}"] = {
                    "margin": f"{mg['uses']:.3g} apart / P within 1/2 +- {mg['rank']}" if mg["rank"] else
                    f"{mg['uses']:.3g} apart",
                    **plan.plan_arms(_scores(arms[name], m), _scores(arms[comp[other]], m), mg["uses"], mg["rank"],
                                     level)}
        questions[key] = entry
    seeds = min((len(a["seeds"]) for a in agg["arms"].values()), default=0)
    return {"power": plan.POWER, "alpha": alpha, "family_size": size, "level": level, "seeds": seeds,
            "questions": questions}


def _by_arm(results: list[dict]) -> dict[str, list[dict]]:
    arms = defaultdict(list)
    for r in results:
        arms[r["arm"]].append(r)
    return {arm: sorted(rs, key=lambda r: r["seed"]) for arm, rs in arms.items()}


def role(run: dict) -> str:
    """'baseline', 'hidden' or 'control': the arm's name after its algorithm ("awr-control"; a prompt variant's
    hidden arm is "awr-hidden-NAME")."""
    return run["arm"].split("-")[1]


def _scores(runs: list[dict], metric: str, ablation: str = "real") -> np.ndarray:
    return np.array([r["ablations"][ablation][metric] for r in runs], np.float64)


def _halves(runs: list[dict], metric: str, ablation: str = "real") -> np.ndarray | None:
    """(seeds, 2): each run's score on two disjoint halves of its evaluation, when every run has them."""
    try:
        return np.array([r["ablations"][ablation]["halves"][metric] for r in runs], np.float64)
    except KeyError:
        return None


def eval_noise_share(scores: np.ndarray, halves: np.ndarray | None) -> float | None:
    """The share of the seed-to-seed variance of `scores` that evaluation noise explains. A run's score is
    (about) the mean of its two half-scores a and b; d = (a - b) / 2 has the variance of the score's evaluation
    noise, plus a constant where the halves differ in content the same way in every run (a harder half), which
    the variance of d over seeds leaves out. That variance over the scores' sample variance, capped at 1. None
    without halves or with fewer than 3 seeds."""
    if halves is None or len(scores) < 3:
        return None
    noise = float(np.var((halves[:, 0] - halves[:, 1]) / 2, ddof=1))
    total = float(np.var(scores, ddof=1))
    return 1.0 if total <= 0 else min(1.0, noise / total)


DEFAULT_MARGIN = "10%"  # of the baseline's mean headline score
DEFAULT_RANK_MARGIN = 0.2  # P(hidden > other) within 1/2 +- this: a typical seed wins at most 70% of the time


def margin_of(spec: str | float | None, reference: float) -> float | None:
    """The equivalence margin in the metric's units: a number as it is, "P%" as P% of |reference| (the baseline's
    mean score), None (or "none") for no equivalence test."""
    if spec is None or str(spec).strip().lower() == "none":
        return None
    text = str(spec).strip()
    try:
        value = float(text[:-1]) / 100 * abs(reference) if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"margin {spec!r}: expected a number in the metric's units, P% of the baseline's mean, "
                         "or none") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"margin {spec!r}: expected a finite number >= 0")
    return value


def _margins(comp: dict, arms: dict, m: str, spec, rank_margin: float | None) -> dict:
    """One comparison's margins: `uses` in the metric's units (from --margin, a share of the baseline arm's mean
    score, or of the hidden arm's without a baseline), `rank` on P(hidden > other)."""
    reference_arm = comp.get("baseline") or comp["hidden"]
    reference = float(_scores(arms[reference_arm], m).mean())
    uses = margin_of(spec, reference)
    said = (None if uses is None else f"{spec} of the {role(arms[reference_arm][0])} arm's mean {LABELS.get(m, m)} "
            f"({reference:.4g})" if str(spec).strip().endswith("%") else "given (--margin)")
    return {"uses": uses, "uses_from": said, "rank": rank_margin}


def _equivalence(test: dict | None, kind: str, margin: float | None, x: np.ndarray, y: np.ndarray) -> None:
    """Add the question's equivalence test (TOST against its margin) into its difference test's dict."""
    if test is None or margin is None or margin <= 0:
        return
    make = stats.paired_equivalence if kind == "uses" else stats.rank_equivalence
    test["equivalence"] = make(x, y, margin).to_dict()


def aggregate(results: list[dict], reps: int = 2000, seed: int = 0, margin=DEFAULT_MARGIN,
              rank_margin: float | None = DEFAULT_RANK_MARGIN, alpha: float = stats.ALPHA,
              margins: dict | None = None, upper_bounds: tuple[str, ...] = ()) -> dict:
    """Every arm's estimates, every comparison's calibrated test and every ablation gap, the claims they
    support (`claims`, at level `alpha`) and the verdict built from them. With a margin (`margin`: the metric's
    units or "P%" of the baseline's mean; `rank_margin`: on P(hidden > other)), each of the three questions also
    gets its equivalence test; `margins` ({comparison: margins}) fixes them as an earlier look set them.
    `upper_bounds`: hidden arms whose states saw the future (hindsight labels), laid out as the ladder's top rung."""
    arms = _by_arm(results)
    metrics = results[0]["metrics"]
    out = {"metrics": list(metrics), "confidence": stats.CONFIDENCE, "bootstrap_reps": reps, "arms": {},
           "comparisons": {}, "gaps": {}, "eval_noise": {}, "achievements": {}, "margins": {}}
    for arm, runs in arms.items():
        entry = {"algo": runs[0]["algo"], "role": role(runs[0]), "hidden": runs[0]["hidden"],
                 "seeds": [r["seed"] for r in runs], "weight_ess": _weight_ess(runs), "gate": _gates(runs),
                 "control": runs[0].get("train", {}).get("control")}  # the control's map, in words (control arms)
        for m in metrics:
            x = _scores(runs, m)
            iqm = stats.mean_iqm(x, reps, seed)["iqm"]
            entry[m] = {"mean": stats.mean_t(x), "iqm": iqm if len(x) > 1 else [iqm[0], None, None]}
        out["arms"][arm] = entry
        out["eval_noise"][arm] = {m: eval_noise_share(_scores(runs, m), _halves(runs, m)) for m in metrics}
        gaps = {}
        for g in GAPS:
            if all(g in r["ablations"] for r in runs):
                gaps[f"real-{g}"] = {}
                for m in metrics:
                    real, other = _scores(runs, m), _scores(runs, m, g)
                    halves = [_halves(runs, m), _halves(runs, m, g)]  # this metric's halves, of both ablations
                    gaps[f"real-{g}"][m] = {**stats.paired_test(real, other, seed, alpha).to_dict(), "eval_noise":
                                            eval_noise_share(real - other, None if any(h is None for h in halves)
                                                             else halves[0] - halves[1])}
        if gaps:
            out["gaps"][arm] = gaps
        if "achievements" in runs[0]["ablations"]["real"]:
            out["achievements"][arm] = _achievement_rates(runs)
    out["variants"] = {}
    for algo in sorted({r["algo"] for r in results}):
        of_algo = {name: a for name, a in out["arms"].items() if a["algo"] == algo}
        hidden_arms = [name for name, a in of_algo.items() if a["role"] == "hidden"]
        by_role = {a["role"]: name for name, a in of_algo.items() if a["role"] != "hidden"}
        for name in hidden_arms:
            # one hidden arm: keyed by its algorithm, as always; prompt variants (several): by their arm's name
            comp = {"algo": algo, "hidden": name, "baseline": by_role.get("baseline"),
                    "control": by_role.get("control")}
            for m in metrics:
                comp[m] = {}
                for other in ("baseline", "control"):
                    if by_role.get(other) is None:
                        continue
                    comp[m][f"vs_{other}"] = two_sample(_scores(arms[name], m), _scores(arms[by_role[other]], m), seed,
                                                                 level=alpha)
            key = algo if len(hidden_arms) == 1 else name
            out["comparisons"][key] = comp
            m = metrics[0]
            mg = (margins or {}).get(key) or _margins(comp, arms, m, margin, rank_margin)
            out["margins"][key] = mg
            gap = out["gaps"].get(name, {}).get("real-shuffled", {}).get(m)
            _equivalence(gap, "uses", mg["uses"], _scores(arms[name], m), _scores(arms[name], m, "shuffled")
                         if gap is not None else None)
            for other in ("baseline", "control"):
                if by_role.get(other) is not None:
                    _equivalence(comp[m][f"vs_{other}"], "rank", mg["rank"], _scores(arms[name], m),
                                 _scores(arms[by_role[other]], m))
        if len(hidden_arms) > 1:  # the prompt variants side by side: every pair, the same two-sample test
            out["variants"][algo] = {
                f"{a} - {b}": {m: two_sample(_scores(arms[a], m), _scores(arms[b], m), seed, level=alpha)
                               for m in metrics}
                for i, a in enumerate(hidden_arms) for b in hidden_arms[i + 1:]}
    out["ladder"] = ladder(out, arms, upper_bounds)
    out["claims"] = claims(out, alpha)  # also writes each test's family-adjusted p and claim into it
    out["plan"] = seeds_plan(out, arms, alpha)
    out["notes"] = notes(out)
    out["verdict"] = verdict(out)
    return out


LADDER = ("baseline", "control", "hidden", "upper bound")


def ladder(agg: dict, arms: dict[str, list[dict]], upper_bounds: tuple[str, ...]) -> dict:
    """{algo: {"rungs": [...], "room": [...]}} where an algorithm has an upper-bound arm (hindsight labels): its arms
    from the baseline up (baseline, control, each forecast arm, each upper bound; the headline metric's mean with its
    t interval; an upper bound also with any other source's states it was scored with, `source:NAME`, and zeros),
    and for each (upper bound, forecast arm) the room left for a better forecaster: the mean difference (Welch,
    descriptive) and the claim of the family's test of that pair."""
    m = agg["metrics"][0]
    out = {}
    for algo in sorted({a["algo"] for a in agg["arms"].values()}):
        of_algo = {name: a for name, a in agg["arms"].items() if a["algo"] == algo}
        upper = [name for name in of_algo if name in upper_bounds]
        if not upper:
            continue
        rungs = []
        for name, a in of_algo.items():
            rung = "upper bound" if name in upper else a["role"]
            entry = {"rung": rung, "arm": name, "mean": a[m]["mean"]}
            if name in upper:
                for ablation in sorted({k for r in arms[name] for k in r["ablations"]}):
                    if ablation.startswith("source:") or ablation == "zero":
                        entry[ablation] = stats.mean_t(_scores(arms[name], m, ablation))
            rungs.append(entry)
        rungs.sort(key=lambda e: LADDER.index(e["rung"]))
        room = []
        for u in upper:
            for h in (e["arm"] for e in rungs if e["rung"] == "hidden"):
                pairs = agg["variants"].get(algo, {})
                key = f"{u} - {h}" if f"{u} - {h}" in pairs else f"{h} - {u}"
                room.append({"upper": u, "hidden": h, "pair": key, "upper_first": key.startswith(f"{u} - "),
                             "mean_difference": stats.welch_test(_scores(arms[u], m), _scores(arms[h], m)).to_dict()})
        out[algo] = {"rungs": rungs, "room": room}
    return out


def _room_claim(agg: dict, algo: str, room: dict) -> str:
    """The family's claim on an (upper bound, forecast) pair, as the upper bound's: above / below / none."""
    test = agg["variants"].get(algo, {}).get(room["pair"], {}).get(agg["metrics"][0])
    claim = "none" if test is None else test["claim"]
    if claim in ("above", "below") and not room["upper_first"]:
        return "below" if claim == "above" else "above"
    return claim


def ladder_lines(agg: dict) -> list[str]:
    """The ladder as markdown: one table per algorithm and the room left above each forecast arm."""
    m = agg["metrics"][0]
    lines = []
    for algo, lad in agg.get("ladder", {}).items():
        lines += ["", f"Ladder ({algo.upper()}, {LABELS.get(m, m)}, mean [{stats.CONFIDENCE:.0%} t interval] over "
                  "seeds): from no hidden state to states that saw the future (hindsight labels, an upper bound on "
                  "what a perfect forecaster's state could give):", "", "| rung | arm | mean | notes |",
                  "|---|---|---|---|"]
        for e in lad["rungs"]:
            notes = "; ".join(f"scored with {k[len('source:'):]}'s states (cross-source): {fmt(v)}" if
                              k.startswith("source:") else f"with zeros: {fmt(v)}"
                              for k, v in e.items() if k.startswith("source:") or k == "zero")
            lines.append(f"| {e['rung']} | {e['arm']} | {fmt(e['mean'])} | {notes} |")
        for r in lad["room"]:
            d = r["mean_difference"]
            said = {"above": "the upper bound scores higher (claimed)", "below": "the forecast arm scores higher "
                    "(claimed)", "none": "no difference shown", "too few seeds": "too few seeds to tell"}[
                _room_claim(agg, algo, r)]
            lines.append("")
            lines.append(f"Room left for a better forecaster above {r['hidden']}: {r['upper']} - {r['hidden']} = "
                         f"{fmt(_iv(d))} (difference of means, descriptive); the family's test of the pair: {said}.")
    return lines


def two_sample(x: np.ndarray, y: np.ndarray, seed: int, skip_exact_above: float | None = None,
               level: float = stats.ALPHA) -> dict:
    """The comparison of two arms' per-seed scores: the rank test the claim rests on (P(first > second), a typical
    seed), with the difference of means and its Welch test beside it as a description (`mean_difference`).
    `skip_exact_above`: `stats.rank_test`'s shortcut for simulations (the same claims); `level`: the level claims
    are made at."""
    mean = {**stats.welch_test(x, y, seed, level).to_dict(), "claim": "descriptive"}
    return {**stats.rank_test(x, y, seed, skip_exact_above, level).to_dict(), "mean_difference": mean}


def _weight_ess(runs: list[dict]) -> float | None:
    """The mean over runs of the AWR weights' effective sample share at the end of training (None for PPO or
    when unknown)."""
    values = [r.get("train", {}).get("weight_ess") for r in runs]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _gates(runs: list[dict]) -> list[dict] | None:
    """Each run's learned gate (`--fusion gated`; sigmoid, starts at 0.0025), in seed order, as {"seed", "gate",
    "travel" (how far training could move its logit, its summed learning rate; None: unknown, e.g. a run recorded
    before it was), "could_open" (`hsrl.rl.networks.gate_could_open`: only then is the gate read)}; None for arms
    without one."""
    from hsrl.rl.networks import gate_could_open

    trains = [r.get("train", {}) for r in runs]
    if any(t.get("gate") is None for t in trains):
        return None
    return [{"seed": r["seed"], "gate": float(t["gate"]),
             "travel": None if t.get("gate_travel") is None else float(t["gate_travel"]),
             "could_open": gate_could_open(t.get("gate_travel"))} for r, t in zip(runs, trains)]


def _gates_text(arm: str, gates: list[dict]) -> str:
    """One arm's gates for experiment.md: read where they could have moved, else said to be unread and why."""
    read = [g for g in gates if g["could_open"]]
    unread = [g for g in gates if not g["could_open"]]
    parts = [", ".join(f"{g['gate']:.3g}" for g in read)] if read else []
    if unread:
        travel = [g["travel"] for g in unread if g["travel"] is not None]
        why = (f"its logit could move at most {max(travel):.3g} of the 6 it needs to open" if travel else
               "the run does not record how far its logit could move")
        seeds = ", ".join(str(g["seed"]) for g in unread)
        parts.append(f"not read at seed{'s' if len(unread) > 1 else ''} {seeds} ({why}: it could not have moved at "
                     f"these settings; values " + ", ".join(f"{g['gate']:.3g}" for g in unread) + ")")
    return f"{arm} " + "; ".join(parts)


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


# ---------------------------------------------------------------------------------------- numbers


def _float(v) -> float:
    return float("nan") if v is None else float(v)


def decimals(iv: list[float]) -> int:
    """Decimals that show an interval's width to two significant digits (a point alone: three significant
    digits of its value)."""
    point, low, high = (_float(v) for v in iv[:3])
    width = high - low if np.isfinite(low) and np.isfinite(high) else 0.0
    ref = width if width > 0 else abs(point)
    if not np.isfinite(ref) or ref == 0:
        return 2
    return int(min(10, max(0, 1 - np.floor(np.log10(ref)) + (0 if width > 0 else 1))))


def fmt(iv: list[float], digits: int | None = None) -> str:
    """'point [low, high]' at the precision the interval needs; a point without interval says so."""
    d = decimals(iv) if digits is None else digits
    point, low, high = (_float(v) for v in iv[:3])
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{point:.{d}f} [no interval]"
    return f"{point:.{d}f} [{low:.{d}f}, {high:.{d}f}]"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


# ---------------------------------------------------------------------------------------- claims


ANSWERS = ("uses", "beats_baseline", "beats_control")


EQUIVALENT = "equivalent"


def family(agg: dict) -> dict[tuple, dict | None]:
    """The report's claims, one family: {(comparison key, answer): test} for the three answers of every hidden
    arm, {(comparison key, answer, "equivalent"): TOST} for those with a margin, and {("variants", algo, pair):
    test} for every pair of prompt variants, on the headline metric (None: not run). Every other metric is
    descriptive."""
    m = agg["metrics"][0]
    out = {}
    for key, comp in agg["comparisons"].items():
        gap = agg["gaps"].get(comp["hidden"], {}).get("real-shuffled", {}).get(m)
        for answer, test in (("uses", gap), ("beats_baseline", comp[m].get("vs_baseline")),
                             ("beats_control", comp[m].get("vs_control"))):
            out[(key, answer)] = test
            if test is not None and "equivalence" in test:
                out[(key, answer, EQUIVALENT)] = test["equivalence"]
    for algo, pairs in agg.get("variants", {}).items():
        for pair, tests in pairs.items():
            out[("variants", algo, pair)] = tests[m]
    return out


def _question(key: tuple) -> tuple:
    """A question's two hypotheses (no effect; not equivalent) share it: at most one of them can be true."""
    return key[:2] if key[-1] == EQUIVALENT else key


def claims(agg: dict, alpha: float = stats.ALPHA) -> dict[str, dict[str, str]]:
    """{comparison: {"uses", "beats_baseline", "beats_control"}: 'above' / 'below' / 'equivalent' / 'none' /
    'too few seeds' / 'not run'}: what the calibrated tests of the headline metric support once the family's error
    is controlled at `alpha` (Holm over every claim of the report, `family`, each question's difference and
    equivalence tests counted once since at most one of their nulls is true: `stats.holm` with groups). One
    function, used by the verdict, the sequential rule and the calibration tests. Writes each family test's
    `p_family` and final `claim` into it; tests of the other metrics (and of the other comparisons' descriptive
    parts) get the claim 'descriptive'."""
    tests = family(agg)
    ps = {k: (t["p_claim"] if t is not None and t["claim"] != "too few seeds" else None) for k, t in tests.items()}
    adjusted = stats.holm(ps, {k: _question(k) for k in tests})
    agg["family"] = {"size": len({_question(k) for k, p in ps.items() if p is not None}), "method": "Holm",
                     "alpha": alpha, "metric": agg["metrics"][0],
                     "equivalence_tests": sum(p is not None and k[-1] == EQUIVALENT for k, p in ps.items())}
    for k, t in tests.items():
        if t is None or t["claim"] == "too few seeds":
            continue
        t["p_family"] = adjusted[k]
        if k[-1] == EQUIVALENT:
            t["claim"] = EQUIVALENT if adjusted[k] <= alpha else "none"
        else:
            t["claim"] = t["side"] if adjusted[k] <= alpha and t["side"] != "includes" else "none"
    m = agg["metrics"][0]
    for comp in agg["comparisons"].values():
        for other in agg["metrics"][1:]:
            for t in comp[other].values():
                t["claim"] = "descriptive"
    for arm, gaps in agg["gaps"].items():
        for name, g in gaps.items():
            for metric, t in g.items():
                if metric != m or name != "real-shuffled":
                    t["claim"] = "descriptive" if name == "real-shuffled" else "sensitivity only"
    for pairs in agg.get("variants", {}).values():
        for tests_ in pairs.values():
            for metric, t in tests_.items():
                if metric != m:
                    t["claim"] = "descriptive"
    return {key: {answer: _claim(tests[(key, answer)]) for answer in ANSWERS} for key in agg["comparisons"]}


def _claim(test: dict | None) -> str:
    """A question's outcome: its difference claim, else 'equivalent' where its TOST claims it."""
    if test is None:
        return "not run"
    if test["claim"] not in ("above", "below") and (test.get("equivalence") or {}).get("claim") == EQUIVALENT:
        return EQUIVALENT
    return test["claim"]


def notes(agg: dict) -> list[str]:
    """What the reader must know to read the numbers: behaviour cloning, IQM = mean, evaluation noise."""
    m = agg["metrics"][0]
    out = []
    seeds = sorted({len(a["seeds"]) for a in agg["arms"].values()})
    if seeds[0] < 4:
        out.append(f"With {seeds[0]} seed(s) per arm the IQM trims nothing and equals the mean.")
    for arm, a in agg["arms"].items():
        if a["weight_ess"] is not None and a["weight_ess"] >= BEHAVIOUR_CLONING_ESS:
            out.append(f"{arm}: the AWR weights were nearly uniform (weight ESS {a['weight_ess']:.4f} >= "
                       f"{BEHAVIOUR_CLONING_ESS}), so this arm reduces to behaviour cloning of the data's policy; a "
                       "smaller --awr-beta (relative to the advantages) lets the weights act.")
    for arm, gaps in agg["gaps"].items():
        share = gaps.get("real-shuffled", {}).get(m, {}).get("eval_noise")
        if share is not None and share > EVAL_NOISE_DOMINATES:
            out.append(f"{arm}: evaluation noise makes up {share:.0%} of the seed-to-seed spread of real - shuffled "
                       f"(from two disjoint halves of each evaluation): {MORE_EVALUATION} would narrow it.")
    for arm, shares in agg["eval_noise"].items():
        share = shares.get(m)
        if share is not None and share > EVAL_NOISE_DOMINATES:
            out.append(f"{arm}: evaluation noise makes up {share:.0%} of the seed-to-seed spread of its "
                       f"{LABELS.get(m, m)}: a seed's score is dominated by which actions were sampled; "
                       f"{MORE_EVALUATION} would narrow the intervals more than more seeds.")
    return out


def _caveat(test: dict) -> str:
    if test["claim"] in ("above", "below") and test["assumes_normal"]:
        level = test.get("level", stats.ALPHA)
        return (f" (with {test['n']} seeds the exact test cannot reach p < {level:.3g}, smallest "
                f"{fmt_p(test['min_p_exact'])}: this rests on the t interval's assumption of roughly normal "
                "per-seed gaps)")
    if test["claim"] == "none" and test.get("p_family") is not None and test["p_claim"] <= stats.ALPHA:
        return (f" (p = {fmt_p(test['p_claim'])} on its own, {fmt_p(test['p_family'])} once corrected for the "
                "family of claims: not claimed)")
    if test["claim"] == "none" and stats.excludes(_iv(test), test["null"]) != "includes":
        return (f" (the interval excludes {test['null']:g} but the exact test does not, "
                f"p = {fmt_p(test['p_exact'])}: not claimed)")
    return ""


def _iv(test: dict) -> list[float]:
    return [test["estimate"], test["low"], test["high"]]


def rank_seeds_needed() -> int:
    """The fewest seeds per arm at which the rank test's permutation p can reach the level (two equal arms)."""
    k = 2
    while 2 / math.comb(2 * k, k) > stats.ALPHA:
        k += 1
    return k


def _stat(kind: str, test: dict) -> str:
    """The numbers behind an answer, with the estimand named."""
    family = "" if test.get("p_family") is None else f", family-adjusted p = {fmt_p(test['p_family'])}"
    if test["method"] == stats.PAIRED:
        return (f"real - shuffled, the mean over seeds, = {fmt(_iv(test))}, t p = {fmt_p(test['p'])}, sign-flip p = "
                f"{fmt_p(test['p_exact'])}{family}")
    other = {"beats_baseline": "baseline", "beats_control": "control"}[kind]
    mean = test.get("mean_difference")
    described = "" if mean is None else f"; hidden - {other}, the mean over seeds, = {fmt(_iv(mean))} (descriptive)"
    value = fmt(_iv(test), 2) if test["low"] is not None else (
        f"{test['estimate']:.2f} (no interval: every seed of one arm scored above every seed of the other)")
    return (f"P(hidden > {other}), a typical seed, = {value}, Brunner-Munzel permutation p = "
            f"{fmt_p(test['p_exact'])}{family}{described}")


def _answer(kind: str, test: dict | None, n: int, control: str | None = None) -> str:
    if test is None:
        return {"beats_baseline": "no baseline arm was run",
                "beats_control": "no control arm was run (--no-control), so whether the hidden state adds "
                                 "information beyond more input features is not tested"}[kind]
    stat = _stat(kind, test)
    claim = test["claim"]
    eq = test.get("equivalence")
    if eq is not None and _claim(test) == EQUIVALENT:
        return _equivalent_answer(kind, eq, n) + f" ({stat})"
    if claim == "too few seeds":
        if test["method"] == stats.RANK and min(test["n"], test["m"]) >= 2:
            return (f"cannot be judged with {n} seeds per arm: the rank test's smallest possible p is "
                    f"{fmt_p(test['min_p_exact'])}, above {test.get('level', stats.ALPHA):.3g}; with so few seeds an "
                    f"arm whose seeds split "
                    f"(some find a skill, some do not) cannot be told from a better or a worse one, so no test of "
                    f"the difference keeps its error rate: {rank_seeds_needed()} or more seeds per arm can answer it "
                    f"({stat})")
        return f"cannot be judged with {n} seed(s): {stat}"
    control = control or "a fixed random projection of the observation to the same width"
    if eq is not None and claim == "none":
        return (f"inconclusive: neither {_EFFECT[kind]} nor equivalence within {_region(kind, eq)} is shown "
                f"({_equivalence_stat(eq)}; {stat}){_caveat(test)}")
    text = {
        "uses": {"above": "yes: the policy uses its hidden state",
                 "below": "the policy does worse with its own hidden state than with another sample's",
                 "none": "not shown"},
        "beats_baseline": {"above": "yes: the hidden-state policy beats the baseline (a typical seed of it scores "
                                    "above a typical seed of the baseline)",
                           "below": "no: the baseline beats the hidden-state policy (a typical seed of it scores "
                                    "above a typical seed of the hidden arm)",
                           "none": "not shown, no difference from the baseline is established"},
        "beats_control": {"above": f"yes: it beats the same-width control ({control}), so the hidden state carries "
                                   "information the policy does not get from that map of the same inputs",
                          "below": f"no: the control ({control}) does better",
                          "none": f"not shown: any gain over the baseline may come from more input features alone "
                                  f"(control: {control})"},
    }[kind][claim]
    return f"{text} ({stat}){_caveat(test)}"


_EFFECT = {"uses": "a use", "beats_baseline": "a difference from the baseline",
           "beats_control": "a difference from the control"}


def _region(kind: str, eq: dict) -> str:
    if kind == "uses":
        return f"+-{eq['margin']:.3g}"
    return f"[{eq['lower']:.2f}, {eq['upper']:.2f}] for P"


def _equivalence_stat(eq: dict) -> str:
    family = "" if eq.get("p_family") is None else f", family-adjusted p = {fmt_p(eq['p_family'])}"
    what = "real - shuffled" if eq["method"] == stats.PAIRED_TOST else "P"
    digits = 2 if eq["method"] == stats.RANK_TOST else None
    return (f"{what} {eq['confidence']:.0%} interval {fmt([eq['estimate'], eq['low'], eq['high']], digits)} against "
            f"[{eq['lower']:.3g}, {eq['upper']:.3g}], TOST p = {fmt_p(eq['p'])}{family}")


def _equivalent_answer(kind: str, eq: dict, n: int) -> str:
    said = _equivalence_stat(eq)
    if kind == "uses":
        share = stats.unseen_share(n)
        return (f"equivalent: the policy does not use its hidden state by more than {eq['margin']:.3g} "
                f"(the mean over seeds of real - shuffled lies within +-{eq['margin']:.3g}: {said}; a use confined "
                f"to fewer than {share:.0%} of seeds could go unseen in {n})")
    other = {"beats_baseline": "baseline", "beats_control": "control"}[kind]
    return (f"equivalent to the {other}: a typical seed of either arm scores above a typical seed of the other at "
            f"most {eq['upper']:.0%} of the time ({said})")


def _family_sentence(agg: dict) -> str:
    f = agg.get("family") or {}
    size = f.get("size", 0)
    hidden = len(agg["comparisons"])
    pairs = sum(len(p) for p in agg.get("variants", {}).values())
    what = f"three questions x {hidden} hidden arm{'s' if hidden != 1 else ''}" + (
        f" + {pairs} prompt-variant pair{'s' if pairs != 1 else ''}" if pairs else "")
    others = " Other metrics are descriptive." if len(agg["metrics"]) > 1 else ""
    alpha = f.get("alpha", stats.ALPHA)
    equivalence = (" Each question's test of an effect and its equivalence test count once (at most one of their "
                   "nulls can be true)." if f.get("equivalence_tests") else "")
    return (f"The claims are one family of {size} question{'s' if size != 1 else ''} ({what}, the ones the seed count "
            f"lets answer), Holm-corrected: the chance of any false claim among them is at most {alpha:.3g}."
            f"{equivalence}{others}")


def verdict(agg: dict) -> str:
    """Three answers per hidden arm, each from its calibrated test of the headline metric with the family's error
    controlled (`claims`), each naming its estimand; then what the intervals do not cover."""
    m = agg["metrics"][0]
    parts = []
    for key, comp in agg["comparisons"].items():
        hidden = agg["arms"][comp["hidden"]]
        n = len(hidden["seeds"])
        gaps = agg["gaps"].get(comp["hidden"], {})
        gap = gaps.get("real-shuffled", {}).get(m)
        uses = (_answer("uses", gap, n) if gap is not None else
                "not judged (the shuffled ablation was not evaluated; real - zero alone is no evidence of use)")
        control = agg["arms"].get(comp.get("control") or "", {}).get("control")
        name = key.upper() if key == comp.get("algo", key) else f"{comp['algo'].upper()} {comp['hidden']}"
        text = (f"{name} ({n} seeds per arm). Does the policy use its hidden state? {uses}. "
                f"Does it beat the baseline? {_answer('beats_baseline', comp[m].get('vs_baseline'), n)}. "
                f"Does it beat the control? {_answer('beats_control', comp[m].get('vs_control'), n, control)}.")
        zero = gaps.get("real-zero", {}).get(m)
        if zero is not None:
            text += (f" real - zero = {fmt(_iv(zero))} measures sensitivity to the input (zeros are an "
                     "input the network never saw), not use.")
        parts.append(text)
    for algo, pairs in agg.get("variants", {}).items():
        said = "; ".join(f"P({pair.replace(' - ', ' > ')}) = {fmt(_iv(t[m]), 2)}, permutation p = "
                         f"{fmt_p(t[m]['p_exact'])}" + ("" if t[m].get("p_family") is None else
                                                        f", family-adjusted {fmt_p(t[m]['p_family'])}") + ": "
                         + {"above": "the first does better", "below": "the second does better",
                            "none": "no difference shown", "too few seeds": "too few seeds"}[t[m]["claim"]]
                         for pair, t in pairs.items())
        parts.append(f"{algo.upper()} prompt variants compared (a typical seed): {said}.")
    for algo, lad in agg.get("ladder", {}).items():
        steps = ", ".join(f"{e['rung']} {fmt(e['mean'])}" for e in lad["rungs"])
        said = {"above": "the upper bound is higher", "below": "the forecast arm is higher"}
        room = "; ".join(f"above {r['hidden']}, {r['upper']} - {r['hidden']} = {fmt(_iv(r['mean_difference']))} "
                         f"({said.get(_room_claim(agg, algo, r), 'no difference shown')})" for r in lad["room"])
        parts.append(f"{algo.upper()} ladder (means, from the baseline up): {steps}. Room left for a "
                     f"better forecaster (the upper bound's states saw the future): {room}.")
    if not parts:
        return (f"No hidden-state arm was run, so no comparison is made; the {LABELS.get(m, m)} intervals "
                "above say how precisely each arm was measured.")
    return (f"On {LABELS.get(m, m)}. Use is judged on the mean over seeds of real - shuffled (paired {stats.CONFIDENCE:.0%}"
            " t interval, with the exact sign-flip test where the seed count lets it reach p < 0.05); the arms are "
            "compared on a typical seed, P(hidden > other) (Brunner-Munzel rank test, p from its permutation "
            "distribution), which keeps its error rate when an arm's seeds split or spread unequally, where a "
            "difference of means cannot at these seed counts (it is shown, as a description). "
            + _family_sentence(agg) + " " + " ".join(parts) +
            " Intervals cover seed-to-seed variation only: not other environments, datasets or hyperparameters, "
            "and effects smaller than their width are not ruled out.")


def markdown(agg: dict, results: list[dict]) -> str:
    metrics = agg["metrics"]
    lab = lambda m: LABELS.get(m, m)  # noqa: E731
    lines = ["# Experiment", "",
             f"`real` ablation unless named. Means with {stats.CONFIDENCE:.0%} Student t intervals over seeds; "
             f"IQM with rliable's stratified-bootstrap intervals ({agg['bootstrap_reps']} resamples; descriptive, "
             "too narrow over few seeds, never used for a claim).", "",
             "| arm | seeds | " + " | ".join(f"{lab(m)} mean | {lab(m)} IQM" for m in metrics) + " |",
             "|---|---|" + "---|---|" * len(metrics)]
    for arm, a in agg["arms"].items():
        lines.append(f"| {arm} | {len(a['seeds'])} | " + " | ".join(f"{fmt(a[m]['mean'])} | {fmt(a[m]['iqm'])}"
                                                                      for m in metrics) + " |")
    if agg["comparisons"]:
        lines += ["", "Comparisons. The claim is about a typical seed: P(hidden > other) with its Brunner-Munzel "
                  f"interval and permutation p (family-adjusted by Holm on {lab(metrics[0])}); the difference of "
                  "means (Welch t interval) is descriptive:", "",
                  "| comparison | metric | P(hidden > other) | permutation p | family p | mean difference | claim |",
                  "|---|---|---|---|---|---|---|"]
        for algo, comp in agg["comparisons"].items():
            for other in ("baseline", "control"):
                for m in metrics:
                    t = comp[m].get(f"vs_{other}")
                    if t is None:
                        continue
                    lines.append(f"| {comp['hidden']} - {comp[other]} | {lab(m)} | {fmt(_iv(t), 2)} | "
                                 f"{fmt_p(t['p_exact'])} | {fmt_p(t.get('p_family'))} | "
                                 f"{fmt(_iv(t['mean_difference']))} | {t['claim']} |")
    if agg.get("variants"):
        lines += ["", "Prompt variants side by side (P(first > second), a typical seed, with its permutation p and "
                  "the family's Holm-adjusted p; the difference of means is descriptive):", "",
                  "| variants | metric | P(first > second) | permutation p | family p | mean difference | claim |",
                  "|---|---|---|---|---|---|---|"]
        for algo, pairs in agg["variants"].items():
            for pair, tests in pairs.items():
                for m in metrics:
                    t = tests[m]
                    lines.append(f"| {pair} | {lab(m)} | {fmt(_iv(t), 2)} | {fmt_p(t['p_exact'])} | "
                                 f"{fmt_p(t.get('p_family'))} | {fmt(_iv(t['mean_difference']))} | {t['claim']} |")
    if agg["gaps"]:
        lines += ["", "Ablation gaps, paired per seed (Student t interval, exact sign-flip p). real - shuffled "
                  "judges use (another sample's state keeps the input's distribution); real - zero measures "
                  "sensitivity to an input the network never saw:", "",
                  "| arm: gap | metric | mean gap | t p | exact p | family p | eval-noise share | claim |",
                  "|---|---|---|---|---|---|---|---|"]
        for arm, gaps in agg["gaps"].items():
            for name, g in gaps.items():
                for m in metrics:
                    t = g[m]
                    share = "-" if t.get("eval_noise") is None else f"{t['eval_noise']:.0%}"
                    lines.append(f"| {arm}: {name.replace('-', ' - ')} | {lab(m)} | {fmt(_iv(t))} | "
                                 f"{fmt_p(t['p'])} | {fmt_p(t['p_exact'])} | {fmt_p(t.get('p_family'))} | {share} | "
                                 f"{t['claim']} |")
    if any(v is not None for shares in agg["eval_noise"].values() for v in shares.values()):
        lines += ["", "Share of each arm's seed-to-seed variance that is evaluation noise (from the spread between "
                  "two disjoint halves of each run's evaluation): " + "; ".join(
                      f"{arm} " + ", ".join(f"{lab(m)} {v:.0%}" for m, v in shares.items() if v is not None)
                      for arm, shares in agg["eval_noise"].items()) + "."]
    if agg["achievements"]:
        arms = list(agg["achievements"])
        lines += ["", "Success rate per achievement, % [95% Wilson interval], over every evaluation episode "
                  "(achievements no episode unlocked are left out):", "",
                  "| achievement | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for name in agg["achievements"][arms[0]]:
            if any(agg["achievements"][a][name][0] > 0 for a in arms):
                lines.append(f"| {name} | " + " | ".join(fmt(agg["achievements"][a][name], 0) for a in arms) + " |")
    shown = [a for a in ("real", "shuffled", "zero", "constant") if any(a in r["ablations"] for r in results)]
    shown += list(dict.fromkeys(a for r in results for a in r["ablations"]  # text ablations, other sources' states
                                if a not in shown and a not in ("achievements",) and a.startswith(("text:", "source:"))))
    lines += ["", f"Per run, {lab(metrics[0])}:", "", "| run | seed | " + " | ".join(shown) + " |",
              "|---|---|" + "---|" * len(shown)]
    d = decimals([0, 0, _spread(results, metrics[0])])  # the scores' range to two significant digits
    for r in sorted(results, key=lambda r: (r["arm"], r["seed"])):
        cells = [f"{r['ablations'][a][metrics[0]]:.{d}f}" if a in r["ablations"] else "" for a in shown]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + " |")
    gated = {arm: a["gate"] for arm, a in agg["arms"].items() if a.get("gate") is not None}
    if gated:
        lines += ["", "Learned gates (`--fusion gated`: sigmoid of the gate on the hidden state's projection, per "
                  "seed; it starts closed at 0.0025 (logit -6); read only where the run could have moved it, its "
                  "logit's summed learning rate reaching 6, and there a gate that stays near 0 is the policy saying "
                  "it does not need the state): " + " | ".join(_gates_text(arm, gates)
                                                                for arm, gates in gated.items()) + "."]
    lines += ladder_lines(agg)
    if any(agg.get("margins", {}).values()):
        lines += ["", "Margins of equivalence: " + "; ".join(
            f"{key}: use +-{mg['uses']:.3g}" + (f" ({mg['uses_from']})" if mg.get("uses_from") else "") +
            (f", P(hidden > other) within 1/2 +- {mg['rank']}" if mg["rank"] else "")
            for key, mg in agg["margins"].items() if mg["uses"] is not None) + "."]
    if agg.get("plan", {}).get("questions"):
        from hsrl.experiment import plan

        lines += [""] + plan.lines(agg["plan"])
    if agg["notes"]:
        lines += ["", "**Notes.**", ""] + [f"- {n}" for n in agg["notes"]]
    lines += ["", "**Verdict.** " + agg["verdict"], ""]
    return "\n".join(lines)


def _spread(results: list[dict], metric: str) -> float:
    """The scores' range: the per-run table prints it to two significant digits."""
    values = np.array([r["ablations"][a][metric] for r in results for a in r["ablations"]], np.float64)
    return float(np.ptp(values)) if len(values) > 1 else 0.0


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


def _finite_interval(iv: list[float]) -> list[float]:
    """A plottable interval: one without bounds (a single seed) is drawn as its point."""
    point, low, high = (_float(v) for v in iv[:3])
    return [point, low if np.isfinite(low) else point, high if np.isfinite(high) else point]


def plot_intervals(agg: dict, path: Path) -> None:
    """rliable's interval plot: per arm, the mean (t interval) and IQM (bootstrap) of each metric."""
    _plt()
    from rliable import plot_utils

    names, point, interval = [], {}, {}
    for m in agg["metrics"]:
        names += [f"{LABELS.get(m, m)} mean (t)", f"{LABELS.get(m, m)} IQM (bootstrap)"]
    for arm, a in agg["arms"].items():
        vals = [_finite_interval(a[m][k]) for m in agg["metrics"] for k in ("mean", "iqm")]
        point[arm] = np.array([v[0] for v in vals])
        interval[arm] = np.array([[v[1] for v in vals], [v[2] for v in vals]])
    fig, _ = plot_utils.plot_interval_estimates(point, interval, names, xlabel="", subfigure_width=4.5,
                                                row_height=0.6, max_ticks=3)
    fig.subplots_adjust(wspace=0.35)  # tick labels of neighbouring panels never touch
    _save(fig, path)


def plot_comparisons(agg: dict, path: Path) -> bool:
    """The calibrated comparisons of the headline metric, one row per hidden arm: P(hidden > baseline),
    P(hidden > control), real - shuffled (use), real - zero (sensitivity); each labelled with its value."""
    m = agg["metrics"][0]
    panels = [("P(hidden > baseline), a typical seed", lambda c, g: c[m].get("vs_baseline")),
              ("P(hidden > control), a typical seed", lambda c, g: c[m].get("vs_control")),
              ("real - shuffled (use)", lambda c, g: g.get("real-shuffled", {}).get(m)),
              ("real - zero (sensitivity)", lambda c, g: g.get("real-zero", {}).get(m))]
    rows = {algo: [get(comp, agg["gaps"].get(comp["hidden"], {})) for _, get in panels]
            for algo, comp in agg["comparisons"].items()}
    keep = [i for i in range(len(panels)) if any(r[i] is not None for r in rows.values())]
    if not rows or not keep:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(keep), figsize=(3.6 * len(keep), 0.7 * len(rows) + 1.2), squeeze=False)
    for ax, i in zip(axes[0], keep):
        for y, (algo, tests) in enumerate(rows.items()):
            t = tests[i]
            if t is None:
                continue
            iv = _finite_interval(_iv(t))
            eq = t.get("equivalence")
            if eq is not None:  # the margin of equivalence, shaded: green where equivalence is claimed
                ax.fill_betweenx([y - 0.3, y + 0.3], eq["lower"], eq["upper"], alpha=0.18, lw=0,
                                 color="C2" if eq["claim"] == EQUIVALENT else "grey")
            ax.errorbar([iv[0]], [y], xerr=[[iv[0] - iv[1]], [iv[2] - iv[0]]], fmt="o", capsize=4,
                        color="C0" if t["claim"] in ("above", "below") else "C2" if _claim(t) == EQUIVALENT else
                        "grey")
            ax.annotate(fmt(_iv(t)), (iv[0], y), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=7)
        nulls = [t[i]["null"] for t in rows.values() if t[i] is not None]
        ax.axvline(nulls[0], color="grey", ls="--", lw=1)  # no effect: 0 for a gap, 1/2 for P(hidden > other)
        ax.set_yticks(range(len(rows)), [a.upper() for a in rows])
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_title(panels[i][0], fontsize=9)
        ax.set_xlabel("probability" if nulls[0] == 0.5 else LABELS.get(m, m), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{stats.CONFIDENCE:.0%} intervals over seeds (blue: an effect claimed by the calibrated tests, "
                 "family corrected; shaded: the margin of equivalence, green where equivalence is claimed)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_achievements(agg: dict, path: Path) -> bool:
    if not agg["achievements"]:
        return False
    plt = _plt()
    arms = list(agg["achievements"])
    # achievements some episode unlocked (by the rate: a Wilson bound is above 0 even when none did)
    names = [n for n in agg["achievements"][arms[0]] if any(agg["achievements"][a][n][0] > 0 for a in arms)]
    if not names:
        return False
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


def write_report(out: Path, results: list[dict], config: dict, agg: dict) -> dict:
    """experiment.json, experiment.md and the PNGs of `aggregate`'s output `agg` over `results`."""
    from hsrl.atomic import write_text_atomic

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
