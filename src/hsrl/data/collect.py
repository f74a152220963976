"""`hsrl collect`: roll out a policy in Craftax and write consecutive chunk files.

The policy is a function `(key, obs) -> (action, log_prob)` given by the caller: a uniform random one
by default, or a trained one (`hsrl.rl.checkpoint.checkpoint_policy`, wired by `hsrl.rl.cli.run_collect`),
so collection never imports `hsrl.rl`.

Each chunk is one jitted `lax.scan` over `chunk_steps` steps of all environments; Python runs once per
chunk (render text, write the file, save the rollout state). After every chunk the env state, the
random key and the step count are saved (`collect_state.npz`, atomically), so a rerun with the same
flags resumes after the last finished chunk and produces the same files as an uninterrupted run.

A collection never writes over a file it did not make with the same settings: before any work, a folder that
holds chunk files of another collection, or chunks changed since (labelled: `hidden_state`; `return_to_go`
added by `hsrl returns`), or unreadable ones, is refused naming the folder and what it holds, and left as it was.
"""

import json
import math
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hsrl.atomic import atomic_path, remove_temporaries
from hsrl.data.chunks import CHUNK_PATTERN, ChunkMeta, DataFileError, chunk_path, inspect_chunk, write_chunk
from hsrl.env import ENV_NAMES, env_info, make_env
from hsrl.env.scripted import SCRIPTED_ENV
from hsrl.errors import InputError
from hsrl.redact import public_config

STATE_FILE = "collect_state.npz"

# `(key, obs (E, ...)) -> (action (E,) int, log_prob (E,) float32)`, traced inside the chunk's scan
PolicyFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclass(frozen=True)
class CollectConfig:
    """Roll out a policy in a Craftax environment and write trajectory chunk files.

    Writes DIR/chunk_000000.npz, chunk_000001.npz, ... each holding `chunk_steps` steps of every
    environment (rows time-major: row = t * envs + env) with obs, next_obs, action, reward, done,
    log_prob, achievements and text_obs (rendered from the symbolic observation, also for pixel envs).
    A rerun with the same flags resumes after the last finished chunk.
    """

    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={"help": f"one of {', '.join(ENV_NAMES)}"})
    envs: int = field(default=16, metadata={"help": "number of parallel environments"})
    steps: int = field(default=4096, metadata={"help": "total environment steps over all environments "
                                                       "(rounded up to whole chunks)"})
    out: str = field(default="data/collect", metadata={"help": "output folder"})
    policy: str = field(default="random", metadata={
        "help": "'random' (uniform over actions), or 'scripted' (Craftax-Classic-Symbolic: a scripted player that "
                "collects wood and crafts, better than random; hsrl.env.scripted); see --checkpoint"})
    epsilon: float = field(default=0.25, metadata={"help": "--policy scripted: share of uniform random actions"})
    checkpoint: str | None = field(default=None, metadata={"help": "roll out a trained policy instead (a run folder or "
                                                                   "checkpoint of one that reads no hidden state)"})
    chunk_steps: int = field(default=64, metadata={"help": "steps per environment in one chunk file"})
    seed: int = field(default=0, metadata={"help": "random seed (recorded in every chunk)"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "end episodes at this length (default: "
                                                                         "Craftax's 10000)"})
    text: bool = field(default=True, metadata={"help": "store text_obs rendered by hsrl.text (--no-text to skip)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self) -> None:
        if self.env not in ENV_NAMES:
            raise InputError(f"--env {self.env!r} is not one of {', '.join(ENV_NAMES)}")
        for name in ("envs", "steps", "chunk_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.policy not in ("random", "scripted"):
            raise InputError(f"--policy {self.policy!r}: expected 'random' or 'scripted' (or give --checkpoint)")
        if self.policy == "scripted" and self.env != SCRIPTED_ENV:
            raise InputError(f"--policy scripted plays {SCRIPTED_ENV}, not {self.env}")
        if not 0 <= self.epsilon <= 1:
            raise InputError(f"--epsilon must lie in [0, 1], got {self.epsilon}")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.steps / (self.envs * self.chunk_steps))


def random_policy(num_actions: int):
    """Uniform policy: `(key, obs) -> (action, log_prob)`."""

    def act(key, obs):
        action = jax.random.randint(key, (obs.shape[0],), 0, num_actions)
        return action, jnp.full(action.shape, -math.log(num_actions), jnp.float32)

    return act


def make_chunk_rollout(env, policy, chunk_steps: int):
    """A jitted function `(obs, sym, state, key) -> (obs, sym, state, key, transitions)` over one chunk, where
    `sym` is the symbolic observation of the same state (pixel envs; for symbolic envs it is `obs`)."""
    need_symbolic = env.info.pixels

    def body(carry, _):
        obs, sym, state, key = carry
        key, k_act, k_step = jax.random.split(key, 3)
        action, log_prob = policy(k_act, obs)
        next_obs, state, reward, done, info = env.step(k_step, state, action)
        out = {"obs": obs, "next_obs": info["terminal_obs"], "action": action, "reward": reward, "done": done,
               "log_prob": log_prob, "achievements": info["achievements"]}
        if need_symbolic:
            out["symbolic_obs"] = sym
            sym = info["symbolic_obs"]
        return (next_obs, sym, state, key), out

    def rollout(obs, sym, state, key):
        (obs, sym, state, key), out = jax.lax.scan(body, (obs, sym, state, key), None, length=chunk_steps)
        return obs, sym, state, key, out

    return jax.jit(rollout)


def _save_state(out: Path, carry, next_chunk: int, config: CollectConfig) -> None:
    leaves = jax.tree.leaves(carry)
    with atomic_path(out / STATE_FILE) as f:
        np.savez(f, allow_pickle=False, config=np.array(json.dumps(public_config(config), sort_keys=True)),
                 next_chunk=np.array(next_chunk), **{f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)})


def _load_state(out: Path, template):
    """The saved rollout carry and next chunk index, or None when starting fresh.

    A corrupt state file is reported and removed, and the collection starts again from chunk 0: it is seeded, so
    the chunks already written are written again with the same contents.
    """
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            json.loads(str(z["config"]))  # part of a whole state (its flags were checked by `collect` first)
            leaves, treedef = jax.tree.flatten(template)
            loaded = [np.asarray(z[f"leaf_{i}"]) for i in range(len(leaves))]
            next_chunk = int(z["next_chunk"])
        if any(a.shape != np.shape(b) for a, b in zip(loaded, leaves)):
            raise ValueError("its arrays do not fit this env's state")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"{path} is corrupt ({type(err).__name__}: {err}); removing it and collecting again from "
                      f"chunk 0 (the same seed writes the same chunks)", stacklevel=2)
        path.unlink()
        return None
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in loaded]), next_chunk


RESUME_FLAGS = ("env", "envs", "policy", "epsilon", "checkpoint", "chunk_steps", "seed", "max_episode_steps", "text")


def _check_same_flags(out: Path, saved: dict, config: CollectConfig) -> None:
    """Refuse to continue a collection made with other flags (every flag that changes the chunks)."""
    mine = public_config(config)
    default = {f.name: f.default for f in fields(CollectConfig)}  # flags newer than the saved collection
    differ = [k for k in RESUME_FLAGS if saved.get(k, default[k]) != mine[k]]
    if differ:
        raise InputError(f"{out} holds a collection made with different {', '.join(differ)}; "
                         f"use another --out or the same flags to resume")


def _saved_flags(out: Path) -> dict | None:
    """The flags of the collection saved in `out`, or None (none, or an unreadable state: handled on loading)."""
    try:
        with np.load(out / STATE_FILE, allow_pickle=False) as z:
            return json.loads(str(z["config"]))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


COLLECTED_KEYS = ("obs", "next_obs", "action", "reward", "done", "log_prob", "achievements")  # + text_obs with --text


def _meta_extra(config: CollectConfig) -> dict:
    """What every chunk of this collection records of how it was made (`ChunkMeta.extra`)."""
    return {"seed": config.seed, "policy": config.checkpoint or config.policy,
            "max_episode_steps": config.max_episode_steps}


def _not_ours(path: Path, index: int, config: CollectConfig) -> tuple[str, list[str]]:
    """Why chunk `index` of a folder was not written by this collection ("" when it was): "unreadable",
    "changed" (with the keys added since, e.g. hidden_state, or missing), or "other" (another collection's)."""
    try:
        info = inspect_chunk(path)
    except (DataFileError, OSError):
        return "unreadable", []
    want = set(COLLECTED_KEYS) | ({"text_obs"} if config.text else set())
    if set(info.fields) != want:
        return "changed", sorted(set(info.fields) ^ want)
    m = info.meta
    mine = _meta_extra(config)
    if (m.env_name != config.env or m.num_envs != config.envs or m.first_step != index * config.chunk_steps
            or m.spec_json is not None or any(m.extra.get(k) != v for k, v in mine.items())):
        return "other", []
    return "", []


def check_out_folder(out: Path, config: CollectConfig) -> None:
    """Refuse (InputError naming the folder and what it holds) a folder with chunk files this collection did not
    write with these settings: a collection writes over none of them, and never mixes them into its data."""
    if not out.is_dir():
        return
    found = {"unreadable": [], "changed": [], "other": []}
    keys: set[str] = set()
    for path in sorted(out.iterdir()):
        match = CHUNK_PATTERN.match(path.name)
        if match is None:
            continue
        why, differ = _not_ours(path, int(match.group(1)), config)
        if why:
            found[why].append(path.name)
            keys.update(differ)
    if not any(found.values()):
        return
    parts = []
    if found["changed"]:
        kind = "labelled" if "hidden_state" in keys else "changed"
        parts.append(f"{len(found['changed'])} {kind} chunk files ({', '.join(sorted(keys))})")
    if found["other"]:
        parts.append(f"{len(found['other'])} chunk files of another collection (env, envs, chunk steps, seed or "
                     f"policy)")
    if found["unreadable"]:
        parts.append(f"{len(found['unreadable'])} unreadable chunk files")
    first = next(names[0] for names in found.values() if names)
    raise InputError(f"{out} holds {' and '.join(parts)} not written by this collection (e.g. {first}); collect "
                     f"into another --out (nothing was written)")


def collect(config: CollectConfig, policy: PolicyFn | None = None) -> Path:
    """Collect (or resume) into `config.out`. `policy` is `(key, obs) -> (action, log_prob)`; None: uniform
    random. With `config.checkpoint` (recorded in the files), pass the policy built from that checkpoint."""
    config.check()
    if config.checkpoint and policy is None:
        raise InputError(f"--checkpoint {config.checkpoint}: pass its policy (hsrl.rl.checkpoint.checkpoint_policy)")
    out = Path(config.out)
    saved = _saved_flags(out)
    if saved is not None:  # before any work: a folder of another collection is refused
        _check_same_flags(out, saved, config)
    check_out_folder(out, config)  # and chunk files this collection did not write
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, "chunk_*.npz")  # left by a process killed while writing
    remove_temporaries(out, STATE_FILE)
    info = env_info(config.env)
    env = make_env(config.env, config.envs, with_symbolic=info.pixels, max_timesteps=config.max_episode_steps)
    if policy is None and config.policy == "scripted":
        from hsrl.env.scripted import scripted_policy

        policy = scripted_policy(info.num_actions, config.epsilon)
    policy = policy or random_policy(info.num_actions)
    rollout = make_chunk_rollout(env, policy, config.chunk_steps)

    key = jax.random.PRNGKey(config.seed)
    key, k_reset = jax.random.split(key)
    obs, state, reset_info = jax.jit(env.reset)(k_reset)
    carry = (obs, reset_info.get("symbolic_obs", obs), state, key)  # symbolic envs: obs is the symbolic obs
    resumed = _load_state(out, carry)
    start = 0
    if resumed is not None:
        carry, start = resumed
    meta_extra = _meta_extra(config)

    from tqdm.auto import tqdm

    total = config.num_chunks * config.chunk_steps * config.envs
    bar = tqdm(total=total, initial=start * config.chunk_steps * config.envs, unit="step", desc="collect",
               disable=not config.progress, dynamic_ncols=True)
    episodes = 0
    for index in range(start, config.num_chunks):
        *carry_next, out_arrays = rollout(*carry)
        arrays = {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in out_arrays.items()}
        symbolic = arrays.pop("symbolic_obs", None)
        if config.text:
            from hsrl.text import render_text

            arrays["text_obs"] = np.asarray(render_text(arrays["obs"] if symbolic is None else symbolic, info.variant))
        meta = ChunkMeta(env_name=config.env, num_envs=config.envs, obs_kind="pixels" if info.pixels else "symbolic",
                         first_step=index * config.chunk_steps, achievement_names=info.achievement_names,
                         extra=meta_extra)
        write_chunk(chunk_path(out, index), arrays, meta)
        carry = tuple(carry_next)
        _save_state(out, carry, index + 1, config)
        episodes += int(arrays["done"].sum())
        bar.update(config.chunk_steps * config.envs)
        bar.set_postfix(episodes=episodes, chunk=index)
    bar.close()
    return out
