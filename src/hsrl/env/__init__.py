"""Craftax environments for hsrl: catalog, batched env with cheap resets, Craftax score.

The catalog (names, actions, achievements) imports without JAX; the batched env and the score are imported on
first use, so a command that only checks its flags (or `hsrl envs`) does not pay JAX's import time.
"""

import importlib

from hsrl.env.catalog import ENV_NAMES, EnvInfo, env_info

_LAZY = {"BatchedEnv": "hsrl.env.batched", "LogState": "hsrl.env.batched", "make_env": "hsrl.env.batched",
         "craftax_score": "hsrl.env.score", "success_rates": "hsrl.env.score"}

__all__ = ["ENV_NAMES", "EnvInfo", "env_info", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hsrl.env' has no attribute {name!r}")
