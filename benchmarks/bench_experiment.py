"""How much faster do an experiment's seeds run as Ray tasks? Wall time of K AWR seeds (train + offline
evaluation with the four ablations) run one after another in this process, and as K Ray tasks on a local
Ray (one CPU each), in one run:

    python benchmarks/bench_experiment.py [--seeds 4] [--steps 4000] [--rows 8192] [--width 128]

Data: the synthetic hidden-state task (the best action is written only in the hidden state), written with the
project's chunk writer. A one-seed warm-up run first fills JAX's persistent compilation cache, so neither mode
pays a cold compile the other does not. "ratio" = sequential seconds / Ray seconds (>1: Ray is faster); the
results of both modes are checked equal. The machine's CPU count and load average are printed, since other
work on the machine slows both modes. The last line is one JSON object with the figures.

What parallel seeds can gain depends on how much of the machine one run already uses: XLA computes each step on
every core. So the benchmark also times one run pinned to one core with one XLA thread (as a one-CPU Ray task
runs) and prints the "ceiling": the ratio that K runs would reach if each took that time on a core of its own,
cores x (sequential seconds per run) / (one-core seconds per run). `ratio_to_ceiling` says how close Ray comes.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hsrl.data import ChunkMeta, add_returns, chunk_path, write_chunk
from hsrl.experiment.config import ExperimentConfig, plan
from hsrl.experiment.runs import XLA_ONE_THREAD, run_on_ray, run_sequential
from record import record

ENV, ACTIONS, OBS_DIM = "Craftax-Classic-Symbolic-v1", 17, 1345  # chunks must have the env's observation width
SPEC = json.dumps({"model": "synthetic", "layer": -1, "tokens": 1, "pooling": "mean"})


def write_task(folder: Path, rng, rows: int, obs_dim: int = OBS_DIM, hidden: int = 256, expert: bool = False):
    best = rng.integers(0, ACTIONS, rows)
    h = 0.1 * rng.standard_normal((rows, hidden)).astype(np.float32)
    h[np.arange(rows), best] += 1.0
    action = best if expert else rng.integers(0, ACTIONS, rows)
    arrays = {"obs": rng.standard_normal((rows, obs_dim)).astype(np.float32),
              "next_obs": rng.standard_normal((rows, obs_dim)).astype(np.float32), "action": action,
              "reward": np.where(action == best, 10.0, 0.0).astype(np.float32), "done": np.ones(rows, bool),
              "hidden_state": h.astype(np.float16)}
    folder.mkdir(parents=True)
    write_chunk(chunk_path(folder, 0), arrays, ChunkMeta(env_name=ENV, num_envs=8, obs_kind="symbolic",
                                                         first_step=0, spec_json=SPEC))
    add_returns(folder, 0.99, show_progress=False)
    return folder


def jobs(train, held, out, seeds, steps, width):
    config = ExperimentConfig(offline=str(train), eval_data=str(held), out=str(out), seeds=seeds, awr_steps=steps,
                              awr_batch_size=256, awr_lr=1e-3, awr_beta=1.0, awr_save_every=500, width=width,
                              progress=False)
    return [j for j in plan(config) if j.arm == "awr-hidden"]


def one_core_seconds(train: Path, held: Path, out: Path, steps: int, width: int) -> float:
    """Seconds of one run in a child process pinned to one core with one XLA thread, after a warm-up run there
    (its XLA flags make its own compiled programs)."""
    code = "\n".join([
        "import os, sys, time", "os.sched_setaffinity(0, {0})", f"sys.path.insert(0, {str(Path(__file__).parent)!r})",
        "from pathlib import Path", "from bench_experiment import jobs", "from hsrl.experiment.runs import run_sequential",
        f"args = (Path({str(train)!r}), Path({str(held)!r}))",
        f"run_sequential(jobs(*args, Path({str(out / 'warmup')!r}), 1, {steps}, {width}))",
        "t = time.perf_counter()",
        f"run_sequential(jobs(*args, Path({str(out / 'timed')!r}), 1, {steps}, {width}))",
        "print(time.perf_counter() - t)"])
    env = {**os.environ, "XLA_FLAGS": XLA_ONE_THREAD}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--width", type=int, default=128)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_experiment_"))
    rng = np.random.default_rng(0)
    train = write_task(root / "train", rng, args.rows)
    held = write_task(root / "held", rng, 2048, expert=True)
    cpus = os.cpu_count()
    load_before = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs, load average {load_before[0]:.2f}; "
          f"{args.seeds} AWR seeds x {args.steps} steps, width {args.width}, {args.rows} rows")

    run_sequential(jobs(train, held, root / "warmup", 1, args.steps, args.width))  # fills the compile cache
    t0 = time.perf_counter()
    seq = run_sequential(jobs(train, held, root / "seq", args.seeds, args.steps, args.width))
    sequential_s = time.perf_counter() - t0
    print(f"sequential: {sequential_s:.1f} s")
    one_core_s = one_core_seconds(train, held, root / "one_core", args.steps, args.width)
    ceiling = sequential_s / (math.ceil(args.seeds / cpus) * one_core_s)  # K runs, `cpus` at a time
    print(f"one run on one core: {one_core_s:.1f} s (one run on all cores: {sequential_s / args.seeds:.1f} s): "
          f"ceiling {ceiling:.2f}")
    t0 = time.perf_counter()
    par = run_on_ray(jobs(train, held, root / "ray", args.seeds, args.steps, args.width), "local", 1.0, 0.0, 1)
    ray_s = time.perf_counter() - t0
    print(f"ray (local, 1 CPU per run): {ray_s:.1f} s (includes starting Ray and its workers)")
    same = [a["ablations"] for a in seq] == [b["ablations"] for b in par]
    load_after = os.getloadavg()
    print(f"results equal: {same}; load average after {load_after[0]:.2f}")
    record("bench_experiment", {"ratio": sequential_s / ray_s, "ceiling": ceiling, "ratio_to_ceiling": sequential_s / ray_s / ceiling,
                      "sequential_s": sequential_s, "ray_s": ray_s, "one_core_run_s": one_core_s,
                      "seeds": args.seeds, "steps": args.steps, "cpus": cpus, "load_before": load_before[0],
                      "load_after": load_after[0], "results_equal": same})


if __name__ == "__main__":
    main()
