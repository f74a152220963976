"""Checkpoints: atomic msgpack state + JSON sidecar, resume, and the policy loader others use.

A checkpoint is two files in a run's `checkpoints/` folder:

    step_000010000.msgpack   flax.serialization msgpack of {"params", "opt_state", "rng", "step"}
    step_000010000.json      the sidecar: format/version, step, final, algorithm, network (NetworkConfig),
                             env_name, spec_json + spec_hash, hidden_stats (HiddenStats dict or null),
                             data_dir, seed, train_config, and state_file + state_sha256 of the msgpack

Both are written atomically (temporary file, fsync, rename), the msgpack first: the sidecar is the
commit record, so a crash between the two leaves an orphan msgpack that readers ignore, never a
checkpoint that lies. The sidecar's SHA-256 is checked on load. No pickle anywhere: msgpack holds
only arrays, numbers and nested dicts; everything descriptive is JSON.

`load_policy(path)` (a run folder, its `checkpoints/` folder, or either file of one checkpoint) gives
a `Policy`: network config, params, hidden-state statistics, spec JSON and env name, with
`policy.act(obs, hidden_raw, key)` that normalises the raw hidden state with `normalize_hidden` (the
normaliser, `hsrl.data.stats`) inside. `check_compatible` refuses a checkpoint for data, a server or a run whose
env, hidden size or extraction spec (compared by `hsrl.llm.spec.spec_differences`) differ. `checkpoint_policy`
turns a baseline checkpoint into the policy function `hsrl.data.collect` rolls out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from hsrl.atomic import atomic_path, remove_temporaries, write_text_atomic
from hsrl.llm.spec import spec_differences, spec_hash
from hsrl.data.stats import HiddenStats, normalize_hidden
from hsrl.errors import InputError
from hsrl.rl.networks import NetworkConfig, gate_value, initial_carry, make_network, param_shapes, policy_step

FORMAT = "hsrl-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.json$")


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt, or does not fit what it is being used with."""


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):09d}"


# ------------------------------------------------------------------------------------------ write


def save_checkpoint(directory: str | os.PathLike, step: int, state: Mapping, meta: Mapping) -> Path:
    """Write `state` (pytrees of arrays) and `meta` (JSON) as checkpoint `step` in `directory`.

    `meta` must hold at least `network` (a NetworkConfig dict) and `env_name`; the format fields,
    step, and the state file's name and hash are added here. Returns the sidecar's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    data = flax.serialization.to_bytes(jax.tree.map(np.asarray, jax.device_get(dict(state))))
    with atomic_path(directory / f"{name}.msgpack") as f:
        f.write(data)
    sidecar = {"format": FORMAT, "version": VERSION, "step": int(step), "created": time.time(), **meta,
               "state_file": f"{name}.msgpack", "state_sha256": hashlib.sha256(data).hexdigest(),
               "state_bytes": len(data)}
    if sidecar.get("spec_json") is not None:
        sidecar["spec_hash"] = spec_hash(sidecar["spec_json"])
    return write_text_atomic(directory / f"{name}.json", json.dumps(sidecar, indent=1, sort_keys=True))


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and any marked final); return the deleted sidecars.

    A sidecar whose `state_file` points outside its folder is refused before anything is deleted.
    """
    if keep < 1:
        return []
    doomed = []
    for path in list_checkpoints(directory)[:-keep]:
        meta = read_checkpoint_meta(path)
        if not meta.get("final"):
            doomed.append((path, state_path(meta)))
    for sidecar, state in doomed:
        sidecar.unlink()
        state.unlink(missing_ok=True)
    return [sidecar for sidecar, _ in doomed]


# ------------------------------------------------------------------------------------------- read


def remove_checkpoint_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a run killed while saving left in its checkpoints folder (call at a run's start)."""
    if not Path(directory).is_dir():
        return []
    return remove_temporaries(directory, "step_*")


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Sidecars of the checkpoints in a folder, oldest (lowest step) first; [] if none or no folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The sidecar of a checkpoint named by a run folder (its newest), a checkpoints folder, or a file."""
    path = Path(path)
    if path.is_dir():
        folder = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        found = list_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoints (step_NNNNNNNNN.json) found")
        return found[-1]
    if path.suffix == ".msgpack":
        path = path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The sidecar JSON of a checkpoint (see `resolve_checkpoint` for what `path` may be)."""
    path = resolve_checkpoint(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an hsrl checkpoint sidecar")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} (this hsrl reads {VERSION})")
    meta["path"] = str(path)
    return meta


def state_path(meta: Mapping) -> Path:
    """The checkpoint's state file: `state_file` must name a plain file in the sidecar's own folder, so a crafted
    sidecar can never make hsrl read or delete a file elsewhere."""
    sidecar = Path(meta["path"])
    name = meta.get("state_file")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{sidecar}: state_file {name!r} is not a file name in the checkpoint's folder; "
                              f"refusing it (it must not hold a path)")
    return sidecar.parent / name


def read_state_bytes(meta: Mapping) -> bytes:
    path = state_path(meta)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{meta['path']}: its state file {path.name} is missing") from None
    if hashlib.sha256(data).hexdigest() != meta["state_sha256"]:
        raise CheckpointError(f"{path}: contents do not match the SHA-256 in {Path(meta['path']).name} (corrupt?)")
    return data


def _shape_tree(tree) -> dict[str, tuple]:
    flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(tree), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(params, config: NetworkConfig, where: str = "checkpoint") -> None:
    """Raise CheckpointError unless `params` has exactly the parameter names and shapes of `config`."""
    want, got = _shape_tree(param_shapes(config)), _shape_tree(params)
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        detail = "; ".join(s for s in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
            ", ".join(f"{k} is {got[k]} not {want[k]}" for k in shapes[:3])) if s)
        raise CheckpointError(f"{where}: parameters do not fit the network {config.class_name} "
                              f"({config.to_json()}): {detail}")


def restore_state(meta: Mapping, target: Mapping) -> dict:
    """The checkpoint's state restored into the structure of `target` (e.g. fresh params + optimiser)."""
    raw = flax.serialization.msgpack_restore(read_state_bytes(meta))
    check_params(raw["params"], NetworkConfig.from_dict(meta["network"]), meta["path"])
    try:
        return flax.serialization.from_state_dict(dict(target), raw)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta['path']}: state does not fit this training setup ({err})") from None


def gate_travel_of(meta: Mapping) -> float | None:
    """How far (logit units) a gated network's gate could have moved by this checkpoint: the summed learning rate of
    its gate logit (`hsrl.rl.networks`, "Reading a gate"); None for a network without a gate, or when unknown.
    Checkpoints record it as `gate_travel`; for those written before the gate had its own rate it is the summed
    learning rate the gate then shared with the network: AWR's constant lr times the steps, online PPO's lr (annealed
    linearly to 0 over the run, with --anneal-lr) summed over the optimiser steps taken."""
    if not NetworkConfig.from_dict(meta["network"]).gated:
        return None
    if "gate_travel" in meta:
        return None if meta["gate_travel"] is None else float(meta["gate_travel"])
    train = meta.get("train_config") or {}
    try:
        lr = float(train["lr"])
        if meta.get("algorithm") == "awr":
            return lr * int(meta["step"])
        if meta.get("algorithm") == "ppo":
            per_update = int(train["update_epochs"]) * int(train["num_minibatches"])
            total = max(1, int(train["steps"]) // (int(train["envs"]) * int(train["num_steps"]))) * per_update
            n = int(meta["step"]) // (int(train["envs"]) * int(train["num_steps"])) * per_update
            return lr * (n - n * (n - 1) / (2 * total)) if train.get("anneal_lr", True) else lr * n
    except (KeyError, TypeError, ValueError):
        pass
    return None


# ---------------------------------------------------------------------------------- compatibility


def check_compatible(meta: Mapping, *, env_name: str | None = None, hidden_size: int | None | str = "skip",
                     spec_json: str | None | str = "skip", allow_spec_mismatch: bool = False,
                     what: str = "the data") -> None:
    """Refuse a checkpoint for inputs it was not trained on: raise CheckpointError saying what differs.

    `hidden_size` None means the inputs carry no hidden state; `spec_json` None means unlabelled inputs.
    Leave either at "skip" to not check it. Spec differences name the fields; `allow_spec_mismatch`
    lets them through (hidden sizes must always agree).
    """
    where = meta.get("path", "checkpoint")
    net = NetworkConfig.from_dict(meta["network"])
    if env_name is not None and env_name != meta["env_name"]:
        raise CheckpointError(f"{where} was trained on {meta['env_name']}, {what} is {env_name}")
    if hidden_size != "skip" and net.uses_hidden:
        if hidden_size is None:
            raise CheckpointError(f"{where} reads hidden states of size {net.hidden_size}, {what} has none")
        if int(hidden_size) != net.hidden_size:
            raise CheckpointError(f"{where} reads hidden states of size {net.hidden_size}, {what} has size "
                                  f"{hidden_size}: they come from different models or layers")
    if spec_json != "skip" and net.uses_hidden:
        diff = spec_differences(meta.get("spec_json"), spec_json)
        if "text_source" in diff:  # text from imported files vs hsrl.text's: no override makes them the same states
            from hsrl.llm.spec import LIVE_TEXT_WHY, text_source

            texts = {"hsrl": "hsrl.text's rendering", "import": "imported text (text_source 'import')"}
            trained, given = texts[text_source(meta.get("spec_json"))], texts[text_source(spec_json)]
            raise CheckpointError(f"{where} was trained on hidden states of {trained}, {what} has states of {given} "
                                  f"(not overridable); of text_source 'import': {LIVE_TEXT_WHY}")
        if diff and not allow_spec_mismatch:
            raise CheckpointError(f"{where} was trained on hidden states of another extraction spec than {what}; "
                                  f"fields that differ: {', '.join(diff)} (override: --allow-spec-mismatch)")


# ----------------------------------------------------------------------------------------- policy


@dataclass(frozen=True, eq=False)
class Policy:
    """A trained actor-critic with everything needed to run it on raw inputs."""

    network: NetworkConfig
    params: object
    hidden_stats: HiddenStats | None
    spec_json: str | None
    env_name: str
    step: int = 0
    meta: Mapping | None = None  # the checkpoint sidecar, when loaded from one

    def __post_init__(self):
        if self.network.uses_hidden:
            if self.hidden_stats is None:
                raise CheckpointError(f"{self.network.class_name} needs hidden-state statistics")
            if self.hidden_stats.hidden_size != self.network.hidden_size:
                raise CheckpointError(f"hidden statistics have size {self.hidden_stats.hidden_size}, "
                                      f"the network reads {self.network.hidden_size}")

    @property
    def uses_hidden(self) -> bool:
        return self.network.uses_hidden

    @property
    def recurrent(self) -> bool:
        return self.network.recurrent

    @property
    def module(self):
        return make_network(self.network)

    @property
    def gate(self) -> float | None:
        """A gated network's learned gate, sigmoid(g) in (0, 1) (`--fusion gated`; None otherwise): near 0 (it starts
        at 0.0025) the policy does not read its hidden state, where `gate_travel` says it could have moved."""
        return gate_value(self.params)

    @property
    def gate_travel(self) -> float | None:
        """How far the gate's logit could have moved in training (`gate_travel_of` the checkpoint; None without a
        gate or a checkpoint, or when unknown): `hsrl.rl.networks.gate_could_open` says whether it could open."""
        return None if self.meta is None else gate_travel_of(self.meta)

    def initial_carry(self, batch: int) -> jax.Array:
        """The memory `forward` starts from (zeros; a (B, 1) placeholder for a feed-forward policy)."""
        return initial_carry(self.network, batch)

    @functools.cached_property
    def _forward(self):
        step = policy_step(self.network)

        def apply(params, carry, start, obs, hidden_raw):
            hidden = None if hidden_raw is None else normalize_hidden(hidden_raw, self.hidden_stats)
            return step(params, carry, start, obs, hidden)

        return apply

    def forward(self, carry, start, obs, hidden_raw=None):
        """(carry, logits (B, A), value (B,)) of one step of any policy: `carry` from `initial_carry` or the previous
        step, `start` (B,) bool where the observation begins an episode (a GRU zeroes its carry there first).
        Not jitted by itself: call it inside a jitted rollout."""
        return self._forward(self.params, carry, start, obs, self._hidden_arg(hidden_raw))

    def normalize(self, hidden_raw):
        """Raw pooled hidden states (..., H) -> z-scored with the checkpoint's statistics."""
        if not self.uses_hidden:
            raise ValueError(f"{self.network.class_name} takes no hidden state")
        return normalize_hidden(hidden_raw, self.hidden_stats)

    @functools.cached_property
    def _apply(self):
        module = self.module

        def apply(params, obs, hidden_raw):
            hidden = None if hidden_raw is None else normalize_hidden(hidden_raw, self.hidden_stats)
            return module.apply(params, obs, hidden)

        return jax.jit(apply)

    def _hidden_arg(self, hidden_raw):
        if self.uses_hidden and hidden_raw is None:
            raise ValueError(f"{self.network.class_name} needs raw hidden states (B, {self.network.hidden_size})")
        if not self.uses_hidden and hidden_raw is not None:
            raise ValueError(f"{self.network.class_name} takes no hidden state (it is the baseline); pass None")
        if hidden_raw is not None and hidden_raw.shape[-1] != self.network.hidden_size:
            raise ValueError(f"hidden states have size {hidden_raw.shape[-1]}, the policy reads "
                             f"{self.network.hidden_size}")
        return hidden_raw

    def apply(self, obs, hidden_raw=None):
        """(logits (B, A), value (B,)) for observations (B, *obs_shape) and raw hidden states (B, H) or None; a
        feed-forward policy only (a recurrent one acts through `step`, carrying its memory)."""
        if self.recurrent:
            raise ValueError(f"{self.network.class_name} is recurrent: act with policy.forward(carry, start, obs, hidden)")
        return self._apply(self.params, obs, self._hidden_arg(hidden_raw))

    def act(self, obs, hidden_raw=None, key: jax.Array | None = None, greedy: bool = False):
        """Actions (B,) int32: sampled with `key`, or the most likely ones when `greedy` (no key needed)."""
        logits, _ = self.apply(obs, hidden_raw)
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if key is None:
            raise ValueError("act needs a random key unless greedy=True")
        return jax.random.categorical(key, logits).astype(jnp.int32)

    def check_compatible(self, **kw) -> None:
        """`check_compatible` against this policy's checkpoint (env_name, hidden_size, spec_json, ...)."""
        check_compatible(self.sidecar(), **kw)

    def sidecar(self) -> dict:
        if self.meta is not None:
            return dict(self.meta)
        return {"network": self.network.to_dict(), "env_name": self.env_name, "spec_json": self.spec_json,
                "path": "policy"}


def load_policy(path: str | os.PathLike) -> Policy:
    """The policy of a checkpoint: a run folder (newest checkpoint), a checkpoints folder, or a file of one."""
    meta = read_checkpoint_meta(path)
    network = NetworkConfig.from_dict(meta["network"])
    raw = flax.serialization.msgpack_restore(read_state_bytes(meta))
    params = raw["params"]
    check_params(params, network, meta["path"])
    params = jax.tree.map(jnp.asarray, params)
    stats = HiddenStats.from_dict(meta["hidden_stats"]) if meta.get("hidden_stats") else None
    return Policy(network=network, params=params, hidden_stats=stats, spec_json=meta.get("spec_json"),
                  env_name=meta["env_name"], step=int(meta["step"]), meta=meta)


def checkpoint_policy(path: str, env_name: str):
    """A trained policy for `hsrl.data.collect.collect`: `(key, obs) -> (sampled action, its log-probability)`."""
    policy = load_policy(path)
    policy.check_compatible(env_name=env_name, what="this collection")
    if policy.uses_hidden:
        raise CheckpointError(f"{path} reads hidden states; collect with a policy that does not (a --no-hidden "
                              f"run), then label the data")
    if policy.recurrent:
        raise CheckpointError(f"{path} is a recurrent (--policy gru) policy; collect rolls out feed-forward ones")
    module, params = policy.module, policy.params

    def act(key, obs):
        logits, _ = module.apply(params, obs, None)
        action = jax.random.categorical(key, logits)
        return action, jax.nn.log_softmax(logits)[jnp.arange(obs.shape[0]), action]

    return act
