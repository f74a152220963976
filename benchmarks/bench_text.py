"""hsrl.text.render_text against Craftax's render_craftax_text on the same full-Craftax states.

Random play in Craftax-Symbolic-v1 (half of the states on the overworld, half after a teleport to
the floors below, where darkness and other mobs are) gives `--num-obs` states and their symbolic
observations. hsrl renders the whole batch in one call (best and median of `--repeats` after a
warm-up); Craftax's renderer is pure Python over JAX arrays, one state per call, so it is timed
looping over the same states (after one warm-up call, which compiles its mob scans).

Last line: one JSON object with hsrl_ms (median), hsrl_best_ms, hsrl_full_view_ms, craftax_ms and
ratio = craftax_ms / hsrl_ms. Target: ratio >= 1000 and hsrl_ms < 10 for 128 observations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from record import record

ENV_NAME = "Craftax-Symbolic-v1"


def collect(num_obs: int, num_envs: int = 16, steps: int = 25, seed: int = 0):
    """`num_obs` symbolic observations (N, D) and their states (list of single-env pytrees)."""
    import jax
    import jax.numpy as jnp

    from hsrl.env.catalog import craftax_env, env_info
    from hsrl.jaxcache import enable_compilation_cache

    enable_compilation_cache()
    env, num_actions = craftax_env(ENV_NAME), env_info(ENV_NAME).num_actions
    params = env.default_params

    @jax.jit
    def segment(state, key):
        def body(state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (num_envs,), 0, num_actions)
            keys = jax.random.split(k_step, num_envs)
            _, state, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)
            return state, None

        state, _ = jax.lax.scan(body, state, jax.random.split(key, steps))
        return jax.vmap(env.get_obs)(state), state

    @jax.jit
    def teleport(state):  # env i to floor i % 8 + 1, at its up ladder
        level = (jnp.arange(num_envs) % 8 + 1).astype(state.player_level.dtype)
        position = state.up_ladders[jnp.arange(num_envs), level].astype(state.player_position.dtype)
        return state.replace(player_level=level, player_position=position)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_envs)
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    state = jax.device_get(state)  # numpy leaves: one compile of `segment` for every call
    segments = -(-num_obs // num_envs)
    obs, states = [], []
    for i in range(segments):
        if i == segments // 2:
            state = jax.device_get(teleport(state))
        o, state = jax.device_get(segment(state, jax.random.PRNGKey(seed + 1 + i)))
        obs.append(o)
        states += [jax.tree_util.tree_map(lambda x, j=j: jnp.asarray(x[j]), state) for j in range(num_envs)]
    return np.concatenate(obs)[:num_obs], states[:num_obs]


def time_hsrl(obs: np.ndarray, view: str, repeats: int) -> list[float]:
    from hsrl.text import render_text

    for _ in range(3):
        render_text(obs, "craftax", view)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_text(obs, "craftax", view)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_craftax(states: list) -> float:
    from craftax.craftax.renderer import render_craftax_text

    render_craftax_text(states[0])  # warm-up: compiles the renderer's mob scans
    start = time.perf_counter()
    for state in states:
        render_craftax_text(state)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-obs", type=int, default=128, help="observations (and states) to render")
    parser.add_argument("--repeats", type=int, default=30, help="timed hsrl calls after 3 warm-up calls")
    args = parser.parse_args()

    start = time.perf_counter()
    obs, states = collect(args.num_obs)
    print(f"collected {len(obs)} {ENV_NAME} states by random play in {time.perf_counter() - start:.1f} s "
          f"({os.cpu_count()} CPUs)")

    hsrl = time_hsrl(obs, "interesting", args.repeats)
    hsrl_full = time_hsrl(obs, "full", args.repeats)
    hsrl_ms, hsrl_best = statistics.median(hsrl), min(hsrl)
    print(f"hsrl render_text, {len(obs)} obs, interesting view: median {hsrl_ms:.2f} ms, best {hsrl_best:.2f} ms")
    print(f"hsrl render_text, {len(obs)} obs, full view:        median {statistics.median(hsrl_full):.2f} ms, "
          f"best {min(hsrl_full):.2f} ms")
    craftax_ms = time_craftax(states)
    print(f"craftax render_craftax_text, {len(states)} states, one call each: {craftax_ms:.0f} ms "
          f"({craftax_ms / len(states):.0f} ms per state)")
    ratio = craftax_ms / hsrl_ms
    print(f"ratio (craftax / hsrl median): {ratio:.0f}x; target >= 1000x and hsrl < 10 ms: "
          f"{'met' if ratio >= 1000 and hsrl_ms < 10 else 'NOT met'}")
    record("bench_text", {
        "num_obs": len(obs),
        "hsrl_ms": round(hsrl_ms, 3),
        "hsrl_best_ms": round(hsrl_best, 3),
        "hsrl_full_view_ms": round(statistics.median(hsrl_full), 3),
        "craftax_ms": round(craftax_ms, 1),
        "ratio": round(ratio, 1),
    })


if __name__ == "__main__":
    main()
