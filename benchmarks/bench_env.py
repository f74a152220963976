"""Steps/s of hsrl's batched env (auto-reset with a fresh-world pool) against stepping the same env
with no resets at all, in one run. Target: ratio >= 0.8 at 128 envs.

    python benchmarks/bench_env.py [--env Craftax-Symbolic-v1] [--envs 128] [--steps 200]
"""

import argparse
import time

import jax

from hsrl.env import make_env
from record import record


def rollout_fn(step, num_envs: int, num_actions: int, steps: int):
    def body(state, key):
        k_act, k_step = jax.random.split(key)
        action = jax.random.randint(k_act, (num_envs,), 0, num_actions)
        state, done = step(k_step, state, action)
        return state, done.sum()

    return jax.jit(lambda state, key: jax.lax.scan(body, state, jax.random.split(key, steps)))


def time_rollout(fn, state, repeats: int) -> tuple[float, int]:
    jax.block_until_ready(fn(state, jax.random.PRNGKey(1)))  # compile + warm up
    best, dones = float("inf"), 0
    for r in range(repeats):
        t0 = time.perf_counter()
        _, d = jax.block_until_ready(fn(state, jax.random.PRNGKey(2 + r)))
        best = min(best, time.perf_counter() - t0)
        dones = int(d.sum())
    return best, dones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Craftax-Symbolic-v1")
    parser.add_argument("--envs", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    env = make_env(args.env, args.envs)
    _, state, _ = env.reset(jax.random.PRNGKey(0))
    n = env.info.num_actions

    def hsrl_step(key, state, action):
        _, state, _, done, _ = env.step(key, state, action)
        return state, done

    raw, params = env._env, env.params

    def no_reset_step(key, env_state, action):
        keys = jax.random.split(key, args.envs)
        _, env_state, _, done, _ = jax.vmap(raw.step_env, in_axes=(0, 0, 0, None))(keys, env_state, action, params)
        return env_state, done

    t_hsrl, dones = time_rollout(rollout_fn(hsrl_step, args.envs, n, args.steps), state, args.repeats)
    t_raw, _ = time_rollout(rollout_fn(no_reset_step, args.envs, n, args.steps), state.env_state, args.repeats)
    total = args.envs * args.steps
    sps_hsrl, sps_raw = total / t_hsrl, total / t_raw
    ratio = sps_hsrl / sps_raw
    print(f"{args.env}, {args.envs} envs, {args.steps} steps, reset pool {env.reset_pool}, {dones} episodes ended")
    print(f"hsrl batched env (auto-reset): {sps_hsrl:9.0f} steps/s")
    print(f"same env, no resets:           {sps_raw:9.0f} steps/s")
    print(f"ratio: {ratio:.3f} (target >= 0.8)")
    record("bench_env", {"env": args.env, "envs": args.envs, "hsrl_sps": round(sps_hsrl, 1),
                      "no_reset_sps": round(sps_raw, 1), "episodes_ended": dones, "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
