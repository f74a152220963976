"""The transformers backend on CUDA in bfloat16 (run with `pytest -m gpu` on a machine with a GPU)."""

import numpy as np
import pytest
import torch

from hsrl.llm import ExtractionSpec
from hsrl.llm.models import load_model
from hsrl.llm.transformers_backend import TransformersExtractor
from llm_helpers import OBS, TEXTS
from tiny_qwen import build_tiny_qwen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_bfloat16_prefix_cache_generation_and_reextraction(tmp_path):
    qwen = load_model(str(build_tiny_qwen(tmp_path / "qwen", num_layers=3)))
    assert qwen.device == "cuda" and qwen.dtype == "bfloat16"
    spec = ExtractionSpec(model=qwen.path)
    cached = TransformersExtractor(spec, model=qwen).extract(OBS).hidden_state
    uncached = TransformersExtractor(spec, model=qwen, prefix_cache=False).extract(OBS).hidden_state
    scale = np.abs(uncached).max()
    np.testing.assert_allclose(cached, uncached, atol=0.05 * scale)
    ex = TransformersExtractor(spec.replace(tokens=8, temperature=1.0), model=qwen)
    gen = ex.extract(OBS)
    assert gen.hidden_state.dtype == np.float32 and np.isfinite(gen.hidden_state).all()
    again = ex.reextract(OBS, generated_ids=gen.generated_ids).hidden_state
    np.testing.assert_allclose(again, gen.hidden_state, atol=0.05 * np.abs(gen.hidden_state).max())


def test_cuda_bfloat16_vision_language_model(tmp_path):
    """The vision backend on CUDA in bfloat16: prompt-only batch independence, prefix cache on and off, float/uint8
    equality, generation
    and its re-extraction. Needs only torch, transformers and hsrl.llm ('short' template: no Craftax import)."""
    from hsrl.llm.models import load_vision_model
    from hsrl.llm.vision_backend import VisionExtractor
    from tiny_vlm import build_tiny_vlm

    vlm = load_vision_model(str(build_tiny_vlm(tmp_path / "vlm")))
    assert vlm.device == "cuda" and vlm.dtype == "bfloat16"
    images = np.random.default_rng(0).integers(0, 256, (3, 63, 63, 3)).astype(np.uint8)
    spec = ExtractionSpec(model=vlm.path, input="image+text", template="short")
    ex = VisionExtractor(spec, model=vlm)
    batch = ex.extract(TEXTS, images=images).hidden_state
    assert batch.dtype == np.float32 and np.isfinite(batch).all() and ex.spec.dtype == "bfloat16"
    alone = np.concatenate([ex.extract(TEXTS[b : b + 1], images=images[b : b + 1]).hidden_state for b in range(3)])
    np.testing.assert_allclose(batch, alone, atol=0.05 * np.abs(alone).max())
    uncached = VisionExtractor(spec, model=vlm, prefix_cache=False).extract(TEXTS, images=images).hidden_state
    np.testing.assert_allclose(uncached, batch, atol=0.05 * np.abs(batch).max())
    np.testing.assert_array_equal(ex.extract(TEXTS, images=images.astype(np.float32) / 255).hidden_state, batch)
    gen_ex = VisionExtractor(spec.replace(tokens=8, temperature=1.0), model=vlm)
    gen = gen_ex.extract(TEXTS, images=images)
    assert np.isfinite(gen.hidden_state).all() and all(len(g) for g in gen.generated_ids)
    again = gen_ex.reextract(TEXTS, generated_ids=gen.generated_ids, images=images).hidden_state
    np.testing.assert_allclose(again, gen.hidden_state, atol=0.05 * np.abs(gen.hidden_state).max())
