"""Learning curves (`hsrl plot`): metrics.jsonl of one or several runs -> PNG files, runs overlaid."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hsrl.errors import InputError
from hsrl.rl.metrics import CURVE_NOTES, METRICS, read_metrics, weighting_note

SKIP = {"step", "wall_time"}


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """Draw learning curves of one or several training runs into PNG files.

    Reads RUN_DIR/metrics.jsonl of each run and writes one PNG per metric (the runs overlaid, labelled by
    folder name) plus curves.png, a grid of all of them.
    """

    runs: tuple[str, ...] = dataclasses.field(metadata={"positional": True, "help": "run folders (or metrics.jsonl files)"})
    out: str | None = dataclasses.field(default=None, metadata={"help": "folder for the PNGs (default: RUN/plots for one run, "
                                                            "./plots for several)"})
    metrics: tuple[str, ...] | None = dataclasses.field(default=None, metadata={"help": "metric names to draw (default: all "
                                                                          "logged, in a fixed order)"})
    smooth: float = dataclasses.field(default=0.0, metadata={"help": "exponential moving average factor in [0, 1) (0: raw)"})
    labels: tuple[str, ...] | None = dataclasses.field(default=None, metadata={"help": "legend labels, one per run"})

    def check(self) -> None:
        check_plot_args(self.runs, self.smooth, self.labels)
        for run in self.runs:
            if not Path(run).exists():
                raise FileNotFoundError(f"{run}: no such run folder or metrics file")


def check_plot_args(runs: Sequence, smooth: float, labels: Sequence | None) -> None:
    if not runs:
        raise InputError("give at least one run folder")
    if not 0 <= smooth < 1:
        raise InputError(f"--smooth must lie in [0, 1), got {smooth}")
    if labels is not None and len(labels) != len(runs):
        raise InputError(f"{len(labels)} labels for {len(runs)} runs")


def _all_zero(data: list[dict], metric: str) -> bool:
    return all(np.all(np.asarray(run[metric][1]) == 0) for run in data if metric in run)


def _last_values(path: Path) -> dict:
    lines = read_metrics(path)
    return lines[-1] if lines else {}


def ema(values: np.ndarray, factor: float) -> np.ndarray:
    """Exponential moving average (TensorBoard-style, debiased); NaNs are carried over unsmoothed."""
    if factor <= 0:
        return values
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = v
            continue
        acc = factor * acc + (1 - factor) * v
        weight = factor * weight + (1 - factor)
        out[i] = acc / weight
    return out


def curves(lines: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (steps, values) from metric lines (null -> NaN)."""
    names = []
    for line in lines:
        names += [k for k in line if k not in SKIP and k not in names]
    out = {}
    for name in names:
        pts = [(line["step"], line[name]) for line in lines if name in line]
        steps = np.array([s for s, _ in pts], np.float64)
        values = np.array([np.nan if v is None else float(v) for _, v in pts], np.float64)
        out[name] = (steps, values)
    return out


def _order(names: set[str]) -> list[str]:
    known = [n for n in METRICS if n in names]
    return known + sorted(names - set(known))


def _label(path: Path) -> str:
    return path.parent.name if path.name == "metrics.jsonl" else path.name


def plot_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
              metrics: Sequence[str] | None = None, smooth: float = 0.0,
              labels: Sequence[str] | None = None, notes: list[str] | None = None) -> list[Path]:
    """Write DIR/<metric>.png per metric and DIR/curves.png (a grid); return the paths written.

    Without `metrics`, achievement curves that stay at zero in every run are left out (named in the grid's title).
    `notes`, when given, receives one line per thing the reader should know: the panels left out, and AWR runs whose
    weighting does nothing (`hsrl.rl.metrics.weighting_note` of the last line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_plot_args(runs, smooth, labels)
    paths = [Path(r) for r in runs]
    data = [curves(read_metrics(p)) for p in paths]
    names = labels or [_label(p) for p in paths]
    available = set().union(*[set(d) for d in data])
    if metrics:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise InputError(f"no run logged {', '.join(unknown)} (logged: {', '.join(_order(available))})")
        chosen = list(metrics)
    else:
        chosen = _order(available)
    flat = [] if metrics else [m for m in chosen if m.startswith("achievements/") and _all_zero(data, m)]
    chosen = [m for m in chosen if m not in flat]
    notes = notes if notes is not None else []
    if flat:
        notes.append(f"left out {len(flat)} achievement curves that stay at 0 in every run: "
                     f"{', '.join(m.split('/', 1)[1] for m in flat)}")
    for path, name in zip(paths, names):
        note = weighting_note(_last_values(path))
        if note:
            notes.append(f"{name}: {note}")
    if not chosen:
        raise InputError("the runs have no metric lines yet")
    folder = Path(out) if out else (paths[0] / "plots" if len(paths) == 1 and paths[0].is_dir() else Path("plots"))
    folder.mkdir(parents=True, exist_ok=True)

    def draw(ax, metric):
        for run, name in zip(data, names):
            if metric in run:
                steps, values = run[metric]
                ax.plot(steps, ema(values, smooth), label=name, linewidth=1.2)
        group = METRICS.get(metric, ("", ""))[0]
        note = f" ({CURVE_NOTES[metric]})" if metric in CURVE_NOTES else ""
        ax.set_title((f"{group}/{metric}" if group else metric) + note, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(metric.rsplit("/", 1)[-1], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)

    written = []
    for metric in chosen:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, metric)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, chosen):
        draw(ax, metric)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    handles, labels_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="upper right", fontsize=8)
    if flat:
        fig.suptitle(f"{len(flat)} achievements never unlocked (not drawn): "
                     f"{', '.join(m.split('/', 1)[1] for m in flat)}", fontsize=8, wrap=True)
    fig.tight_layout()
    path = folder / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
