"""How much faster do K online PPO seeds train as one program? Wall time of K seeds without the LLM trained one after
another (K x `train_online`) and as one group (`train_online_seeds`), in one run:

    python benchmarks/bench_ppo_seeds.py [--seeds 4] [--envs 16] [--updates 30] [--width 64] [--seed-axis map]

Both modes first train other seeds of the same settings (one alone, a group of as many), so JAX's persistent
compilation cache holds their programs and neither pays a cold compile the other does not; what remains is each
process-level trace and cache load, once per run sequentially and once for the group ("one compile serves the group").
`ppo_vmap_ratio` = sequential seconds / group seconds (> 1: the group is faster; the best of --repeats interleaved
runs of each mode), `ratio_steady` the same from the runs' steps per second after their first update (what a long run
approaches, from its last repeat: each seed's env step already runs its envs batched on all cores, and the group steps
the seeds' envs in turn, so on a CPU the group saves mostly each run's fixed cost of building, tracing and loading its
programs); `cpu_ratio` the ratio of this process's CPU seconds (best of each mode), which other work on the machine
moves less than the wall time. The final parameters and the metrics of every seed are compared between the modes
(`params_equal`, `metrics_equal`: bit for bit with --seed-axis map). The machine's CPU count and load average are
printed, since other work on the machine slows both modes. The last line is one JSON object with the figures.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from hsrl.rl.ppo import SEED_AXES, OnlineConfig, default_seed_axis, train_online, train_online_seeds
from record import record

ENV = "Craftax-Classic-Symbolic-v1"
WALL_KEYS = ("wall_time", "charts/SPS")  # wall-clock figures: the only metrics that may differ


def configs(args, root: Path, seeds) -> list[OnlineConfig]:
    return [OnlineConfig(env=ENV, envs=args.envs, steps=args.envs * args.num_steps * args.updates,
                         num_steps=args.num_steps, num_minibatches=args.num_minibatches, width=args.width,
                         hidden=False, save_every=args.updates, seed=s, out=str(root / f"seed{s}"), progress=False)
            for s in seeds]


def final_params(out: str) -> list[np.ndarray]:
    state = sorted((Path(out) / "checkpoints").glob("step_*.msgpack"))[-1]
    return jax.tree.leaves(flax.serialization.msgpack_restore(state.read_bytes())["params"])


def metrics(out: str) -> list[dict]:
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_KEYS and not k.startswith("time/")} for line in lines]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--num-minibatches", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed-axis", choices=SEED_AXES, default=default_seed_axis())
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each mode, interleaved; the best counts")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_ppo_seeds_"))
    cpus, load_before = os.cpu_count(), os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs, load average {load_before[0]:.2f}; "
          f"{args.seeds} PPO seeds without the LLM, {args.envs} envs x {args.num_steps} steps x {args.updates} updates, "
          f"width {args.width}, seed axis {args.seed_axis}")
    seeds = range(100, 100 + args.seeds)

    train_online(configs(args, root / "warm_single", [0])[0])  # fills the compile cache for both modes
    train_online_seeds(configs(args, root / "warm_group", range(args.seeds)), seed_axis=args.seed_axis)

    times = {"sequential": [], "group": []}
    cpu = {"sequential": [], "group": []}  # CPU seconds of this process: less moved by other work on the machine
    for rep in range(args.repeats):  # interleaved, best of each: a busy machine slows one run, not one mode
        t0, c0 = time.perf_counter(), time.process_time()
        seq = [train_online(c) for c in configs(args, root / f"sequential{rep}", seeds)]
        times["sequential"].append(time.perf_counter() - t0)
        cpu["sequential"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        group = train_online_seeds(configs(args, root / f"group{rep}", seeds), seed_axis=args.seed_axis)
        times["group"].append(time.perf_counter() - t0)
        cpu["group"].append(time.process_time() - c0)
        print(f"sequential ({args.seeds} x train_online): {times['sequential'][-1]:.1f} s ({cpu['sequential'][-1]:.1f} "
              f"CPU s); group (train_online_seeds, {args.seed_axis}): {times['group'][-1]:.1f} s "
              f"({cpu['group'][-1]:.1f} CPU s)")
    sequential_s, group_s = min(times["sequential"]), min(times["group"])
    cpu_ratio = min(cpu["sequential"]) / min(cpu["group"])

    params_equal = all(all(np.array_equal(a, b) for a, b in zip(final_params(x["run_dir"]), final_params(y["run_dir"])))
                       for x, y in zip(seq, group))
    metrics_equal = all(metrics(x["run_dir"]) == metrics(y["run_dir"]) for x, y in zip(seq, group))
    max_diff = max(float(np.abs(a - b).max()) for x, y in zip(seq, group)
                   for a, b in zip(final_params(x["run_dir"]), final_params(y["run_dir"])))
    steady_seq = sum(r["steps"] for r in seq) / sum(r["steps"] / r["sps"] for r in seq)  # of the last repeat
    steady_group = group[0]["group"]["sps"]
    load_after = os.getloadavg()
    ratio = sequential_s / group_s
    print(f"ppo_vmap_ratio {ratio:.2f} (target >= 1.3); in CPU seconds {cpu_ratio:.2f}; after the first update: {steady_group:.0f} vs "
          f"{steady_seq:.0f} steps/s, ratio {steady_group / steady_seq:.2f}")
    print(f"results equal: parameters {params_equal} (largest difference {max_diff:.3g}), metrics {metrics_equal}; "
          f"load average after {load_after[0]:.2f}")
    record("bench_ppo_seeds", {"ppo_vmap_ratio": round(ratio, 3), "cpu_ratio": round(cpu_ratio, 3), "ratio_steady": round(steady_group / steady_seq, 3),
                               "sequential_s": round(sequential_s, 2), "group_s": round(group_s, 2),
                               "sps_sequential": round(steady_seq, 1), "sps_group": round(steady_group, 1),
                               "sequential_runs_s": [round(x, 2) for x in times["sequential"]],
                               "group_runs_s": [round(x, 2) for x in times["group"]],
                               "seeds": args.seeds, "envs": args.envs, "updates": args.updates,
                               "num_steps": args.num_steps, "width": args.width, "seed_axis": args.seed_axis,
                               "params_equal": params_equal, "metrics_equal": metrics_equal,
                               "max_param_difference": max_diff, "cpus": cpus,
                               "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2)})


if __name__ == "__main__":
    main()
