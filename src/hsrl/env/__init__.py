"""Craftax environments for hsrl: catalog, batched env with cheap resets, Craftax score."""

from hsrl.env.catalog import ENV_NAMES, EnvInfo, env_info
from hsrl.env.batched import BatchedEnv, LogState, make_env
from hsrl.env.score import craftax_score, success_rates

__all__ = ["ENV_NAMES", "EnvInfo", "env_info", "BatchedEnv", "LogState", "make_env", "craftax_score", "success_rates"]
