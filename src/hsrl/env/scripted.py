"""A scripted Craftax-Classic policy that plays better than random: data whose actions differ in value, for
offline RL that has something to learn (`hsrl collect --policy scripted`, the quickstart's data).

It reads the symbolic observation (the 7 x 9 local map with the player at its centre, the inventory and the
facing direction) and, in order:
  1. facing a tree with fewer than 4 wood: DO (collect wood);
  2. next to a crafting table with wood: make a wood pickaxe, then a wood sword;
  3. with 2+ wood and no table near, facing free ground: PLACE_TABLE;
  4. a tree in view (and fewer than 4 wood): step toward the nearest one (walking into it turns to face it);
  5. otherwise a random move.
With probability `epsilon` it takes a uniform random action instead, so the data holds every action and the
returns show which ones pay. Vectorised over environments and jittable: `(key, obs) -> (action, log_prob)`,
the policy interface of `hsrl.data.collect` (log_prob is that of the epsilon mixture).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCRIPTED_ENV = "Craftax-Classic-Symbolic-v1"  # the env the scripted player reads


def scripted_policy(num_actions: int, epsilon: float = 0.25):
    """`(key, obs) -> (action, log_prob)` for Craftax-Classic-Symbolic observations (B, 1345)."""
    from craftax.craftax_classic.constants import DIRECTIONS, OBS_DIM, Action, BlockType

    rows, cols = OBS_DIM
    blocks_n = len(BlockType)
    channels = blocks_n + 4  # blocks one-hot, then zombie, cow, skeleton, arrow
    map_size = rows * cols * channels
    centre = jnp.array([rows // 2, cols // 2])
    moves = jnp.asarray(DIRECTIONS)[1:5]  # the facing one-hot's order: LEFT, RIGHT, UP, DOWN
    free = jnp.array([BlockType.GRASS.value, BlockType.SAND.value, BlockType.PATH.value])
    r_idx, c_idx = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
    dist = jnp.abs(r_idx - centre[0]) + jnp.abs(c_idx - centre[1])

    def one(key, obs):
        tiles = obs[:map_size].reshape(rows, cols, channels)
        block = jnp.argmax(tiles[..., :blocks_n], -1)
        inventory = jnp.rint(obs[map_size:map_size + 12] * 10)
        wood, pickaxe, sword = inventory[0], inventory[6], inventory[9]
        facing = jnp.argmax(obs[map_size + 16:map_size + 20])  # 0..3 -> DIRECTIONS[1..4]
        front = centre + moves[facing]
        front_block = block[front[0], front[1]]
        near = jnp.abs(r_idx - centre[0]) <= 1
        near = near & (jnp.abs(c_idx - centre[1]) <= 1)
        table_near = jnp.any(near & (block == BlockType.CRAFTING_TABLE.value))
        tree = block == BlockType.TREE.value
        target = jnp.argmin(jnp.where(tree, dist, 10_000))
        step = jnp.array([target // cols, target % cols]) - centre
        # along the larger offset to the nearest tree: UP / DOWN for rows, LEFT / RIGHT for columns
        toward = jnp.where((jnp.abs(step[0]) >= jnp.abs(step[1])) & (step[0] != 0),
                           jnp.where(step[0] < 0, Action.UP.value, Action.DOWN.value),
                           jnp.where(step[1] < 0, Action.LEFT.value, Action.RIGHT.value))
        k_move, k_eps, k_rand = jax.random.split(key, 3)
        action = jnp.select(
            [(front_block == BlockType.TREE.value) & (wood < 4),
             table_near & (wood >= 1) & (pickaxe == 0),
             table_near & (wood >= 1) & (sword == 0),
             ~table_near & (wood >= 2) & jnp.isin(front_block, free),
             jnp.any(tree) & (wood < 4)],
            [Action.DO.value, Action.MAKE_WOOD_PICKAXE.value, Action.MAKE_WOOD_SWORD.value,
             Action.PLACE_TABLE.value, toward],
            1 + jax.random.randint(k_move, (), 0, 4))
        action = jnp.where(jax.random.uniform(k_eps) < epsilon, jax.random.randint(k_rand, (), 0, num_actions),
                           action)
        return action

    def policy(key, obs):
        actions = jax.vmap(one)(jax.random.split(key, obs.shape[0]), obs)
        # log-probability under the mixture; the scripted part is treated as deterministic (a random move
        # spreads over 4 actions, which this leaves out: log_prob is a lower bound there)
        log_prob = jnp.log(epsilon / num_actions + (1 - epsilon))
        return actions.astype(jnp.int32), jnp.full(obs.shape[0], log_prob, jnp.float32)

    return policy
