"""`hsrl envs`: list the Craftax environments hsrl knows, read from Craftax."""

from dataclasses import dataclass, field

from hsrl.env.catalog import ENV_NAMES, env_info


@dataclass(frozen=True)
class EnvsConfig:
    """List the Craftax environments with their observation shapes, actions and achievements."""

    env: str | None = field(default=None, metadata={"help": "show one environment in full (default: a summary of all)"})


def run_envs(config: EnvsConfig) -> int:
    for name in [config.env] if config.env else ENV_NAMES:
        info = env_info(name)
        print(f"{info.name}: obs {info.obs_shape}, symbolic {info.symbolic_obs_shape}, "
              f"{info.num_actions} actions, {info.num_achievements} achievements")
        if config.env:
            print("  actions:", ", ".join(f"{i}={a}" for i, a in enumerate(info.action_names)))
            print("  achievements:", ", ".join(info.achievement_names))
    return 0
