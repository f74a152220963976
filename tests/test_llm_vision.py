"""The vision backend on a tiny random Qwen3-VL: layers, pooling, padding, generation, inputs and errors.

The reference for every state is HF's own forward of one unpadded sample (`output_hidden_states=True`, positions
computed by the model itself), so left padding, 3D positions and the decoding loop are checked against it.
"""

import numpy as np
import pytest
import torch

from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.models import load_model, load_vision_model
from hsrl.llm.vision_backend import VisionExtractor
from llm_helpers import TEXTS
from tiny_vlm import build_tiny_vlm

ATOL = 2e-5
SHAPE = (63, 63, 3)  # a Craftax-Classic-Pixels frame
@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load_vision_model(str(build_tiny_vlm(tmp_path_factory.mktemp("vlm"))))


@pytest.fixture(scope="module")
def images():
    """Three different frames, uint8."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, *SHAPE)).astype(np.uint8)


def spec_for(model, **kw):
    return ExtractionSpec(model=model.path, **{"input": "image", **kw})


def hf_states(model, row, image_token_id):
    """HF's hidden_states tuple ((T, H) per entry) of one unpadded prompt row, the model placing its positions."""
    ids = torch.tensor([list(row)])
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=row.pixel_values,
                          image_grid_thw=row.grid[None], mm_token_type_ids=(ids == image_token_id).int(),
                          output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def test_spec_records_the_image_input_and_resolves(vlm):
    ex = make_extractor(spec_for(vlm), model=vlm)
    assert isinstance(ex, VisionExtractor)
    assert ex.spec.input == "image" and ex.spec.template == "chat" and ex.spec.dtype == "float32"
    assert ExtractionSpec.from_json(ex.spec.to_json()).input == "image"
    assert ex.hidden_size == 64 and ex.num_layers == 2
    assert ex.template.image_token == "<|image_pad|>" and "Observations are images" in ex.template.prefix
    assert ex.template.tail == "" and ex.template.prefix.endswith("<|im_start|>assistant\n")  # no text observation
    short = VisionExtractor(spec_for(vlm, template="short", input="image+text"), model=vlm).template
    assert short.prefix.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")  # no system
    assert short.tail.startswith("\n\nWhat should the player do next")


@pytest.mark.parametrize("input_", ["image", "image+text"])
def test_mean_pools_the_image_and_text_tokens_as_hf_hidden_states(vlm, images, input_):
    texts = TEXTS if input_ == "image+text" else None
    ex = VisionExtractor(spec_for(vlm, input=input_, layer=(0, 1, 2, -1)), model=vlm)
    result = ex.extract(texts, images=images, return_token_states=True)
    rows = ex.encode(texts, images)
    tok = vlm.tokenizer
    for b, row in enumerate(rows):
        pooled = row.observation
        assert (np.asarray(row)[pooled[:16]] == ex._image_token_id).all()  # 63 x 63 -> 64 x 64: 16 image tokens
        if texts is None:
            assert len(pooled) == 16
        else:
            assert tok.decode([row[k] for k in pooled[16:]]) == texts[b]  # the text observation, nothing more
        hs = hf_states(vlm, row, ex._image_token_id)
        assert len(hs) == vlm.num_layers + 1
        for layer in (0, 1, 2, -1):
            expected = hs[layer][pooled]
            np.testing.assert_allclose(result.hidden[layer][b], expected.mean(0).numpy(), atol=ATOL)
        np.testing.assert_allclose(result.token_states[-1][b, : len(pooled)], hs[-1][pooled].numpy(), atol=1e-2)
        assert result.num_tokens[b] == len(pooled) and result.prompt_tokens[b] == len(row)
    assert not np.allclose(result.hidden[-1][0], result.hidden[-1][1], atol=1e-3), "different images, same state"


def test_last_pools_the_last_prompt_token(vlm, images):
    ex = VisionExtractor(spec_for(vlm, pooling="last", input="image+text"), model=vlm)
    result = ex.extract(TEXTS, images=images)
    for b, row in enumerate(ex.encode(TEXTS, images)):
        assert vlm.tokenizer.decode(row[-8:]).endswith("<|im_start|>assistant\n")
        np.testing.assert_allclose(result.hidden_state[b], hf_states(vlm, row, ex._image_token_id)[-1][-1].numpy(),
                                   atol=ATOL)


@pytest.mark.parametrize("tokens", [1, 5])
def test_batch_independent_and_prefix_cache_equal(vlm, images, tokens):
    """A sample alone (whole prompt, no cache) equals the same sample in a batch of other images and texts of other
    lengths, right-padded after the cached prefix or left-padded without the cache."""
    spec = spec_for(vlm, input="image+text", tokens=tokens, temperature=1.0)
    cached = VisionExtractor(spec, model=vlm, batch_size=3)
    uncached = VisionExtractor(spec, model=vlm, batch_size=3, prefix_cache=False)
    assert cached.prefix_cache and cached.prefix_tokens > 500 and not uncached.prefix_cache
    batch = cached.extract(TEXTS, images=images)
    lengths = {len(r) for r in cached.encode(TEXTS, images)}
    assert len(lengths) == 3, "rows of different lengths, so padding is exercised"
    for b in range(3):
        alone = uncached.extract(TEXTS[b : b + 1], images=images[b : b + 1])
        np.testing.assert_allclose(alone.hidden_state[0], batch.hidden_state[b], atol=ATOL)
        assert alone.generated_ids[0] == batch.generated_ids[b]
    left = uncached.extract(TEXTS, images=images)
    np.testing.assert_allclose(left.hidden_state, batch.hidden_state, atol=ATOL)
    assert left.generated_ids == batch.generated_ids
    np.testing.assert_array_equal(batch.hidden_state, cached.extract(TEXTS, images=images).hidden_state)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_generation_pools_the_generated_tokens_own_states_and_reextracts(vlm, images, pooling):
    ex = VisionExtractor(spec_for(vlm, tokens=6, temperature=1.0, pooling=pooling, layer=(1, -1)), model=vlm)
    result = ex.extract(None, images=images, return_token_states=True)
    assert len({tuple(g) for g in result.generated_ids}) == 3
    rows = ex.encode(None, images)
    for b, row in enumerate(rows):
        gen = result.generated_ids[b]
        assert len(gen) == result.num_tokens[b] == 6 and not result.finished[b]
        hs = hf_states(vlm, row.extended(gen), ex._image_token_id)
        for layer in (1, -1):
            states = hs[layer][len(row):]
            expected = states.mean(0) if pooling == "mean" else states[-1]
            np.testing.assert_allclose(result.hidden[layer][b], expected.numpy(), atol=ATOL)
        np.testing.assert_allclose(result.token_states[-1][b], hs[-1][len(row):].numpy(), atol=1e-2)
    again = ex.reextract(None, generated_ids=result.generated_ids, images=images)
    for layer in (1, -1):
        np.testing.assert_allclose(again.hidden[layer], result.hidden[layer], atol=ATOL)
    assert again.generated_text == result.generated_text and (again.num_tokens == result.num_tokens).all()


def test_greedy_decoding_matches_hf_generate(vlm, images):
    ex = VisionExtractor(spec_for(vlm, tokens=6, temperature=0.0), model=vlm)
    result = ex.extract(None, images=images[:2])
    for b, row in enumerate(ex.encode(None, images[:2])):
        ids = torch.tensor([list(row)])
        with torch.no_grad():
            out = vlm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=row.pixel_values,
                                     image_grid_thw=row.grid[None], mm_token_type_ids=(ids == ex._image_token_id).int(),
                                     max_new_tokens=6, do_sample=False)
        assert result.generated_ids[b] == out[0, len(row):].tolist()


def test_seeds_are_per_sample_from_the_image(vlm, images):
    ex = VisionExtractor(spec_for(vlm, tokens=5, temperature=1.0), model=vlm)
    base = ex.extract(None, images=images)
    assert ex.extract(None, images=images).generated_ids == base.generated_ids
    assert ex.extract(None, images=images, seeds=[1, 2, 3]).generated_ids != base.generated_ids
    same = ex.extract(None, images=np.stack([images[0], images[0]]))
    assert same.generated_ids[0] == same.generated_ids[1] == base.generated_ids[0]


def test_image_placeholders_are_never_generated_nor_re_extracted(vlm, images):
    """A placeholder id in a prompt is an image slot to the model, so generation rules them out and re-extraction
    refuses them."""
    ex = VisionExtractor(spec_for(vlm, tokens=4, temperature=1.0), model=vlm)
    placeholders = [vlm.model.config.image_token_id, vlm.model.config.video_token_id]
    logits = ex._logits(torch.randn(3, vlm.hidden_size))
    assert torch.isinf(logits[:, placeholders]).all() and torch.isfinite(logits[:, :placeholders[0]]).all()
    with pytest.raises(ValueError, match="placeholder"):
        ex.reextract(None, generated_ids=[[5, placeholders[0]], [5], [6]], images=images)


def test_float_and_uint8_images_give_identical_states(vlm, images):
    ex = VisionExtractor(spec_for(vlm), model=vlm)
    as_uint8 = ex.extract(None, images=images).hidden_state
    as_float = ex.extract(None, images=images.astype(np.float32) / 255.0).hidden_state
    np.testing.assert_array_equal(as_float, as_uint8)
    nudged = np.clip(images.astype(np.float32) / 255.0 + 0.4 / 255, 0, 1)  # rounds back to the same uint8
    np.testing.assert_array_equal(ex.extract(None, images=nudged).hidden_state, as_uint8)


def test_bad_inputs_are_errors(vlm, images, tmp_path):
    ex = VisionExtractor(spec_for(vlm), model=vlm)
    with pytest.raises(ValueError, match="reads images: pass images"):
        ex.extract(None)
    with pytest.raises(ValueError, match="expected shape \\(batch, height, width, 3\\)"):
        ex.extract(None, images=images[0])
    with pytest.raises(ValueError, match="expected shape"):
        ex.extract(None, images=images[..., :2])
    with pytest.raises(TypeError, match="float in \\[0, 1\\] or uint8"):
        ex.extract(None, images=images.astype(np.int32))
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        ex.extract(None, images=images.astype(np.float32))  # 0..255 floats: not [0, 1]
    with pytest.raises(ValueError, match="reads no text observation"):
        ex.extract(TEXTS, images=images)
    both = VisionExtractor(spec_for(vlm, input="image+text"), model=vlm)
    with pytest.raises(ValueError, match="reads the text observation too"):
        both.extract(None, images=images)
    with pytest.raises(ValueError, match="2 text observations for 3 images"):
        both.extract(TEXTS[:2], images=images)
    with pytest.raises(ValueError, match="image tokens"):
        both.extract(["<|image_pad|>"] * 3, images=images)
    # a text spec reads no images; a VLM does not load as a text model, nor a text model as a VLM
    with pytest.raises(ValueError, match="vision-language model"):
        make_extractor(ExtractionSpec(model=vlm.path))
    with pytest.raises(ValueError, match="vision-language model"):
        load_model(vlm.path)
    from tiny_qwen import build_tiny_qwen

    text_model = build_tiny_qwen(tmp_path / "qwen")
    with pytest.raises(ValueError, match="cannot read images"):
        make_extractor(ExtractionSpec(model=str(text_model), input="image"))
    text_ex = make_extractor(ExtractionSpec(model=str(text_model)))
    with pytest.raises(ValueError, match="reads no images"):
        text_ex.extract(TEXTS, images=images)


def test_chat_template_from_the_processor_file(tmp_path, images, vlm):
    """Checkpoints that keep the chat template only for the processor (chat_template.json) load with it."""
    import json

    folder = build_tiny_vlm(tmp_path / "legacy")
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    legacy = load_vision_model(str(folder))
    assert legacy.tokenizer.chat_template == template
    ex = VisionExtractor(spec_for(legacy), model=legacy)
    reference = VisionExtractor(spec_for(vlm), model=vlm)
    assert ex.template.prefix == reference.template.prefix
    np.testing.assert_allclose(ex.extract(None, images=images).hidden_state,
                               reference.extract(None, images=images).hidden_state, atol=ATOL)


def test_failed_extraction_raises_never_zeros(tmp_path, images):
    broken = load_vision_model(str(build_tiny_vlm(tmp_path / "broken")))
    with torch.no_grad():
        broken.model.model.language_model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        VisionExtractor(spec_for(broken), model=broken).extract(None, images=images)
