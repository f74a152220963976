"""Seeds of one AWR run as one compiled program: `train_awr_seeds` (and `train_awr`, a group of one seed).

Honest answers need seeds, so an experiment trains the same settings K times. A group of K seeds shares one data
load, one hidden-state normalisation and one compiled program, and its seeds' parameters, Adam states, steps and
sampling keys advance in lockstep: every jitted call advances all K seeds by the same steps (as many per call as a
single run takes, `--steps-per-call`). Each seed draws the batches its single run draws (the positions of step t are
`randint(fold_in(key, t), ...)` with its own key), writes its checkpoints, metrics.jsonl and TensorBoard events to its
own run folder, and a group resumes after a kill as a single run does.

How a group runs its seeds (`seed_axis`, `hsrl.rl.awr.over_seeds` and `each_seed`):

- "loop", the default on CPU: each jitted call runs the one-seed program for every seed in turn (all of them queued,
  so the device never waits on Python). Each seed runs the single run's program, so its parameters and metrics are
  the single run's bit for bit. On a CPU one AWR step already keeps the cores busy (its first layer's matrix product
  runs near their peak), so wider products do not run faster (a vmapped step measured slower); what a group saves
  there is the work around the steps: one data load, one normalisation, one compile.
- "vmap", the default on accelerators: `jax.vmap` batches the seeds, so every matrix product is K seeds wide, which
  is what fills a GPU. XLA sums a batched product in another order than a lone one, so a seed's numbers equal its
  single run's to float rounding (about 1e-7 relative after a step; training carries such differences on, as it
  does any other rounding). Every group of two or more computes a seed alike, and a seed left alone in a vmap
  program is padded with a copy of itself, so a resumed group ends where an uninterrupted one does.

Resume: the seeds save at the same steps, each folder atomically, and old checkpoints are pruned only once all K are
saved, so a kill leaves every folder holding the step where all of them agree. A rerun resumes the unfinished seeds
from the newest step they all hold (a checkpoint past it, of a seed that saved before the kill, is deleted and its
steps trained again, to the same numbers); a finished seed (its checkpoint at --steps) is left as it is.

Memory: on a device that reports its memory (a GPU), a group larger than fits runs as several programs one after
another (`seeds_that_fit`: XLA's memory analysis of the one-seed program, 80% of the device's limit after the data).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from hsrl.atomic import write_text_atomic
from hsrl.data.stats import HiddenStats
from hsrl.errors import InputError
from hsrl.rl.awr import (
    HOST_BLOCK_BYTES, IDENTITY_FIELDS, RUN_CONFIG_FILE, SEED_AXES, AWRData, AWRHyper, AWRState, Batch, DeviceBatches,
    HostBatches, Interval, TrainAWRConfig, _check_same_run, _run_config, block_schedule, device_memory_limit,
    hidden_stats_of, init_state, load_awr_data, make_batches_block, make_device_block, make_update, run,
)
from hsrl.rl.checkpoint import (
    CHECKPOINT_DIR, check_compatible, gate_travel_of, list_checkpoints, prune_checkpoints, read_checkpoint_meta,
    remove_checkpoint_temporaries, restore_state, save_checkpoint, state_path,
)
from hsrl.rl.metrics import MetricsLogger
from hsrl.rl.networks import NetworkConfig

MEMORY_FRACTION = 0.8  # of the device's memory limit a group's programs may plan to use


def default_seed_axis(backend: str | None = None) -> str:
    """"loop" on CPU (bit-identical to single runs; wider products gain nothing there), "vmap" on accelerators."""
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


def check_group(configs: Sequence[TrainAWRConfig]) -> None:
    """A group trains one set of settings: every field but `seed` and `out` equal (the data folder compared
    resolved), and one run folder per seed; else one `InputError` naming what differs."""
    if not configs:
        raise InputError("a group of AWR seeds needs at least one config")
    first = configs[0]
    for c in configs[1:]:
        differ = [f.name for f in dataclasses.fields(TrainAWRConfig)
                  if f.name not in ("seed", "out", "data_dir") and getattr(c, f.name) != getattr(first, f.name)]
        if Path(c.data_dir).resolve() != Path(first.data_dir).resolve():
            differ.insert(0, "data_dir")
        if differ:
            flags = ", ".join(f"--{k.replace('_', '-')} {getattr(first, k)!r} / {getattr(c, k)!r}" for k in differ)
            raise InputError(f"a group of seeds trains one set of settings; {first.out} and {c.out} differ in {flags}: "
                             f"train them in separate groups")
    outs = [Path(c.out).resolve() for c in configs]
    for i, o in enumerate(outs):
        if o in outs[:i]:
            raise InputError(f"two seeds of a group write to one run folder, {o}: give each seed its own --out")


@dataclasses.dataclass
class _Seed:
    """One seed's run folder: its checkpoints, where it resumes, and what its checkpoints carry."""

    config: TrainAWRConfig
    steps: dict[int, Path]  # step -> sidecar of each checkpoint in the folder
    meta: dict | None = None  # the checkpoint resumed from (None: a fresh start)
    stats: HiddenStats | None = None
    spec_json: str | None = None
    state: AWRState | None = None
    logged: dict = dataclasses.field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    @property
    def newest(self) -> int:
        return max(self.steps, default=0)


def _open_seed(config: TrainAWRConfig, data: AWRData, network: NetworkConfig) -> _Seed:
    """Check a seed's folder against the data and its settings (as a single run does), record its settings, list its
    checkpoints."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_checkpoint_temporaries(out / CHECKPOINT_DIR)
    found = list_checkpoints(out / CHECKPOINT_DIR)
    if found:
        meta = read_checkpoint_meta(found[-1])
        check_compatible(meta, env_name=data.env_name, hidden_size=data.hidden_size, spec_json=data.spec_json,
                         allow_spec_mismatch=config.allow_spec_mismatch, what=f"the data in {config.data_dir}")
        saved_net = NetworkConfig.from_dict(meta["network"])
        if saved_net != network:
            raise InputError(f"{meta['path']} holds a {saved_net.to_json()} network; this data and these flags "
                             f"give {network.to_json()}: use another --out")
    _check_same_run(out, config)
    write_text_atomic(out / RUN_CONFIG_FILE, json.dumps(_run_config(config), indent=1, sort_keys=True))
    return _Seed(config, {int(p.stem.removeprefix("step_")): p for p in found})  # step_NNNNNNNNN.json


def _resume_at(seed: _Seed, step: int) -> None:
    """Resume `seed` from its checkpoint at `step` (0 without one: a fresh start); checkpoints past it are deleted
    (sidecar first, as pruning does), so its folder's newest checkpoint is where it stands."""
    for s, sidecar in sorted(seed.steps.items()):
        if s > step:
            meta = read_checkpoint_meta(sidecar)
            sidecar.unlink()
            state_path(meta).unlink(missing_ok=True)
            print(f"{seed.out}: back to step {step}, where every seed of its group has a checkpoint (its step {s} is "
                  f"trained again)")
    seed.meta = read_checkpoint_meta(seed.steps[step]) if step in seed.steps else None
    seed.steps = {s: p for s, p in seed.steps.items() if s <= step}


def seeds_that_fit(memory, shared_bytes: int, limit: int, fraction: float = MEMORY_FRACTION) -> int:
    """How many seeds one program may hold on a device with `limit` bytes: `memory` is XLA's memory analysis of the
    one-seed program (`compiled.memory_analysis()`), `shared_bytes` what every seed reads (the data on the device,
    among its arguments). Each seed is counted at the program's arguments (less the shared), outputs and
    temporaries, which a vmapped program multiplies by K (a mapped one needs less); at least 1."""
    per_seed = memory.argument_size_in_bytes - shared_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    return max(1, int((fraction * limit - shared_bytes) // max(1, per_seed)))


def _stack(states: list[AWRState], device) -> AWRState:
    """The seeds' states along a leading axis, on `device`: stacked on the host (a few parameter-sized arrays) and put
    there once."""
    return jax.device_put(jax.tree.map(lambda *x: np.stack(x), *jax.device_get(states)), device)


def train_awr(config: TrainAWRConfig) -> dict:
    """Train (or resume) an AWR run; returns a summary dict (final step, last metrics, checkpoint path): the group
    loop below with a group of one seed."""
    return train_seeds([config], None)[0]


def train_awr_seeds(configs: Sequence[TrainAWRConfig], seed_axis: str = "auto") -> list[dict]:
    """Train (or resume) the seeds of one AWR setting as one compiled program; one summary per config, in order (as
    `train_awr` returns). `configs` differ only in `seed` and `out` (`check_group`). `seed_axis`: "loop" (the one-seed
    program for each seed: bit-identical to single runs), "vmap" (K-wide matrix products; equal to single runs to float
    rounding), or "auto" (`default_seed_axis`: loop on CPU, vmap on accelerators). See the module docstring for resume
    and memory."""
    axis = default_seed_axis() if seed_axis == "auto" else seed_axis
    if axis not in SEED_AXES:
        raise InputError(f"seed axis {seed_axis!r}: expected auto, {' or '.join(SEED_AXES)}")
    return train_seeds(list(configs), axis)


def train_seeds(configs: list[TrainAWRConfig], seed_axis: str | None) -> list[dict]:
    """`train_awr_seeds` with a resolved `seed_axis`; None trains one config as a plain single run (`train_awr`)."""
    for config in configs:
        config.check()
    check_group(configs)
    if seed_axis is None and len(configs) != 1:
        raise ValueError("a program without a seed axis trains one seed")
    # before any work: a folder of a run with other hyperparameters is refused (another --data-dir is checked once
    # the data is read, where its checkpoint names what differs: hidden size, spec)
    for config in configs:
        _check_same_run(Path(config.out), config, [k for k in IDENTITY_FIELDS if k != "data_dir"])
    from hsrl.env import env_info

    # --- data, once for every seed
    first = configs[0]
    data = load_awr_data(first.data_dir, first.hidden, first.truncated, show_progress=first.progress,
                         cache_dir=first.cache_dir, all_tokens_valid=first.all_tokens_valid,
                         control=first.control, hidden_skip_n=first.hidden_skip_n, control_map=first.control_map)
    info = env_info(data.env_name)
    network = NetworkConfig.for_env(data.arrays["obs"].shape[1:], info.num_actions, data.hidden_size,
                                    width=first.width, activation=first.activation, fusion=first.fusion)
    hyper = AWRHyper.of(first)

    # --- resume or start: finished seeds are left alone, the others resume from the newest step all of them hold
    seeds = [_open_seed(c, data, network) for c in configs]
    summaries: dict[int, dict] = {}
    for i, seed in enumerate(seeds):
        if seed.newest >= first.steps:
            meta = read_checkpoint_meta(seed.steps[seed.newest])
            print(f"{seed.out}: already trained to step {seed.newest} (--steps {first.steps}); nothing to do")
            summaries[i] = {"step": seed.newest, "checkpoint": meta["path"], "metrics": {}, "resumed": True,
                            "gate_travel": gate_travel_of(meta)}
    todo = [i for i in range(len(seeds)) if i not in summaries]
    if todo:
        common = max(set.intersection(*[{0, *seeds[i].steps} for i in todo]))
        data_stats = None
        for i in todo:
            seed = seeds[i]
            _resume_at(seed, common)
            if seed.meta is not None and network.uses_hidden:
                seed.stats = HiddenStats.from_dict(seed.meta["hidden_stats"])  # keep normalising as the run began
                seed.spec_json = seed.meta.get("spec_json")
            elif network.uses_hidden:
                if data_stats is None:
                    data_stats = hidden_stats_of(data.arrays["hidden_state"], data.spec_json)
                seed.stats, seed.spec_json = data_stats, data.spec_json
        # seeds resumed from checkpoints of other data may normalise otherwise: one program per normalisation
        parts: dict[str, list[int]] = {}
        for i in todo:
            key = json.dumps(None if seeds[i].stats is None else seeds[i].stats.to_dict(), sort_keys=True)
            parts.setdefault(key, []).append(i)
        trainer = _Trainer(data, network, hyper, first, seed_axis)
        for part in parts.values():
            summaries.update(zip(part, trainer.train([seeds[i] for i in part])))
    return [summaries[i] for i in range(len(seeds))]


class _Trainer:
    """Trains groups of seeds of one setting on the data, which is put on the device (or handed to the host loader)
    once for all of them."""

    def __init__(self, data: AWRData, network: NetworkConfig, hyper: AWRHyper, config: TrainAWRConfig,
                 seed_axis: str | None):
        self.data, self.network, self.hyper, self.config, self.seed_axis = data, network, hyper, config, seed_axis
        self.device = jax.devices()[0]
        limit = config.device_data_max_gb * 1e9
        self.memory = device_memory_limit(self.device)
        if self.memory is not None:
            limit = min(limit, 0.5 * self.memory)
        self.on_device = config.device_data if config.device_data is not None else data.nbytes <= limit
        self.row_bytes = sum(a[0].nbytes for a in data.arrays.values()) * config.batch_size
        self.described = f"{data.nbytes / 1e6:.1f} MB"  # before the host copy is dropped
        self.placed = None
        if self.on_device:
            self.placed = jax.device_put({**data.arrays, "rows": data.rows}, self.device)
            data.arrays.clear()  # the host copy is no longer needed

    def train(self, seeds: list[_Seed]) -> list[dict]:
        """Train seeds that share a normalisation, in as many programs as the device's memory needs."""
        stats = seeds[0].stats
        update = make_update(self.network, self.hyper, stats)
        for seed in seeds:
            state = init_state(self.network, self.hyper, seed.config.seed, self.device)
            if seed.meta is not None:
                state = AWRState(**restore_state(seed.meta, state._asdict()))
                state = jax.device_put(state._replace(step=np.asarray(state.step, np.int32)), self.device)
            seed.state = state
        fit = len(seeds)  # a loop group holds one program's memory and the seeds' states
        if self.memory is not None and len(seeds) > 1 and self.seed_axis == "vmap":
            fit = self._seeds_that_fit(update, seeds[0].state) or fit
        out = []
        for i in range(0, len(seeds), fit):
            out += self._program(seeds[i:i + fit], update)
        return out

    def _per_call(self, k: int) -> int:
        config = self.config
        if self.on_device:
            return config.steps_per_call
        return max(1, min(config.steps_per_call, HOST_BLOCK_BYTES // (self.row_bytes * k)))

    def _seeds_that_fit(self, update, state: AWRState) -> int | None:
        """`seeds_that_fit` from the one-seed program's memory analysis (compiled, not run); None where XLA gives
        none."""
        per_call = self._per_call(1)
        if self.on_device:
            shared = sum(x.nbytes for x in jax.tree.leaves(self.placed))
            lowered = make_device_block(update, self.config.batch_size).lower(state, self.placed, per_call)
        else:
            shared = 0
            b = self.config.batch_size
            shape = lambda k: jax.ShapeDtypeStruct((per_call, b) + self.data.arrays[k].shape[1:],  # noqa: E731
                                                   self.data.arrays[k].dtype)
            batch = Batch(shape("obs"), shape("action"), shape("return_to_go"),
                          shape("hidden_state") if "hidden_state" in self.data.arrays else None)
            lowered = make_batches_block(update).lower(state, batch)
        memory = lowered.compile().memory_analysis()
        return None if memory is None else seeds_that_fit(memory, shared, self.memory)

    def _program(self, seeds: list[_Seed], update) -> list[dict]:
        """One compiled program for `seeds`, all at the same step, to --steps."""
        config, network, hyper, data = self.config, self.network, self.hyper, self.data
        k = len(seeds)
        axis = None if (self.seed_axis == "loop" and k == 1) else self.seed_axis
        states = [s.state for s in seeds]
        if axis == "vmap" and k == 1:  # a lone seed keeps the numbers of a vmapped group: padded with its copy
            states.append(states[0])
        if axis is None:
            state = states[0]
        else:  # "loop": the seeds' states side by side; "vmap": along a leading axis
            state = tuple(states) if axis == "loop" else _stack(states, self.device)
        for s in seeds:
            s.state = None
        start = seeds[0].newest
        resumed = seeds[0].meta is not None
        per_call = self._per_call(len(states))
        blocks = block_schedule(start, config.steps, per_call, (config.log_every, config.save_every))
        where = "device" if self.on_device else "host loader"
        group = "" if axis is None else f" {k} seeds as one group ({axis})"
        print(f"{'resuming at step ' + str(start) if resumed else 'starting'}{group}: {network.class_name} on "
              f"{data.env_name}, {len(data.rows)} of {data.num_rows} rows ({data.dropped_truncated} in unfinished "
              f"episodes left out), hidden size {data.hidden_size}, data {self.described} via {where}, {per_call} "
              f"steps per call")
        if self.on_device:
            batches = DeviceBatches(update, None, None, config.batch_size, self.device, axis, placed=self.placed)
        else:
            rng = np.stack([np.asarray(s.rng) for s in states]) if axis == "loop" else state.rng
            batches = HostBatches(update, data.arrays, data.rows, config.batch_size, self.device, rng, blocks, axis)

        # how far the gate could have moved by step s (logit units): the travel saved with the checkpoint resumed
        # from (an earlier --steps may have given another rate), then this run's rate per step
        before = [(gate_travel_of(s.meta) or 0.0) if s.meta is not None else 0.0 for s in seeds]

        def travel(i: int, step: int) -> float | None:
            return before[i] + (step - start) * hyper.gate_lr if network.gated else None

        sidecars = [{
            "algorithm": "awr", "network": network.to_dict(), "env_name": data.env_name, "spec_json": s.spec_json,
            "hidden_stats": None if s.stats is None else s.stats.to_dict(),
            "data_dir": str(Path(config.data_dir).resolve()), "seed": s.config.seed,
            "train_config": _run_config(s.config), "final": False} for s in seeds]

        def save(state, step: int, final: bool = False) -> list[Path]:
            host = jax.device_get(state)  # one transfer for every seed
            one = {None: lambda i: host, "loop": lambda i: host[i],
                   "vmap": lambda i: jax.tree.map(lambda x: x[i], host)}[axis]
            paths = [save_checkpoint(s.ckpt_dir, step, one(i)._asdict(),
                                     {**sidecars[i], "final": final, "gate_travel": travel(i, step)})
                     for i, s in enumerate(seeds)]
            for s in seeds:  # only once every seed has saved: a kill leaves each folder the step all of them hold
                prune_checkpoints(s.ckpt_dir, s.config.keep)
            return paths

        # --- the loop
        from tqdm.auto import tqdm

        loggers = []
        try:
            for s in seeds:
                loggers.append(MetricsLogger(s.out, resume_step=start if resumed else None,
                                             tensorboard=config.tensorboard))
                if not resumed:
                    loggers[-1].text("config", "```\n" + json.dumps(_run_config(s.config), indent=1) + "\n```")
            bar = tqdm(total=config.steps, initial=start, unit="step", disable=not config.progress,
                       desc="train-awr" if axis is None else f"train-awr x{k}", dynamic_ncols=True)
            interval = Interval(start, config.batch_size, None if axis is None else len(states))

            def after_block(state, step, length, metrics):
                interval.add(length, metrics)
                if step % config.log_every == 0 or step == config.steps:
                    values = interval.close(step)
                    for i, (s, v) in enumerate(zip(seeds, [values] if axis is None else values)):
                        if network.gated:
                            v["hidden/gate_travel"] = travel(i, step)
                        s.logged = loggers[i].log(step, v)
                    v = values if axis is None else values[0]
                    bar.set_postfix(critic=f"{v['critic_loss']:.4g}", actor=f"{v['actor_loss']:.4g}",
                                    ev=f"{v['explained_variance']:.3f}", refresh=False)
                if step % config.save_every == 0 and step != config.steps:
                    save(state, step)

            try:
                state = run(state, batches, blocks, after_block, bar.update)
                paths = save(state, config.steps, final=True)
            finally:
                bar.close()
                batches.close()
        finally:
            for logger in loggers:
                logger.close()
        return [{"step": config.steps, "checkpoint": str(path), "metrics": s.logged, "resumed": resumed,
                 "on_device": self.on_device, "network": network.class_name, "gate_travel": travel(i, config.steps),
                 "seeds_in_program": k, "seed_axis": axis}
                for i, (s, path) in enumerate(zip(seeds, paths))]
