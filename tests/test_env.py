import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsrl.env import ENV_NAMES, craftax_score, env_info, make_env, success_rates


def test_catalog_reads_craftax():
    from craftax.craftax_classic.constants import Action, Achievement

    info = env_info("Craftax-Classic-Symbolic-v1")
    assert info.num_actions == len(Action) and info.action_names[5] == "do"
    assert info.num_achievements == len(Achievement) and info.achievement_names[0] == "collect_wood"
    full = env_info("Craftax-Pixels-v1")
    assert full.pixels and not full.classic and full.obs_shape[-1] == 3
    assert full.symbolic_obs_shape == env_info("Craftax-Symbolic-v1").obs_shape
    with pytest.raises(ValueError, match="unknown environment"):
        env_info("Craftax-v0")
    assert len(ENV_NAMES) == 4


def test_reset_and_step_shapes(classic_env):
    env, reset, step = classic_env
    obs, state, _ = reset(jax.random.PRNGKey(0))
    assert obs.shape == (8, *env.info.obs_shape)
    action = jnp.zeros((8,), jnp.int32)
    obs, state, reward, done, info = step(jax.random.PRNGKey(1), state, action)
    assert obs.shape == (8, *env.info.obs_shape) and reward.shape == (8,) and done.dtype == bool
    assert info["achievements"].shape == (8, env.info.num_achievements)


def _force_done(state, envs):
    """Push chosen envs to the time limit so their next step ends the episode."""
    env_state = state.env_state
    t = env_state.timestep.at[jnp.asarray(envs)].set(100_000)
    return state._replace(env_state=env_state.replace(timestep=t))


def test_finished_episodes_get_fresh_distinct_worlds(classic_env):
    env, reset, step = classic_env
    _, state, _ = reset(jax.random.PRNGKey(0))
    action = jnp.zeros((8,), jnp.int32)
    for i in range(3):  # play a little so the running stats are non-zero
        _, state, *_ = step(jax.random.PRNGKey(10 + i), state, action)
    finishers = [0, 2, 3, 5, 7]  # five finish at once with a pool of four
    state = _force_done(state, finishers)
    obs, new, reward, done, info = step(jax.random.PRNGKey(99), state, action)
    assert np.array_equal(np.flatnonzero(done), finishers)
    maps = np.asarray(new.env_state.map)
    # fresh worlds: time restarts, statistics reset
    assert np.all(np.asarray(new.env_state.timestep)[finishers] == 0)
    assert np.all(np.asarray(new.episode_length)[finishers] == 0)
    assert np.all(np.asarray(info["episode_length"])[finishers] == 4)
    # the first `pool` finishers get distinct worlds; the fifth shares with the first (k mod pool)
    first_four = [maps[e].tobytes() for e in finishers[:4]]
    assert len(set(first_four)) == 4
    assert np.array_equal(maps[finishers[4]], maps[finishers[0]])
    # the returned obs is the fresh world's; terminal_obs is the pre-reset one
    assert not np.array_equal(np.asarray(obs)[0], np.asarray(info["terminal_obs"])[0])
    # envs that did not finish continue their world
    running = [1, 4, 6]
    assert np.all(np.asarray(new.env_state.timestep)[running] == 4)
    assert np.all(np.asarray(new.episode_length)[running] == 4)


def test_fresh_worlds_are_used_up_in_order_before_a_new_pool_is_generated(classic_env):
    env, reset, step = classic_env  # pool of four
    _, state, _ = reset(jax.random.PRNGKey(1))
    action = jnp.zeros((8,), jnp.int32)
    pools, worlds = [], []
    for i, finishers in enumerate([[1, 2], [3, 4], [5]]):
        pools.append(np.asarray(state.fresh_state.map))
        _, state, _, done, _ = step(jax.random.PRNGKey(20 + i), _force_done(state, finishers), action)
        assert np.array_equal(np.flatnonzero(done), finishers)
        worlds += [np.asarray(state.env_state.map)[e] for e in finishers]
    assert int(state.fresh_used) == 1
    # steps 1 and 2 take worlds 0-1 and 2-3 of the pool made at reset; step 3 needs a new pool and takes its first
    for k in range(4):
        assert np.array_equal(worlds[k], pools[0][k])
    np.testing.assert_array_equal(pools[2], pools[0])  # no world was generated on steps 1 and 2
    new_pool = np.asarray(state.fresh_state.map)
    assert not np.array_equal(new_pool[0], pools[0][0]) and np.array_equal(worlds[4], new_pool[0])
    assert len({w.tobytes() for w in worlds}) == 5  # no world was given twice


def test_episode_return_and_achievements_logged(classic_env):
    env, reset, step = classic_env
    _, state, _ = reset(jax.random.PRNGKey(3))

    def body(state, key):
        k1, k2 = jax.random.split(key)
        a = jax.random.randint(k1, (8,), 0, env.info.num_actions)
        _, state, r, d, info = env.step(k2, state, a)
        return state, (r, d, info["episode_return"], info["episode_length"], info["achievements"])

    _, (r, d, ret, length, ach) = jax.jit(lambda s, k: jax.lax.scan(body, s, jax.random.split(k, 300)))(
        state, jax.random.PRNGKey(4)
    )
    r, d, ret, length, ach = map(np.asarray, (r, d, ret, length, ach))
    assert d.sum() > 0, "random play should end some episodes in 300 steps"
    for e in range(8):  # brute-force reference: sum rewards between dones
        start = 0
        for t in np.flatnonzero(d[:, e]):
            assert ret[t, e] == pytest.approx(r[start : t + 1, e].sum(), abs=1e-4)
            assert length[t, e] == t + 1 - start
            start = t + 1
    assert not ach[~d].any(), "achievements are reported only for finished episodes"
    assert ach[d].any(), "random play unlocks something (collect_wood, collect_sapling, ...)"


def test_pixel_env_gives_symbolic_obs_of_the_same_state():
    env = make_env("Craftax-Classic-Pixels-v1", 2, with_symbolic=True)
    from craftax.craftax_classic.renderer import render_craftax_symbolic

    obs, state, info = jax.jit(env.reset)(jax.random.PRNGKey(0))
    assert obs.shape == (2, *env.info.obs_shape)
    obs, state, _, _, info = jax.jit(env.step)(jax.random.PRNGKey(1), state, jnp.array([5, 3]))
    expected = jax.vmap(render_craftax_symbolic)(state.env_state)
    assert info["symbolic_obs"].shape == (2, *env.info.symbolic_obs_shape)
    np.testing.assert_array_equal(np.asarray(info["symbolic_obs"]), np.asarray(expected))


def test_craftax_score_known_values():
    assert craftax_score(np.zeros(22)) == pytest.approx(0.0)
    assert craftax_score(np.full(22, 100.0)) == pytest.approx(100.0)
    assert craftax_score([100.0, 0.0]) == pytest.approx(np.sqrt(101.0) - 1.0)
    # the geometric mean favours breadth: 50/50 beats 100/0 at the same arithmetic mean
    assert craftax_score([50.0, 50.0]) > craftax_score([100.0, 0.0])
    rates = success_rates(np.array([[1, 0], [1, 1], [0, 0], [1, 0]], bool))
    np.testing.assert_allclose(rates, [75.0, 25.0])
    with pytest.raises(ValueError):
        craftax_score([120.0])
