"""The refresh check of online PPO's live hidden states, run with any extractor (transformers in
test_online.py, vLLM in test_llm_vllm.py)."""

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from hsrl.env import make_env
from hsrl.rl.live import ExtractorSource, LiveHidden, Runner
from hsrl.rl.networks import NetworkConfig, init_params
from hsrl.rl.ppo import Memory, Norm, OnlineConfig, make_rollout

ENV = "Craftax-Classic-Symbolic-v1"


def _runner(env, live, key):
    obs, env_state, info = jax.jit(env.reset)(key)
    hidden = jnp.asarray(live(np.asarray(info["symbolic_obs"]), np.ones(env.num_envs, bool)))
    return Runner(env_state, obs, info["symbolic_obs"], hidden, jnp.zeros(env.num_envs, bool),
                  jnp.zeros((), jnp.int32), key)


def check_refresh(extractor):
    """The state a policy acts on is the extractor's state of that very observation right after a
    refresh (every skip_n steps) and on an episode's first step; in between it is reused."""
    from hsrl.text import render_text

    config = OnlineConfig(env=ENV, envs=3, num_steps=12, skip_n=5, num_minibatches=1)
    env = make_env(ENV, 3, reset_pool=3, with_symbolic=True)
    live = LiveHidden("classic", None, ExtractorSource(extractor))
    net = NetworkConfig(kind="mlp", num_actions=env.info.num_actions, obs_shape=env.info.obs_shape,
                        hidden_size=extractor.hidden_size, width=32)
    params = init_params(net, jax.random.PRNGKey(0))
    runner = _runner(env, live, jax.random.PRNGKey(1))
    # env 1 ends its episode at its first step (time limit), so step 1 starts a new episode
    t = runner.env_state.env_state.timestep.at[1].set(100_000)
    runner = runner._replace(env_state=runner.env_state._replace(env_state=runner.env_state.env_state.replace(timestep=t)))
    stats = live.stats()
    rollout = make_rollout(config, env, net, live)
    calls = live.calls
    _, _, traj, _ = rollout(params, runner, Memory.initial(net, 3), Norm(jnp.asarray(stats.mean), jnp.asarray(stats.std)))
    # the pool's 3 first states were computed in one call; the reset at step 1 took its state from them
    assert live.pool_hits >= 1 and live.calls - calls <= 4  # the pool, steps 5 and 10, the final refresh
    obs, hidden, done = map(np.asarray, (traj.obs, traj.hidden, traj.done))
    assert done[0, 1] and not done[1:4, 1].any()

    def expected(t, e):
        return extractor.extract(render_text(obs[t, e], "classic")).hidden_state[0]

    for t_, e in [(0, 0), (1, 1), (5, 0), (5, 2), (10, 1)]:  # initial, after the reset, periodic refreshes
        np.testing.assert_allclose(hidden[t_, e], expected(t_, e), rtol=1e-4, atol=1e-5, err_msg=f"t={t_} e={e}")
    np.testing.assert_array_equal(hidden[1:5, 0], np.repeat(hidden[:1, 0], 4, 0))  # reused in between
    assert not np.allclose(hidden[1, 1], hidden[0, 1]), "the new episode did not keep the old state"
    assert not np.isnan(hidden).any()


def sigterm_after_first_checkpoint(ckpts) -> None:
    """SIGTERM this process (as a preemption would) once the folder `ckpts` holds a checkpoint, from a thread."""
    def stop():
        deadline = time.time() + 300
        while not list(ckpts.glob("step_*.json")) and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop, daemon=True).start()
