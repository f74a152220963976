"""Offline Advantage-Weighted Regression (AWR), with or without LLM hidden states (`hsrl train-awr`).

The algorithm, per gradient step on a batch of (s, h, a, R) drawn uniformly from the dataset, where
R is the discounted `return_to_go` and h the hidden state z-scored by `normalize_hidden`:

    A      = R - V(s, h)
    w      = stop_gradient(min(exp(A / beta), max_weight))
    actor  = -mean(w * log pi(a | s, h))
    critic = 0.5 * mean(A^2)
    loss   = actor + critic                       (Adam; defaults beta 10, max weight 20, batch 256, lr 3e-4)

Speed: the update is one pure function, and K updates run per jitted call as a `lax.scan`. The batch
of step t is a pure function of (seed, t): positions `randint(fold_in(key, t), (B,), 0, rows)`. When
the data fits the device (`--device-data`, automatic under `--device-data-max-gb`) it is put there
once and batches are gathered inside the scan: nothing crosses from the host during training.
Otherwise a background thread draws the same positions, gathers the rows from host memory and
`device_put`s K batches ahead (a bounded queue), so the step never waits on the loader
(`benchmarks/bench_awr.py` measures it). Either way step t sees the same batch, so a resumed run
repeats an uninterrupted one. The training loop (`train_awr`) lives in `hsrl.rl.awr_seeds`, which also trains a
group of seeds as one compiled program (`train_awr_seeds`, the blocks' `seed_axis`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hsrl.data.chunks import DataFileError, inspect_chunk, list_chunks
from hsrl.data.dataset import check_token_counts, load_dataset
from hsrl.data.stats import HiddenStats, RunningMoments, normalize_hidden
from hsrl.errors import InputError
from hsrl.redact import public_config
from hsrl.rl import cpu_ops
from hsrl.rl.networks import (ACTIVATIONS, FUSIONS, NetworkConfig, gate, gate_learning_rate, gate_optimizer,
                              init_params, make_network)

RUN_CONFIG_FILE = "run_config.json"
HOST_BLOCK_BYTES = 64 << 20  # host loader: at most this many bytes of batches per jitted call


# ----------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TrainAWRConfig:
    """Train a policy offline with Advantage-Weighted Regression, with or without LLM hidden states.

    A = return_to_go - V(s); actor loss -mean(min(exp(A / beta), max_weight) * log pi(a|s)) (weight not
    back-propagated); critic loss 0.5 * mean(A^2); Adam. With hidden states (the default) the network
    concatenates the z-scored hidden state with the observation features (ActorCriticConvAug for pixels,
    ActorCriticMLPAug for symbolic observations); --no-hidden trains the baseline (ActorCriticConv /
    ActorCriticMLP). --fusion gated adds a gated projection of the hidden state to the features instead (its gate
    starts closed, learns at its own rate sized from --steps, and is logged as hidden/gate with hidden/gate_travel);
    --hidden-skip-n N gives each row its environment's state of the last refresh, every N steps and at episode starts,
    as online PPO's --skip-n. Writes OUT/metrics.jsonl, OUT/tensorboard/,
    and OUT/checkpoints/step_NNNNNNNNN.{msgpack,json} (network config, params, optimiser state, step, rng, hidden
    statistics, extraction spec). Rerunning the
    same command resumes from the newest checkpoint; a larger --steps continues a finished run.
    """

    data_dir: str = dataclasses.field(metadata={"positional": True, "help": "dataset folder with return_to_go "
                                                                "(`hsrl returns`) and, unless --no-hidden, hidden_state "
                                                                "(pooled, or per-token: read as each row's pooled tokens)"})
    out: str = dataclasses.field(default="runs/awr", metadata={"help": "run folder (created; rerun to resume; a "
                                                                       "folder of another run is refused)"})
    hidden: bool = dataclasses.field(default=True, metadata={"help": "read hidden states (default: on; --no-hidden: the baseline)"})
    control: bool = dataclasses.field(default=False, metadata={
        "help": "the control: read a fixed random projection of the observation to the data's hidden width instead "
                "of its hidden states (same network and normalisation, no information the observation lacks); for "
                "data labelled with --history K, of the observation and its episode's K previous observations and "
                "actions, as the prompts showed them"})
    control_map: str = dataclasses.field(default="linear", metadata={
        "help": "the control's map (with --control): linear (a fixed random projection) or relu (fixed random ReLU "
                "features of the same width: relu(x W + b))"})
    steps: int = dataclasses.field(default=100_000, metadata={"help": "total gradient steps"})
    batch_size: int = dataclasses.field(default=256, metadata={"help": "samples per gradient step"})
    lr: float = dataclasses.field(default=3e-4, metadata={"help": "Adam learning rate"})
    beta: float = dataclasses.field(default=10.0, metadata={"help": "AWR temperature: weight = exp(advantage / beta)"})
    max_weight: float = dataclasses.field(default=20.0, metadata={"help": "clip of the AWR weight"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (initialisation and batch sampling; recorded)"})
    log_every: int = dataclasses.field(default=1000, metadata={"help": "steps between metric lines (means over the interval)"})
    save_every: int = dataclasses.field(default=10_000, metadata={"help": "steps between checkpoints (a final one is always written)"})
    keep: int = dataclasses.field(default=3, metadata={"help": "checkpoints kept (the newest; final ones are never deleted)"})
    steps_per_call: int = dataclasses.field(default=100, metadata={"help": "gradient steps per jitted call (lax.scan); the host "
                                                               "loader lowers it to keep a call's batches under 64 MB"})
    device_data: bool | None = dataclasses.field(default=None, metadata={
        "help": "put the whole dataset on the device and sample batches there (default: when it fits "
                "--device-data-max-gb and half the device memory; --no-device-data: background host loader)"})
    device_data_max_gb: float = dataclasses.field(default=4.0, metadata={"help": "largest dataset put on the device automatically"})
    cache_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "load the data through memory-mapped .npy files in this folder (built on first use; for data "
                "larger than memory)"})
    truncated: bool = dataclasses.field(default=False, metadata={"help": "also train on rows of episodes still running at the end "
                                                             "of the data (their return_to_go is cut off)"})
    all_tokens_valid: bool = dataclasses.field(default=False, metadata={
        "help": "per-token hidden states (N, T, H) stored without hidden_tokens: every one of the T positions is a "
                "real token, so pool over all of them (without this flag such files are refused)"})
    width: int = dataclasses.field(default=512, metadata={"help": "features of the encoder and the head layers"})
    activation: str = dataclasses.field(default="relu", metadata={"help": f"dense-layer activation: {', '.join(ACTIVATIONS)}"})
    fusion: str = dataclasses.field(default="concat", metadata={
        "help": "how the hidden state joins the observation features: concat, or gated (features + sigmoid(g) * W h, "
                "W h scaled to unit RMS, the gate g learned from closed at sigmoid(-6) by its own Adam at a constant "
                "rate of 12 / the run's optimiser steps (at most 0.05), so it can travel 12 logit units in any run; "
                "logged as hidden/gate with hidden/gate_travel, how far it could have moved: a gate that stays closed "
                "where it could have opened (travel at least 6) says the policy does not need the state)"})
    hidden_skip_n: int = dataclasses.field(default=1, metadata={
        "help": "each row reads its environment's hidden state of the last refresh, every N steps and at each "
                "episode start, as `hsrl online --skip-n N` refreshes them (1: every row its own state)"})
    allow_spec_mismatch: bool = dataclasses.field(default=False, metadata={
        "help": "resume even if the data's extraction spec differs from the checkpoint's (hidden sizes must match)"})
    tensorboard: bool = dataclasses.field(default=True, metadata={"help": "write TensorBoard event files (metrics.jsonl always)"})
    progress: bool = dataclasses.field(default=True, metadata={"help": "show progress bars"})

    def check(self) -> None:
        if not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"{self.data_dir}: no such dataset folder")
        if self.keep < 1 or not self.device_data_max_gb > 0:
            raise InputError("--keep must be at least 1 and --device-data-max-gb positive")
        for name in ("steps", "batch_size", "log_every", "save_every", "steps_per_call", "width", "hidden_skip_n"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "beta", "max_weight"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.control and not self.hidden:
            raise InputError("--control replaces the hidden states by a projection of the observation; it needs the "
                             "hidden-state network (leave out --no-hidden)")
        from hsrl.data.projection import check_control_map

        check_control_map(self.control_map, self.control)
        if self.activation not in ACTIVATIONS:
            raise InputError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.fusion not in FUSIONS:
            raise InputError(f"--fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not self.hidden and (self.fusion != "concat" or self.hidden_skip_n != 1):
            raise InputError("--fusion gated and --hidden-skip-n act on the hidden state; --no-hidden reads none")


# ------------------------------------------------------------------------------------------- loss


class Batch(NamedTuple):
    obs: jax.Array  # (B, *obs_shape): float32 symbolic or uint8/float pixels
    action: jax.Array  # (B,) int
    ret: jax.Array  # (B,) float32 return_to_go
    hidden: jax.Array | None  # (B, H) raw hidden states, or None for the baseline


class AWRState(NamedTuple):
    params: object
    opt_state: object
    step: jax.Array  # int32 scalar: gradient steps taken
    rng: jax.Array  # sampling key: batch t is drawn with fold_in(rng, t)


@dataclasses.dataclass(frozen=True)
class AWRHyper:
    beta: float = 10.0
    max_weight: float = 20.0
    lr: float = 3e-4
    gate_lr: float | None = None  # a gated network's gate logit: its own constant Adam rate (None: it follows lr)

    @classmethod
    def of(cls, config: TrainAWRConfig) -> AWRHyper:
        """The run's hyperparameters; with --fusion gated the gate's rate sized from --steps (`gate_learning_rate`)."""
        gate_lr = gate_learning_rate(config.steps) if config.fusion == "gated" else None
        return cls(beta=config.beta, max_weight=config.max_weight, lr=config.lr, gate_lr=gate_lr)


def awr_loss(params, apply_fn: Callable, batch: Batch, beta: float, max_weight: float, hidden_stats=None):
    """The AWR loss of one batch and its metrics (see the module docstring)."""
    hidden = None if batch.hidden is None else normalize_hidden(batch.hidden, hidden_stats)
    logits, value = apply_fn(params, batch.obs, hidden)
    ret = batch.ret.astype(jnp.float32)
    adv = ret - value
    raw_weight = jnp.exp(jax.lax.stop_gradient(adv) / beta)
    weight = jnp.minimum(raw_weight, max_weight)
    log_pi = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_pi, batch.action[:, None].astype(jnp.int32), axis=-1)[:, 0]
    actor_loss = -jnp.mean(weight * log_prob)
    critic_loss = 0.5 * jnp.mean(adv ** 2)
    var_ret = jnp.var(ret)
    metrics = {
        "actor_loss": actor_loss,
        "critic_loss": critic_loss,
        "loss": actor_loss + critic_loss,
        "entropy": -jnp.mean(jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)),
        "mean_weight": jnp.mean(weight),
        # spread of the weights: (sum w)^2 / (n sum w^2) in (0, 1]; 1 when all weights are equal (behaviour cloning)
        "weight_ess": jnp.sum(weight) ** 2 / (weight.shape[0] * jnp.sum(weight ** 2)),
        "clipped_fraction": jnp.mean((raw_weight >= max_weight).astype(jnp.float32)),
        "advantage_mean": jnp.mean(adv),
        "advantage_std": jnp.std(adv),
        "log_prob": jnp.mean(log_prob),
        "explained_variance": jnp.where(var_ret > 0, 1.0 - jnp.var(ret - value) / jnp.where(var_ret > 0, var_ret, 1.0),
                                        jnp.nan),
        "value_mean": jnp.mean(value),
        "return_mean": jnp.mean(ret),
    }
    return actor_loss + critic_loss, metrics


def make_update(network_config: NetworkConfig, hyper: AWRHyper, hidden_stats: HiddenStats | None):
    """`update(state, batch) -> (state, metrics)`: one Adam step on the AWR loss. Pure; jit or scan it.
    `update.compiler_options`: the XLA options the jitted blocks below compile it with (hsrl.rl.cpu_ops)."""
    apply_fn = make_network(network_config).apply
    optimizer = make_optimizer(hyper)

    def update(state: AWRState, batch: Batch):
        grads, metrics = jax.grad(awr_loss, has_aux=True)(
            state.params, apply_fn, batch, hyper.beta, hyper.max_weight, hidden_stats)
        if network_config.gated:
            metrics["hidden/gate"] = gate(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return AWRState(params, opt_state, state.step + 1, state.rng), metrics

    update.compiler_options = cpu_ops.compile_options(network_config.kind)
    return update


def make_optimizer(hyper: AWRHyper) -> optax.GradientTransformation:
    """Adam; with `hyper.gate_lr` (gated networks only) the gate logit under its own Adam (`gate_optimizer`)."""
    adam = optax.adam(hyper.lr)
    return adam if hyper.gate_lr is None else gate_optimizer(adam, hyper.gate_lr)


@functools.lru_cache(maxsize=16)
def _init_fn(network_config: NetworkConfig, hyper: AWRHyper):
    def init(base):
        params = init_params(network_config, jax.random.fold_in(base, 0))
        opt_state = make_optimizer(hyper).init(params)
        return AWRState(params, opt_state, jnp.zeros((), jnp.int32), jax.random.fold_in(base, 1))

    return jax.jit(init)


def init_state(network_config: NetworkConfig, hyper: AWRHyper, seed: int, device=None) -> AWRState:
    """Fresh parameters (key fold_in(seed, 0)), Adam state, step 0 and the sampling key (fold_in(seed, 1)),
    committed to `device` (default: the first), so the first jitted call compiles the same program as the rest."""
    state = _init_fn(network_config, hyper)(jax.random.PRNGKey(seed))
    return jax.device_put(state, device or jax.devices()[0])


# --------------------------------------------------------------------------------------- sampling


def sample_positions(rng: jax.Array, start: jax.Array, length: int, batch_size: int, num_rows: int) -> jax.Array:
    """(length, batch_size) int32 positions in [0, num_rows) of steps start .. start + length - 1."""
    steps = start + jnp.arange(length, dtype=jnp.int32)
    return jax.vmap(lambda t: jax.random.randint(jax.random.fold_in(rng, t), (batch_size,), 0, num_rows))(steps)


def gather(data: Mapping[str, jax.Array], rows) -> Batch:
    """A Batch of `rows` (any shape of indices) from arrays `obs`, `action`, `return_to_go`, [`hidden_state`]."""
    take = lambda k: jnp.take(data[k], rows, axis=0)  # noqa: E731
    return Batch(take("obs"), take("action"), take("return_to_go"),
                 take("hidden_state") if "hidden_state" in data else None)


def _donate() -> tuple[int, ...]:
    """Donate the state's buffers to the update (in-place on accelerators; CPU cannot use donation)."""
    return () if jax.default_backend() == "cpu" else (0,)


def _options(update) -> dict | None:
    return getattr(update, "compiler_options", None)  # set by make_update


SEED_AXES = ("loop", "vmap")  # how a group runs its seeds (`hsrl.rl.awr_seeds`)


def over_seeds(fn: Callable, seed_axis: str | None) -> Callable:
    """`fn(mapped, shared, *static)` over a group's seeds: "vmap" batches the seeds of the leading seed axis of the
    pytree `mapped` in one program (each matrix product K seeds wide; `shared` is the same for every seed); None and
    "loop" (a tuple of states, each seed calling the one-seed program in turn: `each_seed`) are `fn` itself."""
    if seed_axis in (None, "loop"):
        return fn
    if seed_axis == "vmap":
        return lambda mapped, shared, *static: jax.vmap(lambda m: fn(m, shared, *static))(mapped)
    raise ValueError(f"seed axis {seed_axis!r}: expected one of {', '.join(SEED_AXES)} or None")


def each_seed(step: Callable, states: tuple) -> tuple[tuple, dict]:
    """`step(i, state) -> (state, metrics)` for each seed of a "loop" group in turn (each call queued before the
    previous is done): the new states and the metrics, one entry per seed."""
    out = [step(i, state) for i, state in enumerate(states)]
    return tuple(state for state, _ in out), {k: [m[k] for _, m in out] for k in out[0][1]}


def make_device_block(update, batch_size: int, seed_axis: str | None = None):
    """`block(state, data, length) -> (state, metrics)`: `length` updates, batches gathered on device.

    `data` holds the arrays (on device) and `rows`, the valid row indices. Metrics are means over the block. With
    `seed_axis` "vmap" the state has a leading seed axis (`over_seeds`) and every seed samples its own batches from the
    same `data`.
    """

    def block(state: AWRState, data: Mapping[str, jax.Array], length: int):
        pos = sample_positions(state.rng, state.step, length, batch_size, data["rows"].shape[0])

        def body(state, pos_t):
            return update(state, gather(data, jnp.take(data["rows"], pos_t)))

        state, metrics = jax.lax.scan(body, state, pos)
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(over_seeds(block, seed_axis), static_argnums=2, donate_argnums=_donate(),
                   compiler_options=_options(update))


def make_batches_block(update, seed_axis: str | None = None):
    """`block(state, batches) -> (state, metrics)`: one update per leading index of `batches` (length, B, ...);
    with `seed_axis` "vmap", state and batches have a leading seed axis (K, length, B, ...) (`over_seeds`)."""

    def block(state_batches: tuple[AWRState, Batch], _=None):
        state, metrics = jax.lax.scan(update, *state_batches)
        return state, jax.tree.map(jnp.mean, metrics)

    mapped = over_seeds(block, seed_axis)
    return jax.jit(lambda state, batches: mapped((state, batches), None), donate_argnums=_donate(),
                   compiler_options=_options(update))


class Prefetcher:
    """Background thread: for each (start, length) block, draw positions, gather rows on the host,
    `device_put` the (length, B, ...) batches, and queue them (at most `depth` ahead). With a stack of K sampling
    keys (K, 2) (a group of seeds), each seed draws its own positions: batches (K, length, B, ...).

    Iterate to get the blocks in order; an error in the thread is raised by the iterator.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray, rng: jax.Array,
                 blocks: list[tuple[int, int]], batch_size: int, depth: int = 3, device=None):
        self.arrays, self.rows = arrays, rows
        self.rng = np.asarray(jax.device_get(rng))  # a host copy: the state's buffers may be donated
        self.blocks, self.batch_size, self.device = blocks, batch_size, device or jax.devices()[0]
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._positions = jax.jit(sample_positions, static_argnums=(2, 3, 4))
        self._thread = threading.Thread(target=self._run, name="awr-prefetch", daemon=True)
        self._thread.start()

    def make(self, start: int, length: int) -> Batch:
        keys = self.rng.reshape((-1,) + self.rng.shape[-1:])  # one key per seed
        pos = np.stack([np.asarray(self._positions(key, jnp.int32(start), length, self.batch_size, len(self.rows)))
                        for key in keys])
        idx = self.rows[pos.reshape(-1)]
        lead = (length, self.batch_size) if self.rng.ndim == 1 else (len(keys), length, self.batch_size)
        host = {k: v[idx].reshape(lead + v.shape[1:]) for k, v in self.arrays.items()}
        return jax.device_put(Batch(host["obs"], host["action"], host["return_to_go"], host.get("hidden_state")),
                              self.device)

    def _run(self):
        try:
            for start, length in self.blocks:
                item = self.make(start, length)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer
            self._queue.put(err)

    def __iter__(self) -> Iterator[Batch]:
        for _ in self.blocks:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)


def block_schedule(start: int, end: int, per_call: int, every: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, length) of each jitted call from step `start` to `end`: at most `per_call` steps, never
    crossing a multiple of any of `every` (log and save points), so logs and checkpoints fall on them."""
    blocks, step = [], start
    while step < end:
        stop = min(end, step + per_call, *[(step // e + 1) * e for e in every if e > 0])
        blocks.append((step, stop - step))
        step = stop
    return blocks


class DeviceBatches:
    """Batch source for data that fits the device: the arrays are put there once and every call gathers
    its batches inside the jitted scan. With `seed_axis` the state is a group's (`over_seeds`, `each_seed`)."""

    where = "device"

    def __init__(self, update, arrays: Mapping[str, np.ndarray] | None, rows: np.ndarray | None, batch_size: int,
                 device, seed_axis: str | None = None, placed: Mapping[str, jax.Array] | None = None):
        """`placed`: the `data` of another DeviceBatches on the same device (its arrays are not put there twice)."""
        self.data = placed if placed is not None else jax.device_put({**arrays, "rows": rows}, device)
        self.block = make_device_block(update, batch_size, seed_axis)
        self.loop = seed_axis == "loop"

    def run(self, state: AWRState, start: int, length: int):
        """`length` updates from step `start` (the state's own step): (state, mean metrics)."""
        if self.loop:
            return each_seed(lambda i, s: self.block(s, self.data, length), state)
        return self.block(state, self.data, length)

    def close(self) -> None:
        pass


class HostBatches:
    """Batch source for data in host memory: a `Prefetcher` thread gathers each call's batches and puts them
    on the device ahead, in the order of `blocks`. With `seed_axis` (`rng` then a stack of the seeds' keys), each seed
    gets its own batches."""

    where = "host loader"

    def __init__(self, update, arrays: Mapping[str, np.ndarray], rows: np.ndarray, batch_size: int, device,
                 rng: jax.Array, blocks: list[tuple[int, int]], seed_axis: str | None = None):
        self.block = make_batches_block(update, seed_axis)
        self.loop = seed_axis == "loop"
        self.prefetch = Prefetcher(arrays, rows, rng, blocks, batch_size, device=device)
        self._ready = iter(self.prefetch)

    def run(self, state: AWRState, start: int, length: int):
        batches = next(self._ready)
        if self.loop:
            return each_seed(lambda i, s: self.block(s, jax.tree.map(lambda x: x[i], batches)), state)
        return self.block(state, batches)

    def close(self) -> None:
        self.prefetch.close()


def run(state: AWRState, batches, blocks: list[tuple[int, int]], after_block: Callable, on_finished: Callable):
    """Train through `blocks` ((start, length) per jitted call) with a batch source (`DeviceBatches` or
    `HostBatches`). One call stays in flight: call k+1 is queued before call k's result is waited for, so the
    device never idles on Python. `after_block(state, step, length, metrics)` runs as each call is queued
    (logging, checkpoints); `on_finished(length)` when a call's work is done (the progress bar)."""
    pending = None
    for start, length in blocks:
        state, metrics = batches.run(state, start, length)
        if pending is not None:
            jax.block_until_ready(pending[1])
            on_finished(pending[0])
        pending = (length, metrics)
        after_block(state, start + length, length, metrics)
    if pending is not None:
        jax.block_until_ready(pending[1])
        on_finished(pending[0])
    return state


class Interval:
    """Metrics between two log lines: the means of the calls' metrics (weighted by their steps) and the
    throughput over the interval's wall time. With `seeds` K the calls' metrics have a leading seed axis and
    `close` gives one dict per seed (SPS: each seed's steps per second)."""

    def __init__(self, step: int, batch_size: int, seeds: int | None = None):
        self.step, self.batch_size, self.seeds, self.parts, self.tick = step, batch_size, seeds, [], time.perf_counter()

    def add(self, length: int, metrics: dict) -> None:
        self.parts.append((length, metrics))

    def close(self, step: int) -> dict[str, float] | list[dict[str, float]]:
        """The interval's values (metric means, SPS, samples_per_second), per seed with `seeds`; starts the next
        interval."""
        host = jax.device_get([m for _, m in self.parts])
        weights = np.array([n for n, _ in self.parts], np.float64)
        now = time.perf_counter()
        sps = (step - self.step) / (now - self.tick)

        def values(pick):
            out = {k: float(np.average([float(pick(m[k])) for m in host], weights=weights)) for k in host[0]}
            return {**out, "SPS": sps, "samples_per_second": sps * self.batch_size}

        self.step, self.parts, self.tick = step, [], now
        if self.seeds is None:
            return values(lambda v: v)
        return [values(lambda v, i=i: v[i]) for i in range(self.seeds)]


# ------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class AWRData:
    """What training reads: host arrays, the valid rows, and where they came from."""

    arrays: dict[str, np.ndarray]  # obs, action, return_to_go, [hidden_state]
    rows: np.ndarray  # int32 indices of the rows used (episodes that ended within the data, by default)
    env_name: str
    obs_kind: str
    spec_json: str | None
    num_rows: int
    dropped_truncated: int

    @property
    def hidden_size(self) -> int | None:
        h = self.arrays.get("hidden_state")
        return None if h is None else int(h.shape[-1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + self.rows.nbytes


def check_data_keys(data_dir: str | Path, hidden: bool, all_tokens_valid: bool = False) -> None:
    """Clear errors for data that cannot train AWR, from the first file's headers (nothing decompressed).
    Per-token hidden states are read pooled (`load_dataset`); without `hidden_tokens` only with all_tokens_valid."""
    files = list_chunks(data_dir)
    info = inspect_chunk(files[0])
    if "return_to_go" not in info.fields:
        raise DataFileError(files[0], "return_to_go", f"missing: run `hsrl returns {data_dir}` first")
    if hidden and "hidden_state" not in info.fields:
        raise DataFileError(files[0], "hidden_state", "missing: label the data with `hsrl label` first, or "
                                                      "train the baseline with --no-hidden")
    if hidden:
        check_token_counts(info, all_tokens_valid)


def control_projection(first_chunk, obs_shape, control_map: str = "linear"):
    """The control's map for data whose first chunk is `first_chunk` (a `ChunkInfo` with hidden_state): the data's
    hidden width, and the previous observations its spec's prompts show (`--history K`), so the control reads the
    steps the hidden arm's prompts did."""
    from hsrl.data.projection import ObservationProjection, spec_history
    from hsrl.env import env_info

    history = spec_history(first_chunk.meta.spec_json)
    return ObservationProjection(obs_shape, first_chunk.fields["hidden_state"][0][-1], history=history,
                                 num_actions=env_info(first_chunk.meta.env_name).num_actions if history else None,
                                 map=control_map)


def load_awr_data(data_dir: str | Path, hidden: bool, truncated: bool = False, show_progress: bool = True,
                  cache_dir: str | Path | None = None, all_tokens_valid: bool = False,
                  control: bool = False, hidden_skip_n: int = 1, control_map: str = "linear") -> AWRData:
    """Load the keys AWR needs (through a memory-mapped cache with `cache_dir`, see `load_dataset`; per-token hidden
    states pooled while reading). Rows whose episode was still running at the end of the data have a cut-off
    return_to_go and are left out unless `truncated`. With `control`, `hidden_state` is the fixed random map
    (`control_map`) of each row's observation to the data's hidden width (`hsrl.data.projection`), with the previous
    steps the data's prompts showed when its spec has history, and the spec is the projection's.
    With `hidden_skip_n` N > 1, each row's hidden state is its environment's at the last refresh (every N steps and
    at each episode start and each segment's first row: `hsrl.data.refresh`, the schedule of online PPO's --skip-n);
    held in memory even when the rest is memory-mapped."""
    from hsrl.data.projection import spec_history

    check_data_keys(data_dir, hidden, all_tokens_valid)
    keys = ["obs", "action", "return_to_go", "return_truncated"] + (["hidden_state"] if hidden and not control else [])
    hold = hidden and hidden_skip_n > 1
    first = inspect_chunk(list_chunks(data_dir)[0])
    if hold or (control and spec_history(first.meta.spec_json)):  # a control with history reads the episodes
        keys.append("done")
    ds = load_dataset(data_dir, keys, all_tokens_valid=all_tokens_valid, cache_dir=cache_dir,
                      show_progress=show_progress)
    arrays = {k: ds[k] for k in keys if k != "return_truncated"}
    arrays["action"] = arrays["action"].astype(np.int32, copy=False)
    spec_json = ds.meta.spec_json
    if control:
        from hsrl.data.projection import dataset_states

        projection = control_projection(first, arrays["obs"].shape[1:], control_map)
        arrays["hidden_state"], spec_json = dataset_states(projection, ds), projection.spec_json
    if hold:
        from hsrl.data.chunks import check_consecutive
        from hsrl.data.refresh import hold_hidden, refresh_rows_of

        infos = [inspect_chunk(p) for p in ds.files]
        check_consecutive(infos)  # one collection, in time order, with one num_envs: rows are (t, env) across files
        source = refresh_rows_of(infos, ds["done"], hidden_skip_n)  # a refresh at each gap's first row too
        arrays["hidden_state"] = hold_hidden(arrays["hidden_state"], source)
    arrays.pop("done", None)
    trunc = ds["return_truncated"]
    rows = np.arange(len(ds), dtype=np.int32) if truncated else np.flatnonzero(~trunc).astype(np.int32)
    if len(rows) == 0:
        raise InputError(f"{data_dir}: every row belongs to an episode still running at the end of the data "
                         "(its return_to_go is cut off); collect more steps, or pass --truncated to use them anyway")
    return AWRData(arrays, rows, ds.meta.env_name, ds.meta.obs_kind, spec_json, len(ds),
                   0 if truncated else int(trunc.sum()))


def hidden_stats_of(hidden: np.ndarray, spec_json: str | None, block: int = 65536) -> HiddenStats:
    """Normalisation statistics of pooled hidden states (N, H), streamed in float64 blocks."""
    moments = RunningMoments(hidden.shape[1])
    for i in range(0, len(hidden), block):
        moments.update(hidden[i:i + block])
    return moments.hidden_stats(spec_json=spec_json)


def device_memory_limit(device) -> int | None:
    """Bytes the device can hold (None on CPU, whose `memory_stats()` is None)."""
    stats = device.memory_stats()
    return None if not stats else stats.get("bytes_limit")


# ------------------------------------------------------------------------------------------ train

# Flags that define a run; rerunning into the same --out with other values is refused.
IDENTITY_FIELDS = ("data_dir", "hidden", "control", "batch_size", "lr", "beta", "max_weight", "seed", "truncated",
                   "width", "activation", "all_tokens_valid", "fusion", "hidden_skip_n", "control_map")


def _run_config(config: TrainAWRConfig) -> dict:
    d = public_config(config)
    d["data_dir"] = str(Path(config.data_dir).resolve())
    return d


def _check_same_run(out: Path, config: TrainAWRConfig, fields=IDENTITY_FIELDS) -> None:
    path = out / RUN_CONFIG_FILE
    mine = _run_config(config)
    if path.exists():
        saved = json.loads(path.read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(TrainAWRConfig)}
        differ = [k for k in fields if saved.get(k, defaults.get(k)) != mine.get(k)]  # a flag added later: its default
        if differ:
            flags = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} (now {mine.get(k)!r})" for k in differ)
            raise InputError(f"{out} holds a run started with other settings: {flags}; use another --out, "
                             f"or the same settings to resume")
