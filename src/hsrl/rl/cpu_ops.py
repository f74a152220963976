"""The conv encoder's convolution and max-pool with hand-written gradients that XLA's CPU backend runs fast.

Why: XLA's CPU compiler hands a convolution to its fast (Eigen, multi-threaded) kernels only in one layout, input
NHWC and kernel HWIO, and its pass that rewrites the other layouts into that one (ConvCanonicalization) visits the
entry computation alone. The gradients JAX derives for a convolution are convolutions in other layouts (kernel
flipped with its channels swapped, or the batch used as the feature axis), so inside a `lax.scan` body (every AWR
and PPO update runs in one) they fall to XLA's naive, single-threaded loop: measured 5-20x slower per step than the
same update jitted alone, on full-Craftax pixels (`benchmarks/bench_awr.py --pixels`). The gradient of
`nn.max_pool` (a variadic reduce-window with argmax indices, then a scatter) is slow on CPU anywhere.

`conv_general_dilated` computes the same convolution and writes its two gradients as NHWC x HWIO convolutions with
the transposes spelled out, which is what the rewrite pass would have made of them; `max_pool` is `lax.reduce_window`
with a gradient that sends each window's cotangent to its first maximum, as the reduce-window gradient does, built
from strided slices and comparisons. Both give bit-identical values and gradients (tests/test_rl_networks.py), so
the network, its parameters and checkpoints are unchanged; `ConvEncoder` uses them on the CPU backend only.
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, kernel, pads: Pads):
    """(B, H, W, C) x (kh, kw, C, O) -> (B, H', W', O), stride 1, explicit ((lo, hi), (lo, hi)) padding."""
    return _conv(x, kernel, pads)


def _conv2d_fwd(x, kernel, pads):
    return _conv(x, kernel, pads), (x, kernel)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, k: int, pads: Pads):
    return _pool(x, k, pads)


def _max_pool_fwd(x, k, pads):
    y = _pool(x, k, pads)
    return y, (x, y)


def _max_pool_bwd(k, pads, res, g):
    x, y = res
    (ylo, yhi), (xlo, xhi) = pads
    xp = jnp.pad(x, ((0, 0), (ylo, yhi), (xlo, xhi), (0, 0)), constant_values=-jnp.inf)
    b, h, w, c = xp.shape
    # each window's cotangent goes to its first maximum in row-major order, as reduce-window's gradient does
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for dy in range(k):
        cols = []
        for dx in range(k):
            hit = (xp[:, dy::k, dx::k, :] == y) & ~taken
            taken = taken | hit
            cols.append(jnp.where(hit, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(cols, axis=3))  # (B, Ho, Wo, k, C)
    dx_ = jnp.stack(rows, axis=2).reshape(b, h, w, c)  # (B, Ho, k, Wo, k, C) -> the padded frame
    return (dx_[:, ylo:h - yhi, xlo:w - xhi, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window: int):
    """`nn.max_pool(x, (window, window), strides=(window, window), padding="SAME")` on (B, H, W, C): the same values,
    and the same gradient through strided slices (windows that do not overlap, so each input is in one window)."""
    pads = lax.padtype_to_pads(x.shape[1:3], (window, window), (window, window), "SAME")
    return _max_pool(x, window, tuple((int(lo), int(hi)) for lo, hi in pads))
