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


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """A tiny random Qwen3-VL saved like a real checkpoint (tests/tiny_vlm.py), shared by the session."""
    from tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="session")
def classic_pixel_dataset(tmp_path_factory):
    """Two Craftax-Classic-Pixels chunks (2 envs x 8 steps, uint8 frames plus text_obs) collected by random play."""
    from hsrl.data.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("pixels")
    collect(CollectConfig(env="Craftax-Classic-Pixels-v1", envs=2, steps=32, chunk_steps=8, out=str(out), seed=5,
                          progress=False))
    return out
