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
"""

from __future__ import annotations

import json
import math

import numpy as np

KIND = "obs-projection"
PROJECTION_SEED = 0
MAX_INPUT = 8192
BLOCK = 4096  # rows per matrix product


def projection_spec_json(obs_shape, hidden_size: int, seed: int = PROJECTION_SEED) -> str:
    return json.dumps({"control": KIND, "obs_shape": [int(d) for d in obs_shape], "hidden_size": int(hidden_size),
                       "seed": int(seed)}, sort_keys=True)


def is_projection_spec(spec_json: str | None) -> bool:
    if not spec_json:
        return False
    try:
        return json.loads(spec_json).get("control") == KIND
    except (ValueError, AttributeError):
        return False


def _pool_factor(obs_shape) -> int:
    if len(obs_shape) != 3:
        return 1
    h, w, c = obs_shape
    f = 1
    while (h // f) * (w // f) * c > MAX_INPUT:
        f += 1
    return f


class ObservationProjection:
    """`(N, *obs_shape) -> (N, hidden_size)` float32: the fixed random projection described above."""

    def __init__(self, obs_shape, hidden_size: int, seed: int = PROJECTION_SEED):
        self.obs_shape, self.hidden_size, self.seed = tuple(int(d) for d in obs_shape), int(hidden_size), int(seed)
        self.factor = _pool_factor(self.obs_shape)
        if len(self.obs_shape) == 3:
            h, w, c = self.obs_shape
            self.input_dim = (h // self.factor) * (w // self.factor) * c
        else:
            self.input_dim = int(np.prod(self.obs_shape))
        rng = np.random.default_rng(self.seed)
        self.matrix = (rng.standard_normal((self.input_dim, self.hidden_size), dtype=np.float32)
                       / np.float32(math.sqrt(self.input_dim)))
        self.spec_json = projection_spec_json(self.obs_shape, self.hidden_size, self.seed)

    @classmethod
    def from_spec_json(cls, spec_json: str) -> ObservationProjection:
        d = json.loads(spec_json)
        return cls(d["obs_shape"], d["hidden_size"], d["seed"])

    def _inputs(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs)
        if x.shape[1:] != self.obs_shape:
            raise ValueError(f"the projection reads observations of shape {self.obs_shape}, got {x.shape[1:]}")
        scale = 1 / 255 if np.issubdtype(x.dtype, np.integer) else 1.0
        x = x.astype(np.float32) * np.float32(scale)
        if len(self.obs_shape) == 3 and self.factor > 1:
            f, (h, w, c) = self.factor, self.obs_shape
            x = x[:, : h // f * f, : w // f * f].reshape(len(x), h // f, f, w // f, f, c).mean((2, 4))
        return x.reshape(len(x), -1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = np.empty((len(obs), self.hidden_size), np.float32)
        for i in range(0, len(obs), BLOCK):
            out[i:i + BLOCK] = self._inputs(obs[i:i + BLOCK]) @ self.matrix
        return out


class ProjectionSource:
    """The `HiddenSource` of a control policy at run time (`hsrl.rl.live`): states of observations, no model."""

    reads_observations = True

    def __init__(self, projection: ObservationProjection):
        self.projection = projection
        self.spec_json, self.hidden_size = projection.spec_json, projection.hidden_size
        self.reads_images = len(projection.obs_shape) == 3

    def observation_states(self, obs: np.ndarray) -> np.ndarray:
        return self.projection(obs)

    def hidden_states(self, texts, images=None) -> np.ndarray:
        raise ValueError("a control policy's states are projections of observations, not of texts")
