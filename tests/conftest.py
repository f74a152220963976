"""Shared fixtures. Craftax compiles slowly on CPU: build each env once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from hsrl.jaxcache import enable_compilation_cache

enable_compilation_cache()


@pytest.fixture(scope="session")
def classic_env():
    """Craftax-Classic-Symbolic-v1 with 8 envs and a jitted step, shared by the session."""
    import jax

    from hsrl.env import make_env

    env = make_env("Craftax-Classic-Symbolic-v1", 8, reset_pool=4)
    return env, jax.jit(env.reset), jax.jit(env.step)
