"""Actor-critic networks: shapes derived from the input, the hidden-state pathway, config round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsrl.data import pixels_to_uint8
from hsrl.rl.networks import (
    ActorCriticConv, ActorCriticConvAug, ActorCriticMLP, ActorCriticMLPAug, NetworkConfig, dummy_inputs, init_params,
    make_network, num_params, param_shapes,
)


def shapes(config):
    return jax.tree.map(lambda x: x.shape, param_shapes(config))["params"]


@pytest.mark.parametrize("obs_shape, flat", [((130, 110, 3), 5 * 5 * 32), ((63, 63, 3), 3 * 3 * 32)])
def test_conv_shapes_are_derived_from_the_input(obs_shape, flat):
    # 3 x max-pool 3x3 stride 3 SAME: 130 -> 44 -> 15 -> 5, 110 -> 37 -> 13 -> 5; 63 -> 21 -> 7 -> 3
    base = NetworkConfig("conv", 43, obs_shape)
    aug = NetworkConfig("conv", 43, obs_shape, hidden_size=2560)
    assert shapes(base)["encoder"]["Dense_0"]["kernel"] == (flat, 512)
    assert shapes(base)["heads"]["Dense_0"]["kernel"] == (512, 512)
    assert shapes(aug)["heads"]["Dense_0"]["kernel"] == (512 + 2560, 512)  # 3072 features
    assert shapes(aug)["heads"]["Dense_1"]["kernel"] == (512, 43)
    assert shapes(aug)["heads"]["Dense_3"]["kernel"] == (512, 1)


def test_classes_and_call_signature():
    key = jax.random.PRNGKey(0)
    cases = [(NetworkConfig("conv", 17, (16, 12, 3), width=32), ActorCriticConv),
             (NetworkConfig("conv", 17, (16, 12, 3), hidden_size=10, width=32), ActorCriticConvAug),
             (NetworkConfig("mlp", 17, (20,), width=32), ActorCriticMLP),
             (NetworkConfig("mlp", 17, (20,), hidden_size=10, width=32), ActorCriticMLPAug)]
    for config, cls in cases:
        net = make_network(config)
        assert type(net) is cls and config.class_name == cls.__name__
        params = init_params(config, key)
        obs, hidden = dummy_inputs(config, 5)
        logits, value = net.apply(params, obs, hidden)
        assert logits.shape == (5, 17) and value.shape == (5,)
        assert logits.dtype == jnp.float32 and value.dtype == jnp.float32
        assert num_params(params) > 0


def test_hidden_state_is_required_refused_and_sized():
    aug = NetworkConfig("mlp", 17, (20,), hidden_size=10, width=16)
    base = NetworkConfig("mlp", 17, (20,), width=16)
    obs = jnp.zeros((2, 20))
    with pytest.raises(ValueError, match="needs the normalised hidden state"):
        make_network(aug).apply(init_params(aug, jax.random.PRNGKey(0)), obs)
    with pytest.raises(ValueError, match="size 10, got 11"):
        make_network(aug).apply(init_params(aug, jax.random.PRNGKey(0)), obs, jnp.zeros((2, 11)))
    with pytest.raises(ValueError, match="takes no hidden state"):
        make_network(base).apply(init_params(base, jax.random.PRNGKey(0)), obs, jnp.zeros((2, 10)))


def test_hidden_state_changes_the_output():
    config = NetworkConfig("mlp", 17, (20,), hidden_size=10, width=16)
    params = init_params(config, jax.random.PRNGKey(0))
    obs = jnp.ones((1, 20))
    a = make_network(config).apply(params, obs, jnp.zeros((1, 10)))
    b = make_network(config).apply(params, obs, jnp.ones((1, 10)))
    assert not np.allclose(a[1], b[1])


def test_uint8_pixels_equal_float_pixels():
    config = NetworkConfig("conv", 17, (16, 12, 3), width=16)
    params = init_params(config, jax.random.PRNGKey(1))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 12, 3)).astype(np.float32) / 255.0
    net = make_network(config)
    a = net.apply(params, jnp.asarray(pixels))
    b = net.apply(params, jnp.asarray(pixels_to_uint8(pixels)))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)


def test_config_round_trip_and_validation():
    config = NetworkConfig.for_env((130, 110, 3), 43, 2560)
    assert config.kind == "conv" and config.uses_hidden
    assert NetworkConfig.from_json(config.to_json()) == config
    assert NetworkConfig.for_env((1345,), 17).kind == "mlp"
    with pytest.raises(ValueError, match="kind"):
        NetworkConfig("transformer", 17, (3,))
    with pytest.raises(ValueError, match="conv networks take"):
        NetworkConfig("conv", 17, (3,))
    with pytest.raises(ValueError, match="unknown fields"):
        NetworkConfig.from_dict({**config.to_dict(), "layers": 3})
