"""Run functions of `hsrl train-awr`, `hsrl plot` and `hsrl collect` (their configs live with their algorithms:
`hsrl.rl.awr.TrainAWRConfig`, `hsrl.rl.plot.PlotConfig`, `hsrl.data.collect.CollectConfig`).

`collect` sits here because rolling out a trained policy needs `hsrl.rl`, and `hsrl.data` never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when run: `hsrl plot` needs neither JAX nor the trainer
    from hsrl.data.collect import CollectConfig
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.plot import PlotConfig


def run_train_awr(config: TrainAWRConfig) -> int:
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.metrics import weighting_note

    summary = train_awr(config)
    m = summary["metrics"]
    if m:
        print(f"step {summary['step']}: critic_loss {m['critic_loss']:.4g}, actor_loss {m['actor_loss']:.4g}, "
              f"explained_variance {m['explained_variance'] if m['explained_variance'] is not None else float('nan'):.3f}, "
              f"entropy {m['entropy']:.3f}, {m['SPS']:.0f} steps/s")
    if summary["checkpoint"]:
        print(f"checkpoint: {summary['checkpoint']}")
    note = weighting_note(m) if m else None
    if note:
        print(f"note: {note}")
    return 0


def run_plot(config: PlotConfig) -> int:
    from hsrl.rl.plot import plot_runs

    notes: list[str] = []
    written = plot_runs(config.runs, config.out, metrics=config.metrics, smooth=config.smooth, labels=config.labels,
                        notes=notes)
    print(f"wrote {len(written)} PNG files to {written[0].parent}")
    for note in notes:
        print(f"note: {note}")
    return 0


def run_collect(config: CollectConfig) -> int:
    from hsrl.data.collect import collect
    from hsrl.rl.checkpoint import checkpoint_policy

    policy = checkpoint_policy(config.checkpoint, config.env) if config.checkpoint else None
    out = collect(config, policy)
    print(f"wrote {config.num_chunks} chunks of {config.chunk_steps} x {config.envs} steps to {out}")
    return 0
