"""Online PPO steps/s with the LLM in the loop (embedded model, skip-n 25, tokens 1) and without
(--no-hidden), in one run, with the time breakdown of the LLM run. Target: "other" share under 10%.

    python benchmarks/bench_online.py [--env Craftax-Classic-Symbolic-v1] [--envs 32] [--updates 4]

SPS and shares are measured after the first update (which compiles).
"""

import argparse
import json
import tempfile

from hsrl.rl.ppo import OnlineConfig, train_online


def run(args, hidden: bool, folder: str) -> dict:
    config = OnlineConfig(env=args.env, envs=args.envs, steps=args.envs * 64 * args.updates, skip_n=25, tokens=1,
                          hidden=hidden, out=folder, progress=False, save_every=10**9)
    return train_online(config)  # its summary leaves out the first update, which compiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Craftax-Classic-Symbolic-v1")
    p.add_argument("--envs", type=int, default=32)
    p.add_argument("--updates", type=int, default=5)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_online_")
    with_llm = run(args, True, f"{tmp}/llm")
    without = run(args, False, f"{tmp}/nollm")
    ratio = with_llm["sps"] / without["sps"]
    print(f"{args.env}, {args.envs} envs, {args.updates} updates of 64 steps, skip-n 25, tokens 1, model minilm")
    print(f"with LLM:  {with_llm['sps']:8.1f} SPS ({with_llm['llm_calls']} LLM calls)")
    print(f"--no-hidden: {without['sps']:8.1f} SPS")
    print(f"ratio (LLM / no-LLM): {ratio:.3f}")
    print("time breakdown with LLM: " + ", ".join(f"{k} {v:.1%}" for k, v in with_llm["time_share"].items()))
    print(json.dumps({"sps_llm": round(with_llm["sps"], 1), "sps_no_llm": round(without["sps"], 1),
                      "ratio": round(ratio, 4), **{f"share_{k}": round(v, 4) for k, v in with_llm["time_share"].items()},
                      "other_share": round(with_llm["time_share"]["other"], 4)}))


if __name__ == "__main__":
    main()
