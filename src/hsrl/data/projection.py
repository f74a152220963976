"""A fixed random projection of the policy's observation to a hidden state's width: the input of the
experiment's control arm (`hsrl experiment`: the hidden-state network fed this instead of the LLM's state).

It asks "does the LLM's state carry information the policy does not get from more input features?": the
control has the same network, the same input width and the same z-score normalisation as the hidden-state
arm, and nothing the observation lacks. The matrix has i.i.d. N(0, 1/D) entries (D the input's length),
drawn from a fixed seed, so every seed of the control arm reads the same map (as every seed of the hidden arm
reads the same LLM). Symbolic observations are projected as they are; pixel frames are scaled to [0, 1] (uint8
/ 255) and average-pooled by the smallest factor that brings them to at most MAX_INPUT values, so the matrix
stays small. The projection's description is the "spec" of the states it gives: its JSON goes where an
extraction spec would (checkpoints, the checks that compare them).

History (`history` K > 0: the hidden arm's prompts show the K previous observations of the episode, `--history K`).
The control then reads the same steps: the input is the concatenation [x_t, x_{t-1}, onehot(a_{t-1}), v_1, ...,
x_{t-K}, onehot(a_{t-K}), v_K], lag by lag, where x_{t-j} is the observation j steps before, a_{t-j} the action taken
after it and v_j 1 when that step belongs to the current episode; a lag before the episode's start is all zeros
(v_j = 0). Offline the previous steps are the rows `hsrl.data.label.row_history` gives a prompt (`history_rows`: the
same environment, never across an episode's end, a segment gap or a file that does not follow on); online and in
evaluation they are the runner's `hsrl.rl.live.History`, which holds symbolic observations, so a control with
history reads symbolic observations only. Both paths call `ObservationProjection.__call__` with the runner's layout
(oldest first, the last `length` valid), so one observation sequence gives one control state.

Map (`map`, `hsrl experiment --control-map`): "linear" is x W; "relu" is relu(x W + b), random ReLU features of the
same width, with the same W and a fixed bias b ~ N(0, RELU_BIAS_STD^2) drawn after it. Either is then z-scored as
the hidden arm's states are. Fields at their defaults (no history, linear) are left out of the JSON, so a spec of
an earlier hsrl reads as the linear control of the current observation, and its checkpoints still load.
`describe_control(spec_json)` is the phrase a report uses to name the control.
"""

from __future__ import annotations

import json
import math

import numpy as np

from hsrl.errors import InputError

KIND = "obs-projection"
PROJECTION_SEED = 0
MAX_INPUT = 8192
BLOCK = 4096  # rows per matrix product
MAX_MATRIX_BYTES = 4 * 2**30  # a control with a long history of a wide observation: refused past this (float32 W)
MAPS = ("linear", "relu")
DEFAULT_MAP = "linear"  # the control of earlier runs: their checkpoints and verdicts keep their meaning
# std of the ReLU map's bias: a unit's pre-activation x W spreads by about 0.15 over Craftax observations (symbolic
# and pooled pixels, random play), so thresholds drawn at this scale cut through the data rather than past it
RELU_BIAS_STD = 0.1


def projection_spec_json(obs_shape, hidden_size: int, seed: int = PROJECTION_SEED, history: int = 0,
                         num_actions: int | None = None, map: str = DEFAULT_MAP) -> str:
    """The projection's JSON; `history`, `num_actions` (with history) and `map` only where they differ from the
    control of earlier hsrl versions (no history, linear), whose JSON is unchanged."""
    d = {"control": KIND, "obs_shape": [int(x) for x in obs_shape], "hidden_size": int(hidden_size), "seed": int(seed)}
    if history:
        d.update(history=int(history), num_actions=int(num_actions))
    if map != DEFAULT_MAP:
        d["map"] = map
    return json.dumps(d, sort_keys=True)


def is_projection_spec(spec_json: str | None) -> bool:
    if not spec_json:
        return False
    try:
        return json.loads(spec_json).get("control") == KIND
    except (ValueError, AttributeError):
        return False


def check_control_map(control_map: str, control: bool) -> None:
    """--control-map names one of the maps, and only with --control (the control arm)."""
    if control_map not in MAPS:
        raise InputError(f"--control-map must be one of {', '.join(MAPS)}, got {control_map!r}")
    if control_map != DEFAULT_MAP and not control:
        raise InputError("--control-map chooses the control's map; it needs --control (the control arm)")


def describe_control(spec_json: str) -> str:
    """A short phrase naming the control a projection spec describes, for reports: e.g. "a fixed random linear
    projection of the observation and its 2 previous observations and actions to 64 features"."""
    d = json.loads(spec_json)
    k = int(d.get("history", 0))
    what = "the observation" if k == 0 else (
        "the observation and its previous observation and action" if k == 1 else
        f"the observation and its {k} previous observations and actions")
    width = int(d["hidden_size"])
    if d.get("map", DEFAULT_MAP) == "relu":
        return f"{width} fixed random ReLU features (relu of a random linear map plus a random bias) of {what}"
    return f"a fixed random linear projection of {what} to {width} features"


def _pool_factor(obs_shape) -> int:
    if len(obs_shape) != 3:
        return 1
    h, w, c = obs_shape
    f = 1
    while (h // f) * (w // f) * c > MAX_INPUT:
        f += 1
    return f


def spec_history(spec_json: str | None) -> int:
    """How many previous observations an extraction spec's prompts show (0 for none, a spec of an earlier hsrl, or
    data without a spec): the history a control matched to that data reads."""
    return int(json.loads(spec_json).get("history", 0)) if spec_json else 0


def history_rows(done: np.ndarray, num_envs: int, k: int, segment_start: np.ndarray | None = None) -> np.ndarray:
    """(N, k) int64: for each time-major row (`row = t * num_envs + env`) of one run of consecutive steps, the rows
    of its environment's `k` previous steps in the same episode, oldest first and right-aligned as the runner's
    `History` holds them (column k - j is j steps before), -1 where that step is before the episode's start (the
    step after a `done`, the run's first step, or a row of `segment_start`, (N,) bool: the first step after a gap,
    `hsrl.data.chunks.episode_starts`): the rows `hsrl.data.label.row_history` shows a prompt."""
    from hsrl.data.chunks import episode_age

    age = episode_age(done, num_envs, segment_start)  # steps since the episode began, (T, E)
    steps = len(age)
    rows = np.arange(steps * num_envs, dtype=np.int64).reshape(steps, num_envs)
    lags = np.arange(k, 0, -1, dtype=np.int64)  # oldest first: column i is k - i steps before
    prev = rows[..., None] - lags * num_envs
    return np.where(age[..., None] >= lags, prev, -1).reshape(steps * num_envs, k)


class ObservationProjection:
    """`(N, *obs_shape) -> (N, hidden_size)` float32: the fixed random map described above (with `history` K, of
    each observation and its K previous steps)."""

    def __init__(self, obs_shape, hidden_size: int, seed: int = PROJECTION_SEED, history: int = 0,
                 num_actions: int | None = None, map: str = DEFAULT_MAP):
        self.obs_shape, self.hidden_size, self.seed = tuple(int(d) for d in obs_shape), int(hidden_size), int(seed)
        self.history, self.map = int(history), map
        self.num_actions = None if not self.history else int(num_actions or 0)
        if map not in MAPS:
            raise InputError(f"--control-map {map!r}; expected one of {', '.join(MAPS)}")
        if self.history < 0:
            raise InputError(f"history={self.history}; expected 0 or more previous observations")
        if self.history and len(self.obs_shape) != 1:
            raise InputError(f"a control matched to --history {self.history} reads symbolic observations (the "
                             f"runner's history holds them), not observations of shape {self.obs_shape}: use "
                             f"symbolic data and envs, or --no-control")
        if self.history and self.num_actions < 1:
            raise ValueError("a control with history needs the env's action count (num_actions)")
        self.factor = _pool_factor(self.obs_shape)
        if len(self.obs_shape) == 3:
            h, w, c = self.obs_shape
            self.obs_dim = (h // self.factor) * (w // self.factor) * c
        else:
            self.obs_dim = int(np.prod(self.obs_shape))
        # per previous step: its observation, its action one-hot, and whether it is in the episode
        self.input_dim = self.obs_dim + self.history * (self.obs_dim + (self.num_actions or 0) + 1)
        if self.input_dim * self.hidden_size * 4 > MAX_MATRIX_BYTES:
            raise InputError(f"the control's map of {self.input_dim} inputs (the observation and {self.history} "
                             f"previous steps) to {self.hidden_size} features would take "
                             f"{self.input_dim * self.hidden_size * 4 / 2**30:.1f} GiB: use a shorter --history")
        rng = np.random.default_rng(self.seed)
        self.matrix = (rng.standard_normal((self.input_dim, self.hidden_size), dtype=np.float32)
                       / np.float32(math.sqrt(self.input_dim)))
        self.bias = (rng.standard_normal(self.hidden_size, dtype=np.float32) * np.float32(RELU_BIAS_STD)
                     if map == "relu" else None)
        self.spec_json = projection_spec_json(self.obs_shape, self.hidden_size, self.seed, self.history,
                                              self.num_actions, self.map)

    @classmethod
    def from_spec_json(cls, spec_json: str) -> ObservationProjection:
        """The projection a spec describes; a spec of an earlier hsrl (no history, no map) is the linear control of
        the current observation."""
        d = json.loads(spec_json)
        return cls(d["obs_shape"], d["hidden_size"], d["seed"], history=d.get("history", 0),
                   num_actions=d.get("num_actions"), map=d.get("map", DEFAULT_MAP))

    def _obs_inputs(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs)
        if x.shape[1:] != self.obs_shape:
            raise ValueError(f"the projection reads observations of shape {self.obs_shape}, got {x.shape[1:]}")
        scale = 1 / 255 if np.issubdtype(x.dtype, np.integer) else 1.0
        x = x.astype(np.float32) * np.float32(scale)
        if len(self.obs_shape) == 3 and self.factor > 1:
            f, (h, w, c) = self.factor, self.obs_shape
            x = x[:, : h // f * f, : w // f * f].reshape(len(x), h // f, f, w // f, f, c).mean((2, 4))
        return x.reshape(len(x), -1)

    def _inputs(self, obs: np.ndarray, history=None) -> np.ndarray:
        """The map's input rows: the observations, then (with history) lag 1 .. K, each its observation, action
        one-hot and validity, zeros where the lag is before the episode's start."""
        x = self._obs_inputs(obs)
        if not self.history:
            return x
        n, k = len(x), self.history
        if history is None:  # no previous steps: every observation starts its episode
            hist_obs, hist_action, length = (np.zeros((n, k, *self.obs_shape), np.float32),
                                             np.zeros((n, k), np.int64), np.zeros(n, np.int64))
        else:
            hist_obs, hist_action, length = (np.asarray(a) for a in history)
        if hist_obs.shape[:2] != (n, k) or hist_action.shape != (n, k) or length.shape != (n,):
            raise ValueError(f"history of {n} observations with {k} steps each expected, got shapes "
                             f"{hist_obs.shape}, {hist_action.shape}, {length.shape}")
        parts = [x]
        eye = np.eye(self.num_actions, dtype=np.float32)
        for j in range(1, k + 1):
            slot, valid = k - j, (length >= j)
            v = valid.astype(np.float32)[:, None]
            action = np.where(valid, hist_action[:, slot], 0).astype(np.int64)
            parts += [self._obs_inputs(hist_obs[:, slot]) * v, eye[action] * v, v]
        return np.concatenate(parts, axis=1)

    def __call__(self, obs: np.ndarray, history=None) -> np.ndarray:
        """Control states of `obs`; with history, `history` is each one's previous steps in the runner's layout
        `(obs (N, K, *obs_shape), action (N, K), length (N,))`: oldest first, the last `length` of the episode
        (None: none, as at an episode's start)."""
        out = np.empty((len(obs), self.hidden_size), np.float32)
        for i in range(0, len(obs), BLOCK):
            part = None if history is None else tuple(np.asarray(a)[i:i + BLOCK] for a in history)
            z = self._inputs(obs[i:i + BLOCK], part) @ self.matrix
            out[i:i + BLOCK] = z if self.bias is None else np.maximum(z + self.bias, 0)
        return out

    def of_rows(self, obs: np.ndarray, action: np.ndarray, done: np.ndarray, num_envs: int,
                segment_start: np.ndarray | None = None) -> np.ndarray:
        """Control states of every row of one run of consecutive time-major steps (`row = t * num_envs + env`), each
        with its episode's previous rows as history (`history_rows`, none across a row of `segment_start`): the
        offline path of the states the runner gives live. Without history, `self(obs)`."""
        if not self.history:
            return self(obs)
        prev = history_rows(done, num_envs, self.history, segment_start)
        action = np.asarray(action)
        out = np.empty((len(obs), self.hidden_size), np.float32)
        for i in range(0, len(obs), BLOCK):
            p = prev[i:i + BLOCK]
            valid = p >= 0
            safe = np.where(valid, p, 0)
            hist = (np.asarray(obs[safe.reshape(-1)]).reshape(*p.shape, *self.obs_shape), action[safe],
                    valid.sum(1))
            out[i:i + BLOCK] = self(obs[i:i + BLOCK], hist)
        return out


def dataset_states(projection: ObservationProjection, ds) -> np.ndarray:
    """Control states of every row of a loaded dataset (`hsrl.data.load_dataset` with obs, and with history action
    and done): with history, each run of files that follow on (`check_consecutive`: where a prompt's history,
    `hsrl.data.label.steps_before`, reaches across files) is read as one time-major run, and no history reaches
    across a gap (`segment_start_rows`), a file that does not follow on, or the data's first step."""
    if not projection.history:
        return projection(ds["obs"])
    from hsrl.data.chunks import DataFileError, check_consecutive, inspect_chunk, segment_start_rows

    infos = [inspect_chunk(p) for p in ds.files]
    bounds = [0]
    for i in range(1, len(infos)):
        try:
            check_consecutive(infos[i - 1:i + 1])
        except DataFileError:  # another env or num_envs, or steps that do not follow on: a run of its own
            bounds.append(i)
    bounds.append(len(infos))
    out = np.empty((len(ds), projection.hidden_size), np.float32)
    for a, b in zip(bounds, bounds[1:]):
        lo, hi = int(ds.offsets[a]), int(ds.offsets[b])
        out[lo:hi] = projection.of_rows(ds["obs"][lo:hi], ds["action"][lo:hi], ds["done"][lo:hi],
                                        infos[a].meta.num_envs, segment_start_rows(infos[a:b]))
    return out


class ProjectionSource:
    """The `HiddenSource` of a control policy at run time (`hsrl.rl.live`): states of observations, no model.
    `history`: how many previous steps the runner carries for it (its `History`), as for a spec with history."""

    reads_observations = True

    def __init__(self, projection: ObservationProjection):
        self.projection = projection
        self.spec_json, self.hidden_size = projection.spec_json, projection.hidden_size
        self.reads_images = len(projection.obs_shape) == 3
        self.history = projection.history

    def observation_states(self, obs: np.ndarray, history=None) -> np.ndarray:
        return self.projection(obs, history)

    def hidden_states(self, texts, images=None) -> np.ndarray:
        raise ValueError("a control policy's states are projections of observations, not of texts")
