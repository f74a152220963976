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
    """
    if hidden_fn is None:
        return runner
    periodic = runner.since_refresh >= skip_n
    mask = runner.fresh | periodic
    shape = jax.ShapeDtypeStruct((mask.shape[0], hidden_fn.hidden_size), jnp.float32)

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
        return jnp.where(mask[:, None], new, runner.hidden)

    hidden = jax.lax.cond(mask.any(), call, lambda _: runner.hidden, None)
    since = jnp.where(periodic, 0, runner.since_refresh)
    return runner._replace(hidden=hidden, fresh=jnp.zeros_like(runner.fresh), since_refresh=since)


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
        self.calls += 1
        self.samples += len(sym)
        return states

    @staticmethod
    def _obs_key(sym_row: np.ndarray, pixel_row: np.ndarray | None) -> bytes:
        return sym_row.tobytes() + (b"" if pixel_row is None else pixel_row.tobytes())

    def with_pool(self, sym, mask, pool_sym, pixels=None, pool_pixels=None, history=None) -> np.ndarray:
        """As `__call__`, given the env's pool of fresh worlds (`BatchedEnv.pool_observations`): when the pool is
        new, its states are computed in one batch (no history: a fresh world starts an episode); environments
        asked whose observation is one of the pool's and who have no history (an episode that just reset) get
        that state without a call of their own."""
        pool_sym = np.asarray(pool_sym)
        pool_pixels = None if pool_pixels is None else np.asarray(pool_pixels)
        digest = hashlib.blake2b(pool_sym.tobytes() + (b"" if pool_pixels is None else pool_pixels.tobytes()),
                                 digest_size=16).digest()
        if digest != self._pool_digest:
            states = self.states(pool_sym, pool_pixels)
            self.moments.update(states)
            self._pool_states = {self._obs_key(pool_sym[i], None if pool_pixels is None else pool_pixels[i]): states[i]
                                 for i in range(len(pool_sym))}
            self._pool_digest = digest
        return self(sym, mask, pixels, _pool=self._pool_states, history=history)

    def __call__(self, sym: np.ndarray, mask: np.ndarray, pixels: np.ndarray | None = None,
                 _pool: dict | None = None, history=None) -> np.ndarray:
        """(E, H) states for the environments `mask` asks for (NaN elsewhere); `history`: the runner's `History`
        arrays, for a spec with history."""
        sym = np.asarray(sym)
        pixels = None if pixels is None else np.asarray(pixels)
        idx = np.flatnonzero(mask)
        length = None if history is None else np.asarray(history[2])
        found = {}
        if _pool:
            for i in idx:
                if length is not None and length[i]:  # mid-episode: its prompt shows history, a fresh world's none
                    continue
                state = _pool.get(self._obs_key(sym[i], None if pixels is None else pixels[i]))
                if state is not None:
                    found[i] = state
            self.pool_hits += len(found)
        ask = np.array([i for i in idx if i not in found], dtype=np.int64)
        states = np.empty((len(idx), self.hidden_size), np.float32)
        if len(ask):
            new = self.states(sym[ask], None if pixels is None else pixels[ask], self.entries(history, ask))
            self.moments.update(new)
            states[np.searchsorted(idx, ask)] = new
        for i, state in found.items():
            states[np.searchsorted(idx, i)] = state
        if len(idx) == len(mask):
            self.last_batch = states
        # rows of environments not asked for are NaN: the caller keeps their old state, and any misuse shows
        out = np.full((len(mask), self.hidden_size), np.nan, np.float32)
        out[idx] = states
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


def running_stats(moments: RunningMoments, spec_json: str | None) -> HiddenStats:
    """Statistics of the states seen so far, each std floored at RELATIVE_STD_FLOOR x the states' scale."""
    if moments.count == 0:
        raise ValueError("no hidden states seen")
    scale = float(np.median(np.sqrt(moments.mean ** 2 + moments.m2 / moments.count)))
    return moments.hidden_stats(std_floor=max(DEFAULT_STD_FLOOR, RELATIVE_STD_FLOOR * scale), spec_json=spec_json)
