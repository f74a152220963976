"""Training metrics: one logger writing TensorBoard event files (tensorboardX) and `metrics.jsonl`.

Each `log(step, values)` call writes one JSON line `{"step": ..., "wall_time": ..., NAME: value, ...}`
to RUN_DIR/metrics.jsonl (flushed at once, so scripts can read a running job) and one scalar per value
to TensorBoard under the tag `GROUP/NAME` (CleanRL style, e.g. `losses/critic_loss`, `charts/SPS`).
Names are stable. `METRICS` documents the names AWR logs (`hsrl.rl.awr`; tests check a real run's names
against it) and `hsrl plot` orders its panels by it. Online PPO logs CleanRL-style `GROUP/NAME` keys
(`losses/*`, `charts/*`, `llm/*`, `hidden/*`, `time/*`, `achievements/*`), written in `hsrl.rl.ppo` and
listed in docs/how-to/online-ppo.md ("Metrics"), not in this table.

Resuming: `MetricsLogger(run_dir, resume_step=s)` drops JSONL lines with step > s (they belong to
training that the checkpoint does not contain, and will be redone) and opens TensorBoard with
`purge_step=s`, so the curves have no duplicated steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hsrl.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# name -> (TensorBoard group, meaning). The JSONL key is the bare name.
METRICS: dict[str, tuple[str, str]] = {
    # AWR (hsrl.rl.awr); means over the steps since the previous log line
    "actor_loss": ("losses", "-mean(w * log pi(a|s)), w = min(exp(A / beta), max_weight), A = return_to_go - V(s)"),
    "critic_loss": ("losses", "0.5 * mean(A^2)"),
    "loss": ("losses", "actor_loss + critic_loss"),
    "entropy": ("losses", "mean entropy of pi(.|s) over the batch"),
    "mean_weight": ("awr", "mean AWR weight w"),
    "weight_ess": ("awr", "effective sample size of the weights over the batch, normalised: (sum w)^2 / (n sum w^2) "
                          "in (0, 1]; near 1 all weights are equal and AWR is behaviour cloning"),
    "clipped_fraction": ("awr", "share of samples whose weight was clipped at max_weight"),
    "advantage_mean": ("awr", "mean of A = return_to_go - V(s)"),
    "advantage_std": ("awr", "std of A over the batch"),
    "log_prob": ("awr", "mean log pi(a|s) of the data's actions"),
    "explained_variance": ("values", "1 - var(return_to_go - V) / var(return_to_go), per batch"),
    "value_mean": ("values", "mean V(s)"),
    "return_mean": ("values", "mean return_to_go of the batch"),
    # --fusion gated (hsrl.rl.networks); online PPO logs the same name
    "hidden/gate": ("hidden", "sigmoid of the learned gate on the hidden state's projection (starts at 0.0025); "
                              "a gate that stays near 0 where it could have opened (hidden/gate_travel at least 6): "
                              "the policy does not need the state"),
    "hidden/gate_travel": ("hidden", "how far the gate's logit could have moved so far: its summed learning rate, "
                                     "in logit units (it starts at -6; under 6 it could not have opened)"),
    # throughput
    "SPS": ("charts", "gradient steps per second since the previous log line"),
    "samples_per_second": ("charts", "training samples (rows) per second since the previous log line"),
}


# what a curve's title must say about how a metric was computed (online PPO's names carry their group)
CURVE_NOTES: dict[str, str] = {
    "charts/SPS": "running average since the start",  # hsrl.rl.ppo: steps so far / seconds so far
}


# weight_ess at or above this: the advantage weighting does (almost) nothing, AWR is behaviour cloning
BEHAVIOUR_CLONING_ESS = 0.98


def weighting_note(metrics: Mapping) -> str | None:
    """A warning when an AWR metrics line says the weighting does nothing (weight_ess >= BEHAVIOUR_CLONING_ESS),
    else None. Shown by `hsrl train-awr`'s summary and `hsrl plot`."""
    ess = metrics.get("weight_ess")
    if ess is None or not math.isfinite(ess) or ess < BEHAVIOUR_CLONING_ESS:
        return None
    std = metrics.get("advantage_std")
    why = f" (advantage std {std:.3g} against --beta)" if isinstance(std, (int, float)) else ""
    return (f"AWR weight ESS {ess:.3f} ~ 1: the advantage weights are all about equal{why}, so this run is "
            f"behaviour cloning of the data; a smaller --beta (or returns that differ more) makes the weighting act")


def tag(name: str) -> str:
    """TensorBoard tag of a metric name: `GROUP/NAME` (names already containing '/' are kept)."""
    if "/" in name:
        return name
    group = METRICS.get(name, ("charts", ""))[0]
    return f"{group}/{name}"


def _number(x) -> float | int:
    if isinstance(x, (bool, int)):
        return int(x)
    return float(x)


class MetricsLogger:
    """TensorBoard + JSONL writer for one run folder. Use as a context manager, or call `close()`."""

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in read_lines(self.path) if line["step"] <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(line) + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=resume_step)

    def log(self, step: int, values: Mapping[str, float]) -> dict:
        """Write one line of metrics at `step`. Non-finite values are written as null in JSON."""
        values = {k: _number(v) for k, v in values.items()}
        line = {"step": int(step), "wall_time": time.time()}
        line.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in values.items():
                if math.isfinite(v):  # TensorBoard gets no NaN (undefined values stay null in the JSONL)
                    self._writer.add_scalar(tag(k), v, int(step))
        return line

    def text(self, name: str, text: str, step: int = 0) -> None:
        """A text note in TensorBoard (e.g. the run's configuration)."""
        if self._writer is not None:
            self._writer.add_text(name, text, step)

    def flush(self) -> None:
        self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_lines(path: str | os.PathLike) -> list[dict]:
    """The lines of a metrics.jsonl file (a truncated last line, from a killed run, is skipped)."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The metric lines of a run folder (or of a metrics.jsonl path), in file order."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics log (is this a training run folder?)")
    return read_lines(path)
