"""`hsrl quickstart`: the whole pipeline at small scale on the embedded model, with a report.

collect -> label (live LLM hidden states) -> returns -> stats -> AWR with and without hidden states
-> online PPO with live hidden states -> evaluation with ablations -> OUT/report/ (README.md with the
numbers, PNG plots, and the commands to scale each step up). Runs offline on CPU in minutes; a rerun
reuses what the first run collected, labelled, trained and compiled (JAX's persistent cache).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hsrl.env import ENV_NAMES

REAL_MODEL = "Qwen/Qwen3-4B-Thinking-2507"


@dataclass(frozen=True)
class QuickstartConfig:
    """Run the whole pipeline at small scale on the embedded model and write a report folder.

    Every step prints progress; the report (OUT/report/README.md) holds the numbers, PNG plots and the
    commands to run each step at full scale (real model, more data, GPU, Ray cluster).
    """

    out: str = field(default="quickstart", metadata={"help": "output folder (rerun to reuse finished steps)"})
    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={"help": f"one of {', '.join(ENV_NAMES)}"})
    model: str = field(default="minilm", metadata={"help": "LLM (the embedded MiniLM runs offline on CPU)"})
    envs: int = field(default=8, metadata={"help": "parallel environments for collection, online PPO and evaluation"})
    collect_steps: int = field(default=4096, metadata={"help": "environment steps collected (all envs together)"})
    chunk_steps: int = field(default=32, metadata={"help": "steps per environment per chunk file"})
    awr_steps: int = field(default=2000, metadata={"help": "AWR gradient steps per model"})
    online_steps: int = field(default=4096, metadata={"help": "online PPO environment steps"})
    online_num_steps: int = field(default=64, metadata={"help": "online PPO steps per environment per update"})
    eval_episodes: int = field(default=4, metadata={"help": "episodes per ablation"})
    eval_skip_n: int = field(default=5, metadata={"help": "LLM refresh period during evaluation of the AWR policy"})
    max_episode_steps: int = field(default=100, metadata={"help": "episode length cap for collection and evaluation"})
    width: int = field(default=128, metadata={"help": "network width (the full-scale default is 512)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def _step(name: str, log: list, fn):
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    result = fn()
    log.append({"step": name, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"   done in {log[-1]['seconds']} s", flush=True)
    return result


def quickstart(config: QuickstartConfig) -> Path:
    from hsrl.data.collect import CollectConfig, collect
    from hsrl.data.label import LabelConfig, label_dataset
    from hsrl.data.returns import add_returns
    from hsrl.data.stats import STATS_FILE, dataset_stats
    from hsrl.atomic import write_text_atomic
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.rl.awr import TrainAWRConfig, train_awr
    from hsrl.rl.plot import plot_runs
    from hsrl.rl.ppo import OnlineConfig, train_online

    out = Path(config.out)
    raw, labelled = out / "data" / "raw", out / "data" / "labelled"
    runs, report = out / "runs", out / "report"
    report.mkdir(parents=True, exist_ok=True)
    timings: list[dict] = []
    p = config.progress

    _step("1/8 collect (random policy)", timings, lambda: collect(CollectConfig(
        env=config.env, envs=config.envs, steps=config.collect_steps, chunk_steps=config.chunk_steps, out=str(raw),
        seed=config.seed, max_episode_steps=config.max_episode_steps, progress=p)))
    label = _step("2/8 label with LLM hidden states", timings, lambda: label_dataset(LabelConfig(
        str(raw), str(labelled), model=config.model, batch_size=32, progress=p)))
    if label.failed:
        raise RuntimeError(f"labelling failed for {label.failed}")
    _step("3/8 returns", timings, lambda: add_returns(labelled, gamma=0.99, show_progress=p))
    stats = _step("4/8 statistics", timings, lambda: dataset_stats(labelled, show_progress=p))
    write_text_atomic(labelled / STATS_FILE, json.dumps(stats, indent=1))

    awr = {}
    for name, hidden in (("awr_hidden", True), ("awr_baseline", False)):
        awr[name] = _step(f"5/8 AWR {'with' if hidden else 'without'} hidden states", timings, lambda h=hidden, n=name:
                          train_awr(TrainAWRConfig(str(labelled), out=str(runs / n), hidden=h, steps=config.awr_steps,
                                                   log_every=max(1, config.awr_steps // 20),
                                                   save_every=config.awr_steps, width=config.width, seed=config.seed,
                                                   steps_per_call=max(1, min(100, config.awr_steps // 10)),
                                                   progress=p)))
    online = _step("6/8 online PPO with live hidden states", timings, lambda: train_online(OnlineConfig(
        env=config.env, envs=config.envs, steps=config.online_steps, num_steps=config.online_num_steps,
        skip_n=25, model=config.model, width=config.width, num_minibatches=4, out=str(runs / "online"),
        seed=config.seed, progress=p)))
    evals = {}
    for name, skip in (("awr_hidden", config.eval_skip_n), ("awr_baseline", None), ("online", None)):
        evals[name] = _step(f"7/8 evaluate {name}", timings, lambda n=name, s=skip: evaluate(EvalConfig(
            str(runs / n), episodes=config.eval_episodes, envs=min(config.envs, 4), skip_n=s,
            max_episode_steps=config.max_episode_steps, out=str(out / "eval" / n), seed=config.seed, progress=p)))

    def write_report():
        plot_runs([runs / "awr_hidden", runs / "awr_baseline"], report / "awr", labels=("with hidden", "baseline"))
        plot_runs([runs / "online"], report / "online")
        shutil.copy(out / "eval" / "awr_hidden" / "ablations.png", report / "ablations_awr_hidden.png")
        _achievement_chart(evals, report / "achievements.png")
        summary = {"config": config.__dict__, "timings": timings, "stats": _brief_stats(stats),
                   "awr": {k: _last_metrics(runs / k) for k in awr},
                   "online": {k: online[k] for k in ("steps", "episodes", "return_mean", "craftax_score", "sps",
                                                     "time_share", "llm_calls")},
                   "eval": {k: v["results"] for k, v in evals.items()}}
        (report / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (report / "README.md").write_text(_markdown(config, summary, label))

    _step("8/8 report", timings, write_report)
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


def _achievement_chart(evals: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {f"{run}:{r['ablation']}": r["achievements"] for run, ev in evals.items() for r in ev["results"]
            if r["ablation"] == "real"}
    names = sorted({n for a in rows.values() for n, v in a.items() if v > 0}) or list(next(iter(rows.values())))[:5]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.8))
    width = 0.8 / len(rows)
    for i, (label, a) in enumerate(rows.items()):
        ax.bar(np.arange(len(names)) + i * width, [a[n] for n in names], width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylabel("success rate (%)")
    ax.set_title("achievements unlocked per episode (real hidden states)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    return f"""# hsrl quickstart report

Environment `{env}`, model `{config.model}` (prompt-only, last layer, mean pooling), seed {config.seed}.
All numbers come from this run; at this scale they show the pipeline works, not what the LLM is worth.

## Data
{st['samples']} samples collected by a random policy, {st['episodes']} finished episodes
(return mean {ret.get('mean', float('nan')):.2f}), {labelled_note}
(extraction spec hash `{st['spec_hash']}`).

## Offline AWR (last logged metrics)
| run | actor loss | critic loss | explained variance | entropy |
|---|---|---|---|---|
{awr_rows}

Learning curves: `awr/*.png`.

## Online PPO with live hidden states
{on['steps']} steps, {on['episodes']} episodes, return mean {_num(on['return_mean']):.2f},
Craftax score {on['craftax_score']:.2f}, {on['sps']:.0f} steps/s, {on['llm_calls']} LLM calls;
time shares: {', '.join(f'{k} {v:.0%}' for k, v in on['time_share'].items())}. Curves: `online/*.png`.

## Evaluation with hidden-state ablations
| run | ablation | return (mean ± std) | length | Craftax score |
|---|---|---|---|---|
{ev_rows}

Charts: `ablations_awr_hidden.png`, `achievements.png`. If `real` does no better than `zero`,
`shuffled` and `constant`, the policy is not using the hidden state.

## Time per step
| step | seconds |
|---|---|
{times}

## Scale it up
Each step as a command, with the reference model on a GPU (`--device cuda`):

```bash
hsrl collect --env Craftax-Symbolic-v1 --envs 128 --steps 1000000 --out data/raw
hsrl label data/raw data/labelled --model {REAL_MODEL} --tokens 256 --batch-size 64
hsrl label data/raw data/labelled --model {REAL_MODEL} --tokens 1 --ray            # local Ray, one worker per GPU
hsrl label data/raw data/labelled --model {REAL_MODEL} --ray ray://HEAD:10001 --gpus-per-worker 1   # cluster
hsrl returns data/labelled --gamma 0.99
hsrl stats data/labelled
hsrl train-awr data/labelled --out runs/awr_hidden
hsrl train-awr data/labelled --out runs/awr_baseline --no-hidden
hsrl online --env Craftax-Symbolic-v1 --envs 128 --steps 100000 --skip-n 25 --layer -1 --tokens 1 --model {REAL_MODEL} --out runs/online
hsrl serve --model {REAL_MODEL} --env Craftax-Symbolic-v1 --port 8000
hsrl eval runs/awr_hidden --episodes 10 --server http://127.0.0.1:8000
hsrl plot runs/awr_hidden runs/awr_baseline
```

This report's data and runs are under `{out}/`.
"""


def run_quickstart(config: QuickstartConfig) -> int:
    quickstart(config)
    return 0
