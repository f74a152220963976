"""`hsrl quickstart`: the whole pipeline at small scale on the embedded model, with a report.

collect (a scripted player better than random, with random actions mixed in) -> label (live LLM hidden
states) -> returns -> stats -> AWR with and without hidden states -> online PPO with live hidden states ->
evaluation with ablations -> an `hsrl experiment` (seeds of the AWR baseline, hidden-state and control arms in
parallel on a local Ray, scored on held-out rows of the scripted player, calibrated tests and a verdict) ->
`hsrl probe` of the labelled data -> OUT/report/ (README.md with the numbers, PNG plots, and the commands to
scale each step up).

Runs offline on CPU in minutes. A rerun reuses what the first run collected, labelled, trained and
evaluated: collection, labelling and AWR skip or resume finished work by themselves; a finished online run
(its `summary.json`, same settings) and a finished evaluation (its `eval.json`, same settings, newer than the
checkpoint) are reused here, and an online run that did not finish resumes from its newest checkpoint.
Another setting in a folder that holds a run is refused. Compiled programs come from JAX's persistent cache.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hsrl.env.scripted import SCRIPTED_ENV
from hsrl.rl.metrics import BEHAVIOUR_CLONING_ESS
from hsrl.redact import public_config, without_secrets

REAL_MODEL = "Qwen/Qwen3-4B-Thinking-2507"


@dataclass(frozen=True)
class QuickstartConfig:
    """Run the whole pipeline at small scale on the embedded model and write a report folder.

    Every step prints progress; the report (OUT/report/README.md) holds the numbers, PNG plots and the
    commands to run each step at full scale (real model, more data, GPU, Ray cluster).
    """

    out: str = field(default="quickstart", metadata={"help": "output folder (rerun to reuse finished steps)"})
    env: str = field(default=SCRIPTED_ENV, metadata={"help": f"environment: {SCRIPTED_ENV}, the one the scripted "
                                                              "player that collects the data plays"})
    model: str = field(default="minilm", metadata={"help": "LLM (the embedded MiniLM runs offline on CPU)"})
    envs: int = field(default=8, metadata={"help": "parallel environments for collection, online PPO and evaluation"})
    collect_steps: int = field(default=4096, metadata={"help": "environment steps collected (all envs together)"})
    epsilon: float = field(default=0.25, metadata={"help": "share of random actions of the scripted player that collects the training data"})
    heldout_steps: int = field(default=4096, metadata={"help": "environment steps of the scripted player alone (no random actions), held out to score the experiment's policies"})
    chunk_steps: int = field(default=32, metadata={"help": "steps per environment per chunk file"})
    awr_steps: int = field(default=2000, metadata={"help": "AWR gradient steps per model"})
    awr_beta: float = field(default=0.5, metadata={"help": "AWR temperature (small enough that the advantage weights act: the report gives their ESS)"})
    online_steps: int = field(default=4096, metadata={"help": "online PPO environment steps"})
    online_num_steps: int = field(default=64, metadata={"help": "online PPO steps per environment per update"})
    eval_episodes: int = field(default=4, metadata={
        "help": "episodes per ablation, as in `hsrl eval`: a fixed quota per environment, each played to its end"})
    eval_skip_n: int = field(default=5, metadata={"help": "LLM refresh period during evaluation of the AWR policy"})
    max_episode_steps: int = field(default=100, metadata={"help": "episode length cap for collection, online PPO and evaluation"})
    experiment_seeds: int = field(default=8, metadata={"help": "seeds per arm of the experiment (AWR baseline, hidden-state and control arms; 8, as `hsrl experiment`'s default, gives every answer useful power with the family's error controlled)"})
    experiment_awr_steps: int = field(default=1000, metadata={"help": "AWR gradient steps per experiment run"})
    ray: bool = field(default=True, metadata={"help": "run the experiment's seeds in parallel on a local Ray (--no-ray: one after another)"})
    width: int = field(default=128, metadata={"help": "network width (the full-scale default is 512)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def check(self) -> None:
        """Every flag before any work or folder: the output (a folder, new or of an earlier quickstart, never a
        file), the env, the counts and the model (available here, from its registry name, folder or hub cache)."""
        from hsrl.errors import InputError
        from hsrl.llm.models import check_model_available

        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {self.out} is a file: give a folder (new, or one of an earlier quickstart)")
        if self.env != SCRIPTED_ENV:  # what step 1 would refuse, before any folder is made
            raise InputError(f"--env {self.env}: the quickstart's data comes from a scripted player of "
                             f"{SCRIPTED_ENV} (symbolic observations, which it labels as text and probes)")
        for name in ("envs", "collect_steps", "heldout_steps", "chunk_steps", "awr_steps", "online_steps",
                     "online_num_steps", "eval_episodes", "eval_skip_n", "max_episode_steps", "experiment_seeds",
                     "experiment_awr_steps", "width"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.epsilon <= 1:
            raise InputError(f"--epsilon must lie in [0, 1], got {self.epsilon}")
        if not self.awr_beta > 0:
            raise InputError(f"--awr-beta must be positive, got {self.awr_beta}")
        check_model_available(self.model)


STEPS = 10


def _step(name: str, log: list, fn):
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    result = fn()
    log.append({"step": name, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"   done in {log[-1]['seconds']} s", flush=True)
    return result


def _settings(config) -> dict:
    """A config as the JSON a run folder stores, without what does not change its results (progress bars, secrets)."""
    d = json.loads(json.dumps(without_secrets(asdict(config))))
    d.pop("progress", None)
    return d


def _evaluate_once(config) -> dict:
    """The evaluation in `config.out`: reused when it has these settings and is newer than the checkpoint."""
    from hsrl.evaluate import EPISODE_RULE, evaluate
    from hsrl.rl.checkpoint import resolve_checkpoint

    path = Path(config.out) / "eval.json"
    if path.exists():
        report = json.loads(path.read_text())
        same = {k: v for k, v in without_secrets(report.get("config", {})).items() if k != "progress"} == _settings(config)
        same = same and (report.get("episode_selection") or {}).get("rule") == EPISODE_RULE  # not an older rule's
        if same and path.stat().st_mtime >= resolve_checkpoint(config.checkpoint).stat().st_mtime:
            print(f"   reusing {path}", flush=True)
            return report
    return evaluate(config)


def _probe_once(config) -> dict:
    from hsrl.probe import probe

    path = Path(config.out) / "probe.json"
    if path.exists():
        report = json.loads(path.read_text())
        have = {k: v for k, v in report.get("config", {}).items() if k != "progress"}
        if have == _settings(config) and "common_direction_share" in report:
            print(f"   reusing {path}", flush=True)
            return report
    return probe(config)


def quickstart(config: QuickstartConfig) -> Path:
    from hsrl.data.collect import CollectConfig, collect
    from hsrl.data.label import LabelConfig, label_dataset
    from hsrl.data.returns import add_returns
    from hsrl.data.stats import STATS_FILE, dataset_stats
    from hsrl.atomic import write_text_atomic
    from hsrl.evaluate import EvalConfig
    from hsrl.experiment.config import ExperimentConfig, run_experiment
    from hsrl.probe import ProbeConfig
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.plot import plot_runs
    from hsrl.rl.ppo import OnlineConfig, train_online

    config.check()  # for callers that did not run it (`hsrl quickstart` has)
    t_start = time.perf_counter()
    out = Path(config.out)
    raw, labelled = out / "data" / "raw", out / "data" / "labelled"
    runs, report = out / "runs", out / "report"
    report.mkdir(parents=True, exist_ok=True)
    timings: list[dict] = []
    p = config.progress
    n = STEPS

    heldout_raw, heldout = out / "data" / "heldout_raw", out / "data" / "heldout"
    _step(f"1/{n} collect (a scripted player, {config.epsilon:.0%} random actions; and held-out rows without)",
          timings, lambda: [collect(CollectConfig(
              env=config.env, envs=config.envs, steps=steps, chunk_steps=config.chunk_steps, out=str(folder),
              policy="scripted", epsilon=eps, seed=seed, max_episode_steps=config.max_episode_steps, progress=p))
              for folder, steps, eps, seed in ((raw, config.collect_steps, config.epsilon, config.seed),
                                               (heldout_raw, config.heldout_steps, 0.0, config.seed + 1))])
    label = _step(f"2/{n} label with LLM hidden states", timings, lambda: [label_dataset(LabelConfig(
        str(src), str(dst), model=config.model, batch_size=32, progress=p))
        for src, dst in ((raw, labelled), (heldout_raw, heldout))][0])
    if label.failed:
        raise RuntimeError(f"labelling failed for {label.failed}")
    _step(f"3/{n} returns", timings, lambda: add_returns(labelled, gamma=0.99, show_progress=p))
    stats = _step(f"4/{n} statistics", timings, lambda: dataset_stats(labelled, show_progress=p))
    write_text_atomic(labelled / STATS_FILE, json.dumps(stats, indent=1))

    awr = {}
    for name, hidden in (("awr_hidden", True), ("awr_baseline", False)):
        awr[name] = _step(f"5/{n} AWR {'with' if hidden else 'without'} hidden states", timings, lambda h=hidden, n=name:
                          train_awr(TrainAWRConfig(str(labelled), out=str(runs / n), hidden=h, steps=config.awr_steps,
                                                   beta=config.awr_beta,
                                                   log_every=max(1, config.awr_steps // 20),
                                                   save_every=config.awr_steps, width=config.width, seed=config.seed,
                                                   steps_per_call=max(1, min(100, config.awr_steps // 10)),
                                                   progress=p)))
    online = _step(f"6/{n} online PPO with live hidden states", timings, lambda: train_online(OnlineConfig(
        env=config.env, envs=config.envs, steps=config.online_steps, num_steps=config.online_num_steps,
        max_episode_steps=config.max_episode_steps, skip_n=25, model=config.model, width=config.width,
        num_minibatches=4, out=str(runs / "online"), seed=config.seed, progress=p)))
    evals = {}
    for name, skip in (("awr_hidden", config.eval_skip_n), ("awr_baseline", None), ("online", None)):
        evals[name] = _step(f"7/{n} evaluate {name}", timings, lambda n=name, s=skip: _evaluate_once(EvalConfig(
            str(runs / n), episodes=config.eval_episodes, envs=min(config.envs, 4), skip_n=s,
            max_episode_steps=config.max_episode_steps, out=str(out / "eval" / n), seed=config.seed, progress=p)))
    experiment = _step(f"8/{n} experiment: {config.experiment_seeds} seeds x AWR baseline / hidden / control, "
                       f"scored on held-out rows{' on a local Ray' if config.ray else ''}", timings,
                       lambda: run_experiment(ExperimentConfig(
                           offline=str(labelled), eval_data=str(heldout), seeds=config.experiment_seeds,
                           seed=config.seed, env=config.env, model=config.model, width=config.width,
                           awr_steps=config.experiment_awr_steps, awr_beta=config.awr_beta,
                           awr_save_every=config.experiment_awr_steps, ray="local" if config.ray else None,
                           out=str(out / "experiment"), progress=p)))
    probed = _step(f"9/{n} probe the labelled hidden states", timings, lambda: _probe_once(ProbeConfig(
        str(labelled), out=str(out / "probe"), seed=config.seed, progress=p)))

    def figures():
        plot_runs([runs / "awr_hidden", runs / "awr_baseline"], report / "awr", labels=("with hidden", "baseline"))
        plot_runs([runs / "online"], report / "online")
        shutil.copy(out / "eval" / "awr_hidden" / "ablations.png", report / "ablations_awr_hidden.png")
        _achievement_chart(evals, report / "achievements.png")
        for png in experiment["figures"]:
            shutil.copy(out / "experiment" / png, report / f"experiment_{png}")
        shutil.copy(out / "probe" / "probe.png", report / "probe.png")

    _step(f"{n}/{n} report (figures)", timings, figures)
    timings.append({"step": "total", "seconds": round(time.perf_counter() - t_start, 1)})
    summary = {"config": public_config(config), "timings": timings, "stats": _brief_stats(stats),
               "awr": {k: _last_metrics(runs / k) for k in awr},
               "online": {k: online.get(k) for k in ("steps", "episodes", "return_mean", "craftax_score", "sps",
                                                     "sps_with_first_update", "first_update_seconds", "time_share",
                                                     "llm_calls")},
               "eval": {k: v["results"] for k, v in evals.items()},
               "experiment": {"aggregates": experiment["aggregates"], "figures": experiment["figures"],
                              "runs": experiment["runs"],
                              "markdown": (out / "experiment" / "experiment.md").read_text()},
               "probe": _brief_probe(probed)}
    write_text_atomic(report / "summary.json", json.dumps(summary, indent=1, default=str))
    write_text_atomic(report / "README.md", _markdown(config, summary, label))
    print(f"\nreport: {report / 'README.md'}")
    return report


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _last_metrics(run: Path) -> dict:
    """The run's last metrics line (also after a rerun that had nothing left to train)."""
    from hsrl.rl.metrics import read_metrics

    lines = [line for line in read_metrics(run) if "critic_loss" in line]
    return lines[-1] if lines else {}


def _brief_stats(stats: dict) -> dict:
    keep = ("samples", "episodes", "episodes_running", "episode_return", "episode_length", "spec_hash")
    return {k: stats.get(k) for k in keep}


def _brief_probe(report: dict) -> dict:
    """Probe results in brief: sizes, collapse measures and judgement, medians per metric (R^2 and accuracy are not
    averaged together: one very negative R^2 would swamp every accuracy) and the features read best (`_skill`)."""
    import numpy as np

    from hsrl.probe import INPUTS

    rows = report["features"]
    brief = {k: report[k] for k in ("rows", "episodes", "train_episodes", "test_episodes", "hidden_size",
                                    "effective_rank", "mean_pairwise_cosine", "common_direction_share",
                                    "spread_to_norm", "collapsed")}
    brief["probed"], brief["skipped"] = len(rows), len(report["skipped"])
    brief["median"] = {}
    for metric in sorted({r["metric"] for r in rows}):
        same = [r for r in rows if r["metric"] == metric]
        keys = INPUTS + (("majority",) if all("majority" in r for r in same) else ())
        brief["median"][metric] = {"features": len(same), **{k: float(np.median([r[k] for r in same])) for k in keys}}
    brief["above_floor"] = sum(r["hidden"] > r["floor"] for r in rows)
    brief["best"] = sorted(rows, key=lambda r: -_skill(r))[:8]
    return brief


def _skill(row: dict) -> float:
    """A probe's score as skill over the trivial guess, comparable across metrics: R^2 already is (1 - MSE / the
    mean's MSE); for accuracy, 1 - errors / the majority class's errors."""
    if "majority" not in row:
        return row["hidden"]
    return 1 - (1 - row["hidden"]) / max(1 - row["majority"], 1e-9)


def _achievement_chart(evals: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {f"{run}:{r['ablation']}": r["achievements"] for run, ev in evals.items() for r in ev["results"]
            if r["ablation"] == "real"}
    names = sorted({n for a in rows.values() for n, v in a.items() if v > 0})  # only what some episode unlocked
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.8))
    if not names:
        ax.text(0.5, 0.5, "no evaluation episode unlocked an achievement", ha="center", va="center")
    width = 0.8 / len(rows)
    for i, (label, a) in enumerate(rows.items()):
        ax.bar(np.arange(len(names)) + i * width, [a[n] for n in names], width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylabel("success rate (%)")
    ax.set_title("achievements unlocked per episode\n(hidden-state policies read their real states)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # rotated labels and the title are never cut off
    plt.close(fig)


SCALE_UP = """hsrl collect --env Craftax-Symbolic-v1 --envs 128 --steps 1000000 --out data/raw
hsrl label data/raw data/labelled --model {model} --tokens 256 --batch-size 64
hsrl label data/raw data/labelled --model {model} --tokens 256 --batch-size 64 --ray --gpus-per-worker 1   # the same, one worker per local GPU
hsrl label data/raw data/labelled --model {model} --tokens 256 --batch-size 64 --ray HEAD:6379 --gpus-per-worker 1   # the same, on a Ray cluster
hsrl returns data/labelled --gamma 0.99
hsrl stats data/labelled
hsrl probe data/labelled --out runs/probe
hsrl train-awr data/labelled --out runs/awr_hidden
hsrl train-awr data/labelled --out runs/awr_baseline --no-hidden
hsrl experiment --offline data/labelled --seeds 8 --ray HEAD:6379 --gpus-per-run 1 --eval-max-episode-steps 10000 --out runs/experiment
hsrl online --env Craftax-Symbolic-v1 --envs 128 --steps 100000 --skip-n 25 --layer -1 --tokens 1 --model {model} --policy gru --out runs/online
hsrl serve --model {model} --env Craftax-Symbolic-v1 --tokens 256 --port 8000
hsrl eval runs/awr_hidden --episodes 10 --server http://127.0.0.1:8000 --out runs/awr_hidden/eval
hsrl plot runs/awr_hidden runs/awr_baseline --out plots"""


def scale_up_commands(model: str = REAL_MODEL) -> str:
    """The report's "Scale it up" commands (tests parse each with the CLI's parser)."""
    return SCALE_UP.format(model=model)


def _markdown(config: QuickstartConfig, s: dict, label) -> str:
    def row(run, r):
        return (f"| {run} | {r['ablation']} | {r['return_mean']:.2f} ± {r['return_std']:.2f} | {r['length_mean']:.0f} | "
                f"{r['craftax_score']:.2f} |")

    ev_rows = "\n".join(row(run, r) for run, results in s["eval"].items() for r in results)
    awr_rows = "\n".join(f"| {k} | {m['actor_loss']:.4f} | {m['critic_loss']:.4f} | "
                         f"{_num(m.get('explained_variance')):.3f} | {m['entropy']:.3f} |"
                         for k, m in s["awr"].items() if m)
    times = "\n".join(f"| {t['step']} | {t['seconds']} |" for t in s["timings"])
    on = s["online"]
    st = s["stats"]
    ret = st["episode_return"] or {}
    env, out = config.env, config.out
    labelled_note = (f"labelled at {label.samples / label.seconds:.1f} samples/s" if label.samples
                     else "labels reused from the previous run")
    experiment = s["experiment"]["markdown"].replace("# Experiment\n", "", 1).strip()
    figures = ", ".join(f"`experiment_{f}`" for f in s["experiment"]["figures"])
    pr = s["probe"]
    from hsrl.probe import state_sentences

    best = "\n".join(f"| {r['feature']} | {r['metric']} | {r['hidden']:.3f} | {r['floor']:.3f} | {r['raw_obs']:.3f} | "
                     + (f"{r['majority']:.3f} |" if "majority" in r else "- |") for r in pr["best"])
    medians = "; ".join(
        f"median {metric} over {m['features']} features: hidden {m['hidden']:.3f}, floor {m['floor']:.3f}, raw obs "
        f"(linear) {m['raw_obs']:.3f}" + (f", majority class {m['majority']:.3f}" if "majority" in m else "")
        for metric, m in pr["median"].items())
    probe_means = (f"{medians}; the hidden state beats the floor on {pr['above_floor']} of the {pr['probed']} "
                   "features" if pr["probed"] else "no feature had enough rows to probe")
    return f"""# hsrl quickstart report

Environment `{env}`, model `{config.model}` (prompt-only, last layer, mean pooling), seed {config.seed}.
All numbers come from this run; at this scale they show the pipeline works, not what the LLM is worth.
Episodes are cut at {config.max_episode_steps} steps in collection, online PPO and evaluation alike, so their
returns compare.

## Data
{st['samples']} samples collected by a scripted player (`hsrl collect --policy scripted`: wood, a table, a
wood pickaxe and sword; {config.epsilon:.0%} of its actions uniform random), {st['episodes']} finished episodes
(return mean {ret.get('mean', float('nan')):.2f}), {labelled_note}
(extraction spec hash `{st['spec_hash']}`).

## Offline AWR (last logged metrics)
| run | actor loss | critic loss | explained variance | entropy |
|---|---|---|---|---|
{awr_rows}

Learning curves: `awr/*.png`.

## Online PPO with live hidden states
{on['steps']} steps, {on['episodes']} episodes, return mean {_num(on['return_mean']):.2f},
Craftax score {on['craftax_score']:.2f}, {on['llm_calls']} LLM calls.
Speed: {_num(on['sps']):.0f} steps/s after the first update; {_num(on.get('sps_with_first_update')):.0f} steps/s
over all updates including the first, which also compiles ({_num(on.get('first_update_seconds')):.1f} s; the
progress bar shows this one). Time shares after the first update:
{', '.join(f'{k} {v:.0%}' for k, v in on['time_share'].items())}. Curves: `online/*.png`.

## Evaluation with hidden-state ablations
| run | ablation | return (mean ± std) | length | Craftax score |
|---|---|---|---|---|
{ev_rows}

Charts: `ablations_awr_hidden.png`, `achievements.png`. If `real` does no better than `zero`,
`shuffled` and `constant`, the policy is not using the hidden state.

## Experiment: {config.experiment_seeds} seeds of AWR baseline, hidden-state and control arms
`hsrl experiment --offline {out}/data/labelled --eval-data {out}/data/heldout --seeds {config.experiment_seeds} --awr-beta {config.awr_beta:g}{' --ray' if config.ray else ''}`

{experiment_reading(s['experiment']['aggregates'], config)}

{experiment}

Figures: {figures}. Every run's numbers: `{out}/experiment/experiment.json`.

## Probe: what the hidden states know
`hsrl probe {out}/data/labelled`: linear probes on {pr['rows']} rows ({pr['train_episodes']} train /
{pr['test_episodes']} test episodes, split by episode), from the hidden state (size {pr['hidden_size']}), a random
projection of the observation (floor) and a linear readout of the raw observation (raw obs (linear): no ceiling for
features a linear map of the observation cannot read). Effective rank of the hidden states (centred)
{pr['effective_rank']:.1f}; {probe_means}.

{' '.join(state_sentences(pr))}

| feature (best read from the hidden state, by skill over the trivial guess) | metric | hidden | floor | raw obs (linear) | majority class |
|---|---|---|---|---|---|
{best}

All features: `{out}/probe/probe.md`; chart: `probe.png`.

## Time per step
| step | seconds |
|---|---|
{times}

## Scale it up
Each step as a command, with the reference model (on a GPU machine the LLM runs on the GPU by default).
`HEAD` is the head node of a Ray cluster (`ray start --head` there, `ray start --address HEAD:6379` on the others).

```bash
{scale_up_commands()}
```

This report's data and runs are under `{out}/`.
"""


def experiment_reading(agg: dict, config: QuickstartConfig) -> str:
    """What the quickstart's experiment measures and what its result can and cannot show, from its numbers."""
    seeds = min(len(a["seeds"]) for a in agg["arms"].values())
    ess = [a["weight_ess"] for a in agg["arms"].values() if a["weight_ess"] is not None]
    lines = [f"Each of {seeds} seeds per arm trains AWR on the labelled data and is scored on held-out rows the "
             "scripted player chose without random actions: action match is how often the trained policy's sampled "
             "action is the scripted player's. It measures how well each arm learned the better-than-random player's "
             "choices from mixed data, not returns in the game (the single-run evaluations above give those). The "
             "control arm is the hidden-state network fed a fixed random projection of the observation to the same "
             "width: if the hidden arm does not beat it, more input features explain whatever the hidden arm gains."]
    if ess and max(ess) >= BEHAVIOUR_CLONING_ESS:
        lines.append(f"The AWR weights were nearly uniform (weight ESS up to {max(ess):.3f}, at or above "
                     f"{BEHAVIOUR_CLONING_ESS}): the comparison reduces to behaviour cloning of the data.")
    elif ess:
        lines.append(f"The AWR weights acted (weight ESS {min(ess):.2f}-{max(ess):.2f}, below "
                     f"{BEHAVIOUR_CLONING_ESS}): the arms weighted the data's actions by their advantage, they did not "
                     "only clone the data.")
    if seeds < 4:
        lines.append(f"With {seeds} seeds per arm the IQM equals the mean.")
    lines.append(f"What it cannot show: anything about the reference model (this is {config.model}, a small text "
                 "encoder), about returns, or about effects smaller than the intervals; a claim below is made only "
                 "where the calibrated tests support it.")
    return " ".join(lines)


def run_quickstart(config: QuickstartConfig) -> int:
    quickstart(config)
    return 0
