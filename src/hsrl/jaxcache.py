"""JAX's persistent compilation cache, on by default so repeated runs do not recompile Craftax."""

import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "hsrl" / "jax"
CACHE_ENV_VAR = "HSRL_JAX_CACHE"  # a folder, or "off" to disable


def cache_dir() -> Path | None:
    """The cache folder in force: $HSRL_JAX_CACHE, else ~/.cache/hsrl/jax; None when disabled."""
    value = os.environ.get(CACHE_ENV_VAR, "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else DEFAULT_CACHE_DIR


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default: `cache_dir()`)."""
    import jax

    folder = Path(path).expanduser() if path is not None else cache_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache everything that takes a noticeable time to compile (Craftax steps take seconds).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
