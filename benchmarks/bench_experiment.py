"""How much faster does an arm's seeds run as one program? Wall time of K AWR seeds of one arm (train + offline
evaluation with the four ablations) trained one by one, each its own program (`--seeds-per-program 1`), against the
same K trained as one program (`hsrl experiment`'s default), in this process, in one run; and the seeds as K Ray
tasks beside them:

    python benchmarks/bench_experiment.py [--seeds 6] [--steps 4000] [--rows 8192] [--width 128] [--no-ray]

Data: the synthetic hidden-state task (the best action is written only in the hidden state), written with the
project's chunk writer. JAX's persistent compilation cache is on (a folder of this run's; `--no-compile-cache` leaves
it off, as `hsrl experiment` runs), and a short warm-up of each mode (the same programs, two calls each) fills it
first, so neither mode pays a cold compile the other does not: what the group saves is what it does once instead of K
times (load and normalise the data, trace and look up its programs,
start a loop) and whatever its seed axis gains on the device. "vmap_ratio" = one-by-one seconds / one-program seconds
(> 1: the program is faster), at the program's default seed axis on this machine ("seed_axis": loop on CPU, vmap on
accelerators, `hsrl.rl.awr_seeds`); "vmap_axis_ratio" is the same with `--seed-axis vmap` where that is not the
default. Results are checked equal (bit for bit with loop; with vmap, "vmap_axis_max_diff" is the largest difference
of a score). The machine's CPU count and load average are printed, since other work on the machine slows both modes:
the modes run in `--rounds` rounds, in turn and each round in the other order, and the seconds are summed over them,
so a load that drifts during the run weighs on both; "cpu_ratio" is the same comparison in this process's CPU seconds,
which other processes disturb less. The last line is one JSON object with the figures.

Ray: "ray_ratio" = one-by-one seconds / the seconds of K one-seed Ray tasks on a local Ray (one CPU and one XLA thread
each, Ray's start included). What parallel seeds can gain there depends on how much of the machine one run already
uses, so the benchmark also times one run pinned to one core with one XLA thread (as a one-CPU Ray task runs) and
prints the "ceiling": the ratio K runs would reach if each took that time on a core of its own, cores x (one-by-one
seconds per run) / (one-core seconds per run). `ratio_to_ceiling` says how close Ray comes.
"""

import argparse
import dataclasses
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
SPEC = '{"model": "synthetic", "layer": -1, "tokens": 1, "pooling": "mean"}'
WARMUP_CALLS = 2  # jitted calls of a warm-up run: every program the timed runs call, called


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


def warmup(jobs_):
    """The jobs cut to their first WARMUP_CALLS jitted calls: the same programs (the calls' length is the runs'
    steps per call, the same log and save points), a fraction of the time."""
    short = lambda j: dataclasses.replace(j, train=dataclasses.replace(  # noqa: E731
        j.train, steps=min(j.train.steps, WARMUP_CALLS * min(j.train.steps_per_call, j.train.log_every))))
    return [short(j) for j in jobs_]


def timed(fn, *args, **kw):
    """(fn's result, wall seconds, this process's CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def one_core_seconds(train: Path, held: Path, out: Path, steps: int, width: int, cache: Path | None) -> float:
    """Seconds of one run in a child process pinned to one core with one XLA thread, after a warm-up run there
    (its XLA flags make its own compiled programs, cached in `cache` as the parent's are)."""
    code = "\n".join([
        "import os, sys, time", "os.sched_setaffinity(0, {0})", f"sys.path.insert(0, {str(Path(__file__).parent)!r})",
        "from hsrl.jaxcache import enable_compilation_cache",
        f"enable_compilation_cache({str(cache)!r})" if cache is not None else "",
        "from pathlib import Path", "from bench_experiment import jobs", "from hsrl.experiment.runs import run_sequential",
        f"args = (Path({str(train)!r}), Path({str(held)!r}))",
        f"run_sequential(jobs(*args, Path({str(out / 'warmup')!r}), 1, {steps}, {width}))",
        "t = time.perf_counter()",
        f"run_sequential(jobs(*args, Path({str(out / 'timed')!r}), 1, {steps}, {width}))",
        "print(time.perf_counter() - t)"])
    env = {**os.environ, "XLA_FLAGS": XLA_ONE_THREAD}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def scores(results):
    return [r["ablations"] for r in results]


def max_score_difference(a, b) -> float:
    return max(abs(x[name]["action_match"] - y[name]["action_match"]) for x, y in zip(a, b) for name in x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the modes, in turn (seconds summed)")
    p.add_argument("--no-ray", dest="ray", action="store_false", help="leave out the Ray figure and its ceiling")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                   help="leave JAX's persistent compilation cache off, as `hsrl experiment` runs AWR arms (each "
                        "seed alone then compiles its programs again)")
    p.add_argument("--no-vmap-axis", dest="vmap_axis", action="store_false",
                   help="leave out the --seed-axis vmap figure where vmap is not the default")
    args = p.parse_args()
    import jax

    from hsrl.jaxcache import enable_compilation_cache
    from hsrl.rl.awr_seeds import default_seed_axis

    root = Path(tempfile.mkdtemp(prefix="bench_experiment_"))
    if args.compile_cache:
        enable_compilation_cache(root / "jax-cache")
    rng = np.random.default_rng(0)
    train = write_task(root / "train", rng, args.rows)
    held = write_task(root / "held", rng, 2048, expert=True)
    cpus = os.cpu_count()
    load_before = os.getloadavg()
    axis = default_seed_axis()
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs ({jax.default_backend()}), load average "
          f"{load_before[0]:.2f}; an arm of {args.seeds} AWR seeds x {args.steps} steps, width {args.width}, "
          f"{args.rows} rows")
    arm = lambda name: jobs(train, held, root / name, args.seeds, args.steps, args.width)  # noqa: E731
    axes = [axis] + (["vmap"] if args.vmap_axis and axis != "vmap" else [])

    # warm-ups: every program of every mode compiled and cached
    run_sequential(warmup(arm("warm-alone")), seeds_per_program=1)
    for a in axes:
        run_sequential(warmup(arm(f"warm-{a}")), seed_axis=a)

    modes = {"alone": dict(seeds_per_program=1), **{a: dict(seed_axis=a) for a in axes}}
    wall, cpu, out = {m: 0.0 for m in modes}, {m: 0.0 for m in modes}, {}
    for r in range(args.rounds):
        for m in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
            out[m], w, c = timed(run_sequential, arm(f"{m}-{r}"), **modes[m])
            wall[m], cpu[m] = wall[m] + w, cpu[m] + c
            print(f"round {r + 1}, {'one by one' if m == 'alone' else f'one program ({m})'}: {w:.1f} s "
                  f"({c:.1f} CPU s)")
    alone, sequential_s = out["alone"], wall["alone"] / args.rounds
    vmapped_s = wall[axis] / args.rounds
    same = scores(out[axis]) == scores(alone)
    print(f"one by one {sequential_s:.1f} s, one program ({axis}) {vmapped_s:.1f} s per round: vmap_ratio "
          f"{sequential_s / vmapped_s:.2f} (CPU seconds {cpu['alone'] / cpu[axis]:.2f}); results equal: {same}")
    figures = {"vmap_ratio": sequential_s / vmapped_s, "sequential_s": sequential_s, "vmapped_s": vmapped_s,
               "cpu_ratio": cpu["alone"] / cpu[axis], "seed_axis": axis, "results_equal": same}
    if "vmap" in axes[1:]:
        vmap_s = wall["vmap"] / args.rounds
        diff = max_score_difference(scores(out["vmap"]), scores(alone))
        print(f"one program (vmap) {vmap_s:.1f} s per round: ratio {sequential_s / vmap_s:.2f} (CPU seconds "
              f"{cpu['alone'] / cpu['vmap']:.2f}); largest score difference {diff:.2g}")
        figures.update(vmap_axis_s=vmap_s, vmap_axis_ratio=sequential_s / vmap_s,
                       vmap_axis_cpu_ratio=cpu["alone"] / cpu["vmap"], vmap_axis_max_diff=diff)

    if args.ray:
        one_core_s = one_core_seconds(train, held, root / "one_core", args.steps, args.width,
                                      root / "jax-cache" if args.compile_cache else None)
        ceiling = sequential_s / (math.ceil(args.seeds / cpus) * one_core_s)  # K runs, `cpus` at a time
        print(f"one run on one core: {one_core_s:.1f} s (one run on all cores: {sequential_s / args.seeds:.1f} s): "
              f"ceiling {ceiling:.2f}")
        par, ray_s, _ = timed(run_on_ray, arm("ray"), "local", 1.0, 0.0, 1, seeds_per_program=1)
        ray_same = scores(par) == scores(alone)
        print(f"ray (local, one task of 1 CPU per seed): {ray_s:.1f} s (includes starting Ray and its workers): "
              f"ratio {sequential_s / ray_s:.2f}; results equal: {ray_same}")
        figures.update(ray_ratio=sequential_s / ray_s, ray_s=ray_s, ceiling=ceiling,
                       ray_ratio_to_ceiling=sequential_s / ray_s / ceiling, one_core_run_s=one_core_s,
                       ray_results_equal=ray_same)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f}")
    record("bench_experiment", {**figures, "seeds": args.seeds, "steps": args.steps, "rounds": args.rounds,
                                "width": args.width,
                                "rows": args.rows, "compile_cache": args.compile_cache, "cpus": cpus,
                                "backend": jax.default_backend(),
                                "load_before": load_before[0], "load_after": load_after[0]})


if __name__ == "__main__":
    main()
