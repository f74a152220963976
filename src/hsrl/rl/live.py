"""Hidden states at run time: where online PPO (`hsrl online`) and evaluation (`hsrl eval`) get the LLM's
state of each observation while the environments run.

A rollout is a jitted `lax.scan` over environment steps carrying a `Runner`. Before each step, `refresh`
asks the host, through one `io_callback`, for the states of the environments that need one:
  - every `skip_n` environment steps, all environments at once (one batched call), and
  - at once, environments whose episode just reset, so no episode acts on the previous episode's state.
Between refreshes the last state of each environment is reused. Given the env's pool of fresh worlds
(`refresh(..., pool=env.pool_observations(state))`, online PPO), `LiveHidden.with_pool` computes a new pool's
first states in one batch and gives a resetting environment its world's state from there, without a call.

History (`--history K`, a spec whose prompts show the K previous observations of the episode): the `Runner` carries
a `History` per environment, the last K symbolic observations and the actions taken after them with a count of
valid entries, pushed by `Runner.advance` at every step and cleared where an episode starts, inside the jitted scan
(`None` when K = 0: nothing carried, nothing copied). `refresh` hands it to the host with the observations, and
`LiveHidden` renders the valid entries as the prompt's history, exactly as labelling takes them from the chunk files
(`hsrl.data.label.row_history`), so the same observation sequence gives the same state on every path.

The host side is `LiveHidden`: it renders the asked observations as text with `hsrl.text` (when the spec
reads text), takes their pixel frames (when it reads images), and hands both to a `HiddenSource`: a small
interface that turns texts/images into (B, H) pooled states and names its extraction spec. Two exist:
  - `ExtractorSource`: an in-process `Extractor` (`hsrl.llm.make_extractor`), and
  - `ServerSource`: a hidden-state server's client (`hsrl.serve.HiddenStateClient`).
A control policy's `hsrl.data.projection.ProjectionSource` projects the observation itself (no model); one
matched to a spec with history reads the runner's `History` too (the same K previous steps, as arrays).
Another transport is one more source; the state cache (`hsrl.llm.cache`) lives in the extractor.

A group of runs stepped together (`hsrl.rl.ppo.train_online_seeds`) has one `LiveHidden` per run and a `LiveGroup` over
them: a refresh hands it every run's environments (a runner with a leading seed axis), each run plans its part as it
would alone (`LiveHidden.plan`), all parts go to the shared source in one call, and each run takes its states back
(`LiveHidden.finish`): K x E observations per full refresh instead of K calls of E.

Normalisation. From scratch (no fixed statistics), `LiveHidden.stats()` are running statistics over every
state extracted so far, with each dimension's std floored relative to the states' own scale
(`RELATIVE_STD_FLOOR` x the median over dimensions of their root mean square): a few near-identical states (one environment, the
first update) then give z-scores of the order of their distance in units of the states' scale, not 1e5.
"""

from __future__ import annotations

import hashlib
import time
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from hsrl.data.stats import DEFAULT_STD_FLOOR, HiddenStats, RunningMoments

# running statistics from scratch: std_d >= RELATIVE_STD_FLOOR * median_d(sqrt(mean_d^2 + var_d))
RELATIVE_STD_FLOOR = 0.1


class HiddenSource(Protocol):
    """What turns observations into pooled hidden states at run time."""

    spec_json: str  # the resolved extraction spec the states come from
    hidden_size: int

    def hidden_states(self, texts: list[str] | None, images: np.ndarray | None = None, history=None) -> np.ndarray:
        """(B, H) float32 states of B observations: their texts (None when the spec reads no text) and/or
        their (B, H, W, 3) frames (when the spec reads images); for a spec with history, each one's previous
        (text, action) pairs, oldest first (passed only then). Raises on failure; never returns zeros."""
        ...


class ExtractorSource:
    """States computed in this process by an `Extractor`."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.spec_json, self.hidden_size = extractor.spec.to_json(), extractor.hidden_size

    def hidden_states(self, texts, images=None, history=None) -> np.ndarray:
        if images is None:
            return self.extractor.extract(texts, history=history).hidden_state
        return self.extractor.extract(texts, images=images).hidden_state


class ServerSource:
    """States from a hidden-state server (`hsrl serve`), through its client."""

    def __init__(self, client):
        self.client = client
        health = client.health()
        self.spec_json, self.hidden_size = health["spec_json"], int(health["hidden_size"])

    def hidden_states(self, texts, images=None, history=None) -> np.ndarray:
        return self.client.hidden_states(texts=texts, images=images, history=history)


class History(NamedTuple):
    """Each environment's previous observations in its episode, for prompts that show them (`--history K`)."""

    sym: jax.Array  # (E, K, D) the K symbolic observations before the current one, oldest first
    action: jax.Array  # (E, K) int32: the action taken after each
    length: jax.Array  # (E,) int32: how many of them (the last `length`) belong to the current episode

    @staticmethod
    def empty(sym: jax.Array, k: int) -> History | None:
        """No previous observations for E environments at `sym` (E, D); None when k = 0 (nothing is carried)."""
        if k == 0:
            return None
        E, D = sym.shape
        return History(jnp.zeros((E, k, D), sym.dtype), jnp.zeros((E, k), jnp.int32), jnp.zeros(E, jnp.int32))

    def push(self, sym: jax.Array, action: jax.Array, done: jax.Array) -> History:
        """After a step from `sym` with `action`: it joins the history (the oldest leaves); where `done`, the next
        observation starts an episode and the history is cleared."""
        k = self.sym.shape[1]
        return History(jnp.concatenate([self.sym[:, 1:], sym[:, None].astype(self.sym.dtype)], 1),
                       jnp.concatenate([self.action[:, 1:], action[:, None].astype(jnp.int32)], 1),
                       jnp.where(done, 0, jnp.minimum(self.length + 1, k)).astype(jnp.int32))


class Runner(NamedTuple):
    """The state a rollout carries through its scan (online PPO and evaluation alike)."""

    env_state: object
    obs: jax.Array
    sym: jax.Array  # symbolic observation of the same state (text is rendered from it)
    hidden: jax.Array  # (E, H) raw pooled hidden states in use; (E, 1) unused by a policy without them
    fresh: jax.Array  # (E,) bool: episode just reset, needs a hidden state before acting
    since_refresh: jax.Array  # env steps since the last full refresh
    key: jax.Array
    history: History | None = None  # previous observations of each episode (specs with history; None: K = 0)

    def advance(self, env, env_state, obs, info, done, key, action=None) -> Runner:
        """The runner after one env step taken with `action`: new observations, the same hidden states, `done` marks
        the fresh; the observation stepped from and `action` join the history (cleared where `done`)."""
        sym = info["symbolic_obs"] if env.with_symbolic else obs
        history = self.history
        if history is not None:
            if action is None:
                raise ValueError("a runner that carries history needs the action each step took")
            history = history.push(self.sym, action, done)
        return Runner(env_state, obs, sym, self.hidden, done, self.since_refresh + 1, key, history)


def _with_history(fn):
    """`fn` called as io_callback passes it the history's arrays after `sym, mask`: `fn(..., history=...)`."""
    def call(sym, mask, hist_sym, hist_action, hist_length, *rest):
        return fn(sym, mask, *rest, history=(hist_sym, hist_action, hist_length))

    return call


def refresh(runner: Runner, hidden_fn, skip_n: int, pool=None) -> Runner:
    """New hidden states for the environments that need one (fresh episodes, or all every `skip_n` steps).

    `hidden_fn(sym, mask[, pixels]) -> (E, H)` runs on the host (`LiveHidden`, or an ablation wrapping it);
    it has `hidden_size` and `reads_images`. None: the policy reads no hidden state, nothing changes.
    pool: the env's `pool_observations` (symbolic, env observations of the fresh worlds episodes reset into),
    for a `hidden_fn` with `with_pool` (`LiveHidden`): it computes a new pool's states in one batch and looks
    resets up there.

    A group's runner (`hsrl.rl.ppo.train_online_seeds`) has a leading seed axis on every field (`since_refresh`
    (K,)): then `hidden_fn` (`LiveGroup`) takes and gives (K, E, ...) arrays, all seeds' environments in one call.
    """
    if hidden_fn is None:
        return runner
    periodic = runner.since_refresh >= skip_n
    mask = runner.fresh | periodic[..., None]  # (E,), or (K, E) for a group's runner
    shape = jax.ShapeDtypeStruct(mask.shape + (hidden_fn.hidden_size,), jnp.float32)

    def call(_):
        frames = (runner.obs,) if hidden_fn.reads_images else ()  # pixels cross to the host only when read
        history = () if runner.history is None else tuple(runner.history)
        wrap = (lambda fn: fn) if runner.history is None else _with_history
        if pool is not None and hasattr(hidden_fn, "with_pool"):
            pool_frames = (pool[1],) if hidden_fn.reads_images else ()
            new = io_callback(wrap(hidden_fn.with_pool), shape, runner.sym, mask, *history, pool[0], *frames,
                              *pool_frames, ordered=False)
        else:
            new = io_callback(wrap(hidden_fn), shape, runner.sym, mask, *history, *frames, ordered=False)
        return jnp.where(mask[..., None], new, runner.hidden)

    hidden = jax.lax.cond(mask.any(), call, lambda _: runner.hidden, None)
    since = jnp.where(periodic, 0, runner.since_refresh)
    return runner._replace(hidden=hidden, fresh=jnp.zeros_like(runner.fresh), since_refresh=since)


class RefreshPlan(NamedTuple):
    """What one refresh of one run asks its source (`LiveHidden.plan`), and where the answers go (`LiveHidden.finish`):
    a new reset pool's observations (computed first, no history), then the asked environments' observations that
    were not found among the pool's, with their history."""

    size: int  # E: the environments of the run
    idx: np.ndarray  # the environments asked
    ask: np.ndarray  # of those, the ones whose state is computed (not found in the pool)
    found: dict  # environment -> the key of its observation among the pool's
    sym: np.ndarray  # the observations of `ask`
    pixels: np.ndarray | None
    history: list | tuple | None  # their previous steps (`LiveHidden.entries`), for a spec with history
    pool_keys: list | None  # a new pool's observation keys (None: no new pool)
    pool_sym: np.ndarray | None
    pool_pixels: np.ndarray | None
    pool_digest: bytes | None

    def asked(self) -> tuple:
        """`LiveHidden.states`' arguments for the asked rows."""
        return self.sym, self.pixels, self.history


class LiveHidden:
    """Host side of the LLM in the loop: hidden states for the asked environments, in one batched call.

    Renders text with `hsrl.text` for specs that read text, passes the frames for specs that read images,
    and asks its `source`. Keeps running moments of every state (for statistics from scratch), call and
    sample counts, and the seconds spent rendering text and in the source.
    """

    def __init__(self, variant: str, fixed_stats: HiddenStats | None, source: HiddenSource):
        from hsrl.llm.spec import ExtractionSpec, check_live_text

        self.source, self.variant = source, variant
        self.spec_json, self.hidden_size = source.spec_json, source.hidden_size
        # a control policy's source projects the observation itself (`hsrl.data.projection`): no text, no model
        self.reads_observations = getattr(source, "reads_observations", False)
        if self.reads_observations:  # a control with history reads the runner's previous steps as its prompts would
            self.reads_images, self.reads_text = source.reads_images, False
            self.history = getattr(source, "history", 0)
        else:
            spec = ExtractionSpec.from_json(self.spec_json)
            check_live_text(spec, "live hidden states")  # they render observations with hsrl.text
            self.reads_images, self.reads_text, self.history = spec.reads_images, spec.reads_text, spec.history
        self.fixed_stats = fixed_stats
        self.moments = RunningMoments(self.hidden_size)
        self.calls = self.samples = 0  # calls to the source and the samples asked in them
        self.pool_hits = 0  # states of fresh episodes found among their pool's states (no call)
        self.llm_seconds = self.text_seconds = 0.0
        self.last_batch: np.ndarray | None = None
        self._pool_digest: bytes | None = None
        self._pool_states: dict[bytes, np.ndarray] = {}

    def entries(self, history, idx: np.ndarray) -> list[list[tuple[str, int]]] | None:
        """The previous (text, action) pairs, oldest first, of the environments `idx` from a runner's `History`
        arrays (sym, action, length): the last `length` of each, rendered as labelling renders them. None for a
        spec without history; no history given (a pool of fresh worlds, an episode's start): none for each. A control
        source (`reads_observations`) reads the steps themselves: the arrays' rows `idx` (None: none)."""
        if not self.history:
            return None
        idx = np.asarray(idx, dtype=np.int64)
        if self.reads_observations:
            return None if history is None else tuple(np.asarray(x)[idx] for x in history)
        if history is None:
            return [[] for _ in idx]
        from hsrl.text import render_text

        hist_sym, hist_action, length = (np.asarray(x) for x in history)
        k = hist_sym.shape[1]
        counts = length[idx].astype(np.int64)
        envs = np.repeat(idx, counts)
        slots = np.concatenate([np.arange(k - c, k) for c in counts]) if len(idx) else np.zeros(0, np.int64)
        t0 = time.perf_counter()
        texts = render_text(hist_sym[envs, slots], self.variant) if len(envs) else []
        self.text_seconds += time.perf_counter() - t0
        actions = hist_action[envs, slots].tolist()
        out, start = [], 0
        for c in counts:
            out.append(list(zip(texts[start : start + c], actions[start : start + c])))
            start += c
        return out

    def text_states(self, texts: list[str]) -> np.ndarray:
        """(n, H) states of ready text observations, each at an episode's start (no history)."""
        kwargs = {"history": [[] for _ in texts]} if self.history else {}
        return self.source.hidden_states(texts, None, **kwargs)

    def states(self, sym: np.ndarray, pixels: np.ndarray | None = None, history=None) -> np.ndarray:
        """(n, H) raw pooled states of n observations: symbolic vectors (rendered as text when the spec reads
        text) and, when the spec reads images, their (n, H, W, 3) pixel frames; for a spec with history, each
        one's previous (text, action) pairs (`entries`; None: none, as at an episode's start)."""
        states = self.compute(sym, pixels, history)
        self.calls += 1
        self.samples += len(sym)
        return states

    def compute(self, sym: np.ndarray, pixels: np.ndarray | None = None, history=None) -> np.ndarray:
        """`states` without counting the call: what a `LiveGroup` asks once for all its runs."""
        if self.reads_images and pixels is None:
            raise ValueError("the extraction spec reads images: pass the pixel observations (a Pixels env)")
        from hsrl.text import render_text

        t0 = time.perf_counter()
        texts = list(render_text(np.asarray(sym), self.variant)) if self.reads_text else None
        t1 = time.perf_counter()
        if self.reads_observations:  # the policy's own observation: the frame for pixel envs, else the vector
            more = {"history": history} if self.history else {}  # its previous steps (`entries`), as a prompt's
            states = self.source.observation_states(pixels if self.reads_images else np.asarray(sym), **more)
        elif self.history:
            history = [[] for _ in range(len(sym))] if history is None else history
            states = self.source.hidden_states(texts, None, history=history)
        else:
            states = self.source.hidden_states(texts, pixels if self.reads_images else None)
        self.text_seconds += t1 - t0
        self.llm_seconds += time.perf_counter() - t1
        return states

    @staticmethod
    def _obs_key(sym_row: np.ndarray, pixel_row: np.ndarray | None) -> bytes:
        return sym_row.tobytes() + (b"" if pixel_row is None else pixel_row.tobytes())

    def with_pool(self, sym, mask, pool_sym, pixels=None, pool_pixels=None, history=None) -> np.ndarray:
        """As `__call__`, given the env's pool of fresh worlds (`BatchedEnv.pool_observations`): when the pool is
        new, its states are computed in one batch (no history: a fresh world starts an episode); environments
        asked whose observation is one of the pool's and who have no history (an episode that just reset) get
        that state without a call of their own."""
        plan = self.plan(sym, mask, pixels, history, pool_sym, pool_pixels)
        pool = self.states(plan.pool_sym, plan.pool_pixels) if plan.pool_keys is not None else None
        return self.finish(plan, pool, self.states(*plan.asked()) if len(plan.ask) else None)

    def __call__(self, sym: np.ndarray, mask: np.ndarray, pixels: np.ndarray | None = None,
                 history=None) -> np.ndarray:
        """(E, H) states for the environments `mask` asks for (NaN elsewhere); `history`: the runner's `History`
        arrays, for a spec with history."""
        plan = self.plan(sym, mask, pixels, history)
        return self.finish(plan, None, self.states(*plan.asked()) if len(plan.ask) else None)

    def plan(self, sym, mask, pixels=None, history=None, pool_sym=None, pool_pixels=None) -> RefreshPlan:
        """What one refresh asks the source (`RefreshPlan`): the states of a pool it has not seen (with a pool),
        and of the asked environments not found among the pool's (a fresh episode's observation, no history)."""
        sym = np.asarray(sym)
        pixels = None if pixels is None else np.asarray(pixels)
        idx = np.flatnonzero(mask)
        new_pool, keys, digest = None, (), None
        if pool_sym is not None:
            pool_sym = np.asarray(pool_sym)
            pool_pixels = None if pool_pixels is None else np.asarray(pool_pixels)
            digest = hashlib.blake2b(pool_sym.tobytes() + (b"" if pool_pixels is None else pool_pixels.tobytes()),
                                     digest_size=16).digest()
            if digest != self._pool_digest:
                new_pool = [self._obs_key(pool_sym[i], None if pool_pixels is None else pool_pixels[i])
                            for i in range(len(pool_sym))]
                keys = set(new_pool)
            else:
                keys = self._pool_states
        length = None if history is None else np.asarray(history[2])
        found = {}
        if keys:
            for i in idx:
                if length is not None and length[i]:  # mid-episode: its prompt shows history, a fresh world's none
                    continue
                key = self._obs_key(sym[i], None if pixels is None else pixels[i])
                if key in keys:
                    found[int(i)] = key
        ask = np.array([i for i in idx if int(i) not in found], dtype=np.int64)
        return RefreshPlan(len(mask), idx, ask, found, sym[ask], None if pixels is None else pixels[ask],
                           self.entries(history, ask) if len(ask) else None, new_pool,
                           pool_sym if new_pool is not None else None,
                           pool_pixels if new_pool is not None else None, digest)

    def finish(self, plan: RefreshPlan, pool_states: np.ndarray | None, ask_states: np.ndarray | None) -> np.ndarray:
        """The (E, H) answer of a `plan` given the source's states of its new pool and of its asked rows (NaN for the
        environments not asked); the running moments take the pool's states, then the asked ones."""
        if plan.pool_keys is not None:
            self.moments.update(pool_states)
            self._pool_states = {key: pool_states[i] for i, key in enumerate(plan.pool_keys)}
            self._pool_digest = plan.pool_digest
        self.pool_hits += len(plan.found)
        states = np.empty((len(plan.idx), self.hidden_size), np.float32)
        if len(plan.ask):
            self.moments.update(ask_states)
            states[np.searchsorted(plan.idx, plan.ask)] = ask_states
        for i, key in plan.found.items():
            states[np.searchsorted(plan.idx, i)] = self._pool_states[key]
        if len(plan.idx) == plan.size:
            self.last_batch = states
        # rows of environments not asked for are NaN: the caller keeps their old state, and any misuse shows
        out = np.full((plan.size, self.hidden_size), np.nan, np.float32)
        out[plan.idx] = states
        return out

    def stats(self) -> HiddenStats:
        """The fixed statistics, or running ones over every state so far (std floored, see the module doc)."""
        if self.fixed_stats is not None:
            return self.fixed_stats
        return running_stats(self.moments, self.spec_json)

    def state_dict(self) -> dict:
        """What a resumed run needs to go on exactly as this one (`hsrl.rl.resume`): the running moments, the counts,
        the reset pool's states and the last full batch, as arrays."""
        keys = list(self._pool_states)
        width = len(keys[0]) if keys else 0
        return {"moments": {"count": np.int64(self.moments.count), "mean": self.moments.mean, "m2": self.moments.m2},
                "counts": np.array([self.calls, self.samples, self.pool_hits], np.int64),
                "pool_digest": np.frombuffer(self._pool_digest or b"", np.uint8),
                "pool_keys": np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), width),
                "pool_states": np.stack(list(self._pool_states.values())) if keys else np.zeros((0, self.hidden_size), np.float32),
                "last_batch": self.last_batch if self.last_batch is not None else np.zeros((0, self.hidden_size), np.float32)}

    def load_state_dict(self, state: dict) -> None:
        m = state["moments"]
        if np.asarray(m["mean"]).shape != (self.hidden_size,):
            raise ValueError(f"saved hidden-state moments have shape {np.asarray(m['mean']).shape}, this run's states "
                             f"have {self.hidden_size} dimensions")
        self.moments.count = int(m["count"])
        self.moments.mean, self.moments.m2 = np.array(m["mean"], np.float64), np.array(m["m2"], np.float64)
        self.calls, self.samples, self.pool_hits = (int(x) for x in state["counts"])
        digest = np.asarray(state["pool_digest"], np.uint8).tobytes()
        self._pool_digest = digest or None
        keys, states = np.asarray(state["pool_keys"], np.uint8), np.asarray(state["pool_states"], np.float32)
        self._pool_states = {keys[i].tobytes(): states[i].copy() for i in range(len(keys))}
        last = np.array(state["last_batch"], np.float32)
        self.last_batch = last if len(last) else None

    def timing_reset(self) -> tuple[float, float]:
        llm, text = self.llm_seconds, self.text_seconds
        self.llm_seconds = self.text_seconds = 0.0
        return llm, text


class LiveGroup:
    """Host side of the LLM for a group of runs stepped together (`hsrl.rl.ppo.train_online_seeds`): one
    `LiveHidden` per run (its running moments, reset pool, last batch), one call to their shared source for all.

    `refresh` hands it (K, E, ...) arrays. Each run plans its refresh as it would alone (`LiveHidden.plan`: a run none
    of whose environments asks is left out, as its own rollout would make no call), the rows of all plans go to the
    source in one batch (K x E observations at a full refresh, with the new pools' first states), and each run takes
    its rows back in its own order (`LiveHidden.finish`). The states equal those of the runs alone up to the float
    rounding of another batch composition; a state cache in the source serves all runs. A control's projection (no
    LLM: `reads_observations`) is computed run by run. `calls` and `samples` count the group's calls to the source.
    """

    def __init__(self, lives: list[LiveHidden]):
        first = lives[0]
        if any(live.source is not first.source for live in lives):
            raise ValueError("the runs of a LiveGroup share one source")
        self.lives = list(lives)
        self.hidden_size, self.reads_images, self.history = first.hidden_size, first.reads_images, first.history
        self.reads_observations = first.reads_observations
        self.calls = self.samples = 0

    @property
    def pool_hits(self) -> int:
        return sum(live.pool_hits for live in self.lives)

    def with_pool(self, sym, mask, pool_sym, pixels=None, pool_pixels=None, history=None) -> np.ndarray:
        return self._refresh(sym, mask, pixels, history, pool_sym, pool_pixels)

    def __call__(self, sym, mask, pixels=None, history=None) -> np.ndarray:
        return self._refresh(sym, mask, pixels, history)

    def _refresh(self, sym, mask, pixels, history, pool_sym=None, pool_pixels=None) -> np.ndarray:
        mask = np.asarray(mask)
        out = np.full(mask.shape + (self.hidden_size,), np.nan, np.float32)

        def part(x, k):
            return None if x is None else np.asarray(x)[k]

        plans = []
        for k, live in enumerate(self.lives):
            if not mask[k].any():  # alone, its rollout would make no call at this step
                continue
            args = (part(sym, k), mask[k], part(pixels, k), None if history is None else tuple(part(x, k) for x in history))
            if self.reads_observations:  # a projection, no LLM to batch: each run's own, exactly as alone
                before = live.calls, live.samples
                out[k] = (live(*args[:3], history=args[3]) if pool_sym is None else
                          live.with_pool(args[0], args[1], part(pool_sym, k), args[2], part(pool_pixels, k), args[3]))
                self.calls += live.calls - before[0]
                self.samples += live.samples - before[1]
                continue
            plans.append((k, live.plan(*args, part(pool_sym, k), part(pool_pixels, k))))
        if not plans:
            return out
        rows = []  # (sym, pixels, history) of every plan's new pool, then its asked rows
        for _, plan in plans:
            if plan.pool_keys is not None:
                rows.append((plan.pool_sym, plan.pool_pixels, [[] for _ in plan.pool_keys] if self.history else None))
            if len(plan.ask):
                rows.append(plan.asked())
        states = None
        if rows:
            sym_all = np.concatenate([r[0] for r in rows])
            pixels_all = None if rows[0][1] is None else np.concatenate([r[1] for r in rows])
            history_all = [h for r in rows for h in r[2]] if self.history else None
            states = self.lives[0].compute(sym_all, pixels_all, history_all)
            self.calls += 1
            self.samples += len(sym_all)
        at = 0
        for k, plan in plans:
            live = self.lives[k]
            pool = None
            if plan.pool_keys is not None:
                pool, at = states[at:at + len(plan.pool_keys)], at + len(plan.pool_keys)
            asked = None
            if len(plan.ask):
                asked, at = states[at:at + len(plan.ask)], at + len(plan.ask)
            n = (0 if pool is None else len(pool)) + len(plan.ask)
            if n:  # the run's own counts: one call served it, with its rows
                live.calls += 1
                live.samples += n
            out[k] = live.finish(plan, pool, asked)
        return out

    def timing_reset(self) -> tuple[float, float]:
        """Seconds in the source and rendering text since the last reset, over all runs."""
        llm = text = 0.0
        for live in self.lives:
            a, b = live.timing_reset()
            llm, text = llm + a, text + b
        return llm, text

    def state_dict(self) -> dict:
        """The group's own counts (each run's `LiveHidden` keeps its state in its own checkpoint)."""
        return {"counts": np.array([self.calls, self.samples], np.int64)}

    def load_state_dict(self, state: dict) -> None:
        self.calls, self.samples = (int(x) for x in state["counts"])


def running_stats(moments: RunningMoments, spec_json: str | None) -> HiddenStats:
    """Statistics of the states seen so far, each std floored at RELATIVE_STD_FLOOR x the states' scale."""
    if moments.count == 0:
        raise ValueError("no hidden states seen")
    scale = float(np.median(np.sqrt(moments.mean ** 2 + moments.m2 / moments.count)))
    return moments.hidden_stats(std_floor=max(DEFAULT_STD_FLOOR, RELATIVE_STD_FLOOR * scale), spec_json=spec_json)
