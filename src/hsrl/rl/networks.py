"""Actor-critic networks (Flax linen), shared by offline AWR, online PPO and evaluation.

One encoder turns an observation into `width` features: three conv blocks (32 channels, 5x5, ReLU,
3x3 max-pool with stride 3, SAME padding) then a dense layer for pixels, or two dense layers for
symbolic vectors. The `*Aug` networks concatenate the *normalised* hidden state (size from the data,
e.g. 2560 for Qwen3-4B) with those features (512 + 2560 = 3072). Two heads read the result: the actor
(dense `width` -> logits over the env's actions) and the critic (dense `width` -> one value).

Every network is called the same way, whatever its kind:

    net = make_network(config)
    params = init_params(config, jax.random.PRNGKey(0))
    logits, value = net.apply(params, obs, hidden)   # hidden: (B, H) normalised, or None for the baselines

`obs` is (B, *obs_shape): pixels as float32 in [0, 1] or uint8 (converted with `uint8_to_pixels`),
symbolic vectors as float32. Layer shapes follow from the input (the conv output size is never
written down), so the same classes serve Craftax (130x110) and Craftax-Classic (63x63) pixels.
A `NetworkConfig` is small, frozen and JSON-serialisable; checkpoints store it, so an offline
checkpoint warm-starts online training with no conversion.

Recurrent policies (`policy="gru"`, online PPO's `--policy gru`, after Craftax_Baselines' PPO-RNN): the same
encoder, its features concatenated with the normalised hidden state as above, then a GRU (`nn.GRUCell` of `width`
units, scanned over time with `nn.scan`) whose output the same heads read. The GRU state (the *carry*, (B, width))
goes from step to step and is zeroed before the first observation of every episode (`start`). A recurrent network
reads sequences:

    carry, logits, value = net.apply(params, carry, obs, hidden, start)   # obs (T, B, ...), start (T, B) bool

`policy_step` and `policy_sequence` call either kind the same way (the feed-forward networks pass a placeholder
carry (B, 1) through untouched), so rollouts, updates and evaluation have one code path for both.

Fusion (`fusion`, `--fusion`): how the normalised hidden state h joins the observation features f. "concat" (the
default) is the above, [f, h]. "gated" keeps the width of f and adds a gated projection of h to it,
`f + sigmoid(g) * W h` (W: dense, no bias; W h scaled to unit RMS over its features, so that training cannot grow W
to read the state through a closed gate: the gate alone sets how much of it the network reads), with one learned
scalar gate logit g (the parameter `gate_logit`) initialised at GATE_LOGIT_INIT = -6 (sigmoid 0.0025): training starts
as the baseline, and the gate opens only as far as reading h pays. `gate_value(params)` reads sigmoid(g), the metric
`hidden/gate`.

The gate's own learning rate. Under Adam a parameter moves about one learning rate per step whatever its gradient's
size, so with the network's learning rate the logit can travel at most the run's summed learning rate: 0.04 at
`hsrl online`'s defaults (384 optimiser steps at 2e-4 annealed to 0), 6 at the experiment's AWR arms (20,000 steps
at 3e-4), too little to leave -6. The gate is one scalar that must be able to cross a fixed distance (from -6 to
past 0) in whatever number of steps a run has, so it gets its own Adam with a constant learning rate sized from the
run's number of optimiser steps: `gate_learning_rate(steps)` = GATE_TRAVEL / steps (GATE_TRAVEL = 12 logit units,
from -6 to +6 under a gradient of constant sign), at most GATE_MAX_LR = 0.05 per step (a run shorter than 240 steps
gets less travel rather than a gate that jumps). `gate_optimizer(main, gate_lr)` is `optax.multi_transform`: the
gate logit under its Adam, every other parameter under `main` (the run's own optimiser, schedule and all). Why a
learning rate and not a reparametrisation (logit = scale * param): the travel then scales with the run's summed main
learning rate, which differs 700-fold between an online run and a long AWR run; no one scale lets the first open the
gate without letting the second's noise walk it far. With the travel fixed, Adam's random walk on a gradient that
carries no signal (a noise state) stays a small fraction of it, and a state that does not help pushes the gate
shut (its projection adds noise to the features), so a noise state leaves the gate near its start (tests/
test_fusion.py, at the default settings of `online`, `train-awr` and the experiment's AWR arms; offline, a noise state
fixed per row can still open it a little to memorise rows seen many times: 0.0025 -> 0.013 over 100 passes). Only gated networks get the second
transform: the optimiser state of a concat run (and so its checkpoints) is as before; a gated run written before
this rule cannot be resumed (its optimiser state has another structure).

Reading a gate. The logit could have moved at most the run's summed gate learning rate, its *gate travel* (logit
units; `gate_travel` in checkpoints, summaries, eval.json and an experiment's result.json). `gate_could_open(travel)`
is whether that reaches |GATE_LOGIT_INIT| (the logit could have got from its start to 0, a gate of 0.5); a gate near
0 is the policy saying it does not need the state only then. A gate whose run could not move it says nothing, and the
readers (`hsrl eval`, `hsrl experiment`'s report) say so instead of reading it.

Architecture (`arch`, online PPO's `--arch`): "shared" is hsrl's network above (one encoder, two one-layer heads).
"separate" is the network the published Craftax PPO numbers come from (Craftax_Baselines' `ActorCritic` and
`ActorCriticConv`, `ActorCriticSeparate` here): no shared encoder; for symbolic vectors an actor tower and a critic
tower of three dense layers of `width` each (orthogonal sqrt(2), tanh as published) and the output layer (orthogonal
0.01 for the logits, 1 for the value); for pixels the published conv stack (3 x [conv 32 5x5, ReLU, max-pool 3x3
stride 3, VALID]) whose embedding both towers read (actor: dense `width` (orthogonal 2), dense `num_actions`
(0.01) with the activation, dense `num_actions` (0.01); critic: dense `width` (orthogonal 2), dense 1). The hidden
state is concatenated to both towers' input, or, gated, `sigmoid(g) * W_tower h` is added to the first layer of
each tower (one gate for both).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hsrl.pixels import uint8_to_pixels
from hsrl.rl import cpu_ops
from hsrl.strict import dataclass_kwargs

KINDS = ("conv", "mlp")
POLICIES = ("mlp", "gru")  # feed-forward (the encoder of `kind`), or a GRU over time after it
ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}
FUSIONS = ("concat", "gated")  # how the hidden state joins the observation features (module docstring)
ARCHS = ("shared", "separate")  # hsrl's shared encoder + heads, or the published separate actor and critic towers
PUBLISHED_ACTIVATION = {"mlp": "tanh", "conv": "relu"}  # Craftax_Baselines' PPO networks' dense-layer activation
GATE_LOGIT_INIT = -6.0  # sigmoid(-6) = 0.0025: the gate starts closed
GATE_PARAM = "gate_logit"
GATE_TRAVEL = 12.0  # logit units the gate's own Adam can move it over a run: from -6 to +6 (module docstring)
GATE_MAX_LR = 0.05  # the gate's learning rate at most (runs under GATE_TRAVEL / GATE_MAX_LR = 240 steps: less travel)
RMS_EPS = 1e-6  # of the gated projection's RMS scaling (an all-zero hidden input projects to zeros)


@dataclass(frozen=True)
class NetworkConfig:
    """What network to build. `hidden_size` None = the baseline (no hidden-state input)."""

    kind: str  # "conv" (pixels) or "mlp" (symbolic vectors)
    num_actions: int
    obs_shape: tuple[int, ...]  # one observation: (H, W, C) for conv, (D,) for mlp
    hidden_size: int | None = None
    width: int = 512  # encoder features and head layers
    activation: str = "relu"  # of the dense layers ("relu" or "tanh"); the conv blocks always use ReLU
    policy: str = "mlp"  # "mlp": feed-forward; "gru": a GRU between the features and the heads
    fusion: str = "concat"  # "concat": [features, h]; "gated": features + sigmoid(g) * W h (module docstring)
    arch: str = "shared"  # "shared": encoder + heads; "separate": the published actor and critic towers

    def __post_init__(self):
        object.__setattr__(self, "obs_shape", tuple(int(d) for d in self.obs_shape))
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        elif self.kind == "conv" and len(self.obs_shape) != 3:
            problems.append(f"conv networks take (H, W, C) observations, got obs_shape {self.obs_shape}")
        elif self.kind == "mlp" and len(self.obs_shape) != 1:
            problems.append(f"mlp networks take (D,) observations, got obs_shape {self.obs_shape}")
        if int(self.num_actions) < 1:
            problems.append(f"num_actions must be positive, got {self.num_actions}")
        if self.hidden_size is not None and int(self.hidden_size) < 1:
            problems.append(f"hidden_size must be positive or None, got {self.hidden_size}")
        if int(self.width) < 1:
            problems.append(f"width must be positive, got {self.width}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.policy not in POLICIES:
            problems.append(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        elif self.fusion == "gated" and self.hidden_size is None:
            problems.append("gated fusion needs a hidden state (hidden_size); the baseline has none")
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {ARCHS}, got {self.arch!r}")
        elif self.arch == "separate" and self.policy == "gru":
            problems.append("the separate (published) towers are a feed-forward network; policy 'gru' has its own")
        if problems:
            raise ValueError("NetworkConfig: " + "; ".join(problems))

    @property
    def uses_hidden(self) -> bool:
        return self.hidden_size is not None

    @property
    def recurrent(self) -> bool:
        return self.policy == "gru"

    @property
    def gated(self) -> bool:
        return self.fusion == "gated"

    @property
    def class_name(self) -> str:
        gated = ", gated" if self.gated else ""
        if self.recurrent:
            return f"{ActorCriticGRU.__name__}({self.kind}{', hidden' if self.uses_hidden else ''}{gated})"
        if self.arch == "separate":
            return f"{ActorCriticSeparate.__name__}({self.kind}{', hidden' if self.uses_hidden else ''}{gated})"
        name = NETWORK_CLASSES[(self.kind, self.uses_hidden)].__name__
        return f"{name}(gated)" if self.gated else name

    @classmethod
    def for_env(cls, obs_shape, num_actions: int, hidden_size: int | None = None, **kw) -> NetworkConfig:
        """conv for (H, W, C) observations, mlp for (D,)."""
        kind = "conv" if len(tuple(obs_shape)) == 3 else "mlp"
        return cls(kind=kind, num_actions=int(num_actions), obs_shape=tuple(obs_shape),
                   hidden_size=None if hidden_size is None else int(hidden_size), **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["obs_shape"] = list(self.obs_shape)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d) -> NetworkConfig:
        return cls(**dataclass_kwargs(cls, d))

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        return cls.from_dict(json.loads(text))


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


def _conv_block(x, pool_padding: str, **conv):
    """conv 32 5x5 (SAME; `conv`: nn.Conv's initialisers), ReLU, max-pool 3x3 stride 3 (`pool_padding`). On the CPU
    backend through hsrl.rl.cpu_ops: the same layers and parameters, with gradients XLA's CPU backend runs fast inside
    lax.scan (where lax's and flax's own fall to naive loops)."""
    cpu = jax.default_backend() == "cpu"
    x = nn.Conv(32, (5, 5), conv_general_dilated=cpu_ops.conv_general_dilated if cpu else None, **conv)(x)
    if cpu:
        return cpu_ops.relu_max_pool(x, 3, pool_padding)
    return nn.max_pool(nn.relu(x), (3, 3), strides=(3, 3), padding=pool_padding)


class ConvEncoder(nn.Module):
    """(B, H, W, C) pixels -> (B, width): 3 x [conv 32 5x5, ReLU, max-pool 3x3 stride 3] -> dense."""

    width: int = 512
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        x = uint8_to_pixels(obs) if obs.dtype == jnp.uint8 else obs.astype(jnp.float32)
        for _ in range(3):
            x = _conv_block(x, "SAME", kernel_init=nn.initializers.orthogonal(np.sqrt(2)))
        x = x.reshape((x.shape[0], -1))
        return ACTIVATIONS[self.activation](_dense(self.width, np.sqrt(2))(x))


class MLPEncoder(nn.Module):
    """(B, D) symbolic vector -> (B, width): two dense layers."""

    width: int = 512
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        act = ACTIVATIONS[self.activation]
        x = obs.astype(jnp.float32)
        x = act(_dense(self.width, np.sqrt(2))(x))
        return act(_dense(self.width, np.sqrt(2))(x))


class Heads(nn.Module):
    """features -> (logits (B, num_actions), value (B,)): one hidden layer each."""

    num_actions: int
    width: int = 512
    activation: str = "relu"

    @nn.compact
    def __call__(self, features):
        act = ACTIVATIONS[self.activation]
        actor = act(_dense(self.width, np.sqrt(2))(features))
        logits = _dense(self.num_actions, 0.01)(actor)
        critic = act(_dense(self.width, np.sqrt(2))(features))
        value = _dense(1, 1.0)(critic)
        return logits, jnp.squeeze(value, -1)


def _check_hidden(name: str, hidden, hidden_size: int | None):
    if hidden_size is None:
        if hidden is not None:
            raise ValueError(f"{name} takes no hidden state (it is the baseline); pass hidden=None")
        return None
    if hidden is None:
        raise ValueError(f"{name} needs the normalised hidden state (B, {hidden_size})")
    if hidden.shape[-1] != hidden_size:
        raise ValueError(f"{name} was built for hidden states of size {hidden_size}, got {hidden.shape[-1]}")
    return hidden.astype(jnp.float32)


def _gate(module: nn.Module) -> jax.Array:
    """sigmoid of the module's learned gate logit (a scalar parameter `gate_logit`, initialised closed)."""
    return jax.nn.sigmoid(module.param(GATE_PARAM, nn.initializers.constant(GATE_LOGIT_INIT), ()))


def _projection(features: int, hidden):
    """W h of the gated fusion, scaled to unit RMS over its `features` (so the gate alone sets how much of it the
    network reads: a W grown by training cannot make a closed gate read the state); no bias (with a bias the gate
    could open for a constant that does not depend on the state)."""
    y = nn.Dense(features, use_bias=False, kernel_init=nn.initializers.orthogonal(1.0), name="fusion")(hidden)
    return y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + RMS_EPS)


def _fuse(module: nn.Module, features, hidden, fusion: str):
    """Observation features joined with the normalised hidden state: [f, h] (concat) or f + sigmoid(g) W h (gated);
    `features` unchanged when there is no hidden state."""
    if hidden is None:
        return features
    if fusion == "concat":
        return jnp.concatenate([features, hidden], axis=-1)
    return features + _gate(module) * _projection(features.shape[-1], hidden)


class _ActorCritic(nn.Module):
    num_actions: int
    hidden_size: int | None = None
    width: int = 512
    activation: str = "relu"
    fusion: str = "concat"
    encoder_cls = None  # set by subclasses

    @nn.compact
    def __call__(self, obs, hidden=None):
        hidden = _check_hidden(type(self).__name__, hidden, self.hidden_size)
        features = self.encoder_cls(self.width, self.activation, name="encoder")(obs)
        features = _fuse(self, features, hidden, self.fusion)
        return Heads(self.num_actions, self.width, self.activation, name="heads")(features)


class ActorCriticConv(_ActorCritic):
    """Pixels -> (logits, value). The baseline: no hidden state."""

    encoder_cls = ConvEncoder


class ActorCriticConvAug(_ActorCritic):
    """Pixels + normalised hidden state -> (logits, value)."""

    encoder_cls = ConvEncoder


class ActorCriticMLP(_ActorCritic):
    """Symbolic vector -> (logits, value). The baseline: no hidden state."""

    encoder_cls = MLPEncoder


class ActorCriticMLPAug(_ActorCritic):
    """Symbolic vector + normalised hidden state -> (logits, value)."""

    encoder_cls = MLPEncoder


NETWORK_CLASSES = {
    ("conv", False): ActorCriticConv,
    ("conv", True): ActorCriticConvAug,
    ("mlp", False): ActorCriticMLP,
    ("mlp", True): ActorCriticMLPAug,
}


class PublishedConvEncoder(nn.Module):
    """(B, H, W, C) pixels -> (B, D) flat embedding: Craftax_Baselines' `ActorCriticConv` stack, 3 x [conv 32 5x5
    (flax's default init), ReLU, max-pool 3x3 stride 3 (VALID)], flattened (no dense layer)."""

    @nn.compact
    def __call__(self, obs):
        x = uint8_to_pixels(obs) if obs.dtype == jnp.uint8 else obs.astype(jnp.float32)
        for _ in range(3):
            x = _conv_block(x, "VALID")
        return x.reshape((x.shape[0], -1))


class Tower(nn.Module):
    """Dense layers (features, orthogonal scale, activated?) in order. With `gate`, the first layer also adds
    `gate * W h` (the gated fusion) before its activation."""

    layers: tuple[tuple[int, float, bool], ...]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x, hidden=None, gate=None):
        act = ACTIVATIONS[self.activation]
        for i, (features, scale, activated) in enumerate(self.layers):
            y = _dense(features, scale)(x)
            if i == 0 and gate is not None:
                y = y + gate * _projection(features, hidden)
            x = act(y) if activated else y
        return x


class ActorCriticSeparate(nn.Module):
    """The published Craftax PPO network (`arch="separate"`, module docstring): separate actor and critic towers,
    reading the observation (symbolic) or the published conv embedding (pixels), plus the hidden state
    (concatenated to both towers' input, or gated into their first layer)."""

    kind: str
    num_actions: int
    hidden_size: int | None = None
    width: int = 512
    activation: str = "tanh"
    fusion: str = "concat"

    @nn.compact
    def __call__(self, obs, hidden=None):
        hidden = _check_hidden(type(self).__name__, hidden, self.hidden_size)
        w, a = self.width, self.num_actions
        if self.kind == "conv":
            x = PublishedConvEncoder(name="encoder")(obs)
            actor = ((w, 2.0, True), (a, 0.01, True), (a, 0.01, False))
            critic = ((w, 2.0, True), (1, 1.0, False))
        else:
            x = obs.astype(jnp.float32)
            actor = ((w, np.sqrt(2), True),) * 3 + ((a, 0.01, False),)
            critic = ((w, np.sqrt(2), True),) * 3 + ((1, 1.0, False),)
        gate = None
        if hidden is not None and self.fusion == "gated":
            gate = _gate(self)
        else:
            x = _fuse(self, x, hidden, "concat")
        logits = Tower(actor, self.activation, name="actor")(x, hidden, gate)
        value = Tower(critic, self.activation, name="critic")(x, hidden, gate)
        return logits, jnp.squeeze(value, -1)


class _ResetGRU(nn.Module):
    """One GRU step that first zeroes the carry of the rows whose episode starts at this observation."""

    features: int

    @nn.compact
    def __call__(self, carry, inputs):
        x, start = inputs
        carry = jnp.where(start[:, None], jnp.zeros_like(carry), carry)
        return nn.GRUCell(self.features, name="cell")(carry, x)


# scanned over the leading (time) axis; one set of parameters for every step
_ScannedGRU = nn.scan(_ResetGRU, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0)


class ActorCriticGRU(nn.Module):
    """(carry (B, width), obs (T, B, ...), hidden (T, B, H) or None, start (T, B)) -> (carry, logits (T, B, A),
    value (T, B)): encoder features [+ normalised hidden state] -> GRU (reset at episode starts) -> heads."""

    kind: str
    num_actions: int
    hidden_size: int | None = None
    width: int = 512
    activation: str = "relu"
    fusion: str = "concat"

    @nn.compact
    def __call__(self, carry, obs, hidden, start):
        hidden = _check_hidden(type(self).__name__, hidden, self.hidden_size)
        T, B = obs.shape[:2]
        encoder = (ConvEncoder if self.kind == "conv" else MLPEncoder)(self.width, self.activation, name="encoder")
        features = encoder(obs.reshape((T * B,) + obs.shape[2:])).reshape(T, B, -1)
        features = _fuse(self, features, hidden, self.fusion)
        carry, y = _ScannedGRU(self.width, name="gru")(carry, (features, start.astype(bool)))
        logits, value = Heads(self.num_actions, self.width, self.activation, name="heads")(y)
        return carry, logits, value


def make_network(config: NetworkConfig) -> nn.Module:
    """The linen module a config describes: `module.apply(params, obs, hidden=None) -> (logits, value)`, or for
    a recurrent config `module.apply(params, carry, obs, hidden, start) -> (carry, logits, value)` over (T, B)."""
    if config.recurrent:
        return ActorCriticGRU(kind=config.kind, num_actions=config.num_actions, hidden_size=config.hidden_size,
                              width=config.width, activation=config.activation, fusion=config.fusion)
    if config.arch == "separate":
        return ActorCriticSeparate(kind=config.kind, num_actions=config.num_actions, hidden_size=config.hidden_size,
                                   width=config.width, activation=config.activation, fusion=config.fusion)
    cls = NETWORK_CLASSES[(config.kind, config.uses_hidden)]
    return cls(num_actions=config.num_actions, hidden_size=config.hidden_size, width=config.width,
               activation=config.activation, fusion=config.fusion)


def gate(params) -> jax.Array | None:
    """sigmoid of a gated network's learned gate logit, as an array (usable inside jit); None for a network without
    a gate (concat fusion, the baseline)."""
    logit = params["params"].get(GATE_PARAM)
    return None if logit is None else jax.nn.sigmoid(jnp.asarray(logit, jnp.float32))


def gate_value(params) -> float | None:
    """The gate of a gated network as a number (the metric `hidden/gate`; near 0, where `gate_could_open` says it
    could have moved: the policy does not read its hidden state, see the module docstring); None without a gate."""
    g = gate(params)
    return None if g is None else float(g)


def gate_learning_rate(optimizer_steps: int) -> float:
    """The gate logit's constant Adam learning rate in a run of `optimizer_steps` updates: GATE_TRAVEL spread over
    them (at most GATE_MAX_LR), so the gate can travel the same distance in a short run as in a long one."""
    if int(optimizer_steps) < 1:
        raise ValueError(f"a run needs at least one optimiser step, got {optimizer_steps}")
    return min(GATE_TRAVEL / int(optimizer_steps), GATE_MAX_LR)


def _gate_labels(params):
    """"gate" for the gate logit, "main" for every other parameter."""
    def label(path, _):
        return "gate" if getattr(path[-1], "key", None) == GATE_PARAM else "main"
    return jax.tree_util.tree_map_with_path(label, params)


def gate_optimizer(main: optax.GradientTransformation, gate_lr: float, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """`main` for every parameter but the gate logit, which gets its own Adam at the constant `gate_lr` (from
    `gate_learning_rate`; `eps` as main's Adam). For gated networks only: on a network without a gate the unused
    transform would still add state."""
    return optax.multi_transform({"main": main, "gate": optax.adam(gate_lr, eps=eps)}, _gate_labels)


def gate_could_open(travel: float | None) -> bool:
    """Whether a gate whose logit could travel `travel` (the run's summed gate learning rate, logit units) could have
    opened: from GATE_LOGIT_INIT to 0 (a gate of 0.5) at least. False when the travel is unknown (None)."""
    return travel is not None and float(travel) >= abs(GATE_LOGIT_INIT)


def initial_carry(config: NetworkConfig, batch: int) -> jax.Array:
    """The policy's memory before any step: zeros (B, width) for a GRU, a (B, 1) placeholder for feed-forward."""
    return jnp.zeros((batch, config.width if config.recurrent else 1), jnp.float32)


def policy_step(config: NetworkConfig):
    """`step(params, carry, start, obs, hidden) -> (carry, logits, value)` for one step of B environments, any
    kind of network: `start` (B,) marks observations that begin an episode (a GRU zeroes their carry first)."""
    module = make_network(config)
    if not config.recurrent:
        def step(params, carry, start, obs, hidden):
            logits, value = module.apply(params, obs, hidden)
            return carry, logits, value
        return step

    def step(params, carry, start, obs, hidden):
        carry, logits, value = module.apply(params, carry, obs[None], None if hidden is None else hidden[None],
                                            start[None])
        return carry, logits[0], value[0]
    return step


def policy_sequence(config: NetworkConfig):
    """`sequence(params, carry, start, obs, hidden) -> (logits (T, B, A), value (T, B))` over T steps of B
    environments from the carry before the first step (feed-forward networks read each row on its own)."""
    module = make_network(config)
    if config.recurrent:
        def sequence(params, carry, start, obs, hidden):
            _, logits, value = module.apply(params, carry, obs, hidden, start)
            return logits, value
        return sequence

    def sequence(params, carry, start, obs, hidden):
        T, B = obs.shape[:2]
        flat = lambda x: None if x is None else x.reshape((T * B,) + x.shape[2:])  # noqa: E731
        logits, value = module.apply(params, flat(obs), flat(hidden))
        return logits.reshape(T, B, -1), value.reshape(T, B)
    return sequence


def dummy_inputs(config: NetworkConfig, batch: int = 1):
    """Placeholder (obs, hidden) of the right shapes, for initialisation and shape inference only: (B, ...), or
    (1, B, ...) sequences of one step for a recurrent network."""
    lead = (1, batch) if config.recurrent else (batch,)
    obs = jnp.zeros(lead + config.obs_shape, jnp.float32)
    if not config.uses_hidden:
        return obs, None
    return obs, jnp.ones(lead + (config.hidden_size,), jnp.float32)


def _init_args(config: NetworkConfig):
    obs, hidden = dummy_inputs(config)
    if config.recurrent:
        return initial_carry(config, 1), obs, hidden, jnp.zeros((1, 1), bool)
    return obs, hidden


def init_params(config: NetworkConfig, key: jax.Array):
    """Fresh parameters for `config` (initialised on a batch of one zero observation)."""
    def init(key):
        return make_network(config).init(key, *_init_args(config))

    return jax.jit(init)(key)  # one compiled program, not one per layer (eager init compiles each op)


def param_shapes(config: NetworkConfig):
    """The parameter tree of `config` as ShapeDtypeStructs, computed without allocating anything."""
    return jax.eval_shape(make_network(config).init, jax.random.PRNGKey(0), *_init_args(config))


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
