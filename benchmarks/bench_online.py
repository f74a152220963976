"""Online PPO with the LLM in the loop: steps/s against the LLM-only ceiling, and LLM calls per update with reset
refreshes one by one (--no-pool-states, the old way) and from the reset pool's states (default), in one run; and
the published Craftax PPO network (--arch separate: separate actor and critic towers of 3 x 512, tanh) beside hsrl's
own (--arch shared), with the LLM and without.

    python benchmarks/bench_online.py [--env Craftax-Classic-Symbolic-v1] [--envs 32] [--updates 4]

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
import json
import os
import tempfile

from hsrl.rl.ppo import OnlineConfig, train_online


def run(args, folder: str, **kw) -> dict:
    config = OnlineConfig(env=args.env, envs=args.envs, steps=args.envs * 64 * args.updates, skip_n=25, tokens=1,
                          out=folder, progress=False, save_every=10**9, **kw)
    return train_online(config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Craftax-Classic-Symbolic-v1")
    p.add_argument("--envs", type=int, default=32)
    p.add_argument("--updates", type=int, default=4)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_online_")
    before = run(args, f"{tmp}/before", pool_states=False)
    after = run(args, f"{tmp}/after")
    without = run(args, f"{tmp}/nollm", hidden=False)
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
    sep_ratio, sep_ratio_no_llm = separate["sps"] / after["sps"], separate_without["sps"] / without["sps"]
    print(f"--arch separate (published towers): {separate['sps']:8.1f} SPS with the LLM ({sep_ratio:.3f}x hsrl's "
          f"network), {separate_without['sps']:8.1f} SPS --no-hidden ({sep_ratio_no_llm:.3f}x)")
    print(f"calls per update after / before: {after['llm_calls_per_update'] / before['llm_calls_per_update']:.3f}; "
          f"SPS after / before: {after['sps'] / before['sps']:.3f}")
    print(json.dumps({"sps_before": round(before["sps"], 1), "sps_after": round(after["sps"], 1),
                      "sps_no_llm": round(without["sps"], 1),
                      "calls_per_update_before": round(before["llm_calls_per_update"], 2),
                      "calls_per_update_after": round(after["llm_calls_per_update"], 2),
                      "mean_call_batch_before": round(before["llm_mean_call_batch"], 2),
                      "mean_call_batch_after": round(after["llm_mean_call_batch"], 2),
                      "ceiling_ratio_before": round(ratio["before"], 4), "ratio": round(ratio["after"], 4),
                      "sps_ratio_after_before": round(after["sps"] / before["sps"], 4),
                      "cache_hit_rate": round(after.get("cache_hit_rate", 0.0), 4),
                      "sps_separate": round(separate["sps"], 1),
                      "sps_separate_no_llm": round(separate_without["sps"], 1),
                      "sps_ratio_separate_shared": round(sep_ratio, 4),
                      "sps_ratio_separate_shared_no_llm": round(sep_ratio_no_llm, 4), "load_average": round(load, 2)}))


if __name__ == "__main__":
    main()
