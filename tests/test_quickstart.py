"""The main job at a tiny size: every artefact of the report exists and holds numbers; a rerun reuses what was
trained and evaluated; the report's "Scale it up" commands parse with the CLI."""

import json
import math
import re
import shlex

import numpy as np
import pytest

from hsrl.quickstart import QuickstartConfig, quickstart, scale_up_commands

TINY = dict(envs=2, collect_steps=128, heldout_steps=64, chunk_steps=16, awr_steps=20, online_steps=64,
            online_num_steps=16, eval_episodes=2, max_episode_steps=16, width=32, experiment_seeds=3,
            experiment_awr_steps=20, progress=False)


@pytest.mark.timeout(2400)  # the whole pipeline twice, a local Ray included: minutes on 2 busy cores
def test_quickstart_writes_a_complete_report_and_a_rerun_reuses_it(tmp_path):
    report = quickstart(QuickstartConfig(out=str(tmp_path / "qs"), **TINY))
    text = (report / "README.md").read_text()
    for section in ("## Data", "## Offline AWR", "## Online PPO", "## Evaluation with hidden-state ablations",
                    "## Experiment: 3 seeds", "**Verdict.**", "P(hidden > other)", "real - zero",
                    "real - shuffled", "awr-control", "scripted player",
                    "## Probe", "Effective rank", "## Time per step", "## Scale it up",
                    "Qwen/Qwen3-4B-Thinking-2507", "hsrl label", "--ray", "after the first update",
                    "including the first", "Margins of equivalence: awr: use +-", "seeds to show equivalence"):
        assert section in text, section
    summary = json.loads((report / "summary.json").read_text())
    assert summary["stats"]["samples"] == 128
    for run in ("awr_hidden", "awr_baseline"):
        m = summary["awr"][run]
        assert m["step"] == 20 and math.isfinite(m["critic_loss"]) and math.isfinite(m["actor_loss"])
    online = summary["online"]
    assert online["steps"] == 64 and online["llm_calls"] >= 1
    assert online["sps"] > 0 and 0 < online["sps_with_first_update"] < online["sps"]
    ablations = [r["ablation"] for r in summary["eval"]["awr_hidden"]]
    assert ablations == ["real", "zero", "shuffled", "constant"]
    assert [r["ablation"] for r in summary["eval"]["awr_baseline"]] == ["real"]
    for results in summary["eval"].values():
        for r in results:
            assert math.isfinite(r["return_mean"]) and math.isfinite(r["craftax_score"])
            assert r["length_mean"] <= 16
    rows = re.findall(r"^\| awr_hidden \| (\w+) \| (-?[\d.]+) ± ([\d.]+) \|", text, re.M)
    assert [r[0] for r in rows] == ablations
    # the experiment: 3 seeds of the three AWR arms, scored on held-out rows; the verdict follows from its numbers
    agg = summary["experiment"]["aggregates"]
    assert sorted(agg["arms"]) == ["awr-baseline", "awr-control", "awr-hidden"]
    assert all(len(a["seeds"]) == 3 for a in agg["arms"].values())
    check_verdict_follows_from_numbers(text, summary["experiment"])
    assert "the IQM equals the mean" in text  # 3 seeds
    assert summary["probe"]["rows"] == 128 and summary["probe"]["probed"] >= 1
    from hsrl.probe import state_sentences  # the report's probe sentences are probe.md's, from one function

    assert all(sentence in text for sentence in state_sentences(summary["probe"]))
    assert "| raw obs (linear) |" in text and "read information at any scale" in text and "collapsed" in text
    # every step is timed, the report's own step and the total too
    steps = [t["step"] for t in summary["timings"]]
    assert any(s.startswith("10/10 report") for s in steps) and steps[-1] == "total"
    assert all(f"| {s} |" in text for s in steps) and "--device" not in text
    for png in ("ablations_awr_hidden.png", "achievements.png", "awr/critic_loss.png", "awr/curves.png",
                "online/curves.png", "experiment_intervals.png", "probe.png"):
        assert (report / png).stat().st_size > 1000, png
    online_run = tmp_path / "qs" / "runs" / "online"
    events = sorted(online_run.rglob("events.out.tfevents.*"))
    metrics = (online_run / "metrics.jsonl").read_text()
    evals = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs" / "eval").glob("*/eval.json")}
    results = {p: p.stat().st_mtime_ns for p in (tmp_path / "qs" / "experiment").rglob("result.json")}
    assert len(events) == 1 and len(evals) == 3 and len(results) == 9

    # a rerun reuses the data, the finished runs and the evaluations, and still writes the report
    again = quickstart(QuickstartConfig(out=str(tmp_path / "qs"), **TINY))
    assert "labels reused from the previous run" in (again / "README.md").read_text()
    assert sorted(online_run.rglob("events.out.tfevents.*")) == events, "a second run was written into the folder"
    assert (online_run / "metrics.jsonl").read_text() == metrics
    assert {p: p.stat().st_mtime_ns for p in evals} == evals
    assert {p: p.stat().st_mtime_ns for p in results} == results


def test_scale_up_commands_parse_with_the_cli():
    """Every command of the report's "Scale it up" block is one the CLI accepts as shown, and they agree: no two
    `label` runs with other settings into one folder, `serve` with the `--tokens` of the data evaluated against it,
    Ray addresses in the README's HEAD:6379 form, no `--device` mentioned that no command uses."""
    from hsrl.cli import VERBS, build_parser, config_from_args, load
    from hsrl.quickstart import _markdown  # noqa: F401  (the report embeds scale_up_commands())

    configs = []
    for line in scale_up_commands().splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "hsrl" and argv[1] in VERBS, line
        args = build_parser(argv[1]).parse_args(argv[1:])
        configs.append((argv[1], config_from_args(load(VERBS[argv[1]][0]), args)))
    labels = {}
    for verb, c in configs:
        if verb == "label":
            spec = (c.model, c.layer, c.tokens, c.pooling, c.template, c.input, c.llm_seed)
            assert labels.setdefault(c.out_dir, spec) == spec, f"two label settings into {c.out_dir}"
        for address in (getattr(c, "ray", None),):
            assert address in (None, "local") or re.fullmatch(r"HEAD:6379", address), address
    tokens = {c.out_dir: c.tokens for verb, c in configs if verb == "label"}
    trained_on = {c.out: c.data_dir for verb, c in configs if verb == "train-awr"}
    serve = next(c for verb, c in configs if verb == "serve")
    for verb, c in configs:
        if verb == "eval" and c.server:
            assert serve.tokens == tokens[trained_on[c.checkpoint]]
    assert "--device" not in scale_up_commands()


def test_probe_brief_keeps_metrics_apart_and_ranks_by_skill():
    """R^2 and accuracy are summarised apart (one R^2 of -50 must not drag the accuracies' summary), and the
    best-read list ranks by skill over the trivial guess: 0.99 accuracy where the majority class already gets 0.99
    is no skill, 0.9 where it gets 0.5 is."""
    from hsrl.quickstart import _brief_probe

    rows = [{"feature": "f_rare", "metric": "accuracy", "hidden": 0.99, "floor": 0.99, "raw_obs": 0.99, "majority": 0.99},
            {"feature": "f_even", "metric": "accuracy", "hidden": 0.9, "floor": 0.5, "raw_obs": 1.0, "majority": 0.5},
            {"feature": "g_bad", "metric": "R2", "hidden": -50.0, "floor": -1.0, "raw_obs": 0.5},
            {"feature": "g_good", "metric": "R2", "hidden": 0.7, "floor": 0.0, "raw_obs": 0.9}]
    report = {"features": rows, "skipped": [], "rows": 10, "episodes": 4, "train_episodes": 3, "test_episodes": 1,
              "hidden_size": 8, "effective_rank": 2.0, "mean_pairwise_cosine": 0.1, "common_direction_share": 0.3,
              "spread_to_norm": 0.8, "collapsed": False}
    brief = _brief_probe(report)
    assert brief["median"]["accuracy"] == pytest.approx({"features": 2, "hidden": 0.945, "floor": 0.745,
                                                         "raw_obs": 0.995, "majority": 0.745})
    assert brief["median"]["R2"]["features"] == 2 and brief["median"]["R2"]["hidden"] == pytest.approx(-24.65)
    assert [r["feature"] for r in brief["best"]] == ["f_even", "g_good", "f_rare", "g_bad"]
    assert brief["above_floor"] == 2
    assert brief["collapsed"] is False and brief["spread_to_norm"] == 0.8 and brief["common_direction_share"] == 0.3


def check_verdict_follows_from_numbers(text: str, experiment: dict) -> None:
    """Read the report: the verdict printed is the one the per-run scores give, each answer's sentence matches its
    claim, and every interval it quotes recomputes from the runs' scores."""
    from hsrl.experiment import stats
    from hsrl.experiment.report import fmt

    agg = experiment["aggregates"]
    verdict = re.search(r"\*\*Verdict\.\*\* (.*)", text).group(1)
    assert verdict == agg["verdict"]
    runs = experiment["runs"]
    score = {(r["arm"], r["seed"], a): v["action_match"] for r in runs for a, v in r["ablations"].items()}
    seeds = sorted({r["seed"] for r in runs})
    real = {arm: [score[(arm, s, "real")] for s in seeds] for arm in ("awr-hidden", "awr-baseline", "awr-control")}
    shuffled = [score[("awr-hidden", s, "shuffled")] for s in seeds]
    tests = {"uses": stats.paired_test(real["awr-hidden"], shuffled),
             "beats_baseline": stats.rank_test(real["awr-hidden"], real["awr-baseline"]),
             "beats_control": stats.rank_test(real["awr-hidden"], real["awr-control"])}
    margin = 0.1 * abs(np.mean(real["awr-baseline"]))  # the default margin: 10% of the baseline's mean
    assert agg["margins"]["awr"]["uses"] == pytest.approx(margin)
    equivalence = {"uses": stats.paired_equivalence(real["awr-hidden"], shuffled, margin),
                   "beats_baseline": stats.rank_equivalence(real["awr-hidden"], real["awr-baseline"], 0.2),
                   "beats_control": stats.rank_equivalence(real["awr-hidden"], real["awr-control"], 0.2)}
    ps = {**{k: t.p_claim if t.testable else None for k, t in tests.items()},
          **{(k, "eq"): t.p if t.testable else None for k, t in equivalence.items()}}
    family = stats.holm(ps, {k: k[0] if isinstance(k, tuple) else k for k in ps})
    names = {"uses": "real - shuffled, the mean over seeds,", "beats_baseline": "P(hidden > baseline), a typical seed,",
             "beats_control": "P(hidden > control), a typical seed,"}
    for key, test in tests.items():
        claim = test.claim(stats.ALPHA) if family[key] is None else (
            test.side if family[key] <= stats.ALPHA else "none")
        if claim not in ("above", "below") and family[(key, "eq")] is not None and family[(key, "eq")] <= stats.ALPHA:
            claim = "equivalent"
        assert agg["claims"]["awr"][key] == claim
        quoted = (fmt(test.interval, None if key == "uses" else 2) if np.isfinite(test.low) else
                  f"{test.estimate:.2f} (no interval" if key != "uses" else fmt(test.interval))
        assert f"{names[key]} = {quoted}" in verdict
        said = {"above": "yes:", "below": "no:" if key != "uses" else "does worse", "none": "inconclusive",
                "equivalent": "equivalent", "too few seeds": "cannot be judged"}[claim]
        question = {"uses": "use its hidden state?", "beats_baseline": "beat the baseline?",
                    "beats_control": "beat the control?"}[key]
        answer = verdict.split(question, 1)[1].lstrip()
        assert answer.startswith(said), (key, answer[:80])
