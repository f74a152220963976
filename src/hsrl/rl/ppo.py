"""Online PPO with live LLM hidden states (`hsrl online`).

Reads top to bottom like the algorithm: config, setup, rollout, advantages, update, logging.

Rollout. Each update collects `num_steps` steps of all environments in ONE jitted `lax.scan`. The hidden
state of each observation comes from `hsrl.rl.live` (`refresh` inside the scan, `LiveHidden` on the host
with an in-process extractor as its source): every `skip_n` environment steps for all environments in one
batched call, and at once for environments whose episode just reset.

Normalisation. The policy reads `normalize_hidden(raw, stats)` (`hsrl.data.stats`). Statistics come from
`--checkpoint` (fixed), or are running statistics over every state extracted so far when training from
scratch (`LiveHidden.stats`); they are frozen during one rollout + update and saved with each checkpoint.

Update. GAE, then `update_epochs` x `num_minibatches` clipped-PPO steps (`Minibatch`) in a jitted `lax.scan`.

Recurrent policy (`--policy gru`). The rollout carries the policy's `Memory`: the GRU state of every environment
and whether its next observation starts an episode (the GRU zeroes its state before reading that observation).
The update replays each environment's whole sequence from the rollout's first memory, so its minibatches are
split by environment, not by time. The feed-forward policy (`mlp`) goes through the same functions with a
placeholder carry and keeps its minibatches of single (step, environment) samples.

Resume and preemption. Every `save_every` updates (and at the end) a checkpoint holds the whole training state:
params, optimiser, the loop's and the runner's PRNG keys, the env states with their reset pool, the hidden states
in use and the refresh counter, the GRU carry, and on the host `LiveHidden`'s running moments, counts and reset-pool
states, the episode totals and the metric offsets (`hsrl.rl.resume` packs them). A rerun of the same command resumes
from the newest checkpoint and continues the same trajectory: with deterministic states (prompt-only) its
parameters equal an uninterrupted run's bit for bit (tests/test_online_resume.py). Flags that change the run are
refused on resume, naming them; a change of where or how the LLM's states are computed (`--server`, `--device`,
`--llm-batch-size`, the cache flags: float rounding at most) is allowed and recorded (`resume_changes`: step, flag,
old, new, in run_config.json, the checkpoints and the summary; `resume/changed_flags` in the metrics). SIGTERM
or SIGINT finishes the current update, saves, and raises `Preempted` (`hsrl` exits 75); a second signal ends the
process at once. `--save-trajectories DIR` writes the rollouts as chunk files while training
(`hsrl.rl.trajectories`); a resume writes the same chunks, and a writer that had stopped (its budget, a full disk)
stays stopped (the writer's state is in the checkpoint).

Seeds in one program (`train_online_seeds`). K configs that differ only in --seed and --out train as one program: one
env, one compile; parameters, optimiser states, env states, runners, GRU carries and keys carry a leading seed axis.
`over_seeds` runs the policy and the update over that axis ("map": a loop inside the program, each seed's operations
its single run's, bit for bit; "vmap": batched, float rounding apart), the env steps each seed's environments in turn
(`lax.map`: its reset-pool refill stays a `lax.cond`), and the LLM gets all seeds' environments of a refresh in one call
(`LiveGroup`). Each seed's folder is a run folder as above; the group saves all seeds at the same update before
pruning any, and resumes from the newest step all hold. A group refuses --save-trajectories, --checkpoint and --server.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hsrl.data.stats import normalize_hidden
from hsrl.env import ENV_NAMES, craftax_score, make_env
from hsrl.errors import InputError, Preempted
from hsrl.redact import public_config
from hsrl.llm.flags import SpecFlags
from hsrl.llm.spec import spec_differences, spec_hash
from hsrl.rl.live import ExtractorSource, History, LiveGroup, LiveHidden, Runner, ServerSource, refresh
from hsrl.rl.networks import (ARCHS, FUSIONS, POLICIES, PUBLISHED_ACTIVATION, NetworkConfig, gate_learning_rate,
                              gate_optimizer, gate_value, init_params, initial_carry, policy_sequence, policy_step)


@dataclass(frozen=True)
class OnlineConfig(SpecFlags):
    """Online PPO on Craftax with hidden states from an LLM running live (or without, --no-hidden).

    The LLM refreshes every environment's hidden state every --skip-n steps (one batched call), and
    refreshes an environment at once when its episode resets. Writes TensorBoard and metrics.jsonl to
    --out, checkpoints that `hsrl eval` and `--checkpoint` accept, and a final summary.

    Rerun the same command to resume from the newest checkpoint (flags that change the run are refused; a change
    of --server, --device, --llm-batch-size or the cache flags is recorded in run_config.json). On SIGTERM/SIGINT
    the run finishes its update, saves, and exits with code 75; a second signal exits at once.
    """

    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={"help": f"one of {', '.join(ENV_NAMES)}"})
    envs: int = field(default=128, metadata={"help": "parallel environments"})
    steps: int = field(default=100_000, metadata={"help": "total environment steps over all environments"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "cut episodes at this length (default: Craftax's 10000)"})
    policy: str = field(default="mlp", metadata={"help": "'mlp': feed-forward (conv encoder on pixels); 'gru': a GRU "
                                                         "over time that carries across steps and resets at episode ends"})
    skip_n: int = field(default=25, metadata={"help": "run the LLM every N environment steps (and at episode resets)"})
    llm_batch_size: int = field(default=64, metadata={"help": "samples per LLM forward pass"})
    reset_pool: int | None = field(default=None, metadata={"help": "fresh worlds generated at a time for resets; their first states are computed in one LLM batch when generated (default: --envs with the LLM and --pool-states, else --envs/32)"})
    pool_states: bool = field(default=True, metadata={"help": "compute the reset pool's first states in one batch when the pool is made and look resets up there (--no-pool-states: one LLM call per step with resets, the old way)"})
    server: str | None = field(default=None, metadata={"help": "read hidden states from this hidden-state server (`hsrl serve`, `hsrl serve --ray`) instead of loading the model here; its /health spec is checked against the spec flags first"})
    token: str | None = field(default=None, metadata={"help": "bearer token of --server (or env HSRL_SERVE_TOKEN)"})
    hidden: bool = field(default=True, metadata={"help": "read live hidden states (default: on; --no-hidden: the "
                                                         "baseline, the same PPO without an LLM)"})
    control: bool = field(default=False, metadata={
        "help": "the control: read a fixed random projection of the observation to the model's hidden width "
                "instead of its states (same network, normalisation and refresh schedule; no LLM runs); with "
                "--history K, of the observation and its episode's K previous observations and actions, as the "
                "prompts would show them"})
    control_map: str = field(default="linear", metadata={
        "help": "the control's map (with --control): linear (a fixed random projection) or relu (fixed random ReLU "
                "features of the same width: relu(x W + b))"})
    checkpoint: str | None = field(default=None, metadata={"help": "warm-start from an AWR (or online) run or checkpoint"})
    allow_spec_mismatch: bool = field(default=False, metadata={"help": "run even if --checkpoint's (or --server's) extraction spec differs"})
    out: str = field(default="runs/online", metadata={"help": "run folder"})
    lr: float = field(default=2e-4, metadata={"help": "learning rate (annealed linearly to 0)"})
    anneal_lr: bool = field(default=True, metadata={"help": "anneal the learning rate linearly"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    gae_lambda: float = field(default=0.8, metadata={"help": "GAE lambda"})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss weight"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    num_steps: int = field(default=64, metadata={"help": "steps per environment per update"})
    update_epochs: int = field(default=4, metadata={"help": "epochs per update"})
    num_minibatches: int = field(default=8, metadata={"help": "minibatches per epoch"})
    width: int = field(default=512, metadata={"help": "layer width of the network"})
    arch: str = field(default="shared", metadata={
        "help": "'shared': hsrl's network (a 2-layer ReLU encoder, then one-layer actor and critic heads); "
                "'separate': the network of the published Craftax PPO numbers (Craftax_Baselines: separate actor and "
                "critic towers, 3 x --width tanh on symbolic envs, the published conv stack and ReLU towers on "
                "pixels)"})
    fusion: str = field(default="concat", metadata={
        "help": "how the hidden state joins the observation features: concat, or gated (features + sigmoid(g) * W h, "
                "W h scaled to unit RMS, the gate g learned from closed at sigmoid(-6) by its own Adam at a constant "
                "rate of 12 / the run's optimiser steps (at most 0.05), so it can travel 12 logit units in any run; "
                "logged as hidden/gate with hidden/gate_travel, how far it could have moved: a gate that stays closed "
                "where it could have opened (travel at least 6) says the policy does not need the state)"})
    seed: int = field(default=0, metadata={"help": "random seed of the run: environments, initialisation, minibatches (recorded; the LLM's sampling seed is --llm-seed)"})
    save_every: int = field(default=10, metadata={"help": "save the whole training state every N updates (and at "
                                                          "the end, and on SIGTERM/SIGINT); a rerun of the same "
                                                          "command resumes from the newest"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept (the newest; the final one is never deleted)"})
    save_trajectories: str | None = field(default=None, metadata={
        "help": "also write the rollouts as hsrl chunk files in this folder (obs, next_obs, action, reward, done, "
                "log_prob of the acting policy, and the hidden_state it read, with the run's spec): `hsrl returns`, "
                "`train-awr` and `experiment --offline` read them without relabelling", "metavar": "DIR"})
    save_trajectories_every: int = field(default=1, metadata={
        "help": "save one update's rollout in N (N > 1: each saved chunk is its own segment; returns end at the gaps)"})
    save_trajectories_max_gb: float = field(default=50.0, metadata={
        "help": "stop saving trajectories (with a warning; training goes on) before the folder passes this size"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    @property
    def num_updates(self) -> int:
        return max(1, self.steps // (self.envs * self.num_steps))

    @property
    def optimizer_steps(self) -> int:
        """Adam steps over the whole run: updates x epochs x minibatches."""
        return self.num_updates * self.update_epochs * self.num_minibatches

    def check(self) -> None:
        if self.env not in ENV_NAMES:
            raise InputError(f"--env {self.env!r} is not one of {', '.join(ENV_NAMES)}")
        for name in ("envs", "steps", "skip_n", "num_steps", "update_epochs", "num_minibatches", "llm_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.reset_pool is not None and not 1 <= self.reset_pool <= self.envs:
            raise InputError(f"--reset-pool must be between 1 and --envs ({self.envs}), got {self.reset_pool}")
        if self.control and (self.server or not self.hidden):
            raise InputError("--control reads a projection of the observation in place of the LLM's states: it "
                             "needs the hidden-state network (no --no-hidden) and no --server")
        from hsrl.data.projection import check_control_map

        check_control_map(self.control_map, self.control)
        if self.control and self.history and "Pixels" in self.env:
            raise InputError(f"--control with --history {self.history} reads the previous symbolic observations as "
                             f"the prompts do, and projects symbolic observations only: use a Symbolic --env")
        if self.server and not self.hidden:
            raise InputError("--server gives hidden states; --no-hidden reads none: drop one of them")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise InputError("--max-episode-steps must be at least 1")
        if self.policy not in POLICIES:
            raise InputError(f"--policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.arch not in ARCHS:
            raise InputError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.arch == "separate" and self.policy == "gru":
            raise InputError("--arch separate is the published feed-forward network; --policy gru builds its own")
        if self.fusion not in FUSIONS:
            raise InputError(f"--fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.fusion == "gated" and not self.hidden:
            raise InputError("--fusion gated gates the hidden state; --no-hidden reads none: drop one of them")
        if self.policy == "gru" and self.envs % self.num_minibatches:
            raise InputError(f"--policy gru splits minibatches by environment: --envs ({self.envs}) must divide into "
                             f"--num-minibatches ({self.num_minibatches})")
        if (self.envs * self.num_steps) % self.num_minibatches:
            raise InputError(f"--envs x --num-steps ({self.envs * self.num_steps}) must divide into "
                             f"--num-minibatches ({self.num_minibatches})")
        for name in ("lr", "clip_eps", "max_grad_norm", "width", "save_every", "keep", "save_trajectories_every",
                     "save_trajectories_max_gb"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise InputError("--gamma and --gae-lambda must lie in [0, 1]")
        if self.hidden:
            from hsrl.env.catalog import env_info

            self.check_llm(env_info(self.env).variant, layers=not self.server)


class Norm(NamedTuple):
    """Hidden-state statistics as a pytree, so new values do not recompile."""

    mean: jax.Array
    std: jax.Array


class Memory(NamedTuple):
    """What the policy carries from step to step: its carry (E, width) for a GRU, (E, 1) unused otherwise, and
    which environments' next observation starts an episode."""

    carry: jax.Array
    start: jax.Array  # (E,) bool

    @classmethod
    def initial(cls, net_config: NetworkConfig, num_envs: int) -> Memory:
        return cls(initial_carry(net_config, num_envs), jnp.ones(num_envs, bool))


class Transition(NamedTuple):
    """One step of all environments, as the rollout's scan stacks it: fields (T, E, ...)."""

    obs: jax.Array
    start: jax.Array  # the observation starts its episode (a GRU's carry was zeroed before it)
    hidden: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array
    achievements: jax.Array
    next_obs: jax.Array | None = None  # the true next observation (before a reset), kept to save trajectories


def hidden_summary(states: np.ndarray | None) -> dict:
    """Norm and mean pairwise cosine similarity across environments of one batch of raw states."""
    if states is None or len(states) < 2:
        return {}
    x = states.astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms[:, None], 1e-12)
    cos = unit @ unit.T
    n = len(x)
    return {"hidden/norm": float(norms.mean()), "hidden/mean_pairwise_cosine": float((cos.sum() - n) / (n * (n - 1)))}


# how a group's program runs its seeds (`train_online_seeds`): "map" loops over them inside the program (each seed's
# operations are its single run's: bit for bit), "vmap" batches them (wider products; float rounding apart)
SEED_AXES = ("map", "vmap")


def default_seed_axis(backend: str | None = None) -> str:
    """"map" on CPU (bit for bit a single run's numbers), "vmap" on accelerators (wide products fill them)."""
    return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


def over_seeds(f, seed_axis: str | None):
    """`f`, a function of one run's arrays, applied to every run of a group (arguments and results with a leading
    seed axis) as `seed_axis` says; None: `f` itself (a single run)."""
    if seed_axis is None:
        return f
    if seed_axis == "vmap":
        return jax.vmap(f)
    if seed_axis == "map":
        return lambda *args: jax.lax.map(lambda a: f(*a), args)
    raise ValueError(f"seed_axis {seed_axis!r} is not one of {', '.join(SEED_AXES)}")


def make_rollout(config: OnlineConfig, env, net_config: NetworkConfig, live: LiveHidden | LiveGroup | None,
                 keep_next_obs: bool = False, seed_axis: str | None = None):
    """Jitted `(params, runner, memory, norm) -> (runner, memory, transitions, last_value)` over `num_steps`
    steps; `memory` is the policy's `Memory` (the GRU state; a placeholder for feed-forward policies).
    `keep_next_obs`: the transitions also hold each step's true next observation (to save trajectories).

    `seed_axis` ("map" or "vmap"): K runs stepped together (`train_online_seeds`): every argument and result has a
    leading seed axis (the transitions are (T, K, E, ...)) and `live` is their `LiveGroup`. The policy runs over the
    seeds as `seed_axis` says (`over_seeds`); the env steps each seed's environments in turn (`lax.map`), so its
    reset-pool refill stays a `lax.cond` (vmapped, it would generate a pool at every step); the LLM gets all seeds'
    environments in one call (`refresh`)."""
    E = config.envs
    apply_step = policy_step(net_config)

    def each(f):
        return over_seeds(f, seed_axis)

    def pool(runner):  # the fresh worlds' observations, when resets look their states up there
        return each(env.pool_observations)(runner.env_state) if config.pool_states else None

    def policy(params, memory, obs, hidden, norm):
        h = normalize_hidden(hidden, norm) if live is not None else None
        return apply_step(params, memory.carry, memory.start, obs, h)

    def act(params, runner, memory, norm):
        key, k_act, k_env = jax.random.split(runner.key, 3)
        new_carry, logits, value = policy(params, memory, runner.obs, runner.hidden, norm)
        action = jax.random.categorical(k_act, logits)
        log_prob = jax.nn.log_softmax(logits)[jnp.arange(E), action]
        return key, k_env, new_carry, action, log_prob, value

    def env_step(k_env, env_state, action):
        return env.step(k_env, env_state, action)

    def record(runner, memory, key, new_carry, action, log_prob, value, stepped):
        obs, env_state, reward, done, info = stepped
        t = Transition(runner.obs, memory.start, runner.hidden, action, log_prob, value, reward, done,
                       info["episode_return"], info["episode_length"], info["achievements"],
                       info["terminal_obs"] if keep_next_obs else None)
        return runner.advance(env, env_state, obs, info, done, key, action), Memory(new_carry, done), t

    def step(carry, _):
        params, runner, memory, norm = carry
        runner = refresh(runner, live, config.skip_n, pool(runner))
        key, k_env, new_carry, action, log_prob, value = each(act)(params, runner, memory, norm)
        stepped = over_seeds(env_step, seed_axis and "map")(k_env, runner.env_state, action)
        runner, memory, t = each(record)(runner, memory, key, new_carry, action, log_prob, value, stepped)
        return (params, runner, memory, norm), t

    def rollout(params, runner, memory, norm):
        (_, runner, memory, _), traj = jax.lax.scan(step, (params, runner, memory, norm), None,
                                                    length=config.num_steps)
        runner = refresh(runner, live, config.skip_n, pool(runner))  # value of the last observation needs its state (resets)
        _, _, last_value = each(policy)(params, memory, runner.obs, runner.hidden, norm)
        return runner, memory, traj, last_value

    return jax.jit(rollout)


class Minibatch(NamedTuple):
    """What one PPO step reads: (T, e, ...) sequences of e environments for a recurrent policy (from `carry`, its
    state before the first step), (1, n, ...) single samples for a feed-forward one."""

    carry: jax.Array  # (e, width) GRU state at the rollout's start; (n, 1) unused for feed-forward
    obs: jax.Array
    start: jax.Array
    hidden: jax.Array
    action: jax.Array
    log_prob: jax.Array  # of the action under the rollout's policy
    value: jax.Array  # the rollout's value estimate
    advantage: jax.Array
    ret: jax.Array  # advantage + value: the value target


def gae(traj: Transition, last_value, gamma: float, lam: float):
    def body(carry, t):
        gae_acc, next_value = carry
        not_done = 1.0 - t.done.astype(jnp.float32)
        delta = t.reward + gamma * next_value * not_done - t.value
        gae_acc = delta + gamma * lam * not_done * gae_acc
        return (gae_acc, t.value), gae_acc

    _, adv = jax.lax.scan(body, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
    return adv, adv + traj.value


def make_optimizer(config: OnlineConfig, net_config: NetworkConfig) -> optax.GradientTransformation:
    """Gradient clipping, then Adam (learning rate annealed linearly to 0 over the run's optimiser steps with
    --anneal-lr); a gated network's gate logit gets its own Adam at a constant rate (`gate_learning_rate`)."""
    schedule = optax.linear_schedule(config.lr, 0.0, config.optimizer_steps) if config.anneal_lr else config.lr
    adam = optax.adam(schedule, eps=1e-5)
    if net_config.gated:
        adam = gate_optimizer(adam, gate_learning_rate(config.optimizer_steps), eps=1e-5)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def gate_travel(config: OnlineConfig, updates: int) -> float:
    """How far (logit units) a gated network's gate could have moved after `updates` updates: its constant learning
    rate times the optimiser steps taken."""
    return gate_learning_rate(config.optimizer_steps) * updates * config.update_epochs * config.num_minibatches


def make_update(config: OnlineConfig, net_config: NetworkConfig, optimizer, uses_hidden: bool,
                seed_axis: str | None = None):
    """Jitted `(params, opt_state, traj, memory, last_value, norm, key) -> (params, opt_state, losses)`; `memory` is
    the `Memory` the rollout started from. `seed_axis`: K runs' updates in one program (`over_seeds`; a leading seed
    axis on everything, the transitions (T, K, E, ...) as `make_rollout` gives them)."""
    sequence = policy_sequence(net_config)
    recurrent = net_config.recurrent

    def loss_fn(params, mb: Minibatch, norm):
        h = normalize_hidden(mb.hidden, norm) if uses_hidden else None
        logits, value = sequence(params, mb.carry, mb.start, mb.obs, h)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  (T, e, ...) -> (T*e, ...)
        logits, value = flat(logits), flat(value)
        action, old_logp, old_value = flat(mb.action), flat(mb.log_prob), flat(mb.value)
        ret, advantage = flat(mb.ret), flat(mb.advantage)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, action[:, None], axis=1)[:, 0]
        v_clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
        value_loss = 0.5 * jnp.maximum((value - ret) ** 2, (v_clipped - ret) ** 2).mean()
        ratio = jnp.exp(logp - old_logp)
        adv = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        total = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        approx_kl = ((ratio - 1) - (logp - old_logp)).mean()
        clip_frac = (jnp.abs(ratio - 1) > config.clip_eps).mean()
        return total, (policy_loss, value_loss, entropy, approx_kl, clip_frac)

    def update(params, opt_state, traj: Transition, memory: Memory, last_value, norm, key):
        adv, ret = gae(traj, last_value, config.gamma, config.gae_lambda)
        T, E = traj.action.shape
        k = config.num_minibatches
        data = Minibatch(memory.carry, traj.obs, traj.start, traj.hidden, traj.action, traj.log_prob, traj.value,
                         adv, ret)

        def split(perm):
            """The data cut into k minibatches: (k, T, E/k, ...) by environment, or (k, 1, T*E/k, ...) by sample."""
            if recurrent:
                def by_env(x, axis):
                    x = jnp.take(x, perm, axis=axis)
                    x = x.reshape(x.shape[:axis] + (k, E // k) + x.shape[axis + 1:])
                    return jnp.moveaxis(x, axis, 0)
                return Minibatch(by_env(data.carry, 0), *(by_env(x, 1) for x in data[1:]))

            def by_sample(x):
                x = x.reshape((T * E,) + x.shape[2:])[perm]
                return x.reshape((k, 1, T * E // k) + x.shape[1:])
            carry = jnp.zeros((k, T * E // k, 1), jnp.float32)  # unused by a feed-forward network
            return Minibatch(carry, *(by_sample(x) for x in data[1:]))

        def epoch(carry, key):
            params, opt_state = carry
            batches = split(jax.random.permutation(key, E if recurrent else T * E))

            def minibatch(carry, mb):
                params, opt_state = carry
                (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, norm)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), aux

            return jax.lax.scan(minibatch, (params, opt_state), batches)

        (params, opt_state), aux = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, config.update_epochs))
        names = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clip_frac")
        losses = {name: a.mean() for name, a in zip(names, aux)}
        var = jnp.var(ret)
        losses["losses/explained_variance"] = jnp.where(var > 0, 1 - jnp.var(ret - traj.value) / var, jnp.nan)
        return params, opt_state, losses

    from hsrl.rl import cpu_ops

    # a conv network's update on CPU: the XLA options its convolutions run fast with (as AWR's; None elsewhere)
    if seed_axis is not None:
        one = update

        def update(params, opt_state, traj, memory, last_value, norm, key):
            traj = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), traj)  # (T, K, E, ...) -> (K, T, E, ...)
            return over_seeds(one, seed_axis)(params, opt_state, traj, memory, last_value, norm, key)
    return jax.jit(update, compiler_options=cpu_ops.compile_options(net_config.kind))


class Episodes(NamedTuple):
    """The fields of a rollout that its episode statistics read, on the host: (T, E, ...), a group's (T, K, E, ...)."""

    done: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    achievements: np.ndarray

    @classmethod
    def of(cls, traj: Transition) -> Episodes:
        return cls(*jax.device_get((traj.done, traj.episode_return, traj.episode_length, traj.achievements)))

    def seed(self, k: int) -> Episodes:
        """Run k's of a group's."""
        return Episodes(*(x[:, k] for x in self))


def episode_metrics(traj: Transition | Episodes, achievement_names) -> tuple[dict, np.ndarray, np.ndarray]:
    """Means over the episodes that finished in this rollout, and their returns (n,) and achievements (n, A)."""
    done = np.asarray(traj.done)
    returns = np.asarray(traj.episode_return)[done]
    if not done.any():
        return {}, returns, np.zeros((0, len(achievement_names)), bool)
    achievements = np.asarray(traj.achievements)[done]
    metrics = {"charts/episodic_return": float(returns.mean()),
               "charts/episodic_length": float(np.asarray(traj.episode_length)[done].mean()),
               "charts/episodes": int(done.sum())}
    return metrics, returns, achievements


class UpdateTimes:
    """Where each update's wall time went (env + policy, LLM, text rendering, update, saving, other) and the totals
    over the updates after the first, which also compiles (kept apart as `compile_seconds`). Saving is the checkpoint
    written after the previous update (after its metrics line, so a line is never lost to a kill)."""

    PARTS = ("env_policy", "llm", "text", "update", "save", "other")

    def __init__(self):
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.timed_steps, self.compile_seconds, self.compile_steps = 0, 0.0, 0

    def add(self, *, rollout: float, update: float, whole: float, llm: float, text: float, steps: int,
            compiling: bool, save: float = 0.0) -> dict:
        """Record one update's seconds; its `time/*_share` metrics (the LLM's share is `time/llm_share`, the text
        rendering's `time/text_share`: one name per fact)."""
        parts = {"env_policy": rollout - llm - text, "llm": llm, "text": text, "update": update}
        parts["other"] = max(0.0, whole - sum(parts.values()))
        parts["save"] = save
        wall = sum(parts.values())
        if compiling:
            self.compile_seconds, self.compile_steps = wall, steps
        else:
            for k, v in parts.items():
                self.totals[k] += v
            self.timed_steps += steps
        return {f"time/{k}_share": v / wall for k, v in parts.items()}

    def state_dict(self) -> dict:
        return {"totals": np.array([self.totals[k] for k in self.PARTS], np.float64),
                "counts": np.array([self.timed_steps, self.compile_seconds, self.compile_steps], np.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.totals = dict(zip(self.PARTS, (float(x) for x in state["totals"])))
        steps, self.compile_seconds, compile_steps = (float(x) for x in state["counts"])
        self.timed_steps, self.compile_steps = int(steps), int(compile_steps)

    def summary(self) -> dict:
        wall = sum(self.totals.values()) or float("nan")
        return {"sps": self.timed_steps / wall, "first_update_seconds": self.compile_seconds,
                "sps_with_first_update": (self.timed_steps + self.compile_steps) / (wall + self.compile_seconds),
                "time_share": {k: v / wall for k, v in self.totals.items()}}


class LLMCounts:
    """Per update: LLM calls and their mean batch, resets served from the pool's states, the cache's hit rate."""

    def __init__(self, live: LiveHidden | LiveGroup | None, cache):
        self.live, self.cache = live, cache
        self.last = (0, 0, 0, 0, 0)
        self.per_update: list[tuple[int, float]] = []

    def _now(self):
        cache = (self.cache.hits, self.cache.misses) if self.cache is not None else (0, 0)
        return (self.live.calls, self.live.samples, self.live.pool_hits, *cache)

    def update(self) -> dict:
        now = self._now()
        calls, samples, pool_hits, hits, misses = (a - b for a, b in zip(now, self.last))
        self.last = now
        self.per_update.append((calls, samples / calls if calls else 0.0))
        out = {"llm/calls": now[0], "llm/samples": now[1], "llm/calls_per_update": calls,
               "llm/mean_call_batch": samples / calls if calls else 0.0, "llm/reset_pool_hits": pool_hits}
        if self.cache is not None:
            out["llm/cache_hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
        return out

    def state_dict(self) -> dict:
        return {"per_update": np.array(self.per_update, np.float64).reshape(-1, 2)}

    def load_state_dict(self, state: dict) -> None:
        """After `LiveHidden.load_state_dict`: the counts go on from the saved run's (the cache's start afresh)."""
        self.per_update = [(int(c), float(b)) for c, b in np.asarray(state["per_update"])]
        if self.live is not None:
            self.last = self._now()

    def summary(self) -> dict:
        if self.live is None:
            return {}
        timed = self.per_update[1:] or self.per_update  # the first update also computes the first states
        out = {"llm_calls_per_update": float(np.mean([c for c, _ in timed])) if timed else 0.0,
               "llm_mean_call_batch": float(np.mean([b for _, b in timed])) if timed else 0.0,
               "llm_samples": self.live.samples, "reset_pool_hits": self.live.pool_hits}
        if self.cache is not None:
            out["cache_hit_rate"] = self.cache.hit_rate
        return out


def _extractor_source(config: OnlineConfig, spec) -> ExtractorSource:
    from hsrl.llm import make_extractor

    return ExtractorSource(make_extractor(spec, cache=config.state_cache(), device=config.device,
                                          batch_size=config.llm_batch_size))


def _server_source(config: OnlineConfig, spec) -> ServerSource:
    """The server's states, its spec checked first against the spec flags (fields left 'auto' are the server's)."""
    import os

    from hsrl.serve.client import HiddenStateClient

    client = HiddenStateClient(config.server, token=config.token or os.environ.get("HSRL_SERVE_TOKEN"))
    served = client.spec()
    auto = [k for k, v in spec.to_dict().items() if v in ("auto", None)]
    if "template" in auto:  # the server's template, whichever it is, with its text
        auto += ["template_text", "template_hash"]
    differ = spec_differences(served, spec, ignore=auto)
    if differ and not config.allow_spec_mismatch:
        raise InputError(f"the server {config.server} extracts by another spec than the flags ask; fields that "
                         f"differ: " + ", ".join(f"{k} (server {served.to_dict().get(k)!r}, flags "
                                                 f"{spec.to_dict().get(k)!r})" for k in differ))
    client.check_spec(served)  # every answer's spec hash is checked against the server's from now on
    return ServerSource(client)


def _load_warm_start(config: OnlineConfig, net_config: NetworkConfig, spec_json: str | None):
    """Params and fixed hidden statistics from --checkpoint, checked against this run."""
    from hsrl.rl.checkpoint import load_policy

    policy = load_policy(config.checkpoint)
    policy.check_compatible(env_name=config.env, hidden_size=net_config.hidden_size, spec_json=spec_json,
                            allow_spec_mismatch=config.allow_spec_mismatch, what="this online run")
    if policy.network != net_config:
        raise InputError(f"--checkpoint network {policy.network} differs from this run's {net_config}")
    return policy.params, policy.hidden_stats


class EpisodeTotals:
    """Every finished episode of the run, as running totals (what the summary reports; a long run keeps no list),
    and the last 50 returns for the progress bar."""

    def __init__(self, num_achievements: int):
        self.episodes, self.return_sum = 0, 0.0
        self.achievement_counts = np.zeros(num_achievements, np.int64)
        self.recent: list[float] = []

    def add(self, returns: np.ndarray, achievements: np.ndarray) -> None:
        """Add a rollout's finished episodes: their returns (n,) and achievements (n, A) (`episode_metrics`)."""
        self.episodes += len(returns)
        self.return_sum += float(returns.sum(dtype=np.float64))
        self.achievement_counts += achievements.sum(0)
        self.recent = (self.recent + [float(r) for r in returns])[-50:]

    def summary(self) -> dict:
        rates = self.achievement_counts / self.episodes * 100 if self.episodes else np.zeros(len(self.achievement_counts))
        return {"episodes": self.episodes, "return_mean": self.return_sum / self.episodes if self.episodes else None,
                "craftax_score": craftax_score(rates)}

    def state_dict(self) -> dict:
        return {"episodes": np.int64(self.episodes), "return_sum": np.float64(self.return_sum),
                "achievement_counts": self.achievement_counts, "recent": np.asarray(self.recent, np.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.episodes, self.return_sum = int(state["episodes"]), float(state["return_sum"])
        self.achievement_counts = np.array(state["achievement_counts"], np.int64)  # a writable copy
        self.recent = [float(r) for r in np.asarray(state["recent"])]


def _trajectory_arrays(traj: Transition, live: LiveHidden | None) -> dict[str, np.ndarray]:
    """One rollout as the (T, E, ...) arrays of a chunk (`hsrl.rl.trajectories`): the raw states the policy read,
    where they are the LLM's (not a control's projection)."""
    arrays = {"obs": traj.obs, "next_obs": traj.next_obs, "action": traj.action, "reward": traj.reward,
              "done": traj.done, "log_prob": traj.log_prob, "achievements": traj.achievements}
    if live is not None and not live.reads_observations:
        arrays["hidden_state"] = traj.hidden
    return {k: np.asarray(v) for k, v in jax.device_get(arrays).items()}


def _resume_meta(out: Path) -> dict | None:
    """The sidecar of the newest checkpoint of the online run in `out` that a rerun goes on from, or None."""
    from hsrl.rl.checkpoint import list_checkpoints, read_checkpoint_meta

    found = list_checkpoints(out / "checkpoints")
    if not found:
        return None
    meta = read_checkpoint_meta(found[-1])
    if meta.get("algorithm") != "ppo" or not meta.get("resumable"):
        raise InputError(f"{out} holds {Path(meta['path']).name}, which is not a resumable online PPO checkpoint "
                         f"(another algorithm, or written by an hsrl without resume): use another --out")
    return meta


# the fields a group's runs may differ in, and what a group refuses (train such seeds apart, with train_online)
GROUP_FREE = ("seed", "out")
GROUP_REFUSED = {
    "save_trajectories": "--save-trajectories is not supported for a group of seeds (one writer per run and "
                         "update is not grouped): train these seeds apart (hsrl online) to save their rollouts",
    "checkpoint": "--checkpoint (a warm start) is not supported for a group of seeds: train these seeds apart "
                  "(hsrl online)",
    "server": "--server is not supported for a group of seeds (the group loads its model here and batches all "
              "seeds' observations into one call): drop --server, or train these seeds apart (hsrl online)",
}


class _Run:
    """One run's host side: its folder (run config, checkpoints, metrics, summary), the checkpoint it resumes from,
    and its counters; `_train`'s loop drives one (`train_online`) or a group in lockstep (`train_online_seeds`)."""

    def __init__(self, config: OnlineConfig):
        from hsrl.rl.checkpoint import remove_checkpoint_temporaries
        from hsrl.rl.resume import check_same_run

        config.check()
        self.config, self.out = config, Path(config.out)
        check_same_run(self.out, config)  # before any work: a resume with flags that change the run is refused
        remove_checkpoint_temporaries(self.out / "checkpoints")
        self.meta = _resume_meta(self.out)

    @property
    def finished(self) -> bool:
        return bool(self.meta is not None and self.meta.get("final") and (self.out / "summary.json").exists())


def _check_group(configs: list[OnlineConfig]) -> None:
    """A group's runs differ in --seed and --out only (distinct both), and use no feature a group refuses."""
    if not configs:
        raise InputError("train_online_seeds needs at least one config")
    first = dataclasses.asdict(configs[0])
    for config in configs[1:]:
        other = dataclasses.asdict(config)
        differ = [k for k in first if k not in GROUP_FREE and first[k] != other[k]]
        if differ:
            raise InputError(f"the runs of a group of seeds differ in --seed and --out only; {config.out} differs from "
                             f"{configs[0].out} in " + ", ".join(f"--{k.replace('_', '-')} ({first[k]!r} vs "
                                                                f"{other[k]!r})" for k in differ))
    seeds = [c.seed for c in configs]
    if len(set(seeds)) < len(seeds):
        raise InputError(f"the runs of a group of seeds need distinct seeds, got {seeds}")
    outs = [Path(c.out).resolve() for c in configs]
    if len(set(outs)) < len(outs):
        raise InputError(f"the runs of a group of seeds need distinct --out folders, got {[c.out for c in configs]}")
    for name, why in GROUP_REFUSED.items():
        if getattr(configs[0], name):
            raise InputError(why)


def _align(runs: list[_Run]) -> None:
    """Put a group's unfinished runs at one step to go on from together: the newest step all have a checkpoint at.
    A group saves every run's checkpoint before it prunes any, so a group killed while saving leaves some runs one
    checkpoint ahead: they go back to the others' (their later checkpoints are deleted, and written again the same).
    A run ahead whose checkpoint this group did not write (a run trained alone, or in another group) is refused."""
    from hsrl.rl.checkpoint import list_checkpoints, read_checkpoint_meta, state_path

    group = sorted(run.config.seed for run in runs)
    steps = [run.meta["step"] if run.meta is not None else 0 for run in runs]
    common = min(steps)
    for run, step in zip(runs, steps):
        if step == common:
            continue
        metas = [read_checkpoint_meta(p) for p in list_checkpoints(run.out / "checkpoints")]
        if sorted(run.meta.get("group") or []) != group or (common and common not in [m["step"] for m in metas]):
            raise InputError(f"{run.out} holds a run at step {step}, ahead of the rest of the group (step {common}), "
                             f"that this group cannot take back to step {common}: train it apart (hsrl online) or "
                             f"leave it out of the group")
        for meta in metas:
            if meta["step"] > common:
                state_path(meta).unlink(missing_ok=True)
                Path(meta["path"]).unlink()
        (run.out / "summary.json").unlink(missing_ok=True)
        run.meta = _resume_meta(run.out)  # its checkpoint at `common`; None: it starts afresh with the others


def train_online(config: OnlineConfig) -> dict:
    """Train (or resume: see the module doc) an online run; returns its summary."""
    return _train([config], seed_axis=None)[0]


def train_online_seeds(configs: list[OnlineConfig], seed_axis: str = "auto") -> list[dict]:
    """Train (or resume) K runs that differ only in --seed and --out as one program; returns their summaries, in order.

    One env is built and one compile serves the group: the parameters, optimiser states, env states, runners, GRU
    carries and PRNG keys carry a leading seed axis, and the rollout's policy and the update run over it as
    `seed_axis` says: "map" (the CPU default of "auto": a loop inside the program, each seed's operations its single
    run's, so its parameters and metrics equal `train_online`'s bit for bit) or "vmap" (the accelerators' default:
    K-wide products; XLA sums them in another order, so equal to float rounding, which training carries on as any
    rounding). The env steps each seed's environments in turn (see `make_rollout`). With the LLM, a seed's states
    are its single run's to the float rounding of the larger LLM batch. Each run writes its own folder as
    `train_online` does (run config, checkpoints, metrics, summary), and a folder of a group can be resumed alone.

    The LLM: all seeds' environments of a refresh go to it in one call (`LiveGroup`: K x --envs observations at a
    full refresh; one state cache), each seed keeps its own running statistics and reset-pool states. In each run's
    metrics and summary the `llm/*` counts (calls, calls per update, mean call batch, samples) and the time shares
    are the group's (`group` in the summary: its seeds, run folders and steps per second).

    Resume: every run saves at the same updates, all before any prunes old checkpoints; rerunning the group resumes
    all from the newest step they all have (`_align`); runs already finished leave the group. SIGTERM/SIGINT saves
    all and raises `Preempted`.

    Refused for a group, one line each (train those seeds apart): --save-trajectories, --checkpoint (warm starts),
    --server.
    """
    _check_group(configs)
    if seed_axis not in ("auto", *SEED_AXES):
        raise InputError(f"seed axis {seed_axis!r}: expected auto, {' or '.join(SEED_AXES)}")
    seed_axis = default_seed_axis() if seed_axis == "auto" else seed_axis
    return _train(list(configs), seed_axis=seed_axis)


def _train(configs: list[OnlineConfig], seed_axis: str | None) -> list[dict]:
    """The loop of `train_online` (one run, `seed_axis` None) and `train_online_seeds` (a group in lockstep)."""
    import flax.serialization
    from tqdm.auto import tqdm

    from hsrl.atomic import write_text_atomic
    from hsrl.rl.checkpoint import check_params, prune_checkpoints, read_state_bytes, save_checkpoint
    from hsrl.rl.metrics import MetricsLogger
    from hsrl.rl.resume import RUN_CONFIG_FILE, Preemption, pack_tree, resume_changes, settings_hash, unpack_tree
    from hsrl.rl.trajectories import TrajectoryWriter

    grouped = seed_axis is not None
    everyone = [_Run(c) for c in configs]
    for run in everyone:
        if run.finished:
            print(f"{run.out}: already trained ({run.meta['step']} steps); nothing to do")
    runs = [run for run in everyone if not run.finished]
    if not runs:
        return [json.loads((run.out / "summary.json").read_text()) for run in everyone]
    if grouped:
        _align(runs)
    K = len(runs)
    config = runs[0].config  # the settings they share (a group's runs differ in seed and out only)

    def stack(trees):  # K runs' pytrees as one with a leading seed axis (one run's as it is)
        return jax.tree.map(lambda *x: jnp.stack(x), *trees) if grouped else trees[0]

    def pick(tree, k):  # run k's part of a (stacked) pytree
        return jax.tree.map(lambda x: x[k], tree) if grouped else tree

    reset_pool = config.reset_pool or (config.envs if config.hidden and config.pool_states else None)
    env = make_env(config.env, config.envs, reset_pool=reset_pool, with_symbolic=True,
                   max_timesteps=config.max_episode_steps)
    info = env.info

    spec_json, hidden_size, source, cache = None, None, None, None
    if config.hidden:
        spec = config.extraction_spec(info.variant)
        if spec.reads_images and not info.pixels:
            raise InputError(f"--input {spec.input} reads pixel observations; {config.env} is symbolic: use "
                             f"{config.env.replace('Symbolic', 'Pixels')}")
        if config.control:  # the same width as the model's states, from a fixed projection of the observation
            from hsrl.data.projection import ObservationProjection, ProjectionSource
            from hsrl.llm.models import model_hidden_size

            source = ProjectionSource(ObservationProjection(
                info.obs_shape, model_hidden_size(spec.model), history=spec.history,
                num_actions=info.num_actions if spec.history else None, map=config.control_map))
        else:
            source = _server_source(config, spec) if config.server else _extractor_source(config, spec)
        cache = getattr(getattr(source, "extractor", None), "cache", None)
        spec_json, hidden_size = source.spec_json, source.hidden_size
    for run in runs:
        if run.meta is not None and config.hidden:  # a resume reads states of the spec it began with (a template's text)
            differ = spec_differences(run.meta.get("spec_json"), spec_json)
            if differ:
                raise InputError(f"{run.out} holds a run whose hidden states came from another extraction spec; fields "
                                 f"that differ: {', '.join(differ)}; use another --out, or the same settings to resume")
    kind = "conv" if info.pixels else "mlp"
    net_config = NetworkConfig(kind=kind, num_actions=info.num_actions, obs_shape=info.obs_shape,
                               hidden_size=hidden_size, width=config.width, policy=config.policy, fusion=config.fusion,
                               arch=config.arch,  # separate: the published towers with their activation
                               activation=PUBLISHED_ACTIVATION[kind] if config.arch == "separate" else "relu")
    warm, fixed_stats = None, None
    if config.checkpoint:
        warm, fixed_stats = _load_warm_start(config, net_config, spec_json)

    num_updates = config.num_updates
    optimizer = make_optimizer(config, net_config)
    E = config.envs
    steps_per_update = E * config.num_steps
    for run in runs:
        run.live = LiveHidden(info.variant, fixed_stats, source) if config.hidden else None
        run.writer = None
        if run.config.save_trajectories:  # a single run's (refused for groups)
            run.writer = TrajectoryWriter(run.config.save_trajectories, run_dir=run.out, env_info=info, num_envs=E,
                                          num_steps=config.num_steps, every=config.save_trajectories_every,
                                          max_gb=config.save_trajectories_max_gb, spec_json=spec_json,
                                          seed=run.config.seed, settings=settings_hash(run.config))
    # the host side of the LLM: the run's LiveHidden, or the group's (one call for all its runs)
    host = None if not config.hidden else LiveGroup([run.live for run in runs]) if grouped else runs[0].live
    writer = runs[0].writer
    rollout = make_rollout(config, env, net_config, host, keep_next_obs=writer is not None, seed_axis=seed_axis)
    update = make_update(config, net_config, optimizer, host is not None, seed_axis=seed_axis)

    # each run's device state: fresh (a group's runs all start afresh or all resume at one step: `_align`), or saved
    fresh = runs[0].meta is None
    reset = jax.jit(env.reset) if fresh else None
    states, saved = [], []
    for run in runs:
        run.totals, run.times = EpisodeTotals(info.num_achievements), UpdateTimes()
        run.counts = LLMCounts(host, cache)  # a group's llm/* counts are the group's
        run.elapsed_before = 0.0  # seconds the run trained before this process (a resumed run)
        run.traj_state = None  # the trajectory writer's state in the checkpoint resumed from
        run.changes, run.new_changes = [], []  # the recorded flags' changes at every resume, and at this one
        key = jax.random.PRNGKey(run.config.seed)
        key, k_init, k_reset = jax.random.split(key, 3)
        params = init_params(net_config, k_init) if warm is None else warm
        opt_state = optimizer.init(params)
        history = run.live.history if run.live is not None else 0
        if fresh:  # every environment begins with its state; the hidden states come below, for all runs at once
            obs, env_state, reset_info = reset(k_reset)
            runner = Runner(env_state, obs, reset_info["symbolic_obs"], None, jnp.zeros(E, bool),
                            jnp.zeros((), jnp.int32), key, History.empty(reset_info["symbolic_obs"], history))
            memory = Memory.initial(net_config, E)
        else:  # the saved state, into the structures this run builds (a mismatch is refused, naming the part)
            obs, env_state, reset_info = jax.eval_shape(env.reset, k_reset)
            hidden = jax.ShapeDtypeStruct((E, hidden_size if host is not None else 1), jnp.float32)
            target = Runner(env_state, obs, reset_info["symbolic_obs"], hidden, jnp.zeros(E, bool),
                            jnp.zeros((), jnp.int32), key, History.empty(reset_info["symbolic_obs"], history))
            meta = run.meta
            raw = flax.serialization.msgpack_restore(read_state_bytes(meta))
            check_params(raw["params"], net_config, meta["path"])
            params = flax.serialization.from_state_dict(params, raw["params"])
            opt_state = flax.serialization.from_state_dict(opt_state, raw["opt_state"])
            resume = raw["resume"]
            runner = unpack_tree(resume["runner"], target, "runner (environments and hidden states)")
            memory = unpack_tree(resume["memory"], Memory.initial(net_config, E), "policy memory")
            key = jnp.asarray(resume["key"], key.dtype)
            if run.live is not None:
                run.live.load_state_dict(resume["live"])
            run.totals.load_state_dict(resume["totals"])
            run.times.load_state_dict(resume["times"])
            run.elapsed_before = float(resume["elapsed"])
            run.traj_state = resume.get("trajectories")
            run.changes = list(meta.get("resume_changes") or [])
            if config.hidden and not config.control:  # where the LLM's states are computed: free, and recorded
                run.new_changes = resume_changes(meta.get("train_config") or {}, run.config, meta["step"])
                run.changes += run.new_changes
            saved.append(resume)
        states.append((params, opt_state, runner, memory, key))
    params, opt_state, runner, memory, key = (stack([s[i] for s in states]) for i in range(5))
    if fresh:
        if host is not None:
            sym = np.asarray(runner.sym)
            hidden = jnp.asarray(host(sym, np.ones(sym.shape[:-1], bool),
                                      np.asarray(runner.obs) if host.reads_images else None))
        else:
            hidden = jnp.zeros(runner.fresh.shape + (1,), jnp.float32)  # placeholder leaf: the baseline reads none
        runner = runner._replace(hidden=hidden)
        start_update = 0
    else:
        if grouped and host is not None and "llm_group" in saved[0]:
            host.load_state_dict(saved[0]["llm_group"])
        for run, resume in zip(runs, saved):
            run.counts.load_state_dict(resume["llm"])  # after the LLM's counts: they go on from the saved run's
        start_update = int(runs[0].meta["step"]) // steps_per_update
        for run in runs:
            print(f"resuming {run.out} at update {start_update} of {num_updates} (step {run.meta['step']})"
                  + "".join(f"; --{c['flag'].replace('_', '-')} {c['old']!r} -> {c['new']!r}" for c in run.new_changes)
                  + (" (recorded: the hidden states may differ at float rounding)" if run.new_changes else ""))

    for run in runs:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out / RUN_CONFIG_FILE, json.dumps({**public_config(run.config),
                                                                 "resume_changes": run.changes},
                                                                indent=1, sort_keys=True))
        if run.writer is not None:
            run.writer.prepare(start_update, run.traj_state)
        run.logger = MetricsLogger(run.out, resume_step=start_update * steps_per_update)  # drops what the checkpoint lacks
        run.hidden_stats = run.live.stats() if run.live is not None else None
    bar = tqdm(total=num_updates * steps_per_update * K, initial=start_update * steps_per_update * K, unit="step",
               desc=f"online, {K} seeds" if grouped else "online", disable=not config.progress, dynamic_ncols=True)
    start = time.perf_counter()
    save_seconds = 0.0  # the last checkpoint's, counted in the next update's times

    def split(key):  # (key, k_update), each run's key split as a run alone splits its own
        if not grouped:
            return jax.random.split(key)
        both = jax.vmap(jax.random.split)(key)
        return both[:, 0], both[:, 1]

    def save(step: int, final: bool):
        state = jax.device_get((params, opt_state, runner, memory, key))
        for k, run in enumerate(runs):
            if run.writer is not None:
                run.writer.wait()  # a checkpoint never names trajectories that are not on disk
            run_params, run_opt, run_runner, run_memory, run_key = pick(state, k)
            resume = {"key": np.asarray(run_key), "runner": pack_tree(run_runner), "memory": pack_tree(run_memory),
                      "totals": run.totals.state_dict(), "llm": run.counts.state_dict(),
                      "times": run.times.state_dict(),
                      "elapsed": np.float64(run.elapsed_before + time.perf_counter() - start)}
            if run.live is not None:
                resume["live"] = run.live.state_dict()
            if grouped and host is not None:
                resume["llm_group"] = host.state_dict()
            if run.writer is not None or run.traj_state is not None:  # kept for a later resume that saves there again
                resume["trajectories"] = run.writer.state_dict() if run.writer is not None else run.traj_state
            meta = {"algorithm": "ppo", "network": net_config.to_dict(), "env_name": config.env,
                    "spec_json": spec_json,
                    "hidden_stats": None if run.hidden_stats is None else run.hidden_stats.to_dict(),
                    "seed": run.config.seed, "train_config": public_config(run.config), "resume_changes": run.changes,
                    "final": final, "resumable": True, "update": step // steps_per_update,
                    "gate_travel": gate_travel(config, step // steps_per_update) if net_config.gated else None}
            if grouped:
                meta["group"] = sorted(r.config.seed for r in runs)  # the seeds saved at this step together (`_align`)
            save_checkpoint(run.out / "checkpoints", step, {"params": run_params, "opt_state": run_opt, "step": step,
                                                            "resume": resume}, meta)
        for run in runs:  # pruned once every run has saved: a group killed in between goes on from the step before
            prune_checkpoints(run.out / "checkpoints", run.config.keep)

    try:
        with Preemption() as preemption:
            for u in range(start_update, num_updates):
                t_iter = time.perf_counter()
                norms = []
                for run in runs:
                    if run.live is not None:
                        run.hidden_stats = run.live.stats()
                        norms.append(Norm(jnp.asarray(run.hidden_stats.mean), jnp.asarray(run.hidden_stats.std)))
                    else:
                        norms.append(Norm(jnp.zeros(1), jnp.ones(1)))
                norm = stack(norms)
                t0 = time.perf_counter()
                runner, next_memory, traj, last_value = rollout(params, runner, memory, norm)
                jax.block_until_ready(last_value)
                if writer is not None and writer.saves(u):
                    writer.write(u, _trajectory_arrays(traj, host))
                t1 = time.perf_counter()
                key, k_update = split(key)
                params, opt_state, losses = update(params, opt_state, traj, memory, last_value, norm, k_update)
                memory = next_memory
                losses = jax.device_get(losses)
                t2 = time.perf_counter()
                llm_s, text_s = host.timing_reset() if host is not None else (0.0, 0.0)
                step = (u + 1) * steps_per_update
                episodes = Episodes.of(traj)
                lines = []
                for k, run in enumerate(runs):
                    ep, returns, achievements = episode_metrics(episodes.seed(k) if grouped else episodes,
                                                                info.achievement_names)
                    run.totals.add(returns, achievements)
                    metrics = {**{name: float(v[k] if grouped else v) for name, v in losses.items()}, **ep}
                    if len(achievements):
                        rates = achievements.mean(0) * 100
                        metrics.update({f"achievements/{n}": float(r) for n, r in zip(info.achievement_names, rates)})
                        metrics["charts/craftax_score"] = craftax_score(rates)
                    if run.live is not None:
                        metrics.update(hidden_summary(run.live.last_batch))
                        metrics.update(run.counts.update())
                    if net_config.gated:
                        metrics["hidden/gate"] = gate_value(pick(params, k))
                        metrics["hidden/gate_travel"] = gate_travel(config, u + 1)
                    if u == start_update and run.new_changes:  # the first update read states computed the new way
                        metrics["resume/changed_flags"] = len(run.new_changes)
                        run.logger.text("resume/changes", json.dumps(run.new_changes), step)
                    lines.append(metrics)
                whole = time.perf_counter() - t_iter  # the group's update: every run's share is of the same wall time
                for run, metrics in zip(runs, lines):
                    metrics.update(run.times.add(rollout=t1 - t0, update=t2 - t1, whole=whole, llm=llm_s, text=text_s,
                                                 steps=steps_per_update,
                                                 compiling=u == start_update and num_updates - start_update > 1,
                                                 save=save_seconds))
                    metrics["charts/SPS"] = step / (run.elapsed_before + time.perf_counter() - start)
                    run.logger.log(step, metrics)
                last = u + 1 == num_updates
                t_save = time.perf_counter()
                if (u + 1) % config.save_every == 0 or last or preemption.requested:
                    save(step, final=last)
                save_seconds = time.perf_counter() - t_save
                bar.update(steps_per_update * K)
                recent = [r for run in runs for r in run.totals.recent]
                bar.set_postfix(SPS=f"{sum(m['charts/SPS'] for m in lines):.0f}",
                                ret=f"{np.mean(recent) if recent else 0.0:.2f}")
                if preemption.requested and not last:
                    raise Preempted(f"stopped on {preemption.requested} after update {u + 1} of {num_updates} "
                                    f"(step {step}) and saved; rerun the same command to resume")
    finally:
        bar.close()
        for run in runs:
            if hasattr(run, "logger"):
                run.logger.close()
            if run.writer is not None:
                run.writer.close()
    summaries = {}
    for run in runs:
        summary = {"env": config.env, "steps": num_updates * steps_per_update, "updates": num_updates,
                   **run.totals.summary(), **run.times.summary(), "llm": config.hidden,
                   "llm_calls": host.calls if host is not None else 0,
                   "spec_hash": spec_hash(spec_json) if host is not None else None,
                   **run.counts.summary(), "resumed_from": start_update * steps_per_update if not fresh else None,
                   "resume_changes": run.changes,
                   "trajectories": None if run.writer is None else {"directory": str(run.writer.directory),
                                                                    "chunks_written": run.writer.written,
                                                                    "stopped": run.writer.stopped},
                   "gate_travel": gate_travel(config, num_updates) if net_config.gated else None,
                   "run_dir": str(run.out)}
        if grouped:  # the group it trained in; its steps per second are the group's wall time's
            summary["group"] = {"size": K, "seed_axis": seed_axis, "seeds": [r.config.seed for r in runs],
                                "run_dirs": [str(r.out) for r in runs], "sps": K * summary["sps"]}
        write_text_atomic(run.out / "summary.json", json.dumps(summary, indent=1))
        summaries[id(run)] = summary
    return [summaries[id(run)] if id(run) in summaries else json.loads((run.out / "summary.json").read_text())
            for run in everyone]


def run_online(config: OnlineConfig) -> int:
    summary = train_online(config)
    print(json.dumps(summary, indent=1))
    return 0
