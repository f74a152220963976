"""The transformers backend on tiny random Qwen3 models: layers, pooling, padding, prefix cache, generation."""

import numpy as np
import pytest
import torch

from hsrl.llm import ExtractionSpec
from hsrl.llm.models import load_model
from hsrl.llm.transformers_backend import TransformersExtractor, sample_tokens
from llm_helpers import OBS
from tiny_qwen import build_tiny_qwen

ATOL = 2e-5


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_model(str(build_tiny_qwen(tmp_path_factory.mktemp("qwen"), num_layers=3)))


@pytest.fixture(scope="module")
def qwen_chars(tmp_path_factory):
    """One token per character: decoding and re-encoding any generation gives the same ids."""
    return load_model(str(build_tiny_qwen(tmp_path_factory.mktemp("qwen_chars"), char_level=True, seed=1)))


def spec_for(model, **kw):
    return ExtractionSpec(model=model.path, **kw)


def hf_states(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """HF's hidden_states tuple for one unpadded sequence, (T, H) per entry."""
    with torch.no_grad():
        out = model.model(torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def test_layer_numbering_matches_hf_hidden_states(qwen):
    ex = TransformersExtractor(spec_for(qwen, pooling="last", layer=(0, 1, 2, 3, -1, -4)), model=qwen)
    result = ex.extract(OBS)
    rows, _ = ex.encode(OBS)
    for b, ids in enumerate(rows):
        hs = hf_states(qwen, ids)
        assert len(hs) == qwen.num_layers + 1
        for layer in (0, 1, 2, 3, -1, -4):
            np.testing.assert_allclose(result.hidden[layer][b], hs[layer][-1].numpy(), atol=ATOL)
    # -1 is the final normed output; 0 the embeddings
    with torch.no_grad():
        final = qwen.model.model(torch.tensor([rows[0]])).last_hidden_state[0, -1]
        embed = qwen.model.get_input_embeddings()(torch.tensor(rows[0][-1:]))[0]
    np.testing.assert_allclose(result.hidden[-1][0], final.numpy(), atol=ATOL)
    np.testing.assert_allclose(result.hidden[0][0], embed.numpy(), atol=ATOL)
    with pytest.raises(ValueError, match="out of range"):
        ex.extract(OBS[:1], layers=4)


def test_mean_pools_the_observation_tokens(qwen):
    ex = TransformersExtractor(spec_for(qwen, layer=2), model=qwen)
    result = ex.extract(OBS, return_token_states=True)
    rows, ranges = ex.encode(OBS)
    tok = qwen.tokenizer
    for b, (ids, (lo, hi)) in enumerate(zip(rows, ranges)):
        assert tok.decode(ids[lo:hi]) == OBS[b]  # the observation, nothing more
        expected = hf_states(qwen, ids)[2][lo:hi]
        np.testing.assert_allclose(result.hidden_state[b], expected.mean(0).numpy(), atol=ATOL)
        assert result.num_tokens[b] == hi - lo
        np.testing.assert_allclose(result.token_states[2][b, : hi - lo], expected.numpy(), atol=1e-2)


@pytest.fixture(scope="module")
def alone_uncached(qwen):
    """pooling -> (B, H) states of each observation run alone, without the prefix cache."""
    out = {}
    for pooling in ("mean", "last"):
        ex = TransformersExtractor(spec_for(qwen, pooling=pooling), model=qwen, prefix_cache=False)
        out[pooling] = np.concatenate([ex.extract([o]).hidden_state for o in OBS])
    return out


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("padding_side,prefix_cache", [("right", True), ("right", False), ("left", False)])
def test_prompt_only_batch_independent_and_cache_equal(qwen, alone_uncached, pooling, padding_side, prefix_cache):
    ex = TransformersExtractor(
        spec_for(qwen, pooling=pooling), model=qwen, padding_side=padding_side, prefix_cache=prefix_cache
    )
    assert ex.prefix_cache == prefix_cache and ex.prefix_tokens > 1000
    alone = alone_uncached[pooling]
    batch = ex.extract(OBS).hidden_state
    np.testing.assert_allclose(batch, alone, atol=ATOL)
    np.testing.assert_array_equal(batch, ex.extract(OBS).hidden_state)  # deterministic


def manual_generated_states(model, prompt_ids, generated_ids, layer):
    """States of the generated tokens from one unpadded HF forward over prompt + generated ids."""
    hs = hf_states(model, list(prompt_ids) + list(generated_ids))
    return hs[layer][len(prompt_ids) :]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_generation_pools_the_generated_tokens_own_states(qwen, prefix_cache):
    spec = spec_for(qwen, tokens=6, temperature=1.0, top_p=0.9, layer=(1, -1))
    ex = TransformersExtractor(spec, model=qwen, prefix_cache=prefix_cache)
    result = ex.extract(OBS, return_token_states=True)
    rows, _ = ex.encode(OBS)
    assert len(set(map(tuple, result.generated_ids))) > 1
    for b in range(len(OBS)):
        gen = result.generated_ids[b]
        assert len(gen) == result.num_tokens[b] == 6 and not result.finished[b]
        assert result.generated_text[b] == qwen.tokenizer.decode(
            gen, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        for layer in (1, -1):
            states = manual_generated_states(qwen, rows[b], gen, layer)
            np.testing.assert_allclose(result.hidden[layer][b], states.mean(0).numpy(), atol=ATOL)
            np.testing.assert_allclose(result.token_states[layer][b], states.numpy(), atol=1e-2)


def test_generation_is_per_sample_reproducible_and_batch_independent(qwen):
    spec = spec_for(qwen, tokens=5, temperature=1.0)
    ex = TransformersExtractor(spec, model=qwen, batch_size=3)
    batch = ex.extract(OBS)
    for b, obs in enumerate(OBS):
        alone = ex.extract([obs])
        assert alone.generated_ids[0] == batch.generated_ids[b]
        np.testing.assert_allclose(alone.hidden_state[0], batch.hidden_state[b], atol=ATOL)
    uncached = TransformersExtractor(spec, model=qwen, prefix_cache=False, padding_side="left").extract(OBS)
    assert uncached.generated_ids == batch.generated_ids
    np.testing.assert_allclose(uncached.hidden_state, batch.hidden_state, atol=ATOL)
    # other seeds give other samples; the same seeds the same ones
    seeded = ex.extract(OBS, seeds=[1, 2, 3, 4])
    assert seeded.generated_ids != batch.generated_ids
    assert ex.extract(OBS, seeds=[1, 2, 3, 4]).generated_ids == seeded.generated_ids
    other = TransformersExtractor(spec.replace(seed=7), model=qwen).extract(OBS)
    assert other.generated_ids != batch.generated_ids


def test_greedy_decoding_matches_hf_generate(qwen):
    ex = TransformersExtractor(spec_for(qwen, tokens=6, temperature=0.0), model=qwen)
    result = ex.extract(OBS[:2])
    rows, _ = ex.encode(OBS[:2])
    for b, ids in enumerate(rows):
        with torch.no_grad():
            out = qwen.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
        assert result.generated_ids[b] == out[0, len(ids) :].tolist()


def test_stops_at_end_of_sequence_and_pools_it(qwen):
    free = TransformersExtractor(spec_for(qwen, tokens=8, temperature=1.0), model=qwen).extract(OBS)
    # declare a token that the samples produce mid-way an end-of-sequence token
    counts = {}
    for g in free.generated_ids:
        for t in g[1:]:
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=counts.get)
    saved = qwen.model.generation_config.eos_token_id
    qwen.model.generation_config.eos_token_id = [qwen.tokenizer.eos_token_id, stop]
    try:
        ex = TransformersExtractor(spec_for(qwen, tokens=8, temperature=1.0), model=qwen)
        result = ex.extract(OBS)
    finally:
        qwen.model.generation_config.eos_token_id = saved
    rows, _ = ex.encode(OBS)
    ends = {qwen.tokenizer.eos_token_id, stop}
    assert result.finished.sum() > free.finished.sum()
    for b, g in enumerate(free.generated_ids):
        cut = next((k + 1 for k, t in enumerate(g) if t in ends), len(g))
        assert result.generated_ids[b] == g[:cut]  # same draws up to the stop, nothing after it
        assert result.finished[b] == (g[cut - 1] in ends) and result.num_tokens[b] == cut
        states = manual_generated_states(qwen, rows[b], g[:cut], -1)
        np.testing.assert_allclose(result.hidden_state[b], states.mean(0).numpy(), atol=ATOL)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_reextract_from_ids_equals_generation(qwen, pooling):
    ex = TransformersExtractor(spec_for(qwen, tokens=6, temperature=1.0, pooling=pooling, layer=(2, -1)), model=qwen)
    gen = ex.extract(OBS)
    again = ex.reextract(OBS, generated_ids=gen.generated_ids)
    for layer in (2, -1):
        np.testing.assert_allclose(again.hidden[layer], gen.hidden[layer], atol=ATOL)
    assert again.generated_text == gen.generated_text and (again.num_tokens == gen.num_tokens).all()


def test_reextract_from_text_equals_generation(qwen_chars):
    ex = TransformersExtractor(spec_for(qwen_chars, tokens=6, temperature=1.0, template="short"), model=qwen_chars)
    gen = ex.extract(OBS)
    again = ex.reextract(OBS, gen.generated_text)
    assert again.generated_ids == gen.generated_ids
    np.testing.assert_allclose(again.hidden_state, gen.hidden_state, atol=ATOL)


def test_reextract_refuses_what_it_cannot_pool(qwen):
    ex = TransformersExtractor(spec_for(qwen, tokens=6), model=qwen)
    with pytest.raises(ValueError, match="exactly one of generated_texts and generated_ids"):
        ex.reextract(OBS[:1])
    with pytest.raises(ValueError, match="exactly one of generated_texts and generated_ids"):
        ex.reextract(OBS[:1], ["x"], generated_ids=[[5]])
    with pytest.raises(ValueError, match="2 generations for 1 observations"):
        ex.reextract(OBS[:1], generated_ids=[[5], [6]])
    with pytest.raises(ValueError, match=r"samples \[1\] have no generated tokens"):
        ex.reextract(OBS[:2], generated_ids=[[5], []])


def test_plain_text_model_without_chat_template(tmp_path):
    plain = load_model(str(build_tiny_qwen(tmp_path / "plain", chat_template=None)))
    ex = TransformersExtractor(spec_for(plain, tokens=3, temperature=0.0), model=plain)
    assert not ex.template.chat and ex.template.tail.endswith("Answer:")
    cached = ex.extract(OBS)
    uncached = TransformersExtractor(spec_for(plain, tokens=3, temperature=0.0), model=plain, prefix_cache=False)
    np.testing.assert_allclose(uncached.extract(OBS).hidden_state, cached.hidden_state, atol=ATOL)


def test_too_long_prompt_is_an_error(tmp_path):
    small = load_model(str(build_tiny_qwen(tmp_path / "small", max_position_embeddings=1600)))
    ex = TransformersExtractor(spec_for(small, template="short", tokens=40), model=small)
    long_obs = "tree " * 1600
    n = len(ex.encode([long_obs])[0][0])
    with pytest.raises(ValueError, match=f"{n} tokens \\+ 40 generated = {n + 40} tokens, {n + 40 - 1600} more"):
        ex.extract([OBS[0], long_obs])
    with pytest.raises(ValueError, match="more than the context"):
        TransformersExtractor(spec_for(small, template="chat"), model=small).extract(OBS[:1])


def test_failed_extraction_raises_never_zeros(tmp_path):
    broken = load_model(str(build_tiny_qwen(tmp_path / "broken")))
    with torch.no_grad():
        broken.model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    ex = TransformersExtractor(spec_for(broken), model=broken)
    with pytest.raises(RuntimeError, match="non-finite"):
        ex.extract(OBS[:2])


def test_sample_tokens_inverse_cdf_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    pick = lambda u, top_p: sample_tokens(logits, torch.tensor([u, u]), 1.0, top_p)[0].item()  # noqa: E731
    assert [pick(u, 1.0) for u in (0.0, 0.49, 0.51, 0.79, 0.81, 0.9999999)] == [0, 0, 1, 1, 2, 2]
    assert [pick(u, 0.6) for u in (0.1, 0.6, 0.9, 1.0)] == [0, 0, 1, 1]  # top set {0, 1}, renormalised
    assert sample_tokens(logits, torch.tensor([0.99, 0.99]), 0.0, 1.0).tolist() == [0, 0]  # greedy
