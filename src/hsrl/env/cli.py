"""`hsrl envs`: list the Craftax environments hsrl knows, read from Craftax (config: `hsrl.env.catalog.EnvsConfig`)."""

from hsrl.env.catalog import ENV_NAMES, EnvsConfig, env_info


def run_envs(config: EnvsConfig) -> int:
    for name in [config.env] if config.env else ENV_NAMES:
        info = env_info(name)
        print(f"{info.name}: obs {info.obs_shape}, symbolic {info.symbolic_obs_shape}, "
              f"{info.num_actions} actions, {info.num_achievements} achievements")
        if config.env:
            print("  actions:", ", ".join(f"{i}={a}" for i, a in enumerate(info.action_names)))
            print("  achievements:", ", ".join(info.achievement_names))
    return 0
