"""What lets a long online run stop and go on: its state as arrays, the flags a resume must keep, and preemption.

`pack_tree` / `unpack_tree` turn any pytree of arrays (the env state, the runner, the GRU carry, the optimiser
state) into a flat `{"00000": array, ...}` dict that a checkpoint's msgpack holds, and back into the structure of
a freshly built one; a leaf of another shape or dtype (another env, another network) is refused naming the part.

`check_same_run(out, config)`: a rerun into a run folder resumes only with the flags that made it. Every field of
the config counts, except those that change where or how fast the run goes (`RESUME_FREE`); a field added later
compares at its default. Of the free flags, those that choose where and how the LLM's states are computed
(`RECORDED_ON_RESUME`: another server, another device, another batch composition, a state cache filled elsewhere)
can move the states at float rounding, never more (the extraction spec itself is checked on resume): moving machines
is what resuming is for, so they stay free, and `resume_changes` lists each change (step, flag, old, new) for the
run to record in its metrics, run config, checkpoints and summary.

`Preemption`: while it is active, the first SIGTERM or SIGINT asks the loop to stop after the current update (the
loop saves and raises `Preempted`, which `hsrl` turns into exit code `PREEMPTED_EXIT_CODE`); it also restores the
signals' default actions, so a second signal ends the process at once. Every file is written atomically, so that
never corrupts the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import threading
from pathlib import Path

import jax
import numpy as np

from hsrl.errors import PREEMPTED_EXIT_CODE, InputError, Preempted  # noqa: F401  (re-exported)

# flags that change where or how fast an online run goes, never the numbers it computes: free on resume
RESUME_FREE = frozenset({"out", "progress", "save_every", "keep", "save_trajectories", "save_trajectories_max_gb",
                         "llm_batch_size", "device", "cache", "no_cache", "server", "token", "allow_spec_mismatch"})
# free flags that choose where and how the LLM's states are computed: a resume that changes one records it
RECORDED_ON_RESUME = frozenset({"server", "device", "llm_batch_size", "cache", "no_cache"})
RUN_CONFIG_FILE = "run_config.json"


def pack_tree(tree) -> dict[str, np.ndarray]:
    """The leaves of a pytree as host arrays, keyed by their position."""
    return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(jax.device_get(tree)))}


def unpack_tree(packed: dict, target, what: str):
    """`target`'s structure (arrays or `jax.ShapeDtypeStruct`s) filled with the packed leaves; an InputError naming
    the part if they do not fit."""
    leaves, treedef = jax.tree.flatten(target)
    if len(packed) != len(leaves):
        raise InputError(f"the saved {what} has {len(packed)} arrays, this run's has {len(leaves)}: it was saved by "
                         f"another setup (env, network or hsrl version); use another --out")
    out = []
    for i, leaf in enumerate(leaves):
        saved = np.asarray(packed[f"{i:05d}"])
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)  # an array or a ShapeDtypeStruct: only these count
        if saved.shape != shape or saved.dtype != dtype:
            raise InputError(f"the saved {what} holds an array of {saved.dtype}{list(saved.shape)} where this run "
                             f"has {dtype}{list(shape)}: it was saved by another setup; use another --out")
        out.append(jax.numpy.asarray(saved))
    return jax.tree.unflatten(treedef, out)


def run_identity(config) -> dict:
    """The config's fields that define the numbers a run computes (everything but `RESUME_FREE`)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUME_FREE}


def settings_hash(config) -> str:
    """A short hash of `run_identity` (fields at their defaults left out, so that a field added later changes
    nothing): what the chunks a run saves carry, so that a run never takes another's chunks for its own."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    identity = {k: v for k, v in run_identity(config).items() if k not in defaults or defaults[k] != v}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resume_changes(saved_config: dict, config, step: int) -> list[dict]:
    """The `RECORDED_ON_RESUME` flags whose value differs from `saved_config` (the config a checkpoint was saved
    with, as `public_config` wrote it), one `{"step", "flag", "old", "new"}` each, at the checkpoint's `step`."""
    from hsrl.redact import public_config

    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    mine = public_config(config)
    return [{"step": int(step), "flag": k, "old": saved_config.get(k, defaults.get(k)), "new": mine[k]}
            for k in sorted(RECORDED_ON_RESUME) if saved_config.get(k, defaults.get(k)) != mine[k]]


def check_same_run(out: Path, config) -> None:
    """Refuse to resume the run in `out` with flags that change what it computes, naming each one."""
    path = Path(out) / RUN_CONFIG_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); use another --out") from None
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    mine = json.loads(json.dumps(run_identity(config)))  # tuples as lists, as the file stores them
    differ = [k for k, v in mine.items() if saved.get(k, defaults.get(k)) != v]
    if differ:
        flags = ", ".join(f"--{k.replace('_', '-')} {saved.get(k, defaults.get(k))!r} (now {mine[k]!r})"
                          for k in differ)
        raise InputError(f"{out} holds a run started with other settings: {flags}; use another --out, or the same "
                         f"settings to resume")


class Preemption:
    """Context manager: the first SIGTERM/SIGINT sets `requested` (the loop saves and stops), and puts back the
    default actions so that a second one ends the process at once. Outside the main thread (where Python cannot
    install handlers) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
