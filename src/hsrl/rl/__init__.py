"""RL for hsrl: Flax actor-critic networks, offline AWR, checkpoints, metrics and plots.

    from hsrl.rl import NetworkConfig, make_network, init_params, load_policy
    policy = load_policy("runs/awr")             # newest checkpoint of a run folder
    actions = policy.act(obs, hidden_raw, key)   # raw hidden states are normalised inside

Importing this package does not import JAX-heavy training code beyond the networks; `hsrl.rl.awr`
holds offline AWR, `hsrl.rl.ppo` online PPO, `hsrl.rl.live` the hidden states both online PPO and
`hsrl.evaluate` compute while the environments run, and `hsrl.rl.cli` the run functions of `train-awr`,
`plot` and `collect`.
"""

from hsrl.rl.checkpoint import (
    CheckpointError, Policy, check_compatible, list_checkpoints, load_policy, read_checkpoint_meta,
    resolve_checkpoint, save_checkpoint,
)
from hsrl.rl.metrics import METRICS, MetricsLogger, read_metrics
from hsrl.rl.networks import (
    ActorCriticConv, ActorCriticConvAug, ActorCriticMLP, ActorCriticMLPAug, NetworkConfig, init_params, make_network,
)

__all__ = [
    "ActorCriticConv", "ActorCriticConvAug", "ActorCriticMLP", "ActorCriticMLPAug", "CheckpointError", "METRICS",
    "MetricsLogger", "NetworkConfig", "Policy", "check_compatible", "init_params", "list_checkpoints",
    "load_policy", "make_network", "read_checkpoint_meta", "read_metrics", "resolve_checkpoint", "save_checkpoint",
]
