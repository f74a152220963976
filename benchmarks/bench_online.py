"""Online PPO with the LLM in the loop: steps/s against the LLM-only ceiling, and LLM calls per update with reset
refreshes one by one (--no-pool-states, the old way) and from the reset pool's states (default), in one run; and
the published Craftax PPO network (--arch separate: separate actor and critic towers of 3 x 512, tanh) beside hsrl's
own (--arch shared), with the LLM and without; and the cost of saving the whole training state (resume): SPS with
--save-every at its default against never saving.

    python benchmarks/bench_online.py [--env Craftax-Classic-Symbolic-v1] [--envs 32] [--updates 4] [--save-updates 20]

Saving: runs of --save-updates updates with the LLM (pool states), --save-every 10 (the default) and never (only
the final checkpoint, which both write), interleaved twice, the best SPS of each; `save_ratio` = SPS(default) /
SPS(never), target >= 0.97. Each run
also times its saves (`time_share["save"]`); `save_ratio_from_share` = 1 - that share is the same figure measured
inside one run, free of the noise between two runs.

Five runs of the same PPO (skip-n 25, tokens 1, model minilm, in-memory state cache): with the LLM and
--no-pool-states, with the LLM and pool states, and --no-hidden, with hsrl's network; with the LLM (pool states) and
--no-hidden with --arch separate (`sps_separate / sps_after` and `sps_separate_no_llm / sps_no_llm` are the
published network's speed relative to hsrl's). The LLM-only ceiling is the rate at which the
extractor alone produces the states the run needs: steps / (samples asked x seconds per sample), seconds per
sample being what the extractor took per sample inside the run; the ratio SPS / ceiling is the share of the wall
time the LLM itself ran (target >= 0.9: everything else hidden behind or negligible). SPS and counts leave out
the first update (which compiles).
"""

import argparse
import os
import tempfile

from hsrl.rl.ppo import OnlineConfig, train_online
from record import record


NEVER = 10**9  # --save-every that never comes: only the final checkpoint


def run(args, folder: str, updates: int | None = None, save_every: int = NEVER, **kw) -> dict:
    config = OnlineConfig(env=args.env, envs=args.envs, steps=args.envs * 64 * (updates or args.updates), skip_n=25,
                          tokens=1, out=folder, progress=False, save_every=save_every, **kw)
    return train_online(config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Craftax-Classic-Symbolic-v1")
    p.add_argument("--envs", type=int, default=32)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--save-updates", type=int, default=20, help="updates of the two saving runs")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_online_")
    before = run(args, f"{tmp}/before", pool_states=False)
    after = run(args, f"{tmp}/after")
    without = run(args, f"{tmp}/nollm", hidden=False)
    default_every = OnlineConfig.__dataclass_fields__["save_every"].default
    runs = {"saving": [], "never": []}
    for rep in range(2):  # interleaved, best of two: a busy machine slows one run, not one setting
        runs["saving"].append(run(args, f"{tmp}/saving{rep}", updates=args.save_updates, save_every=default_every))
        runs["never"].append(run(args, f"{tmp}/never{rep}", updates=args.save_updates))
    saving, never = (max(runs[k], key=lambda r: r["sps"]) for k in ("saving", "never"))
    separate = run(args, f"{tmp}/separate", arch="separate")
    separate_without = run(args, f"{tmp}/separate_nollm", arch="separate", hidden=False)
    ratio = {k: r["time_share"]["llm"] for k, r in (("before", before), ("after", after))}
    load = os.getloadavg()[0]
    print(f"{args.env}, {args.envs} envs, {args.updates} updates of 64 steps, skip-n 25, tokens 1, model minilm; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    for name, r in (("before (--no-pool-states)", before), ("after (pool states)", after)):
        print(f"{name:26s} {r['sps']:8.1f} SPS, {r['llm_calls_per_update']:6.1f} LLM calls/update "
              f"(mean batch {r['llm_mean_call_batch']:.1f}), cache hit rate {r.get('cache_hit_rate', 0):.1%}, "
              f"SPS / LLM-only ceiling {r['time_share']['llm']:.3f}")
    print(f"--no-hidden:               {without['sps']:8.1f} SPS")
    print(f"saving the training state every {default_every} updates: {saving['sps']:.1f} SPS, never: {never['sps']:.1f} "
          f"SPS over {args.save_updates} updates; ratio {saving['sps'] / never['sps']:.3f} (target >= 0.97), "
          f"saves' share of the wall time {saving['time_share']['save']:.4f}")
    sep_ratio, sep_ratio_no_llm = separate["sps"] / after["sps"], separate_without["sps"] / without["sps"]
    print(f"--arch separate (published towers): {separate['sps']:8.1f} SPS with the LLM ({sep_ratio:.3f}x hsrl's "
          f"network), {separate_without['sps']:8.1f} SPS --no-hidden ({sep_ratio_no_llm:.3f}x)")
    print(f"calls per update after / before: {after['llm_calls_per_update'] / before['llm_calls_per_update']:.3f}; "
          f"SPS after / before: {after['sps'] / before['sps']:.3f}")
    record("bench_online", {"sps_before": round(before["sps"], 1), "sps_after": round(after["sps"], 1),
                      "sps_no_llm": round(without["sps"], 1),
                      "calls_per_update_before": round(before["llm_calls_per_update"], 2),
                      "calls_per_update_after": round(after["llm_calls_per_update"], 2),
                      "mean_call_batch_before": round(before["llm_mean_call_batch"], 2),
                      "mean_call_batch_after": round(after["llm_mean_call_batch"], 2),
                      "ceiling_ratio_before": round(ratio["before"], 4), "ratio": round(ratio["after"], 4),
                      "sps_ratio_after_before": round(after["sps"] / before["sps"], 4),
                      "cache_hit_rate": round(after.get("cache_hit_rate", 0.0), 4),
                      "sps_save_default": round(saving["sps"], 1), "sps_save_never": round(never["sps"], 1),
                      "save_ratio": round(saving["sps"] / never["sps"], 4),
                      "save_ratio_from_share": round(1 - saving["time_share"]["save"], 4),
                      "sps_separate": round(separate["sps"], 1),
                      "sps_separate_no_llm": round(separate_without["sps"], 1),
                      "sps_ratio_separate_shared": round(sep_ratio, 4),
                      "sps_ratio_separate_shared_no_llm": round(sep_ratio_no_llm, 4), "load_average": round(load, 2)})


if __name__ == "__main__":
    main()
