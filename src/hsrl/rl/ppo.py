"""Online PPO with live LLM hidden states (`hsrl online`).

Reads top to bottom like the algorithm: config, setup, rollout, advantages, update, logging.

Rollout. Each update collects `num_steps` steps of all environments in ONE jitted `lax.scan`. The LLM
runs on the host through `io_callback`, called from inside the scan only when needed:
  - every `skip_n` environment steps, for all environments at once (one batched extraction), and
  - at once for environments whose episode just reset, so no episode ever acts on the previous
    episode's hidden state (their fresh state is computed before their first action).
Between refreshes the last hidden state of each environment is reused. The host side renders text
for the batch with `hsrl.text`, extracts with the one `Extractor`, and hands back a device array. A spec
that reads images (vision-language models, Pixels envs) also gets the environments' frames: the callback
then carries the pixel observations too (and the text is rendered only when the spec reads text).

Normalisation. The policy reads `normalize_hidden(raw, stats)` (the one normaliser). Statistics come
from `--checkpoint` (fixed), or are running statistics over every state extracted so far when
training from scratch; they are frozen during one rollout + update and saved with each checkpoint.

Update. GAE, then `update_epochs` x `num_minibatches` clipped-PPO steps in a jitted `lax.scan`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import io_callback

from hsrl.data.stats import HiddenStats, RunningMoments, normalize_hidden
from hsrl.env import ENV_NAMES, craftax_score, make_env
from hsrl.llm.flags import SpecFlags
from hsrl.rl.networks import NetworkConfig, init_params, make_network


@dataclass(frozen=True)
class OnlineConfig(SpecFlags):
    """Online PPO on Craftax with hidden states from an LLM running live (or without, --no-llm).

    The LLM refreshes every environment's hidden state every --skip-n steps (one batched call), and
    refreshes an environment at once when its episode resets. Writes TensorBoard and metrics.jsonl to
    --out, checkpoints that `hsrl eval` and `--checkpoint` accept, and a final summary.
    """

    env: str = field(default="Craftax-Symbolic-v1", metadata={"help": f"one of {', '.join(ENV_NAMES)}"})
    envs: int = field(default=128, metadata={"help": "parallel environments"})
    steps: int = field(default=100_000, metadata={"help": "total environment steps over all environments"})
    skip_n: int = field(default=25, metadata={"help": "run the LLM every N environment steps (and at episode resets)"})
    llm_batch_size: int = field(default=64, metadata={"help": "samples per LLM forward pass"})
    no_llm: bool = field(default=False, metadata={"help": "baseline: the same PPO without hidden states"})
    checkpoint: str | None = field(default=None, metadata={"help": "warm-start from an AWR (or online) run or checkpoint"})
    allow_spec_mismatch: bool = field(default=False, metadata={"help": "run even if --checkpoint's extraction spec differs"})
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
    seed: int = field(default=0, metadata={"help": "random seed of the run and of LLM sampling (recorded)"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N updates (and at the end)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    @property
    def num_updates(self) -> int:
        return max(1, self.steps // (self.envs * self.num_steps))

    def check(self) -> None:
        if self.env not in ENV_NAMES:
            raise ValueError(f"--env {self.env!r} is not one of {', '.join(ENV_NAMES)}")
        for name in ("envs", "steps", "skip_n", "num_steps", "update_epochs", "num_minibatches", "llm_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if (self.envs * self.num_steps) % self.num_minibatches:
            raise ValueError(f"--envs x --num-steps ({self.envs * self.num_steps}) must divide into "
                             f"--num-minibatches ({self.num_minibatches})")


class Norm(NamedTuple):
    """Hidden-state statistics as a pytree, so new values do not recompile."""

    mean: jax.Array
    std: jax.Array


class Runner(NamedTuple):
    env_state: object
    obs: jax.Array
    sym: jax.Array  # symbolic observation of the same state (text is rendered from it)
    hidden: jax.Array  # (E, H) raw pooled hidden states in use; (E, 1) unused with --no-llm
    fresh: jax.Array  # (E,) bool: episode just reset, needs a hidden state before acting
    since_refresh: jax.Array  # env steps since the last full refresh
    key: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    hidden: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array
    achievements: jax.Array


class LiveHidden:
    """Host side of the LLM in the loop: hidden states for the asked environments, in one batched call.

    The states come from an in-process `Extractor` (text rendered here with `hsrl.text`) or from a
    hidden-state server's client (`hsrl.serve.client.HiddenStateClient`, which renders the same way).
    When the spec reads images (`reads_images`), the environments' pixel frames go with the call.
    """

    def __init__(self, variant: str, fixed_stats: HiddenStats | None, extractor=None, client=None):
        from hsrl.llm.spec import ExtractionSpec

        if (extractor is None) == (client is None):
            raise ValueError("give exactly one of extractor and client")
        self.extractor, self.client = extractor, client
        self.variant = variant
        if extractor is not None:
            self.spec_json, self.hidden_size = extractor.spec.to_json(), extractor.hidden_size
        else:
            health = client.health()
            self.spec_json, self.hidden_size = health["spec_json"], int(health["hidden_size"])
        spec = ExtractionSpec.from_json(self.spec_json)
        self.reads_images, self.reads_text = spec.reads_images, spec.reads_text
        self.fixed_stats = fixed_stats
        self.moments = RunningMoments(self.hidden_size)
        self.calls = self.samples = 0
        self.llm_seconds = self.text_seconds = 0.0
        self.last_batch: np.ndarray | None = None

    def states(self, sym: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        """(n, H) raw pooled states of n observations: symbolic vectors (rendered as text when the spec reads
        text) and, when the spec reads images, their (n, H, W, 3) pixel frames."""
        if self.reads_images and pixels is None:
            raise ValueError("the extraction spec reads images: pass the pixel observations (a Pixels env)")
        images = pixels if self.reads_images else None
        t0 = time.perf_counter()
        if self.client is not None:
            states = self.client.hidden_states(observations=sym if self.reads_text else None, images=images)
            self.llm_seconds += time.perf_counter() - t0
        else:
            from hsrl.text import render_text

            texts = render_text(sym, self.variant) if self.reads_text else None
            t1 = time.perf_counter()
            if images is None:
                states = self.extractor.extract(texts).hidden_state
            else:
                states = self.extractor.extract(texts, images=images).hidden_state
            self.text_seconds += t1 - t0
            self.llm_seconds += time.perf_counter() - t1
        self.calls += 1
        self.samples += len(sym)
        return states

    def __call__(self, sym: np.ndarray, mask: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        idx = np.flatnonzero(mask)
        states = self.states(np.asarray(sym)[idx], None if pixels is None else np.asarray(pixels)[idx])
        self.moments.update(states)
        if len(idx) == len(mask):
            self.last_batch = states
        # rows of environments not asked for are NaN: the caller keeps their old state, and any misuse shows
        out = np.full((len(mask), self.hidden_size), np.nan, np.float32)
        out[idx] = states
        return out

    def stats(self) -> HiddenStats:
        if self.fixed_stats is not None:
            return self.fixed_stats
        return self.moments.hidden_stats(spec_json=self.spec_json)

    def timing_reset(self) -> tuple[float, float]:
        llm, text = self.llm_seconds, self.text_seconds
        self.llm_seconds = self.text_seconds = 0.0
        return llm, text


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


def make_rollout(config: OnlineConfig, env, apply_fn, live: LiveHidden | None):
    """Jitted `(params, runner, norm) -> (runner, transitions, last_value)` over `num_steps` steps."""
    E = config.envs

    def refresh(runner: Runner) -> Runner:
        if live is None:
            return runner
        periodic = runner.since_refresh >= config.skip_n
        mask = runner.fresh | periodic
        shape = jax.ShapeDtypeStruct((E, live.hidden_size), jnp.float32)

        def call(_):
            frames = (runner.obs,) if live.reads_images else ()  # pixels cross to the host only when read
            new = io_callback(live, shape, runner.sym, mask, *frames, ordered=False)
            return jnp.where(mask[:, None], new, runner.hidden)

        hidden = jax.lax.cond(mask.any(), call, lambda _: runner.hidden, None)
        since = jnp.where(periodic, 0, runner.since_refresh)
        return runner._replace(hidden=hidden, fresh=jnp.zeros_like(runner.fresh), since_refresh=since)

    def policy(params, obs, hidden, norm):
        h = normalize_hidden(hidden, norm) if live is not None else None
        return apply_fn(params, obs, h)

    def step(carry, _):
        params, runner, norm = carry
        runner = refresh(runner)
        key, k_act, k_env = jax.random.split(runner.key, 3)
        logits, value = policy(params, runner.obs, runner.hidden, norm)
        action = jax.random.categorical(k_act, logits)
        log_prob = jax.nn.log_softmax(logits)[jnp.arange(E), action]
        obs, env_state, reward, done, info = env.step(k_env, runner.env_state, action)
        sym = info["symbolic_obs"] if env.with_symbolic else obs
        t = Transition(runner.obs, runner.hidden, action, log_prob, value, reward, done,
                       info["episode_return"], info["episode_length"], info["achievements"])
        runner = Runner(env_state, obs, sym, runner.hidden, done, runner.since_refresh + 1, key)
        return (params, runner, norm), t

    def rollout(params, runner, norm):
        (_, runner, _), traj = jax.lax.scan(step, (params, runner, norm), None, length=config.num_steps)
        runner = refresh(runner)  # value of the last observation needs its state (resets just happened)
        _, last_value = policy(params, runner.obs, runner.hidden, norm)
        return runner, traj, last_value

    return jax.jit(rollout)


def gae(traj: Transition, last_value, gamma: float, lam: float):
    def body(carry, t):
        gae_acc, next_value = carry
        not_done = 1.0 - t.done.astype(jnp.float32)
        delta = t.reward + gamma * next_value * not_done - t.value
        gae_acc = delta + gamma * lam * not_done * gae_acc
        return (gae_acc, t.value), gae_acc

    _, adv = jax.lax.scan(body, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
    return adv, adv + traj.value


def make_update(config: OnlineConfig, apply_fn, optimizer, uses_hidden: bool):
    """Jitted `(params, opt_state, traj, last_value, norm, key) -> (params, opt_state, losses)`."""

    def loss_fn(params, mb, norm):
        obs, hidden, action, old_logp, old_value, adv, ret = mb
        h = normalize_hidden(hidden, norm) if uses_hidden else None
        logits, value = apply_fn(params, obs, h)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, action[:, None], axis=1)[:, 0]
        v_clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
        value_loss = 0.5 * jnp.maximum((value - ret) ** 2, (v_clipped - ret) ** 2).mean()
        ratio = jnp.exp(logp - old_logp)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        total = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        approx_kl = ((ratio - 1) - (logp - old_logp)).mean()
        clip_frac = (jnp.abs(ratio - 1) > config.clip_eps).mean()
        return total, (policy_loss, value_loss, entropy, approx_kl, clip_frac)

    def update(params, opt_state, traj: Transition, last_value, norm, key):
        adv, ret = gae(traj, last_value, config.gamma, config.gae_lambda)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  (T, E, ...) -> (T*E, ...)
        data = (flat(traj.obs), flat(traj.hidden), flat(traj.action), flat(traj.log_prob), flat(traj.value),
                flat(adv), flat(ret))
        n = data[0].shape[0]
        mb_size = n // config.num_minibatches

        def epoch(carry, k):
            params, opt_state = carry
            perm = jax.random.permutation(k, n)
            batches = jax.tree.map(lambda x: x[perm].reshape((config.num_minibatches, mb_size) + x.shape[1:]), data)

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
        losses["losses/explained_variance"] = jnp.where(var > 0, 1 - jnp.var(ret - traj.value.reshape(-1)
                                                                            .reshape(ret.shape)) / var, jnp.nan)
        return params, opt_state, losses

    return jax.jit(update)


def episode_metrics(traj: Transition, achievement_names) -> tuple[dict, np.ndarray]:
    """Means over the episodes that finished in this rollout, and their achievements (n, A)."""
    done = np.asarray(traj.done)
    if not done.any():
        return {}, np.zeros((0, len(achievement_names)), bool)
    achievements = np.asarray(traj.achievements)[done]
    metrics = {"charts/episodic_return": float(np.asarray(traj.episode_return)[done].mean()),
               "charts/episodic_length": float(np.asarray(traj.episode_length)[done].mean()),
               "charts/episodes": int(done.sum())}
    return metrics, achievements


def _load_warm_start(config: OnlineConfig, net_config: NetworkConfig, spec_json: str | None):
    """Params and fixed hidden statistics from --checkpoint, checked against this run."""
    from hsrl.rl.checkpoint import load_policy

    policy = load_policy(config.checkpoint)
    policy.check_compatible(env_name=config.env, hidden_size=net_config.hidden_size, spec_json=spec_json,
                            allow_spec_mismatch=config.allow_spec_mismatch, what="this online run")
    if policy.network != net_config:
        raise ValueError(f"--checkpoint network {policy.network} differs from this run's {net_config}")
    return policy.params, policy.hidden_stats


def train_online(config: OnlineConfig) -> dict:
    from tqdm.auto import tqdm

    from hsrl.rl.checkpoint import remove_checkpoint_temporaries, save_checkpoint
    from hsrl.rl.metrics import MetricsLogger

    config.check()
    out = Path(config.out)
    env = make_env(config.env, config.envs, with_symbolic=True)
    info = env.info

    live, spec_json, hidden_size = None, None, None
    if not config.no_llm:
        from hsrl.llm import make_extractor

        spec = config.extraction_spec(info.variant)
        if spec.reads_images and not info.pixels:
            raise ValueError(f"--input {spec.input} reads pixel observations; {config.env} is symbolic: use "
                             f"{config.env.replace('Symbolic', 'Pixels')}")
        extractor = make_extractor(spec, device=config.device, batch_size=config.llm_batch_size)
        spec_json, hidden_size = extractor.spec.to_json(), extractor.hidden_size
    kind = "conv" if info.pixels else "mlp"
    net_config = NetworkConfig(kind=kind, num_actions=info.num_actions, obs_shape=info.obs_shape,
                               hidden_size=hidden_size, width=config.width)
    network = make_network(net_config)
    key = jax.random.PRNGKey(config.seed)
    key, k_init, k_reset = jax.random.split(key, 3)
    params, fixed_stats = init_params(net_config, k_init), None
    if config.checkpoint:
        params, fixed_stats = _load_warm_start(config, net_config, spec_json)
    if not config.no_llm:
        live = LiveHidden(info.variant, fixed_stats, extractor=extractor)

    num_updates = config.num_updates
    schedule = (optax.linear_schedule(config.lr, 0.0, num_updates * config.update_epochs * config.num_minibatches)
                if config.anneal_lr else config.lr)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(schedule, eps=1e-5))
    opt_state = optimizer.init(params)
    rollout = make_rollout(config, env, network.apply, live)
    update = make_update(config, network.apply, optimizer, live is not None)

    obs, env_state, reset_info = jax.jit(env.reset)(k_reset)
    sym = reset_info["symbolic_obs"]
    E = config.envs
    if live is not None:  # every environment starts with its state
        hidden = jnp.asarray(live(np.asarray(sym), np.ones(E, bool), np.asarray(obs) if live.reads_images else None))
    else:
        hidden = jnp.zeros((E, 1), jnp.float32)  # placeholder leaf: the baseline network never reads it
    runner = Runner(env_state, obs, sym, hidden, jnp.zeros(E, bool), jnp.zeros((), jnp.int32), key)

    out.mkdir(parents=True, exist_ok=True)
    remove_checkpoint_temporaries(out / "checkpoints")
    (out / "run_config.json").write_text(json.dumps(asdict(config), indent=1, sort_keys=True))
    logger = MetricsLogger(out)
    all_achievements, returns = [], []
    steps_per_update = E * config.num_steps
    bar = tqdm(total=num_updates * steps_per_update, unit="step", desc="online", disable=not config.progress,
               dynamic_ncols=True)
    totals = {"env_policy": 0.0, "llm": 0.0, "text": 0.0, "update": 0.0, "other": 0.0}
    timed_steps, compile_seconds = 0, 0.0
    start = time.perf_counter()
    hidden_stats = None

    def save(step: int, final: bool):
        meta = {"algorithm": "ppo", "network": net_config.to_dict(), "env_name": config.env, "spec_json": spec_json,
                "hidden_stats": None if hidden_stats is None else hidden_stats.to_dict(), "seed": config.seed,
                "train_config": asdict(config), "final": final}
        save_checkpoint(out / "checkpoints", step, {"params": params, "opt_state": opt_state, "step": step}, meta)

    for u in range(num_updates):
        t_iter = time.perf_counter()
        if live is not None:
            hidden_stats = live.stats()
            norm = Norm(jnp.asarray(hidden_stats.mean), jnp.asarray(hidden_stats.std))
        else:
            norm = Norm(jnp.zeros(1), jnp.ones(1))
        t0 = time.perf_counter()
        runner, traj, last_value = rollout(params, runner, norm)
        jax.block_until_ready(last_value)
        t1 = time.perf_counter()
        key, k_update = jax.random.split(key)
        params, opt_state, losses = update(params, opt_state, traj, last_value, norm, k_update)
        losses = jax.device_get(losses)
        t2 = time.perf_counter()
        llm_s, text_s = live.timing_reset() if live is not None else (0.0, 0.0)
        step = (u + 1) * steps_per_update
        ep, achievements = episode_metrics(traj, info.achievement_names)
        all_achievements.append(achievements)
        returns += list(np.asarray(traj.episode_return)[np.asarray(traj.done)])
        metrics = {**{k: float(v) for k, v in losses.items()}, **ep}
        if len(achievements):
            rates = achievements.mean(0) * 100
            metrics.update({f"achievements/{n}": float(r) for n, r in zip(info.achievement_names, rates)})
            metrics["charts/craftax_score"] = craftax_score(rates)
        if live is not None:
            metrics.update(hidden_summary(live.last_batch))
            metrics.update({"llm/calls": live.calls, "llm/samples": live.samples})
        t3 = time.perf_counter()
        parts = {"env_policy": (t1 - t0) - llm_s - text_s, "llm": llm_s, "text": text_s, "update": t2 - t1}
        parts["other"] = max(0.0, (t3 - t_iter) - sum(parts.values()))
        if u > 0 or num_updates == 1:  # the first update also compiles; keep it out of the breakdown
            for k, v in parts.items():
                totals[k] += v
            timed_steps += steps_per_update
        else:
            compile_seconds = sum(parts.values())
        wall = sum(parts.values())
        metrics.update({f"time/{k}_share": v / wall for k, v in parts.items()})
        metrics["llm/time_share"] = (llm_s + text_s) / wall
        metrics["charts/SPS"] = step / (time.perf_counter() - start)
        logger.log(step, metrics)
        if (u + 1) % config.save_every == 0 or u + 1 == num_updates:
            save(step, final=u + 1 == num_updates)
        bar.update(steps_per_update)
        bar.set_postfix(SPS=f"{metrics['charts/SPS']:.0f}", ret=f"{np.mean(returns[-50:]) if returns else 0:.2f}")
    bar.close()
    logger.close()
    achievements = np.concatenate(all_achievements)
    rates = achievements.mean(0) * 100 if len(achievements) else np.zeros(info.num_achievements)
    wall = sum(totals.values())
    summary = {"env": config.env, "steps": num_updates * steps_per_update, "updates": num_updates,
               "episodes": int(len(returns)), "return_mean": float(np.mean(returns)) if returns else None,
               "craftax_score": craftax_score(rates), "sps": timed_steps / wall,
               "first_update_seconds": compile_seconds,
               "time_share": {k: v / wall for k, v in totals.items()}, "llm": not config.no_llm,
               "llm_calls": live.calls if live else 0, "spec_hash": extractor.spec.hash if live else None,
               "run_dir": str(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_online(config: OnlineConfig) -> int:
    summary = train_online(config)
    print(json.dumps(summary, indent=1))
    return 0
