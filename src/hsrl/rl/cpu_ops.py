"""The conv encoder's convolution and ReLU + max-pool with hand-written gradients that XLA's CPU backend runs fast.

Why: XLA's CPU compiler hands a convolution to its fast kernels only in one layout, input NHWC and kernel HWIO, and
its pass that rewrites the other layouts into that one (ConvCanonicalization) visits the entry computation alone. The
gradients JAX derives for a convolution are convolutions in other layouts (kernel flipped with its channels swapped,
or the batch used as the feature axis), so inside a `lax.scan` body (every AWR and PPO update runs in one) they fall
to XLA's naive, single-threaded loop: a full-Craftax pixel AWR step took 64 s instead of 3 (issue 27). The gradient
of `nn.max_pool` (a variadic reduce-window with argmax indices, then a scatter) is slow on CPU anywhere.

`conv_general_dilated` computes the same convolution and writes its two gradients as NHWC x HWIO convolutions with
the transposes spelled out, which is what the rewrite pass would have made of them. `relu_max_pool` is ReLU then
`nn.max_pool` for windows that do not overlap; its gradient goes, as reduce-window's does, to each window's first
maximum, found in the forward pass by a second pool and kept as one int8 per output. Gradients are bit-identical to
lax's and flax's, values too, except the forward convolution of 3-channel frames, which `_conv_forward` pads to 4
channels (2.3x faster on CPU; the same sums in another order, so ~1e-7 relative rounding). Parameters and checkpoints
are unchanged; the conv encoders use these on the CPU backend only (tests/test_rl_cpu_ops.py; the speed:
`benchmarks/bench_awr.py --pixels`). `compile_options` gives the XLA options AWR compiles a conv network's update
with on CPU (oneDNN's convolutions with jaxlib 0.10, 1.6x faster there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def _conv(x, kernel, pads: Pads):
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


def _conv_forward(x, kernel, pads: Pads):
    """The forward convolution. Three input channels (RGB frames) are padded to four with zeros (and the kernel
    with zero rows): the same sums, which XLA's CPU kernel computes 2.3x faster (measured on full-Craftax frames) but
    in another order, so they round differently (~1e-7 relative)."""
    if x.shape[-1] == 3:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 1)))
        kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))
    return _conv(x, kernel, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, kernel, pads: Pads):
    """(B, H, W, C) x (kh, kw, C, O) -> (B, H', W', O), stride 1, explicit ((lo, hi), (lo, hi)) padding."""
    return _conv_forward(x, kernel, pads)


def _conv2d_fwd(x, kernel, pads):
    return _conv_forward(x, kernel, pads), (x, kernel)


def _conv2d_bwd(pads, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    (ylo, yhi), (xlo, xhi) = pads
    # d/dx: the cotangent convolved with the kernel flipped in space, its in/out channels swapped (HWIO again)
    flipped = lax.rev(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv(g, flipped, ((kh - 1 - ylo, kh - 1 - yhi), (kw - 1 - xlo, kw - 1 - xhi)))
    # d/dkernel: x's channels as the batch, its samples as the features, the cotangent as an HWIO kernel
    dk = _conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pads).transpose(1, 2, 0, 3)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """Drop-in for `lax.conv_general_dilated` in `nn.Conv(conv_general_dilated=...)`: 2-D NHWC x HWIO convolutions
    of stride 1, no dilation, one group, default precision go through `conv2d`; anything else to lax unchanged."""
    plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and feature_group_count == 1 and precision is None
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return conv2d(lhs, rhs, tuple((int(lo), int(hi)) for lo, hi in padding))


def _pool(x, k: int, pads: Pads):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, k, k, 1), ((0, 0),) + pads + ((0, 0),))


def _covered(k: int, pads: Pads, hw: tuple[int, int]):
    """Output size (Ho, Wo) of a pool with window = stride = k, and the rows and columns of the frame its windows
    cover (all of them with SAME padding; VALID leaves the last H % k rows and W % k columns out)."""
    (ylo, yhi), (xlo, xhi) = pads
    h, w = hw
    ho, wo = (h + ylo + yhi - k) // k + 1, (w + xlo + xhi - k) // k + 1
    return ho, wo, min(h, ho * k - ylo), min(w, wo * k - xlo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _relu_max_pool(z, k: int, pads: Pads, hw: tuple[int, int]):
    return jnp.maximum(_pool(z, k, pads), 0)


def _relu_max_pool_fwd(z, k, pads, hw):
    m = _pool(z, k, pads)
    # Each window's first maximum, found by a second max-pool: every element equal to its window's maximum gets
    # the key 2 ** (k * k - 1 - position) (exact in float32), the rest 0, and the window's largest key names the first
    # one. A pool is a kernel XLA computes once; an element-wise search over the k * k strided views would be fused
    # into each consumer of the gradient and recomputed there for every element.
    b, _, _, c = z.shape
    (ylo, _), (xlo, _) = pads
    ho, wo, hc, wc = _covered(k, pads, hw)
    up = jnp.broadcast_to(m[:, :, None, :, None, :], (b, ho, k, wo, k, c))
    up = up.reshape(b, ho * k, wo * k, c)[:, ylo:ylo + hc, xlo:xlo + wc, :]
    pos = (jnp.arange(hc)[:, None] + ylo) % k * k + (jnp.arange(wc)[None, :] + xlo) % k  # position in its window
    weight = jnp.exp2((k * k - 1 - pos).astype(z.dtype))[None, :, :, None]
    hits = jnp.where(z[:, :hc, :wc, :] == up, weight, jnp.zeros((), z.dtype))
    key = lax.reduce_window(hits, jnp.zeros((), z.dtype), lax.max, (1, k, k, 1), (1, k, k, 1),
                            ((0, 0), (ylo, ho * k - ylo - hc), (xlo, wo * k - xlo - wc), (0, 0)))
    first = jnp.full(m.shape, k * k, jnp.int8)
    for p in range(k * k):
        first = jnp.where(key == 2.0 ** (k * k - 1 - p), jnp.int8(p), first)
    first = jnp.where(m > 0, first, jnp.int8(k * k))  # a window whose maximum is not positive passes no gradient
    return jnp.maximum(m, 0), first


def _relu_max_pool_bwd(k, pads, hw, first, g):
    b, ho, wo, c = g.shape
    (ylo, _), (xlo, _) = pads
    _, _, hc, wc = _covered(k, pads, hw)
    pos = (jnp.arange(k, dtype=jnp.int8)[:, None] * k + jnp.arange(k, dtype=jnp.int8)[None, :]).reshape(1, 1, k, 1, k, 1)
    dz = jnp.where(first[:, :, None, :, None, :] == pos, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    dz = dz.reshape(b, ho * k, wo * k, c)[:, ylo:ylo + hc, xlo:xlo + wc, :]
    return (jnp.pad(dz, ((0, 0), (0, hw[0] - hc), (0, hw[1] - wc), (0, 0))),)  # rows no window covers: 0


_relu_max_pool.defvjp(_relu_max_pool_fwd, _relu_max_pool_bwd)


def relu_max_pool(z, window: int, padding: str = "SAME"):
    """`nn.max_pool(nn.relu(z), (window, window), strides=(window, window), padding=padding)` on (B, H, W, C), padding
    "SAME" or "VALID": the same values, and the same gradient, which goes to each window's first maximum where that
    maximum is positive (the windows do not overlap, so each input is in one at most). The backward pass keeps one
    int8 per output (which position) instead of the ReLU'd frame, and writes the frame's gradient in one pass."""
    hw = (int(z.shape[1]), int(z.shape[2]))
    pads = lax.padtype_to_pads(hw, (window, window), (window, window), padding)
    return _relu_max_pool(z, window, tuple((int(lo), int(hi)) for lo, hi in pads), hw)


# XLA options for compiling a conv network's update on the CPU with jaxlib 0.10: convolutions to oneDNN rather than
# YNNPACK (which keeps the matrix products). Measured on the full-Craftax pixel AWR step (batch 256, 2 vCPUs): 184 ->
# 293 samples/s with jaxlib 0.10.2. jaxlib 0.11.2's own YNNPACK convolutions reach 294, and these options lower that to
# 209, so they apply to jaxlib 0.10 alone. Results agree to float32 rounding (another summation order).
CONV_COMPILE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                        "xla_cpu_experimental_onednn_custom_call": True}
CONV_COMPILE_OPTIONS_JAXLIB = ("0.10.",)  # the jaxlib versions they were measured faster on


@functools.cache
def _options_compile(options: tuple) -> bool:
    """Whether this jaxlib knows these compile options (an unknown one fails the compile)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.float32(0)).compile()
    except Exception:  # noqa: BLE001  (jaxlib raises its own runtime error type)
        return False
    return True


def compile_options(kind: str) -> dict | None:
    """XLA compile options for the jitted update of a network of `kind` ("conv" or "mlp"), or None: the conv networks'
    on the CPU backend with a jaxlib they were measured faster on (CONV_COMPILE_OPTIONS), else none."""
    import jaxlib

    if kind != "conv" or jax.default_backend() != "cpu" or not jaxlib.__version__.startswith(CONV_COMPILE_OPTIONS_JAXLIB):
        return None
    return dict(CONV_COMPILE_OPTIONS) if _options_compile(tuple(sorted(CONV_COMPILE_OPTIONS.items()))) else None
