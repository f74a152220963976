"""hsrl.rl.cpu_ops: the conv encoder's convolution and ReLU + max-pool with hand-written gradients give the same values
and gradients as lax's and flax's (bit for bit, except the forward convolution of 3-channel frames, padded to 4
channels, which rounds differently); and a scanned pixel AWR update compiles every convolution into the one layout
XLA's CPU backend runs on its fast kernels (the regression behind issue 27's 26-minute pixel run)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hsrl.rl import cpu_ops
from hsrl.rl.awr import AWRHyper, Batch, init_state, make_batches_block, make_update
from hsrl.rl.networks import NetworkConfig, init_params, make_network


def _grads(f, x, k, g):
    return jax.grad(lambda x, k: jnp.sum(f(x, k) * g), (0, 1))(x, k)


@pytest.mark.parametrize("shape, kernel, pads", [
    ((2, 13, 11, 3), 5, ((2, 2), (2, 2))),
    ((3, 9, 7, 4), 3, ((1, 1), (1, 1))),
    ((2, 8, 8, 2), 4, ((1, 2), (2, 1))),  # asymmetric padding (SAME of an even kernel)
    ((1, 6, 5, 2), 3, ((0, 0), (0, 0))),  # VALID
])
def test_conv2d_equals_lax_and_its_gradients(shape, kernel, pads):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], 5)), jnp.float32)
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    mine = lambda x, k: cpu_ops.conv2d(x, k, pads)  # noqa: E731
    if shape[-1] == 3:  # RGB: padded to 4 channels, the same sums in another order
        np.testing.assert_allclose(mine(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(mine(x, k), ref(x, k))
    g = jnp.asarray(rng.standard_normal(ref(x, k).shape), jnp.float32)  # the gradients: bit for bit
    for a, b in zip(_grads(mine, x, k, g), _grads(ref, x, k, g)):
        np.testing.assert_array_equal(a, b)


def test_conv_general_dilated_takes_flax_arguments_and_passes_others_to_lax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 10, 9, 3)), jnp.float32)
    for kw in ({}, {"strides": (2, 2)}, {"kernel_dilation": (2, 2)}, {"padding": "VALID"}):
        params = nn.Conv(4, (3, 3), **kw).init(jax.random.PRNGKey(0), x)
        plain = nn.Conv(4, (3, 3), **kw).apply(params, x)
        ours = nn.Conv(4, (3, 3), conv_general_dilated=cpu_ops.conv_general_dilated, **kw).apply(params, x)
        np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 130, 110, 4), (3, 44, 37, 5), (2, 15, 13, 3), (1, 10, 8, 1), (1, 9, 9, 2),
                                   (1, 4, 5, 1), (2, 1, 2, 1), (1, 2, 7, 2)])
@pytest.mark.parametrize("values", ["normal", "ties", "negative"])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_relu_max_pool_equals_flax_with_ties_and_padding(shape, values, padding):
    if padding == "VALID" and min(shape[1:3]) < 3:
        pytest.skip("no whole window")
    rng = np.random.default_rng(2)
    z = rng.standard_normal(shape).astype(np.float32)
    if values == "ties":  # whole numbers: many windows hold their maximum twice, some at 0
        z = np.round(z)
    elif values == "negative":  # most windows pass nothing through the ReLU
        z = -np.abs(z) + (rng.random(shape) < 0.05)
    z = jnp.asarray(z)
    ref = lambda z: nn.max_pool(nn.relu(z), (3, 3), strides=(3, 3), padding=padding)  # noqa: E731
    np.testing.assert_array_equal(cpu_ops.relu_max_pool(z, 3, padding), ref(z))
    g = jnp.asarray(rng.standard_normal(ref(z).shape), jnp.float32)
    mine = jax.grad(lambda z: jnp.sum(cpu_ops.relu_max_pool(z, 3, padding) * g))(z)
    np.testing.assert_array_equal(mine, jax.grad(lambda z: jnp.sum(ref(z) * g))(z))


def _pixel_case(hidden=None, frame=(20, 17, 3), **kw):
    config = NetworkConfig("conv", 7, frame, hidden_size=hidden, width=32, **kw)
    rng = np.random.default_rng(3)
    obs = jnp.asarray(rng.integers(0, 256, (6, *frame)), jnp.uint8)
    h = None if hidden is None else jnp.asarray(rng.standard_normal((6, hidden)), jnp.float32)
    return config, obs, h


@pytest.mark.parametrize("arch", ["shared", "separate"])  # ConvEncoder (SAME pools), PublishedConvEncoder (VALID)
def test_encoder_on_cpu_keeps_the_parameters_and_values_and_gradients_of_the_plain_ops(monkeypatch, arch):
    config, obs, hidden = _pixel_case(hidden=4, frame=(31, 29, 3), arch=arch)
    net = make_network(config)
    params = init_params(config, jax.random.PRNGKey(0))

    def loss(p):
        logits, value = net.apply(p, obs, hidden)
        return jnp.sum(logits ** 2) + jnp.sum(value)

    out, grads = net.apply(params, obs, hidden), jax.grad(loss)(params)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the encoder then builds nn.Conv / nn.max_pool as before
    plain_params = init_params(config, jax.random.PRNGKey(0))
    assert jax.tree.structure(plain_params) == jax.tree.structure(params)  # checkpoints load either way
    jax.tree.map(np.testing.assert_array_equal, plain_params, params)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # noqa: E731  (the RGB layer's rounding)
    jax.tree.map(close, net.apply(params, obs, hidden), out)
    jax.tree.map(close, jax.grad(loss)(params), grads)


def test_scanned_pixel_update_compiles_every_convolution_to_the_fast_layout():
    """XLA's CPU backend runs a convolution on its fast kernels only as NHWC x HWIO -> NHWC (b01f_01io->b01f); other
    layouts inside a scan body become naive loops (measured 15x slower per step). A gradient of lax's own convolution
    shows up here as e.g. b01f_01oi->b01f or f01b_i01o->01bf. Craftax-Classic's frame: on much smaller ones XLA
    swaps the operands of a convolution whose kernel outgrows its input, which this test is not about."""
    config, obs, _ = _pixel_case(frame=(63, 63, 3))
    state = init_state(config, AWRHyper(), 0)
    batches = Batch(jnp.stack([obs] * 2), jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 6), jnp.float32), None)
    hlo = make_batches_block(make_update(config, AWRHyper(), None)).lower(state, batches).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
    assert len(labels) >= 8  # 3 forward, 3 kernel gradients, 2 input gradients (the first layer's is not needed)
    assert set(labels) == {"b01f_01io->b01f"}, labels


def test_conv_update_compile_options_change_speed_not_results():
    """On CPU with jaxlib 0.10 a conv network's update compiles with oneDNN's convolutions (CONV_COMPILE_OPTIONS):
    the same update to float32 rounding. Other networks, backends and jaxlibs compile as jax does by default."""
    config, obs, _ = _pixel_case(frame=(63, 63, 3))
    update = make_update(config, AWRHyper(), None)
    assert update.compiler_options == cpu_ops.compile_options("conv")
    assert make_update(NetworkConfig("mlp", 7, (10,)), AWRHyper(), None).compiler_options is None
    batches = Batch(jnp.stack([obs] * 3), jnp.arange(18, dtype=jnp.int32).reshape(3, 6) % 7,
                    jnp.linspace(-1, 1, 18, dtype=jnp.float32).reshape(3, 6), None)
    tuned, tuned_metrics = make_batches_block(update)(init_state(config, AWRHyper(), 0), batches)
    update.compiler_options = None
    plain, plain_metrics = make_batches_block(update)(init_state(config, AWRHyper(), 0), batches)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # noqa: E731
    jax.tree.map(close, tuned.params, plain.params)
    jax.tree.map(close, tuned_metrics, plain_metrics)
