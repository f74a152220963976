"""Batched Craftax with cheap auto-resets and episode logging.

Craftax's own `auto_reset=True` generates a fresh world for every environment on every step and
selects between it and the stepped state: on CPU that makes stepping ~10x slower. hsrl keeps the
game's semantics (every finished episode starts in a freshly generated world) with a pool of fresh
worlds kept in the state and used up in order: finishers take the next unused worlds, and a new pool
is generated (`lax.cond`) only when a step needs more worlds than are left. So world generation costs
one pool per `pool` finished episodes, not one per step with a finisher (which, with hundreds of envs
on a GPU, is nearly every step). A world is never given twice, except when more than `pool`
environments finish in the same step: then the k-th takes world `k mod pool`, as with optimistic resets.

All methods are pure functions of explicit state, usable inside `jax.jit` and `lax.scan`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hsrl.env.catalog import EnvInfo, craftax_env, env_info


class LogState(NamedTuple):
    env_state: object  # Craftax EnvState, batched
    episode_return: jax.Array  # (num_envs,) float32, running return of the current episode
    episode_length: jax.Array  # (num_envs,) int32
    fresh_obs: object  # (pool, ...) observations of the fresh worlds
    fresh_state: object  # (pool, ...) Craftax EnvState of the fresh worlds
    fresh_used: jax.Array  # () int32, how many of the pool's worlds were given out


def default_reset_pool(num_envs: int) -> int:
    """Fresh worlds generated at a time (when the previous ones are used up): 1 per 32 envs, at least 1."""
    return max(1, num_envs // 32)


class BatchedEnv:
    """`num_envs` Craftax environments stepped together, with auto-reset and episode statistics.

    `step` returns `(obs, state, reward, done, info)`; `obs` is already the first observation of the
    new episode where `done`. `info` holds, per environment:
      - `terminal_obs`: the observation the step produced before any reset (the true next observation),
      - `episode_return`, `episode_length`: of the episode that just finished (valid where `done`),
      - `achievements`: (num_envs, num_achievements) bool, what the finished episode unlocked,
      - `symbolic_obs`: the symbolic observation of the returned state (pixel envs with
        `with_symbolic=True`; text is rendered from it), and `terminal_symbolic_obs` likewise.
    """

    def __init__(self, name: str, num_envs: int, reset_pool: int | None = None, with_symbolic: bool = False,
                 max_timesteps: int | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.info: EnvInfo = env_info(name)
        self.num_envs = int(num_envs)
        self.reset_pool = int(reset_pool or default_reset_pool(num_envs))
        if not 1 <= self.reset_pool <= self.num_envs:
            raise ValueError(f"reset_pool must be between 1 and num_envs={num_envs}, got {reset_pool}")
        self.with_symbolic = bool(with_symbolic)
        self._env = craftax_env(name)
        self.params = self._env.default_params
        if max_timesteps is not None:  # shorter episodes (Craftax's default time limit is 10000 steps)
            if max_timesteps < 1:
                raise ValueError(f"max_timesteps must be at least 1, got {max_timesteps}")
            self.params = self.params.replace(max_timesteps=int(max_timesteps))
        if self.info.pixels and with_symbolic:
            self._symbolic_env = craftax_env(name.replace("Pixels", "Symbolic"))
        else:
            self._symbolic_env = self._env if with_symbolic else None

    @property
    def name(self) -> str:
        return self.info.name

    def symbolic_obs(self, env_state) -> jax.Array:
        """Symbolic observations of a batch of states (the same vector a Symbolic env returns)."""
        if self._symbolic_env is None:
            raise ValueError("this env was made without with_symbolic=True")
        return jax.vmap(self._symbolic_env.get_obs)(env_state)

    def pool_observations(self, state: LogState) -> tuple[jax.Array, jax.Array]:
        """(symbolic, env) observations of the fresh worlds in the pool: the first observations the next
        finishing episodes will get (`step` gives them out in order)."""
        symbolic = state.fresh_obs if not self.info.pixels else self.symbolic_obs(state.fresh_state)
        return symbolic, state.fresh_obs

    def _reset_worlds(self, key: jax.Array, n: int):
        worlds = jax.vmap(self._env.reset_env, in_axes=(0, None))(jax.random.split(key, n), self.params)
        # Craftax leaves some fields weakly typed; strong types keep reset and step states identical
        # in type, so a jitted rollout fed either compiles once.
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), worlds)

    def reset(self, key: jax.Array):
        """Fresh worlds for all environments: `(obs, state, info)`; info has `symbolic_obs` if asked."""
        key_envs, key_pool = jax.random.split(key)
        obs, env_state = self._reset_worlds(key_envs, self.num_envs)
        fresh_obs, fresh_state = self._reset_worlds(key_pool, self.reset_pool)
        zeros = jnp.zeros((self.num_envs,), jnp.float32)
        state = LogState(env_state, zeros, jnp.zeros((self.num_envs,), jnp.int32), fresh_obs, fresh_state,
                         jnp.zeros((), jnp.int32))
        info = {"symbolic_obs": self.symbolic_obs(env_state)} if self.with_symbolic else {}
        return obs, state, info

    def step(self, key: jax.Array, state: LogState, action: jax.Array):
        key_step, key_reset = jax.random.split(key)
        step_keys = jax.random.split(key_step, self.num_envs)
        obs_st, env_st, reward, done, _ = jax.vmap(self._env.step_env, in_axes=(0, 0, 0, None))(
            step_keys, state.env_state, action, self.params
        )
        reward = reward.astype(jnp.float32)
        done = done.astype(bool)

        finished = done.sum(dtype=jnp.int32)
        pool = (state.fresh_obs, state.fresh_state, state.fresh_used)
        refill = lambda _: (*self._reset_worlds(key_reset, self.reset_pool), jnp.zeros((), jnp.int32))
        fresh_obs, fresh_state, used = jax.lax.cond(
            state.fresh_used + finished > self.reset_pool, refill, lambda _: pool, None
        )

        def with_resets(_):
            slot = (used + jnp.cumsum(done) - 1) % self.reset_pool  # the k-th finisher takes the k-th unused world

            def pick(fresh, stepped):
                mask = done.reshape((-1,) + (1,) * (stepped.ndim - 1))
                return jnp.where(mask, fresh[slot], stepped)

            return jax.tree.map(pick, fresh_obs, obs_st), jax.tree.map(pick, fresh_state, env_st)

        obs, env_state = jax.lax.cond(finished > 0, with_resets, lambda _: (obs_st, env_st), None)

        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        info = {
            "terminal_obs": obs_st,
            "episode_return": episode_return,
            "episode_length": episode_length,
            "achievements": env_st.achievements & done[:, None],
        }
        if self.with_symbolic:
            info["symbolic_obs"] = self.symbolic_obs(env_state)
            info["terminal_symbolic_obs"] = self.symbolic_obs(env_st)
        new_state = LogState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
            fresh_obs,
            fresh_state,
            jnp.minimum(used + finished, self.reset_pool),
        )
        return obs, new_state, reward, done, info


def make_env(name: str, num_envs: int, reset_pool: int | None = None, with_symbolic: bool = False,
             max_timesteps: int | None = None) -> BatchedEnv:
    """The one factory for hsrl's Craftax environments (see BatchedEnv)."""
    from hsrl.jaxcache import enable_compilation_cache

    enable_compilation_cache()
    return BatchedEnv(name, num_envs, reset_pool=reset_pool, with_symbolic=with_symbolic, max_timesteps=max_timesteps)
